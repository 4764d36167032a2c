-- usagepipe: least-privilege ClickHouse access, for CURRENT ClickHouse
-- releases with SQL-driven access control (tested syntax: 24.x/25.x LTS).
-- ClickHouse 18.16 has no SQL users, roles or grants: use users-18.16.xml.
--
-- Run as an administrator (a user with access_management) and again after
-- editing; every statement is idempotent. On a cluster run it on every node
-- (or keep access entities in replicated storage):
--   clickhouse client --multiquery < deploy/clickhouse/access.sql
-- Then create the users (passwords never go into this file): see
-- create-users.sh here, or docs/operations.md#clickhouse-users-and-privileges.
--
-- What is what
--   usagepipe_writer     INSERT + SELECT on the pipeline's own database.
--   usagepipe_migrator   DDL on that database only (usagepipe migrate; and
--                        usagepipe run, which applies migrations first).
--   usage_reader         SELECT on the two rollup views and the two served
--                        tables behind them (clusters need those), nothing else
--                        (granted to the user usage_analyst).
--   usagepipe_profile    settings of the pipeline user: views it creates run
--                        with its rights (SQL SECURITY DEFINER), so analysts
--                        need no grant on the fact tables behind them.
--   usage_analyst_profile  readonly = 2 (no writes, no DDL; may tune query
--                        settings within the bounds below) + resource limits.
--
-- Scope note: the grants cover usage.* rather than usage.fact_*. The pipeline
-- owns the whole database (fact tables, views and its schema_migrations log,
-- all created by migrations), and a user that may CREATE and DROP tables in a
-- database gains nothing from a narrower INSERT grant. Keep nothing else in
-- it. On ClickHouse >= 24.10 a prefix grant also works if you prefer it:
--   GRANT INSERT, SELECT ON usage.fact_* TO usagepipe_writer;
-- If you rename the database (--clickhouse-database), replace `usage` below.

CREATE ROLE IF NOT EXISTS usagepipe_writer;
CREATE ROLE IF NOT EXISTS usagepipe_migrator;
CREATE ROLE IF NOT EXISTS usage_reader;

-- Pipeline: write facts, read them back (dedup state, views, checks).
GRANT INSERT, SELECT ON usage.* TO usagepipe_writer;

-- Migrations: create/upgrade/replace the pipeline's tables and views.
GRANT CREATE DATABASE ON usage.* TO usagepipe_migrator;
GRANT CREATE TABLE, CREATE VIEW, ALTER, DROP TABLE, DROP VIEW ON usage.* TO usagepipe_migrator;

-- Analysts and scoring jobs: the rollups only. The views run with the
-- rights of their definer (see usagepipe_profile), so no fact-table grant.
-- Raw detail for analysts, if wanted, is one more line:
--   GRANT SELECT ON usage.* TO usage_reader;
GRANT SELECT ON usage.account_quarter_rollups TO usage_reader;
GRANT SELECT ON usage.account_quarter_features TO usage_reader;
-- Clusters: the views read every shard through a Distributed table, and
-- each shard runs its part as the user the cluster's remote_servers gives
-- (<user>), or, with an interserver <secret>, as the analyst (ClickHouse
-- passes the initial user, not the view's definer). So the analyst needs
-- SELECT on the served tables the shards read: the same rows as the views,
-- plus superseded versions and other fiscal calendars.
GRANT SELECT ON usage.served_rollups TO usage_reader;
GRANT SELECT ON usage.served_feature_sets TO usage_reader;

-- Views created by the pipeline user get SQL SECURITY DEFINER with DEFINER =
-- that user (ClickHouse's default for normal views is INVOKER, which would
-- make every analyst need SELECT on the fact tables). ClickHouse >= 24.2.
-- Views created before this profile was assigned keep INVOKER; fix them with
--   ALTER TABLE usage.account_quarter_rollups MODIFY SQL SECURITY DEFINER DEFINER = usagepipe;
--   ALTER TABLE usage.account_quarter_features MODIFY SQL SECURITY DEFINER DEFINER = usagepipe;
CREATE SETTINGS PROFILE IF NOT EXISTS usagepipe_profile
    SETTINGS default_normal_view_sql_security = 'DEFINER';

CREATE SETTINGS PROFILE IF NOT EXISTS usage_analyst_profile
    SETTINGS readonly = 2,
             max_execution_time = 300 MAX 1800,
             max_memory_usage = 10000000000 MAX 20000000000,
             max_result_rows = 10000000 MAX 100000000,
             -- clusters: never read a replica lagging more than 5 s, fail
             -- rather than read a stale one or leave a shard out; CONST so
             -- that readonly = 2 cannot loosen them. With a ZooKeeper
             -- session timeout of at most 8 s this keeps the updated_at
             -- poll exact (docs/operations.md, "Clusters").
             max_replica_delay_for_distributed_queries = 5 CONST,
             fallback_to_stale_replicas_for_distributed_queries = 0 CONST,
             skip_unavailable_shards = 0 CONST;
