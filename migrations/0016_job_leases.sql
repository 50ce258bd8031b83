-- Background jobs that one ledger process at a time runs (today the expiry sweep), elected by
-- PostgreSQL rather than by a list of processes: a process runs a round only while it holds the
-- job's lease, which it takes when the lease has run out (its holder died or stopped) and renews
-- while it holds it. Correctness never depends on it (settling an account is idempotent under
-- the account's lock); it keeps N replicas from doing the same sweep N times.
CREATE TABLE job_leases (
    job        TEXT        PRIMARY KEY,
    holder     TEXT        NOT NULL,
    held_until TIMESTAMPTZ NOT NULL
);
