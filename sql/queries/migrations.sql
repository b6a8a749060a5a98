-- The migrator's own statements (orchwf/db/migrations.py).
--
-- Named queries: "-- name: NAME" starts one, and it runs to the next. {schema} is the
-- target schema, quoted by psycopg.sql (db/queries.py); a literal brace is written twice.
-- Values are bound parameters, never formatted into the text.

-- name: migration_lock
-- Serialises migrators of one schema: every migration transaction takes it first.
SELECT pg_advisory_xact_lock(%(key)s)

-- name: migration_lock_timeout
-- A migration waits at most this long for a table lock: longer, and every worker would
-- queue behind its request (it is retried instead).
SET LOCAL lock_timeout = '5s'

-- name: schema_exists
SELECT 1 FROM pg_namespace WHERE nspname = %(schema)s

-- name: create_schema
CREATE SCHEMA {schema}

-- name: create_schema_if_missing
CREATE SCHEMA IF NOT EXISTS {schema}

-- name: set_search_path
-- The files' names are unqualified: they land in the target schema.
SET LOCAL search_path TO {schema}

-- name: tracking_exists
SELECT 1 FROM pg_tables WHERE schemaname = %(schema)s AND tablename = 'orchwf_migrations'

-- name: create_tracking
CREATE TABLE IF NOT EXISTS {schema}.orchwf_migrations (
    version text PRIMARY KEY,
    description text,
    applied_at timestamptz NOT NULL DEFAULT now())

-- name: applied_migrations
SELECT version, description, applied_at FROM {schema}.orchwf_migrations

-- name: record_migration
INSERT INTO {schema}.orchwf_migrations (version, description) VALUES (%(version)s, %(description)s)

-- name: unrecord_migration
DELETE FROM {schema}.orchwf_migrations WHERE version = %(version)s

-- name: no_body_checks
SET LOCAL check_function_bodies = off

-- name: api_tracking_exists
SELECT 1 FROM pg_tables WHERE schemaname = %(schema)s AND tablename = 'orchwf_api_files'

-- name: create_api_tracking
-- Which version of each sql/api/ file was applied last (migrate status shows it).
CREATE TABLE IF NOT EXISTS {schema}.orchwf_api_files (
    name text PRIMARY KEY,
    checksum text NOT NULL,
    applied_at timestamptz NOT NULL DEFAULT now())

-- name: applied_api_files
SELECT name, checksum, applied_at FROM {schema}.orchwf_api_files

-- name: record_api_file
INSERT INTO {schema}.orchwf_api_files (name, checksum) VALUES (%(name)s, %(checksum)s)
ON CONFLICT (name) DO UPDATE SET checksum = EXCLUDED.checksum, applied_at = now()

-- name: forget_api_files
DELETE FROM {schema}.orchwf_api_files

-- name: orchwf_tables
-- Tables of orchwf in the schema, besides the tracking tables: a database that has none
-- is a fresh install (schema.sql), one that has some but no tracking rows is refused.
SELECT tablename FROM pg_tables
WHERE schemaname = %(schema)s AND tablename LIKE 'orchwf\_%%'
  AND tablename NOT IN ('orchwf_migrations', 'orchwf_api_files')
