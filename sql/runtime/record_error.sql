-- After a caught ERROR: note it on the ticket (claim kept, so the stale window decides when it is retried)
-- and on the cycle row, creating that row if the phase transaction never committed it.
-- $1 ticket id, $2 claim token, $3 cycle id or NULL, $4 phase name, $5 worker name, $6 claim xid, $7 message.
WITH ticket AS (
    UPDATE damascus.tickets AS t
    SET last_verdict = 'error', last_error = $7, updated_at = now()
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
    SELECT ticket.id, $4, ticket.attempts + 1, $5, $2, $6, 'error', $7, txid_current(), now()
    FROM ticket
    WHERE $3::bigint IS NULL
    RETURNING id
)
SELECT (SELECT state FROM ticket), coalesce((SELECT id FROM updated), (SELECT id FROM inserted))
