/**
 * The PostgreSQL schema, one entry per version, applied in order at start
 * (under an advisory lock, so replicas starting together apply each once).
 * A released entry is never edited: a change is a new version.
 */
export const MIGRATIONS: readonly { version: number; name: string; sql: string }[] = [
  {
    version: 1,
    name: 'users, jobs, leases, blobs, heads, replicas',
    sql: `
      CREATE TABLE users (
        name text NOT NULL,
        salt text NOT NULL,
        hash text NOT NULL,
        created_at text NOT NULL,
        revoked_at text,
        PRIMARY KEY (name, created_at)
      );
      CREATE UNIQUE INDEX users_active ON users (name) WHERE revoked_at IS NULL;
      CREATE TABLE jobs (
        id uuid PRIMARY KEY,
        user_name text NOT NULL,
        record jsonb NOT NULL,
        lease_owner text,
        lease_token bigint NOT NULL DEFAULT 0,
        lease_expires timestamptz
      );
      CREATE INDEX jobs_user ON jobs (user_name);
      CREATE TABLE job_events (
        job uuid NOT NULL REFERENCES jobs (id) ON DELETE CASCADE,
        at timestamptz NOT NULL DEFAULT now(),
        state text NOT NULL,
        step bigint NOT NULL,
        replica text
      );
      CREATE INDEX job_events_job ON job_events (job, at);
      CREATE TABLE blobs (
        owner text NOT NULL,
        name text NOT NULL,
        part integer NOT NULL,
        data bytea NOT NULL,
        PRIMARY KEY (owner, name, part)
      );
      CREATE TABLE heads (
        key text PRIMARY KEY,
        rows integer NOT NULL,
        cols integer NOT NULL,
        bytes bigint NOT NULL,
        uploaded_by text NOT NULL,
        last_used_at timestamptz NOT NULL
      );
      CREATE TABLE replicas (
        id text PRIMARY KEY,
        advertise text,
        seen_at timestamptz NOT NULL
      );
      CREATE TABLE device_sessions (
        id text PRIMARY KEY,
        replica text NOT NULL,
        user_name text NOT NULL
      );
      CREATE INDEX device_sessions_user ON device_sessions (user_name);
    `,
  },
  {
    version: 2,
    name: 'sign-in failures shared by replicas',
    sql: `
      CREATE TABLE auth_failures (
        key text PRIMARY KEY,
        count integer NOT NULL,
        since timestamptz NOT NULL
      );
    `,
  },
];
