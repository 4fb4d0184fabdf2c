"""Reads the KPI snapshots of releases before format 1 (pickles) without unpickling them.

Until format 1 the KPI stage pickled its partitions' state into the changelog topic, and
unpickling runs code that the bytes name: whoever could write the topic could run code in
the worker. A deployment upgraded from such a release still holds those snapshots, so
they are read here, once per partition, by a *data-only* reader instead:

- ``pickletools.genops`` splits the bytes into opcodes (it parses, never executes);
- a small stack machine interprets the opcodes that build containers and numbers, and
  turns the ones that would import or call something (``GLOBAL``, ``REDUCE``,
  ``NEWOBJ``, ``BUILD``) into inert ``_Object`` nodes holding the class *name*, the
  arguments and the state: nothing is imported, nothing is called;
- any other opcode, or a class name outside imgov's own modules and ``collections.deque``,
  refuses the snapshot (``LegacySnapshotError``);
- the inert tree is mapped, attribute by attribute as the previous release laid them
  out (frozen here: that layout will never change again), onto a format-1 document,
  which is validated and loaded like any other snapshot.

The next snapshot of the partition is written in format 1, so each legacy snapshot is
read at most once per partition and owner change.
"""

from __future__ import annotations

import pickletools
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from streams.core.kpi.catalogue import KPIS
from streams.core.kpi.windows import WINDOW_SPECS

__all__ = ["LegacySnapshotError", "is_legacy_snapshot", "legacy_document"]


class LegacySnapshotError(ValueError):
    """A pickled snapshot this reader refuses: an opcode or class outside the old format."""


_ALLOWED_MODULES = ("streams.", "schemas.")
_ALLOWED_GLOBALS = {("collections", "deque")}

_V2 = "applied-ranges"
_V3 = "applied-ranges+rows"


@dataclass(frozen=True, slots=True)
class _Global:
    module: str
    name: str


@dataclass(eq=False, slots=True)
class _Object:
    """What unpickling would have built: the class (by name), its arguments and state."""

    cls: _Global
    args: tuple[Any, ...]
    state: Any = None
    items: list[Any] = field(default_factory=list)

    def attrs(self) -> dict[str, Any]:
        """The instance's attributes: ``__dict__`` and ``__slots__`` state alike."""
        state = self.state
        if isinstance(state, tuple) and len(state) == 2:
            merged = dict(state[0] or {})
            merged.update(state[1] or {})
            return merged
        if isinstance(state, dict):
            return state
        raise LegacySnapshotError(f"{self.cls.name}: unexpected pickled state")

    def fields(self, *names: str) -> dict[str, Any]:
        """A dataclass's attributes from its pickled field list (``slots=True`` dataclasses)."""
        if isinstance(self.state, list | tuple) and len(self.state) == len(names):
            return dict(zip(names, self.state, strict=True))
        return self.attrs()


def is_legacy_snapshot(data: bytes) -> bool:
    """Whether bytes are a pickle (protocol 2 or later), the previous releases' snapshots."""
    return data[:1] == b"\x80"


def legacy_document(data: bytes, no_upstream: dict[str, Any]) -> dict[str, Any]:
    """The format-1 document (``streams.core.kpi.snapshot``) of a pickled snapshot.

    Args:
        no_upstream: the upstream watermark state of a new partition, for the first
            releases' snapshots, which had none.

    Raises:
        LegacySnapshotError: the bytes are not a snapshot of a previous release.
    """
    root = _read(data)
    if not isinstance(root, tuple):
        raise LegacySnapshotError("a pickled KPI snapshot is a tuple")
    rows: Iterable[tuple[str, bytes]] = ()
    if root and root[0] == _V3:
        _, aggregator, breaches, upstream, ranges, rows = root
    elif root and root[0] == _V2:
        _, aggregator, breaches, upstream, ranges = root
    else:  # the first releases: applied offsets as a prefix and a set beyond it
        above: Iterable[int] = ()
        if len(root) == 3:
            aggregator, breaches, offset = root
            upstream = None
        elif len(root) == 4:
            aggregator, breaches, upstream, offset = root
        elif len(root) == 5:
            aggregator, breaches, upstream, offset, above = root
        else:
            raise LegacySnapshotError(f"a pickled KPI snapshot of {len(root)} items")
        ranges = [] if offset is None else [(0, offset + 1)]
        ranges += [(o, o + 1) for o in sorted(above)]
    return {
        "format": 1,
        "kpi_config": _config(aggregator),
        "aggregator": _aggregator(aggregator),
        "breaches": None if breaches is None else _breaches(breaches),
        "upstream": no_upstream if upstream is None else _upstream(upstream),
        "applied": [(int(a), int(b)) for a, b in ranges],
        "rows": [(key, value) for key, value in rows],
    }


# -- the inert interpreter --------------------------------------------------------------

_MARK = object()


def _read(data: bytes) -> Any:
    stack: list[Any] = []
    marks: list[int] = []
    memo: dict[int, Any] = {}

    def pop_mark() -> list[Any]:
        start = marks.pop()
        items = stack[start:]
        del stack[start:]
        return items

    try:
        ops = list(pickletools.genops(data))
    except Exception as exc:  # genops raises ValueError or others on malformed bytes
        raise LegacySnapshotError(f"not a pickle: {exc}") from None
    for op, arg, _pos in ops:
        name = op.name
        if name in ("PROTO", "FRAME"):
            continue
        if name == "STOP":
            if len(stack) != 1:
                raise LegacySnapshotError("a pickle that does not end with one object")
            return stack[0]
        if name == "MARK":
            marks.append(len(stack))
        elif name in ("NONE",):
            stack.append(None)
        elif name == "NEWTRUE":
            stack.append(True)
        elif name == "NEWFALSE":
            stack.append(False)
        elif name in (
            "BININT",
            "BININT1",
            "BININT2",
            "LONG1",
            "LONG4",
            "BINFLOAT",
            "SHORT_BINUNICODE",
            "BINUNICODE",
            "BINUNICODE8",
            "SHORT_BINBYTES",
            "BINBYTES",
            "BINBYTES8",
        ):
            stack.append(arg)
        elif name == "EMPTY_LIST":
            stack.append([])
        elif name == "EMPTY_DICT":
            stack.append({})
        elif name == "EMPTY_SET":
            stack.append(set())
        elif name == "EMPTY_TUPLE":
            stack.append(())
        elif name == "APPEND":
            value = stack.pop()
            _extend(stack[-1], [value])
        elif name == "APPENDS":
            items = pop_mark()
            _extend(stack[-1], items)
        elif name == "SETITEM":
            value = stack.pop()
            key = stack.pop()
            _setitems(stack[-1], [key, value])
        elif name == "SETITEMS":
            items = pop_mark()
            _setitems(stack[-1], items)
        elif name == "ADDITEMS":
            items = pop_mark()
            target = stack[-1]
            if not isinstance(target, set):
                raise LegacySnapshotError("ADDITEMS to something that is not a set")
            target.update(items)
        elif name == "FROZENSET":
            stack.append(frozenset(pop_mark()))
        elif name == "TUPLE":
            stack.append(tuple(pop_mark()))
        elif name in ("TUPLE1", "TUPLE2", "TUPLE3"):
            n = int(name[-1])
            items = stack[-n:]
            del stack[-n:]
            stack.append(tuple(items))
        elif name == "MEMOIZE":
            memo[len(memo)] = stack[-1]
        elif name in ("BINPUT", "LONG_BINPUT"):
            memo[arg] = stack[-1]
        elif name in ("BINGET", "LONG_BINGET"):
            if arg not in memo:
                raise LegacySnapshotError(f"a pickle reading memo {arg} before it is set")
            stack.append(memo[arg])
        elif name == "POP":
            stack.pop()
        elif name == "STACK_GLOBAL":
            global_name = stack.pop()
            module = stack.pop()
            stack.append(_global(module, global_name))
        elif name == "GLOBAL":
            module, _, global_name = str(arg).partition(" ")
            stack.append(_global(module, global_name))
        elif name in ("REDUCE", "NEWOBJ"):
            args = stack.pop()
            cls = stack.pop()
            if not isinstance(cls, _Global) or not isinstance(args, tuple):
                raise LegacySnapshotError(f"{name} of something that is not a class")
            stack.append(_Object(cls, args))
        elif name == "BUILD":
            state = stack.pop()
            target = stack[-1]
            if not isinstance(target, _Object):
                raise LegacySnapshotError("BUILD of something that is not an object")
            target.state = state
        else:
            raise LegacySnapshotError(f"a pickle opcode the KPI snapshots never used: {name}")
    raise LegacySnapshotError("a pickle without STOP")


def _global(module: object, name: object) -> _Global:
    if not isinstance(module, str) or not isinstance(name, str):
        raise LegacySnapshotError("a class named by something that is not text")
    if (module, name) not in _ALLOWED_GLOBALS and not module.startswith(_ALLOWED_MODULES):
        raise LegacySnapshotError(f"a pickled KPI snapshot naming {module}.{name}")
    return _Global(module, name)


def _extend(target: Any, items: list[Any]) -> None:
    if isinstance(target, list):
        target.extend(items)
    elif isinstance(target, _Object):
        target.items.extend(items)
    else:
        raise LegacySnapshotError("APPEND to something that is not a list")


def _setitems(target: Any, items: list[Any]) -> None:
    if not isinstance(target, dict):
        raise LegacySnapshotError("SETITEM on something that is not a dict")
    for i in range(0, len(items) - 1, 2):
        target[items[i]] = items[i + 1]


# -- the previous release's layout -> format 1 --------------------------------------------

_KPI_NAMES = [spec.name for spec in KPIS]
_SIZE_NAMES = [spec.name for spec in WINDOW_SPECS]


def _obj(node: Any, cls_name: str) -> _Object:
    if not isinstance(node, _Object) or node.cls.name != cls_name:
        found = node.cls.name if isinstance(node, _Object) else type(node).__name__
        raise LegacySnapshotError(f"expected a pickled {cls_name}, found {found}")
    return node


def _kpi(k: int) -> str:
    if not 0 <= k < len(_KPI_NAMES):
        raise LegacySnapshotError(f"KPI index {k} out of the catalogue")
    return _KPI_NAMES[k]


def _size(s: int) -> str:
    if not 0 <= s < len(_SIZE_NAMES):
        raise LegacySnapshotError(f"window size index {s} out of range")
    return _SIZE_NAMES[s]


def _config(aggregator: Any) -> dict[str, Any]:
    """The KPI settings of a pickled aggregator: those its derived attributes show."""
    attrs = _obj(aggregator, "KpiAggregator").attrs()
    emitter = _obj(attrs["_emitter"], "WindowEmitter").attrs()
    references = _obj(attrs["_psi"], "SeriesReferences").attrs()
    contribution = _obj(attrs["_contribution"], "ContributionBuilder").attrs()
    return {
        "late_horizon_ms": attrs["_horizon"],
        "duration_gamma": emitter["_gamma"],
        "psi_reference_ms": references["reference_ms"],
        "response_sla_ms": contribution["_sla_ms"],
    }


def _aggregator(node: Any) -> dict[str, Any]:
    attrs = _obj(node, "KpiAggregator").attrs()
    series = _obj(attrs["_series"], "SeriesIndex").attrs()
    leaf_ids: dict[tuple[str, ...], int] = series["_leaf_ids"]
    leaves = sorted(leaf_ids, key=leaf_ids.__getitem__)
    if [leaf_ids[d] for d in leaves] != list(range(len(leaves))):
        raise LegacySnapshotError("leaf series ids are not dense")
    panes = _obj(attrs["_panes"], "PaneStore").attrs()
    emitter = _obj(attrs["_emitter"], "WindowEmitter").attrs()
    return {
        "leaves": leaves,
        "max_event_ms": attrs["_max_event_ms"],
        "last_emit_ms": attrs["_last_emit_ms"],
        "watermark_ms": attrs["_wm"],
        "next_boundary_ms": attrs["_next_boundary"],
        "live_hour_ms": attrs["_live_hour"],
        "open_hour_ms": attrs["_open_hour"],
        "open_day_ms": attrs["_open_day"],
        "too_late": dict(attrs["_too_late"]),
        "panes": _panes(panes),
        "references": _references(attrs["_psi"]),
        "emitter": _emitter(emitter, panes),
    }


def _panes(p: dict[str, Any]) -> dict[str, Any]:
    slides = p["_slides"].items()
    return {
        "hour_lists": [(_kpi(k), leaf, t, list(v)) for (k, leaf, t), v in p["hour_lists"].items()],
        "day_lists": [(_kpi(k), leaf, t, list(v)) for (k, leaf, t), v in p["day_lists"].items()],
        "hour_buckets": [
            (_kpi(k), leaf, t, list(v.items())) for (k, leaf, t), v in p["hour_buckets"].items()
        ],
        "day_buckets": [
            (_kpi(k), leaf, t, list(v.items())) for (k, leaf, t), v in p["day_buckets"].items()
        ],
        "hour_index": [
            (t, [(_kpi(k), leaf) for k, leaf in pairs]) for t, pairs in p["hour_index"].items()
        ],
        "day_index": [
            (t, [(_kpi(k), leaf) for k, leaf in pairs]) for t, pairs in p["day_index"].items()
        ],
        "compacted_to": p["compacted_to"],
        "slide_lists": [
            (_kpi(k), combo, _size(s), start, list(agg))
            for (k, combo, s), (start, agg) in slides
            if isinstance(agg, list)
        ],
        "slide_buckets": [
            (_kpi(k), combo, _size(s), start, list(agg.items()))
            for (k, combo, s), (start, agg) in slides
            if isinstance(agg, dict)
        ],
        "refused": p["refused"],
    }


def _references(node: Any) -> dict[str, Any]:
    attrs = _obj(node, "SeriesReferences").attrs()
    store = _obj(attrs["_store"], "ScoreReference").attrs()
    return {
        "reference_ms": attrs["reference_ms"],
        "leaf_first": list(store["_first"].items()),
        "leaf_days": [(leaf, list(days.items())) for leaf, days in store["_days"].items()],
        "leaf_ends": list(attrs["leaf_ends"].items()),
        "series_first": list(attrs["_first"].items()),
        "changed": list(attrs["changed"]),
    }


def _emitter(e: dict[str, Any], panes: dict[str, Any]) -> dict[str, Any]:
    data_leaves = e.get("data_leaves")
    if data_leaves is None:  # pickled before they were tracked: the leaves holding panes
        data_leaves = [set() for _ in KPIS]
        for index in (panes["hour_index"], panes["day_index"]):
            for pairs in index.values():
                for k, leaf in pairs:
                    data_leaves[k].add(leaf)
    return {
        "dirty": [(_kpi(k), leaf, t) for k, leaf, t in e["dirty"]],
        "late_dirty": [(_kpi(k), leaf, t) for k, leaf, t in e["late_dirty"]],
        "data_leaves": [(_kpi(k), sorted(leaves)) for k, leaves in enumerate(data_leaves)],
        "emitted": [
            (
                _size(s),
                start,
                [(_kpi(k), combo, *entry) for (k, combo), entry in windows.items()],
            )
            for s, emitted in enumerate(e["_emitted"])
            for start, windows in emitted.items()
        ],
    }


_SERIES_FIELDS = (
    "recent",
    "last_start_ms",
    "breaching",
    "healthy",
    "open_id",
    "baseline_start_ms",
    "baseline",
    "bound",
    "chart",
    "statistic",
    "path",
)
_WINDOW_FIELDS = ("start_ms", "end_ms", "value", "numerator", "denominator", "p_value")


def _breaches(node: Any) -> dict[str, Any]:
    attrs = _obj(node, "BreachEvaluator").attrs()
    series = []
    for (rule_id, *dims), value in attrs["_series"].items():
        s = _obj(value, "_Series").fields(*_SERIES_FIELDS)
        chart = s["chart"]
        if chart is not None:
            c = _obj(chart, "BernoulliCusum").fields("p0", "p1", "h")
            chart = (c["p0"], c["p1"], c["h"])
        series.append(
            {
                "rule": rule_id,
                "dims": tuple(dims),
                "recent": _windows(s["recent"]),
                "last_start_ms": s["last_start_ms"],
                "breaching": s["breaching"],
                "healthy": s["healthy"],
                "open_id": s["open_id"],
                "baseline_start_ms": s["baseline_start_ms"],
                "baseline": tuple(s["baseline"]),
                "bound": s["bound"],
                "chart": chart,
                "statistic": s["statistic"],
                "path": _windows(s["path"]),
            }
        )
    return {"ignored_values": attrs["ignored_values"], "series": series}


def _windows(node: Any) -> list[tuple[Any, ...]]:
    deque_node = _obj(node, "deque")
    items = list(deque_node.args[0]) if deque_node.args else []
    items += deque_node.items
    out = []
    for w in items:
        f = _obj(w, "_Window").fields(*_WINDOW_FIELDS)
        out.append(tuple(f[name] for name in _WINDOW_FIELDS))
    return out


def _upstream(node: Any) -> dict[str, Any]:
    attrs = _obj(node, "WatermarkTracker").attrs()
    return {
        "allowed_lateness_ms": attrs["_lateness"],
        "sources": list(attrs["_max"].items()),
        "idle": list(attrs["_idle"]),
        "watermark_ms": attrs["_watermark"],
    }
