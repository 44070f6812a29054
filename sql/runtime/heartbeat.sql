-- Lease renewal while the LLM call runs: a tiny transaction of its own that keeps a live claim out of
-- the stale window. No row means the claim was superseded.
-- $1 ticket id, $2 claim token.
UPDATE damascus.tickets
SET claimed_at = now()
WHERE id = $1 AND claim_token = $2
RETURNING id
