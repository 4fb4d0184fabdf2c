"""A minimal Faust app used by ``test_faust_to_clickhouse``: topic in, ClickHouse rows out.

Run as ``python -m faust -A tests.integration.faust_probe_app worker``; configured by
environment variables so each test run gets its own app id, topic and table.
"""

from __future__ import annotations

import json
import os

import faust
from clickhouse_driver import Client

BOOTSTRAP = os.environ["PROBE_BOOTSTRAP"]
TOPIC = os.environ["PROBE_TOPIC"]
TABLE = os.environ["PROBE_TABLE"]

app = faust.App(
    os.environ["PROBE_APP_ID"],
    broker=f"kafka://{BOOTSTRAP}",
    store="memory://",
    web_enabled=False,
    datadir=os.environ["PROBE_DATADIR"],
    topic_partitions=1,
    topic_replication_factor=1,
    consumer_auto_offset_reset="earliest",
)
source = app.topic(
    TOPIC, key_type=bytes, value_type=bytes, value_serializer="raw", key_serializer="raw"
)
clickhouse = Client(
    host="127.0.0.1",
    port=int(os.environ.get("IMGOV_CLICKHOUSE_PORT", "19000")),
    user="imgov",
    password="imgov",
    database="imgov",
)


@app.agent(source)
async def write_rows(stream: faust.StreamT[bytes]) -> None:
    # take() batches so ClickHouse gets one insert per batch, as a real sink would.
    async for values in stream.take(100, within=0.5):
        rows = []
        for raw in values:
            doc = json.loads(raw)
            rows.append((doc["event_id"], doc["study_uid"], float(doc["score"])))
        clickhouse.execute(f"INSERT INTO {TABLE} (event_id, study_uid, score) VALUES", rows)
