-- An approval decision: move the ticket as the phase's rules say and record the decision as a cycle row whose
-- worker is the role that decided. It takes a fencing token like a claim, so any claim token is superseded.
-- $1 ticket id, $2 phase, $3 verdict, $4 note or reasons, $5 state, $6 attempts, $7 rejections, $8 feedback,
-- $9 last_error, $10 attempt number of this decision. Announced with NOTIFY damascus_verdict like a worker's.
WITH moved AS (
    UPDATE damascus.tickets AS t
    SET state = $5, attempts = $6, rejections = $7, feedback = $8,
        llm_errors = 0, not_before = NULL, last_verdict = $3, last_error = $9,
        claimed_at = NULL, claimed_by = NULL, claim_token = NULL, updated_at = now()
    WHERE t.id = $1
    RETURNING t.id, t.state
), cycle AS (
    INSERT INTO damascus.cycles (ticket_id, phase, attempt, worker, claim_token, claim_xid, phase_xid,
                                 verdict_xid, verdict, detail, finished_at)
    SELECT moved.id, $2, $10, session_user, nextval('damascus.claim_tokens'), txid_current(), txid_current(),
           txid_current(), $3, $4, now()
    FROM moved
    RETURNING id
), notified AS (
    SELECT pg_catalog.pg_notify('damascus_verdict',
               pg_catalog.json_build_object('ticket_id', $1, 'phase', $2, 'verdict', $3,
                                            'state', moved.state)::text) AS sent
    FROM moved
)
SELECT (SELECT state FROM moved), (SELECT id FROM cycle), (SELECT count(*) FROM notified)
