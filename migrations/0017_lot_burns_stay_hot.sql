-- Every debit burns a lot: an UPDATE of `remaining` (and `held`). PostgreSQL can keep such an
-- update on the row's page without touching any index (a HOT update) only when no index uses a
-- changed column, partial-index predicates included. 0012's expiring-soon index named
-- `remaining` in its predicate, so every burn wrote a new row version elsewhere and a new entry
-- in every index of token_lots (on a usage bench: 33,414 lot updates, 0 of them HOT).
--
-- Its predicate no longer names `remaining`: the sweeper's query still asks for `remaining > 0`
-- and reads the lots of its window, (now, now + window], through this index, so a spent lot
-- expiring inside the window costs it one row read, and no lot outside the window is ever read.
-- The index now also keeps lots spent before their window (never alerted, so never left out):
-- one entry per lot ever given an expiry, a storage cost only, as the sweeper reads a range.
DROP INDEX token_lots_expiring_idx;
CREATE INDEX token_lots_expiring_idx ON token_lots (expires_at)
    WHERE NOT expiring_alerted AND expires_at IS NOT NULL;

-- Room on each page for a burn's new version to stay there (new pages only; PostgreSQL prunes
-- dead versions on a full page when it next visits it).
ALTER TABLE token_lots SET (fillfactor = 80);

