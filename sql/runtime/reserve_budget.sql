-- Budgets, in the phase transaction, before the call: reserve this cycle's worst case (estimated input tokens +
-- the phase's max_tokens, priced) against every budget of its scope, or, when one cannot take it, hold the cycle
-- back: the claim is given back with no attempt used, the cycle row closed as budget_held, and the budget
-- blocked so no claim in its scope is made meanwhile: for a minute (at most to its period's end) when what is
-- spent leaves no room for this worst case, for two seconds when only the reservations of cycles in flight do
-- (they will end soon and most use far less than they reserved). The budget rows are locked, so concurrent
-- reservations are counted one after another.
-- $1 ticket id, $2 claim token, $3 cycle id, $4 phase, $5 provider, $6 model, $7 estimated input tokens,
-- $8 max_tokens. Returns the reason when held (NULL when reserved).
WITH b AS (
    SELECT x.id, x.scope, x.period, x.limit_usd, x.limit_tokens
    FROM damascus.budgets AS x
    WHERE x.scope IN ('all', $4)
    ORDER BY x.id
    FOR UPDATE
), need AS (
    -- The worst case priced as uncached input and full output (NULL when the model has no price).
    SELECT $7::bigint + $8::bigint AS tokens,
           ($7::integer * p.input_usd_per_mtok + $8::integer * p.output_usd_per_mtok) / 1000000 AS usd
    FROM (SELECT 1) AS one
    LEFT JOIN LATERAL (SELECT r.input_usd_per_mtok, r.output_usd_per_mtok
                       FROM damascus.prices AS r
                       WHERE r.model = $6 AND r.valid_from <= now()
                       ORDER BY r.valid_from DESC
                       LIMIT 1) AS p ON true
), over AS (
    SELECT b.id, b.period,
           (b.limit_usd IS NOT NULL AND (need.usd IS NULL OR u.spent_usd + need.usd > b.limit_usd))
           OR (b.limit_tokens IS NOT NULL AND u.spent_tokens + need.tokens > b.limit_tokens) AS exhausted,
           CASE WHEN b.limit_usd IS NOT NULL AND need.usd IS NULL
                THEN format('budget %s (%s per %s) has a USD limit and model %s has no price in damascus.prices',
                            b.id, b.scope, b.period, $6)
                WHEN b.limit_usd IS NOT NULL AND u.spent_usd + u.reserved_usd + need.usd > b.limit_usd
                THEN format('budget %s (%s per %s): spent %s USD + %s reserved in flight + this cycle''s worst case %s > limit %s USD',
                            b.id, b.scope, b.period, round(u.spent_usd, 6), round(u.reserved_usd, 6),
                            round(need.usd, 6), b.limit_usd)
                ELSE format('budget %s (%s per %s): spent %s tokens + %s reserved in flight + this cycle''s worst case %s > limit %s tokens',
                            b.id, b.scope, b.period, u.spent_tokens, u.reserved_tokens, need.tokens, b.limit_tokens)
           END AS reason
    FROM b
    CROSS JOIN need
    CROSS JOIN LATERAL damascus.budget_usage(b.scope, b.period) AS u
    WHERE (b.limit_usd IS NOT NULL AND (need.usd IS NULL OR u.spent_usd + u.reserved_usd + need.usd > b.limit_usd))
       OR (b.limit_tokens IS NOT NULL AND u.spent_tokens + u.reserved_tokens + need.tokens > b.limit_tokens)
    ORDER BY b.id
    LIMIT 1
), blocked AS (
    UPDATE damascus.budgets AS x
    SET blocked_until = CASE WHEN over.exhausted
                             THEN least(now() + interval '1 minute',
                                        (date_trunc(over.period, now() AT TIME ZONE 'UTC')
                                         + ('1 ' || over.period)::interval) AT TIME ZONE 'UTC')
                             ELSE now() + interval '2 seconds' END,
        blocked_reason = over.reason
    FROM over
    WHERE x.id = over.id
    RETURNING x.id
), released AS (
    UPDATE damascus.tickets AS t
    SET claimed_at = NULL, claimed_by = NULL, claim_token = NULL,
        attempts = greatest(t.attempts - 1, 0),
        last_verdict = 'budget_held', last_error = (SELECT reason FROM over), updated_at = now()
    WHERE t.id = $1 AND t.claim_token = $2 AND EXISTS (SELECT 1 FROM over)
    RETURNING t.id
), closed AS (
    UPDATE damascus.cycles AS c
    SET verdict = 'budget_held', detail = (SELECT reason FROM over), finished_at = now(),
        verdict_xid = txid_current()
    WHERE c.id = $3 AND EXISTS (SELECT 1 FROM over)
    RETURNING c.id
), reserved AS (
    UPDATE damascus.cycles AS c
    SET reserved_usd = need.usd, reserved_tokens = need.tokens
    FROM need
    WHERE c.id = $3 AND NOT EXISTS (SELECT 1 FROM over)
    RETURNING c.id
)
SELECT (SELECT reason FROM over),
       (SELECT count(*) FROM blocked) + (SELECT count(*) FROM released) + (SELECT count(*) FROM closed)
           + (SELECT count(*) FROM reserved)
