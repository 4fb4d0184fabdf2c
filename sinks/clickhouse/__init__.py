"""The ClickHouse audit database (DESIGN §6): schema, row mapping and the server sink.

* ``migrations/NNNN_*.sql``: the versioned DDL, the same on ClickHouse 18.16, current
  servers and chDB; :mod:`sinks.clickhouse.migrate` applies it (``imgov db migrate``).
* :mod:`sinks.clickhouse.rows`: pure record <-> row mapping (no client imported).
* :mod:`sinks.clickhouse.buffer`: per-table row buffer shared by both sinks.
* :mod:`sinks.clickhouse.writer`: ``ClickHouseSink`` (clickhouse-driver, a server).

The embedded twin is :class:`sinks.chdb.ChdbSink`; ad-hoc SQL goes through
:mod:`sinks.query`.
"""
