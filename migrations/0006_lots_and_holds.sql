-- Credits with a lifecycle: every credit becomes a lot (what is left of it, when it expires, in
-- which order it burns), holds reserve tokens for AI calls in flight, and a lot's unused tokens
-- leave the balance at its expiry as a journal row of kind 'expiry'. For every account:
--   balance = Σ journal = Σ remaining of its lots − debt,   held = Σ held of its lots.

-- The account row keeps what GetBalance needs beside the balance, exact until `settle_at` (the
-- soonest lot expiry or hold lapse); a reader past it settles a copy of the lots first.
ALTER TABLE accounts ADD COLUMN expired_total BIGINT NOT NULL DEFAULT 0;
ALTER TABLE accounts ADD COLUMN held BIGINT NOT NULL DEFAULT 0;
ALTER TABLE accounts ADD COLUMN debt BIGINT NOT NULL DEFAULT 0;
ALTER TABLE accounts ADD COLUMN active_holds INTEGER NOT NULL DEFAULT 0;
ALTER TABLE accounts ADD COLUMN settle_at TIMESTAMPTZ;
ALTER TABLE accounts ADD COLUMN next_expiry_at TIMESTAMPTZ;
ALTER TABLE accounts ADD COLUMN next_expiry_tokens BIGINT NOT NULL DEFAULT 0;
ALTER TABLE accounts DROP CONSTRAINT accounts_totals_non_negative;
ALTER TABLE accounts ADD CONSTRAINT accounts_totals_non_negative CHECK (
    granted_total >= 0 AND deducted_total >= 0 AND purchased_total >= 0
    AND dripped_total >= 0 AND used_total >= 0 AND reversed_total >= 0 AND expired_total >= 0);
ALTER TABLE accounts DROP CONSTRAINT accounts_balance_is_totals;
ALTER TABLE accounts ADD CONSTRAINT accounts_balance_is_totals CHECK (
    balance = granted_total + purchased_total + dripped_total
              - deducted_total - used_total - reversed_total - expired_total);
ALTER TABLE accounts ADD CONSTRAINT accounts_holds_check CHECK (
    held >= 0 AND debt >= 0 AND active_holds >= 0);
-- The sweeper's work list: accounts with something due.
CREATE INDEX accounts_settle_at_idx ON accounts (settle_at) WHERE settle_at IS NOT NULL;

-- Expiry rows: a lot's unused tokens leaving the balance (source 'lot'), or a subscription's
-- previous cycle ending when the next is credited (source 'rollover', with what it carried into
-- the new lot `carried_to_lot`).
ALTER TABLE token_transactions ADD COLUMN lot_id BIGINT;
ALTER TABLE token_transactions ADD COLUMN carried_tokens BIGINT;
ALTER TABLE token_transactions ADD COLUMN carried_to_lot BIGINT;
ALTER TABLE token_transactions DROP CONSTRAINT token_transactions_type_check;
ALTER TABLE token_transactions ADD CONSTRAINT token_transactions_type_check
    CHECK (transaction_type IN ('grant', 'deduction', 'purchase', 'reversal', 'expiry'));
ALTER TABLE token_transactions DROP CONSTRAINT token_transactions_source_check;
ALTER TABLE token_transactions ADD CONSTRAINT token_transactions_source_check CHECK (
    (transaction_type = 'grant' AND source IN ('admin', 'annual_subscription'))
    OR (transaction_type = 'deduction' AND source = 'admin')
    OR (transaction_type = 'purchase' AND source = 'token_pack')
    OR (transaction_type = 'reversal' AND source IN ('refund', 'dispute', 'admin'))
    OR (transaction_type = 'expiry' AND source IN ('lot', 'rollover')));
ALTER TABLE token_transactions DROP CONSTRAINT token_transactions_sign_check;
ALTER TABLE token_transactions ADD CONSTRAINT token_transactions_sign_check CHECK (
    CASE WHEN transaction_type IN ('deduction', 'reversal') THEN token_amount < 0
         WHEN transaction_type = 'expiry' THEN token_amount <= 0
         ELSE token_amount > 0 END);
ALTER TABLE token_transactions ADD CONSTRAINT token_transactions_expiry_lot_check CHECK (
    (transaction_type = 'expiry') = (lot_id IS NOT NULL));

-- A hold's commit is a usage row (its hold row names it: `committed_transaction_id`, so usage
-- rows carry no hold columns); it may be of 0 tokens (the call used nothing).
ALTER TABLE token_usage DROP CONSTRAINT token_usage_amount_negative;
ALTER TABLE token_usage ADD CONSTRAINT token_usage_amount_negative CHECK (token_amount <= 0);

-- One lot per credit (lot_id = the credit's journal row id; a rollover lot shares the id of the
-- expiry row that carried it; an opening lot has an id of its own).
CREATE TABLE token_lots (
    lot_id                 BIGINT      NOT NULL,
    account_id             BIGINT      NOT NULL,
    source                 TEXT        NOT NULL,
    paid                   BOOLEAN     NOT NULL,
    stripe_subscription_id TEXT,
    granted                BIGINT      NOT NULL,
    remaining              BIGINT      NOT NULL,
    held                   BIGINT      NOT NULL DEFAULT 0,
    expires_at             TIMESTAMPTZ,
    priority               INTEGER     NOT NULL DEFAULT 0,
    created_at             TIMESTAMPTZ NOT NULL,
    CONSTRAINT token_lots_pkey PRIMARY KEY (lot_id),
    CONSTRAINT token_lots_account_fkey FOREIGN KEY (account_id) REFERENCES accounts (account_id),
    CONSTRAINT token_lots_source_check CHECK (
        source IN ('opening', 'grant', 'purchase', 'drip', 'rollover')),
    CONSTRAINT token_lots_amounts_check CHECK (
        0 <= held AND held <= remaining AND remaining <= granted)
);
-- Not partial on `remaining`: an index on it would stop every burn from being a HOT update.
CREATE INDEX token_lots_account_idx ON token_lots (account_id);

-- Every hold's life: placed, extended, then committed, released or expired.
CREATE TABLE token_holds (
    hold_id                  BIGINT      NOT NULL,
    account_id               BIGINT      NOT NULL,
    tokens                   BIGINT      NOT NULL,
    state                    TEXT        NOT NULL,
    expires_at               TIMESTAMPTZ NOT NULL,
    -- Which lots hold the tokens: [[lot_id, tokens], ...] in burn order.
    earmarks                 JSONB       NOT NULL,
    model                    TEXT,
    feature                  TEXT,
    created_by               TEXT        NOT NULL,
    placed_at                TIMESTAMPTZ NOT NULL,
    ended_at                 TIMESTAMPTZ,
    committed_transaction_id BIGINT,
    committed_tokens         BIGINT,
    -- What was available right after the hold was placed (or last grew): never negative.
    available_after          BIGINT      NOT NULL,
    updated_at               TIMESTAMPTZ NOT NULL DEFAULT now(),
    CONSTRAINT token_holds_pkey PRIMARY KEY (hold_id),
    CONSTRAINT token_holds_account_fkey FOREIGN KEY (account_id) REFERENCES accounts (account_id),
    CONSTRAINT token_holds_state_check CHECK (
        state IN ('active', 'committed', 'released', 'expired')),
    CONSTRAINT token_holds_tokens_check CHECK (tokens > 0),
    CONSTRAINT token_holds_available_check CHECK (available_after >= 0),
    CONSTRAINT token_holds_ended_check CHECK ((state = 'active') = (ended_at IS NULL))
);
CREATE INDEX token_holds_active_idx ON token_holds (account_id) WHERE state = 'active';
CREATE INDEX token_holds_account_idx ON token_holds (account_id, hold_id);
-- A commit's usage row → its hold (history shows it).
CREATE INDEX token_holds_committed_idx ON token_holds (committed_transaction_id)
    WHERE committed_transaction_id IS NOT NULL;

-- Today's balances become lots: a positive balance one opening lot that never expires, a
-- negative one debt.
INSERT INTO token_lots (lot_id, account_id, source, paid, granted, remaining, created_at)
SELECT nextval('ledger_entry_id_seq'), account_id, 'opening', false, balance, balance, now()
  FROM accounts WHERE balance > 0;
UPDATE accounts SET debt = -balance WHERE balance < 0;

-- The journal view gains the expiry columns.
DROP VIEW journal;
CREATE VIEW journal AS
SELECT id, account_id, entry_seq, transaction_type AS kind, token_amount, balance_after, created_at,
       created_by, reason, source, stripe_subscription_id, stripe_invoice_id, amount_paid_cents,
       currency, stripe_payment_intent_id, stripe_checkout_session_id, pack, reverses_transaction_id,
       stripe_reference, allow_negative,
       NULL::timestamptz AS period_start, NULL::timestamptz AS period_end,
       NULL::text AS model, NULL::bigint AS input_tokens, NULL::bigint AS output_tokens,
       NULL::text AS feature, lot_id, carried_tokens, carried_to_lot
  FROM token_transactions
UNION ALL
SELECT id, account_id, entry_seq, 'drip'::text, token_amount, balance_after, created_at, created_by,
       NULL::text, NULL::text, stripe_subscription_id, stripe_invoice_id, NULL::bigint, NULL::text,
       NULL::text, NULL::text, NULL::text, NULL::bigint, NULL::text, NULL::boolean,
       period_start, period_end, NULL::text, NULL::bigint, NULL::bigint, NULL::text,
       NULL::bigint, NULL::bigint, NULL::bigint
  FROM token_drips
UNION ALL
SELECT id, account_id, entry_seq, 'usage'::text, token_amount, balance_after, created_at, created_by,
       NULL::text, NULL::text, NULL::text, NULL::text, NULL::bigint, NULL::text,
       NULL::text, NULL::text, NULL::text, NULL::bigint, NULL::text, NULL::boolean,
       NULL::timestamptz, NULL::timestamptz, model, input_tokens, output_tokens, feature,
       NULL::bigint, NULL::bigint, NULL::bigint
  FROM token_usage;
