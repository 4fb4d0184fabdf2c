-- imgov users and grants for ClickHouse servers with SQL access control (20.x and later).
--
-- NOT used on the Debian 18.16 dev/CI server: 18.16 has no RBAC statements, its users
-- live in infra/clickhouse/users.xml. This script is the equivalent for a modern server
-- (DESIGN.md sections 6 and 8): a writer for the pipeline, a read-only compliance user.
--
-- Run it once as an administrator that has access_management enabled, e.g.
--   clickhouse-client --multiquery < infra/clickhouse/grants.sql
-- The passwords are the development ones: for production replace them (or use
-- IDENTIFIED WITH sha256_hash BY '<hex>') and narrow HOST to the pipeline's addresses.
-- Every statement is idempotent, so the script can be re-run after an upgrade.

CREATE DATABASE IF NOT EXISTS imgov;

-- The pipeline's writer: creates and migrates the audit tables and views, writes rows,
-- drops expired partitions (retention is ALTER TABLE ... DROP PARTITION, not TTL).
CREATE ROLE IF NOT EXISTS imgov_writer;
GRANT SELECT, INSERT, ALTER, CREATE TABLE, CREATE VIEW, DROP TABLE, DROP VIEW, TRUNCATE,
    OPTIMIZE, SHOW ON imgov.* TO imgov_writer;

-- Compliance: reads audit tables and views, nothing else. SHOW on the tables is implied.
CREATE ROLE IF NOT EXISTS imgov_compliance;
GRANT SELECT ON imgov.* TO imgov_compliance;

-- readonly = 2, as in users.xml: clients may send query settings (HTTP clients do), but
-- can never lift `readonly`; the memory cap keeps ad-hoc audit queries from hurting
-- ingestion. The grants above are what forbid writes; readonly is belt and braces.
CREATE SETTINGS PROFILE IF NOT EXISTS imgov_compliance_profile
    SETTINGS readonly = 2, max_memory_usage = 2000000000 MAX 4000000000;

CREATE USER IF NOT EXISTS imgov
    IDENTIFIED WITH sha256_password BY 'imgov'
    HOST LOCAL
    DEFAULT DATABASE imgov;

CREATE USER IF NOT EXISTS compliance
    IDENTIFIED WITH sha256_password BY 'compliance'
    HOST LOCAL
    DEFAULT DATABASE imgov
    SETTINGS PROFILE 'imgov_compliance_profile';

-- A granted role is a default role (users are created with DEFAULT ROLE ALL).
GRANT imgov_writer TO imgov;
GRANT imgov_compliance TO compliance;
