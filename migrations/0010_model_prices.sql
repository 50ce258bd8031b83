-- Per-model pricing: the ledger turns an AI call's token counts into product tokens itself, so
-- no caller keeps a price table of its own and a price change is a row, not a deploy.
--
-- A price is versioned, never edited: each row is one version of one model's price, in force from
-- `effective_from` until the next version's. Rates are integers, in product tokens per million
-- tokens of each class (an exact rational with denominator 10^6); a request costs
-- ceil(Σ class tokens × rate / 10^6), computed in 128-bit integers (src/domain/price.rs).
-- `tiers` are long-context tiers, [{"above_input_tokens": N, "rates": {...}}, ...] in increasing
-- N: when a request's prompt (input tokens, cached ones included) exceeds N, the highest such
-- tier's rates apply to every class of that request.
-- `request_key`/`request_hash` make SetModelPrice retry-safe without touching the ledger's
-- idempotency keys (a price is not a balance change).
CREATE TABLE model_prices (
    price_id                BIGINT      GENERATED ALWAYS AS IDENTITY,
    model                   TEXT        NOT NULL,
    effective_from          TIMESTAMPTZ NOT NULL,
    input_per_million       BIGINT      NOT NULL,
    cache_read_per_million  BIGINT      NOT NULL,
    cache_write_per_million BIGINT      NOT NULL,
    output_per_million      BIGINT      NOT NULL,
    tiers                   JSONB       NOT NULL DEFAULT '[]',
    created_by              TEXT        NOT NULL,
    created_at              TIMESTAMPTZ NOT NULL DEFAULT now(),
    request_key             TEXT        NOT NULL,
    request_hash            BYTEA       NOT NULL,
    CONSTRAINT model_prices_pkey PRIMARY KEY (price_id),
    CONSTRAINT model_prices_version_key UNIQUE (model, effective_from),
    CONSTRAINT model_prices_request_key UNIQUE (request_key),
    CONSTRAINT model_prices_rates_check CHECK (
        input_per_million >= 0 AND cache_read_per_million >= 0
        AND cache_write_per_million >= 0 AND output_per_million >= 0)
);
-- Versions are never edited or removed: a usage row's price_id must keep meaning what it meant.
CREATE TRIGGER model_prices_append_only BEFORE UPDATE OR DELETE ON model_prices
    FOR EACH ROW EXECUTE FUNCTION ledger_journal_is_append_only();

-- Usage rows gain the cache classes and the price version the ledger computed them with
-- (NULL: the caller gave `tokens`, "caller-priced"). NULL columns cost no bytes beyond the
-- row's null bitmap, so a plain usage event stays as small as before. No foreign key to
-- model_prices: the hot path would pay an index probe per row, and the ledger only writes ids it
-- read in the same transaction from a table nothing deletes from.
ALTER TABLE token_usage ADD COLUMN cache_read_tokens BIGINT;
ALTER TABLE token_usage ADD COLUMN cache_write_tokens BIGINT;
ALTER TABLE token_usage ADD COLUMN price_id BIGINT;
ALTER TABLE token_usage ADD CONSTRAINT token_usage_cache_within_input CHECK (
    COALESCE(cache_read_tokens, 0) >= 0 AND COALESCE(cache_write_tokens, 0) >= 0
    AND COALESCE(cache_read_tokens, 0) + COALESCE(cache_write_tokens, 0) <= input_tokens);
-- A hold pins the price in force when it was placed; its commit with `tokens` = 0 uses it.
ALTER TABLE token_holds ADD COLUMN price_id BIGINT;

-- The journal view gains the three usage columns, at the end.
CREATE OR REPLACE VIEW journal AS
SELECT id, account_id, entry_seq, transaction_type AS kind, token_amount, balance_after, created_at,
       created_by, reason, source, stripe_subscription_id, stripe_invoice_id, amount_paid_cents,
       currency, stripe_payment_intent_id, stripe_checkout_session_id, pack, reverses_transaction_id,
       stripe_reference, allow_negative,
       NULL::timestamptz AS period_start, NULL::timestamptz AS period_end,
       NULL::text AS model, NULL::bigint AS input_tokens, NULL::bigint AS output_tokens,
       NULL::text AS feature, lot_id, carried_tokens, carried_to_lot, idempotency_key,
       NULL::bigint AS cache_read_tokens, NULL::bigint AS cache_write_tokens,
       NULL::bigint AS price_id
  FROM token_transactions
UNION ALL
SELECT id, account_id, entry_seq, 'drip'::text, token_amount, balance_after, created_at, created_by,
       NULL::text, NULL::text, stripe_subscription_id, stripe_invoice_id, NULL::bigint, NULL::text,
       NULL::text, NULL::text, NULL::text, NULL::bigint, NULL::text, NULL::boolean,
       period_start, period_end, NULL::text, NULL::bigint, NULL::bigint, NULL::text,
       NULL::bigint, NULL::bigint, NULL::bigint, idempotency_key,
       NULL::bigint, NULL::bigint, NULL::bigint
  FROM token_drips
UNION ALL
SELECT id, account_id, entry_seq, 'usage'::text, token_amount, balance_after, created_at, created_by,
       NULL::text, NULL::text, NULL::text, NULL::text, NULL::bigint, NULL::text,
       NULL::text, NULL::text, NULL::text, NULL::bigint, NULL::text, NULL::boolean,
       NULL::timestamptz, NULL::timestamptz, model, input_tokens, output_tokens, feature,
       NULL::bigint, NULL::bigint, NULL::bigint, NULL::text,
       cache_read_tokens, cache_write_tokens, price_id
  FROM token_usage;
