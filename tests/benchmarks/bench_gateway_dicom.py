"""Benchmark: DICOM SR instances/s through the gateway's C-STORE SCP, beside its parse
ceiling (DESIGN §10).

Run ``python -m tests.benchmarks.bench_gateway_dicom`` from the repository root. Instances
are the sample SRs of ``tests/data/dicom_sr`` that the gateway accepts (one or two
findings each, Comprehensive, Enhanced and Comprehensive 3D SR), each copy with its own
SOP Instance UID and Study Instance UID. Measured in one run:

* ``map_ceiling``: ``inference_events`` alone on datasets already read once: the
  content-tree walk and the mapping (datasets/s). pydicom converts each element on its
  first access, which is most of the cost of a fresh dataset: that is in the next one;
* ``parse_ceiling``: what the SCP does per instance without the network: pydicom decodes
  the Part 10 bytes, ``inference_events``, contract rules and Avro encoding of every event;
* ``scp_pynetdicom``: through the SCP on 127.0.0.1 to the in-memory delivery (which
  still encodes), sent by ``--associations`` concurrent pynetdicom SCUs, each C-STORE
  waiting for its response, as DICOM senders do;
* ``scp_storescu``: the same sent by DCMTK's ``storescu`` processes (skipped with a
  message when storescu is not installed: ``bash infra/dicom/install.sh``);
* ``scp_storescu_nagle``: storescu as Debian ships it, with Nagle's algorithm on;
* ``scp_pynetdicom_kafka``, ``scp_storescu_kafka``: the first two into ``KafkaDelivery``
  on the real broker (``IMGOV_KAFKA_BOOTSTRAP``, default 127.0.0.1:19092) on fresh
  topics, deleted afterwards: each C-STORE answered only once Kafka (acks=all)
  acknowledged its events. Skipped with a message when the broker is unreachable
  (unless ``CI=true``).

A sender that leaves Nagle's algorithm on (pynetdicom's SCU, DCMTK unless the environment
says ``TCP_NODELAY=1``) writes a request's command and its data set as two segments and
waits for the SCP's delayed ACK between them: about 40 ms per instance on Linux, whatever
the SCP does. The first two sender measures switch it off, so they show what the SCP
carries; the last one shows what an unconfigured DCMTK sender gets.

Prints a table and appends one JSON line to ``.imgov/bench/results.jsonl``. The machine
is shared and noisy: compare the ratios measured in the same run.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import os
import platform
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Coroutine, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from io import BytesIO
from pathlib import Path
from typing import Any, TypeVar

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:  # run as a plain script
    sys.path.insert(0, str(ROOT))

import pydicom  # noqa: E402
from pydicom.dataset import Dataset  # noqa: E402
from pydicom.uid import ExplicitVRLittleEndian  # noqa: E402
from pynetdicom import AE, evt  # noqa: E402

from schemas.codec import Codec  # noqa: E402
from schemas.file_registry import FileSchemaRegistry  # noqa: E402
from schemas.validation import EventValidator  # noqa: E402
from streams.gateway.delivery import Delivery, KafkaDelivery, MemoryDelivery  # noqa: E402
from streams.gateway.dicom_sr import (  # noqa: E402
    inference_events,
    load_dicom_sr_mapping,
    start_dicom_scp,
)
from tests.benchmarks.gateway_kafka import (  # noqa: E402
    kafka_bootstrap,
    kafka_unreachable,
    records_in,
    throwaway_topics,
)

DATA = ROOT / "tests" / "data" / "dicom_sr"
GOOD = ("pe_positive.dcm", "pe_no_score.dcm", "two_findings.dcm")
NOW_MS = 1_768_000_000_000
T = TypeVar("T")


def instances(count: int) -> list[Dataset]:
    """``count`` SRs cycling through the good samples, each its own instance and study."""
    templates = [pydicom.dcmread(DATA / name) for name in GOOD]
    out = []
    for n in range(count):
        ds = templates[n % len(templates)].copy()
        ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = f"1.2.826.0.1.9.{n}"
        ds.StudyInstanceUID = f"1.2.826.0.1.8.{n}"
        out.append(ds)
    return out


def part10(dataset: Dataset) -> bytes:
    buffer = BytesIO()
    dataset.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()


def _best_rate(count: int, run: Callable[[], None], repeat: int) -> float:
    best = float("inf")
    for _ in range(repeat):
        gc.collect()
        began = time.perf_counter()
        run()
        best = min(best, time.perf_counter() - began)
    return count / best


@contextmanager
def _loop_thread() -> Iterator[asyncio.AbstractEventLoop]:
    """An event loop in its own thread: the SCP's handler threads deliver on it."""
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    try:
        yield loop
    finally:
        loop.call_soon_threadsafe(loop.stop)
        thread.join(5)
        loop.close()


def _on(loop: asyncio.AbstractEventLoop, coroutine: Coroutine[Any, Any, T]) -> T:
    return asyncio.run_coroutine_threadsafe(coroutine, loop).result(60)


def through_scp(
    datasets: list[Dataset],
    files: list[Path],
    associations: int,
    delivery: Delivery,
    loop: asyncio.AbstractEventLoop,
    delivered: Callable[[], int],
    *,
    nagle: bool = True,
) -> dict[str, float]:
    """Instances/s through the SCP into ``delivery`` (which belongs to ``loop``), sent by
    pynetdicom SCUs and (if present) storescu; ``nagle``: also storescu with Nagle on.

    ``delivered`` counts the events ``delivery`` holds: each measure must add them all.
    """
    rates: dict[str, float] = {}
    server = start_dicom_scp(load_dicom_sr_mapping(), delivery, loop, host="127.0.0.1", port=0)
    port = server.server_address[1]
    try:
        rates["scp_pynetdicom"] = _timed(
            len(datasets),
            [lambda c=c: _scu(port, datasets[c::associations]) for c in range(associations)],
        )
        expected = sum(len(inference_events(d, load_dicom_sr_mapping())) for d in datasets)
        if delivered() != expected:
            raise SystemExit(f"{delivered()} of {expected} events delivered")
        storescu = shutil.which("storescu")
        senders = [("scp_storescu", True), ("scp_storescu_nagle", False)]
        for n, (name, nodelay) in enumerate(senders if nagle else senders[:1], 2):
            if storescu is None:
                break
            rates[name] = _timed(
                len(files),
                [
                    lambda c=c, d=nodelay: _storescu(storescu, port, files[c::associations], d)
                    for c in range(associations)
                ],
            )
            if delivered() != n * expected:
                raise SystemExit(f"{name}: not every instance was delivered")
    finally:
        server.shutdown()
    return rates


def to_kafka(
    bootstrap: str, codec: Codec, datasets: list[Dataset], files: list[Path], associations: int
) -> dict[str, float]:
    """``through_scp`` into ``KafkaDelivery`` on throwaway topics, storescu without Nagle."""
    with throwaway_topics(bootstrap, "bench-gw-dicom-") as topics, _loop_thread() as loop:
        delivery = _on(loop, KafkaDelivery.connect(bootstrap, codec, topics))
        try:
            rates = through_scp(
                datasets,
                files,
                associations,
                delivery,
                loop,
                lambda: records_in(bootstrap, topics.inputs),
                nagle=False,
            )
        finally:
            _on(loop, delivery.close())
        if records_in(bootstrap, [topics.dlq]):
            raise SystemExit("dead letters on Kafka")
    return {f"{name}_kafka": rate for name, rate in rates.items()}


def _timed(count: int, senders: list[Callable[[], None]]) -> float:
    threads = [threading.Thread(target=send) for send in senders]
    began = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return count / (time.perf_counter() - began)


def _no_nagle(event: evt.Event) -> None:
    event.assoc.dul.socket.socket.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)


def _scu(port: int, datasets: list[Dataset]) -> None:
    ae = AE(ae_title="BENCHSCU")
    for uid in {d.SOPClassUID for d in datasets}:
        ae.add_requested_context(uid, ExplicitVRLittleEndian)
    handlers = [(evt.EVT_CONN_OPEN, _no_nagle)]
    assoc = ae.associate("127.0.0.1", port, ae_title="IMGOV", evt_handlers=handlers)
    if not assoc.is_established:
        raise SystemExit("association not established")
    try:
        for ds in datasets:
            status = assoc.send_c_store(ds)
            if status.Status != 0x0000:
                raise SystemExit(f"C-STORE answered 0x{status.Status:04X}")
    finally:
        assoc.release()


def _storescu(binary: str, port: int, files: list[Path], nodelay: bool) -> None:
    command = [binary, "-R", "-aet", "BENCHSCU", "-aec", "IMGOV", "127.0.0.1", str(port)]
    env = {**os.environ, "TCP_NODELAY": "1" if nodelay else "0"}
    run = subprocess.run([*command, *map(str, files)], capture_output=True, text=True, env=env)
    if run.returncode != 0:
        raise SystemExit(f"storescu failed ({run.returncode}): {run.stderr[-500:]}")


def main(argv: list[str] | None = None) -> dict[str, object]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--instances", type=int, default=1_000, help="SR instances per measure")
    parser.add_argument("--associations", type=int, default=2, help="concurrent senders")
    parser.add_argument("--repeat", type=int, default=3, help="runs of the ceilings (best kept)")
    parser.add_argument("--out", type=Path, default=ROOT / ".imgov" / "bench" / "results.jsonl")
    args = parser.parse_args(argv)

    mapping = load_dicom_sr_mapping()
    codec = Codec(FileSchemaRegistry())
    validator = EventValidator(lambda: NOW_MS)
    datasets = instances(args.instances)
    encoded = [part10(d) for d in datasets]
    events = sum(len(inference_events(d, mapping)) for d in datasets)

    def map_only() -> None:
        for ds in datasets:
            inference_events(ds, mapping)

    def parse_map_encode() -> None:
        for data in encoded:
            for event in inference_events(pydicom.dcmread(BytesIO(data)), mapping):
                codec.encode(validator.validate(event))

    rates: dict[str, Any] = {
        "map_ceiling": _best_rate(len(datasets), map_only, args.repeat),
        "parse_ceiling": _best_rate(len(encoded), parse_map_encode, args.repeat),
    }
    notes: list[str] = []
    with tempfile.TemporaryDirectory() as tmp:
        files = []
        for n, data in enumerate(encoded):
            path = Path(tmp) / f"sr-{n:06d}.dcm"
            path.write_bytes(data)
            files.append(path)
        with _loop_thread() as loop:
            memory = MemoryDelivery(encode=codec.encode)
            rates.update(
                through_scp(
                    datasets,
                    files,
                    args.associations,
                    memory,
                    loop,
                    lambda: len(memory.delivered),
                )
            )
        bootstrap = kafka_bootstrap()
        unreachable = kafka_unreachable(bootstrap, "scp_pynetdicom_kafka, scp_storescu_kafka")
        if unreachable is None:
            rates.update(to_kafka(bootstrap, codec, datasets, files, args.associations))
        else:
            notes.append(unreachable)
    if "scp_storescu" not in rates:
        notes.append("storescu not installed: scp_storescu skipped (infra/dicom/install.sh)")
        print(notes[-1])
    rates = {name: round(rate) for name, rate in rates.items()}

    print(f"{'measure':22} {'instances/s':>12} {'µs/instance':>12}")
    for name, rate in rates.items():
        print(f"{name:22} {rate:>12,} {1e6 / rate:>12.1f}")
    ratios = {
        f"{name}/parse_ceiling": round(rates[name] / rates["parse_ceiling"], 3)
        for name in (
            "scp_pynetdicom",
            "scp_storescu",
            "scp_storescu_nagle",
            "scp_pynetdicom_kafka",
            "scp_storescu_kafka",
        )
        if name in rates
    }
    for name, ratio in ratios.items():
        print(f"{name:36} {ratio:6.3f}")

    record: dict[str, object] = {
        "bench": "gateway_dicom",
        "at": datetime.now(UTC).isoformat(timespec="seconds"),
        "python": platform.python_version(),
        "machine": platform.machine(),
        "cpus": os.cpu_count(),
        "load_avg": [round(x, 2) for x in os.getloadavg()],
        "instances": len(datasets),
        "events_per_instance": round(events / len(datasets), 3),
        "bytes_per_instance": round(sum(map(len, encoded)) / len(encoded)),
        "associations": args.associations,
        "instances_per_s": rates,
        "ratios": ratios,
        "notes": notes,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    with args.out.open("a", encoding="utf-8") as out:
        out.write(json.dumps(record, separators=(",", ":")) + "\n")
    return record


if __name__ == "__main__":
    main()
