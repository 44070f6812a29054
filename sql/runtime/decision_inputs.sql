-- An approval decision reads the ticket (locked, so two decisions cannot race) and the enabled phase that
-- claims its state, if any. Same ticket and phase columns, in the same order, as begin_phase.sql.
-- $1 ticket id.
SELECT NULL::bigint, t.state, t.title, t.body, t.outputs, t.feedback, t.attempts, t.rejections, t.llm_errors,
       p.name, p.kind, p.from_state, p.transitions, p.max_attempts, p.max_rejections, p.max_tokens, p.model,
       p.timeout_s, p.system_prompt, p.prompt_template, p.validator, p.verdict_prefix,
       t.claim_token IS NOT NULL
FROM damascus.tickets AS t
LEFT JOIN damascus.phases AS p ON p.from_state = t.state AND p.enabled
WHERE t.id = $1
FOR UPDATE OF t
