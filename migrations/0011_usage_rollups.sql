-- Usage summaries without reading the journal: one row per (account, quarter hour, model,
-- feature) with the sums of its usage rows, kept by the same statement that inserts them (a
-- data-modifying CTE over the inserted rows, in the batch's transaction), so a summary costs
-- O(buckets × groups) whatever the history's length and always equals the journal. `verify`
-- checks that it does.
--
-- The grain is a quarter hour, aligned to UTC: every time zone's offset is a whole number of
-- quarter hours (Asia/Kathmandu +05:45, Asia/Kolkata +05:30, ...), so each bucket lies in one
-- local hour of every zone and local days and hours are sums of whole buckets, across DST too.
-- Rows without a model or feature use '' (a primary key column cannot be NULL).
--
-- Only batches holding the account's lock touch its rows, so two batches never wait on each
-- other here. fillfactor leaves room for HOT updates: a bucket's row is updated in place by
-- every batch of its quarter hour without touching its indexes.
CREATE TABLE usage_rollups (
    account_id         BIGINT      NOT NULL,
    bucket             TIMESTAMPTZ NOT NULL,
    model              TEXT        NOT NULL,
    feature            TEXT        NOT NULL,
    events             BIGINT      NOT NULL,
    tokens             BIGINT      NOT NULL,
    input_tokens       BIGINT      NOT NULL,
    output_tokens      BIGINT      NOT NULL,
    cache_read_tokens  BIGINT      NOT NULL,
    cache_write_tokens BIGINT      NOT NULL,
    CONSTRAINT usage_rollups_pkey PRIMARY KEY (account_id, bucket, model, feature)
) WITH (fillfactor = 70);
-- Summaries of every user read a window of buckets. New rows arrive in bucket order, so a BRIN
-- index finds a window's blocks at almost no cost to the writes (a B-tree entry per new row cost
-- the usage path a few percent).
CREATE INDEX usage_rollups_bucket_brin ON usage_rollups USING brin (bucket);

-- The bucket of an instant: ledger_usage_bucket(t) is the start of its quarter hour.
CREATE FUNCTION ledger_usage_bucket(t timestamptz) RETURNS timestamptz
    LANGUAGE sql IMMUTABLE PARALLEL SAFE
    RETURN date_bin('15 minutes', t, TIMESTAMPTZ '2000-01-01 00:00:00+00');

-- The usage recorded so far.
INSERT INTO usage_rollups
SELECT account_id, ledger_usage_bucket(created_at), COALESCE(model, ''), COALESCE(feature, ''),
       count(*), -sum(token_amount), sum(input_tokens), sum(output_tokens),
       COALESCE(sum(cache_read_tokens), 0), COALESCE(sum(cache_write_tokens), 0)
  FROM token_usage GROUP BY 1, 2, 3, 4;
