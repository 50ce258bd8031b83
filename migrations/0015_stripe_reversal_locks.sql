-- WEBHOOK MIGRATION (stripe_reversal_locks only). The reversals of one payment intent (refund
-- steps, disputes, retries) are serialized by a row lock on the payment intent's row here, held
-- until the webhook's transaction ends (`WebhookStore::lock_payment_intent`). It was an advisory
-- lock (`pg_advisory_xact_lock`), which CockroachDB does not have and which Citus keeps on the
-- node that takes it (docs/scale-out.md). One row per payment intent ever reversed: a few dozen
-- bytes each, for objects that are rare.
CREATE TABLE stripe_reversal_locks (
    payment_intent text NOT NULL,
    locked_at timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT stripe_reversal_locks_pkey PRIMARY KEY (payment_intent)
);
