"""Replay on two cores: the lineage half here, the KPI half in a second process.

One Python process runs on one core, and a replay's time splits into two halves of
similar weight: reading, validating and joining the input (with the lineage outputs),
and the KPI windows (with their values, most of the output). ``replay_parallel`` runs
the second half in a child process, as the live worker's KPI stage runs apart from its
lineage stage:

- this process reads, validates and joins exactly as ``replay`` does, through a
  ``GovernanceProcessor`` whose KPI half is a :class:`RemoteKpiHalf`: each lineage
  revision goes to the child as its KPI *contribution* (``ContributionBuilder``: a few
  small tuples, cheap to send), with the revision itself only when the contribution
  could reach a closed window (``may_be_late``: the dead letter carries it);
- the child runs a ``KpiStep`` on the same calls in the same order (count, advance,
  take late, close), so its values, breaches and late dead letters are those of a
  one-process replay; it encodes every KPI value for each sink with the sink's own
  ``kpi_encoder`` (a JSON line, a row tuple) and sends the encoded values back with the
  breaches and dead letters, which this process hands to the sinks.

Requests are sent 500 or more at a time through a queue of at most 8 such batches, so
this process works ahead while the child starts or catches up, and waits beyond it
(memory stays bounded). Results come back through a queue without a bound, drained
after every batch, whose feeder thread never blocks the child. The outputs are the
same as ``replay``'s; only the place of late dead letters among the others in ``dlq``
can differ (they come back some batches later). The child is spawned, not forked:
chDB runs threads in this process.
"""

from __future__ import annotations

import contextlib
import multiprocessing
import queue
import sys
import traceback
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from schemas.errors import ImgovError
from schemas.records import Breach, DeadLetter, KpiValue, LineageRecord
from schemas.validation import EventValidator
from sinks.base import EncodedKpiSink, Sink
from sinks.null import NullSink
from sinks.tee import TeeSink
from streams.core.kpi.aggregator import KpiAggregator, may_be_late
from streams.core.kpi.catalogue import ContributionBuilder, RecordContribution
from streams.core.kpi.step import KpiOutputs, KpiStep
from streams.core.pipeline import GovernanceProcessor
from streams.governance import (
    GovernanceSettings,
    build_breach_evaluator,
    lineage_config,
    tune_garbage_collector,
)
from streams.replay.driver import DEFAULT_CHUNK_SIZE, ReplayStats, replay

__all__ = ["KpiProcessError", "RemoteKpiHalf", "replay_parallel"]

KpiEncoder = Callable[[KpiValue], Any]
_SEND_AT = 500
"""Requests gathered before they are sent: a replay in small batches (the demo's are ten
events) would otherwise pay a queue message per batch."""
_REQUESTS_AHEAD = 8
"""Batches of requests this process may be ahead of the child: it goes on reading and
joining while the child starts (imports take about half a second) or catches up, and
its memory stays bounded."""
_RESULT_WAIT_S = 1.0
"""How often a wait for the child checks that it is still alive."""


@contextlib.contextmanager
def _main_module_hidden() -> Iterator[None]:
    """While a child is spawned: it does not run this process's ``__main__`` again.

    ``multiprocessing`` re-runs the parent's main module in a spawned child (as
    ``__mp_main__``), so that what the target needs from it exists there. The child
    needs nothing from it (``_kpi_process`` lives here), and for ``imgov`` that module
    imports every CLI command: about 0.3 s of the child's start in the demo.
    """
    main = sys.modules["__main__"]
    saved = {
        name: main.__dict__.pop(name) for name in ("__file__", "__spec__") if name in main.__dict__
    }
    if "__spec__" in saved:
        main.__spec__ = None  # read with getattr: None means "not run as a module"
    try:
        yield
    finally:
        main.__dict__.update(saved)


class KpiProcessError(ImgovError):
    """The KPI process failed or died; the replay cannot complete."""


@dataclass(slots=True)
class _Outputs:
    kpis: list[KpiValue] = field(default_factory=list)
    breaches: list[Breach] = field(default_factory=list)
    dead_letters: list[DeadLetter] = field(default_factory=list)


# Requests, in the order the processor makes its calls: ("c", old contribution, new
# contribution, updated_at_ms, revision or None), ("a", watermark), ("l",) take late,
# ("x",) close. Results: ("ok", encoded values per sink, value count, breaches, dead
# letters, too_late or None), or ("error", text).
_Request = tuple[Any, ...]


def _kpi_process(
    requests: Any,
    results: Any,
    settings: GovernanceSettings,
    encoders: Sequence[KpiEncoder | None],
) -> None:
    """The child: a ``KpiStep`` driven by the requests, until close."""
    tune_garbage_collector()
    try:
        step = KpiStep(KpiAggregator(settings.kpi), build_breach_evaluator(settings))
        closed = False
        while not closed:
            out = _Outputs()
            for request in requests.get():
                kind = request[0]
                if kind == "c":
                    _, old, new, updated_at_ms, record = request
                    step.count_contribution(old, new, updated_at_ms, record, out)
                elif kind == "a":
                    step.advance(request[1], out)
                elif kind == "l":
                    step.take_late(out)
                else:
                    step.close_all(out)
                    step.take_late(out)
                    closed = True
            encoded = [
                None if encode is None else [encode(value) for value in out.kpis]
                for encode in encoders
            ]
            too_late = step.too_late if closed else None
            results.put(("ok", encoded, len(out.kpis), out.breaches, out.dead_letters, too_late))
    except BaseException as exc:  # reported to the parent, which stops the replay
        results.put(("error", f"{type(exc).__name__}: {exc}\n{traceback.format_exc()}"))
        raise


class RemoteKpiHalf:
    """The KPI half of a ``GovernanceProcessor``, run by a child process.

    Args:
        settings: the governance settings (KPI options, breach policy) of the child.
        sinks: where KPI values go, each an ``EncodedKpiSink`` or a ``NullSink``.

    Raises:
        ValueError: a sink cannot take encoded KPI values.
    """

    def __init__(self, settings: GovernanceSettings, sinks: Sequence[Sink]) -> None:
        encoders: list[KpiEncoder | None] = []
        for sink in sinks:
            if isinstance(sink, EncodedKpiSink):
                encoders.append(sink.kpi_encoder)
            elif isinstance(sink, NullSink):
                encoders.append(None)
            else:
                raise ValueError(f"{type(sink).__name__} cannot take KPI values encoded apart")
        self._sinks = tuple(sinks)
        self._contribution = ContributionBuilder(settings.kpi)
        self._horizon = settings.kpi.late_horizon_ms
        self._watermark: int | None = None
        self._requests: list[_Request] = []
        self._too_late: dict[str, int] | None = None
        self.kpis = 0
        """KPI values the child emitted (they go to the sinks, not to ``out``)."""
        context = multiprocessing.get_context("spawn")
        self._results = context.Queue()
        self._sender = context.Queue(_REQUESTS_AHEAD)
        self._process = context.Process(
            target=_kpi_process,
            args=(self._sender, self._results, settings, encoders),
            name="imgov-replay-kpi",
            daemon=True,
        )
        with _main_module_hidden():
            self._process.start()

    @property
    def too_late(self) -> dict[str, int]:
        """Contributions that reached a closed window, by size (known after close)."""
        if self._too_late is None:
            raise RuntimeError("the KPI process reports too_late at close")
        return dict(self._too_late)

    def count(self, old: LineageRecord | None, new: LineageRecord, out: KpiOutputs) -> None:
        before: RecordContribution | None = None if old is None else self._contribution(old)
        after = self._contribution(new)
        late = may_be_late(self._watermark, self._horizon, before, after)
        self._requests.append(("c", before, after, new.updated_at_ms, new if late else None))

    def advance(self, watermark_ms: int, out: KpiOutputs) -> None:
        if self._watermark is None or watermark_ms > self._watermark:
            self._watermark = watermark_ms
        self._requests.append(("a", watermark_ms))

    def take_late(self, out: KpiOutputs) -> None:
        """Sends the batch's requests, and hands over what the child has done so far."""
        if self._too_late is not None:
            return  # closed: everything was collected
        self._requests.append(("l",))
        if len(self._requests) >= _SEND_AT:
            self._send()
        self._collect(out, until_closed=False)

    def close_all(self, out: KpiOutputs) -> None:
        """Closes every window in the child and collects everything it still has."""
        self._requests.append(("x",))
        self._send()
        self._collect(out, until_closed=True)
        self._process.join(timeout=30)
        self._sender.close()
        self._sender.join_thread()  # the child read every request: nothing is left
        self._results.close()

    def terminate(self) -> None:
        """Stops the child (a replay that failed here).

        Requests still buffered for it are dropped: a queue's feeder thread would
        otherwise wait, at this process's exit, for a reader that is gone.
        """
        if self._process.is_alive():
            self._process.kill()
        self._process.join(timeout=5)
        self._sender.cancel_join_thread()
        self._sender.close()
        self._results.close()

    def _send(self) -> None:
        requests, self._requests = self._requests, []
        while True:
            try:
                self._sender.put(requests, timeout=_RESULT_WAIT_S)
                return
            except queue.Full:
                if not self._process.is_alive():
                    raise KpiProcessError(f"the KPI process failed: {self._failure()}") from None

    def _collect(self, out: KpiOutputs, *, until_closed: bool) -> None:
        while True:
            try:
                if until_closed:
                    result = self._results.get(timeout=_RESULT_WAIT_S)
                else:
                    result = self._results.get_nowait()
            except queue.Empty:
                if not until_closed:
                    return
                if not self._process.is_alive():
                    raise KpiProcessError(f"the KPI process failed: {self._failure()}") from None
                continue
            if result[0] == "error":
                raise KpiProcessError(f"the KPI process failed: {result[1]}")
            _, encoded, count, breaches, dead_letters, too_late = result
            for sink, payloads in zip(self._sinks, encoded, strict=True):
                if payloads:
                    assert isinstance(sink, EncodedKpiSink)
                    sink.add_encoded_kpis(payloads)
            self.kpis += count
            out.breaches.extend(breaches)
            out.dead_letters.extend(dead_letters)
            if too_late is not None:
                self._too_late = too_late
                return

    def _failure(self) -> str:
        try:
            result = self._results.get(timeout=_RESULT_WAIT_S)
        except queue.Empty:
            return f"it exited with code {self._process.exitcode}, reporting nothing"
        return str(result[1]) if result[0] == "error" else "it stopped, reporting no error"


def replay_parallel(
    inputs: Sequence[Path],
    settings: GovernanceSettings,
    sinks: Sequence[Sink],
    validator: EventValidator,
    *,
    record_events: bool = False,
    chunk_size: int = DEFAULT_CHUNK_SIZE,
    on_progress: Callable[[int], None] | None = None,
    collect_heads: bool = False,
) -> ReplayStats:
    """``replay`` with the KPI windows in a second process; the same outputs.

    Args:
        inputs: as ``replay``.
        settings: the governance settings (both halves are built from them).
        sinks: every output goes to each (a ``TeeSink`` of them); KPI values arrive
            encoded, so each must be an ``EncodedKpiSink`` (JSON Lines, chDB) or a
            ``NullSink``.
        validator, record_events, chunk_size, on_progress, collect_heads: as ``replay``.

    Raises:
        ConfigurationError: the breach policy cannot be loaded.
        KpiProcessError: the KPI process failed (its first line says why).
        ValueError: a sink cannot take encoded KPI values.
    """
    build_breach_evaluator(settings)  # a bad policy fails here, not in the child
    half = RemoteKpiHalf(settings, sinks)
    try:
        processor = GovernanceProcessor(lineage_config(settings), settings.kpi, kpi_half=half)
        stats = replay(
            inputs,
            processor,
            TeeSink(sinks),
            validator,
            record_events=record_events,
            chunk_size=chunk_size,
            on_progress=on_progress,
            collect_heads=collect_heads,
        )
    except BaseException:
        half.terminate()
        raise
    stats.kpis = half.kpis
    return stats
