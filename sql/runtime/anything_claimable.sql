-- Whether a claim could find anything: the claim's three index ranges per enabled llm phase, each stopping at
-- its first row, without taking a lock. Lets an idle damascus_tick() return without starting a worker.
-- $1 integer stale-claim window in minutes.
SELECT EXISTS (
    SELECT 1
    FROM damascus.phases AS p
    WHERE p.enabled AND p.kind = 'llm'
      AND NOT EXISTS (SELECT 1 FROM damascus.budgets AS b
                      WHERE b.blocked_until > now() AND b.scope IN ('all', p.name))
      AND (EXISTS (SELECT 1 FROM damascus.tickets AS w
                   WHERE w.state = p.from_state AND w.claimed_at IS NULL AND w.not_before IS NULL)
           OR EXISTS (SELECT 1 FROM damascus.tickets AS w
                      WHERE w.state = p.from_state AND w.claimed_at IS NULL AND w.not_before <= now())
           OR EXISTS (SELECT 1 FROM damascus.tickets AS w
                      WHERE w.state = p.from_state AND w.claimed_at < now() - make_interval(mins => $1)))
)
