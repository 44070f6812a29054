-- Verdict transaction: move the ticket and clear its claim only if our fencing token still matches;
-- otherwise the cycle is recorded as claim_lost and the ticket is left alone.
-- $1 ticket id, $2 claim token, $3 effect ('accept' | 'reject' | 'retry'), $4 phase name, $5 output text,
-- $6 accept state, $7 failed state, $8 retry delay in seconds, $9 verdict, $10 detail, $11 cycle id,
-- $12 http status, $13 stop reason, $14 input tokens, $15 output tokens, $16 llm milliseconds.
WITH moved AS (
    UPDATE damascus.tickets AS t
    SET state = CASE $3
                    WHEN 'accept' THEN $6
                    WHEN 'reject' THEN CASE WHEN t.attempts + 1 >= t.max_attempts THEN $7 ELSE t.state END
                    ELSE t.state
                END,
        attempts = CASE $3 WHEN 'accept' THEN 0 WHEN 'reject' THEN t.attempts + 1 ELSE t.attempts END,
        llm_errors = CASE $3 WHEN 'retry' THEN t.llm_errors + 1 ELSE 0 END,
        not_before = CASE $3 WHEN 'retry' THEN now() + make_interval(secs => $8) ELSE NULL END,
        outputs = CASE $3 WHEN 'accept' THEN t.outputs || jsonb_build_object($4::text, $5::text) ELSE t.outputs END,
        last_verdict = $9,
        last_error = $10,
        claimed_at = NULL,
        claimed_by = NULL,
        claim_token = NULL,
        updated_at = now()
    WHERE t.id = $1 AND t.claim_token = $2
    RETURNING t.state
), finished AS (
    UPDATE damascus.cycles AS c
    SET verdict = CASE WHEN EXISTS (SELECT 1 FROM moved) THEN $9 ELSE 'claim_lost' END,
        detail = CASE WHEN EXISTS (SELECT 1 FROM moved) THEN $10
                      ELSE format('claim token %s was superseded before the verdict; the late verdict %s was not applied',
                                  $2, $9) END,
        verdict_xid = txid_current(),
        finished_at = now(),
        http_status = $12,
        stop_reason = $13,
        input_tokens = $14,
        output_tokens = $15,
        llm_ms = $16
    WHERE c.id = $11
    RETURNING c.verdict
)
SELECT coalesce((SELECT state FROM moved), (SELECT t.state FROM damascus.tickets AS t WHERE t.id = $1)),
       coalesce((SELECT verdict FROM finished), CASE WHEN EXISTS (SELECT 1 FROM moved) THEN $9 ELSE 'claim_lost' END)
