-- damascus_retry: a failed ticket goes back to the state its last phase claims, attempts and rejections reset.
-- No row when the ticket is unknown, not failed, or its last phase is gone (the caller says which).
-- $1 ticket id.
WITH last AS (
    SELECT c.phase FROM damascus.cycles AS c WHERE c.ticket_id = $1 ORDER BY c.id DESC LIMIT 1
), target AS (
    SELECT p.from_state FROM damascus.phases AS p JOIN last ON p.name = last.phase
)
UPDATE damascus.tickets AS t
SET state = target.from_state, attempts = 0, rejections = 0, llm_errors = 0, not_before = NULL,
    claimed_at = NULL, claimed_by = NULL, claim_token = NULL,
    last_verdict = 'retried', last_error = format('retried by %s', session_user), updated_at = now()
FROM target
WHERE t.id = $1 AND t.state = 'failed'
RETURNING t.state
