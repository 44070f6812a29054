-- After a caught ERROR: note it on the ticket (claim kept, so the stale window decides when it is retried)
-- and on the cycle row, creating that row if the phase transaction never committed it. The error used the
-- attempt its claim counted: when that was the phase's last one the ticket is failed with the error as the
-- reason, so a ticket whose phase or verdict transaction always fails is not retried for ever.
-- Announced with NOTIFY damascus_verdict.
-- $1 ticket id, $2 claim token, $3 cycle id or NULL, $4 phase name, $5 worker name, $6 claim xid, $7 message.
WITH ticket AS (
    UPDATE damascus.tickets AS t
    SET last_verdict = 'error', updated_at = now(),
        state = CASE WHEN last.is_last THEN 'failed' ELSE t.state END,
        last_error = CASE WHEN last.is_last
                          THEN format('%s: failed after %s attempts ending without a verdict; the last error: %s',
                                      $4, t.attempts, $7)
                          ELSE $7 END,
        claimed_at = CASE WHEN last.is_last THEN NULL ELSE t.claimed_at END,
        claimed_by = CASE WHEN last.is_last THEN NULL ELSE t.claimed_by END,
        claim_token = CASE WHEN last.is_last THEN NULL ELSE t.claim_token END
    FROM (SELECT coalesce((SELECT t0.attempts >= p.max_attempts
                           FROM damascus.tickets AS t0, damascus.phases AS p
                           WHERE t0.id = $1 AND p.name = $4), false) AS is_last) AS last
    WHERE t.id = $1 AND t.claim_token = $2
    RETURNING t.id, t.attempts, t.state
), updated AS (
    UPDATE damascus.cycles AS c
    SET verdict = 'error', detail = $7, verdict_xid = txid_current(), finished_at = now()
    WHERE c.id = $3
    RETURNING c.id
), inserted AS (
    INSERT INTO damascus.cycles (ticket_id, phase, attempt, worker, claim_token, claim_xid,
                                 verdict, detail, verdict_xid, finished_at)
    -- The claim counted this attempt already.
    SELECT ticket.id, $4, ticket.attempts, $5, $2, $6, 'error', $7, txid_current(), now()
    FROM ticket
    WHERE $3::bigint IS NULL
    RETURNING id
), notified AS (
    SELECT pg_catalog.pg_notify('damascus_verdict',
               pg_catalog.json_build_object('ticket_id', $1, 'phase', $4, 'verdict', 'error',
                                            'state', ticket.state)::text) AS sent
    FROM ticket
)
SELECT (SELECT state FROM ticket), coalesce((SELECT id FROM updated), (SELECT id FROM inserted)),
       (SELECT count(*) FROM notified)
