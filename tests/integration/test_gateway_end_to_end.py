"""One simulated clinic, sent twice: as contract events, and as the native messages
hospital systems send, through ``imgov gateway`` and real third-party clients. Both
runs must end with the same KPIs and the same lineage.

Path A produces the clinic's contract events (Avro) straight to the input topics of
one namespace, as the other live tests do. Path B writes the same clinic with ``imgov
simulate --native`` and sends it through ``imgov gateway`` (a subprocess on free ports)
into a second namespace: the reports as HL7 v2 ORU^R01 with python-hl7's
``mllp_send``, the alerts as FHIR R4 Communications with plain HTTP POSTs (urllib), the
inferences as DICOM SR (TID 1500) with DCMTK's ``storescu``. Every message must be
accepted (AA, 201, C-STORE success). Then one ``imgov worker`` per namespace writes its
own ClickHouse database, and the final tables are compared (DESIGN §4-§7).

What is compared, and what is not:

* ``kpi_final``: every column of the harness's comparison (``KPI_COLUMNS``), exactly;
  breaches and dead letters by reason as well.
* ``lineage_latest``: every column of the harness's comparison except the two that are
  event ids, which differ by construction (the gateway names its events after the
  messages: ``hl7:<MSH-3>:<MSH-10>:<OBR-1>``, ``fhir-alert:<site>:<alert id>:<state>:<time>``,
  ``dicom-sr:<SOP instance UID>:<finding>``; the simulator's are UUIDs):

  - ``inference_event_id``: the id of the row's inference event;
  - ``event_ids``: the ids of every contributing event. Its *length* is compared instead
    (``length(event_ids)``), so the same number of distinct events made every row: none
    lost, none doubled by a duplicate delivery that the gateway did not name the same.

  The hash chain columns (``prev_hash``, ``record_hash``) and ``revision`` are outside
  the harness's comparison already (they count how the input was cut into batches, and
  the hashes cover the event ids).
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest

from schemas.files import RejectedInput, read_events
from streams.paths import REPO_ROOT
from tests.integration.test_gateway_mllp import answers, free_port, msa, wait_listening
from tests.integration.test_live_harness import (
    LINEAGE_COLUMNS,
    LiveEnv,
    ch_client,
    encoded,
    final_tables,
    opened,
    produce,
)

pytestmark = [pytest.mark.kafka, pytest.mark.clickhouse]

BIN = Path(sys.executable).parent
IMGOV = str(BIN / "imgov")
MLLP_SEND = str(BIN / "mllp_send")
STORESCU = shutil.which("storescu") or "storescu"  # DCMTK (bash infra/dicom/install.sh)

# The lineage columns compared: the harness's, without the event ids (module docstring).
ID_COLUMNS = (" inference_event_id,", " arraySort(event_ids),")
COMPARED_LINEAGE = LINEAGE_COLUMNS
for _column in ID_COLUMNS:
    assert _column in COMPARED_LINEAGE
    COMPARED_LINEAGE = COMPARED_LINEAGE.replace(_column, "")
COMPARED_LINEAGE += ", length(event_ids)"


def comparable(database: str) -> dict[str, Any]:
    """The harness's final tables, with the lineage compared as the docstring says."""
    tables = final_tables(database)
    client = ch_client(database)
    try:
        lineage = client.execute(f"SELECT {COMPARED_LINEAGE} FROM lineage_latest")
    finally:
        client.disconnect()
    tables["lineage"] = sorted(map(repr, lineage))  # repr: NaN compares equal to itself
    return tables


def simulate_clinic(events_file: Path, native: Path) -> None:
    subprocess.run(
        [
            IMGOV, "simulate", "--days", "2", "--sites", "2", "--studies-per-day", "60",
            "--seed", "29", "--out", str(events_file), "--native", str(native), "-q",
        ],
        check=True, cwd=REPO_ROOT, capture_output=True, timeout=300,
    )  # fmt: skip


def send_through_gateway(env: LiveEnv, native: Path, log: Path) -> dict[str, int]:
    """Runs ``imgov gateway`` into ``env``'s namespace and sends every native message
    with the real clients; returns how many messages of each kind were accepted."""
    mllp, fhir, dicom, metrics = free_port(), free_port(), free_port(), free_port()
    gateway_env = {
        **os.environ,
        "IMGOV_KAFKA_BOOTSTRAP": env.bootstrap,
        "IMGOV_GATEWAY_TOPIC_NAMESPACE": env.namespace,
        "IMGOV_GATEWAY_MLLP_PORT": str(mllp),
        "IMGOV_GATEWAY_FHIR_PORT": str(fhir),
        "IMGOV_GATEWAY_DICOM_PORT": str(dicom),
        "IMGOV_GATEWAY_METRICS_PORT": str(metrics),
    }
    with log.open("wb") as err:
        process = subprocess.Popen(
            [IMGOV, "gateway"], env=gateway_env, stdout=subprocess.DEVNULL, stderr=err
        )
        try:
            for port in (mllp, fhir, dicom):
                wait_listening(port, process)
            # The RIS, the AI platform's FHIR client and its DICOM sender are separate
            # systems: they send at the same time, each in its own delivery order.
            with ThreadPoolExecutor(3) as pool:
                sends = {
                    "hl7": pool.submit(send_hl7, mllp, native / "hl7" / "reports.mllp"),
                    "fhir": pool.submit(send_fhir, fhir, sorted((native / "fhir").glob("*.json"))),
                    "dicom-sr": pool.submit(
                        send_dicom, dicom, sorted((native / "dicom-sr").glob("*.dcm"))
                    ),
                }
                accepted = {kind: sent.result() for kind, sent in sends.items()}
            assert_counted(metrics, accepted)
            process.send_signal(signal.SIGTERM)
            assert process.wait(60) == 0, log.read_text()
        finally:
            if process.poll() is None:
                process.kill()
                process.wait()
    return accepted


def assert_counted(port: int, accepted: dict[str, int]) -> None:
    """The gateway's metrics count what the real clients saw accepted, per protocol."""
    from prometheus_client.parser import text_string_to_metric_families

    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as response:
        text = response.read().decode()
    counted = {
        sample.labels["protocol"]: sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
        if sample.name == "imgov_gateway_messages_total" and sample.labels["outcome"] == "accepted"
    }
    assert counted == {
        "hl7": accepted["hl7"],
        "fhir": accepted["fhir"],
        "dicom_sr": accepted["dicom-sr"],
    }


def timed(what: str, started: float) -> float:
    """Prints how long a step took (shown with ``pytest -s``); returns now."""
    now = time.monotonic()
    print(f"{what}: {now - started:.1f} s")
    return now


def send_hl7(port: int, frames: Path) -> int:
    started = time.monotonic()
    sent = subprocess.run(
        [MLLP_SEND, "--port", str(port), "--file", str(frames), "127.0.0.1"],
        capture_output=True, timeout=300, check=True,
    )  # fmt: skip
    codes = [msa(ack)[1] for ack in answers(sent.stdout)]
    assert codes and set(codes) == {"AA"}, [ack for ack in answers(sent.stdout) if "AA" not in ack]
    timed(f"  mllp_send: {len(codes)} ORU^R01, each answered AA", started)
    return len(codes)


def send_fhir(port: int, files: list[Path]) -> int:
    started = time.monotonic()
    for path in files:
        request = urllib.request.Request(
            f"http://127.0.0.1:{port}/fhir/Communication",
            data=path.read_bytes(),
            headers={"Content-Type": "application/fhir+json"},
            method="POST",
        )
        with urllib.request.urlopen(request, timeout=60) as response:
            assert response.status in (200, 201), (path.name, response.read())
    timed(f"  urllib: {len(files)} Communication POSTs, each answered 201", started)
    return len(files)


def send_dicom(port: int, files: list[Path]) -> int:
    started = time.monotonic()
    # -R: propose only the presentation contexts the files need (storescu's default list
    # has no Comprehensive 3D SR); -v: log each C-STORE response's status.
    sent = subprocess.run(
        [STORESCU, "-R", "-v", "-aec", "IMGOV", "127.0.0.1", str(port), *map(str, files)],
        capture_output=True, timeout=300, text=True,
    )  # fmt: skip
    output = sent.stdout + sent.stderr
    assert sent.returncode == 0, output[-3000:]
    assert "E: " not in output, output[-3000:]
    assert output.count("Received Store Response (Success)") == len(files), output[-3000:]
    timed(f"  storescu: {len(files)} SR C-STOREs, each answered Success", started)
    return len(files)


def test_native_messages_through_the_gateway_give_the_same_kpis_and_lineage(
    kafka_bootstrap: str, clickhouse_writer: Any, tmp_path: Path
) -> None:
    if shutil.which(STORESCU) is None:
        message = "DCMTK's storescu is not installed (bash infra/dicom/install.sh)"
        if os.environ.get("CI", "").lower() in {"1", "true", "yes"}:
            pytest.fail(message)
        pytest.skip(message)
    events_file, native = tmp_path / "events.jsonl", tmp_path / "native"
    step = time.monotonic()
    simulate_clinic(events_file, native)
    step = timed("simulate (contract events and native messages)", step)
    events = [e for e in read_events(events_file) if not isinstance(e, RejectedInput)]
    by_type = {
        kind: sum(e.event_type.value == kind for e in events)
        for kind in ("report", "alert", "inference")
    }
    assert all(by_type.values()), by_type

    (tmp_path / "direct").mkdir()
    (tmp_path / "gateway").mkdir()
    direct = LiveEnv(kafka_bootstrap, tmp_path / "direct")
    gated = LiveEnv(kafka_bootstrap, tmp_path / "gateway")
    with opened(direct), opened(gated):
        # (a) contract events straight to namespace A.
        messages: list[tuple[str, bytes | None, bytes]] = [*encoded(events, direct.topics)]
        produce(direct.bootstrap, messages)
        step = timed(f"produce {len(events)} contract events", step)
        # (b) the same clinic, natively, through the gateway into namespace B: every
        # event is one message (duplicated deliveries are sent again, as retries).
        accepted = send_through_gateway(gated, native, tmp_path / "gateway.log")
        assert accepted == {
            "hl7": by_type["report"],
            "fhir": by_type["alert"],
            "dicom-sr": by_type["inference"],
        }
        step = timed(f"send {sum(accepted.values())} messages through imgov gateway", step)
        # Both workers start on the complete input, so neither run depends on how the
        # three clients' messages interleaved with each other.
        direct.start_worker()
        gated.start_worker()
        # Waiting in parallel: each wait ends a whole idle close after its worker's
        # tables stopped changing, and the two workers run side by side.
        with ThreadPoolExecutor(2) as pool:
            for waited in [pool.submit(env.wait_until_settled) for env in (direct, gated)]:
                waited.result()
        step = timed("both workers settled", step)
        through_gateway, straight = comparable(gated.database), comparable(direct.database)

    assert straight["lineage"] and straight["kpis"]
    assert straight["duplicate_rows_in_lineage_latest"] == 0
    assert through_gateway["duplicate_rows_in_lineage_latest"] == 0
    for table in ("kpis", "lineage", "breaches", "rejected"):
        a, b = straight[table], through_gateway[table]
        only_straight = sorted(set(a) - set(b))[:3]
        only_gateway = sorted(set(b) - set(a))[:3]
        assert b == a, (
            f"{table}: only straight {only_straight}; only via the gateway {only_gateway}"
        )
