"""Fuzzing the FHIR listener: HTTP POSTs -> events or dead letters.

The entry point is the aiohttp application the gateway serves (``fhir_app``), reached
over HTTP on 127.0.0.1 (one server for the module, on a loop in its own thread), so the
routing, the body reading, the content-type checks and the error middleware are all
in the path. Bodies start from ``tests/data/fhir`` (good and bad), mutated as bytes or
as JSON (an element replaced by any JSON value, including a wrong type, dropped, or a
list entry repeated); content types and paths vary too.

The property: never a 5xx (the middleware answers 500 for an exception that escaped);
2xx exactly when the events (each valid) were delivered; 4xx with an OperationOutcome
and exactly one dead letter holding the body's bytes and a reason.
"""

from __future__ import annotations

import asyncio
import copy
import json
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest
from aiohttp.test_utils import TestClient, TestServer
from fhir.resources.R4B.operationoutcome import OperationOutcome
from hypothesis import given
from hypothesis import strategies as st

from schemas.records import DeadLetterReason
from schemas.validation import EventValidator
from streams.gateway.delivery import MemoryDelivery
from streams.gateway.fhir import load_fhir_mapping
from streams.gateway.fhir_http import FHIR_JSON, fhir_app
from tests.unit.fuzz.mutations import JSON_VALUES, fuzzed_bytes, seed_of
from tests.unit.fuzz.profile import FUZZ
from tests.unit.fuzz.tally import TALLY

DATA = Path(__file__).parents[2] / "data" / "fhir"
NOW_MS = 1_767_700_000_000
VALIDATOR = EventValidator(lambda: NOW_MS)
MAPPING = load_fhir_mapping().model_copy(update={"sites": {"ris.site-02": "SITE-02"}})
MAX_BODY = 8 * 1024
SEEDS = [p.read_bytes() for p in sorted((DATA / "good").glob("*.json"))] + [
    p.read_bytes() for p in sorted((DATA / "bad").glob("*.json"))
]
DOCUMENTS = [json.loads(p.read_bytes()) for p in sorted((DATA / "good").glob("*.json"))]
PATH_OF = {"DiagnosticReport": "/fhir/DiagnosticReport", "Communication": "/fhir/Communication"}
PATHS = [
    "/fhir",
    "/fhir/",
    "/fhir/DiagnosticReport",
    "/fhir/Communication",
    "/fhir/Patient",
    "/fhir/DiagnosticReport/1",
]
CONTENT_TYPES = [FHIR_JSON, "application/json", "text/plain", f"{FHIR_JSON}; charset=latin-1", None]


def _leaf_paths(node: Any, path: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    paths = [path]
    if isinstance(node, dict | list):
        for key, child in node.items() if isinstance(node, dict) else enumerate(node):
            paths.extend(_leaf_paths(child, (*path, key)))
    return paths


@st.composite
def json_mutated(draw: st.DrawFn) -> bytes:
    """A good resource with 1-3 elements replaced by any JSON, dropped or repeated."""
    document = copy.deepcopy(draw(seed_of(DOCUMENTS)))
    for _ in range(draw(st.integers(1, 3))):
        path = draw(st.sampled_from(_leaf_paths(document)))
        if not path:
            continue
        parent = document
        for key in path[:-1]:
            parent = parent[key]
        action = draw(st.sampled_from(("replace", "replace", "drop", "repeat")))
        if action == "drop":
            del parent[path[-1]]
        elif action == "repeat" and isinstance(parent, list):
            parent.insert(path[-1], copy.deepcopy(parent[path[-1]]))
        else:
            parent[path[-1]] = draw(JSON_VALUES)
    return json.dumps(document).encode()


@st.composite
def requests(draw: st.DrawFn) -> tuple[str, str | None, bytes]:
    body = draw(st.one_of(fuzzed_bytes(SEEDS).map(bytes), json_mutated(), json_mutated()))
    try:
        kind = orjson.loads(body).get("resourceType")
    except (orjson.JSONDecodeError, AttributeError):
        kind = None
    kind = kind if isinstance(kind, str) else None
    path = (
        PATH_OF.get(kind or "", "/fhir")
        if draw(st.integers(0, 4))
        else draw(st.sampled_from(PATHS))
    )
    content_type = FHIR_JSON if draw(st.integers(0, 4)) else draw(st.sampled_from(CONTENT_TYPES))
    return path, content_type, body


class _Server:
    """The FHIR application on 127.0.0.1, served from a loop in a thread of its own."""

    def __init__(self) -> None:
        self.delivery = MemoryDelivery()
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self._thread.start()
        app = fhir_app(
            MAPPING,
            self.delivery,
            validator=VALIDATOR,
            max_body_bytes=MAX_BODY,
            clock=lambda: NOW_MS,
        )
        self.client: TestClient[Any, Any] = self.call(self._start(app))

    @staticmethod
    async def _start(app: Any) -> TestClient[Any, Any]:
        client: TestClient[Any, Any] = TestClient(TestServer(app, host="127.0.0.1"))
        await client.start_server()
        return client

    def call(self, coroutine: Any) -> Any:
        return asyncio.run_coroutine_threadsafe(coroutine, self.loop).result(30)

    async def _post(self, path: str, content_type: str | None, body: bytes) -> tuple[int, bytes]:
        headers = {} if content_type is None else {"Content-Type": content_type}
        response = await self.client.post(path, data=body, headers=headers)
        return response.status, await response.read()

    def post(self, path: str, content_type: str | None, body: bytes) -> tuple[int, bytes]:
        return self.call(self._post(path, content_type, body))  # type: ignore[no-any-return]

    def close(self) -> None:
        self.call(self.client.close())
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(10)
        self.loop.close()


@pytest.fixture(scope="module")
def server() -> Iterator[_Server]:
    running = _Server()
    yield running
    running.close()


def check_post(server: _Server, path: str, content_type: str | None, body: bytes) -> str:
    """The property of one POST; returns "accepted" or the dead letter's reason."""
    delivery = server.delivery
    delivered, dead = len(delivery.delivered), len(delivery.dead_letters)
    status, answer = server.post(path, content_type, body)
    assert status < 500, answer[:500]
    if status < 300:
        assert len(delivery.dead_letters) == dead
        for item in delivery.delivered[delivered:]:
            assert VALIDATOR.validate(item.event) == item.event
        return "accepted"
    assert len(delivery.delivered) == delivered
    (letter,) = delivery.dead_letters[dead:]
    assert letter.value == body[:65_536]  # an oversized body keeps its first 64 KiB
    assert letter.reason in DeadLetterReason and letter.message
    (issue,) = OperationOutcome.model_validate(orjson.loads(answer)).issue
    assert issue.severity == "error" and issue.diagnostics
    return letter.reason.value


@FUZZ
@given(request=requests())
def test_every_fhir_post_is_delivered_or_dead_lettered_never_a_server_error(
    server: _Server, request: tuple[str, str | None, bytes]
) -> None:
    outcome = check_post(server, *request)
    if outcome == "accepted":
        TALLY.record("fhir post (http)", accepted=1)
    else:
        TALLY.record("fhir post (http)", rejected=[outcome])
