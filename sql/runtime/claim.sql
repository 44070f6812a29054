-- Claim transaction: take the best claimable tickets (at most $3) among the states the enabled llm phases claim,
-- and stamp each with a fresh fencing token.
-- Per phase, three short index scans, each of which stops after $3 claimable tickets whatever the table holds:
--   ready tickets (never claimed, no backoff) in priority order (tickets_claim_ready);
--   tickets whose backoff has ended, earliest first (tickets_claim_delayed: tickets still backing off are
--   past the range, not filtered one by one);
--   claims gone stale, oldest first (tickets_claim_held: live claims are past the range).
-- Then the best $3 of those few by priority and age: no sort of the waiting tickets, and no scan over
-- tickets that are claimed or backing off, however many there are.
-- $1 integer stale-claim window in minutes (a value, never spliced into the text), $2 text worker name,
-- $3 integer how many tickets at most.
-- The chosen ids are collected into an array first, so the update finds each by primary key whatever plan
-- the statement gets (a join to the subquery could scan the primary key from its start).
-- Lock order: the target table (tickets) is named before the subquery that reads damascus.phases, so a
-- statement being parsed afresh locks tickets first, as DROP EXTENSION does; phases first deadlocked with it.
UPDATE damascus.tickets AS t
SET claimed_at  = now(),
    claimed_by  = $2,
    claim_token = nextval('damascus.claim_tokens'),
    -- The attempt is counted here, before the call, so a ticket whose cycles never reach a verdict (its
    -- worker dies during each call) still runs out of attempts; a verdict that uses none gives it back.
    attempts    = t.attempts + 1,
    updated_at  = now()
WHERE t.id = ANY (ARRAY(
    SELECT c.id
    FROM damascus.phases AS p
    CROSS JOIN LATERAL (
        SELECT * FROM (
            SELECT w.id, w.priority, w.created_at
            FROM damascus.tickets AS w
            WHERE w.state = p.from_state AND w.claimed_at IS NULL AND w.not_before IS NULL
            ORDER BY w.priority DESC, w.created_at, w.id
            LIMIT $3
            FOR UPDATE OF w SKIP LOCKED
        ) AS ready
        UNION ALL
        SELECT * FROM (
            SELECT w.id, w.priority, w.created_at
            FROM damascus.tickets AS w
            WHERE w.state = p.from_state AND w.claimed_at IS NULL AND w.not_before <= now()
            ORDER BY w.not_before
            LIMIT $3
            FOR UPDATE OF w SKIP LOCKED
        ) AS due
        UNION ALL
        SELECT * FROM (
            SELECT w.id, w.priority, w.created_at
            FROM damascus.tickets AS w
            WHERE w.state = p.from_state AND w.claimed_at < now() - make_interval(mins => $1)
            ORDER BY w.claimed_at
            LIMIT $3
            FOR UPDATE OF w SKIP LOCKED
        ) AS stale
    ) AS c
    WHERE p.enabled AND p.kind = 'llm'
      -- A budget that could not take a cycle holds back claims in its scope for a while.
      AND NOT EXISTS (SELECT 1 FROM damascus.budgets AS b
                      WHERE b.blocked_until > now() AND b.scope IN ('all', p.name))
    ORDER BY c.priority DESC, c.created_at, c.id
    LIMIT $3
))
RETURNING t.id, t.state,
    (SELECT p.name FROM damascus.phases AS p WHERE p.from_state = t.state AND p.enabled AND p.kind = 'llm'),
    t.claim_token, txid_current()
