"""Worker settings: environment, TOML file, validation messages; topic namespaces."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from streams.governance import DEFAULT_POLICY, ConfigurationError
from streams.runtime.settings import WorkerConfigError, load_worker_settings
from streams.runtime.worker import plan_worker
from streams.topics import CONTRIBUTIONS_TOPIC, WorkerTopics


def test_environment_then_file(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("IMGOV_WORKER_BATCH_SIZE", "123")
    monkeypatch.setenv("IMGOV_WORKER_APP_ID", "from-env")
    config = tmp_path / "imgov.toml"
    config.write_text('[worker]\napp_id = "from-file"\ndatadir = "state"\n')
    settings = load_worker_settings(config)
    assert settings.app_id == "from-file"
    assert settings.batch_size == 123
    assert settings.datadir == tmp_path / "state"
    assert not settings.web_enabled
    assert settings.role == "all" and settings.group_id == "from-file"


def test_kpi_role_has_its_own_group(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("IMGOV_WORKER_ROLE", "kpi")
    monkeypatch.setenv("IMGOV_WORKER_APP_ID", "gov")
    assert load_worker_settings().group_id == "gov-kpi"
    monkeypatch.setenv("IMGOV_WORKER_ROLE", "lineage")
    assert load_worker_settings().group_id == "gov"


@pytest.mark.parametrize(
    ("text", "named"),
    [
        ('[worker]\nweb_host = "0.0.0.0"\n', "web_host"),
        ("[worker]\nbatch_size = 0\n", "batch_size"),
        ("[worker]\nno_such = 1\n", "no_such"),
        ('[worker]\nstore = "redis"\n', "store"),
        ('[worker]\nrole = "both"\n', "role"),
        ("[worker]\ncheckpoint_interval_s = 0\n", "checkpoint_interval_s"),
    ],
)
def test_invalid_settings_name_the_setting(tmp_path: Path, text: str, named: str) -> None:
    config = tmp_path / "imgov.toml"
    config.write_text(text)
    with pytest.raises(WorkerConfigError, match=named):
        load_worker_settings(config)


def test_namespace_prefixes_every_topic() -> None:
    topics = WorkerTopics.with_namespace("t1.")
    assert topics.inputs == (
        "t1.imaging.ai.inference.v1",
        "t1.imaging.ai.alert.v1",
        "t1.imaging.report.v1",
    )
    assert topics.contributions == "t1." + CONTRIBUTIONS_TOPIC
    assert topics.original(topics.dlq) == "governance.dlq.v1"


def test_worker_file_paths_resolve_against_its_folder_without_writing(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    for name in ("IMGOV_PSEUDONYM_KEY", "IMGOV_PSEUDONYM_KEY_FILE", "IMGOV_BREACH_POLICY"):
        monkeypatch.delenv(name, raising=False)
    folder = tmp_path / "conf"
    folder.mkdir()
    (folder / "policy.toml").write_bytes(DEFAULT_POLICY.read_bytes())
    (folder / "key.bin").write_bytes(bytes(range(1, 33)))
    config = folder / "imgov.toml"
    config.write_text(
        'breach_policy = "policy.toml"\npseudonym_key_file = "key.bin"\n\n'
        '[worker]\napp_id = "w"\n\n[kpi]\nallowed_lateness_ms = 60000\n'
    )
    listing = sorted(folder.iterdir())
    # Read-only, and an old mtime: a file created (even if deleted again) changes it.
    folder.chmod(0o555)
    os.utime(folder, (1, 1))
    try:
        plan = plan_worker(config)
        assert folder.stat().st_mtime == 1
    finally:
        folder.chmod(0o755)
    assert sorted(folder.iterdir()) == listing
    assert plan.worker.app_id == "w"
    assert plan.governance.breach_policy == folder / "policy.toml"
    assert plan.governance.pseudonym_key_file == folder / "key.bin"
    assert plan.governance.kpi.allowed_lateness_ms == 60_000
    assert not plan.governance.demo


def test_invalid_governance_key_in_a_worker_file_names_the_file(tmp_path: Path) -> None:
    config = tmp_path / "imgov.toml"
    config.write_text('[worker]\napp_id = "w"\n\n[kpi]\nno_such_option = 1\n')
    with pytest.raises(ConfigurationError, match=r"(?s)imgov\.toml\).*no_such_option"):
        plan_worker(config, demo=True)
