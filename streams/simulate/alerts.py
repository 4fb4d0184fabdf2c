"""The lifecycle of one AI alert, from RAISED to its final state.

RAISED -> DELIVERED -> VIEWED | ACKNOWLEDGED -> ACCEPTED | DISMISSED, with ESCALATED when
nobody has answered after ``escalate_after_minutes``, and EXPIRED for alerts nobody ever
answers (a channel in ``unanswered_channels``, a per-channel no-response rate, or a
response slower than ``expire_after_minutes``).
"""

from __future__ import annotations

import random
from dataclasses import dataclass

from schemas.events import AlertChannel, AlertEvent, AlertState, InferenceEvent, Priority
from schemas.units import MINUTE_MS
from streams.simulate.config import AlgorithmConfig, ChannelConfig, LogNormal
from streams.simulate.sampling import WeightedChoice, lognormal_ms, uuid4_from

__all__ = ["AlertLifecycle", "simulate_alert"]

_RAISE_SECONDS = LogNormal(median=1.0, sigma=0.5, maximum=60.0)
_DELIVERY_SECONDS = LogNormal(median=3.0, sigma=0.8, maximum=300.0)
_DECISION_SECONDS = LogNormal(median=45.0, sigma=0.9, maximum=1_800.0)
_VIEWED_SHARE = 0.6
"""First responses that are VIEWED; the rest are ACKNOWLEDGED."""
_ROUTINE_BEFORE_SHARE = 0.7
"""Reprioritised studies that were ROUTINE (the rest URGENT) before the alert."""
_DISMISS_REASONS = WeightedChoice(
    ("FALSE_POSITIVE", "ARTIFACT", "NOT_CLINICALLY_SIGNIFICANT", "ALREADY_KNOWN"),
    (0.55, 0.2, 0.15, 0.1),
)
_DISMISS_REASONS_TRUE = WeightedChoice(("ALREADY_KNOWN", "NOT_CLINICALLY_SIGNIFICANT"), (0.6, 0.4))


@dataclass(frozen=True, slots=True)
class AlertLifecycle:
    """The events of one alert, in event-time order, and how it ended."""

    events: tuple[AlertEvent, ...]
    channel: AlertChannel
    final_state: AlertState


def simulate_alert(
    rng: random.Random,
    algorithm: AlgorithmConfig,
    channels: WeightedChoice[ChannelConfig],
    inference: InferenceEvent,
    present: bool,
    unanswered_channels: frozenset[AlertChannel],
) -> AlertLifecycle:
    """The alert raised for a POSITIVE ``inference``; ``present`` is the truth.

    Whether the reader accepts or dismisses depends on the truth: readers see the images.
    """
    channel_config = channels.draw(rng)
    channel = channel_config.channel
    completed = inference.completed_at_ms or inference.occurred_at_ms
    raised = completed + lognormal_ms(rng, _RAISE_SECONDS, 1_000)
    delivered = raised + lognormal_ms(rng, _DELIVERY_SECONDS, 1_000)
    escalate_at = raised + int(algorithm.escalate_after_minutes * MINUTE_MS)
    expire_at = raised + int(algorithm.expire_after_minutes * MINUTE_MS)
    response_at = delivered + lognormal_ms(rng, channel_config.response_minutes, MINUTE_MS)
    unanswered = (
        channel in unanswered_channels
        or rng.random() < channel_config.no_response_rate
        or response_at >= expire_at
    )
    before: Priority | None = None
    after: Priority | None = None
    if channel is AlertChannel.WORKLIST_REPRIORITISATION:
        before = Priority.ROUTINE if rng.random() < _ROUTINE_BEFORE_SHARE else Priority.URGENT
        after = Priority.STAT
    recipient_id = f"{inference.site_id}-rad-{rng.randrange(1, 31):02d}"
    alert_id = uuid4_from(rng)

    def event(state: AlertState, at_ms: int, dismiss_reason: str | None = None) -> AlertEvent:
        return AlertEvent(
            event_id=uuid4_from(rng),
            occurred_at_ms=at_ms,
            site_id=inference.site_id,
            study_uid=inference.study_uid,
            alert_id=alert_id,
            inference_event_id=inference.event_id,
            algorithm_name=inference.algorithm_name,
            algorithm_version=inference.algorithm_version,
            finding_code=inference.finding_code,
            state=state,
            channel=channel,
            recipient_role=algorithm.recipient_role,
            recipient_id=recipient_id,
            priority_before=before,
            priority_after=after,
            dismiss_reason=dismiss_reason,
        )

    events = [event(AlertState.RAISED, raised), event(AlertState.DELIVERED, delivered)]
    slow = unanswered or response_at > escalate_at
    if slow and rng.random() < algorithm.escalation_rate:
        events.append(event(AlertState.ESCALATED, escalate_at))
    if unanswered:
        events.append(event(AlertState.EXPIRED, expire_at))
        return AlertLifecycle(tuple(events), channel, AlertState.EXPIRED)

    first = AlertState.VIEWED if rng.random() < _VIEWED_SHARE else AlertState.ACKNOWLEDGED
    events.append(event(first, response_at))
    decided_at = response_at + lognormal_ms(rng, _DECISION_SECONDS, 1_000)
    if present:
        accept = rng.random() < algorithm.accept_if_present
        reasons = _DISMISS_REASONS_TRUE
    else:
        accept = rng.random() >= algorithm.dismiss_if_absent
        reasons = _DISMISS_REASONS
    if accept:
        events.append(event(AlertState.ACCEPTED, decided_at))
        return AlertLifecycle(tuple(events), channel, AlertState.ACCEPTED)
    events.append(event(AlertState.DISMISSED, decided_at, reasons.draw(rng)))
    return AlertLifecycle(tuple(events), channel, AlertState.DISMISSED)
