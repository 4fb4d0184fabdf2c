"""A graceful stop of the live worker on SIGTERM or SIGINT, bounded in time.

An orchestrator's rolling restart sends SIGTERM and, after a grace period, SIGKILL.
Faust's own stop waits for every message it handed to an agent to be acknowledged,
and the KPI agent acknowledges only at a checkpoint, so under load it never finished.
Here the worker, in order:

1. stops fetching (every assigned partition paused);
2. lets the lineage agent finish the batch in progress, and takes no other;
3. checkpoints the KPI agent (state written, its contributions acknowledged);
4. commits the acknowledged offsets;
5. stops Faust (which commits again and closes the consumer and producer);
6. leaves the consumer group: a dynamic member on closing, a static one through the
   admin API (``leave_group_on_stop``), so its partitions move at once;

and logs each step. Messages Faust buffered but never handed to an agent were not
processed: they are not committed and are read after the restart, which re-processes
nothing that was committed. Past ``shutdown_timeout_s`` the worker logs what it did
not finish and exits with status 1 at once; whatever it did not commit is read again,
as after a crash (DESIGN §7).
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import threading
import time
from typing import Any

import faust

from streams.runtime.app import set_paused
from streams.runtime.settings import KafkaSettings, WorkerSettings

__all__ = ["GracefulStop", "ImgovWorker"]

log = logging.getLogger("imgov.worker")


class GracefulStop:
    """Drains one worker's agents and leaves its group; see the module docstring.

    Args:
        app: the Faust app (its runners are ``app.imgov_lineage`` / ``app.imgov_kpi``).
        worker: the worker's settings (timeout, group, static membership).
        kafka: how to reach the broker (leaving the group).
    """

    def __init__(self, app: faust.App, worker: WorkerSettings, kafka: KafkaSettings) -> None:
        self._app = app
        self._worker = worker
        self._kafka = kafka
        self.requested_s: float | None = None
        """When the stop was asked for (monotonic seconds); None while running."""
        self._watchdog: threading.Timer | None = None

    def start_watchdog(self) -> None:
        """Arms the bound: past ``shutdown_timeout_s`` the process exits at once."""
        self.requested_s = time.monotonic()
        self._watchdog = threading.Timer(self._worker.shutdown_timeout_s, self._abandon)
        self._watchdog.daemon = True
        self._watchdog.start()

    def _abandon(self) -> None:
        log.error(
            "graceful stop did not finish within %.0f s (shutdown_timeout_s): exiting now;"
            " input not committed is read again on restart",
            self._worker.shutdown_timeout_s,
        )
        logging.shutdown()
        os._exit(1)

    async def drain(self, reason: str) -> None:
        """Steps 1-4: after it, everything the agents finished is committed."""
        app = self._app
        consumer = app.consumer
        assignment = set(consumer.assignment())
        log.warning(
            "%s: stopping gracefully (bound %.0f s); fetching stopped on %d partitions",
            reason,
            self._worker.shutdown_timeout_s,
            len(assignment),
        )
        set_paused(consumer, assignment, paused=True)
        lineage = getattr(app, "imgov_lineage", None)
        if lineage is not None:
            await lineage.stop()
            log.warning(
                "lineage agent stopped after its batch in progress; since start: %d input"
                " messages received, %d of them skipped as already applied",
                lineage.events_in,
                lineage.redelivered,
            )
        kpi = getattr(app, "imgov_kpi", None)
        if kpi is not None:
            checkpointed = await kpi.stop()
            log.warning(
                "KPI agent stopped: checkpoint written, %d contributions acknowledged; since"
                " start: %d contributions skipped as already applied",
                checkpointed,
                kpi.redelivered,
            )
        await consumer.commit()
        committed = getattr(consumer, "_committed_offset", {})
        log.warning(
            "offsets committed: %s",
            ", ".join(
                f"{tp.topic}[{tp.partition}]={committed[tp]}"
                for tp in sorted(assignment)
                if committed.get(tp) is not None
            )
            or "none",
        )

    def finish(self) -> None:
        """Step 6, after the event loop stopped (blocking): leave the group, log the end."""
        if self.requested_s is None:
            return  # not a graceful stop
        instance = self._worker.group_instance_id
        if instance is not None and self._worker.leave_group_on_stop:
            self._leave(instance)
        log.warning("stopped gracefully in %.1f s", time.monotonic() - self.requested_s)

    def _leave(self, instance: str) -> None:
        from kafka.admin import KafkaAdminClient, MemberToRemove

        try:
            admin = KafkaAdminClient(
                bootstrap_servers=self._kafka.bootstrap,
                request_timeout_ms=5_000,
                **self._kafka.security().client_options(),
            )
            try:
                admin.remove_group_members(
                    self._worker.group_id,
                    [MemberToRemove(group_instance_id=instance, reason="imgov worker stopped")],
                )
            finally:
                admin.close()
        except Exception as exc:  # the group waits session_timeout_s instead
            log.warning(
                "could not leave group %s as %s (%s): its partitions move after"
                " session_timeout_s (%.0f s)",
                self._worker.group_id,
                instance,
                exc,
                self._worker.session_timeout_s,
            )
            return
        log.warning("left group %s as static member %s", self._worker.group_id, instance)


class ImgovWorker(faust.Worker):
    """Faust's worker, with SIGTERM and SIGINT draining the agents before it stops.

    A second signal while draining stops at once, as Faust does.
    """

    def __init__(self, app: faust.App, stop: GracefulStop, **kwargs: Any) -> None:
        super().__init__(app, **kwargs)
        self.graceful = stop
        self._drain_task: asyncio.Future[None] | None = None

    def _on_sigterm(self) -> None:
        self._graceful(signal.SIGTERM)

    def _on_sigint(self) -> None:
        self._graceful(signal.SIGINT)

    def _graceful(self, signum: signal.Signals) -> None:
        if self.graceful.requested_s is not None:
            log.warning("%s again: stopping without draining", signum.name)
            self._schedule_shutdown(signum)
            return
        self.graceful.start_watchdog()

        async def drain_then_stop() -> None:
            try:
                await self.graceful.drain(signum.name)
            except Exception:
                log.exception("draining failed; stopping (what was not committed is read again)")
            self._schedule_shutdown(signum)

        self._drain_task = asyncio.ensure_future(drain_then_stop(), loop=self.loop)
