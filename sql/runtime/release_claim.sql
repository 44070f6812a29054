-- Interrupted cycles (SIGTERM, a cancelled worker or tick, a phase changed under a claim): give the claims back
-- at once, in one transaction however many there are, instead of waiting out the stale window.
-- $1 bigint[] ticket ids, $2 bigint[] claim tokens, $3 bigint[] cycle ids (NULL where none), $4 detail.
WITH c AS (
    SELECT * FROM unnest($1::bigint[], $2::bigint[], $3::bigint[]) AS c(id, token, cycle_id)
), released AS (
    UPDATE damascus.tickets AS t
    SET claimed_at = NULL, claimed_by = NULL, claim_token = NULL,
        -- An interrupted cycle uses no attempt: give back the one its claim counted.
        attempts = greatest(t.attempts - 1, 0),
        last_verdict = 'interrupted', last_error = $4, updated_at = now()
    FROM c
    WHERE t.id = c.id AND t.claim_token = c.token
    RETURNING t.id, t.state
), finished AS (
    UPDATE damascus.cycles AS y
    SET verdict = 'interrupted', detail = $4, verdict_xid = txid_current(), finished_at = now()
    FROM c
    WHERE y.id = c.cycle_id AND y.verdict IS NULL
    RETURNING y.id
)
SELECT released.id, released.state FROM released
