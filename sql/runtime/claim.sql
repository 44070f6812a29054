-- Claim transaction: take the best claimable tickets (at most $3) among the states the enabled llm phases claim,
-- and stamp each with a fresh fencing token. One index scan per phase (tickets_claim_order) that stops after its
-- first $3 claimable tickets, then the best of those few: no sort of the waiting tickets, whatever the queue
-- depth. A worker with room for several calls claims them in one transaction; a tick claims one.
-- $1 integer stale-claim window in minutes (a value, never spliced into the text), $2 text worker name,
-- $3 integer how many tickets at most.
WITH candidate AS (
    SELECT c.id, p.name AS phase
    FROM damascus.phases AS p
    CROSS JOIN LATERAL (
        SELECT t.id, t.priority, t.created_at
        FROM damascus.tickets AS t
        WHERE t.state = p.from_state
          AND (t.claimed_at IS NULL OR t.claimed_at < now() - make_interval(mins => $1))
          AND (t.not_before IS NULL OR t.not_before <= now())
        ORDER BY t.priority DESC, t.created_at, t.id
        LIMIT $3
        FOR UPDATE OF t SKIP LOCKED
    ) AS c
    WHERE p.enabled AND p.kind = 'llm'
    ORDER BY c.priority DESC, c.created_at, c.id
    LIMIT $3
)
UPDATE damascus.tickets AS t
SET claimed_at  = now(),
    claimed_by  = $2,
    claim_token = nextval('damascus.claim_tokens'),
    updated_at  = now()
FROM candidate
WHERE t.id = candidate.id
RETURNING t.id, t.state, candidate.phase, t.claim_token, txid_current()
