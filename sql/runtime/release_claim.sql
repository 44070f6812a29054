-- Interrupted cycle (SIGTERM or a cancelled tick): give the claim back at once instead of waiting out the stale window.
-- $1 ticket id, $2 claim token, $3 cycle id or NULL, $4 detail.
WITH released AS (
    UPDATE damascus.tickets AS t
    SET claimed_at = NULL, claimed_by = NULL, claim_token = NULL,
        last_verdict = 'interrupted', last_error = $4, updated_at = now()
    WHERE t.id = $1 AND t.claim_token = $2
    RETURNING t.state
), finished AS (
    UPDATE damascus.cycles AS c
    SET verdict = 'interrupted', detail = $4, verdict_xid = txid_current(), finished_at = now()
    WHERE c.id = $3
    RETURNING c.id
)
SELECT (SELECT state FROM released), (SELECT count(*) FROM finished)
