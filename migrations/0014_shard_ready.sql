-- Shard-ready keys (issue 11, part 4): every ledger table's primary key and unique constraints
-- start with or include the account, so the schema can be distributed by account on a
-- distributed PostgreSQL (Citus: `create_distributed_table(..., 'account_id')`, colocated) and so
-- plain PostgreSQL accepts it hash-partitioned by account (the rule Citus enforces: a unique
-- constraint must include the distribution column). The shard key is the account's compact key,
-- `account_id`, not the text `user_id`: carrying the user id on every usage row would add its
-- bytes to each event (docs/scale-out.md). What stays global gets a table of its own, keyed by
-- what is global about it: the user id (`account_directory`), the business keys that make a
-- Stripe object credited once (`business_keys`), and the idempotency keys (unchanged, global by
-- design: docs/scale-out.md says why).
--
-- Nothing here changes behaviour: the same writes are applied or refused, the same replays found.
--
-- Upgrading across this migration means stopping every ledger process of an older version first
-- (README, "Several replicas"): an older process's account upsert names `ON CONFLICT (user_id)`,
-- which no longer has a unique index once this commits. The lock below keeps an older process
-- that is still running from creating an account between the directory's copy and the new id
-- sequence (an account the directory would miss, or an id the sequence would give out twice):
-- its writes wait for this migration, then fail, and none of them lands half-way.
LOCK TABLE accounts IN SHARE ROW EXCLUSIVE MODE;

-- The user id → account directory. `accounts.user_id` stays (reads and reports show it) but is
-- no longer unique there: a unique user id cannot be enforced on a table distributed by account.
-- The directory is written once per user and never updated; its own distribution (by user id).
CREATE TABLE account_directory (
    user_id text NOT NULL,
    account_id bigint NOT NULL,
    CONSTRAINT account_directory_pkey PRIMARY KEY (user_id)
);
INSERT INTO account_directory (user_id, account_id) SELECT user_id, account_id FROM accounts;

-- Account ids come from a sequence of their own, drawn by the statement that creates the
-- directory entry and the account together (the identity could not be read back before the
-- insert that uses it). It starts past every id the identity ever gave out.
CREATE SEQUENCE account_id_seq AS bigint;
SELECT setval('account_id_seq', GREATEST(
    (SELECT last_value FROM accounts_account_id_seq), (SELECT COALESCE(max(account_id), 1) FROM accounts)));
ALTER TABLE accounts ALTER COLUMN account_id DROP IDENTITY;
ALTER TABLE accounts DROP CONSTRAINT accounts_user_id_key;
-- Lookups and listings by user id keep an index (not unique: the directory is what is).
CREATE INDEX accounts_user_id_idx ON accounts (user_id);

-- Business keys: the Stripe objects a credit is applied for at most once, whoever the user. They
-- were partial unique indexes on the journal tables (global, without the account); now a table
-- of their own, written by the statement that inserts the credit, in key order. `period_start`
-- is the drip's period (`-infinity` for the kinds without one).
CREATE TABLE business_keys (
    kind text NOT NULL CHECK (kind IN ('payment_intent', 'annual_invoice', 'subscription_period')),
    key text NOT NULL,
    period_start timestamptz NOT NULL DEFAULT '-infinity',
    account_id bigint NOT NULL,
    transaction_id bigint NOT NULL,
    CONSTRAINT business_keys_pkey PRIMARY KEY (kind, key, period_start)
);
INSERT INTO business_keys (kind, key, account_id, transaction_id)
SELECT 'payment_intent', stripe_payment_intent_id, account_id, id
  FROM token_transactions WHERE transaction_type = 'purchase';
INSERT INTO business_keys (kind, key, account_id, transaction_id)
SELECT 'annual_invoice', stripe_invoice_id, account_id, id
  FROM token_transactions WHERE source = 'annual_subscription' AND stripe_invoice_id IS NOT NULL;
INSERT INTO business_keys (kind, key, period_start, account_id, transaction_id)
SELECT 'subscription_period', stripe_subscription_id, period_start, account_id, id FROM token_drips;
DROP INDEX token_transactions_payment_intent_key;
DROP INDEX token_transactions_annual_invoice_key;
ALTER TABLE token_drips DROP CONSTRAINT token_drips_subscription_period_key;

-- Journal ids stay globally unique (one sequence draws them), but the keys lead with the account.
ALTER TABLE token_transactions DROP CONSTRAINT token_transactions_pkey,
    ADD CONSTRAINT token_transactions_pkey PRIMARY KEY (account_id, id);
ALTER TABLE token_drips DROP CONSTRAINT token_drips_pkey,
    ADD CONSTRAINT token_drips_pkey PRIMARY KEY (account_id, id);
-- Lookups by journal id alone (GetTransaction by id, a reversal's original, an idempotency key's
-- row) keep an index on one node; on a cluster they fan out (docs/scale-out.md, blockers).
CREATE INDEX token_transactions_id_idx ON token_transactions (id);
CREATE INDEX token_drips_id_idx ON token_drips (id);
DROP INDEX token_transactions_reverses_idx;
CREATE INDEX token_transactions_reverses_idx ON token_transactions (account_id, reverses_transaction_id)
    WHERE reverses_transaction_id IS NOT NULL;

-- Lots, holds and alert events: keyed by (account, id); the per-account indexes they had are
-- now their primary keys.
ALTER TABLE token_lots DROP CONSTRAINT token_lots_pkey,
    ADD CONSTRAINT token_lots_pkey PRIMARY KEY (account_id, lot_id);
DROP INDEX token_lots_account_idx;
ALTER TABLE token_holds DROP CONSTRAINT token_holds_pkey,
    ADD CONSTRAINT token_holds_pkey PRIMARY KEY (account_id, hold_id);
DROP INDEX token_holds_account_idx;
-- A hold write names its hold by id alone (the request has no user): found through this index.
CREATE INDEX token_holds_id_idx ON token_holds (hold_id);
DROP INDEX token_holds_committed_idx;
CREATE INDEX token_holds_committed_idx ON token_holds (account_id, committed_transaction_id)
    WHERE committed_transaction_id IS NOT NULL;
ALTER TABLE alert_outbox DROP CONSTRAINT alert_outbox_pkey,
    ADD CONSTRAINT alert_outbox_pkey PRIMARY KEY (account_id, event_id);
DROP INDEX alert_outbox_account_idx;
-- A delivery attempt is recorded by event id alone.
CREATE INDEX alert_outbox_event_idx ON alert_outbox (event_id);

-- The append-only triggers name their table as an argument: a trigger fires on a partition (or,
-- on Citus, on a shard, `token_usage_102008`), whose name is not the table's.
CREATE OR REPLACE FUNCTION ledger_journal_is_append_only() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'journal table % is append-only: % is not allowed',
        COALESCE(TG_ARGV[0], TG_TABLE_NAME), TG_OP
        USING ERRCODE = 'integrity_constraint_violation';
END;
$$;
DROP TRIGGER token_transactions_append_only ON token_transactions;
CREATE TRIGGER token_transactions_append_only BEFORE UPDATE OR DELETE ON token_transactions
    FOR EACH ROW EXECUTE FUNCTION ledger_journal_is_append_only('token_transactions');
DROP TRIGGER token_drips_append_only ON token_drips;
CREATE TRIGGER token_drips_append_only BEFORE UPDATE OR DELETE ON token_drips
    FOR EACH ROW EXECUTE FUNCTION ledger_journal_is_append_only('token_drips');
DROP TRIGGER token_usage_append_only ON token_usage;
CREATE TRIGGER token_usage_append_only BEFORE UPDATE OR DELETE ON token_usage
    FOR EACH ROW EXECUTE FUNCTION ledger_journal_is_append_only('token_usage');
DROP TRIGGER model_prices_append_only ON model_prices;
CREATE TRIGGER model_prices_append_only BEFORE UPDATE OR DELETE ON model_prices
    FOR EACH ROW EXECUTE FUNCTION ledger_journal_is_append_only('model_prices');
