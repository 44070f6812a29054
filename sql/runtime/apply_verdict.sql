-- Verdict transaction: move the ticket and clear its claim only if our fencing token still matches;
-- otherwise the cycle is recorded as claim_lost and the ticket is left alone. Where the ticket goes was
-- decided by the phase's rules (damascus-core) from what the phase transaction read under the same claim.
-- $1 ticket id, $2 claim token, $3 cycle id, $4 verdict, $5 detail, $6 retry (transport failure: no move),
-- $7 state, $8 attempts, $9 rejections, $10 feedback, $11 outputs key (phase name) or NULL, $12 output,
-- $13 retry delay in seconds, $14 http status, $15 stop reason, $16 input tokens, $17 output tokens,
-- $18 llm milliseconds, $19 provider, $20 model, $21 prompt sha256, $22 answer text, $23 cache-write tokens,
-- $24 cache-read tokens, $25 the provider's usage object, $26 the remaining figures of its rate-limit headers.
-- The cost comes from the price (damascus.prices) valid when the cycle started, or is NULL with the reason. Each
-- provider counts its own way: Anthropic's input_tokens exclude the cached ones (cache writes and reads come on
-- top), OpenAI's prompt_tokens include them (the uncached part is prompt_tokens - cached_tokens). Written out here
-- rather than in a SQL function: such a call cost a fifth of a millisecond per verdict.
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
        (cost_usd, cost_note) = (
            SELECT CASE WHEN $16::integer IS NULL OR $17::integer IS NULL OR p.model IS NULL THEN NULL
                        WHEN $19 = 'openai' THEN
                            (($16 - coalesce($24::integer, 0)) * p.input_usd_per_mtok
                             + coalesce($24::integer, 0) * coalesce(p.cache_read_usd_per_mtok, p.input_usd_per_mtok)
                             + $17 * p.output_usd_per_mtok) / 1000000
                        ELSE
                            ($16 * p.input_usd_per_mtok
                             + coalesce($23::integer, 0) * coalesce(p.cache_write_usd_per_mtok, p.input_usd_per_mtok)
                             + coalesce($24::integer, 0) * coalesce(p.cache_read_usd_per_mtok, p.input_usd_per_mtok)
                             + $17 * p.output_usd_per_mtok) / 1000000
                   END,
                   CASE WHEN $16::integer IS NULL OR $17::integer IS NULL THEN 'the provider reported no usage'
                        WHEN p.model IS NULL
                        THEN format('no price for model %s at %s (damascus.prices)', $20, c.started_at)
                   END
            FROM (SELECT 1) AS one
            LEFT JOIN LATERAL (SELECT r.model, r.input_usd_per_mtok, r.output_usd_per_mtok,
                                      r.cache_write_usd_per_mtok, r.cache_read_usd_per_mtok
                               FROM damascus.prices AS r
                               WHERE r.model = $20 AND r.valid_from <= c.started_at
                               ORDER BY r.valid_from DESC
                               LIMIT 1) AS p ON true)
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
