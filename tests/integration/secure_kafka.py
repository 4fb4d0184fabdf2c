"""The SASL_SSL listener of the broker that infra/kafka/kafka.sh runs (no tests here).

kafka.sh writes, in its state dir (``.imgov/services/kafka``, or ``IMGOV_KAFKA_STATE_DIR``
for a second broker): the rendered ``server.properties`` (the running broker's listeners),
``client-sasl-ssl.env`` (what a SCRAM-SHA-512 client sets), ``tls/ca.pem`` and the test
user's password file. The tests find the listener from these files, never from constants.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path

from streams.paths import REPO_ROOT

__all__ = ["SecureListener", "find_secure_listener", "kafka_state_dir"]


def kafka_state_dir() -> Path:
    """The state dir of the broker under test (as kafka.sh resolves it)."""
    configured = os.environ.get("IMGOV_KAFKA_STATE_DIR")
    return Path(configured) if configured else REPO_ROOT / ".imgov" / "services" / "kafka"


@dataclass(frozen=True)
class SecureListener:
    """Where the SASL_SSL listener is and how a client logs in to it."""

    port: int
    cafile: Path
    username: str
    password_file: Path

    @property
    def bootstrap(self) -> str:
        return f"127.0.0.1:{self.port}"

    def env(self, mechanism: str = "SCRAM-SHA-512", **overrides: str) -> dict[str, str]:
        """``IMGOV_KAFKA_*`` of a client of this listener; ``overrides`` by setting name
        (``sasl_password_file="/x"``, ``ssl_cafile=""`` to unset)."""
        env = {
            "IMGOV_KAFKA_BOOTSTRAP": self.bootstrap,
            "IMGOV_KAFKA_SECURITY_PROTOCOL": "SASL_SSL",
            "IMGOV_KAFKA_SSL_CAFILE": str(self.cafile),
            "IMGOV_KAFKA_SASL_MECHANISM": mechanism,
            "IMGOV_KAFKA_SASL_USERNAME": self.username,
            "IMGOV_KAFKA_SASL_PASSWORD_FILE": str(self.password_file),
        }
        env.update({f"IMGOV_KAFKA_{name.upper()}": value for name, value in overrides.items()})
        return {name: value for name, value in env.items() if value != ""}

    def librdkafka_config(self, mechanism: str = "SCRAM-SHA-512") -> dict[str, str]:
        """librdkafka properties of a client that trusts the CA and logs in."""
        return {
            "bootstrap.servers": self.bootstrap,
            "security.protocol": "sasl_ssl",
            "ssl.ca.location": str(self.cafile),
            "sasl.mechanism": mechanism,
            "sasl.username": self.username,
            "sasl.password": self.password_file.read_text(encoding="utf-8").strip(),
        }


def find_secure_listener(state_dir: Path | None = None) -> SecureListener | str:
    """Returns the running broker's SASL_SSL listener, or why there is none."""
    state_dir = state_dir or kafka_state_dir()
    properties = state_dir / "server.properties"
    client_env = state_dir / "client-sasl-ssl.env"
    try:
        rendered = properties.read_text(encoding="utf-8")
        settings = dict(
            line.split("=", 1) for line in client_env.read_text(encoding="utf-8").splitlines()
        )
    except OSError as exc:
        return f"kafka.sh has not written its secure listener's files ({exc})"
    match = re.search(r"^advertised\.listeners=.*SASL_SSL://127\.0\.0\.1:(\d+)", rendered, re.M)
    if match is None:
        return f"{properties} has no SASL_SSL listener: run infra/kafka/kafka.sh restart"
    return SecureListener(
        port=int(match[1]),
        cafile=Path(settings["IMGOV_KAFKA_SSL_CAFILE"]),
        username=settings["IMGOV_KAFKA_SASL_USERNAME"],
        password_file=Path(settings["IMGOV_KAFKA_SASL_PASSWORD_FILE"]),
    )
