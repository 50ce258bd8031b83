-- Fewer bytes per usage event (416 B → under 300 B of table and index).
--
-- 1. Idempotency keys are stored as a fixed 16-byte hash (the first 128 bits of SHA-256 of the
--    key's UTF-8 bytes), the request fingerprint as 16 bytes too, both as `uuid` (fixed width, no
--    length header); no `created_at` (the journal row has it) and no index on `entry_id` (nothing
--    looks a key up by its row any more). A retried key is still found by its hash (a replay),
--    a reused key with another request still conflicts.
-- 2. The key's text is kept where support reads it: on the rows of grants, deductions, purchases,
--    reversals and drips (`idempotency_key`). Usage rows do not keep it (the AI backend's call
--    ids are opaque; the row has its own id).
-- 3. `token_usage` is keyed by `(account_id, entry_seq)`, the index history pages by; lookups by
--    transaction id (GetTransaction, a replay's balance) use a BRIN index on `id`, a few pages
--    in all, since ids grow with the table.

-- The one definition of the key hash; the ledger hashes keys with it in every statement.
CREATE FUNCTION ledger_key_hash(key text) RETURNS uuid
    LANGUAGE sql IMMUTABLE STRICT PARALLEL SAFE
    AS $$ SELECT encode(substring(sha256(convert_to(key, 'UTF8')) FROM 1 FOR 16), 'hex')::uuid $$;

-- 16 bytes as a uuid, and back.
CREATE FUNCTION ledger_bytes_uuid(bytes bytea) RETURNS uuid
    LANGUAGE sql IMMUTABLE STRICT PARALLEL SAFE
    AS $$ SELECT encode(bytes, 'hex')::uuid $$;
CREATE FUNCTION ledger_uuid_bytes(id uuid) RETURNS bytea
    LANGUAGE sql IMMUTABLE STRICT PARALLEL SAFE
    AS $$ SELECT decode(replace(id::text, '-', ''), 'hex') $$;

ALTER TABLE token_transactions ADD COLUMN idempotency_key TEXT;
ALTER TABLE token_drips ADD COLUMN idempotency_key TEXT;
-- The journal is append-only; copying the keys onto the rows written before this migration is
-- the one edit it ever takes, with its guard lifted for these two statements only.
ALTER TABLE token_transactions DISABLE TRIGGER token_transactions_append_only;
UPDATE token_transactions t SET idempotency_key = k.idempotency_key
  FROM idempotency_keys k WHERE k.entry_id = t.id;
ALTER TABLE token_transactions ENABLE TRIGGER token_transactions_append_only;
ALTER TABLE token_drips DISABLE TRIGGER token_drips_append_only;
UPDATE token_drips d SET idempotency_key = k.idempotency_key
  FROM idempotency_keys k WHERE k.entry_id = d.id;
ALTER TABLE token_drips ENABLE TRIGGER token_drips_append_only;

CREATE TABLE idempotency_key_hashes (
    key_hash     UUID   NOT NULL,
    request_hash UUID   NOT NULL,
    -- The journal row this key wrote (for a Reserve, the hold it placed).
    entry_id     BIGINT NOT NULL DEFAULT nextval('ledger_entry_id_seq'),
    CONSTRAINT idempotency_key_hashes_pkey PRIMARY KEY (key_hash)
);
INSERT INTO idempotency_key_hashes (key_hash, request_hash, entry_id)
SELECT ledger_key_hash(idempotency_key), ledger_bytes_uuid(request_hash), entry_id
  FROM idempotency_keys;
DROP TABLE idempotency_keys;
ALTER TABLE idempotency_key_hashes RENAME TO idempotency_keys;
ALTER TABLE idempotency_keys RENAME CONSTRAINT idempotency_key_hashes_pkey TO idempotency_keys_pkey;

ALTER TABLE token_usage DROP CONSTRAINT token_usage_pkey;
ALTER TABLE token_usage DROP CONSTRAINT token_usage_account_seq_key;
ALTER TABLE token_usage ADD CONSTRAINT token_usage_pkey PRIMARY KEY (account_id, entry_seq);
CREATE INDEX token_usage_id_brin ON token_usage USING brin (id);

-- The journal view gains the key text (NULL for usage rows).
DROP VIEW journal;
CREATE VIEW journal AS
SELECT id, account_id, entry_seq, transaction_type AS kind, token_amount, balance_after, created_at,
       created_by, reason, source, stripe_subscription_id, stripe_invoice_id, amount_paid_cents,
       currency, stripe_payment_intent_id, stripe_checkout_session_id, pack, reverses_transaction_id,
       stripe_reference, allow_negative,
       NULL::timestamptz AS period_start, NULL::timestamptz AS period_end,
       NULL::text AS model, NULL::bigint AS input_tokens, NULL::bigint AS output_tokens,
       NULL::text AS feature, lot_id, carried_tokens, carried_to_lot, idempotency_key
  FROM token_transactions
UNION ALL
SELECT id, account_id, entry_seq, 'drip'::text, token_amount, balance_after, created_at, created_by,
       NULL::text, NULL::text, stripe_subscription_id, stripe_invoice_id, NULL::bigint, NULL::text,
       NULL::text, NULL::text, NULL::text, NULL::bigint, NULL::text, NULL::boolean,
       period_start, period_end, NULL::text, NULL::bigint, NULL::bigint, NULL::text,
       NULL::bigint, NULL::bigint, NULL::bigint, idempotency_key
  FROM token_drips
UNION ALL
SELECT id, account_id, entry_seq, 'usage'::text, token_amount, balance_after, created_at, created_by,
       NULL::text, NULL::text, NULL::text, NULL::text, NULL::bigint, NULL::text,
       NULL::text, NULL::text, NULL::text, NULL::bigint, NULL::text, NULL::boolean,
       NULL::timestamptz, NULL::timestamptz, model, input_tokens, output_tokens, feature,
       NULL::bigint, NULL::bigint, NULL::bigint, NULL::text
  FROM token_usage;
