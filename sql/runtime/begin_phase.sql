-- Phase transaction: record the attempt and read the inputs, only while our claim still stands.
-- $1 ticket id, $2 claim token, $3 phase name, $4 worker name, $5 claim transaction id.
WITH ticket AS (
    SELECT t.id, t.title, t.body, t.attempts, t.llm_errors
    FROM damascus.tickets AS t
    WHERE t.id = $1 AND t.claim_token = $2
), cycle AS (
    INSERT INTO damascus.cycles (ticket_id, phase, attempt, worker, claim_token, claim_xid, phase_xid)
    SELECT ticket.id, $3, ticket.attempts + 1, $4, $2, $5, txid_current()
    FROM ticket
    RETURNING id
)
SELECT cycle.id, ticket.title, ticket.body, ticket.attempts, ticket.llm_errors
FROM ticket, cycle
