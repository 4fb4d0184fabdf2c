"""Every Kafka producer of imgov waits for all in-sync replicas and is idempotent.

On a cluster (``min.insync.replicas`` 2) ``acks=all`` is what makes an acknowledged event
survive the loss of a broker, and idempotence is what keeps the producer's retries after
a failover from writing a batch twice. The scan below reads the sources (as the
security scan of ``test_kafka_security.py`` does), so a producer added later without
them fails here; the last test checks that Faust's producer really is built idempotent.
"""

from __future__ import annotations

import ast
import asyncio
from typing import Any

from streams.paths import REPO_ROOT

# kafka-python and aiokafka take the same keyword names.
_PRODUCERS = {"KafkaProducer", "AIOKafkaProducer"}
_ALL = ("'all'", "-1")


def _keywords(call: ast.Call) -> dict[str | None, str]:
    return {k.arg: ast.unparse(k.value) for k in call.keywords}


def _is_faust_app(call: ast.Call) -> bool:
    func = call.func
    return (
        isinstance(func, ast.Attribute)
        and func.attr == "App"
        and ast.unparse(func.value) == "faust"
    )


def _producer_name(call: ast.Call) -> str:
    func = call.func
    return func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", "")


def _calls(function: ast.AST, name: str) -> bool:
    return any(isinstance(n, ast.Call) and _producer_name(n) == name for n in ast.walk(function))


def _weak_producers(source: str) -> tuple[int, list[int]]:
    """(producer constructions seen, lines of those not acks=all + idempotent)."""
    tree = ast.parse(source)
    functions = (ast.FunctionDef, ast.AsyncFunctionDef)
    seen, weak = set(), set()
    for function in [n for n in ast.walk(tree) if isinstance(n, functions)]:
        for call in [n for n in ast.walk(function) if isinstance(n, ast.Call)]:
            keywords = _keywords(call)
            if _producer_name(call) in _PRODUCERS:
                ok = keywords.get("acks") in _ALL and keywords.get("enable_idempotence") == "True"
            elif _is_faust_app(call):
                # Faust has no idempotence setting: build_app patches its producer.
                ok = keywords.get("producer_acks") in _ALL and _calls(
                    function, "_idempotent_faust_producer"
                )
            else:
                continue
            seen.add(call.lineno)
            if not ok:
                weak.add(call.lineno)
    return len(seen), sorted(weak)


def test_the_scan_finds_producers_without_acks_all_or_idempotence() -> None:
    source = (
        "def open(bootstrap):\n"
        "    a = AIOKafkaProducer(acks='all', enable_idempotence=True)\n"
        "    b = KafkaProducer(bootstrap_servers=bootstrap, acks='all')\n"
        "    c = aiokafka.AIOKafkaProducer(enable_idempotence=True)\n"
        "    d = faust.App('x', producer_acks=-1)\n"
        "def build():\n"
        "    _idempotent_faust_producer()\n"
        "    return faust.App('y', producer_acks=-1)\n"
        "def build_weak():\n"
        "    _idempotent_faust_producer()\n"
        "    return faust.App('z', producer_acks=1)\n"
    )
    assert _weak_producers(source) == (6, [3, 4, 5, 11])


def test_every_producer_in_imgov_is_acks_all_and_idempotent() -> None:
    total, weak = 0, []
    for package in ("streams", "sinks", "schemas"):
        for path in sorted((REPO_ROOT / package).rglob("*.py")):
            seen, lines = _weak_producers(path.read_text(encoding="utf-8"))
            total += seen
            weak += [f"{path.relative_to(REPO_ROOT)}:{line}" for line in lines]
    # simulate, gateway, the worker's Faust app (at least).
    assert total >= 3, f"the scan found only {total} producer constructions"
    assert not weak, f"producers without acks=all and idempotence: {weak}"


def test_fausts_producer_is_built_idempotent_with_acks_all() -> None:
    import faust

    from streams.runtime.app import _idempotent_faust_producer

    _idempotent_faust_producer()

    async def build() -> Any:
        app = faust.App("imgov-producer-test", broker="kafka://127.0.0.1:1", producer_acks=-1)
        return app.producer._new_producer()

    producer = asyncio.run(build())
    assert producer._txn_manager is not None  # aiokafka's idempotence state
    assert producer._sender._acks == -1
