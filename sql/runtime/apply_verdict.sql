-- Verdict transaction: move the ticket and clear its claim only if our fencing token still matches;
-- otherwise the cycle is recorded as claim_lost and the ticket is left alone. Where the ticket goes was
-- decided by the phase's rules (damascus-core) from what the phase transaction read under the same claim.
-- $1 ticket id, $2 claim token, $3 cycle id, $4 verdict, $5 detail, $6 retry (transport failure: no move),
-- $7 state, $8 attempts, $9 rejections, $10 feedback, $11 outputs key (phase name) or NULL, $12 output,
-- $13 retry delay in seconds, $14 http status, $15 stop reason, $16 input tokens, $17 output tokens,
-- $18 llm milliseconds, $19 provider, $20 model, $21 prompt sha256, $22 answer text, $23 cache-write tokens,
-- $24 cache-read tokens, $25 the provider's usage object, $26 the remaining figures of its rate-limit headers. The cost comes from the price valid when the cycle
-- started (damascus.cycle_cost), or is NULL with the reason.
-- An applied verdict is announced with NOTIFY damascus_verdict (delivered at commit) for LISTENing clients.
WITH moved AS (
    UPDATE damascus.tickets AS t
    SET state = CASE WHEN $6 THEN t.state ELSE $7 END,
        -- A retry (llm_error) gives back the attempt the claim counted.
        attempts = CASE WHEN $6 THEN greatest(t.attempts - 1, 0) ELSE $8 END,
        rejections = CASE WHEN $6 THEN t.rejections ELSE $9 END,
        feedback = CASE WHEN $6 THEN t.feedback ELSE $10 END,
        llm_errors = CASE WHEN $6 THEN t.llm_errors + 1 ELSE 0 END,
        not_before = CASE WHEN $6 THEN now() + make_interval(secs => $13) ELSE NULL END,
        outputs = CASE WHEN $11::text IS NULL THEN t.outputs
                       ELSE t.outputs || jsonb_build_object($11::text, $12::text) END,
        last_verdict = $4,
        last_error = $5,
        claimed_at = NULL,
        claimed_by = NULL,
        claim_token = NULL,
        updated_at = now()
    WHERE t.id = $1 AND t.claim_token = $2
    RETURNING t.state
), finished AS (
    UPDATE damascus.cycles AS c
    SET verdict = CASE WHEN EXISTS (SELECT 1 FROM moved) THEN $4 ELSE 'claim_lost' END,
        detail = CASE WHEN EXISTS (SELECT 1 FROM moved) THEN $5
                      ELSE format('claim token %s was superseded before the verdict; the late verdict %s was not applied',
                                  $2, $4) END,
        verdict_xid = txid_current(),
        finished_at = now(),
        http_status = $14,
        stop_reason = $15,
        input_tokens = $16,
        output_tokens = $17,
        llm_ms = $18,
        provider = $19,
        model = $20,
        prompt_sha256 = $21,
        answer = $22,
        cache_write_tokens = $23,
        cache_read_tokens = $24,
        usage = $25,
        ratelimit = $26,
        (cost_usd, cost_note) = (SELECT p.cost_usd, p.cost_note
                                 FROM damascus.cycle_cost($19, $20, c.started_at, $16, $17, $23, $24) AS p)
    WHERE c.id = $3
    RETURNING c.verdict, c.phase
), notified AS (
    SELECT pg_catalog.pg_notify('damascus_verdict',
               pg_catalog.json_build_object('ticket_id', $1, 'phase', finished.phase, 'verdict', $4,
                                            'state', moved.state)::text) AS sent
    FROM moved, finished
)
SELECT coalesce((SELECT state FROM moved), (SELECT t.state FROM damascus.tickets AS t WHERE t.id = $1)),
       coalesce((SELECT verdict FROM finished), CASE WHEN EXISTS (SELECT 1 FROM moved) THEN $4 ELSE 'claim_lost' END),
       (SELECT count(*) FROM notified)
