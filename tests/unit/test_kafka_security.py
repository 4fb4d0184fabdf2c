"""``streams.kafka_security``: one security value, translated for each client library.

No broker. The translations are checked against the libraries themselves: the keyword
names exist in kafka-python's and aiokafka's clients, Faust's own translation of the
credentials gives the same aiokafka arguments, and every Kafka client constructed in
``streams/`` is given the security arguments (a source scan).
"""

from __future__ import annotations

import ast
import asyncio
import inspect
import socket
import ssl
from pathlib import Path

import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from faust.auth import SASLCredentials, SSLCredentials
from faust.transport.drivers.aiokafka import credentials_to_aiokafka_auth
from kafka import KafkaConsumer, KafkaProducer
from kafka.admin import KafkaAdminClient
from pydantic import SecretStr

from streams.kafka_security import KafkaSecurity, check_login, read_secret_file
from streams.paths import REPO_ROOT

CA = Path(ssl.get_default_verify_paths().cafile or "")


def _sasl_ssl(**changes: object) -> KafkaSecurity:
    fields: dict[str, object] = {
        "protocol": "SASL_SSL",
        "username": "imgov",
        "password": SecretStr("pw"),
        "mechanism": "SCRAM-SHA-512",
    }
    fields.update(changes)
    return KafkaSecurity(**fields)  # type: ignore[arg-type]


def test_sasl_ssl_gives_one_verified_tls_context_and_the_sasl_login() -> None:
    options = _sasl_ssl().client_options()
    context = options.pop("ssl_context")
    assert options == {
        "security_protocol": "SASL_SSL",
        "sasl_mechanism": "SCRAM-SHA-512",
        "sasl_plain_username": "imgov",
        "sasl_plain_password": "pw",
    }
    assert isinstance(context, ssl.SSLContext)
    assert context.verify_mode == ssl.CERT_REQUIRED
    assert context.check_hostname
    assert context.minimum_version >= ssl.TLSVersion.TLSv1_2


def test_ssl_without_sasl_and_sasl_without_ssl() -> None:
    tls_only = KafkaSecurity(protocol="SSL").client_options()
    assert set(tls_only) == {"security_protocol", "ssl_context"}
    clear = _sasl_ssl(protocol="SASL_PLAINTEXT", mechanism="PLAIN").client_options()
    assert "ssl_context" not in clear and clear["sasl_mechanism"] == "PLAIN"


def test_host_name_check_can_be_turned_off_for_every_dialect() -> None:
    security = _sasl_ssl(check_hostname=False)
    assert not security.ssl_context().check_hostname
    assert security.librdkafka_config()["ssl.endpoint.identification.algorithm"] == "none"
    assert _sasl_ssl().librdkafka_config()["ssl.endpoint.identification.algorithm"] == "https"


@pytest.mark.parametrize(
    "client", [KafkaConsumer, KafkaProducer, KafkaAdminClient], ids=lambda c: c.__name__
)
def test_kafka_python_knows_every_argument(client: type) -> None:
    assert set(_sasl_ssl().client_options()) <= set(client.DEFAULT_CONFIG)


@pytest.mark.parametrize("client", [AIOKafkaProducer, AIOKafkaConsumer], ids=lambda c: c.__name__)
def test_aiokafka_knows_every_argument(client: type) -> None:
    parameters = inspect.signature(client.__init__).parameters
    assert set(_sasl_ssl().client_options()) <= set(parameters)


def test_faust_passes_the_same_arguments_to_aiokafka() -> None:
    security = _sasl_ssl()
    credentials = security.faust_credentials()
    assert isinstance(credentials, SASLCredentials)
    through_faust = dict(credentials_to_aiokafka_auth(credentials))
    direct = security.client_options()
    assert isinstance(through_faust.pop("ssl_context"), ssl.SSLContext)
    direct.pop("ssl_context")
    assert through_faust == direct

    tls_only = KafkaSecurity(protocol="SSL").faust_credentials()
    assert isinstance(tls_only, SSLCredentials)
    assert credentials_to_aiokafka_auth(tls_only)["security_protocol"] == "SSL"
    sasl_clear = _sasl_ssl(protocol="SASL_PLAINTEXT").faust_credentials()
    assert credentials_to_aiokafka_auth(sasl_clear)["security_protocol"] == "SASL_PLAINTEXT"


def test_librdkafka_properties() -> None:
    config = _sasl_ssl(
        cafile=Path("/ca.pem"), certfile=Path("/c.pem"), key_password=SecretStr("kp")
    ).librdkafka_config()
    assert config == {
        "security.protocol": "sasl_ssl",
        "ssl.endpoint.identification.algorithm": "https",
        "ssl.ca.location": "/ca.pem",
        "ssl.certificate.location": "/c.pem",
        "ssl.key.location": "/c.pem",  # no key file: the key is in the certificate file
        "ssl.key.password": "kp",
        "sasl.mechanism": "SCRAM-SHA-512",
        "sasl.username": "imgov",
        "sasl.password": "pw",
    }


def test_secret_files_lose_only_the_trailing_newline(tmp_path: Path) -> None:
    path = tmp_path / "pw"
    path.write_text(" a b \r\n")
    assert read_secret_file(path).get_secret_value() == " a b "
    path.write_text("")
    with pytest.raises(ValueError, match="empty"):
        read_secret_file(path)


def test_describe_names_the_login_but_not_the_password() -> None:
    text = _sasl_ssl(cafile=Path("/ca.pem")).describe()
    assert text == "SASL_SSL, SCRAM-SHA-512 as imgov, CA /ca.pem"


def test_login_check_leaves_plaintext_and_unreachable_brokers_to_the_client() -> None:
    with socket.socket() as probe:  # a port nobody listens on
        probe.bind(("127.0.0.1", 0))
        closed = f"127.0.0.1:{probe.getsockname()[1]}"
    asyncio.run(check_login(closed, KafkaSecurity()))
    asyncio.run(check_login(closed, _sasl_ssl(), timeout_s=2))


# --- every Kafka client in streams/ gets the security arguments ----------------------------

_CLIENTS = {"KafkaConsumer", "KafkaProducer", "KafkaAdminClient", "AIOKafkaProducer"}


def _client_calls(tree: ast.AST) -> list[ast.Call]:
    calls = []
    for node in ast.walk(tree):
        if not isinstance(node, ast.Call):
            continue
        func = node.func
        name = func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", "")
        if name in _CLIENTS or (name == "App" and getattr(func, "value", None) is not None):
            calls.append(node)
    return calls


def _secured(call: ast.Call, tree: ast.AST) -> bool:
    """A call is secured when it spreads ``**something`` built from ``client_options()``
    (directly, or through a dict/variable defined in the same function) or, for
    ``faust.App``, passes ``broker_credentials``."""
    if any(k.arg == "broker_credentials" for k in call.keywords):
        return True
    source = ast.unparse(tree)
    for keyword in call.keywords:
        if keyword.arg is not None:
            continue
        spread = ast.unparse(keyword.value)
        if "client_options()" in spread:
            return True
        name = spread.removeprefix("self.")
        if f"{name} = " in source and "client_options()" in source:
            return True
    return False


def _unsecured(source: str) -> tuple[int, list[int]]:
    """(client constructions seen, lines of those without security) in ``source``."""
    tree = ast.parse(source)
    functions = (ast.FunctionDef, ast.AsyncFunctionDef)
    seen, lines = set(), set()
    for function in [n for n in ast.walk(tree) if isinstance(n, functions)]:
        for call in _client_calls(function):
            is_app = isinstance(call.func, ast.Attribute) and call.func.attr == "App"
            if is_app and ast.unparse(call.func.value) != "faust":  # type: ignore[attr-defined]
                continue
            seen.add(call.lineno)
            if not _secured(call, function):
                lines.add(call.lineno)
    return len(seen), sorted(lines)


def test_the_scan_finds_a_client_without_security() -> None:
    source = (
        "def open(bootstrap, security):\n"
        "    a = KafkaConsumer(bootstrap_servers=bootstrap, **security.client_options())\n"
        "    b = KafkaAdminClient(bootstrap_servers=bootstrap)\n"
        "    return faust.App('x', broker='kafka://h')\n"
    )
    assert _unsecured(source) == (3, [3, 4])


def test_every_kafka_client_in_streams_is_given_the_security_settings() -> None:
    total, unsecured = 0, []
    for path in sorted((REPO_ROOT / "streams").rglob("*.py")):
        seen, lines = _unsecured(path.read_text(encoding="utf-8"))
        total += seen
        unsecured += [f"{path.relative_to(REPO_ROOT)}:{line}" for line in lines]
    assert total >= 10, f"the scan found only {total} client constructions"
    assert not unsecured, f"Kafka clients without TLS/SASL settings: {unsecured}"
