"""``imgov audit study`` and ``imgov audit verify``: the tamper-evident audit trail.

Both read the audit database through a :class:`~sinks.query.QueryBackend`, chosen as
for ``imgov query``: ``--chdb PATH`` for an embedded chDB directory (the demo's is
``.imgov/demo/chdb``), otherwise the ClickHouse server of ``IMGOV_CLICKHOUSE_*``.

``audit study UID`` prints every lineage revision of a study with the input events
that made it (from ``event_log``), in time order, and checks the study's hash chains.

``audit verify`` rebuilds every stored revision from ``lineage_history`` (without
FINAL: two different rows claiming one revision are evidence, not noise), recomputes
the hash chain of every lineage key (``streams.core.lineage.hashchain.verify_chain``) and
names each altered, missing, re-linked or conflicting revision. What a chain cannot
show, the removal of a key's *latest* revisions or of its whole history, the audit
checkpoints can (``streams.core.lineage.anchor``): verify also loads the latest
checkpoint of every partition, checks its signature (with the checkpoint keys of
``IMGOV_CHECKPOINT_KEY[_FILE]`` and ``IMGOV_CHECKPOINT_PREVIOUS_KEYS_FILE``, or the
public demo key with ``--demo``) and its Merkle root, and compares its heads with the
stored chains: TRUNCATED, MISSING, REWRITTEN and EXTRA heads, FORGED or ALTERED
checkpoints. It exits 1 when it finds anything, 2 when no checkpoint key is configured.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterator, Sequence
from typing import Annotated, Any

import typer
from pydantic import ValidationError
from rich.console import Console
from rich.table import Table

from schemas.errors import ImgovError
from schemas.records import AuditCheckpoint, ChainHead, LineageRecord
from schemas.units import MISSING, utc
from sinks.clickhouse.checkpoints import CHECKPOINTS_TABLE, latest_checkpoints, read_heads
from sinks.clickhouse.rows import LINEAGE_COLUMNS, lineage_from_row
from sinks.query import QueryBackend
from streams.cli.options import ChdbOption, DatabaseOption, open_backend
from streams.core.lineage.anchor import (
    CheckpointFinding,
    CheckpointFindingKind,
    CheckpointKeyring,
    HeadAudit,
    StoredRevision,
    verify_checkpoint,
)
from streams.core.lineage.hashchain import (
    CHAIN_FIELDS,
    ChainProblem,
    ChainProblemKind,
    LineageKey,
    verify_chain,
)
from streams.governance import checkpoint_keyring, load_settings

__all__ = [
    "CheckpointReport",
    "audit_app",
    "read_lineage_history",
    "verify_backend",
    "verify_checkpoints",
]

audit_app = typer.Typer(
    help="The audit trail: a study's lineage with its events, and hash-chain verification.",
    no_args_is_help=True,
)

_out = Console(highlight=False)
_err = Console(stderr=True)

_SELECT_LINEAGE = f"SELECT {', '.join(LINEAGE_COLUMNS)} FROM lineage_history"
_ROWS_PER_READ = 200_000


def _when(ms: int | None) -> str:
    # To the second, unlike schemas.units.format_minute: events of one study often share a
    # minute, and the trail lists them in time order.
    return MISSING if ms is None else utc(ms).strftime("%Y-%m-%d %H:%M:%S")


@audit_app.command("study")
def study_command(
    study_uid: Annotated[str, typer.Argument(help="The study's StudyInstanceUID (as stored).")],
    site: Annotated[
        str | None, typer.Option("--site", help="Only this site (a UID may recur across sites).")
    ] = None,
    payload: Annotated[
        bool, typer.Option("--payload", help="Print each event's stored JSON as well.")
    ] = False,
    output: Annotated[
        str, typer.Option("--format", "-f", help="table | json (revisions with their events).")
    ] = "table",
    chdb: ChdbOption = None,
    database: DatabaseOption = None,
) -> None:
    """Every lineage revision of a study, with the events behind each, in time order."""
    if output not in {"table", "json"}:
        _err.print(f"[red]error:[/] --format must be table or json, not {output!r}")
        raise typer.Exit(2)
    where = "study_uid = %(study)s" + (" AND site_id = %(site)s" if site else "")
    params: dict[str, object] = {"study": study_uid, "site": site or ""}
    with open_backend(chdb, database, create=False) as backend:
        records = [
            lineage_from_row(row)
            for row in _dicts(backend, f"{_SELECT_LINEAGE} FINAL WHERE {where}", params)
        ]
        events = _dicts(
            backend,
            "SELECT site_id, event_id, event_type, occurred_at_ms, algorithm_name, "
            "algorithm_version, finding_code, status, source_topic, source_partition, "
            "source_offset, schema_id, ingested_at_ms, payload "
            f"FROM event_log FINAL WHERE {where} ORDER BY occurred_at_ms, event_id",
            params,
        )
    if not records and not events:
        _err.print(
            f"no lineage and no events for study {study_uid!r}"
            + (f" at {site}" if site else "")
            + " (if study UIDs are pseudonymised, pass the stored reference)"
        )
        raise typer.Exit(1)
    records.sort(key=lambda r: (r.site_id, r.algorithm_name, r.finding_code, r.revision))
    problems = verify_chain(records)
    if output == "json":
        _print_study_json(records, events, problems)
    else:
        _print_study(study_uid, records, events, problems, payload)
    if problems:
        raise typer.Exit(1)


def _print_study(
    study_uid: str,
    records: Sequence[LineageRecord],
    events: Sequence[dict[str, Any]],
    problems: Sequence[ChainProblem],
    payload: bool,
) -> None:
    by_id = {event["event_id"]: event for event in events}
    sites = sorted({r.site_id for r in records} | {e["site_id"] for e in events})
    keys = sorted({(r.algorithm_name, r.finding_code) for r in records})
    _out.print(
        f"[bold]study {study_uid}[/] at {', '.join(sites)}: {len(records)} lineage revision(s) "
        f"of {len(keys)} row(s) ({', '.join(f'{a}/{f}' for a, f in keys)}), "
        f"{len(events)} event(s) in event_log"
    )
    table = Table(show_lines=False, title_justify="left")
    for name in ("time (UTC)", "what", "detail", "source / hash"):
        table.add_column(name, overflow="fold")
    seen: dict[tuple[str, str, str], set[str]] = {}
    previous: dict[tuple[str, str, str], LineageRecord] = {}
    shown: set[str] = set()
    for record in sorted(records, key=lambda r: (r.updated_at_ms, r.algorithm_name, r.revision)):
        key = (record.site_id, record.algorithm_name, record.finding_code)
        before = seen.get(key, set())
        new_ids = [i for i in record.event_ids if i not in before]
        seen[key] = set(record.event_ids)
        for event_id in sorted(
            new_ids, key=lambda i: (by_id.get(i, {}).get("occurred_at_ms", 0), i)
        ):
            if event_id in shown:
                continue
            shown.add(event_id)
            event = by_id.get(event_id)
            if event is None:
                table.add_row("?", f"event {event_id}", "[red]not in event_log[/]", "")
                continue
            table.add_row(*_event_cells(event, payload))
        old = previous.get(key)
        previous[key] = record
        changes = _changes(old, record)
        table.add_row(
            _when(record.updated_at_ms),
            f"[bold]{record.algorithm_name} revision {record.revision}[/]",
            f"{record.outcome.value}, {record.completeness.value}"
            + (f"\n[dim]{changes}[/]" if changes else ""),
            f"{record.record_hash[:16]}… prev {(record.prev_hash or '-')[:16]}",
        )
    for event in events:  # events no revision names (e.g. duplicates of a late study)
        if event["event_id"] not in shown:
            table.add_row(*_event_cells(event, payload, note=" [yellow](in no revision)[/]"))
    _out.print(table)
    if problems:
        for problem in problems:
            _out.print(
                f"[red]✗ {problem.kind.value}[/] {'/'.join(problem.key)} revision "
                f"{problem.revision}: {problem.detail}",
                soft_wrap=True,
            )
    else:
        _out.print("[green]✓ hash chain verified[/] for every row of this study")


def _event_cells(event: dict[str, Any], payload: bool, note: str = "") -> tuple[str, str, str, str]:
    algorithm = f" {event['algorithm_name']}" if event.get("algorithm_name") else ""
    source = f"{event['source_topic'] or '(source not recorded)'}"
    if event["source_partition"] is not None and event["source_partition"] >= 0:
        source += f" p{event['source_partition']}"
    if event["source_offset"] is not None and event["source_offset"] >= 0:
        source += f" @{event['source_offset']}"
    detail = f"{event['status']}{note}"
    if payload:
        detail += f"\n[dim]{event['payload']}[/]"
    return (
        _when(event["occurred_at_ms"]),
        f"  {event['event_type']}{algorithm}",
        detail,
        source,
    )


_QUIET_FIELDS = frozenset({"event_ids", "updated_at_ms", *CHAIN_FIELDS})


def _changes(old: LineageRecord | None, new: LineageRecord) -> str:
    if old is None:
        return ""
    before, after = old.model_dump(), new.model_dump()
    changed = [
        f"{name}: {_short(before[name])} → {_short(after[name])}"
        for name in after
        if name not in _QUIET_FIELDS and before[name] != after[name]
    ]
    return "; ".join(changed)


def _short(value: Any) -> str:
    if value is None:
        return "∅"
    if hasattr(value, "value"):
        return str(value.value)
    return str(value)


def _print_study_json(
    records: Sequence[LineageRecord],
    events: Sequence[dict[str, Any]],
    problems: Sequence[ChainProblem],
) -> None:
    by_id = {event["event_id"]: event for event in events}
    doc = {
        "revisions": [
            {
                **record.model_dump(mode="json"),
                "events": [by_id[i] for i in record.event_ids if i in by_id],
            }
            for record in records
        ],
        "events": list(events),
        "problems": [_problem_json(p) for p in problems],
    }
    typer.echo(json.dumps(doc, ensure_ascii=False, indent=2, default=str))


def _problem_json(problem: ChainProblem) -> dict[str, Any]:
    site, study, algorithm, finding = problem.key
    return {
        "kind": problem.kind.value,
        "site_id": site,
        "study_uid": study,
        "algorithm_name": algorithm,
        "finding_code": finding,
        "revision": problem.revision,
        "detail": problem.detail,
    }


# --- verify ---------------------------------------------------------------------------


def _dicts(
    backend: QueryBackend, sql: str, params: dict[str, object] | None = None
) -> list[dict[str, Any]]:
    columns, rows = backend.execute(sql, params)
    return [dict(zip(columns, row, strict=True)) for row in rows]


def read_lineage_history(
    backend: QueryBackend, *, site: str | None = None, study: str | None = None
) -> Iterator[list[dict[str, Any]]]:
    """Yields the stored ``lineage_history`` rows in groups that hold whole keys.

    Every physical row is returned (no FINAL). Groups are one site, split into hash
    buckets of the study UID when the site has many rows, so memory stays bounded.
    """
    conditions, params = [], {}
    if site is not None:
        conditions.append("site_id = %(site)s")
        params["site"] = site
    if study is not None:
        conditions.append("study_uid = %(study)s")
        params["study"] = study
    where = " AND ".join(conditions) or "1"
    _, counts = backend.execute(
        f"SELECT site_id, count() FROM lineage_history WHERE {where} GROUP BY site_id "
        "ORDER BY site_id",
        params,
    )
    for site_id, count in counts:
        buckets = max(1, math.ceil(int(count) / _ROWS_PER_READ))
        for bucket in range(buckets):
            yield _dicts(
                backend,
                f"{_SELECT_LINEAGE} WHERE {where} AND site_id = %(site_id)s "
                "AND modulo(cityHash64(study_uid), %(buckets)s) = %(bucket)s",
                {**params, "site_id": site_id, "buckets": buckets, "bucket": bucket},
            )


def verify_backend(
    backend: QueryBackend,
    *,
    site: str | None = None,
    study: str | None = None,
    report: CheckpointReport | None = None,
) -> tuple[int, int, list[ChainProblem]]:
    """Verifies the hash chains stored behind ``backend``.

    Args:
        backend: the audit database.
        site, study: only this site and/or study.
        report: also hands every stored key to this report's checkpoint comparison, in
            the same read of the table (the findings go to ``report.findings``).

    Returns:
        ``(rows read, keys checked, problems)``; a row that no longer describes a valid
        record (a type or enum broken by an edit) is reported as ALTERED.

    Raises:
        QueryError: the table cannot be read.
    """
    rows_read, keys, problems = 0, 0, []
    for group in read_lineage_history(backend, site=site, study=study):
        rows_read += len(group)
        records: list[LineageRecord] = []
        stored: dict[LineageKey, list[StoredRevision]] = {}
        for row in group:
            key = (row["site_id"], row["study_uid"], row["algorithm_name"], row["finding_code"])
            stored.setdefault(key, []).append(
                StoredRevision(
                    int(row["revision"]), str(row["record_hash"]), int(row["updated_at_ms"])
                )
            )
            try:
                records.append(lineage_from_row(row))
            except ValidationError as exc:
                first = exc.errors()[0]
                problems.append(
                    ChainProblem(
                        ChainProblemKind.ALTERED,
                        key,
                        int(row["revision"]),
                        f"the row is no longer a valid record ({'.'.join(map(str, first['loc']))}: "
                        f"{first['msg']})",
                    )
                )
        keys += len({(r.site_id, r.study_uid, r.algorithm_name, r.finding_code) for r in records})
        problems.extend(verify_chain(records))
        if report is not None:
            for key in sorted(stored):
                report.findings.extend(report.audit.check_key(key, stored[key]))
    problems.sort(key=lambda p: (p.key, p.revision, p.kind.value))
    return rows_read, keys, problems


class CheckpointReport:
    """The latest checkpoints read, and what comparing them found (filled by verify)."""

    def __init__(self, checkpoints: list[AuditCheckpoint], audit: HeadAudit) -> None:
        self.checkpoints = checkpoints
        self.audit = audit
        self.findings: list[CheckpointFinding] = []
        self.verified: set[tuple[int, int, str]] = set()
        """(partition, sequence, signature) of the checkpoints whose signature and root held."""


def verify_checkpoints(
    backend: QueryBackend,
    keyring: CheckpointKeyring,
    *,
    site: str | None = None,
    study: str | None = None,
) -> tuple[int, int, list[ChainProblem], CheckpointReport]:
    """Verifies the chains and the latest checkpoint of every partition against them.

    Returns:
        ``(rows read, keys checked, chain problems, checkpoint report)``.

    Raises:
        QueryError: a table cannot be read.
    """
    checkpoints = latest_checkpoints(backend) if _has_checkpoints_table(backend) else []
    trusted: list[tuple[AuditCheckpoint, list[ChainHead]]] = []
    findings: list[CheckpointFinding] = []
    for checkpoint in checkpoints:
        heads = read_heads(backend, checkpoint)
        wrong = verify_checkpoint(checkpoint, heads, keyring)
        findings.extend(wrong)
        if not wrong:
            trusted.append((checkpoint, heads))
    report = CheckpointReport(checkpoints, HeadAudit(trusted))
    report.verified = {(c.partition, c.sequence, c.signature) for c, _ in trusted}
    report.audit.narrow(site, study)
    rows, keys, problems = verify_backend(backend, site=site, study=study, report=report)
    report.findings = findings + report.findings + report.audit.finish()
    if rows and not checkpoints:
        report.findings.append(
            CheckpointFinding(
                CheckpointFindingKind.NO_CHECKPOINT,
                None,
                None,
                None,
                None,
                None,
                "lineage is stored but there is no audit checkpoint: deleted newest "
                "revisions cannot be detected",
            )
        )
    return rows, keys, problems, report


def _has_checkpoints_table(backend: QueryBackend) -> bool:
    _, rows = backend.execute(
        "SELECT count() FROM system.tables WHERE database = currentDatabase() AND name = %(t)s",
        {"t": CHECKPOINTS_TABLE},
    )
    return bool(rows and int(rows[0][0]))


def _finding_json(finding: CheckpointFinding) -> dict[str, Any]:
    key = finding.key or (None, None, None, None)
    return {
        "kind": finding.kind.value,
        "partition": finding.partition,
        "sequence": finding.sequence,
        "site_id": key[0],
        "study_uid": key[1],
        "algorithm_name": key[2],
        "finding_code": key[3],
        "expected_revision": finding.expected_revision,
        "found_revision": finding.found_revision,
        "detail": finding.detail,
    }


def _finding_line(finding: CheckpointFinding) -> str:
    if finding.key is None:
        where = (
            f"checkpoint {finding.sequence} of partition {finding.partition}"
            if finding.sequence is not None
            else "checkpoints"
        )
    else:
        site_id, study_uid, algorithm, code = finding.key
        where = f"site {site_id} study {study_uid} {algorithm}/{code}"
    return f"[red]✗ {finding.kind.value}[/] {where}: {finding.detail}"


@audit_app.command("verify")
def verify_command(
    site: Annotated[str | None, typer.Option("--site", help="Only this site.")] = None,
    study: Annotated[str | None, typer.Option("--study", help="Only this study UID.")] = None,
    output: Annotated[
        str, typer.Option("--format", "-f", help="table | json (the problems).")
    ] = "table",
    demo: Annotated[
        bool,
        typer.Option(
            "--demo", help="Without a configured checkpoint key, accept the public demo key."
        ),
    ] = False,
    chdb: ChdbOption = None,
    database: DatabaseOption = None,
) -> None:
    """Recompute the hash chain of every lineage key, and check it against the latest
    signed audit checkpoint of every partition.

    Prints every revision that was altered, removed, re-linked or duplicated with
    different content, every chain whose newest revisions were deleted (TRUNCATED),
    whose key is gone (MISSING), was rewritten (REWRITTEN) or was added outside the
    pipeline (EXTRA), and every checkpoint whose signature or root does not verify
    (FORGED, ALTERED). Exits 1 if there is any, 0 when everything verifies, 2 when no
    checkpoint key is configured (IMGOV_CHECKPOINT_KEY or IMGOV_CHECKPOINT_KEY_FILE).
    """
    if output not in {"table", "json"}:
        _err.print(f"[red]error:[/] --format must be table or json, not {output!r}")
        raise typer.Exit(2)
    try:
        keyring = checkpoint_keyring(load_settings(demo=demo))
    except ImgovError as exc:
        _err.print(f"[red]error:[/] {exc}")
        raise typer.Exit(2) from exc
    with open_backend(chdb, database, create=False) as backend:
        rows, keys, problems, report = verify_checkpoints(backend, keyring, site=site, study=study)
    failed = bool(problems or report.findings)
    if output == "json":
        typer.echo(
            json.dumps(
                {
                    "rows": rows,
                    "keys": keys,
                    "problems": [_problem_json(p) for p in problems],
                    "checkpoints": [
                        {
                            "partition": c.partition,
                            "sequence": c.sequence,
                            "created_at_ms": c.created_at_ms,
                            "watermark_ms": c.watermark_ms,
                            "head_count": c.head_count,
                            "key_id": c.key_id,
                            "verified": (c.partition, c.sequence, c.signature) in report.verified,
                        }
                        for c in report.checkpoints
                    ],
                    "checkpoint_findings": [_finding_json(f) for f in report.findings],
                    "demo_key": keyring.current.is_demo,
                },
                indent=2,
            )
        )
    else:
        # One line per problem, never folded: easy to read, grep and paste into a ticket.
        for p in problems:
            site_id, study_uid, algorithm, finding = p.key
            _out.print(
                f"[red]✗ {p.kind.value}[/] site {site_id} study {study_uid} "
                f"{algorithm}/{finding} revision {p.revision}: {p.detail}",
                soft_wrap=True,
            )
        for f in report.findings:
            _out.print(_finding_line(f), soft_wrap=True)
        if keyring.current.is_demo:
            _out.print(
                "[yellow]checkpoint signatures checked with the public demo key: "
                "they prove nothing outside a demo[/]",
                soft_wrap=True,
            )
        verdict = "[red]FAILED[/]" if failed else "[green]OK[/]"
        partitions = len({c.partition for c in report.checkpoints})
        _out.print(
            f"audit verify {verdict}: {rows:,} stored revisions of {keys:,} lineage keys checked, "
            f"{len(problems)} problem(s); {partitions} partition checkpoint(s) with "
            f"{report.audit.heads:,} heads, {len(report.findings)} checkpoint finding(s)",
            soft_wrap=True,
        )
    if failed:
        raise typer.Exit(1)
