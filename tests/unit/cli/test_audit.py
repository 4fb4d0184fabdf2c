"""``imgov audit verify`` catches altered, deleted and conflicting lineage revisions, and,
against the signed audit checkpoint of the run, truncated, missing and extra chain heads
and forged checkpoints; ``imgov audit study`` shows a study's revisions with their events.

Each tampering test works on its own copy of the small demo's chDB directory.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from sinks.clickhouse.checkpoints import latest_checkpoints, read_heads
from sinks.clickhouse.rows import LINEAGE_COLUMNS, lineage_from_row
from sinks.query import ChdbBackend
from streams.cli.audit import verify_backend
from streams.cli.main import app
from streams.core.lineage.anchor import heads_root
from streams.core.lineage.hashchain import ChainProblemKind, record_hash
from streams.replay.demo import DemoRun

runner = CliRunner()


@pytest.fixture
def chdb_copy(small_demo: DemoRun, tmp_path: Path) -> Path:
    copy = tmp_path / "chdb"
    # chDB links tables into store/ with relative symlinks: copy the links as links.
    shutil.copytree(small_demo.options.chdb_path, copy, symlinks=True)
    return copy


@pytest.fixture
def backend(chdb_copy: Path) -> Iterator[ChdbBackend]:
    opened = ChdbBackend(chdb_copy)
    yield opened
    opened.close()


def key_with_revisions(backend: ChdbBackend, at_least: int = 3) -> dict[str, Any]:
    columns, rows = backend.execute(
        "SELECT site_id, study_uid, algorithm_name, finding_code, max(revision) AS revisions "
        "FROM lineage_history GROUP BY site_id, study_uid, algorithm_name, finding_code "
        "HAVING revisions >= %(n)s ORDER BY revisions DESC, study_uid LIMIT 1",
        {"n": at_least},
    )
    assert rows, f"the demo should have a lineage key with {at_least} revisions"
    return dict(zip(columns, rows[0], strict=True))


def where(key: dict[str, Any], revision: int) -> str:
    return (
        f"site_id = '{key['site_id']}' AND study_uid = '{key['study_uid']}' "
        f"AND algorithm_name = '{key['algorithm_name']}' AND revision = {revision}"
    )


def verify_cli(path: Path) -> Any:
    return runner.invoke(
        app, ["audit", "verify", "--demo", "--chdb", str(path), "--format", "json"]
    )


def test_an_untouched_history_verifies(small_demo: DemoRun) -> None:
    result = runner.invoke(
        app, ["audit", "verify", "--demo", "--chdb", str(small_demo.options.chdb_path)]
    )
    assert result.exit_code == 0, result.output
    assert "audit verify OK" in result.stdout and "0 problem(s)" in result.stdout


def test_an_altered_row_is_caught_and_named(chdb_copy: Path, backend: ChdbBackend) -> None:
    key = key_with_revisions(backend)
    # A plausible forgery: a false positive quietly turned into a true negative.
    backend.execute("SET mutations_sync = 2")
    backend.execute(
        f"ALTER TABLE lineage_history UPDATE outcome = 'TRUE_NEGATIVE', score = 0.01 "
        f"WHERE {where(key, 2)}"
    )
    _, problems = verify_backend(backend)[1:]
    assert [(p.kind, p.key[1], p.revision) for p in problems] == [
        (ChainProblemKind.ALTERED, key["study_uid"], 2)
    ]
    backend.close()

    result = verify_cli(chdb_copy)
    assert result.exit_code == 1, result.output
    report = json.loads(result.stdout)
    assert report["problems"] == [
        {
            "kind": "ALTERED",
            "site_id": key["site_id"],
            "study_uid": key["study_uid"],
            "algorithm_name": key["algorithm_name"],
            "finding_code": key["finding_code"],
            "revision": 2,
            "detail": "record_hash does not match the row",
        }
    ]


def test_a_deleted_revision_is_caught_and_named(chdb_copy: Path, backend: ChdbBackend) -> None:
    key = key_with_revisions(backend)
    backend.execute("SET mutations_sync = 2")
    backend.execute(f"ALTER TABLE lineage_history DELETE WHERE {where(key, 1)}")
    backend.close()

    result = runner.invoke(app, ["audit", "verify", "--demo", "--chdb", str(chdb_copy)])
    assert result.exit_code == 1, result.output
    assert "FAILED" in result.stdout
    assert (
        f"✗ MISSING_REVISION site {key['site_id']} study {key['study_uid']} "
        f"{key['algorithm_name']}/{key['finding_code']} revision 2: revision 1 missing"
    ) in result.stdout
    report = json.loads(verify_cli(chdb_copy).stdout)
    assert [
        (p["kind"], p["study_uid"], p["revision"], p["detail"]) for p in report["problems"]
    ] == [("MISSING_REVISION", key["study_uid"], 2, "revision 1 missing")]


def test_a_modified_duplicate_revision_is_caught(chdb_copy: Path, backend: ChdbBackend) -> None:
    key = key_with_revisions(backend, at_least=2)
    columns = ", ".join(LINEAGE_COLUMNS)
    # A second row claiming revision 1 with one more addendum than the report had.
    backend.execute(
        f"INSERT INTO lineage_history ({columns}) "
        f"SELECT {columns.replace('addendum_count', 'addendum_count + 1 AS addendum_count', 1)} "
        f"FROM lineage_history WHERE {where(key, 1)}"
    )
    _, _, problems = verify_backend(backend)
    kinds = {(p.kind, p.revision) for p in problems if p.key[1] == key["study_uid"]}
    assert (ChainProblemKind.CONFLICTING_REVISION, 1) in kinds
    assert all(p.key[1] == key["study_uid"] for p in problems)


def test_audit_study_shows_revisions_with_their_events(small_demo: DemoRun) -> None:
    backend = ChdbBackend(small_demo.options.chdb_path)
    try:
        key = key_with_revisions(backend)
        _, events = backend.execute(
            "SELECT event_id FROM event_log FINAL WHERE study_uid = %(s)s", {"s": key["study_uid"]}
        )
    finally:
        backend.close()
    path = str(small_demo.options.chdb_path)
    result = runner.invoke(app, ["audit", "study", key["study_uid"], "--chdb", path, "-f", "json"])
    assert result.exit_code == 0, result.output
    doc = json.loads(result.stdout)
    mine = [r for r in doc["revisions"] if r["algorithm_name"] == key["algorithm_name"]]
    assert [r["revision"] for r in mine] == list(range(1, key["revisions"] + 1))
    # Every event a revision names is shown with it, from event_log.
    for revision in doc["revisions"]:
        assert [e["event_id"] for e in revision["events"]] == list(revision["event_ids"])
    assert {e["event_id"] for e in doc["events"]} == {row[0] for row in events}
    assert doc["problems"] == []

    table = runner.invoke(app, ["audit", "study", key["study_uid"], "--chdb", path])
    assert table.exit_code == 0, table.output
    assert f"revision {key['revisions']}" in table.stdout  # the table may fold other cells
    assert "hash chain verified" in table.stdout

    missing = runner.invoke(app, ["audit", "study", "1.2.3.no.such.study", "--chdb", path])
    assert missing.exit_code == 1


# --- audit checkpoints: the anchored chain heads ------------------------------------------


def key_where(key: dict[str, Any]) -> str:
    return (
        f"site_id = '{key['site_id']}' AND study_uid = '{key['study_uid']}' "
        f"AND algorithm_name = '{key['algorithm_name']}' AND finding_code = '{key['finding_code']}'"
    )


def test_verify_needs_a_checkpoint_key_outside_demo_mode(
    small_demo: DemoRun, monkeypatch: pytest.MonkeyPatch
) -> None:
    for name in ("IMGOV_CHECKPOINT_KEY", "IMGOV_CHECKPOINT_KEY_FILE", "IMGOV_DEMO"):
        monkeypatch.delenv(name, raising=False)
    result = runner.invoke(app, ["audit", "verify", "--chdb", str(small_demo.options.chdb_path)])
    assert result.exit_code == 2
    assert "no audit checkpoint key" in result.output


def test_the_demo_run_is_anchored_by_a_checkpoint_that_verifies(small_demo: DemoRun) -> None:
    report = json.loads(verify_cli(small_demo.options.chdb_path).stdout)
    [checkpoint] = report["checkpoints"]
    assert checkpoint["partition"] == 0 and checkpoint["verified"]
    assert checkpoint["head_count"] == report["keys"] > 0  # 20 days: nothing evicted yet
    assert report["checkpoint_findings"] == [] and report["demo_key"]


def test_a_deleted_newest_revision_is_named_truncated(
    chdb_copy: Path, backend: ChdbBackend
) -> None:
    key = key_with_revisions(backend)
    newest = key["revisions"]
    backend.execute("SET mutations_sync = 2")
    backend.execute(f"ALTER TABLE lineage_history DELETE WHERE {where(key, newest)}")
    backend.close()

    # The hash chain alone is satisfied: revisions 1..newest-1 still link up.
    result = runner.invoke(app, ["audit", "verify", "--demo", "--chdb", str(chdb_copy)])
    assert result.exit_code == 1, result.output
    assert (
        f"✗ TRUNCATED site {key['site_id']} study {key['study_uid']} "
        f"{key['algorithm_name']}/{key['finding_code']}: checkpoint 1 of partition 0 names "
        f"revision {newest}, the newest stored is {newest - 1}"
    ) in result.stdout
    report = json.loads(verify_cli(chdb_copy).stdout)
    assert report["problems"] == []
    assert [
        (
            f["kind"],
            f["study_uid"],
            f["algorithm_name"],
            f["expected_revision"],
            f["found_revision"],
        )
        for f in report["checkpoint_findings"]
    ] == [("TRUNCATED", key["study_uid"], key["algorithm_name"], newest, newest - 1)]


def test_a_key_deleted_whole_is_missing(chdb_copy: Path, backend: ChdbBackend) -> None:
    key = key_with_revisions(backend, at_least=1)
    backend.execute("SET mutations_sync = 2")
    backend.execute(f"ALTER TABLE lineage_history DELETE WHERE {key_where(key)}")
    backend.close()
    report = json.loads(verify_cli(chdb_copy).stdout)
    assert report["problems"] == []
    assert [
        (f["kind"], f["study_uid"], f["found_revision"]) for f in report["checkpoint_findings"]
    ] == [("MISSING", key["study_uid"], None)]


def test_a_key_forged_with_a_valid_chain_is_extra(chdb_copy: Path, backend: ChdbBackend) -> None:
    key = key_with_revisions(backend, at_least=2)
    columns, rows = backend.execute(
        f"SELECT {', '.join(LINEAGE_COLUMNS)} FROM lineage_history WHERE {key_where(key)} "
        "ORDER BY revision"
    )
    forged, previous = [], None
    for row in rows:
        record = lineage_from_row(dict(zip(columns, row, strict=True)))
        record = record.model_copy(update={"study_uid": "1.2.3.9999.forged", "prev_hash": previous})
        record = record.model_copy(update={"record_hash": record_hash(record)})
        previous = record.record_hash
        forged.append(tuple(record.model_dump(mode="json").values()))
    backend.insert("lineage_history", LINEAGE_COLUMNS, forged)
    backend.close()
    report = json.loads(verify_cli(chdb_copy).stdout)
    assert report["problems"] == []  # a consistent chain: only the checkpoint tells
    assert [(f["kind"], f["study_uid"]) for f in report["checkpoint_findings"]] == [
        ("EXTRA", "1.2.3.9999.forged")
    ]


def test_a_forged_checkpoint_is_reported(chdb_copy: Path, backend: ChdbBackend) -> None:
    key = key_with_revisions(backend)
    backend.execute("SET mutations_sync = 2")
    # Truncate a chain, then remove its head from the checkpoint and fix the root up:
    # without the key the signature cannot follow.
    backend.execute(f"ALTER TABLE lineage_history DELETE WHERE {where(key, key['revisions'])}")
    backend.execute(f"ALTER TABLE audit_checkpoint_heads DELETE WHERE {key_where(key)}")
    [checkpoint] = latest_checkpoints(backend)
    heads = read_heads(backend, checkpoint)
    count, root = heads_root(heads)
    backend.execute(
        f"ALTER TABLE audit_checkpoints UPDATE merkle_root = '{root}', head_count = {count} "
        "WHERE input_partition = 0"
    )
    backend.close()
    result = runner.invoke(app, ["audit", "verify", "--demo", "--chdb", str(chdb_copy)])
    assert result.exit_code == 1
    assert (
        "✗ FORGED checkpoint 1 of partition 0: the signature does not match the checkpoint"
        in result.stdout
    )
    report = json.loads(verify_cli(chdb_copy).stdout)
    assert [f["kind"] for f in report["checkpoint_findings"]] == ["FORGED"]
    assert report["checkpoints"][0]["verified"] is False


def test_an_altered_root_and_an_unknown_key_are_reported(
    chdb_copy: Path, backend: ChdbBackend, monkeypatch: pytest.MonkeyPatch
) -> None:
    backend.execute("SET mutations_sync = 2")
    backend.execute(
        "ALTER TABLE audit_checkpoints UPDATE merkle_root = reverse(merkle_root) "
        "WHERE input_partition = 0"
    )
    backend.close()
    report = json.loads(verify_cli(chdb_copy).stdout)
    assert [f["kind"] for f in report["checkpoint_findings"]] == ["FORGED", "ALTERED"]

    # A verifier with a real key does not accept the public demo key's signatures.
    monkeypatch.setenv("IMGOV_CHECKPOINT_KEY", "hex:" + "ab" * 32)
    result = runner.invoke(app, ["audit", "verify", "--chdb", str(chdb_copy), "-f", "json"])
    assert result.exit_code == 1
    first = json.loads(result.stdout)["checkpoint_findings"][0]
    assert first["kind"] == "FORGED" and "not a configured checkpoint key" in first["detail"]
