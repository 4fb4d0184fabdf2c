"""``imgov status``: reading a metrics exposition, the group arithmetic, and the screen.

Expositions come from the real catalogue (``streams.metrics``) rendered by
``prometheus_client.generate_latest``; screens are rendered from constructed statuses
with a recording console. No server is needed.
"""

from __future__ import annotations

import json
from importlib.metadata import version

import pytest
from prometheus_client import generate_latest
from rich.console import Console
from typer.testing import CliRunner

from schemas.units import format_duration, format_minute
from streams.cli.main import app
from streams.cli.status import MAX_BREACHES_SHOWN, render_status
from streams.metrics import GatewayMetrics, WorkerMetrics
from streams.runtime.status import (
    AuditStatus,
    DeadLetterCount,
    GroupMember,
    GroupStatus,
    OpenBreach,
    PipelineStatus,
    Unreachable,
    WorkerReading,
    group_member,
    parse_worker_metrics,
    partition_lag,
    read_worker_metrics,
)

NOW_MS = 1_800_000_000_000
URL = "http://127.0.0.1:9810/metrics"
TOPIC = "imaging.ai.inference.v1"


def screen(status: PipelineStatus, width: int = 140) -> str:
    console = Console(record=True, width=width, color_system=None)
    console.print(render_status(status))
    return console.export_text()


# --- the metrics exposition -------------------------------------------------------------


def test_a_worker_exposition_gives_watermarks_newest_commit_sinks_and_memory() -> None:
    metrics = WorkerMetrics()
    watermarks = {"lineage": 12.5, "kpi": 7200.0}
    for stage, lag_s in watermarks.items():
        metrics.watermark_lag.labels(stage).set(lag_s)
    commits = {(TOPIC, 0): 1_700_000_000.25, (TOPIC, 1): 1_700_000_100.5}
    metrics.observe_partitions([(TOPIC, 0, 5, 9), (TOPIC, 1, 3, 3)], commits)
    metrics.backpressure.labels("clickhouse").set(1)
    metrics.backpressure.labels("kpi").set(0)
    metrics.last_flush.labels("clickhouse").set(1_700_000_050.0)
    metrics.open_studies.set(321)

    reading = parse_worker_metrics(URL, generate_latest(metrics.registry).decode())

    assert reading.reachable and reading.url == URL
    assert (reading.process, reading.version) == ("worker", version("imgov"))
    assert reading.watermark_lag_ms == {s: round(v * 1000) for s, v in watermarks.items()}
    assert reading.last_commit_ms == round(max(commits.values()) * 1000)
    assert reading.backpressure == {"clickhouse": True, "kpi": False}
    assert reading.last_flush_ms == {"clickhouse": 1_700_000_050_000}
    assert reading.open_studies == 321
    assert reading.resident_memory_bytes is not None and reading.resident_memory_bytes > 0


def test_series_a_process_does_not_have_are_absent_not_zero() -> None:
    reading = parse_worker_metrics(URL, generate_latest(GatewayMetrics().registry).decode())
    assert reading.process == "gateway"
    assert reading.watermark_lag_ms == {} and reading.backpressure == {}
    assert reading.last_commit_ms is None and reading.last_flush_ms == {}
    assert reading.open_studies is None


def test_text_that_is_not_an_exposition_is_refused() -> None:
    with pytest.raises(ValueError):
        parse_worker_metrics(URL, "<html><body>not metrics</body></html>\n")


def test_only_http_urls_are_read() -> None:
    reading = read_worker_metrics("file:///etc/hostname")
    assert not reading.reachable and "http" in (reading.error or "")


# --- the group arithmetic ---------------------------------------------------------------


def test_partition_lag_counts_from_the_log_start_when_nothing_was_committed() -> None:
    assert partition_lag(TOPIC, 0, 40, 100, 10).lag == 60
    assert partition_lag(TOPIC, 1, None, 100, 10).lag == 90
    assert partition_lag(TOPIC, 2, 120, 100, 0).lag == 0  # end read before the commit
    assert partition_lag(TOPIC, 3, 5, None, None).lag is None  # topic gone


def test_topic_totals_sum_partitions_and_name_the_lagging_ones() -> None:
    parts = (
        partition_lag(TOPIC, 0, 40, 100, 0),
        partition_lag(TOPIC, 1, 100, 100, 0),
        partition_lag(TOPIC, 2, None, 30, 0),
        partition_lag("other", 0, 7, None, None),
    )
    group = GroupStatus("g", "Stable", (), parts)
    inference, other = group.topics()
    assert (inference.topic, inference.partitions) == (TOPIC, 3)
    assert inference.committed == 40 + 100
    assert inference.end == 100 + 100 + 30
    assert inference.lag == 60 + 30 == group.lag
    assert inference.lagging == ((0, 60), (2, 30))
    assert (other.unknown, other.lag) == (1, 0)
    uncommitted = GroupStatus("g", "Empty", (), (partition_lag(TOPIC, 0, None, 9, 0),))
    assert uncommitted.topics()[0].committed is None


def test_a_group_the_brokers_do_not_know_does_not_exist_unless_it_committed() -> None:
    assert not GroupStatus("g", "Dead", (), ()).exists
    assert not GroupStatus("g", "Dead", (), (partition_lag(TOPIC, 0, None, 5, 0),)).exists
    assert GroupStatus("g", "Empty", (), ()).exists


def test_members_are_read_from_kafka_pythons_description() -> None:
    # The shape kafka-python 3.0 returns from describe_groups for a static member.
    raw = {
        "client_host": "/127.0.0.1",
        "client_id": "imgov-governance",
        "group_instance_id": "imgov-governance-host-1a2b3c4d",
        "member_assignment": {
            "assigned_partitions": [
                {"partitions": [2, 0], "topic": TOPIC},
                {"partitions": [1], "topic": "imaging.report.v1"},
            ],
            "user_data": "",
        },
        "member_id": "imgov-governance-host-1a2b3c4d-d778a16c",
        "member_metadata": {"topics": [TOPIC], "user_data": ""},
    }
    member = group_member(raw)
    assert member.host == "127.0.0.1"
    assert member.name == raw["group_instance_id"]
    assert member.assigned == ((TOPIC, 0), (TOPIC, 2), ("imaging.report.v1", 1))
    undecoded = group_member({**raw, "member_assignment": b"\x00\x01", "group_instance_id": None})
    assert undecoded.assigned == () and undecoded.name == raw["client_id"]


# --- the screen ---------------------------------------------------------------------------


def breach(breach_id: str, severity: str, end_ms: int, rule: str = "ppv-30d") -> OpenBreach:
    return OpenBreach(
        breach_id=breach_id,
        severity=severity,
        rule_id=rule,
        kpi="alert_ppv",
        site_id="site-3",
        algorithm_name="pe-detector",
        algorithm_version="4.2.0",
        finding_code="PE",
        window_size="30d",
        window_start_ms=end_ms - 30 * 86_400_000,
        window_end_ms=end_ms,
        value=0.21,
        threshold=0.3,
    )


def healthy_status() -> PipelineStatus:
    member = GroupMember("m-1", "imgov-governance", "127.0.0.1", "worker-a", ((TOPIC, 0),))
    partitions = (
        partition_lag(TOPIC, 0, 1_000, 1_250, 0, owner="worker-a"),
        partition_lag(TOPIC, 1, 500, 500, 0),
    )
    worker = WorkerReading(
        url=URL,
        process="worker",
        version="0.1.0",
        watermark_lag_ms={"kpi": 3 * 3_600_000, "lineage": 45_000},
        last_commit_ms=NOW_MS - 4_000,
        backpressure={"clickhouse": True},
        last_flush_ms={"clickhouse": NOW_MS - 90_000},
        open_studies=12_345,
        resident_memory_bytes=300 * 2**20,
    )
    audit = AuditStatus(
        where="127.0.0.1:19000/imgov",
        dead_letters=(
            DeadLetterCount("UNDECODABLE", 3, NOW_MS - 60_000),
            DeadLetterCount("VALIDATION_FAILED", 1_200, NOW_MS - 5_000),
        ),
        open_breaches=(
            breach("b-1", "CRITICAL", NOW_MS - 86_400_000, rule="discordance-sustained"),
            breach("b-2", "WARNING", NOW_MS - 2 * 86_400_000),
        ),
    )
    return PipelineStatus(
        taken_at_ms=NOW_MS,
        bootstrap="127.0.0.1:19092",
        namespace="",
        groups=(GroupStatus("imgov-governance", "Stable", (member,), partitions),),
        workers=(worker,),
        audit=audit,
    )


def test_the_screen_shows_each_source_and_the_verdict() -> None:
    status = healthy_status()
    text = screen(status)
    group = status.groups[0]
    assert f"Consumer group {group.group_id}: Stable, 1 member(s), lag {group.lag:,}" in text
    assert "worker-a" in text and f"{TOPIC}: 0" in text
    assert f"p0 ({group.partitions[0].lag:,})" in text
    worker = status.workers[0]
    for stage, lag_ms in worker.watermark_lag_ms.items():
        assert f"{stage}: {format_duration(lag_ms)}" in text
    assert f"{format_duration(NOW_MS - (worker.last_commit_ms or 0))} ago" in text
    assert "clickhouse: holding offsets" in text
    assert f"{worker.open_studies:,}" in text and "300 MiB" in text
    assert status.audit is not None
    total = sum(d.count for d in status.audit.dead_letters)
    assert f"Dead letters, last hour: {total:,}" in text
    for d in status.audit.dead_letters:
        assert d.reason in text and format_minute(d.last_ms) in text
    assert "Open breaches: 2 (1 critical)" in text
    critical_at, warning_at = text.index("discordance-sustained"), text.index("ppv-30d")
    assert critical_at < warning_at  # as ordered by the gatherer: CRITICAL first
    assert "0.21 (limit 0.3)" in text
    assert "✓ every source answered" in text


def test_what_was_not_reached_is_drawn_with_its_reason() -> None:
    status = PipelineStatus(
        taken_at_ms=NOW_MS,
        bootstrap="127.0.0.1:19092",
        namespace="ns.",
        workers=(WorkerReading(URL, error="[Errno 111] Connection refused"),),
        errors=(
            Unreachable("kafka", "127.0.0.1:19092", "KafkaTimeoutError: Unable to bootstrap"),
            Unreachable("metrics", URL, "[Errno 111] Connection refused"),
            Unreachable("clickhouse", "127.0.0.1:19000/imgov", "Code: 210. Connection refused"),
        ),
    )
    text = screen(status)
    assert "not reachable: KafkaTimeoutError: Unable to bootstrap" in text
    assert f"{URL}: not reachable: [Errno 111] Connection refused" in text
    assert "Audit database (ClickHouse 127.0.0.1:19000/imgov)" in text
    assert "not reachable: Code: 210. Connection refused" in text
    assert "namespace 'ns.'" in text
    assert "✗ not reachable: clickhouse 127.0.0.1:19000/imgov, kafka 127.0.0.1:19092, metrics" in (
        text.replace("\n", " ")
    )
    assert not status.ok


def test_an_unknown_group_says_so_instead_of_an_empty_table() -> None:
    status = PipelineStatus(
        NOW_MS, "127.0.0.1:19092", "", groups=(GroupStatus("g", "Dead", (), ()),)
    )
    assert "no such group" in screen(status)


def test_many_open_breaches_are_counted_beyond_the_shown_ones() -> None:
    base = healthy_status()
    assert base.audit is not None
    many = tuple(breach(f"b-{i}", "WARNING", NOW_MS - i) for i in range(MAX_BREACHES_SHOWN + 4))
    status = PipelineStatus(
        NOW_MS, base.bootstrap, "", audit=AuditStatus(base.audit.where, (), many)
    )
    text = screen(status)
    assert f"Open breaches: {len(many)} (0 critical)" in text
    assert "… and 4 more" in text
    assert "Dead letters, last hour: 0" in text


def test_the_json_form_is_plain_data_with_topic_totals() -> None:
    status = healthy_status()
    doc = json.loads(json.dumps(status.to_json()))
    assert doc["ok"] is True and doc["errors"] == []
    (group,) = doc["groups"]
    assert group["lag"] == status.groups[0].lag and group["exists"] is True
    assert [t["topic"] for t in group["topics"]] == [TOPIC]
    assert doc["workers"][0]["watermark_lag_ms"] == dict(status.workers[0].watermark_lag_ms)
    assert [b["breach_id"] for b in doc["audit"]["open_breaches"]] == ["b-1", "b-2"]


def test_watch_and_json_together_are_refused_before_anything_is_asked() -> None:
    result = CliRunner().invoke(app, ["status", "--json", "--watch", "2"])
    assert result.exit_code == 2
    assert "cannot be combined" in result.output
