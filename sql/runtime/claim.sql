-- Claim transaction: take the best claimable tickets (at most $3) among the states the enabled llm phases claim,
-- and stamp each with a fresh fencing token. One index scan per phase (tickets_claim_order) that stops after its
-- first $3 claimable tickets, then the best of those few: no sort of the waiting tickets, whatever the queue
-- depth. A worker with room for several calls claims them in one transaction; a tick claims one.
-- $1 integer stale-claim window in minutes (a value, never spliced into the text), $2 text worker name,
-- $3 integer how many tickets at most.
-- Lock order: the target table (tickets) is named before the subquery that reads damascus.phases, so a
-- statement being parsed afresh locks tickets first, as DROP EXTENSION does; phases first deadlocked with it.
UPDATE damascus.tickets AS t
SET claimed_at  = now(),
    claimed_by  = $2,
    claim_token = nextval('damascus.claim_tokens'),
    updated_at  = now()
FROM (
    SELECT c.id, p.name AS phase
    FROM damascus.phases AS p
    CROSS JOIN LATERAL (
        SELECT w.id, w.priority, w.created_at
        FROM damascus.tickets AS w
        WHERE w.state = p.from_state
          AND (w.claimed_at IS NULL OR w.claimed_at < now() - make_interval(mins => $1))
          AND (w.not_before IS NULL OR w.not_before <= now())
        ORDER BY w.priority DESC, w.created_at, w.id
        LIMIT $3
        FOR UPDATE OF w SKIP LOCKED
    ) AS c
    WHERE p.enabled AND p.kind = 'llm'
    ORDER BY c.priority DESC, c.created_at, c.id
    LIMIT $3
) AS candidate
WHERE t.id = candidate.id
RETURNING t.id, t.state, candidate.phase, t.claim_token, txid_current()
