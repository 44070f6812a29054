-- Phase transaction: record the attempt and read the inputs and the phase's definition as it is now, only
-- while our claim still stands. The phase columns are NULL when the phase was changed or removed since the claim.
-- $1 ticket id, $2 claim token, $3 phase name, $4 worker name, $5 claim transaction id.
WITH ticket AS (
    SELECT t.id, t.state, t.title, t.body, t.outputs, t.feedback, t.attempts, t.rejections, t.llm_errors
    FROM damascus.tickets AS t
    WHERE t.id = $1 AND t.claim_token = $2
), cycle AS (
    INSERT INTO damascus.cycles (ticket_id, phase, attempt, worker, claim_token, claim_xid, phase_xid)
    SELECT ticket.id, $3, ticket.attempts + 1, $4, $2, $5, txid_current()
    FROM ticket
    RETURNING id
)
SELECT cycle.id, ticket.state, ticket.title, ticket.body, ticket.outputs, ticket.feedback, ticket.attempts,
       ticket.rejections, ticket.llm_errors,
       p.name, p.kind, p.from_state, p.transitions, p.max_attempts, p.max_rejections, p.max_tokens, p.model,
       p.timeout_s, p.system_prompt, p.prompt_template, p.validator, p.verdict_prefix
FROM ticket
CROSS JOIN cycle
LEFT JOIN damascus.phases AS p
       ON p.name = $3 AND p.enabled AND p.kind = 'llm' AND p.from_state = ticket.state
