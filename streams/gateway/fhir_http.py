"""The FHIR listener: an aiohttp application in front of ``streams.gateway.fhir``.

``POST [base]/DiagnosticReport``, ``POST [base]/Communication`` and ``POST [base]`` (a
Bundle) are mapped to contract events by :mod:`streams.gateway.fhir` and answered only
once :class:`~streams.gateway.delivery.Delivery` has the events on Kafka: 201 (a
create), 200 with a transaction-/batch-response Bundle, or 200 with an informational
OperationOutcome (a collection, history or subscription notification). ``GET
[base]/metadata`` answers a CapabilityStatement.

Bad input is answered 4xx with an OperationOutcome (400 not FHIR, 415 not FHIR JSON,
422 valid FHIR the mapping cannot use, 413 too large, 404 a resource type not taken),
after its dead letter (original bytes; UNDECODABLE, VALIDATION_FAILED or OVERSIZED) is
on Kafka. The one 5xx for a request that is not an imgov bug is 503: Kafka did not take
the events (or the dead letter); nothing was acknowledged and the client sends again.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any

import orjson
from aiohttp import web
from fhir.resources.R4B.bundle import Bundle
from fhir.resources.R4B.resource import Resource

from schemas.errors import ValidationFailedError
from schemas.events import Event
from schemas.records import DeadLetter, DeadLetterReason, Header
from schemas.validation import EventValidator
from streams.gateway.delivery import SOURCE_HEADER, Delivery, DeliveryError
from streams.gateway.fhir import (
    FhirIssue,
    FhirMapping,
    FhirRefused,
    operation_outcome,
    parse_resource,
    resource_events,
)
from streams.metrics import GatewayMetrics

__all__ = ["FHIR_JSON", "FhirListener", "capability_statement", "fhir_app"]

FHIR_JSON = "application/fhir+json"
_JSON_TYPES = frozenset({FHIR_JSON, "application/json", "application/json+fhir"})
_log = logging.getLogger(__name__)


_CAPABILITY_DATE = "2026-12-07"


def capability_statement(base: str) -> dict[str, Any]:
    """The CapabilityStatement ``GET [base]/metadata`` answers: create of
    DiagnosticReport and Communication, transaction and batch, JSON only."""
    create = [{"code": "create"}]
    return {
        "resourceType": "CapabilityStatement",
        "status": "active",
        "date": _CAPABILITY_DATE,
        "kind": "instance",
        "software": {"name": "imgov gateway"},
        "implementation": {
            "description": "imgov FHIR gateway: reports and AI alerts onto the event "
            "stream (write only: nothing is stored to be read back)",
            "url": base,
        },
        "fhirVersion": "4.0.1",
        "format": [FHIR_JSON, "json"],
        "rest": [
            {
                "mode": "server",
                "resource": [
                    {"type": "DiagnosticReport", "interaction": create},
                    {"type": "Communication", "interaction": create},
                ],
                "interaction": [{"code": "transaction"}, {"code": "batch"}],
            }
        ],
    }


_EVIDENCE_BYTES = 65_536
"""How much of an oversized body its dead letter keeps."""
_ISSUE_OF_STATUS = {404: FhirIssue.NOT_FOUND, 405: FhirIssue.NOT_SUPPORTED, 413: FhirIssue.TOO_LONG}


def _wall_ms() -> int:
    return time.time_ns() // 1_000_000


def _json_response(
    status: int, body: dict[str, Any], headers: dict[str, str] | None = None
) -> web.Response:
    return web.Response(
        status=status,
        body=orjson.dumps(body),
        content_type=FHIR_JSON,
        charset="utf-8",
        headers=headers,
    )


def _outcome_response(
    status: int, error: FhirRefused, headers: dict[str, str] | None = None
) -> web.Response:
    outcome = operation_outcome(error.code, error.diagnostics, expression=error.expression)
    return _json_response(status, outcome, headers)


@web.middleware
async def _outcome_errors(
    request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
) -> web.StreamResponse:
    """Every error is answered as an OperationOutcome; nothing escapes to aiohttp."""
    try:
        return await handler(request)
    except web.HTTPException as exc:
        code = _ISSUE_OF_STATUS.get(exc.status, FhirIssue.INVALID)
        return _outcome_response(exc.status, FhirRefused(code, exc.reason))
    except Exception:  # a bug in imgov, never the input's fault: logged, answered 500
        _log.exception("FHIR request %s %s failed", request.method, request.path)
        error = FhirRefused(FhirIssue.EXCEPTION, "internal error (an imgov bug), logged")
        return _outcome_response(500, error)


class _Listener:
    """The request handlers of :func:`fhir_app`."""

    def __init__(
        self,
        mapping: FhirMapping,
        delivery: Delivery,
        validator: EventValidator | None,
        base: str,
        max_body_bytes: int,
        clock: Callable[[], int],
        metrics: GatewayMetrics | None = None,
    ) -> None:
        self._metrics = metrics
        self._mapping = mapping
        self._delivery = delivery
        self._validator = validator
        self._base = base
        self._max_body_bytes = max_body_bytes
        self._clock = clock
        self._in_flight = 0
        self._idle = asyncio.Event()
        self._idle.set()

    async def drained(self, timeout_s: float) -> bool:
        """Waits until no POST is being handled; False when ``timeout_s`` ran out first."""
        try:
            await asyncio.wait_for(self._idle.wait(), timeout_s)
        except TimeoutError:
            return False
        return True

    async def metadata(self, request: web.Request) -> web.Response:
        return _json_response(200, capability_statement(self._base or "/"))

    async def diagnostic_report(self, request: web.Request) -> web.Response:
        return await self._handle(request, ("DiagnosticReport",))

    async def communication(self, request: web.Request) -> web.Response:
        return await self._handle(request, ("Communication",))

    async def bundle(self, request: web.Request) -> web.Response:
        return await self._handle(request, ("Bundle",))

    async def unsupported(self, request: web.Request) -> web.Response:
        body, _ = await self._read(request)
        kind = request.match_info.get("tail", "").split("/")[0]
        shown = kind if kind.isalnum() and len(kind) <= 64 else "(unreadable)"
        error = FhirRefused(
            FhirIssue.NOT_SUPPORTED,
            f"POST of {shown} is not supported here: DiagnosticReport, Communication, "
            "or a Bundle to the base",
            http_status=404,
        )
        return await self._refuse(request, body, error)

    async def _handle(self, request: web.Request, accept: tuple[str, ...]) -> web.Response:
        self._in_flight += 1
        self._idle.clear()
        started = time.perf_counter()
        try:
            return await self._answer(request, accept)
        finally:
            if self._metrics is not None:
                elapsed = time.perf_counter() - started
                self._metrics.request_duration.labels("fhir").observe(elapsed)
            self._in_flight -= 1
            if not self._in_flight:
                self._idle.set()

    async def _answer(self, request: web.Request, accept: tuple[str, ...]) -> web.Response:
        """Reads, maps and delivers one POST of a resource of a type in ``accept``; the
        answer comes only once its events (or its dead letter) are on Kafka."""
        body, refused = await self._read(request)
        try:
            if refused is not None:
                raise refused
            resource = parse_resource(body, accept)
            events = self._validated(resource_events(resource, self._mapping))
        except FhirRefused as error:
            return await self._refuse(request, body, error)
        except Exception as exc:  # a mapping bug: keep the input, then answer 500
            message = f"mapping failed: {type(exc).__name__} (an imgov bug)"
            await self._dead_letter(request, body, DeadLetterReason.VALIDATION_FAILED, message)
            raise
        control_id = request.headers.get("X-Request-Id", "")[:64] or None
        try:
            if events:
                await self._delivery.deliver(events, source=_source(request), control_id=control_id)
        except DeliveryError as exc:
            _log.warning("FHIR %s: not delivered: %s", request.path, exc)
            transient = FhirRefused(FhirIssue.TRANSIENT, "not on the event stream: send it again")
            return _outcome_response(503, transient, {"Retry-After": "5"})
        return _accepted(request, resource, body, events, self._base)

    def _validated(self, events: list[Event]) -> list[Event]:
        if self._validator is None:
            return events
        try:
            return [self._validator.validate(e) for e in events]
        except ValidationFailedError as exc:
            raise FhirRefused(FhirIssue.VALUE, f"not a valid event: {exc}") from exc

    async def _read(self, request: web.Request) -> tuple[bytes, FhirRefused | None]:
        """The body (its start only when too large) and a refusal of its size or type."""
        limit = self._max_body_bytes
        length = request.content_length
        if length is not None and length > limit:
            head = await request.content.read(_EVIDENCE_BYTES)
            return head, _oversized(f"{length} bytes", limit)
        chunks: list[bytes] = []
        size = 0
        async for chunk in request.content.iter_chunked(_EVIDENCE_BYTES):
            chunks.append(chunk)
            size += len(chunk)
            if size > limit:
                return b"".join(chunks)[:_EVIDENCE_BYTES], _oversized(f"over {limit} bytes", limit)
        body = b"".join(chunks)
        charset = (request.charset or "utf-8").lower()
        if request.content_type not in _JSON_TYPES or charset not in ("utf-8", "utf8"):
            shown = request.headers.get("Content-Type", "(none)")[:80]
            return body, FhirRefused(
                FhirIssue.NOT_SUPPORTED,
                f"content type {shown!r} is not taken: send {FHIR_JSON} (UTF-8)",
                reason=DeadLetterReason.UNDECODABLE,
                http_status=415,
            )
        return body, None

    async def _refuse(self, request: web.Request, body: bytes, error: FhirRefused) -> web.Response:
        _log.info("FHIR %s refused (%s): %s", request.path, error.http_status, error)
        try:
            await self._dead_letter(
                request, body, error.reason, f"HTTP {error.http_status} {error}"
            )
        except DeliveryError as exc:
            _log.warning("FHIR %s: refusal not dead-lettered: %s", request.path, exc)
            transient = FhirRefused(FhirIssue.TRANSIENT, "refused, but not recorded: send it again")
            return _outcome_response(503, transient, {"Retry-After": "5"})
        return _outcome_response(error.http_status, error)

    async def _dead_letter(
        self, request: web.Request, body: bytes, reason: DeadLetterReason, message: str
    ) -> None:
        headers = [Header(key=SOURCE_HEADER, value=_source(request).encode())]
        content_type = request.headers.get("Content-Type")
        if content_type is not None:
            headers.append(Header(key="content-type", value=content_type.encode()[:200]))
        letter = DeadLetter(
            reason=reason,
            message=message,
            value=body,
            headers=tuple(headers),
            received_at_ms=self._clock(),
        )
        await self._delivery.dead_letter(letter)


_LISTENER = web.AppKey("fhir-listener", _Listener)


def _oversized(size: str, limit: int) -> FhirRefused:
    return FhirRefused(
        FhirIssue.TOO_LONG,
        f"the body has {size}, more than the limit of {limit}",
        reason=DeadLetterReason.OVERSIZED,
        http_status=413,
    )


def _source(request: web.Request) -> str:
    peer = request.transport.get_extra_info("peername") if request.transport else None
    if isinstance(peer, tuple) and len(peer) >= 2:
        return f"fhir://{peer[0]}:{peer[1]}{request.path}"
    return f"fhir://{request.remote or 'unknown'}{request.path}"


def _accepted(
    request: web.Request, resource: Resource, body: bytes, events: list[Event], base: str
) -> web.Response:
    """201 for a created resource, a transaction-/batch-response for those Bundles,
    200 with an informational OperationOutcome for other Bundles (notifications)."""
    echo = (
        {"X-Request-Id": request.headers["X-Request-Id"][:64]}
        if "X-Request-Id" in request.headers
        else {}
    )
    summary = f"accepted: {len(events)} event(s) on the stream"
    if isinstance(resource, Bundle):
        if resource.type in ("transaction", "batch"):
            entries = [
                {
                    "response": {
                        "status": "201 Created"
                        if entry.request is None or entry.request.method == "POST"
                        else "200 OK"
                    }
                }
                for entry in resource.entry or []
            ]
            response = {
                "resourceType": "Bundle",
                "type": f"{resource.type}-response",
                "entry": entries,
            }
            return _json_response(200, response, echo)
        return _json_response(
            200, operation_outcome("informational", summary, severity="information"), echo
        )
    kind = resource.get_resource_type()
    digest = hashlib.sha256("\n".join(e.event_id for e in events).encode()).hexdigest()[:32]
    headers = {**echo, "Location": f"{base}/{kind}/{digest}/_history/1"}
    prefer = request.headers.get("Prefer", "")
    if "return=minimal" in prefer:
        return web.Response(status=201, headers=headers)
    if "return=representation" in prefer:
        return web.Response(status=201, body=body, content_type=FHIR_JSON, headers=headers)
    outcome = operation_outcome("informational", summary, severity="information")
    return _json_response(201, outcome, headers)


def fhir_app(
    mapping: FhirMapping,
    delivery: Delivery,
    *,
    validator: EventValidator | None = None,
    base: str = "/fhir",
    max_body_bytes: int = 4 * 1024 * 1024,
    clock: Callable[[], int] = _wall_ms,
    metrics: GatewayMetrics | None = None,
) -> web.Application:
    """The FHIR listener as an aiohttp application.

    Routes: ``POST [base]/DiagnosticReport``, ``POST [base]/Communication``,
    ``POST [base]`` (a Bundle), ``GET [base]/metadata``. A POST anywhere else under
    ``base`` is refused (404) and dead-lettered like any bad input.

    Args:
        mapping: see :func:`load_fhir_mapping`.
        delivery: where accepted events and dead letters go.
        validator: the contract rules applied to every event before delivery (a
            breach is refused 422); None checks types only (the models do).
        base: the path of the FHIR base URL ("" for the root).
        max_body_bytes: larger bodies are refused (413); their dead letter keeps the
            first 64 KiB.
        clock: epoch milliseconds, for the dead letters' ``received_at_ms``.
        metrics: times each POST (protocol ``fhir``), or None.
    """
    base = base.rstrip("/")
    listener = _Listener(mapping, delivery, validator, base, max_body_bytes, clock, metrics)
    app = web.Application(middlewares=[_outcome_errors], client_max_size=max_body_bytes + 1)
    app[_LISTENER] = listener
    app.router.add_get(f"{base}/metadata", listener.metadata)
    app.router.add_post(f"{base}/DiagnosticReport", listener.diagnostic_report)
    app.router.add_post(f"{base}/Communication", listener.communication)
    app.router.add_post(base or "/", listener.bundle)
    if base:
        app.router.add_post(f"{base}/", listener.bundle)
    app.router.add_post(f"{base}/{{tail:.+}}", listener.unsupported)
    return app


class FhirListener:
    """Serves :func:`fhir_app` on a TCP port; the gateway's FHIR listener.

    Args: those of :func:`fhir_app`.
    """

    def __init__(
        self,
        delivery: Delivery,
        mapping: FhirMapping,
        *,
        validator: EventValidator | None = None,
        base: str = "/fhir",
        max_body_bytes: int = 4 * 1024 * 1024,
        clock: Callable[[], int] = _wall_ms,
        metrics: GatewayMetrics | None = None,
    ) -> None:
        self.app = fhir_app(
            mapping,
            delivery,
            validator=validator,
            base=base,
            max_body_bytes=max_body_bytes,
            clock=clock,
            metrics=metrics,
        )
        # Handlers are drained by stop() itself; the runner's own wait is only a backstop.
        self._runner = web.AppRunner(self.app, access_log=None, shutdown_timeout=1.0)
        self._site: web.TCPSite | None = None

    async def start(self, host: str = "127.0.0.1", port: int = 8080) -> None:
        """Listens on ``host:port`` (port 0: any free port, see ``port``)."""
        await self._runner.setup()
        self._site = web.TCPSite(self._runner, host, port)
        await self._site.start()

    @property
    def port(self) -> int:
        """The port listened on (after ``start``)."""
        if self._site is None or not self._runner.addresses:
            raise RuntimeError("the FHIR listener is not started")
        port: int = self._runner.addresses[0][1]
        return port

    async def stop(self, timeout_s: float = 30.0) -> bool:
        """Stops accepting, lets every request in flight be stored and answered, then
        closes every connection. Returns False when ``timeout_s`` ran out first (the
        requests still in flight were cancelled unanswered: their clients send again)."""
        if self._site is None:
            return True
        await self._site.stop()
        finished = await self.app[_LISTENER].drained(timeout_s)
        await self._runner.cleanup()
        self._site = None
        return finished
