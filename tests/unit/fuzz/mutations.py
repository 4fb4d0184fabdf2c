"""Hypothesis strategies that mutate valid inputs the way a fuzzer does.

``mutated(seeds)`` starts from one of the valid ``seeds`` and applies a few mutations:
bit flips, bytes set to values parsers treat specially (delimiters, 0x00, 0xff),
truncation, insertion of random bytes or tokens, deletion, duplication of a chunk,
splicing with another seed, and operations on the pieces between a separator (CR, LF,
``|``, ``^``, ``,``): a segment, field, component or JSON member duplicated, dropped or
swapped. ``fuzzed_bytes(seeds)`` mixes that with pure random bytes. Every operation is
drawn from hypothesis, so a failure shrinks to few, small mutations.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from hypothesis import strategies as st

__all__ = [
    "JSON_VALUES",
    "apply_mutation",
    "date_times",
    "fuzzed_bytes",
    "mutated",
    "mutations",
    "seed_of",
]

_SPECIAL = b'\x00\x01\x7f\x80\xff|^~\\&\x0b\x1c\r\n"{}[],:0-9.eE+ '
_TOKENS = (
    b"\x0b",
    b"\x1c\r",
    b"\r",
    b"\n",
    b"\r\n",
    b"|",
    b"^",
    b"~",
    b"\\",
    b"&",
    b"MSH|^~\\&|",
    b"OBR|",
    b"OBX|",
    b"\\X0D\\",
    b"\\E\\",
    b"null",
    b"true",
    b"[]",
    b"{}",
    b'""',
    b"-1",
    b"1e999",
    b"NaN",
    b"9999999999999999999999",
    b"\xc3\x28",
    b"\xed\xa0\x80",
    b"\x00\x00\x00\x00",
    b"\xff\xff\xff\xff\x0f",
)
_SEPARATORS = (b"\r", b"\n", b"|", b"^", b"~", b",", b":", b"\x00")

_POSITION = st.integers(0, 1 << 20)

mutations = st.one_of(
    st.tuples(st.just("flip"), _POSITION, st.integers(1, 255)),
    st.tuples(st.just("set"), _POSITION, st.sampled_from(_SPECIAL)),
    st.tuples(st.just("truncate"), _POSITION),
    st.tuples(st.just("insert"), _POSITION, st.binary(min_size=1, max_size=16)),
    st.tuples(st.just("token"), _POSITION, st.sampled_from(_TOKENS)),
    st.tuples(st.just("delete"), _POSITION, st.integers(1, 64)),
    st.tuples(st.just("duplicate"), _POSITION, st.integers(1, 256), _POSITION),
    st.tuples(st.just("splice"), st.integers(0, 1 << 10), _POSITION, _POSITION),
    st.tuples(
        st.just("pieces"),
        st.sampled_from(_SEPARATORS),
        st.sampled_from(("duplicate", "drop", "swap", "empty")),
        _POSITION,
        _POSITION,
    ),
)
"""One mutation, as plain data (shown as such when hypothesis reports a failure)."""


def apply_mutation(data: bytes, op: tuple[Any, ...], seeds: Sequence[bytes]) -> bytes:
    """Returns ``data`` after the mutation ``op`` (positions wrap around its length)."""
    kind = op[0]
    size = len(data)
    if kind == "splice":
        other: bytes = seeds[op[1] % len(seeds)]
        cut: int = op[2] % (size + 1)
        start: int = op[3] % (len(other) + 1)
        return data[:cut] + other[start:]
    if kind == "pieces":
        separator: bytes = op[1]
        action, i, j = op[2:]
        pieces = data.split(separator)
        a, b = i % len(pieces), j % len(pieces)
        if action == "duplicate":
            pieces.insert(b, pieces[a])
        elif action == "drop" and len(pieces) > 1:
            del pieces[a]
        elif action == "swap":
            pieces[a], pieces[b] = pieces[b], pieces[a]
        elif action == "empty":
            pieces[a] = b""
        return separator.join(pieces)
    at = op[1] % (size + 1)
    if kind == "truncate":
        return data[:at]
    if kind in ("insert", "token"):
        inserted: bytes = op[2]
        return data[:at] + inserted + data[at:]
    if kind == "delete":
        return data[:at] + data[at + op[2] :]
    if kind == "duplicate":
        chunk = data[at : at + op[2]]
        to = op[3] % (size + 1)
        return data[:to] + chunk + data[to:]
    if not size:
        return data
    at %= size
    value = data[at] ^ op[2] if kind == "flip" else op[2]
    return data[:at] + bytes((value,)) + data[at + 1 :]


def seed_of(seeds: Sequence[Any]) -> st.SearchStrategy[Any]:
    """One of ``seeds`` (a strategy whose repr does not print them all)."""
    return st.integers(0, len(seeds) - 1).map(lambda index: seeds[index])


@st.composite
def mutated(draw: st.DrawFn, seeds: Sequence[bytes], max_mutations: int = 6) -> bytes:
    """One of ``seeds`` after 1 to ``max_mutations`` mutations."""
    data: bytes = draw(seed_of(seeds))
    for op in draw(st.lists(mutations, min_size=1, max_size=max_mutations)):
        data = apply_mutation(data, op, seeds)
    return data


def fuzzed_bytes(seeds: Sequence[bytes], max_random: int = 512) -> st.SearchStrategy[bytes]:
    """Mutated seeds (most of the time), the seeds themselves, or random bytes."""
    return st.one_of(
        mutated(seeds),
        mutated(seeds),
        mutated(seeds),
        seed_of(seeds),
        st.binary(max_size=max_random),
    )


def _digits(width: int, high: int, edges: str) -> st.SearchStrategy[str]:
    """``width`` digits: an edge value (most of the time) or any number up to ``high``."""
    edge = st.sampled_from(edges.split())
    return edge | edge | st.integers(0, high).map(lambda n: str(n).zfill(width))


_CALENDAR_EDGES = [
    year + day + clock + offset
    for year in ("0001", "9999")
    for day in ("", "0101", "1231")
    for clock in ("", "000000", "235959")
    for offset in ("", "+1400", "-1200")
]
"""The first and last instants a datetime holds, with the widest offsets in use."""

_random_date_times = st.builds(
    lambda year, parts, offset: year + "".join(parts) + offset,
    _digits(4, 9999, "0000 0001 1969 1970 2026 9999"),
    st.lists(_digits(2, 99, "00 01 12 13 23 24 28 29 30 31 59 60 99"), max_size=5),
    st.just("")
    | _digits(4, 9999, "0000 0500 1400 2359 2400 9999").flatmap(
        lambda n: st.sampled_from(("+" + n, "-" + n))
    ),
)
date_times = st.sampled_from(_CALENDAR_EDGES) | _random_date_times
"""Texts shaped like HL7 DTM and DICOM DA/TM/DT values (``YYYY[MM[DD[HH[MM[SS]]]]][+-ZZZZ]``),
valid or not, biased to the edges: the calendar's first and last instants, month 13,
hour 24, offsets of a day or more."""


_JSON_TEXT = st.characters(exclude_categories=["Cs"])
JSON_VALUES: st.SearchStrategy[Any] = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(2**70), 2**70)
    | st.floats(allow_nan=False)
    | st.text(_JSON_TEXT, max_size=24),
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(_JSON_TEXT, max_size=12), inner)
    ),
    max_leaves=6,
)
"""Any JSON value, nested a little; integers past 64 bits, infinite floats. No lone
surrogates: JSON can escape them, but no UTF-8 parser takes them, so the value would
never get past parsing (byte mutations test that already)."""
