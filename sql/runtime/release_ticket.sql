-- damascus_release: drop a claim now instead of waiting out the stale window; the holder's heartbeat or verdict
-- then finds its token gone (claim_lost). No row when the ticket is unknown or not claimed.
-- $1 ticket id.
UPDATE damascus.tickets AS t
SET claimed_at = NULL, claimed_by = NULL, claim_token = NULL,
    -- A cycle cut short by the release uses no attempt: give back the one its claim counted.
    attempts = greatest(t.attempts - 1, 0),
    last_verdict = 'released', last_error = format('claim released by %s', session_user), updated_at = now()
WHERE t.id = $1 AND t.claim_token IS NOT NULL
RETURNING t.state
