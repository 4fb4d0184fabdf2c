"""infra/docker-compose.yml agrees with the scripts CI uses; pure file checks, no Docker.

The compose file is the Docker alternative to ``make up`` (infra/kafka/kafka.sh and
infra/clickhouse/clickhouse.sh). These tests read both sides and check that either way a
user gets the same addresses, users, passwords, database and Kafka version; that the
compose file takes the services' configuration from the project's own files instead of
a copy; and that it runs pinned images published on 127.0.0.1 only. Expected values are
read from the scripts, their configuration files and the settings defaults, never
written down here a second time. What only the images define (the container ports of
ClickHouse, the environment variables the Kafka image does not turn into properties) is
named as such.

The file is read with PyYAML (YAML 1.1, where Compose reads YAML 1.2): the port and
volume entries are quoted strings, which both read alike; a test checks they stay so.
"""

from __future__ import annotations

import re
import tomllib
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any, NamedTuple

import pytest
import yaml

from sinks.clickhouse.settings import ClickHouseSettings
from streams.paths import REPO_ROOT
from streams.runtime.settings import KafkaSettings

INFRA = REPO_ROOT / "infra"
COMPOSE_FILE = INFRA / "docker-compose.yml"
KAFKA_SH = INFRA / "kafka" / "kafka.sh"
KAFKA_POM = INFRA / "kafka" / "pom.xml"
KAFKA_TEMPLATE = INFRA / "kafka" / "server.properties.template"
TOPICS_FILE = INFRA / "kafka" / "topics.toml"
CLICKHOUSE_SH = INFRA / "clickhouse" / "clickhouse.sh"
CLICKHOUSE_CONFIG = INFRA / "clickhouse" / "config.xml"
USERS_XML = INFRA / "clickhouse" / "users.xml"

# Defined by the images, not by imgov.
CLICKHOUSE_NATIVE_PORT = 9000
CLICKHOUSE_HTTP_PORT = 8123
CLICKHOUSE_USERS_D = "/etc/clickhouse-server/users.d/"
KAFKA_MOUNTED_PROPERTIES = "/mnt/shared/config/server.properties"
# KAFKA_* variables that apache/kafka's KafkaDockerWrapper does not append to
# server.properties (they configure the JVM and logging); every other one becomes a property.
KAFKA_IMAGE_NON_PROPERTY_ENV = frozenset(
    {
        "KAFKA_VERSION",
        "KAFKA_HEAP_OPTS",
        "KAFKA_LOG4J_OPTS",
        "KAFKA_OPTS",
        "KAFKA_JMX_OPTS",
        "KAFKA_JVM_PERFORMANCE_OPTS",
        "KAFKA_GC_LOG_OPTS",
        "KAFKA_LOG4J_ROOT_LOGLEVEL",
        "KAFKA_LOG4J_LOGGERS",
        "KAFKA_TOOLS_LOG4J_LOGLEVEL",
        "KAFKA_JMX_HOSTNAME",
    }
)


# --- reading both sides -------------------------------------------------------------------


class Published(NamedTuple):
    host_ip: str
    host_port: int
    container_port: int


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    document = yaml.safe_load(COMPOSE_FILE.read_text(encoding="utf-8"))
    assert isinstance(document, dict) and isinstance(document.get("services"), dict)
    return document


def service(compose: dict[str, Any], name: str) -> dict[str, Any]:
    assert name in compose["services"], f"no service {name!r} in {COMPOSE_FILE}"
    result: dict[str, Any] = compose["services"][name]
    return result


def environment(compose: dict[str, Any], name: str) -> dict[str, str]:
    env = service(compose, name).get("environment") or {}
    assert isinstance(env, dict), "write `environment` as a mapping"
    return {key: str(value) for key, value in env.items()}


def published(compose: dict[str, Any], name: str) -> list[Published]:
    result = []
    for entry in service(compose, name).get("ports") or []:
        # Quoted: YAML 1.1 (PyYAML) and 1.2 (Compose) read an unquoted a:b differently.
        assert isinstance(entry, str), f"{name}: quote the ports entry {entry!r}"
        match = re.fullmatch(r"([\d.]+):(\d+):(\d+)", entry)
        assert match, f'{name}: write ports as "HOST_IP:HOST_PORT:CONTAINER_PORT": {entry!r}'
        result.append(Published(match[1], int(match[2]), int(match[3])))
    return result


def bind_mounts(compose: dict[str, Any], name: str) -> dict[str, tuple[Path, bool]]:
    """Returns ``{container path: (host file, read-only)}`` of a service's bind mounts."""
    mounts = {}
    for entry in service(compose, name).get("volumes") or []:
        source, target, *mode = str(entry).split(":")
        if source.startswith((".", "/")):
            mounts[target] = ((COMPOSE_FILE.parent / source).resolve(), mode == ["ro"])
    return mounts


def script_default(script: Path, variable: str) -> str:
    """Returns the default of ``${variable:-default}`` in a shell script."""
    pattern = rf"\$\{{{variable}:-([^}}]*)\}}"
    found: set[str] = set(re.findall(pattern, script.read_text(encoding="utf-8")))
    assert len(found) == 1, f"{script.name}: expected one default for {variable}, found {found}"
    return found.pop()


def properties(path: Path) -> dict[str, str]:
    result = {}
    for line in path.read_text(encoding="utf-8").splitlines():
        line = line.strip()
        if line and not line.startswith(("#", "!")):
            key, _, value = line.partition("=")
            result[key.strip()] = value.strip()
    return result


def property_of_kafka_env(name: str) -> str:
    """The broker property that apache/kafka writes for a ``KAFKA_*`` variable."""
    return (
        name.removeprefix("KAFKA_").lower().replace("_", ".").replace("...", "-").replace("..", "_")
    )


def listener_ports(listeners: str) -> dict[str, int]:
    """Returns ``{listener name: port}`` of a ``NAME://host:port,...`` list."""
    return {name: int(port) for name, port in re.findall(r"([A-Z_]+)://[^,]*?:(\d+)", listeners)}


def users_xml() -> dict[str, ET.Element]:
    users = ET.parse(USERS_XML).getroot().find("users")
    assert users is not None
    return {user.tag: user for user in users}


def settings_default(settings: type[Any], field: str) -> Any:
    """A settings field's default, whatever ``IMGOV_*`` says in this test's environment."""
    default = settings.model_fields[field].default
    return default.get_secret_value() if hasattr(default, "get_secret_value") else default


# --- both services ------------------------------------------------------------------------


def test_the_compose_file_runs_kafka_and_clickhouse(compose: dict[str, Any]) -> None:
    assert {"kafka", "clickhouse"} <= set(compose["services"])


def test_every_port_is_published_on_loopback_only(compose: dict[str, Any]) -> None:
    for name, definition in compose["services"].items():
        assert definition.get("network_mode") != "host", name
        assert definition.get("ports"), f"{name} publishes no port"
        for port in published(compose, name):
            assert port.host_ip == "127.0.0.1", f"{name} publishes {port} beyond loopback"


def test_images_are_pinned_to_versions(compose: dict[str, Any]) -> None:
    for name, definition in compose["services"].items():
        image = str(definition.get("image", ""))
        repository, _, tag = image.partition(":")
        assert repository and re.fullmatch(r"\d+(\.\d+)+", tag), (
            f"{name}: pin the image to a version tag (not `latest`, not untagged): {image!r}"
        )


def test_every_service_has_a_healthcheck(compose: dict[str, Any]) -> None:
    for name, definition in compose["services"].items():
        test = (definition.get("healthcheck") or {}).get("test")
        assert isinstance(test, list) and test[0] in {"CMD", "CMD-SHELL"}, name


def test_mounted_files_exist_and_named_volumes_are_declared(compose: dict[str, Any]) -> None:
    declared = set(compose.get("volumes") or {})
    for name, definition in compose["services"].items():
        for path, read_only in bind_mounts(compose, name).values():
            assert path.is_file(), f"{name} mounts {path}, which does not exist"
            assert read_only, f"{name} must mount {path} read-only"
        for entry in definition.get("volumes") or []:
            source = str(entry).split(":")[0]
            if not source.startswith((".", "/")):
                assert source in declared, f"{name} uses undeclared volume {source!r}"


def test_topics_are_created_by_imgov_from_topics_toml_not_by_the_compose_file(
    compose: dict[str, Any],
) -> None:
    text = COMPOSE_FILE.read_text(encoding="utf-8")
    topics = tomllib.loads(TOPICS_FILE.read_text(encoding="utf-8"))["topics"]
    assert topics
    copied = [topic for topic in topics if topic in text]
    assert not copied, f"topics.toml is the one definition of the topics; found {copied}"
    assert "kafka-topics" not in text
    assert "imgov topics create" in text, "the header must say how the topics are created"


# --- Kafka --------------------------------------------------------------------------------


def test_kafka_is_the_broker_version_that_ci_tests(compose: dict[str, Any]) -> None:
    namespace = {"m": "http://maven.apache.org/POM/4.0.0"}
    version = ET.parse(KAFKA_POM).getroot().findtext("m:properties/m:kafka.version", "", namespace)
    assert version
    assert service(compose, "kafka")["image"] == f"apache/kafka:{version}"


def test_kafka_is_where_the_scripts_and_the_settings_default_put_it(
    compose: dict[str, Any],
) -> None:
    port = int(script_default(KAFKA_SH, "IMGOV_KAFKA_PORT"))
    bootstrap = settings_default(KafkaSettings, "bootstrap")
    assert bootstrap == f"127.0.0.1:{port}"

    env = environment(compose, "kafka")
    broker_port = listener_ports(env["KAFKA_LISTENERS"])["PLAINTEXT"]
    expected = [Published("127.0.0.1", port, broker_port)]
    assert published(compose, "kafka") == expected, f"kafka.sh and KafkaSettings say {bootstrap}"
    # Clients are sent back to the advertised address: the host's, as with kafka.sh.
    assert env["KAFKA_ADVERTISED_LISTENERS"] == f"PLAINTEXT://{bootstrap}"


def test_kafka_controller_matches_the_script_and_the_template(compose: dict[str, Any]) -> None:
    template = properties(KAFKA_TEMPLATE)
    env = environment(compose, "kafka")
    controller_port = int(script_default(KAFKA_SH, "IMGOV_KAFKA_CONTROLLER_PORT"))
    listeners = listener_ports(env["KAFKA_LISTENERS"])

    voters = f"{template['node.id']}@127.0.0.1:{controller_port}"
    protocols = template["listener.security.protocol.map"].split(",")

    assert listeners["CONTROLLER"] == controller_port
    assert env["KAFKA_CONTROLLER_QUORUM_VOTERS"] == voters
    assert set(listeners) == {pair.split(":")[0] for pair in protocols}
    assert template["controller.listener.names"] in listeners
    assert template["inter.broker.listener.name"] in listeners


def test_kafka_reads_the_template_and_replaces_only_its_placeholders(
    compose: dict[str, Any],
) -> None:
    mounts = bind_mounts(compose, "kafka")
    assert mounts.get(KAFKA_MOUNTED_PROPERTIES) == (KAFKA_TEMPLATE.resolve(), True)

    placeholders = {key for key, value in properties(KAFKA_TEMPLATE).items() if "@" in value}
    assert placeholders, "the template is expected to have @PLACEHOLDER@ values"
    overridden = {
        property_of_kafka_env(name)
        for name in environment(compose, "kafka")
        if name.startswith("KAFKA_") and name not in KAFKA_IMAGE_NON_PROPERTY_ENV
    }
    assert overridden == placeholders, (
        "set exactly the template's placeholder properties in the environment; the other "
        f"settings come from the template (missing {placeholders - overridden}, "
        f"copied {overridden - placeholders})"
    )


def test_kafka_heap_is_the_script_default(compose: dict[str, Any]) -> None:
    heap = script_default(KAFKA_SH, "IMGOV_KAFKA_HEAP")
    heap_min = script_default(KAFKA_SH, "IMGOV_KAFKA_HEAP_MIN")
    assert environment(compose, "kafka")["KAFKA_HEAP_OPTS"] == f"-Xmx{heap} -Xms{heap_min}"


# --- ClickHouse ---------------------------------------------------------------------------


def test_clickhouse_is_where_the_scripts_and_the_settings_default_put_it(
    compose: dict[str, Any],
) -> None:
    native = int(script_default(CLICKHOUSE_SH, "IMGOV_CLICKHOUSE_PORT"))
    http = int(script_default(CLICKHOUSE_SH, "IMGOV_CLICKHOUSE_HTTP_PORT"))
    assert settings_default(ClickHouseSettings, "host") == "127.0.0.1"
    assert settings_default(ClickHouseSettings, "port") == native
    expected = [
        Published("127.0.0.1", native, CLICKHOUSE_NATIVE_PORT),
        Published("127.0.0.1", http, CLICKHOUSE_HTTP_PORT),
    ]
    assert sorted(published(compose, "clickhouse")) == sorted(expected), (
        f"clickhouse.sh and ClickHouseSettings say native {native}, HTTP {http}"
    )


def test_clickhouse_reads_the_users_file_of_the_script(compose: dict[str, Any]) -> None:
    script_users = re.search(r'^USERS_XML="\$SCRIPT_DIR/([^"]+)"$', CLICKHOUSE_SH.read_text(), re.M)
    assert script_users and CLICKHOUSE_SH.parent / script_users[1] == USERS_XML

    users_d = {
        Path(target).name: source
        for target, (source, _) in bind_mounts(compose, "clickhouse").items()
        if target.startswith(CLICKHOUSE_USERS_D)
    }
    project = [name for name, source in users_d.items() if source == USERS_XML.resolve()]
    assert len(project) == 1, f"mount {USERS_XML} once into {CLICKHOUSE_USERS_D}"
    # ClickHouse merges users.d in name order: overrides must come after users.xml.
    merged_before = [name for name in users_d if name < project[0]]
    assert not merged_before, f"{merged_before} would be merged before users.xml"


def test_the_docker_override_only_opens_networks_of_users_of_users_xml(
    compose: dict[str, Any],
) -> None:
    overrides = [
        source
        for target, (source, _) in bind_mounts(compose, "clickhouse").items()
        if target.startswith(CLICKHOUSE_USERS_D) and source != USERS_XML.resolve()
    ]
    assert len(overrides) == 1
    root = ET.parse(overrides[0]).getroot()
    assert root.tag in {"clickhouse", "yandex"}
    assert [child.tag for child in root] == ["users"]
    defined = users_xml()
    changed = list(root.find("users") or [])
    assert changed
    for user in changed:
        assert user.tag in defined, f"the override names {user.tag}, not a user of users.xml"
        assert user.tag != "default", "the admin user stays loopback-only"
        assert [(part.tag, part.get("replace")) for part in user] == [("networks", "replace")]


def test_settings_default_user_and_password_are_those_of_users_xml() -> None:
    user = users_xml().get(settings_default(ClickHouseSettings, "user"))
    assert user is not None
    assert user.findtext("password") == settings_default(ClickHouseSettings, "password")


def test_clickhouse_database_is_the_one_the_script_creates(compose: dict[str, Any]) -> None:
    created = re.findall(r"CREATE DATABASE IF NOT EXISTS (\w+)", CLICKHOUSE_SH.read_text())
    assert len(set(created)) == 1
    database = created[0]
    assert settings_default(ClickHouseSettings, "database") == database
    assert environment(compose, "clickhouse")["CLICKHOUSE_DB"] == database
    compliance = users_xml()["compliance"]
    assert database in [db.text for db in compliance.iterfind("allow_databases/database")]
    healthcheck = " ".join(service(compose, "clickhouse")["healthcheck"]["test"])
    assert f"EXISTS DATABASE {database}" in healthcheck


def test_clickhouse_timezone_is_the_script_config(compose: dict[str, Any]) -> None:
    timezone = ET.parse(CLICKHOUSE_CONFIG).getroot().findtext("timezone")
    assert timezone and environment(compose, "clickhouse")["TZ"] == timezone
