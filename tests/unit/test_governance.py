"""The pseudonymisation key as read from its file or variable (streams.governance).

The bug these pin: the key file's bytes were stripped of whitespace, so a random binary
key that began or ended with a whitespace byte was refused as too short or silently
changed. Key files are now read exactly, and text keys declare ``hex:`` or ``base64:``.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
from pathlib import Path

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st
from pydantic import SecretStr

from streams.core.lineage.anchor import CheckpointKey
from streams.core.lineage.config import MIN_PSEUDONYM_KEY_BYTES, AlgorithmEligibility
from streams.core.lineage.pseudonym import IdentifierKind
from streams.governance import (
    ConfigurationError,
    GovernanceSettings,
    build_pseudonymiser,
    checkpoint_keyring,
    lineage_config,
)

# A fixed random 32-byte key, for the encodings.
KEY = bytes.fromhex("9f1c0a7e5b3d2e8f4a6c1b0d9e7f3a2c5d4b6e8f0a1c3e5d7b9f2a4c6e8d0b1f")

# Keys with whitespace bytes at either end: the old ``.strip()`` refused or changed each.
WHITESPACE_EDGED_KEYS = [
    pytest.param(b"\n" + KEY[1:], id="leading-newline-refused-as-too-short"),
    pytest.param(KEY[:-1] + b" ", id="trailing-space-refused-as-too-short"),
    pytest.param(b"\t" + KEY + b"\r\n", id="tab-and-crlf-silently-changed"),
    pytest.param(b"\x0b\x0c" + KEY + b"\x00\n", id="vt-ff-then-nul-newline"),
    pytest.param(b" \t\n\r\x0b\x0c" * 6, id="all-whitespace-stripped-to-nothing"),
]

_PREFIXES = (b"hex:", b"base64:")


def settings_for_file(path: Path) -> GovernanceSettings:
    # Explicit values win over any IMGOV_* variable of the shell running the tests.
    return GovernanceSettings(pseudonym_key=None, pseudonym_key_file=path, demo=False)


def key_from_file(path: Path) -> bytes:
    """The key the lineage join would use, as read from ``path``."""
    return lineage_config(settings_for_file(path)).pseudonym_key.get_secret_value()


def key_from_variable(value: str) -> bytes:
    """The key the lineage join would use, given ``IMGOV_PSEUDONYM_KEY=value``."""
    config = lineage_config(GovernanceSettings(pseudonym_key=SecretStr(value), demo=False))
    return config.pseudonym_key.get_secret_value()


def is_text_line(data: bytes) -> bool:
    """Whether ``data`` is printable ASCII then one line ending: refused without a prefix."""
    for ending in (b"\r\n", b"\n"):
        if data.endswith(ending):
            body = data[: -len(ending)]
            return bool(body) and all(0x20 <= byte < 0x7F for byte in body)
    return False


def assert_no_key_material(message: str, material: bytes) -> None:
    """No 12-byte run of ``material``, as text or as hex, appears in ``message``."""
    for start in range(max(len(material) - 11, 0)):
        run = material[start : start + 12]
        assert run.decode("latin-1") not in message
        assert run.hex() not in message.lower()


@settings(deadline=None)
@given(key=st.binary(min_size=MIN_PSEUDONYM_KEY_BYTES, max_size=256))
@example(key=b"\n" + bytes(range(1, 32)))
@example(key=bytes(range(200, 231)) + b" ")
@example(key=b"\t" * 8 + bytes(range(24)) + b"\r\n")
@example(key=b"ab" * 16)  # looks like hex text, but declares no encoding: taken as bytes
@example(key=b"QUJD" * 8)  # likewise for base64
def test_binary_key_file_is_used_exactly(
    key: bytes, tmp_path_factory: pytest.TempPathFactory
) -> None:
    if key.startswith(_PREFIXES) or is_text_line(key):
        return  # declared text keys and refused text lines are tested below
    path = tmp_path_factory.mktemp("key") / "key.bin"
    path.write_bytes(key)
    assert key_from_file(path) == key


@pytest.mark.parametrize("key", WHITESPACE_EDGED_KEYS)
def test_whitespace_bytes_are_part_of_the_key(key: bytes, tmp_path: Path) -> None:
    path = tmp_path / "key.bin"
    path.write_bytes(key)
    assert key_from_file(path) == key
    # The pseudonyms themselves are HMAC-SHA256 under exactly those bytes.
    pseudonymiser = build_pseudonymiser(settings_for_file(path))
    expected = hmac.new(key, b"patient_id\x00PAT-1", hashlib.sha256).hexdigest()
    assert pseudonymiser.ref(IdentifierKind.PATIENT, "PAT-1") == expected


@pytest.mark.parametrize("ending", [b"", b"\n", b"\r\n"], ids=["bare", "lf", "crlf"])
@pytest.mark.parametrize(
    ("text", "key"),
    [
        (b"hex:" + KEY.hex().encode(), KEY),
        (b"hex:" + KEY.hex().upper().encode(), KEY),
        (b"base64:" + base64.b64encode(KEY), KEY),  # one "=" of padding
        (b"base64:" + base64.b64encode(KEY + b"\n\x00"), KEY + b"\n\x00"),  # "=="
        (b"base64:" + base64.b64encode(b" " + KEY + b"\t"), b" " + KEY + b"\t"),  # none
    ],
    ids=["hex", "HEX", "base64", "base64-two-pad", "base64-no-pad"],
)
def test_text_key_file_gives_the_decoded_bytes(
    text: bytes, key: bytes, ending: bytes, tmp_path: Path
) -> None:
    path = tmp_path / "key.txt"
    path.write_bytes(text + ending)
    assert key_from_file(path) == key


@pytest.mark.parametrize(
    ("content", "fault"),
    [
        (b"hex:" + KEY.hex().encode()[:-1], "Odd-length"),
        (b"hex:" + KEY.hex().encode()[:-1] + b"g", "Non-hexadecimal"),
        (b"hex: " + KEY.hex().encode() + b" ", "not valid hex"),
        (b"hex:" + KEY.hex().encode() + b"\n\n", "not valid hex"),
        (b"hex:" + KEY.hex()[:-2].encode() + "é".encode(), "non-ASCII"),
        (b"hex:\n", "nothing after"),
        (b"base64:" + base64.b64encode(KEY).rstrip(b"="), "not valid base64"),
        (b"base64:" + base64.urlsafe_b64encode(b"\xfb\xff" * 16), "Only base64 data"),
        (b"base64:" + base64.b64encode(KEY) + b"==", "Excess data after padding"),
        (b"base64:" + base64.encodebytes(KEY * 2), "not valid base64"),  # wrapped lines
        (b"base64:", "nothing after"),
    ],
    ids=[
        "hex-odd-length",
        "hex-bad-digit",
        "hex-spaces",
        "hex-two-newlines",
        "hex-non-ascii",
        "hex-empty",
        "base64-missing-padding",
        "base64-urlsafe-alphabet",
        "base64-excess-padding",
        "base64-wrapped",
        "base64-empty",
    ],
)
def test_malformed_text_key_file_is_refused_clearly(
    content: bytes, fault: str, tmp_path: Path
) -> None:
    path = tmp_path / "key.txt"
    path.write_bytes(content)
    with pytest.raises(ConfigurationError, match=fault) as raised:
        key_from_file(path)
    message = str(raised.value)
    assert str(path) in message
    assert_no_key_material(message, content.partition(b":")[2])
    assert_no_key_material(message, KEY)


def test_empty_key_file_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "key.bin"
    path.write_bytes(b"")
    with pytest.raises(ConfigurationError, match="empty") as raised:
        key_from_file(path)
    assert str(path) in str(raised.value)


def test_missing_key_file_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "absent.bin"
    with pytest.raises(ConfigurationError, match="cannot read") as raised:
        key_from_file(path)
    assert str(path) in str(raised.value)


def test_short_binary_key_keeps_its_error_without_the_key(tmp_path: Path) -> None:
    key = b"\x00SECRET-KEY-MATERIAL--31-bytes\xfe"
    assert len(key) == MIN_PSEUDONYM_KEY_BYTES - 1
    path = tmp_path / "key.bin"
    path.write_bytes(key)
    with pytest.raises(ConfigurationError, match="at least 32 bytes") as raised:
        key_from_file(path)
    assert_no_key_material(str(raised.value), key)


def test_short_decoded_key_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "key.txt"
    path.write_bytes(b"hex:" + KEY[:16].hex().encode() + b"\n")
    with pytest.raises(ConfigurationError, match="at least 32 bytes") as raised:
        key_from_file(path)
    assert_no_key_material(str(raised.value), KEY[:16].hex().encode())


def test_text_key_with_a_line_ending_but_no_prefix_is_refused(tmp_path: Path) -> None:
    # Older versions stripped the newline; reading it as key material would silently
    # change every pseudonym, so the operator is told to say what the key is.
    passphrase = b"a text passphrase that is long enough"
    path = tmp_path / "key.txt"
    path.write_bytes(passphrase + b"\n")
    with pytest.raises(ConfigurationError, match="line ending") as raised:
        key_from_file(path)
    assert str(path) in str(raised.value)
    assert_no_key_material(str(raised.value), passphrase)
    path.write_bytes(passphrase)
    assert key_from_file(path) == passphrase


@pytest.mark.parametrize(
    "value",
    ["hex:" + KEY.hex(), "hex:" + KEY.hex() + "\n", "base64:" + base64.b64encode(KEY).decode()],
    ids=["hex", "hex-lf", "base64"],
)
def test_variable_accepts_the_declared_encodings(value: str) -> None:
    assert key_from_variable(value) == KEY


@pytest.mark.parametrize(
    "value",
    ["x" * 32, " padded passphrase of 32 chars \n", "ключ" * 8],
    ids=["ascii", "whitespace-edged", "non-ascii"],
)
def test_variable_without_prefix_is_its_utf8_text_exactly(value: str) -> None:
    assert key_from_variable(value) == value.encode()


def test_malformed_variable_is_refused_without_the_key() -> None:
    value = "hex:" + KEY.hex() + "z"
    with pytest.raises(ConfigurationError, match="IMGOV_PSEUDONYM_KEY") as raised:
        key_from_variable(value)
    assert_no_key_material(str(raised.value), value.encode())


def test_coverage_expectations_come_only_from_the_operators_configuration() -> None:
    """No algorithm is expected by default: a stream of any algorithm gets no
    NO_AI_RESULT rows, so its coverage is that of the studies it did read (100%) and no
    coverage breach can open, until the operator declares what each algorithm should
    read (the demo's file declares its clinic's)."""
    from schemas.corpus import sample_events
    from schemas.records import Outcome
    from streams.governance import DEMO_SETTINGS, build_processor, load_settings

    assert load_settings(demo=True).eligibility == ()
    events = sample_events(400, seed=9, end_ms=1_760_000_000_000)
    default = build_processor(load_settings(demo=True))
    out = default.process(events)
    out.kpis += default.close().kpis
    assert not [r for r in out.lineage if r.outcome is Outcome.NO_AI_RESULT]
    coverage = [v.value for v in out.kpis if v.kpi == "coverage" and v.value is not None]
    assert coverage and set(coverage) == {1.0}

    demo = load_settings(DEMO_SETTINGS, demo=True)
    assert {e.algorithm_name for e in demo.eligibility} == {"ich-detect", "pe-detect"}
    # An operator declares an algorithm that never ran on these head CTs.
    never_ran = AlgorithmEligibility(
        algorithm_name="never-ran", finding_code="ICH", modality="CT", body_parts=("HEAD",)
    )
    clinic = build_processor(demo.model_copy(update={"eligibility": (never_ran,)}))
    out = clinic.process(events)
    out.kpis += clinic.close().kpis
    assert {r.algorithm_name for r in out.lineage if r.outcome is Outcome.NO_AI_RESULT} == {
        "never-ran"
    }
    assert [v for v in out.kpis if v.kpi == "coverage" and v.value == 0.0]


# --- the audit checkpoint key ------------------------------------------------------------

CHECKPOINT_KEY = bytes(range(100, 132))


def checkpoint_settings(**values: object) -> GovernanceSettings:
    options: dict[str, object] = {
        "pseudonym_key": SecretStr("hex:" + KEY.hex()),
        "pseudonym_key_file": None,
        "checkpoint_key": None,
        "checkpoint_key_file": None,
        "checkpoint_previous_keys_file": None,
        "demo": False,
    }
    options.update(values)
    return GovernanceSettings(**options)  # type: ignore[arg-type]


def test_no_checkpoint_key_outside_demo_mode_is_refused() -> None:
    with pytest.raises(ConfigurationError, match="IMGOV_CHECKPOINT_KEY"):
        checkpoint_keyring(checkpoint_settings())
    assert checkpoint_keyring(checkpoint_settings(demo=True)).current.is_demo


def test_checkpoint_key_from_variable_or_file_like_the_pseudonymisation_key(
    tmp_path: Path,
) -> None:
    expected = CheckpointKey(CHECKPOINT_KEY).key_id
    from_variable = checkpoint_settings(checkpoint_key=SecretStr("hex:" + CHECKPOINT_KEY.hex()))
    assert checkpoint_keyring(from_variable).current.key_id == expected
    path = tmp_path / "checkpoint.key"
    path.write_bytes(CHECKPOINT_KEY)
    ring = checkpoint_keyring(checkpoint_settings(checkpoint_key_file=path, demo=True))
    assert ring.current.key_id == expected and not ring.current.is_demo
    path.write_bytes(b"tooshort")
    with pytest.raises(ConfigurationError, match="at least 32 bytes") as caught:
        checkpoint_keyring(checkpoint_settings(checkpoint_key_file=path))
    assert "tooshort" not in str(caught.value)


def test_the_checkpoint_key_must_differ_from_the_pseudonymisation_key() -> None:
    with pytest.raises(ConfigurationError, match="must not be the pseudonymisation key"):
        checkpoint_keyring(checkpoint_settings(checkpoint_key=SecretStr("hex:" + KEY.hex())))


def test_previous_checkpoint_keys_are_accepted_for_rotation(tmp_path: Path) -> None:
    old = bytes(range(200, 240))
    path = tmp_path / "previous.keys"
    path.write_bytes(
        b"hex:" + old.hex().encode() + b"\n\nbase64:" + base64.b64encode(KEY[::-1]) + b"\n"
    )
    ring = checkpoint_keyring(
        checkpoint_settings(
            checkpoint_key=SecretStr("hex:" + CHECKPOINT_KEY.hex()),
            checkpoint_previous_keys_file=path,
        )
    )
    old_id = CheckpointKey(old).key_id
    assert ring.by_id(old_id) is not None and ring.current.key_id != old_id
    assert len(ring.previous) == 2
    path.write_bytes(old.hex().encode() + b"\n")
    with pytest.raises(ConfigurationError, match="line 1 must be written 'hex:"):
        checkpoint_keyring(
            checkpoint_settings(
                checkpoint_key=SecretStr("hex:" + CHECKPOINT_KEY.hex()),
                checkpoint_previous_keys_file=path,
            )
        )
