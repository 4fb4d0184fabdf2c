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
    for name in (
        "IMGOV_PSEUDONYM_KEY",
        "IMGOV_PSEUDONYM_KEY_FILE",
        "IMGOV_CHECKPOINT_KEY",
        "IMGOV_CHECKPOINT_KEY_FILE",
        "IMGOV_BREACH_POLICY",
    ):
        monkeypatch.delenv(name, raising=False)
    folder = tmp_path / "conf"
    folder.mkdir()
    (folder / "policy.toml").write_bytes(DEFAULT_POLICY.read_bytes())
    (folder / "key.bin").write_bytes(bytes(range(1, 33)))
    (folder / "checkpoint.bin").write_bytes(bytes(range(2, 34)))
    config = folder / "imgov.toml"
    config.write_text(
        'breach_policy = "policy.toml"\npseudonym_key_file = "key.bin"\n'
        'checkpoint_key_file = "checkpoint.bin"\n\n'
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
    assert plan.governance.checkpoint_key_file == folder / "checkpoint.bin"
    assert plan.governance.kpi.allowed_lateness_ms == 60_000
    assert not plan.governance.demo


def test_invalid_governance_key_in_a_worker_file_names_the_file(tmp_path: Path) -> None:
    config = tmp_path / "imgov.toml"
    config.write_text('[worker]\napp_id = "w"\n\n[kpi]\nno_such_option = 1\n')
    with pytest.raises(ConfigurationError, match=r"(?s)imgov\.toml\).*no_such_option"):
        plan_worker(config, demo=True)


def test_static_membership_id_is_stable_per_state_directory(tmp_path: Path) -> None:
    from streams.runtime.settings import WorkerSettings

    one = WorkerSettings(app_id="gov", datadir=tmp_path / "w1")
    assert (
        one.group_instance_id
        == WorkerSettings(app_id="gov", datadir=tmp_path / "w1").group_instance_id
    )
    other = WorkerSettings(app_id="gov", datadir=tmp_path / "w2")
    assert one.group_instance_id != other.group_instance_id  # two workers on one host
    assert one.group_instance_id is not None and one.group_instance_id.startswith("gov-")
    kpi = WorkerSettings(app_id="gov", role="kpi", datadir=tmp_path / "w1")
    assert kpi.group_instance_id is not None and kpi.group_instance_id.startswith("gov-kpi-")
    assert WorkerSettings(instance_id="none").group_instance_id is None
    assert WorkerSettings(instance_id="pod-0").group_instance_id == "pod-0"


@pytest.mark.parametrize(
    ("text", "named"),
    [
        ("[worker]\nsession_timeout_s = 5\n", "session_timeout_s"),
        ("[worker]\nsession_timeout_s = 9\nheartbeat_interval_s = 4\n", "heartbeat_interval_s"),
        ('[worker]\ninstance_id = "a b"\n', "instance_id"),
        ("[worker]\nshutdown_timeout_s = 0\n", "shutdown_timeout_s"),
    ],
)
def test_membership_and_stop_settings_are_checked(tmp_path: Path, text: str, named: str) -> None:
    config = tmp_path / "imgov.toml"
    config.write_text(text)
    with pytest.raises(WorkerConfigError, match=named):
        load_worker_settings(config)


def test_membership_and_stop_settings_from_the_environment(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("IMGOV_WORKER_SESSION_TIMEOUT_S", "45")
    monkeypatch.setenv("IMGOV_WORKER_HEARTBEAT_INTERVAL_S", "5")
    monkeypatch.setenv("IMGOV_WORKER_SHUTDOWN_TIMEOUT_S", "20")
    monkeypatch.setenv("IMGOV_WORKER_LEAVE_GROUP_ON_STOP", "false")
    settings = load_worker_settings()
    assert (settings.session_timeout_s, settings.heartbeat_interval_s) == (45, 5)
    assert settings.shutdown_timeout_s == 20 and not settings.leave_group_on_stop
