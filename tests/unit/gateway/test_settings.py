"""GatewaySettings: loopback and the well-known ports by default, IMGOV_GATEWAY_* overrides."""

from __future__ import annotations

import os

import pytest
from pydantic import ValidationError

from streams.gateway.settings import GatewaySettings


def test_defaults_bind_every_listener_to_loopback_on_the_standard_ports(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    for name in list(os.environ):
        if name.startswith("IMGOV_GATEWAY_"):
            monkeypatch.delenv(name)
    settings = GatewaySettings()
    assert settings.host == "127.0.0.1"
    assert (settings.mllp_enabled, settings.mllp_port) == (True, 2575)
    assert (settings.fhir_enabled, settings.fhir_port) == (True, 8080)
    assert (settings.dicom_enabled, settings.dicom_port) == (True, 11112)
    assert settings.dicom_ae_title == "IMGOV"
    assert settings.topic_namespace is None  # the worker's
    assert settings.rejected_to_clickhouse is False


def test_the_environment_switches_listeners_and_moves_ports(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("IMGOV_GATEWAY_MLLP_PORT", "12575")
    monkeypatch.setenv("IMGOV_GATEWAY_FHIR_ENABLED", "false")
    monkeypatch.setenv("IMGOV_GATEWAY_TOPIC_NAMESPACE", "site7.")
    settings = GatewaySettings()
    assert (settings.mllp_port, settings.fhir_enabled, settings.topic_namespace) == (
        12575,
        False,
        "site7.",
    )


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("IMGOV_GATEWAY_MLLP_PORT", "70000"),
        ("IMGOV_GATEWAY_DICOM_AE_TITLE", "A-TITLE-LONGER-THAN-16"),
        ("IMGOV_GATEWAY_TOPIC_NAMESPACE", "no spaces"),
    ],
)
def test_an_invalid_value_is_refused_naming_the_setting(
    monkeypatch: pytest.MonkeyPatch, name: str, value: str
) -> None:
    monkeypatch.setenv(name, value)
    with pytest.raises(ValidationError, match=name.removeprefix("IMGOV_GATEWAY_").lower()):
        GatewaySettings()
