-- Test-only schema variant (TOKEN_LEDGER_TEST_SCHEMA=hash-partitioned, tests/common/mod.rs):
-- turns every ledger table of a freshly migrated database into a table `PARTITION BY HASH` on its
-- shard key, keeping every constraint, index, trigger, foreign key, default and identity by name.
--
-- Plain PostgreSQL enforces on hash-partitioned tables the rules Citus enforces on distributed
-- ones: a primary key or unique constraint must include the partition column, and system columns
-- (`xmax`) cannot be returned from them. Nothing here drops a constraint to make a table fit:
-- every one is re-added under its own name and PostgreSQL refuses the ones that break the rule,
-- so the variant fails to build rather than pass without them; the last step checks that the
-- constraints, indexes and triggers after are exactly those before.
--
-- Which tables, and by what (docs/scale-out.md): the account's tables by `account_id` (Citus:
-- distributed, colocated); the directory by `user_id`, the idempotency keys by `key_hash` and
-- the business keys by `key` (each its own distribution). `balance_alerts`, `model_prices` and
-- the Stripe adapter's tables stay as they are (reference or coordinator-local tables on Citus).
DO $convert$
DECLARE
    spec CONSTANT text[][] := ARRAY[
        ['accounts', 'account_id'],
        ['token_transactions', 'account_id'],
        ['token_drips', 'account_id'],
        ['token_usage', 'account_id'],
        ['token_lots', 'account_id'],
        ['token_holds', 'account_id'],
        ['usage_rollups', 'account_id'],
        ['alert_outbox', 'account_id'],
        ['account_directory', 'user_id'],
        ['idempotency_keys', 'key_hash'],
        ['business_keys', 'key']];
    partitions CONSTANT int := 4;
    tables text[];
    before text[];
    after text[];
    views text[][];
    fkeys text[][];
    keys text[][];
    indexes text[];
    triggers text[];
    t text;
    col text;
    old_seq text;
    new_seq text;
    seq_col text;
    opts text;
    item text[];
    i int;
    p int;
BEGIN
    SELECT array_agg(spec[k][1]) INTO tables FROM generate_subscripts(spec, 1) AS k;

    -- What must be there afterwards: every constraint, index and trigger of the public schema.
    SELECT array_agg(x ORDER BY x) INTO before FROM (
        SELECT format('constraint %s.%s %s', conrelid::regclass, conname, contype) AS x
          FROM pg_constraint WHERE connamespace = 'public'::regnamespace AND conrelid <> 0
        UNION ALL
        SELECT format('index %s.%s', tablename, indexname) FROM pg_indexes WHERE schemaname = 'public'
        UNION ALL
        SELECT format('trigger %s.%s', tgrelid::regclass, tgname) FROM pg_trigger
         WHERE NOT tgisinternal AND tgrelid::regclass::text NOT LIKE 'pg_%') s;

    -- Views over the tables, and foreign keys from or to them, go first and come back last.
    SELECT array_agg(ARRAY[viewname::text, definition]) INTO views
      FROM pg_views WHERE schemaname = 'public';
    FOR i IN 1 .. coalesce(array_length(views, 1), 0) LOOP
        EXECUTE format('DROP VIEW %I', views[i][1]);
    END LOOP;
    SELECT array_agg(ARRAY[conrelid::regclass::text, conname::text, pg_get_constraintdef(oid)]) INTO fkeys
      FROM pg_constraint
     WHERE contype = 'f' AND connamespace = 'public'::regnamespace
       AND (conrelid::regclass::text = ANY(tables) OR confrelid::regclass::text = ANY(tables));
    FOR i IN 1 .. coalesce(array_length(fkeys, 1), 0) LOOP
        EXECUTE format('ALTER TABLE %I DROP CONSTRAINT %I', fkeys[i][1], fkeys[i][2]);
    END LOOP;

    FOREACH item SLICE 1 IN ARRAY spec LOOP
        t := item[1];
        col := item[2];
        -- Primary keys and unique constraints by name, the other indexes, the triggers.
        SELECT array_agg(ARRAY[conname::text, pg_get_constraintdef(oid)] ORDER BY contype, conname) INTO keys
          FROM pg_constraint WHERE conrelid = t::regclass AND contype IN ('p', 'u', 'x');
        SELECT array_agg(pg_get_indexdef(i.indexrelid)) INTO indexes
          FROM pg_index i
         WHERE i.indrelid = t::regclass
           AND NOT EXISTS (SELECT 1 FROM pg_constraint c WHERE c.conindid = i.indexrelid);
        SELECT array_agg(pg_get_triggerdef(oid)) INTO triggers
          FROM pg_trigger WHERE tgrelid = t::regclass AND NOT tgisinternal;
        SELECT array_to_string(reloptions, ', ') INTO opts FROM pg_class WHERE oid = t::regclass;
        SELECT a.attname, pg_get_serial_sequence(t, a.attname) INTO seq_col, old_seq
          FROM pg_attribute a WHERE a.attrelid = t::regclass AND a.attidentity <> '';

        EXECUTE format('ALTER TABLE %I RENAME TO %I', t, t || '__unpartitioned');
        EXECUTE format(
            'CREATE TABLE %I (LIKE %I INCLUDING DEFAULTS INCLUDING CONSTRAINTS INCLUDING IDENTITY '
            'INCLUDING GENERATED INCLUDING STORAGE INCLUDING COMMENTS) PARTITION BY HASH (%I)',
            t, t || '__unpartitioned', col);
        FOR p IN 0 .. partitions - 1 LOOP
            EXECUTE format('CREATE TABLE %I PARTITION OF %I FOR VALUES WITH (MODULUS %s, REMAINDER %s)%s',
                           t || '_p' || p, t, partitions, p,
                           CASE WHEN opts IS NULL THEN '' ELSE ' WITH (' || opts || ')' END);
        END LOOP;
        EXECUTE format('INSERT INTO %I OVERRIDING SYSTEM VALUE SELECT * FROM %I', t, t || '__unpartitioned');
        IF old_seq IS NOT NULL THEN
            new_seq := pg_get_serial_sequence(t, seq_col);
            EXECUTE format('SELECT setval(%L, last_value, is_called) FROM %s', new_seq, old_seq);
        END IF;
        EXECUTE format('DROP TABLE %I', t || '__unpartitioned');
        IF old_seq IS NOT NULL THEN
            EXECUTE format('ALTER SEQUENCE %s RENAME TO %I', new_seq, split_part(old_seq, '.', 2));
        END IF;

        -- PostgreSQL refuses here any key that does not include the partition column.
        FOR i IN 1 .. coalesce(array_length(keys, 1), 0) LOOP
            EXECUTE format('ALTER TABLE %I ADD CONSTRAINT %I %s', t, keys[i][1], keys[i][2]);
        END LOOP;
        FOR i IN 1 .. coalesce(array_length(indexes, 1), 0) LOOP
            EXECUTE indexes[i];
        END LOOP;
        FOR i IN 1 .. coalesce(array_length(triggers, 1), 0) LOOP
            EXECUTE triggers[i];
        END LOOP;
    END LOOP;

    FOR i IN 1 .. coalesce(array_length(fkeys, 1), 0) LOOP
        EXECUTE format('ALTER TABLE %I ADD CONSTRAINT %I %s', fkeys[i][1], fkeys[i][2], fkeys[i][3]);
    END LOOP;
    FOR i IN 1 .. coalesce(array_length(views, 1), 0) LOOP
        EXECUTE format('CREATE VIEW %I AS %s', views[i][1], views[i][2]);
    END LOOP;

    -- Every table partitioned, and nothing lost on the way. (The partitions' own copies of the
    -- indexes and triggers are not counted: they belong to the partitioned ones.)
    IF (SELECT count(*) FROM pg_partitioned_table WHERE partrelid::regclass::text = ANY(tables))
       <> array_length(tables, 1) THEN
        RAISE EXCEPTION 'not every ledger table is partitioned';
    END IF;
    SELECT array_agg(x ORDER BY x) INTO after FROM (
        SELECT format('constraint %s.%s %s', conrelid::regclass, conname, contype) AS x
          FROM pg_constraint c WHERE connamespace = 'public'::regnamespace AND conrelid <> 0 AND conparentid = 0
           AND NOT EXISTS (SELECT 1 FROM pg_inherits WHERE inhrelid = c.conrelid)
        UNION ALL
        SELECT format('index %s.%s', tablename, indexname) FROM pg_indexes ix
         WHERE schemaname = 'public'
           AND NOT EXISTS (SELECT 1 FROM pg_inherits h JOIN pg_class c ON c.oid = h.inhrelid
                            WHERE c.relname = ix.tablename)
        UNION ALL
        SELECT format('trigger %s.%s', tgrelid::regclass, tgname) FROM pg_trigger
         WHERE NOT tgisinternal AND tgparentid = 0 AND tgrelid::regclass::text NOT LIKE 'pg_%') s;
    IF before IS DISTINCT FROM after THEN
        RAISE EXCEPTION 'the partitioned schema differs: lost %, gained %',
            ARRAY(SELECT unnest(before) EXCEPT SELECT unnest(after)),
            ARRAY(SELECT unnest(after) EXCEPT SELECT unnest(before));
    END IF;
END
$convert$;
