"""imgov stream processing: the pure core, the runtime and the simulator."""

__version__ = "0.1.0"
