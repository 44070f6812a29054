-- Claim transaction: take the best claimable ticket and stamp a fresh fencing token.
-- $1 text[] claimable states, $2 integer stale-claim window in minutes (a value, never spliced into the text),
-- $3 text worker name.
WITH candidate AS (
    SELECT t.id
    FROM damascus.tickets AS t
    WHERE t.state = ANY ($1)
      AND (t.claimed_at IS NULL OR t.claimed_at < now() - make_interval(mins => $2))
      AND (t.not_before IS NULL OR t.not_before <= now())
    ORDER BY t.priority DESC, t.created_at, t.id
    LIMIT 1
    FOR UPDATE SKIP LOCKED
)
UPDATE damascus.tickets AS t
SET claimed_at  = now(),
    claimed_by  = $3,
    claim_token = nextval('damascus.claim_tokens'),
    updated_at  = now()
FROM candidate
WHERE t.id = candidate.id
RETURNING t.id, t.state, t.claim_token, txid_current()
