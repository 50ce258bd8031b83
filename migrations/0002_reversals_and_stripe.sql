-- Reversals: a credit (token pack, grant, drip) clawed back, in part or whole, after a refund, a
-- dispute or an admin correction. A reversal is a new journal row linked to the original; the
-- original is never edited. Plus the Stripe webhook adapter's own bookkeeping.

ALTER TABLE accounts ADD COLUMN reversed_total BIGINT NOT NULL DEFAULT 0;
ALTER TABLE accounts DROP CONSTRAINT accounts_totals_non_negative;
ALTER TABLE accounts ADD CONSTRAINT accounts_totals_non_negative CHECK (
    granted_total >= 0 AND deducted_total >= 0 AND purchased_total >= 0
    AND dripped_total >= 0 AND used_total >= 0 AND reversed_total >= 0);
ALTER TABLE accounts DROP CONSTRAINT accounts_balance_is_totals;
ALTER TABLE accounts ADD CONSTRAINT accounts_balance_is_totals CHECK (
    balance = granted_total + purchased_total + dripped_total
              - deducted_total - used_total - reversed_total);

ALTER TABLE token_transactions ADD COLUMN reverses_transaction_id BIGINT;
ALTER TABLE token_transactions ADD COLUMN stripe_reference TEXT;
ALTER TABLE token_transactions DROP CONSTRAINT token_transactions_type_check;
ALTER TABLE token_transactions ADD CONSTRAINT token_transactions_type_check
    CHECK (transaction_type IN ('grant', 'deduction', 'purchase', 'reversal'));
ALTER TABLE token_transactions DROP CONSTRAINT token_transactions_source_check;
ALTER TABLE token_transactions ADD CONSTRAINT token_transactions_source_check CHECK (
    (transaction_type = 'grant' AND source IN ('admin', 'annual_subscription'))
    OR (transaction_type = 'deduction' AND source = 'admin')
    OR (transaction_type = 'purchase' AND source = 'token_pack')
    OR (transaction_type = 'reversal' AND source IN ('refund', 'dispute', 'admin')));
ALTER TABLE token_transactions DROP CONSTRAINT token_transactions_sign_check;
ALTER TABLE token_transactions ADD CONSTRAINT token_transactions_sign_check CHECK (
    CASE WHEN transaction_type IN ('deduction', 'reversal') THEN token_amount < 0 ELSE token_amount > 0 END);
ALTER TABLE token_transactions ADD CONSTRAINT token_transactions_reversal_link_check CHECK (
    (transaction_type = 'reversal') = (reverses_transaction_id IS NOT NULL));
-- Summing an original's reversals (to cap them at the original amount) reads this index.
CREATE INDEX token_transactions_reverses_idx
    ON token_transactions (reverses_transaction_id) WHERE reverses_transaction_id IS NOT NULL;

-- Every Stripe event the webhook adapter has seen, with what it did about it, so an operator can
-- answer "did we credit evt_…?" (`token-ledger stripe-events`).
CREATE TABLE stripe_events (
    event_id        TEXT        NOT NULL,
    event_type      TEXT        NOT NULL,
    livemode        BOOLEAN     NOT NULL DEFAULT false,
    -- credited, replayed, ignored, awaiting_payment, reversed, recorded, user_unknown,
    -- ledger_unavailable, unknown_price, failed, unmatched_reversal
    outcome         TEXT        NOT NULL,
    detail          TEXT,
    user_id         TEXT,
    transaction_id  TEXT,
    -- For refunds and disputes that arrive before their purchase is credited: what to claw back
    -- once it is (kind 'refund' with the charge's cumulative refunded amount, or 'dispute' with
    -- the disputed amount), so a refunded pack never stays spendable.
    payment_intent  TEXT,
    claim_kind      TEXT,
    claim_reference TEXT,
    claim_amount_cents BIGINT,
    deliveries      INTEGER     NOT NULL DEFAULT 1,
    first_seen_at   TIMESTAMPTZ NOT NULL DEFAULT now(),
    last_seen_at    TIMESTAMPTZ NOT NULL DEFAULT now(),
    CONSTRAINT stripe_events_pkey PRIMARY KEY (event_id)
);
CREATE INDEX stripe_events_last_seen_idx ON stripe_events (last_seen_at DESC);
CREATE INDEX stripe_events_unmatched_idx ON stripe_events (payment_intent)
    WHERE outcome = 'unmatched_reversal';

-- Stripe customer → product user, written on checkout, the fallback for finding the user of a
-- renewal invoice.
CREATE TABLE stripe_customers (
    customer_id TEXT        NOT NULL,
    user_id     TEXT        NOT NULL,
    created_at  TIMESTAMPTZ NOT NULL DEFAULT now(),
    CONSTRAINT stripe_customers_pkey PRIMARY KEY (customer_id)
);

-- Subscriptions the adapter has seen: whose they are, and whether they have ended (no more drips).
CREATE TABLE stripe_subscriptions (
    subscription_id TEXT        NOT NULL,
    user_id         TEXT,
    status          TEXT        NOT NULL DEFAULT 'active',
    ended_at        TIMESTAMPTZ,
    updated_at      TIMESTAMPTZ NOT NULL DEFAULT now(),
    CONSTRAINT stripe_subscriptions_pkey PRIMARY KEY (subscription_id)
);
