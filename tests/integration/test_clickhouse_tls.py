"""ClickHouse over TLS (``IMGOV_CLICKHOUSE_SECURE``, docs/deploy.md section 5).

Starts its OWN ClickHouse 18.16 server (Debian's /usr/sbin/clickhouse-server) through
``infra/clickhouse/clickhouse.sh`` with a private state dir and free 127.0.0.1 ports, plus
a ``config.d/tls.xml`` overlay: ``<tcp_port_secure>`` and an ``<openSSL><server>`` section
whose certificate a throwaway CA (made in tmp_path) signs. The shared services' ports and
state are never touched. The secure port verifies client certificates when one is sent
(``relaxed``), so one server tests server-only TLS and mutual TLS.

Outside CI a missing server binary skips these tests; in CI it is a failure.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from schemas.files import read_events
from sinks.clickhouse.settings import ClickHouseSettings
from sinks.clickhouse.writer import ClickHouseSink
from sinks.query import BackendUnavailableError, ClickHouseBackend
from streams.governance import DEMO_SETTINGS, build_processor, build_validator, load_settings
from streams.paths import REPO_ROOT
from streams.replay.driver import replay
from tests.integration.test_live_harness import IMGOV
from tests.tls_certs import Issued, TestCA

pytestmark = pytest.mark.clickhouse

SCRIPT = REPO_ROOT / "infra" / "clickhouse" / "clickhouse.sh"
SERVER_BINARIES = (
    "/usr/sbin/clickhouse-server",
    "/usr/bin/clickhouse-server",
    "/usr/bin/clickhouse",
)
SHARED_PORTS = {19000, 18123, 19011, 19021, 18131, 18132, 19012, 19022}
"""The shared single-node and cluster services: never used here."""

TLS_XML = """<?xml version="1.0"?>
<yandex>
    <tcp_port_secure>{secure_port}</tcp_port_secure>
    <openSSL>
        <server>
            <certificateFile>{cert}</certificateFile>
            <privateKeyFile>{key}</privateKeyFile>
            <caConfig>{ca}</caConfig>
            <verificationMode>relaxed</verificationMode>
            <loadDefaultCAFile>false</loadDefaultCAFile>
            <cacheSessions>true</cacheSessions>
            <disableProtocols>sslv2,sslv3,tlsv1,tlsv1_1</disableProtocols>
            <preferServerCiphers>true</preferServerCiphers>
        </server>
    </openSSL>
</yandex>
"""


@dataclass(frozen=True)
class TlsServer:
    plain_port: int
    secure_port: int
    ca: TestCA
    client: Issued
    """A client certificate the server's CA signed (mutual TLS)."""
    folder: Path

    def settings(self, **fields: object) -> ClickHouseSettings:
        """Settings for the secure port, with the CA, unless ``fields`` say otherwise."""
        values: dict[str, object] = {
            "host": "127.0.0.1",
            "port": self.secure_port,
            "secure": True,
            "ca_certs": self.ca.cert,
            "verify": True,
            "certfile": None,
            "keyfile": None,
            "alt_hosts": None,
            "cluster": None,
            "password_file": None,
            "user": "imgov",
            "password": "imgov",
            "database": "imgov",
        }
        values.update(fields)
        return ClickHouseSettings.model_validate(values)

    def env(self, **variables: str) -> dict[str, str]:
        """The environment of an ``imgov`` command on the secure port, with the CA."""
        env = {k: v for k, v in os.environ.items() if not k.startswith("IMGOV_CLICKHOUSE_")}
        env.update(
            IMGOV_CLICKHOUSE_HOST="127.0.0.1",
            IMGOV_CLICKHOUSE_PORT=str(self.secure_port),
            IMGOV_CLICKHOUSE_SECURE="true",
            IMGOV_CLICKHOUSE_CA_CERTS=str(self.ca.cert),
        )
        env.update(variables)
        return {k: v for k, v in env.items() if v != ""}


def _in_ci() -> bool:
    return os.environ.get("CI", "").lower() in {"1", "true", "yes"}


def _free_ports(count: int) -> list[int]:
    """Ports the kernel picked on 127.0.0.1, none of the shared services'."""
    sockets: list[socket.socket] = []
    ports: list[int] = []
    try:
        while len(ports) < count:
            sock = socket.socket()
            sock.bind(("127.0.0.1", 0))
            sockets.append(sock)
            port = sock.getsockname()[1]
            if port not in SHARED_PORTS:
                ports.append(port)
    finally:
        for sock in sockets:
            sock.close()
    return ports


def _wait_listening(port: int, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1):
                return
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.05)


@pytest.fixture(scope="module")
def tls_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TlsServer]:
    if not any(Path(binary).exists() for binary in SERVER_BINARIES):
        message = "no ClickHouse server binary; run `infra/clickhouse/clickhouse.sh install`"
        if _in_ci():
            pytest.fail(message)
        pytest.skip(message)
    folder = tmp_path_factory.mktemp("clickhouse-tls")
    ca = TestCA(folder)
    server = ca.issue("server", server=True)
    client = ca.issue("client", server=False)
    plain, http, secure = _free_ports(3)
    state = folder / "state"
    (state / "config.d").mkdir(parents=True)
    (state / "config.d" / "tls.xml").write_text(
        TLS_XML.format(secure_port=secure, cert=server.cert, key=server.key, ca=ca.cert)
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith("IMGOV_CLICKHOUSE_")}
    env.update(
        IMGOV_CLICKHOUSE_STATE_DIR=str(state),
        IMGOV_CLICKHOUSE_LOG_DIR=str(folder / "logs"),
        IMGOV_CLICKHOUSE_PORT=str(plain),
        IMGOV_CLICKHOUSE_HTTP_PORT=str(http),
        IMGOV_CLICKHOUSE_START_TIMEOUT="20",
    )
    started = subprocess.run(
        ["bash", str(SCRIPT), "start"], env=env, capture_output=True, text=True, timeout=60
    )
    try:
        assert started.returncode == 0, started.stdout + started.stderr
        _wait_listening(secure, timeout_s=10)
        yield TlsServer(plain, secure, ca, client, folder)
    finally:
        stopped = subprocess.run(
            ["bash", str(SCRIPT), "stop"], env=env, capture_output=True, text=True, timeout=60
        )
        assert stopped.returncode == 0, stopped.stdout + stopped.stderr
        shutil.rmtree(state / "data", ignore_errors=True)


def _select_one(settings: ClickHouseSettings) -> object:
    backend = ClickHouseBackend.connect(settings, database="system")
    try:
        _, rows = backend.execute("SELECT 1")
        return rows[0][0]
    finally:
        backend.close()


def test_migrate_and_write_over_tls(tls_server: TlsServer, tmp_path: Path) -> None:
    # The real command, configured by the environment only.
    for command in (["db", "migrate"], ["db", "status"]):
        done = subprocess.run(
            [IMGOV, *command],
            env=tls_server.env(),
            cwd=REPO_ROOT,
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert done.returncode == 0, done.stdout + done.stderr
    assert f"127.0.0.1:{tls_server.secure_port}" in done.stdout, done.stdout

    # A small replay through the ClickHouse sink, over TLS.
    events = tmp_path / "events.jsonl"
    simulate = ["simulate", "--days", "1", "--sites", "1", "--studies-per-day", "10"]
    subprocess.run(
        [IMGOV, *simulate, "--seed", "7", "--out", str(events), "-q"],
        check=True,
        cwd=REPO_ROOT,
        capture_output=True,
        timeout=60,
    )
    count = sum(1 for _ in read_events(events))
    assert count > 0
    governance = load_settings(DEMO_SETTINGS, demo=True)
    sink = ClickHouseSink.from_settings(tls_server.settings())
    try:
        replay(
            [events],
            build_processor(governance),
            sink,
            build_validator(governance),
            record_events=True,
        )
        sink.flush()
        _, rows = sink.backend.execute("SELECT count() FROM event_log")
    finally:
        sink.close()
    assert rows == [(count,)]
    # The server saw the writer on its secure port: a plaintext client reads the same rows.
    plain = tls_server.settings(port=tls_server.plain_port, secure=False, ca_certs=None)
    backend = ClickHouseBackend.connect(plain)
    try:
        assert backend.execute("SELECT count() FROM event_log")[1] == [(count,)]
    finally:
        backend.close()


def test_a_client_without_the_ca_is_refused(tls_server: TlsServer) -> None:
    # Verification on, the system CAs only: the throwaway CA is not among them. Both a
    # writing and a reading command refuse (status does not show "pending" instead).
    for command in (["db", "migrate"], ["db", "status"]):
        done = subprocess.run(
            [IMGOV, *command],
            env=tls_server.env(IMGOV_CLICKHOUSE_CA_CERTS=""),
            cwd=REPO_ROOT,
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert done.returncode == 1, done.stdout + done.stderr
        # The driver's log lines aside, imgov's own message names the settings to check.
        error = " ".join(done.stderr[done.stderr.index("error:") :].split())
        assert "CERTIFICATE_VERIFY_FAILED" in error, done.stderr
        assert "IMGOV_CLICKHOUSE_CA_CERTS must be the CA that signed it" in error, done.stderr
    with pytest.raises(BackendUnavailableError, match="CERTIFICATE_VERIFY_FAILED"):
        _select_one(tls_server.settings(ca_certs=None))
    # Another CA does not do either.
    other = TestCA(tls_server.folder, "other-ca")
    with pytest.raises(BackendUnavailableError, match="CERTIFICATE_VERIFY_FAILED"):
        _select_one(tls_server.settings(ca_certs=other.cert))
    # IMGOV_CLICKHOUSE_VERIFY=false encrypts without authenticating the server.
    assert _select_one(tls_server.settings(ca_certs=None, verify=False)) == 1


def test_plaintext_and_tls_do_not_mix(tls_server: TlsServer) -> None:
    # A plaintext client on the secure port: the server drops it during the handshake.
    with pytest.raises(BackendUnavailableError):
        _select_one(tls_server.settings(secure=False, ca_certs=None))
    # A TLS client on the plaintext port: no TLS answer.
    with pytest.raises(BackendUnavailableError, match="no TLS on this port"):
        _select_one(tls_server.settings(port=tls_server.plain_port))


def test_mutual_tls(tls_server: TlsServer) -> None:
    # A client certificate the server's CA signed is accepted.
    mutual = tls_server.settings(certfile=tls_server.client.cert, keyfile=tls_server.client.key)
    assert _select_one(mutual) == 1
    # One from another CA is refused by the server.
    stranger = TestCA(tls_server.folder, "stranger-ca").issue("stranger", server=False)
    with pytest.raises(BackendUnavailableError):
        _select_one(tls_server.settings(certfile=stranger.cert, keyfile=stranger.key))
