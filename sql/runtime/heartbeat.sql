-- Lease renewal while LLM calls run: one tiny transaction renews every live claim a worker holds, keeping
-- them out of the stale window. A claim missing from the result was superseded.
-- $1 bigint[] ticket ids, $2 bigint[] their claim tokens (same order).
UPDATE damascus.tickets AS t
SET claimed_at = now()
FROM unnest($1::bigint[], $2::bigint[]) AS c(id, token)
WHERE t.id = c.id AND t.claim_token = c.token
RETURNING t.id
