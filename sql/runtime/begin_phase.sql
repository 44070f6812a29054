-- Phase transaction: record the attempt and read the inputs and the phase's definition as it is now, only
-- while our claim still stands. The phase columns are NULL when the phase was changed or removed since the claim.
-- The claim counted this attempt already (`attempts` is read back as the count before it). Cycle rows of this
-- ticket still open from an earlier claim (its holder died, and the claim went stale) are closed.
-- Also says whether any budget exists (then the cycle's worst case is reserved before the call).
-- $1 ticket id, $2 claim token, $3 phase name, $4 worker name, $5 claim transaction id.
WITH ticket AS (
    SELECT t.id, t.state, t.title, t.body, t.outputs, t.feedback, t.attempts, t.rejections, t.llm_errors
    FROM damascus.tickets AS t
    WHERE t.id = $1 AND t.claim_token = $2
), orphans AS (
    UPDATE damascus.cycles AS o
    SET verdict = 'claim_lost', finished_at = now(),
        detail = format('its claim went stale and was taken over by claim token %s before a verdict', $2)
    FROM ticket
    WHERE o.ticket_id = ticket.id AND o.verdict IS NULL AND o.claim_token <> $2
    RETURNING o.id
), cycle AS (
    INSERT INTO damascus.cycles (ticket_id, phase, attempt, worker, claim_token, claim_xid, phase_xid)
    SELECT ticket.id, $3, ticket.attempts, $4, $2, $5, txid_current()
    FROM ticket
    RETURNING id
)
SELECT cycle.id, ticket.state, ticket.title, ticket.body, ticket.outputs, ticket.feedback, ticket.attempts - 1,
       ticket.rejections, ticket.llm_errors,
       p.name, p.kind, p.from_state, p.transitions, p.max_attempts, p.max_rejections, p.max_tokens, p.model,
       p.timeout_s, p.system_prompt, p.prompt_template, p.validator, p.verdict_prefix,
       EXISTS (SELECT 1 FROM damascus.budgets) AS budgets
FROM ticket
CROSS JOIN cycle
CROSS JOIN (SELECT count(*) FROM orphans) AS c2
LEFT JOIN damascus.phases AS p
       ON p.name = $3 AND p.enabled AND p.kind = 'llm' AND p.from_state = ticket.state
