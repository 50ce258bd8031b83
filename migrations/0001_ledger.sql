-- The ledger: one account row per user holding the running balance, and three append-only journal
-- tables named as the product's notes name them. Every balance change is one transaction that
-- updates the account row and inserts exactly one journal row, so that for every account
--   accounts.balance = Σ token_amount over its journal rows
-- holds at every commit (`token-ledger verify` checks it).

-- One id space for every journal row, whichever table it lives in, so a transaction id names one
-- row without saying its kind.
CREATE SEQUENCE ledger_entry_id_seq AS BIGINT;

CREATE TABLE accounts (
    account_id      BIGINT GENERATED ALWAYS AS IDENTITY,
    user_id         TEXT        NOT NULL,
    -- May go negative: usage is recorded even when it overdraws (the AI call already happened).
    balance         BIGINT      NOT NULL DEFAULT 0,
    -- The sequence number of the account's newest journal row; journal rows count 1, 2, 3, ...
    last_seq        BIGINT      NOT NULL DEFAULT 0,
    -- Running totals per kind, all positive, kept in the same transaction as the balance so
    -- GetBalance reads one row however long the history.
    granted_total   BIGINT      NOT NULL DEFAULT 0,
    deducted_total  BIGINT      NOT NULL DEFAULT 0,
    purchased_total BIGINT      NOT NULL DEFAULT 0,
    dripped_total   BIGINT      NOT NULL DEFAULT 0,
    used_total      BIGINT      NOT NULL DEFAULT 0,
    created_at      TIMESTAMPTZ NOT NULL DEFAULT now(),
    updated_at      TIMESTAMPTZ NOT NULL DEFAULT now(),
    CONSTRAINT accounts_pkey PRIMARY KEY (account_id),
    CONSTRAINT accounts_user_id_key UNIQUE (user_id),
    CONSTRAINT accounts_totals_non_negative CHECK (
        granted_total >= 0 AND deducted_total >= 0 AND purchased_total >= 0
        AND dripped_total >= 0 AND used_total >= 0),
    CONSTRAINT accounts_balance_is_totals CHECK (
        balance = granted_total + purchased_total + dripped_total - deducted_total - used_total)
);

-- Every write claims its idempotency key here first, in the same transaction as the write. The key
-- is global: reusing it for any other request, of any kind or user, is a conflict.
CREATE TABLE idempotency_keys (
    idempotency_key TEXT        NOT NULL,
    -- SHA-256 (first 128 bits) of the request's content (kind, user, amount, details); a retry
    -- must match it.
    request_hash    BYTEA       NOT NULL,
    -- The journal row this key wrote; its id is taken here and used for the journal row.
    entry_id        BIGINT      NOT NULL DEFAULT nextval('ledger_entry_id_seq'),
    created_at      TIMESTAMPTZ NOT NULL DEFAULT now(),
    CONSTRAINT idempotency_keys_pkey PRIMARY KEY (idempotency_key),
    CONSTRAINT idempotency_keys_entry_id_key UNIQUE (entry_id),
    CONSTRAINT idempotency_keys_request_hash_length CHECK (octet_length(request_hash) = 16)
);

-- Grants, admin deductions and token pack purchases.
CREATE TABLE token_transactions (
    id                         BIGINT      NOT NULL,
    account_id                 BIGINT      NOT NULL,
    entry_seq                  BIGINT      NOT NULL,
    transaction_type           TEXT        NOT NULL,
    source                     TEXT        NOT NULL,
    -- Positive for grants and purchases, negative for deductions.
    token_amount               BIGINT      NOT NULL,
    balance_after              BIGINT      NOT NULL,
    reason                     TEXT,
    created_by                 TEXT        NOT NULL,
    amount_paid_cents          BIGINT,
    currency                   TEXT,
    stripe_payment_intent_id   TEXT,
    stripe_checkout_session_id TEXT,
    stripe_subscription_id     TEXT,
    stripe_invoice_id          TEXT,
    pack                       TEXT,
    created_at                 TIMESTAMPTZ NOT NULL DEFAULT now(),
    CONSTRAINT token_transactions_pkey PRIMARY KEY (id),
    CONSTRAINT token_transactions_account_fkey FOREIGN KEY (account_id) REFERENCES accounts (account_id),
    CONSTRAINT token_transactions_account_seq_key UNIQUE (account_id, entry_seq),
    CONSTRAINT token_transactions_type_check CHECK (transaction_type IN ('grant', 'deduction', 'purchase')),
    CONSTRAINT token_transactions_source_check CHECK (
        (transaction_type = 'grant' AND source IN ('admin', 'annual_subscription'))
        OR (transaction_type = 'deduction' AND source = 'admin')
        OR (transaction_type = 'purchase' AND source = 'token_pack')),
    CONSTRAINT token_transactions_sign_check CHECK (
        CASE WHEN transaction_type = 'deduction' THEN token_amount < 0 ELSE token_amount > 0 END),
    CONSTRAINT token_transactions_purchase_check CHECK (
        transaction_type <> 'purchase'
        OR (amount_paid_cents IS NOT NULL AND currency IS NOT NULL AND stripe_payment_intent_id IS NOT NULL))
);

-- A payment intent is credited once; an annual invoice is granted once.
CREATE UNIQUE INDEX token_transactions_payment_intent_key
    ON token_transactions (stripe_payment_intent_id) WHERE transaction_type = 'purchase';
CREATE UNIQUE INDEX token_transactions_annual_invoice_key
    ON token_transactions (stripe_invoice_id) WHERE source = 'annual_subscription';

-- One row per credited 28-day subscription cycle.
CREATE TABLE token_drips (
    id                     BIGINT      NOT NULL,
    account_id             BIGINT      NOT NULL,
    entry_seq              BIGINT      NOT NULL,
    token_amount           BIGINT      NOT NULL,
    balance_after          BIGINT      NOT NULL,
    stripe_subscription_id TEXT        NOT NULL,
    stripe_invoice_id      TEXT,
    period_start           TIMESTAMPTZ NOT NULL,
    period_end             TIMESTAMPTZ NOT NULL,
    created_by             TEXT        NOT NULL,
    created_at             TIMESTAMPTZ NOT NULL DEFAULT now(),
    CONSTRAINT token_drips_pkey PRIMARY KEY (id),
    CONSTRAINT token_drips_account_fkey FOREIGN KEY (account_id) REFERENCES accounts (account_id),
    CONSTRAINT token_drips_account_seq_key UNIQUE (account_id, entry_seq),
    -- A subscription period is dripped once.
    CONSTRAINT token_drips_subscription_period_key UNIQUE (stripe_subscription_id, period_start),
    CONSTRAINT token_drips_amount_positive CHECK (token_amount > 0),
    CONSTRAINT token_drips_period_check CHECK (period_end > period_start)
);

-- One row per AI call's consumption.
CREATE TABLE token_usage (
    id            BIGINT      NOT NULL,
    account_id    BIGINT      NOT NULL,
    entry_seq     BIGINT      NOT NULL,
    -- Negative: usage debits.
    token_amount  BIGINT      NOT NULL,
    balance_after BIGINT      NOT NULL,
    model         TEXT,
    input_tokens  BIGINT      NOT NULL DEFAULT 0,
    output_tokens BIGINT      NOT NULL DEFAULT 0,
    feature       TEXT,
    created_by    TEXT        NOT NULL,
    created_at    TIMESTAMPTZ NOT NULL DEFAULT now(),
    CONSTRAINT token_usage_pkey PRIMARY KEY (id),
    CONSTRAINT token_usage_account_fkey FOREIGN KEY (account_id) REFERENCES accounts (account_id),
    CONSTRAINT token_usage_account_seq_key UNIQUE (account_id, entry_seq),
    CONSTRAINT token_usage_amount_negative CHECK (token_amount < 0),
    CONSTRAINT token_usage_counts_non_negative CHECK (input_tokens >= 0 AND output_tokens >= 0)
);

-- The journal is append-only: corrections are new rows, never edits.
CREATE FUNCTION ledger_journal_is_append_only() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'journal table % is append-only: % is not allowed', TG_TABLE_NAME, TG_OP
        USING ERRCODE = 'integrity_constraint_violation';
END;
$$;

CREATE TRIGGER token_transactions_append_only BEFORE UPDATE OR DELETE ON token_transactions
    FOR EACH ROW EXECUTE FUNCTION ledger_journal_is_append_only();
CREATE TRIGGER token_drips_append_only BEFORE UPDATE OR DELETE ON token_drips
    FOR EACH ROW EXECUTE FUNCTION ledger_journal_is_append_only();
CREATE TRIGGER token_usage_append_only BEFORE UPDATE OR DELETE ON token_usage
    FOR EACH ROW EXECUTE FUNCTION ledger_journal_is_append_only();
