-- damascus_release: drop a claim now instead of waiting out the stale window; the holder's heartbeat or verdict
-- then finds its token gone (claim_lost). No row when the ticket is unknown or not claimed.
-- $1 ticket id.
UPDATE damascus.tickets AS t
SET claimed_at = NULL, claimed_by = NULL, claim_token = NULL,
    -- A call cut short by the release uses no attempt: give back the one its phase transaction counted.
    attempts = CASE WHEN EXISTS (SELECT 1 FROM damascus.cycles AS y
                                 WHERE y.ticket_id = t.id AND y.claim_token = t.claim_token AND y.verdict IS NULL)
                    THEN greatest(t.attempts - 1, 0) ELSE t.attempts END,
    last_verdict = 'released', last_error = format('claim released by %s', session_user), updated_at = now()
WHERE t.id = $1 AND t.claim_token IS NOT NULL
RETURNING t.state
