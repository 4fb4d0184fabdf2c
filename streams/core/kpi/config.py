"""Options of the KPI aggregator and drift reference, as a frozen pydantic model (DESIGN §5).

The runtime builds one from its settings and hands it to ``KpiAggregator``; the core
reads no environment. Every duration is integer milliseconds of *event time*.

Defaults, and why:

- ``allowed_lateness_ms`` = 2 h. A source's watermark is the greatest event time seen
  in that source minus this; the drivers combine their sources' watermarks by the
  minimum (``streams.core.watermarks``) and move the aggregator with it. Reports
  trail inference by days, but a KPI is timed by its *own* event (report
  final, inference, alert raised) and a lineage revision usually arrives when that
  event does, so days of reporting delay do not make contributions late. What does
  arrive after its event time is: alert responses (minutes to a few hours after the
  alert), skew between the three input topics, and addenda (days after a final
  report). Two hours covers the first two; the rare addendum re-emits the final
  windows it touches with ``revision + 1`` instead of holding every window for days.
- ``late_horizon_ms`` = 7 days. A final window still accepts late contributions (and
  is re-emitted) for this long after the watermark passed its end; after that it is
  *closed*: contributions landing in it are counted in ``KpiAggregator.too_late`` per
  window size and change nothing. Panes are dropped once every window containing them
  is closed, which is what bounds the state (hour panes live 1 h + horizon, day panes
  30 d + horizon).
- ``emit_interval_ms`` = 5 min, for live operation. Current (non-final) values are
  emitted at most this often in *event* time. An offline replay should pass None
  (final values only): its event time runs days per second, and current values every
  5 min of it would outnumber the final values many times over.
- ``response_sla_ms`` = 15 min (DESIGN §5, ``alert_response_rate``).
- ``psi_reference_ms`` = 14 days: see ``streams.core.kpi.drift``.
"""

from __future__ import annotations

import math

from pydantic import BaseModel, ConfigDict, Field

from schemas.units import DAY_MS, HOUR_MS, MINUTE_MS
from streams.core.kpi.stats import DEFAULT_GAMMA

__all__ = ["KpiConfig"]


class KpiConfig(BaseModel):
    """Options of KPI windows, drift and duration buckets.

    Attributes:
        allowed_lateness_ms: a source's watermark = its max event time seen - this.
        late_horizon_ms: how long a final window still accepts (and re-emits) late
            contributions before it is closed and its panes may be dropped; whole
            hours, so that windows only close when the watermark crosses an hour.
        emit_interval_ms: least event time between two emissions of current values;
            None: only final values are emitted.
        response_sla_ms: an alert counts as answered in time if its first response
            came at most this long after it was raised.
        psi_reference_ms: length of the drift reference period of a series (a multiple
            of one day), starting on the first UTC day a score of the series was seen.
        psi_epsilon: proportion substituted for an empty bin in the PSI.
        duration_gamma: growth factor of the duration buckets; 1.02 gives < 1 % error.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    allowed_lateness_ms: int = Field(default=2 * HOUR_MS, ge=0)
    late_horizon_ms: int = Field(default=7 * DAY_MS, ge=0, multiple_of=HOUR_MS)
    emit_interval_ms: int | None = Field(default=5 * MINUTE_MS, gt=0)
    response_sla_ms: int = Field(default=15 * MINUTE_MS, ge=0)
    psi_reference_ms: int = Field(default=14 * DAY_MS, gt=0, multiple_of=DAY_MS)
    psi_epsilon: float = Field(default=1e-4, gt=0.0, lt=0.1)
    duration_gamma: float = Field(default=DEFAULT_GAMMA, gt=1.0, le=1.1)

    @property
    def inv_ln_gamma(self) -> float:
        """``1 / ln(duration_gamma)``, the factor ``stats.bucket_key`` takes."""
        return 1.0 / math.log(self.duration_gamma)
