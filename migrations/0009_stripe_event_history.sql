-- WEBHOOK MIGRATION (stripe_events only). What an operator needs to answer "what happened to
-- this payment?" from the console and `stripe-events`:
-- - `first_outcome`: what the first delivery did. `outcome` is overwritten by every delivery, so
--   an event that failed first (`user_unknown`, `ledger_unavailable`) and was credited on a retry
--   showed only `credited`. Rows recorded before this migration take their latest outcome.
-- - `api_version`: the Stripe API version the event was rendered with (payload shapes differ by
--   version); NULL for events recorded before it was stored, or sent without one.
-- - Listing pages by first sight, newest first (an immutable key, so a redelivery cannot move an
--   event between pages), for everyone and per user.
ALTER TABLE stripe_events ADD COLUMN first_outcome TEXT;
UPDATE stripe_events SET first_outcome = outcome;
ALTER TABLE stripe_events ALTER COLUMN first_outcome SET NOT NULL;
ALTER TABLE stripe_events ADD COLUMN api_version TEXT;
CREATE INDEX stripe_events_first_seen_idx ON stripe_events (first_seen_at DESC, event_id DESC);
CREATE INDEX stripe_events_user_first_seen_idx ON stripe_events (user_id, first_seen_at DESC, event_id DESC)
    WHERE user_id IS NOT NULL;
