"""The PostgreSQL store's schema and statements: tables, indexes, the save and revoke
functions that make each change one atomic statement, and the statements the store runs."""

from __future__ import annotations

__all__ = ["SCHEMA"]

#: The tables, indexes and function the store uses; run it yourself with ``create_schema=False``.
SCHEMA = """
CREATE TABLE IF NOT EXISTS satchel_sessions (
    key text PRIMARY KEY,
    ns text NOT NULL DEFAULT '',
    created_at double precision NOT NULL,
    touched_at double precision NOT NULL,
    expires_at double precision NOT NULL,
    data jsonb NOT NULL,
    size bigint,
    owner text,
    meta jsonb NOT NULL DEFAULT '{}'
) WITH (toast_tuple_target = 8160);
ALTER TABLE satchel_sessions ADD COLUMN IF NOT EXISTS size bigint;
CREATE INDEX IF NOT EXISTS satchel_sessions_owner ON satchel_sessions (ns, owner)
    WHERE owner IS NOT NULL;
CREATE INDEX IF NOT EXISTS satchel_sessions_expires ON satchel_sessions (expires_at);
CREATE TABLE IF NOT EXISTS satchel_locks (
    key text PRIMARY KEY,
    token text NOT NULL,
    expires_at double precision NOT NULL
);
-- Where a moved record went (regenerate()), for 300 s (MOVE_NOTE_SECONDS): see satchel_revoke.
CREATE TABLE IF NOT EXISTS satchel_moves (
    key text PRIMARY KEY,
    target text NOT NULL,
    expires_at double precision NOT NULL
);
-- End the rows under p_keys and, with p_owner, every row of that owner, but p_keep;
-- a moved row is followed to its new key. Each statement sees what committed before
-- it, and a move locks its old row: a move either finished before (and is followed)
-- or finds its old row gone (and is refused). Returns how many live rows ended.
CREATE OR REPLACE FUNCTION satchel_revoke(
    p_keys text[], p_owner text, p_ns text, p_keep text, p_now double precision
) RETURNS bigint LANGUAGE plpgsql AS $$
DECLARE
    todo text[] := p_keys;
    name text;
    ended bigint := 0;
BEGIN
    IF p_owner IS NOT NULL THEN
        todo := todo || ARRAY(SELECT key FROM satchel_sessions
            WHERE ns = p_ns AND owner = p_owner AND expires_at > p_now);
    END IF;
    FOREACH name IN ARRAY todo LOOP
        WHILE name IS DISTINCT FROM p_keep LOOP
            DELETE FROM satchel_sessions WHERE key = name AND expires_at > p_now;
            IF FOUND THEN
                ended := ended + 1;
                EXIT;
            END IF;
            SELECT target INTO name FROM satchel_moves WHERE key = name AND expires_at > p_now;
            IF NOT FOUND THEN EXIT; END IF;
        END LOOP;
    END LOOP;
    RETURN ended;
END
$$;
CREATE OR REPLACE FUNCTION satchel_value_size(value text) RETURNS bigint
LANGUAGE sql IMMUTABLE AS $$
    SELECT CASE WHEN left(value, 1) = '=' THEN octet_length(value) - 1
        ELSE length(decode(substr(value, 2), 'base64')) END
$$;
CREATE OR REPLACE FUNCTION satchel_size(fields jsonb) RETURNS bigint
LANGUAGE sql IMMUTABLE AS $$
    SELECT COALESCE(sum(octet_length(key) + satchel_value_size(value)), 0)
    FROM jsonb_each_text(fields)
$$;
CREATE OR REPLACE FUNCTION satchel_save(
    p_key text, p_ns text, p_mode text, p_source text, p_fence text,
    p_set jsonb, p_delete text[], p_only text[], p_expect jsonb, p_max bigint,
    p_created double precision, p_touched double precision, p_expires double precision,
    p_owner text, p_meta jsonb, p_now double precision
) RETURNS bigint[] LANGUAGE plpgsql AS $$
DECLARE
    src satchel_sessions%ROWTYPE;
    base jsonb := '{}';
    merged jsonb;
    deleted jsonb := '{}';
    dropped bigint;
    before bigint := 0;
    after bigint;
    inserted bigint;
BEGIN
    IF p_fence IS NOT NULL AND NOT EXISTS (SELECT 1 FROM satchel_locks
            WHERE key = p_source AND token = p_fence AND expires_at > p_now) THEN
        RETURN ARRAY[3];
    END IF;
    IF p_mode = 'u' THEN
        SELECT * INTO src FROM satchel_sessions
            WHERE key = p_key AND expires_at > p_now FOR UPDATE;
        IF NOT FOUND THEN RETURN ARRAY[0]; END IF;
        base := src.data;
    ELSE
        PERFORM 1 FROM satchel_sessions WHERE key = p_key AND expires_at > p_now;
        IF FOUND THEN RETURN ARRAY[0]; END IF;
        IF p_mode = 'm' THEN
            SELECT * INTO src FROM satchel_sessions
                WHERE key = p_source AND expires_at > p_now FOR UPDATE;
            IF NOT FOUND THEN RETURN ARRAY[0]; END IF;
            base := src.data;
        END IF;
    END IF;
    -- Set-based from here on, so a save is linear in the record's size: base is
    -- detoasted once (|| makes a fresh value), and each lookup in it or in the
    -- deleted names (an object, for ?) is a binary search, never a scan.
    base := base || '{}';
    IF cardinality(p_delete) > 0 THEN
        SELECT jsonb_object_agg(k, true) INTO deleted FROM unnest(p_delete) AS k;
    END IF;
    IF p_expect IS NOT NULL AND (
        EXISTS (SELECT 1 FROM jsonb_each(base) AS b
            WHERE p_expect ? b.key AND (p_expect -> b.key) IS DISTINCT FROM b.value)
        OR EXISTS (SELECT 1 FROM jsonb_each(p_expect) AS e
            WHERE e.value <> 'null'::jsonb AND NOT base ? e.key)) THEN
        RETURN ARRAY[4];
    END IF;
    SELECT COALESCE(jsonb_object_agg(b.key, b.value), '{}'::jsonb) INTO merged
        FROM jsonb_each(base) AS b WHERE NOT deleted ? b.key;
    merged := merged || p_set;
    IF p_mode <> 'c' THEN
        before := COALESCE(src.size, satchel_size(base));
    END IF;
    -- Only the fields this save names change the size: no need to walk the rest.
    SELECT COALESCE(sum(octet_length(b.key) + satchel_value_size(b.value)), 0) INTO dropped
        FROM jsonb_each_text(base) AS b WHERE p_set ? b.key OR deleted ? b.key;
    after := before + satchel_size(p_set) - dropped;
    IF p_max IS NOT NULL AND after > p_max AND after > before THEN
        RETURN ARRAY[9, after];
    END IF;
    IF p_only IS NOT NULL AND NOT EXISTS (
            SELECT 1 FROM jsonb_object_keys(merged) AS k WHERE k <> ALL (p_only)) THEN
        DELETE FROM satchel_sessions
            WHERE key = CASE WHEN p_mode = 'm' THEN p_source ELSE p_key END;
        RETURN ARRAY[2];
    END IF;
    IF p_mode = 'u' THEN
        UPDATE satchel_sessions SET data = merged, size = after, touched_at = p_touched,
            expires_at = p_expires WHERE key = p_key;
    ELSE
        INSERT INTO satchel_sessions
            (key, ns, created_at, touched_at, expires_at, data, size, owner, meta)
            VALUES (p_key, p_ns, p_created, p_touched, p_expires, merged, after, p_owner, p_meta)
        ON CONFLICT (key) DO UPDATE SET ns = excluded.ns, created_at = excluded.created_at,
            touched_at = excluded.touched_at, expires_at = excluded.expires_at,
            data = excluded.data, size = excluded.size, owner = excluded.owner,
            meta = excluded.meta
            WHERE satchel_sessions.expires_at <= p_now;
        -- A create racing another of the same key waits for it, then finds it live.
        GET DIAGNOSTICS inserted = ROW_COUNT;
        IF inserted = 0 THEN RETURN ARRAY[0]; END IF;
        IF p_mode = 'm' THEN
            DELETE FROM satchel_sessions WHERE key = p_source;
            INSERT INTO satchel_moves VALUES (p_source, p_key, p_now + 300)
                ON CONFLICT (key) DO UPDATE SET target = excluded.target,
                    expires_at = excluded.expires_at;
        END IF;
    END IF;
    RETURN ARRAY[1];
END
$$;
"""

_COLUMNS = "created_at, touched_at, expires_at, data, owner, meta"
_LOAD = f"SELECT {_COLUMNS} FROM satchel_sessions WHERE key = %s AND expires_at > %s"
_SAVE = (
    "SELECT satchel_save(%s, %s, %s, %s, %s, %s::jsonb, %s::text[], %s::text[], %s::jsonb,"
    " %s, %s, %s, %s, %s, %s::jsonb, %s)"
)
_TOUCH = (
    "UPDATE satchel_sessions SET touched_at = %s, expires_at = %s"
    " WHERE key = %s AND expires_at > %s"
)
_ACQUIRE = """
INSERT INTO satchel_locks VALUES (%s, %s, %s) ON CONFLICT (key) DO UPDATE
SET token = excluded.token, expires_at = excluded.expires_at
WHERE satchel_locks.expires_at <= %s OR satchel_locks.token = excluded.token
"""
