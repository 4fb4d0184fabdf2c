"""The HTTP registry client against a tiny in-process Confluent-compatible registry.

The double implements only the endpoints the client uses, on 127.0.0.1, in a thread.
"""

from __future__ import annotations

import json
import re
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest
from typer.testing import CliRunner

from schemas.codec import Codec
from schemas.compatibility import backward_problems
from schemas.errors import (
    IncompatibleSchemaError,
    RegistryUnavailableError,
    SchemaError,
    SchemaNotFoundError,
)
from schemas.events import Event
from schemas.file_registry import REGISTRY_DIR
from schemas.http_registry import HttpSchemaRegistry
from schemas.subjects import load_avsc
from streams.cli.schemas import schemas_app

INFERENCE = "imgov.events.v1.InferenceEvent"


class FakeRegistry:
    """State of the double: subjects -> [schema id], ids -> schema text (sequential ids)."""

    def __init__(self) -> None:
        self.schemas: dict[int, str] = {}
        self.subjects: dict[str, list[int]] = {}
        self.requests: list[tuple[str, str, dict[str, str]]] = []
        self.fail_next: int | None = None

    def handle(self, method: str, path: str, body: Any) -> tuple[int, Any]:
        if self.fail_next:
            code, self.fail_next = self.fail_next, None
            return code, {"error_code": code * 100, "message": "boom"}
        if method == "GET" and path == "/subjects":
            return 200, sorted(self.subjects)
        if match := re.fullmatch(r"/schemas/ids/(\d+)", path):
            schema_id = int(match[1])
            if schema_id not in self.schemas:
                return 404, {"error_code": 40403, "message": "Schema not found"}
            return 200, {"schema": self.schemas[schema_id]}
        if match := re.fullmatch(r"/compatibility/subjects/([^/]+)/versions/latest", path):
            latest = json.loads(self.schemas[self.subjects[match[1]][-1]])
            ok = not backward_problems(json.loads(body["schema"]), latest)
            return 200, {"is_compatible": ok}
        match = re.fullmatch(r"/subjects/([^/]+)(/versions(?:/(\d+))?)?", path)
        if match is None:
            return 404, {"error_code": 404, "message": "no route"}
        subject, versions, number = match[1], match[2], match[3]
        ids = self.subjects.get(subject)
        if method == "POST" and versions:  # register
            text = json.dumps(json.loads(body["schema"]), sort_keys=True)
            known = next((i for i, s in self.schemas.items() if s == text), None)
            schema_id = known or len(self.schemas) + 1
            self.schemas[schema_id] = text
            entry = self.subjects.setdefault(subject, [])
            if schema_id not in entry:
                entry.append(schema_id)
            return 200, {"id": schema_id}
        if ids is None:
            return 404, {"error_code": 40401, "message": f"Subject '{subject}' not found."}
        if method == "POST":  # look up
            text = json.dumps(json.loads(body["schema"]), sort_keys=True)
            for version, schema_id in enumerate(ids, start=1):
                if self.schemas[schema_id] == text:
                    return 200, {"subject": subject, "id": schema_id, "version": version,
                                 "schema": text}  # fmt: skip
            return 404, {"error_code": 40403, "message": "Schema not found"}
        if number is None:
            return 200, list(range(1, len(ids) + 1))
        schema_id = ids[int(number) - 1]
        return 200, {"subject": subject, "version": int(number), "id": schema_id,
                     "schema": self.schemas[schema_id]}  # fmt: skip


@pytest.fixture()
def fake() -> Iterator[tuple[FakeRegistry, str]]:
    state = FakeRegistry()

    class Handler(BaseHTTPRequestHandler):
        def _serve(self) -> None:
            length = int(self.headers.get("Content-Length") or 0)
            body = json.loads(self.rfile.read(length)) if length else None
            path = self.path.replace("%2E", ".").replace("%2e", ".")
            state.requests.append((self.command, path, dict(self.headers)))
            code, answer = state.handle(self.command, path, body)
            payload = json.dumps(answer).encode()
            self.send_response(code)
            self.send_header("Content-Type", "application/vnd.schemaregistry.v1+json")
            self.send_header("Content-Length", str(len(payload)))
            self.end_headers()
            self.wfile.write(payload)

        do_GET = do_POST = _serve

        def log_message(self, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, args=(0.02,), daemon=True)
    thread.start()
    try:
        yield state, f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)


def test_register_look_up_and_fetch(fake: tuple[FakeRegistry, str]) -> None:
    state, url = fake
    client = HttpSchemaRegistry(url)
    schema = load_avsc()[INFERENCE]
    schema_id = client.register(INFERENCE, schema)
    assert client.id_for(INFERENCE, schema) == schema_id
    assert HttpSchemaRegistry(url).schema_by_id(schema_id) == json.loads(state.schemas[schema_id])
    assert client.subjects() == [INFERENCE]
    (version,) = client.versions(INFERENCE)
    assert (version.version, version.schema_id) == (1, schema_id)
    assert client.versions("no.such.Subject") == []
    assert client.is_compatible(INFERENCE, schema)
    method, path, headers = state.requests[0]
    assert (method, path) == ("POST", f"/subjects/{INFERENCE}/versions")
    assert headers["Content-Type"] == "application/vnd.schemaregistry.v1+json"


def test_answers_are_cached(fake: tuple[FakeRegistry, str]) -> None:
    state, url = fake
    client = HttpSchemaRegistry(url)
    schema_id = client.register(INFERENCE, load_avsc()[INFERENCE])
    before = len(state.requests)
    for _ in range(3):
        client.schema_by_id(schema_id)
        client.id_for(INFERENCE, load_avsc()[INFERENCE])
    assert len(state.requests) == before + 1


def test_http_errors_are_typed(fake: tuple[FakeRegistry, str]) -> None:
    state, url = fake
    client = HttpSchemaRegistry(url)
    with pytest.raises(SchemaNotFoundError, match="HTTP 404: Schema not found"):
        client.schema_by_id(99)
    with pytest.raises(SchemaNotFoundError, match="not found"):
        client.id_for(INFERENCE, load_avsc()[INFERENCE])
    state.fail_next = 503
    with pytest.raises(RegistryUnavailableError, match="HTTP 503: boom"):
        client.subjects()
    state.fail_next = 409
    with pytest.raises(IncompatibleSchemaError):
        client.register(INFERENCE, load_avsc()[INFERENCE])
    state.fail_next = 422
    with pytest.raises(SchemaError, match="HTTP 422"):
        client.subjects()


def test_an_unreachable_registry_is_unavailable() -> None:
    with pytest.raises(RegistryUnavailableError):
        HttpSchemaRegistry("http://127.0.0.1:9", timeout_s=2).schema_by_id(1)


def test_credentials_in_the_url_become_basic_auth(fake: tuple[FakeRegistry, str]) -> None:
    state, url = fake
    HttpSchemaRegistry(url.replace("http://", "http://reader:s%40cret@")).subjects()
    _, _, headers = state.requests[-1]
    assert headers["Authorization"] == "Basic cmVhZGVyOnNAY3JldA=="  # reader:s@cret


def test_publish_then_decode_through_the_http_registry(
    fake: tuple[FakeRegistry, str], events: list[Event]
) -> None:
    state, url = fake
    result = CliRunner().invoke(schemas_app, ["publish", "--url", url])
    assert result.exit_code == 0, result.output
    versions = sum(len(json.loads(p.read_text())["versions"]) for p in REGISTRY_DIR.glob("*.json"))
    assert len(state.schemas) == versions and len(state.subjects[INFERENCE]) == 2
    codec = Codec(HttpSchemaRegistry(url))
    for event in events[:20]:
        encoded = codec.encode(event)
        assert int.from_bytes(encoded[1:5], "big") <= 9  # the remote registry's ids
        assert codec.decode_event(encoded) == event
