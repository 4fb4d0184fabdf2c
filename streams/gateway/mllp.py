"""The HL7 v2 listener: ORU^R01 over MLLP -> ReportEvents on Kafka (DESIGN §7, §11).

An MLLP frame is ``<VT> message <FS><CR>``; each one gets one framed ACK back, on the
same connection and in order. Per frame, :meth:`MllpListener.answer`:

1. parses the message and maps it (``streams.gateway.hl7``), then checks the events
   against the contract rules;
2. delivers the events; only once Kafka acknowledged them all is the answer AA;
3. a message it cannot accept is dead-lettered with its original bytes (UNDECODABLE
   when it is no HL7 at all, VALIDATION_FAILED when its content is refused, OVERSIZED
   past ``max_message_bytes``) and answered AR or AE with the reason in ERR;
4. when Kafka does not confirm the events (or the dead letter) the answer is AR with
   ERR code 207, "send the message again", and nothing is dead-lettered: the message
   may be good. AR is HL7's answer for a refusal unrelated to the content (the
   receiver not available), the one interface engines resend; AE says the content is
   wrong, and is not resent unchanged;
5. a message the mapping fails on (a bug, not the message's fault) is dead-lettered
   and answered AE 207: it waits in the dead-letter topic for the fixed mapping, and a
   resend would only add another dead letter.

So every answer is AA (events on Kafka), AR/AE (dead letter on Kafka) or AR 207
(resend); a message left without an answer (the connection broke, the gateway stopped
past its timeout) is sent again by its sender: nothing is lost. A frame that is not
MLLP (no start block) is answered AR like any other undecodable message. No input ends
the listener; an error in one connection closes that connection only.

Provenance (DESIGN §6): ``mllp://<peer host>:<peer port>`` and the message's control id
(MSH-10) travel with every event and dead letter.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import hl7  # type: ignore[import-untyped]
from hl7.mllp import start_hl7_server  # type: ignore[import-untyped]

from schemas.errors import ValidationFailedError
from schemas.events import Event
from schemas.records import DeadLetter, DeadLetterReason, Header
from schemas.validation import EventValidator
from streams.gateway.delivery import Delivery, DeliveryError, provenance_headers
from streams.gateway.hl7 import (
    Hl7Error,
    Hl7Mapping,
    Hl7Refused,
    acknowledgement,
    parse_message,
    report_events,
)
from streams.metrics import GatewayMetrics

__all__ = ["APPLICATION_ERROR", "MllpListener", "frame", "unframe"]

log = logging.getLogger("imgov.gateway.mllp")

START_BLOCK = b"\x0b"
END_BLOCK = b"\x1c\x0d"
APPLICATION_ERROR = "207"
"""HL7 table 0357: application internal error (Kafka did not take the message)."""

_KEPT_OF_OVERSIZED = 64 * 1024
"""Bytes of an oversized frame kept in its dead letter (the DLQ has a size limit too)."""
_FRAMING_ROOM = 64
"""Bytes the reader takes beyond the limit: the frame's delimiters, white space before it."""
_STUB_MSH = "MSH|^~\\&|||IMGOV|IMGOV|||ORU^R01||P|2.5.1"
"""Stands in for a message without a usable MSH, to address its ACK."""


def frame(message: bytes) -> bytes:
    """``message`` in an MLLP frame."""
    return START_BLOCK + message + END_BLOCK


def unframe(block: bytes) -> bytes | None:
    """The message of one MLLP frame (end block included or not); None when ``block``
    does not begin with the start block (white space before it is tolerated)."""
    if block.endswith(END_BLOCK):
        block = block[: -len(END_BLOCK)]
    block = block.lstrip(b"\r\n\t ")
    return block[1:] if block.startswith(START_BLOCK) else None


class _BadFrame(Exception):
    """A frame that holds no message; ``ended``: the connection ended inside it."""

    def __init__(
        self, reason: DeadLetterReason, data: bytes, message: str, *, ended: bool = False
    ) -> None:
        super().__init__(message)
        self.reason = reason
        self.data = data
        self.ended = ended


@dataclass(eq=False, slots=True)
class _Connection:
    source: str
    task: asyncio.Task[None] | None = None
    busy: bool = False
    answered: int = 0


class MllpListener:
    """Serves MLLP connections; one listener per process (see ``imgov gateway``).

    Args:
        delivery: where accepted events and dead letters go.
        mapping: the ORU^R01 mapping.
        validator: the contract rules applied to every event before delivery; None
            checks types only (the models do).
        max_message_bytes: a larger frame is refused as OVERSIZED.
        clock: epoch milliseconds, for ``received_at_ms`` of dead letters.
        metrics: times each answer (protocol ``hl7``), or None.
    """

    def __init__(
        self,
        delivery: Delivery,
        mapping: Hl7Mapping,
        *,
        validator: EventValidator | None = None,
        max_message_bytes: int = 1 << 20,
        clock: Callable[[], int] = lambda: time.time_ns() // 1_000_000,
        metrics: GatewayMetrics | None = None,
    ) -> None:
        self._delivery = delivery
        self._metrics = metrics
        self._mapping = mapping
        self._validator = validator
        self._max_bytes = max_message_bytes
        self._clock = clock
        self._server: asyncio.Server | None = None
        self._connections: set[_Connection] = set()
        self._stopping = False

    # --- one message ------------------------------------------------------------------

    async def answer(self, data: bytes, source: str) -> bytes:
        """The ACK of one MLLP message (without framing), once what it says is stored.

        Never raises for any ``data``: a refusal is an AR/AE answer, an outage an AR (resend).
        """
        started = time.perf_counter()
        try:
            return await self._answer(data, source)
        finally:
            if self._metrics is not None:
                elapsed = time.perf_counter() - started
                self._metrics.request_duration.labels("hl7").observe(elapsed)

    async def _answer(self, data: bytes, source: str) -> bytes:
        message: Any = None
        try:
            message = parse_message(data)
            events = self._validated(report_events(message, self._mapping))
        except Hl7Refused as refused:
            undecodable = message is None
            reason = (
                DeadLetterReason.UNDECODABLE if undecodable else DeadLetterReason.VALIDATION_FAILED
            )
            return await self._refuse(data, source, message, refused, reason)
        except Exception as exc:  # a bug in mapping this message must not lose it
            log.exception("%s: the message could not be mapped", source)
            failure = Hl7Refused(
                APPLICATION_ERROR,
                "",
                f"the message could not be mapped ({type(exc).__name__}); it is kept as a"
                " dead letter, to be processed again once the gateway is fixed",
            )
            return await self._refuse(
                data, source, message, failure, DeadLetterReason.VALIDATION_FAILED
            )
        control_id = _control_id(message)
        try:
            await self._delivery.deliver(events, source=source, control_id=control_id)
        except DeliveryError as exc:
            log.warning("%s control id %s: not stored: %s", source, control_id, exc)
            return _error_ack(message, f"not confirmed as stored ({exc}); send the message again")
        except Exception:
            log.exception("%s control id %s: delivery failed", source, control_id)
            return _error_ack(message, "not stored (internal error); send the message again")
        return _ack(message, None)

    def _validated(self, events: Sequence[Event]) -> list[Event]:
        if self._validator is None:
            return list(events)
        try:
            return [self._validator.validate(e) for e in events]
        except ValidationFailedError as exc:
            raise Hl7Refused(Hl7Error.DATA_TYPE, "OBR", f"not a valid report: {exc}") from exc

    async def _refuse(
        self,
        data: bytes,
        source: str,
        message: Any,
        refused: Hl7Refused,
        reason: DeadLetterReason,
    ) -> bytes:
        control_id = None if message is None else _control_id(message)
        letter = self._dead_letter(data, source, control_id, reason, str(refused))
        try:
            await self._delivery.dead_letter(letter)
        except DeliveryError as exc:
            log.warning("%s: a refused message was not dead-lettered: %s", source, exc)
            return _error_ack(message, f"not confirmed as stored ({exc}); send the message again")
        except Exception:
            log.exception("%s: dead-lettering failed", source)
            return _error_ack(message, "not stored (internal error); send the message again")
        log.info("%s control id %s: refused (%s): %s", source, control_id, reason, refused)
        return _ack(message, refused)

    def _dead_letter(
        self,
        data: bytes,
        source: str,
        control_id: str | None,
        reason: DeadLetterReason,
        why: str,
    ) -> DeadLetter:
        where = source if control_id is None else f"{source} control id {control_id}"
        return DeadLetter(
            reason=reason,
            message=f"HL7 v2 over MLLP, {where}: {why}",
            value=data,
            headers=tuple(
                Header(key=k, value=v) for k, v in provenance_headers(source, control_id)
            ),
            received_at_ms=self._clock(),
        )

    # --- the server -------------------------------------------------------------------

    async def start(self, host: str = "127.0.0.1", port: int = 2575) -> None:
        """Listens on ``host:port`` (port 0: any free port, see ``port``)."""
        self._server = await start_hl7_server(
            self._serve, host, port, limit=self._max_bytes + _FRAMING_ROOM
        )

    @property
    def port(self) -> int:
        """The port listened on (after ``start``)."""
        if self._server is None:
            raise RuntimeError("the MLLP listener is not started")
        port: int = self._server.sockets[0].getsockname()[1]
        return port

    async def stop(self, timeout_s: float = 30.0) -> bool:
        """Stops accepting, lets every message in flight be stored and answered, then
        closes every connection. Returns False when ``timeout_s`` ran out first (the
        messages still in flight were not answered: their senders send them again)."""
        self._stopping = True
        if self._server is not None:
            self._server.close()
        for connection in self._connections:
            if not connection.busy and connection.task is not None:
                connection.task.cancel()  # waiting for a frame: nothing to finish
        tasks = [c.task for c in self._connections if c.task is not None]
        finished = True
        if tasks:
            _, pending = await asyncio.wait(tasks, timeout=timeout_s)
            for task in pending:
                task.cancel()
            finished = not pending
        if self._server is not None:
            await self._server.wait_closed()
        return finished

    async def _serve(self, reader: Any, writer: Any) -> None:
        peer = writer.get_extra_info("peername") or ("?", 0)
        connection = _Connection(f"mllp://{peer[0]}:{peer[1]}", asyncio.current_task())
        self._connections.add(connection)
        log.debug("%s: connected", connection.source)
        try:
            while not self._stopping:
                try:
                    data = await self._next_frame(reader)
                except _BadFrame as bad:
                    connection.busy = True
                    reply = await self._answer_bad_frame(bad, connection.source)
                    if reply is None:
                        break
                else:
                    if data is None:
                        break
                    connection.busy = True
                    reply = await self.answer(data, connection.source)
                writer.write(frame(reply))
                await writer.drain()
                connection.answered += 1
                connection.busy = False
        except (ConnectionError, asyncio.CancelledError):
            pass  # the peer went away, or the listener stops: nothing was acknowledged
        except Exception:
            log.exception("%s: connection failed", connection.source)
        finally:
            self._connections.discard(connection)
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()
            log.debug("%s: closed after %d answers", connection.source, connection.answered)

    async def _next_frame(self, reader: asyncio.StreamReader) -> bytes | None:
        """The next message; None at the end of the connection.

        Raises:
            _BadFrame: with the bytes it read.
        """
        kept = bytearray()
        size = 0
        while True:
            try:
                block = await reader.readuntil(END_BLOCK)
                break
            except asyncio.IncompleteReadError as exc:
                if not (kept + exc.partial).strip():
                    return None
                raise _BadFrame(
                    DeadLetterReason.UNDECODABLE,
                    bytes(kept + exc.partial),
                    "the connection ended in the middle of a frame",
                    ended=True,
                ) from exc
            except asyncio.LimitOverrunError as exc:
                # Past the limit: read on to the end of the frame, keeping its start only.
                chunk = await reader.readexactly(max(exc.consumed, 1))
                size += len(chunk)
                kept += chunk[: _KEPT_OF_OVERSIZED - len(kept)]
        if kept:  # the frame ran past the reader's limit
            raise self._oversized(kept, size + len(block))
        message = unframe(block)
        if message is None:
            raise _BadFrame(
                DeadLetterReason.UNDECODABLE,
                block[: -len(END_BLOCK)],
                "not an MLLP frame: no start block (0x0b)",
            )
        if len(message) > self._max_bytes:
            raise self._oversized(block[:_KEPT_OF_OVERSIZED], len(block))
        return message

    def _oversized(self, kept: bytes | bytearray, size: int) -> _BadFrame:
        return _BadFrame(
            DeadLetterReason.OVERSIZED,
            bytes(kept),
            f"a frame of {size:,} bytes exceeds the limit of {self._max_bytes:,} bytes "
            f"(only its first {len(kept):,} bytes are kept)",
        )

    async def _answer_bad_frame(self, bad: _BadFrame, source: str) -> bytes | None:
        """Dead-letters a frame that holds no message; its AR, or None when the
        connection ended (no one to answer)."""
        ended = bad.ended
        letter = self._dead_letter(bad.data, source, None, bad.reason, str(bad))
        try:
            await self._delivery.dead_letter(letter)
        except Exception as exc:  # DeliveryError, or a bug: the sender is told to resend
            log.warning("%s: a bad frame was not dead-lettered: %s", source, exc)
            return None if ended else _error_ack(None, "not stored; send the message again")
        log.info("%s: bad frame (%s): %s", source, bad.reason, bad)
        if ended:
            return None
        code = Hl7Error.SEGMENT_SEQUENCE
        return _ack(None, Hl7Refused(code, "", str(bad), reject=True))


def _control_id(message: Any) -> str | None:
    try:
        value = str(message.segment("MSH")(10)).strip()
    except (KeyError, IndexError, TypeError, ValueError):
        return None
    return value or None


def _stub() -> Any:
    return hl7.parse(_STUB_MSH)


def _ack(message: Any, error: Hl7Refused | None) -> bytes:
    """The ACK as bytes; a message whose MSH cannot be answered gets a stub's."""
    if error is not None and error.code == APPLICATION_ERROR:
        return _error_ack(message, error.reason, acknowledgement_code="AE")
    try:
        return acknowledgement(message if message is not None else _stub(), error).encode()
    except Exception:  # an MSH too broken for python-hl7 to build an ACK from
        return acknowledgement(_stub(), error).encode()


def _error_ack(message: Any, reason: str, acknowledgement_code: str = "AR") -> bytes:
    """An ACK with ERR code 207 (application internal error): AR, the sender resends
    (the receiver was not available); AE for a message kept as a dead letter."""
    try:
        ack = str((message if message is not None else _stub()).create_ack(acknowledgement_code))
    except Exception:
        ack = str(_stub().create_ack(acknowledgement_code))
    text = _stub().escape(reason)
    err = f"ERR|||{APPLICATION_ERROR}^Application internal error^HL70357|E||||{text}"
    return f"{ack.rstrip(chr(13))}\r{err}".encode()
