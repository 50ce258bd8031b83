-- Balance alerts: thresholds, the crossing state kept on each account, and an outbox of alert
-- events written in the same transaction as the write that caused them.
--
-- A rule is a threshold in tokens or a percentage of the account's most recent credit; one rule
-- with no account is the default for every account, an account's own rule overrides it.
CREATE TABLE balance_alerts (
    alert_id    BIGINT      GENERATED ALWAYS AS IDENTITY,
    account_id  BIGINT,
    tokens      BIGINT,
    percent     INTEGER,
    created_by  TEXT        NOT NULL,
    created_at  TIMESTAMPTZ NOT NULL DEFAULT now(),
    updated_at  TIMESTAMPTZ NOT NULL DEFAULT now(),
    CONSTRAINT balance_alerts_pkey PRIMARY KEY (alert_id),
    CONSTRAINT balance_alerts_account_fkey FOREIGN KEY (account_id) REFERENCES accounts (account_id),
    CONSTRAINT balance_alerts_account_key UNIQUE (account_id),
    CONSTRAINT balance_alerts_one_threshold CHECK ((tokens IS NULL) <> (percent IS NULL)),
    CONSTRAINT balance_alerts_tokens_check CHECK (tokens >= 0),
    CONSTRAINT balance_alerts_percent_check CHECK (percent BETWEEN 0 AND 100)
);
-- At most one default rule.
CREATE UNIQUE INDEX balance_alerts_default_key ON balance_alerts ((true)) WHERE account_id IS NULL;

-- What the rules need on the account row (read under the batch's lock, written with its move):
-- the most recent credit's amount (for percentage thresholds), and whether the account is
-- below its threshold (`alert_low`) or at or below zero (`alert_depleted`) as of its last
-- write, so an event is written only when a write changes that.
ALTER TABLE accounts ADD COLUMN last_credit BIGINT NOT NULL DEFAULT 0;
ALTER TABLE accounts ADD COLUMN alert_low BOOLEAN NOT NULL DEFAULT false;
ALTER TABLE accounts ADD COLUMN alert_depleted BOOLEAN NOT NULL DEFAULT false;
-- When a lot's remaining tokens enter the "expiring soon" window (`--alert-expiring-window-hours`)
-- the sweeper must visit the account even with nothing due: it finds such lots through this
-- partial index of the lots with tokens left that were not alerted yet, and a lot alerted once
-- says so (`expiring_alerted`).
ALTER TABLE token_lots ADD COLUMN expiring_alerted BOOLEAN NOT NULL DEFAULT false;
CREATE INDEX token_lots_expiring_idx ON token_lots (expires_at)
    WHERE NOT expiring_alerted AND remaining > 0 AND expires_at IS NOT NULL;
-- Percentage thresholds are of the most recent credit: the one each account already has.
UPDATE accounts a SET last_credit = COALESCE((
    SELECT j.token_amount FROM journal j
     WHERE j.account_id = a.account_id AND j.kind IN ('grant', 'purchase', 'drip')
     ORDER BY j.entry_seq DESC LIMIT 1), 0);
-- Accounts that were at or below zero before alerts existed do not alert on their next write.
UPDATE accounts SET alert_depleted = true WHERE balance - held <= 0 AND last_seq > 0;

-- The outbox: one row per alert event, in the transaction that caused it, delivered after
-- commit by the deliverer (at least once, in order per account). `event_id` is the stable id a
-- receiver deduplicates by; it grows in commit order per account (a batch holds the account's
-- lock while it inserts).
CREATE TABLE alert_outbox (
    event_id        BIGINT      GENERATED ALWAYS AS IDENTITY,
    account_id      BIGINT      NOT NULL,
    user_id         TEXT        NOT NULL,
    kind            TEXT        NOT NULL,
    threshold       BIGINT,
    available       BIGINT      NOT NULL,
    balance         BIGINT      NOT NULL,
    seq             BIGINT      NOT NULL,
    -- credits_expiring: the lot, when it expires, and how many of its tokens will.
    lot_id          BIGINT,
    expires_at      TIMESTAMPTZ,
    tokens          BIGINT,
    created_at      TIMESTAMPTZ NOT NULL DEFAULT now(),
    delivered_at    TIMESTAMPTZ,
    attempts        INTEGER     NOT NULL DEFAULT 0,
    next_attempt_at TIMESTAMPTZ NOT NULL DEFAULT now(),
    last_error      TEXT,
    CONSTRAINT alert_outbox_pkey PRIMARY KEY (event_id),
    CONSTRAINT alert_outbox_kind_check CHECK (
        kind IN ('balance_low', 'balance_recovered', 'balance_depleted', 'credits_expiring'))
);
CREATE INDEX alert_outbox_pending_idx ON alert_outbox (next_attempt_at) WHERE delivered_at IS NULL;
CREATE INDEX alert_outbox_account_idx ON alert_outbox (account_id, event_id);
