-- damascus_cancel: any ticket not done or already cancelled becomes cancelled; its claim is dropped, so the
-- verdict of a cycle still running is fenced out as claim_lost. No row when unknown or not cancellable.
-- $1 ticket id.
UPDATE damascus.tickets AS t
SET state = 'cancelled', claimed_at = NULL, claimed_by = NULL, claim_token = NULL, not_before = NULL,
    last_verdict = 'cancelled', last_error = format('cancelled by %s', session_user), updated_at = now()
WHERE t.id = $1 AND t.state NOT IN ('done', 'cancelled')
RETURNING t.state
