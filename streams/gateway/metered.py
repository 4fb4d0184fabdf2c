"""What each listener's messages came to, counted at the delivery seam.

Every message a listener answers ends in exactly one of: its events delivered
(``accepted``), its dead letter written (``rejected``, the sender is told why), or
neither (``retry``: the answer asks the sender to send it again, so nothing is lost).
:class:`MeteredDelivery` wraps the process's one delivery per listener and counts
them, with the dead letters by reason and the messages produced by topic, without the
listeners knowing (``imgov_gateway_messages_total``, ``imgov_dead_letters_total``,
``imgov_output_messages_total``).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence

from schemas.events import Event, EventType
from schemas.records import DeadLetter
from streams.gateway.delivery import Delivery
from streams.metrics import GatewayMetrics
from streams.topics import WorkerTopics

__all__ = ["MeteredDelivery"]


class MeteredDelivery:
    """A :class:`Delivery` that counts outcomes for one protocol.

    Args:
        inner: the delivery that does the work (shared by the listeners).
        metrics: the gateway's metrics.
        protocol: the label of the listener's protocol (``hl7``, ``fhir``, ``dicom_sr``).
        topics: the topic names, for the output counts.
    """

    def __init__(
        self, inner: Delivery, metrics: GatewayMetrics, protocol: str, topics: WorkerTopics
    ) -> None:
        self._inner = inner
        self._metrics = metrics
        self._protocol = protocol
        self._dlq = topics.dlq
        self._by_type = {
            EventType.INFERENCE: topics.inference,
            EventType.ALERT: topics.alert,
            EventType.REPORT: topics.report,
        }

    async def deliver(
        self, events: Sequence[Event], *, source: str, control_id: str | None = None
    ) -> None:
        """See :meth:`Delivery.deliver`; counted ``accepted``, or ``retry`` if it raises."""
        try:
            await self._inner.deliver(events, source=source, control_id=control_id)
        except BaseException:
            self._metrics.messages.labels(self._protocol, "retry").inc()
            raise
        self._metrics.messages.labels(self._protocol, "accepted").inc()
        for topic, n in Counter(self._by_type[e.event_type] for e in events).items():
            self._metrics.outputs.labels(topic).inc(n)

    async def dead_letter(self, letter: DeadLetter) -> None:
        """See :meth:`Delivery.dead_letter`; counted ``rejected``, or ``retry`` if it raises."""
        try:
            await self._inner.dead_letter(letter)
        except BaseException:
            self._metrics.messages.labels(self._protocol, "retry").inc()
            raise
        self._metrics.messages.labels(self._protocol, "rejected").inc()
        self._metrics.dead_letters.labels("gateway", letter.reason.value).inc()
        self._metrics.outputs.labels(self._dlq).inc()
