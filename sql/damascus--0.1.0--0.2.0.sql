-- damascus 0.1.0 -> 0.2.0 (ALTER EXTENSION damascus UPDATE). Once 0.2.0 is released this file is never edited;
-- tests/upgrade.rs holds the upgraded schema equal to a fresh 0.2.0 install.
-- Runs while tickets are in flight: cycles hold no lock across an LLM call, so the ALTERs below wait at most
-- for one short cycle transaction.
\echo Use "ALTER EXTENSION damascus UPDATE" to load this file. \quit

-- Tickets: max_attempts moves to the phase; rejections and feedback come with the review loop.
ALTER TABLE damascus.tickets DROP COLUMN max_attempts;
ALTER TABLE damascus.tickets
    ADD COLUMN rejections integer NOT NULL DEFAULT 0 CHECK (rejections >= 0),
    ADD COLUMN feedback   text;
COMMENT ON TABLE damascus.tickets IS 'Work items; each moves through the phases (new -> specified ...) one cycle at a time';
COMMENT ON COLUMN damascus.tickets.state IS 'Where the ticket is: a state some phase claims (new, specified, implemented ...) or done, failed, cancelled';
COMMENT ON COLUMN damascus.tickets.attempts IS 'Refused answers (wrong or truncated) in the current phase; the phase''s max_attempts fails the ticket';
COMMENT ON COLUMN damascus.tickets.rejections IS 'Rejections (verdict rejected, by a review or an approval) since submission or the last retry';
COMMENT ON COLUMN damascus.tickets.feedback IS 'Reasons of the latest rejection, offered to the next prompt as {{feedback}}';

-- Cycles keep what was asked and answered.
ALTER TABLE damascus.cycles
    ADD COLUMN provider      text,
    ADD COLUMN model         text,
    ADD COLUMN prompt_sha256 text,
    ADD COLUMN answer        text;
COMMENT ON COLUMN damascus.cycles.verdict IS 'The phase''s verdict (spec_ok, impl_wrong, approved, rejected ...) or llm_error, claim_lost, error, interrupted; NULL while running';
COMMENT ON COLUMN damascus.cycles.detail IS 'Why: the missing section, the rejection''s reasons, an approval''s note, the HTTP error, the lost claim, the caught ERROR';
COMMENT ON COLUMN damascus.cycles.worker IS 'The worker or tick that ran the cycle, or the role (session_user) that approved or rejected';
COMMENT ON COLUMN damascus.cycles.provider IS 'Wire format of the call: anthropic or openai; NULL for an approval decision';
COMMENT ON COLUMN damascus.cycles.model IS 'Model the request named';
COMMENT ON COLUMN damascus.cycles.prompt_sha256 IS 'sha256 (hex) of the request body sent to the LLM, so two cycles asked the same thing exactly when these match';
COMMENT ON COLUMN damascus.cycles.answer IS 'The model''s raw answer text, accepted or not';

-- The pipeline as rows.
CREATE TABLE damascus.phases (
    name            text        PRIMARY KEY CHECK (name ~ '^[a-z_][a-z0-9_]{0,62}$'),
    position        integer     NOT NULL,
    kind            text        NOT NULL DEFAULT 'llm' CHECK (kind IN ('llm', 'approval')),
    from_state      text        NOT NULL CHECK (length(from_state) BETWEEN 1 AND 63
                                                AND from_state NOT IN ('done', 'failed', 'cancelled')),
    transitions     jsonb       NOT NULL DEFAULT '{}' CHECK (jsonb_typeof(transitions) = 'object'),
    max_attempts    integer     NOT NULL DEFAULT 3 CHECK (max_attempts >= 1),
    max_rejections  integer     NOT NULL DEFAULT 3 CHECK (max_rejections >= 1),
    max_tokens      integer     NOT NULL DEFAULT 4000,
    model           text,
    timeout_s       integer     CHECK (timeout_s BETWEEN 1 AND 3600),
    system_prompt   text        NOT NULL DEFAULT '',
    prompt_template text        NOT NULL DEFAULT 'Ticket #{{id}}: {{title}}

{{body}}',
    validator       jsonb       NOT NULL DEFAULT '{"kind": "none"}',
    verdict_prefix  text        CHECK (verdict_prefix ~ '^[a-z_][a-z0-9_]{0,40}$'),
    enabled         boolean     NOT NULL DEFAULT true,
    updated_at      timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT phases_one_per_state EXCLUDE USING btree (from_state WITH =) WHERE (enabled)
        DEFERRABLE INITIALLY DEFERRED
);
COMMENT ON TABLE damascus.phases IS 'The pipeline: one row per phase; INSERT, UPDATE or DELETE here takes effect at the next claim';
COMMENT ON COLUMN damascus.phases.name IS 'Phase name; its accepted output is stored in tickets.outputs under this key';
COMMENT ON COLUMN damascus.phases.position IS 'Order in which the phases are listed';
COMMENT ON COLUMN damascus.phases.kind IS 'llm (a worker calls the model) or approval (waits for damascus_approve or damascus_reject)';
COMMENT ON COLUMN damascus.phases.from_state IS 'The ticket state this phase claims; at most one enabled phase per state';
COMMENT ON COLUMN damascus.phases.transitions IS 'Verdict -> next state, e.g. {"spec_ok": "specified"}; other verdicts count an attempt';
COMMENT ON COLUMN damascus.phases.max_attempts IS 'Refused answers (wrong, truncated) in this phase before the ticket fails';
COMMENT ON COLUMN damascus.phases.max_rejections IS 'A rejected verdict from this phase fails the ticket once its rejections reach this number';
COMMENT ON COLUMN damascus.phases.max_tokens IS 'max_tokens sent with each request; at least 1, and at least 3000 for refine_spec';
COMMENT ON COLUMN damascus.phases.model IS 'Model of this phase''s requests; NULL means damascus.llm_model';
COMMENT ON COLUMN damascus.phases.timeout_s IS 'Seconds one call may take; NULL means damascus.llm_timeout';
COMMENT ON COLUMN damascus.phases.system_prompt IS 'System prompt sent with every request of the phase';
COMMENT ON COLUMN damascus.phases.prompt_template IS 'User message: {{id}}, {{title}}, {{body}}, {{outputs.<phase>}}, {{feedback}}, {{attempt}} are filled in';
COMMENT ON COLUMN damascus.phases.validator IS 'How answers are judged: {"kind": "sections" | "diff" | "verdict_line" | "none", ...}';
COMMENT ON COLUMN damascus.phases.verdict_prefix IS 'Verdicts are <prefix>_ok, <prefix>_wrong, <prefix>_truncated; NULL means the phase name';
COMMENT ON COLUMN damascus.phases.enabled IS 'A disabled phase claims nothing';
COMMENT ON COLUMN damascus.phases.updated_at IS 'When the row was last written';
COMMENT ON CONSTRAINT phases_one_per_state ON damascus.phases IS
    'Two enabled phases may not claim the same state; checked at commit so a pipeline can be rearranged in one transaction';
REVOKE ALL ON damascus.phases FROM PUBLIC;

-- The functions 0.2.0 adds (as cargo pgrx schema generates them).
CREATE FUNCTION "damascus_approve"(
	"ticket_id" bigint,
	"note" TEXT DEFAULT NULL
) RETURNS TEXT
VOLATILE SECURITY DEFINER PARALLEL UNSAFE
SET search_path TO pg_catalog, pg_temp
LANGUAGE c
AS 'MODULE_PATHNAME', 'damascus_approve_wrapper';

CREATE FUNCTION "damascus_reject"(
	"ticket_id" bigint,
	"reasons" TEXT
) RETURNS TEXT
VOLATILE SECURITY DEFINER PARALLEL UNSAFE
SET search_path TO pg_catalog, pg_temp
LANGUAGE c
AS 'MODULE_PATHNAME', 'damascus_reject_wrapper';

CREATE FUNCTION "damascus_retry"(
	"ticket_id" bigint
) RETURNS TEXT
VOLATILE SECURITY DEFINER PARALLEL UNSAFE
SET search_path TO pg_catalog, pg_temp
LANGUAGE c
AS 'MODULE_PATHNAME', 'damascus_retry_wrapper';

CREATE FUNCTION "damascus_cancel"(
	"ticket_id" bigint
) RETURNS TEXT
VOLATILE SECURITY DEFINER PARALLEL UNSAFE
SET search_path TO pg_catalog, pg_temp
LANGUAGE c
AS 'MODULE_PATHNAME', 'damascus_cancel_wrapper';

CREATE FUNCTION "damascus_release"(
	"ticket_id" bigint
) RETURNS TEXT
VOLATILE SECURITY DEFINER PARALLEL UNSAFE
SET search_path TO pg_catalog, pg_temp
LANGUAGE c
AS 'MODULE_PATHNAME', 'damascus_release_wrapper';

CREATE FUNCTION damascus."check_phase"(
	"name" TEXT,
	"kind" TEXT,
	"max_tokens" INT,
	"prompt_template" TEXT,
	"validator" jsonb,
	"transitions" jsonb
) RETURNS void
IMMUTABLE STRICT PARALLEL SAFE
LANGUAGE c
AS 'MODULE_PATHNAME', 'check_phase_wrapper';

-- The phase checks and the default pipeline, as sql/finalize.sql has them.
CREATE FUNCTION damascus.check_phase_row() RETURNS trigger
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    PERFORM damascus.check_phase(NEW.name, NEW.kind, NEW.max_tokens, NEW.prompt_template,
                                 NEW.validator, NEW.transitions);
    NEW.updated_at := now();
    RETURN NEW;
END
$$;
COMMENT ON FUNCTION damascus.check_phase_row() IS
    'Trigger: refuses a phase row whose template, validator, transitions or max_tokens no worker could run';

CREATE TRIGGER phases_check_row BEFORE INSERT OR UPDATE ON damascus.phases
    FOR EACH ROW EXECUTE FUNCTION damascus.check_phase_row();
COMMENT ON TRIGGER phases_check_row ON damascus.phases IS
    'Refuses, when written, a phase row no worker could run (SQLSTATE 22023)';

-- Cross-row rule, checked at commit so a pipeline can be rearranged in one transaction: every transition
-- of an enabled phase leads to a terminal state or to a state an enabled phase claims.
CREATE FUNCTION damascus.check_pipeline() RETURNS trigger
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    bad record;
BEGIN
    SELECT p.name, t.key AS verdict, t.value #>> '{}' AS target INTO bad
    FROM damascus.phases AS p, jsonb_each(p.transitions) AS t
    WHERE p.enabled
      AND (jsonb_typeof(t.value) <> 'string'
           OR NOT (t.value #>> '{}' IN ('done', 'failed', 'cancelled')
                   OR EXISTS (SELECT 1 FROM damascus.phases AS q
                              WHERE q.enabled AND q.from_state = t.value #>> '{}')))
    ORDER BY p.position, p.name, t.key
    LIMIT 1;
    IF FOUND THEN
        RAISE EXCEPTION 'damascus: phase % sends verdict % to state %, which no enabled phase claims',
                bad.name, bad.verdict, coalesce(bad.target, 'NULL')
            USING ERRCODE = 'check_violation',
                  DETAIL = 'A transition must lead to done, failed, cancelled or the from_state of an enabled phase.',
                  HINT = 'Add or enable a phase whose from_state is that state, or change the transition; several changes can go in one transaction, checked at COMMIT.';
    END IF;
    RETURN NULL;
END
$$;
COMMENT ON FUNCTION damascus.check_pipeline() IS
    'Constraint trigger (at commit): refuses a pipeline with a transition to a state no enabled phase claims';

CREATE CONSTRAINT TRIGGER phases_check_pipeline AFTER INSERT OR UPDATE OR DELETE ON damascus.phases
    DEFERRABLE INITIALLY DEFERRED FOR EACH ROW EXECUTE FUNCTION damascus.check_pipeline();
COMMENT ON TRIGGER phases_check_pipeline ON damascus.phases IS
    'At commit, refuses a pipeline whose transitions lead to a state no enabled phase claims (SQLSTATE 23514)';

-- The default pipeline: refine_spec -> implement -> review.
INSERT INTO damascus.phases (name, position, kind, from_state, transitions, max_attempts, max_rejections,
                             max_tokens, system_prompt, prompt_template, validator, verdict_prefix)
VALUES
('refine_spec', 10, 'llm', 'new', '{"spec_ok": "specified"}', 3, 3, 4000,
 'You turn a software ticket into an implementation spec. Answer with Markdown only, using exactly these level-2 sections in this order: ## Summary, ## Context, ## Acceptance Criteria (a numbered list), ## TDD Plan, ## Out of Scope, ## Test Command (one shell command that runs the tests). Every section must have content. Do not wrap the whole answer in a code fence.',
 E'Ticket #{{id}}: {{title}}\n\n{{body}}',
 '{"kind": "sections", "sections": [{"heading": "Summary"}, {"heading": "Context"}, {"heading": "Acceptance Criteria", "numbered": true}, {"heading": "TDD Plan"}, {"heading": "Out of Scope"}, {"heading": "Test Command"}]}',
 'spec'),
('implement', 20, 'llm', 'specified', '{"impl_ok": "implemented"}', 3, 3, 8000,
 'You implement a software change from its spec. Answer with one short paragraph, then the complete change as a unified diff in one fenced ```diff block (--- a/path, +++ b/path, @@ hunks with correct line counts). If review feedback is given, address every point of it.',
 E'Ticket #{{id}}: {{title}}\n\n{{body}}\n\n# Spec\n\n{{outputs.refine_spec}}\n\n# Review feedback to address (empty on the first attempt)\n\n{{feedback}}',
 '{"kind": "diff"}',
 'impl'),
('review', 30, 'llm', 'implemented', '{"approved": "done", "rejected": "specified"}', 3, 3, 2000,
 'You review a change against its spec. Explain any problem you find, then end your answer with exactly one last line: VERDICT: APPROVE or VERDICT: REJECT. A REJECT lists its reasons above the verdict line.',
 E'Ticket #{{id}}: {{title}}\n\n{{body}}\n\n# Spec\n\n{{outputs.refine_spec}}\n\n# Change\n\n{{outputs.implement}}',
 '{"kind": "verdict_line"}',
 'review');

COMMENT ON FUNCTION damascus_approve(bigint, text) IS
    'Approves a ticket waiting at an approval phase: applies its transition for verdict approved; returns the new state';
COMMENT ON FUNCTION damascus_reject(bigint, text) IS
    'Rejects a ticket waiting at an approval phase: reasons become feedback, transition rejected applies; returns the new state';
COMMENT ON FUNCTION damascus_retry(bigint) IS
    'Sends a failed ticket back to the state its last phase claims, with attempts and rejections reset; returns that state';
COMMENT ON FUNCTION damascus_cancel(bigint) IS
    'Cancels a ticket that is not done or cancelled; drops its claim, so a running cycle''s verdict becomes claim_lost';
COMMENT ON FUNCTION damascus_release(bigint) IS
    'Drops a ticket''s claim now, so it can be claimed again; the running cycle''s verdict becomes claim_lost';
COMMENT ON FUNCTION damascus.check_phase(text, text, integer, text, jsonb, jsonb) IS
    'Raises an error (SQLSTATE 22023) if a phase definition could not be run; used by the phases trigger';

REVOKE EXECUTE ON FUNCTION damascus_approve(bigint, text) FROM PUBLIC;
REVOKE EXECUTE ON FUNCTION damascus_reject(bigint, text) FROM PUBLIC;
REVOKE EXECUTE ON FUNCTION damascus_retry(bigint) FROM PUBLIC;
REVOKE EXECUTE ON FUNCTION damascus_cancel(bigint) FROM PUBLIC;
REVOKE EXECUTE ON FUNCTION damascus_release(bigint) FROM PUBLIC;
REVOKE EXECUTE ON FUNCTION damascus.check_phase(text, text, integer, text, jsonb, jsonb) FROM PUBLIC;
REVOKE EXECUTE ON FUNCTION damascus.check_phase_row() FROM PUBLIC;
REVOKE EXECUTE ON FUNCTION damascus.check_pipeline() FROM PUBLIC;

DROP INDEX damascus.tickets_claim_order;
-- The claim reads three short ranges per phase, so tickets that are claimed or backing off are never scanned
-- past one by one, however many there are.
CREATE INDEX tickets_claim_ready ON damascus.tickets (state, priority DESC, created_at, id)
    WHERE claimed_at IS NULL AND not_before IS NULL;
COMMENT ON INDEX damascus.tickets_claim_ready IS 'Claim: unclaimed tickets with no backoff, by state, then priority and age';
CREATE INDEX tickets_claim_delayed ON damascus.tickets (state, not_before)
    WHERE claimed_at IS NULL AND not_before IS NOT NULL;
COMMENT ON INDEX damascus.tickets_claim_delayed IS 'Claim: unclaimed tickets in backoff, by state and the time their backoff ends';
CREATE INDEX tickets_claim_held ON damascus.tickets (state, claimed_at)
    WHERE claimed_at IS NOT NULL;
COMMENT ON INDEX damascus.tickets_claim_held IS 'Claim: claimed tickets by state and claim time, to find claims gone stale';

-- 0.2.0 adds the roles damascus_user and damascus_admin.
-- Two roles for the two kinds of user (roles are cluster-wide, so they may exist from another database).
DO $roles$
BEGIN
    IF NOT EXISTS (SELECT FROM pg_catalog.pg_roles WHERE rolname = 'damascus_user') THEN
        CREATE ROLE damascus_user NOLOGIN;
    END IF;
    IF NOT EXISTS (SELECT FROM pg_catalog.pg_roles WHERE rolname = 'damascus_admin') THEN
        CREATE ROLE damascus_admin NOLOGIN;
    END IF;
END
$roles$;
COMMENT ON ROLE damascus_user IS 'damascus: may submit and cancel tickets and read tickets and cycles';
COMMENT ON ROLE damascus_admin IS 'damascus: what damascus_user may, and change phases, tick, retry, release, approve and reject';
GRANT damascus_user TO damascus_admin;
GRANT USAGE ON SCHEMA damascus TO damascus_user;
GRANT SELECT ON damascus.tickets, damascus.cycles, damascus.phases TO damascus_user;
GRANT EXECUTE ON FUNCTION damascus_submit(text, text, integer) TO damascus_user;
GRANT EXECUTE ON FUNCTION damascus_cancel(bigint) TO damascus_user;
GRANT INSERT, UPDATE, DELETE ON damascus.phases TO damascus_admin;
GRANT EXECUTE ON FUNCTION damascus_tick() TO damascus_admin;
GRANT EXECUTE ON FUNCTION damascus_retry(bigint) TO damascus_admin;
GRANT EXECUTE ON FUNCTION damascus_release(bigint) TO damascus_admin;
GRANT EXECUTE ON FUNCTION damascus_approve(bigint, text) TO damascus_admin;
GRANT EXECUTE ON FUNCTION damascus_reject(bigint, text) TO damascus_admin;


-- damascus_tick takes max_cycles and max_seconds; the functions behind wake-up at commit and worker_status.
DROP FUNCTION damascus_tick();
CREATE  FUNCTION "damascus_tick"(
	"max_cycles" INT DEFAULT 1, /* Option < i32 > */
	"max_seconds" INT DEFAULT NULL /* Option < i32 > */
) RETURNS TABLE (
	"ticket_id" bigint,  /* i64 */
	"phase" TEXT,  /* String */
	"verdict" TEXT,  /* String */
	"state" TEXT  /* Option < String > */
)
VOLATILE PARALLEL UNSAFE
LANGUAGE c /* Rust */
AS 'MODULE_PATHNAME', 'damascus_tick_cycles_wrapper';
CREATE  FUNCTION damascus."worker_counters"() RETURNS TABLE (
	"pid" INT,  /* i32 */
	"cycles_done" bigint  /* i64 */
)
STRICT VOLATILE PARALLEL SAFE
LANGUAGE c /* Rust */
AS 'MODULE_PATHNAME', 'worker_counters_wrapper';
CREATE FUNCTION damascus."wake_workers"()
	RETURNS TRIGGER
	LANGUAGE c
	AS 'MODULE_PATHNAME', 'wake_workers_wrapper';
COMMENT ON FUNCTION damascus_tick(integer, integer) IS
    'Runs up to max_cycles cycles now (in flight together, within max_seconds when given) in a background worker; one row per cycle: ticket, phase, verdict, state (none if nothing was claimable)';
REVOKE EXECUTE ON FUNCTION damascus_tick(integer, integer) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION damascus_tick(integer, integer) TO damascus_admin;

-- Open cycles (no verdict yet) for damascus.worker_status, and cycle age for the stats, the analyzer and
-- retention: both small next to the table's primary key.
CREATE INDEX cycles_open ON damascus.cycles (id) WHERE verdict IS NULL;
COMMENT ON INDEX damascus.cycles_open IS 'Cycles without a verdict yet (calls in flight, or left by a dead worker)';
CREATE INDEX cycles_started ON damascus.cycles (started_at);
COMMENT ON INDEX damascus.cycles_started IS 'Cycles by start time: recent-window statistics and retention';

-- Usage and cost per cycle: the provider's usage object and its own counts, priced from damascus.prices.
ALTER TABLE damascus.cycles
    ADD COLUMN cache_write_tokens integer,
    ADD COLUMN cache_read_tokens  integer,
    ADD COLUMN usage              jsonb,
    ADD COLUMN cost_usd           numeric,
    ADD COLUMN cost_note          text;
COMMENT ON COLUMN damascus.cycles.cache_write_tokens IS 'Anthropic cache_creation_input_tokens; NULL when not reported (OpenAI reports none)';
COMMENT ON COLUMN damascus.cycles.cache_read_tokens IS 'Anthropic cache_read_input_tokens, OpenAI prompt_tokens_details.cached_tokens; NULL when not reported (never 0 for missing)';
COMMENT ON COLUMN damascus.cycles.usage IS 'The provider''s usage object, verbatim';
COMMENT ON COLUMN damascus.cycles.cost_usd IS 'What the call cost in USD, from the price valid when the cycle started; NULL with cost_note when unknown';
COMMENT ON COLUMN damascus.cycles.cost_note IS 'Why cost_usd is NULL: no price for the model, or no usage reported';

CREATE TABLE damascus.prices (
    model                    text        NOT NULL CHECK (length(model) > 0),
    valid_from               timestamptz NOT NULL DEFAULT '-infinity',
    input_usd_per_mtok       numeric     NOT NULL CHECK (input_usd_per_mtok >= 0),
    output_usd_per_mtok      numeric     NOT NULL CHECK (output_usd_per_mtok >= 0),
    cache_write_usd_per_mtok numeric     CHECK (cache_write_usd_per_mtok >= 0),
    cache_read_usd_per_mtok  numeric     CHECK (cache_read_usd_per_mtok >= 0),
    PRIMARY KEY (model, valid_from)
);
COMMENT ON TABLE damascus.prices IS 'USD per million tokens by model, from valid_from on; a cycle is priced with the row valid when it started';
COMMENT ON COLUMN damascus.prices.model IS 'Model name exactly as the request names it (cycles.model)';
COMMENT ON COLUMN damascus.prices.valid_from IS 'From when this price applies (the latest row not after a cycle''s start is used); -infinity by default';
COMMENT ON COLUMN damascus.prices.input_usd_per_mtok IS 'USD per million uncached input tokens';
COMMENT ON COLUMN damascus.prices.output_usd_per_mtok IS 'USD per million output tokens';
COMMENT ON COLUMN damascus.prices.cache_write_usd_per_mtok IS 'USD per million tokens written to the prompt cache (Anthropic); NULL: priced as input';
COMMENT ON COLUMN damascus.prices.cache_read_usd_per_mtok IS 'USD per million input tokens read from the prompt cache; NULL: priced as input';
REVOKE ALL ON damascus.prices FROM PUBLIC;

-- Budgets stop claims before a call, not bills after it.
CREATE TABLE damascus.budgets (
    id             bigint      GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    scope          text        NOT NULL DEFAULT 'all' CHECK (scope ~ '^[a-z_][a-z0-9_]{0,62}$'),
    period         text        NOT NULL CHECK (period IN ('day', 'month')),
    limit_usd      numeric     CHECK (limit_usd > 0),
    limit_tokens   bigint      CHECK (limit_tokens > 0),
    blocked_until  timestamptz,
    blocked_reason text,
    CONSTRAINT budgets_have_a_limit CHECK (limit_usd IS NOT NULL OR limit_tokens IS NOT NULL)
);
COMMENT ON TABLE damascus.budgets IS 'Spend limits per scope and period (UTC): a cycle whose worst case would pass one is not run';
COMMENT ON COLUMN damascus.budgets.id IS 'Budget id';
COMMENT ON COLUMN damascus.budgets.scope IS 'all, or the name of one phase';
COMMENT ON COLUMN damascus.budgets.period IS 'day or month, in UTC; spend counts from the start of the current one';
COMMENT ON COLUMN damascus.budgets.limit_usd IS 'Most USD the scope may spend in a period (cycles priced by damascus.prices)';
COMMENT ON COLUMN damascus.budgets.limit_tokens IS 'Most tokens the scope may use in a period: input (cache reads and writes included) plus output';
COMMENT ON COLUMN damascus.budgets.blocked_until IS 'Set when a cycle did not fit: no claim in the scope before then (a minute, at most the period''s end); cleared when a limit changes';
COMMENT ON COLUMN damascus.budgets.blocked_reason IS 'Why the budget last held a cycle back, with its numbers';
REVOKE ALL ON damascus.budgets FROM PUBLIC;
REVOKE ALL ON SEQUENCE damascus.budgets_id_seq FROM PUBLIC;

ALTER TABLE damascus.cycles
    ADD COLUMN reserved_usd    numeric,
    ADD COLUMN reserved_tokens bigint;
COMMENT ON COLUMN damascus.cycles.reserved_usd IS 'Worst-case cost reserved against budgets before the call (input estimate + max_tokens, priced)';
COMMENT ON COLUMN damascus.cycles.reserved_tokens IS 'Worst-case tokens reserved against budgets before the call (one per byte of prompt, plus max_tokens)';

-- The functions behind the provider's limits (as cargo pgrx schema generates them).
CREATE  FUNCTION "damascus_resume_provider"() RETURNS bool /* bool */
STRICT VOLATILE PARALLEL UNSAFE
LANGUAGE c /* Rust */
AS 'MODULE_PATHNAME', 'damascus_resume_provider_wrapper';
CREATE  FUNCTION damascus."provider_state"() RETURNS TABLE (
	"parked" bool,  /* bool */
	"cooldown_ms" bigint  /* i64 */
)
STRICT VOLATILE PARALLEL SAFE
LANGUAGE c /* Rust */
AS 'MODULE_PATHNAME', 'provider_state_wrapper';

ALTER TABLE damascus.cycles ADD COLUMN ratelimit jsonb;
COMMENT ON COLUMN damascus.cycles.ratelimit IS 'The remaining figures of the provider''s rate-limit headers on its answer (anthropic-ratelimit-*-remaining, x-ratelimit-remaining-*), by header; NULL when it sent none';

-- Operating it: wake-up at commit, the metrics views and the analyzer.

-- Any insert, or an update that leaves a ticket unclaimed in a live state (a verdict, an approval, a release,
-- a retry), may have made work: the idle static workers are woken when that transaction commits.
CREATE TRIGGER tickets_wake_on_insert AFTER INSERT ON damascus.tickets
    FOR EACH STATEMENT EXECUTE FUNCTION damascus.wake_workers();
COMMENT ON TRIGGER tickets_wake_on_insert ON damascus.tickets IS
    'Wakes the idle damascus workers when the transaction that queued tickets commits';
CREATE TRIGGER tickets_wake_on_update AFTER UPDATE ON damascus.tickets
    FOR EACH ROW
    WHEN (NEW.claimed_at IS NULL AND NEW.state NOT IN ('done', 'failed', 'cancelled')
          AND (NEW.not_before IS NULL OR NEW.not_before <= now())
          AND (OLD.claimed_at IS NOT NULL OR OLD.state IS DISTINCT FROM NEW.state
               OR OLD.not_before IS DISTINCT FROM NEW.not_before))
    EXECUTE FUNCTION damascus.wake_workers();
COMMENT ON TRIGGER tickets_wake_on_update ON damascus.tickets IS
    'Wakes the idle damascus workers when a transaction that left a ticket claimable (verdict, approval, release, retry) commits';
COMMENT ON FUNCTION damascus.wake_workers() IS
    'Trigger: asks for the idle damascus workers to be woken when the current transaction commits';
COMMENT ON FUNCTION damascus.worker_counters() IS
    'The running static workers (pid) and the cycles each finished since it started; read by damascus.worker_status';
REVOKE EXECUTE ON FUNCTION damascus.wake_workers() FROM PUBLIC;
REVOKE EXECUTE ON FUNCTION damascus.worker_counters() FROM PUBLIC;

-- The stale window as the workers read it: '30min' where the library is loaded, the configured text (minutes
-- when it has no unit) where it is not.
CREATE FUNCTION damascus.stale_window() RETURNS interval
LANGUAGE sql STABLE SET search_path = pg_catalog, pg_temp AS $$
    SELECT CASE WHEN s.v ~ '^\d+$' THEN make_interval(mins => s.v::integer) ELSE s.v::interval END
    FROM (SELECT coalesce(nullif(current_setting('damascus.stale_claim_minutes', true), ''), '30') AS v) AS s
$$;
COMMENT ON FUNCTION damascus.stale_window() IS 'damascus.stale_claim_minutes as an interval';
REVOKE EXECUTE ON FUNCTION damascus.stale_window() FROM PUBLIC;

-- What a budget's scope has spent in its current period (cycles with a verdict) and holds reserved (cycles in
-- flight under a live claim). Tokens: input, cache writes and reads, output (OpenAI's prompt_tokens already
-- include its cached tokens).
CREATE FUNCTION damascus.budget_usage(scope text, period text,
                                      OUT period_start timestamptz, OUT spent_usd numeric, OUT spent_tokens bigint,
                                      OUT reserved_usd numeric, OUT reserved_tokens bigint)
LANGUAGE sql STABLE SET search_path = pg_catalog, pg_temp AS $$
    WITH start AS (
        SELECT date_trunc(budget_usage.period, now() AT TIME ZONE 'UTC') AT TIME ZONE 'UTC' AS t
    ), spent AS (
        SELECT coalesce(sum(c.cost_usd), 0) AS usd,
               coalesce(sum(CASE WHEN c.provider = 'openai'
                                 THEN coalesce(c.input_tokens, 0) + coalesce(c.output_tokens, 0)
                                 ELSE coalesce(c.input_tokens, 0) + coalesce(c.cache_write_tokens, 0)
                                      + coalesce(c.cache_read_tokens, 0) + coalesce(c.output_tokens, 0) END),
                        0)::bigint AS tokens
        FROM damascus.cycles AS c, start
        WHERE c.started_at >= start.t AND c.verdict IS NOT NULL
          AND (budget_usage.scope = 'all' OR c.phase = budget_usage.scope)
    ), reserved AS (
        SELECT coalesce(sum(c.reserved_usd), 0) AS usd, coalesce(sum(c.reserved_tokens), 0)::bigint AS tokens
        FROM damascus.cycles AS c
        JOIN damascus.tickets AS t
          ON t.id = c.ticket_id AND t.claim_token = c.claim_token
         AND t.claimed_at > now() - damascus.stale_window()
        WHERE c.verdict IS NULL AND (budget_usage.scope = 'all' OR c.phase = budget_usage.scope)
    )
    SELECT start.t, spent.usd, spent.tokens, reserved.usd, reserved.tokens FROM start, spent, reserved
$$;
COMMENT ON FUNCTION damascus.budget_usage(text, text) IS
    'Spend and tokens of a budget scope in its current UTC period, and the worst cases reserved by cycles in flight';
REVOKE EXECUTE ON FUNCTION damascus.budget_usage(text, text) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION damascus.stale_window(), damascus.budget_usage(text, text) TO pg_monitor, damascus_user;

CREATE VIEW damascus.queue AS
SELECT g.state, g.phase, g.tickets, g.claimed, g.stale_claims, g.backing_off, g.waiting, g.oldest_waiting,
       -- Waiting tickets a budget holds back, and why (damascus.budget_status has the numbers).
       CASE WHEN h.reason IS NULL THEN 0 ELSE g.waiting END AS held_by_budget,
       h.reason AS held_reason
FROM (
    SELECT t.state,
           (SELECT p.name FROM damascus.phases AS p WHERE p.enabled AND p.from_state = t.state) AS phase,
           count(*) AS tickets,
           count(*) FILTER (WHERE t.claimed_at IS NOT NULL) AS claimed,
           count(*) FILTER (WHERE t.claimed_at < now() - damascus.stale_window()) AS stale_claims,
           count(*) FILTER (WHERE t.claimed_at IS NULL AND t.not_before > now()) AS backing_off,
           count(*) FILTER (WHERE t.claimed_at IS NULL AND t.state NOT IN ('done', 'failed', 'cancelled')
                              AND (t.not_before IS NULL OR t.not_before <= now())) AS waiting,
           now() - min(t.updated_at) FILTER (WHERE t.claimed_at IS NULL
                                               AND t.state NOT IN ('done', 'failed', 'cancelled')) AS oldest_waiting
    FROM damascus.tickets AS t
    GROUP BY t.state
) AS g
LEFT JOIN LATERAL (
    SELECT b.blocked_reason AS reason
    FROM damascus.phases AS p
    JOIN damascus.budgets AS b ON b.scope IN ('all', p.name)
    WHERE p.enabled AND p.kind = 'llm' AND p.from_state = g.state AND b.blocked_until > now()
    ORDER BY b.id
    LIMIT 1
) AS h ON true;
COMMENT ON VIEW damascus.queue IS
    'Per state: the phase that claims it, tickets, claimed, stale claims, backing off (not_before), waiting, how long the oldest unclaimed one has waited since its last change, and the waiting tickets a budget holds back with its reason';

CREATE VIEW damascus.phase_stats AS
SELECT c.phase,
       count(*) AS cycles,
       (SELECT jsonb_object_agg(v.verdict, v.n)
        FROM (SELECT coalesce(d.verdict, '(running)') AS verdict, count(*) AS n
              FROM damascus.cycles AS d
              WHERE d.phase = c.phase AND d.started_at >= now() - interval '1 day'
              GROUP BY 1) AS v) AS verdicts,
       percentile_disc(0.5) WITHIN GROUP (ORDER BY c.llm_ms) AS llm_ms_p50,
       percentile_disc(0.95) WITHIN GROUP (ORDER BY c.llm_ms) AS llm_ms_p95,
       sum(c.input_tokens) AS input_tokens,
       sum(c.output_tokens) AS output_tokens,
       count(*) FILTER (WHERE c.stop_reason IN ('max_tokens', 'length')) AS truncated,
       count(*) FILTER (WHERE c.verdict = 'llm_error') AS transport_errors,
       round(count(*) FILTER (WHERE c.verdict = 'llm_error')::numeric / count(*), 3) AS transport_error_rate,
       count(*) FILTER (WHERE c.verdict = 'claim_lost') AS claim_lost
FROM damascus.cycles AS c
WHERE c.started_at >= now() - interval '1 day'
GROUP BY c.phase;
COMMENT ON VIEW damascus.phase_stats IS
    'Per phase over the last day: cycles, verdict counts, p50/p95 llm_ms, tokens, truncations, transport errors and their rate, claim_lost';

CREATE VIEW damascus.worker_status AS
SELECT a.pid,
       a.application_name AS worker,
       a.backend_type AS kind,
       a.backend_start AS started,
       coalesce(f.calls_in_flight, 0) AS calls_in_flight,
       coalesce(f.calls, '[]'::jsonb) AS calls,
       w.cycles_done,
       a.query AS activity
FROM pg_catalog.pg_stat_activity AS a
LEFT JOIN damascus.worker_counters() AS w ON w.pid = a.pid
LEFT JOIN LATERAL (
    SELECT count(*) AS calls_in_flight,
           jsonb_agg(jsonb_build_object('ticket_id', o.ticket_id, 'phase', o.phase, 'since', o.started_at,
                                        'seconds', floor(extract(epoch FROM now() - o.started_at)))
                     ORDER BY o.id) AS calls
    FROM damascus.cycles AS o
    WHERE o.verdict IS NULL AND substring(o.worker FROM '\(pid (\d+)')::integer = a.pid
) AS f ON true
WHERE a.backend_type IN ('damascus worker', 'damascus tick');
COMMENT ON VIEW damascus.worker_status IS
    'Live damascus workers and ticks: pid, start, calls in flight (ticket, phase, since), cycles done (static workers), and what pg_stat_activity shows';

-- Findings a person can act on; a clean history yields none.
CREATE FUNCTION damascus_analyze(since interval DEFAULT '1 day')
RETURNS TABLE (severity text, finding text, evidence jsonb, hint text)
LANGUAGE sql STABLE SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
    -- Answers cut off at max_tokens.
    SELECT 'warning',
           format('phase %s: %s of %s answers were cut off at max_tokens', s.phase, s.truncated, s.answered),
           jsonb_build_object('phase', s.phase, 'answers', s.answered, 'truncated', s.truncated,
                              'rate', round(s.truncated::numeric / s.answered, 3), 'max_tokens', p.max_tokens),
           format('Raise the limit: UPDATE damascus.phases SET max_tokens = %s WHERE name = %L;',
                  p.max_tokens * 2, s.phase)
    FROM (SELECT c.phase, count(*) AS answered,
                 count(*) FILTER (WHERE c.stop_reason IN ('max_tokens', 'length')) AS truncated
          FROM damascus.cycles AS c
          WHERE c.started_at >= now() - since AND c.http_status = 200
          GROUP BY c.phase) AS s
    JOIN damascus.phases AS p ON p.name = s.phase
    WHERE s.truncated >= 2 AND s.truncated * 10 >= s.answered
    UNION ALL
    -- LLM calls failing.
    SELECT CASE WHEN s.failed * 2 >= s.calls THEN 'critical' ELSE 'warning' END,
           format('phase %s: %s of %s LLM calls failed (%s)', s.phase, s.failed, s.calls, s.kinds),
           jsonb_build_object('phase', s.phase, 'calls', s.calls, 'failed', s.failed,
                              'rate', round(s.failed::numeric / s.calls, 3), 'http_status', s.statuses),
           'Look at the detail of the failed cycles (SELECT detail FROM damascus.cycles WHERE verdict LIKE ''llm_%'' ORDER BY id DESC LIMIT 5): an outage or rate limit passes, a 4xx needs damascus.llm_url, the key or the model fixed.'
    FROM (SELECT c.phase, count(*) AS calls,
                 count(*) FILTER (WHERE c.verdict IN ('llm_error', 'llm_rejected', 'llm_bad_response')) AS failed,
                 string_agg(DISTINCT c.verdict, ', ') FILTER (WHERE c.verdict IN ('llm_error', 'llm_rejected', 'llm_bad_response')) AS kinds,
                 jsonb_agg(DISTINCT c.http_status) FILTER (WHERE c.verdict IN ('llm_error', 'llm_rejected', 'llm_bad_response')
                                                           AND c.http_status IS NOT NULL) AS statuses
          FROM damascus.cycles AS c
          WHERE c.started_at >= now() - since AND c.verdict IS NOT NULL AND c.verdict <> 'claim_lost'
            AND c.worker LIKE 'damascus %'
          GROUP BY c.phase) AS s
    WHERE s.failed >= 3 AND s.failed * 5 >= s.calls
    UNION ALL
    -- Claims that went stale and were taken over: their workers died or stalled.
    SELECT 'warning',
           format('%s cycles lost their claim (a worker died or stopped renewing it)', s.lost),
           jsonb_build_object('claim_lost', s.lost, 'workers', s.workers),
           'Look for crashes and restarts of damascus workers in the server log; a worker that cannot renew its claims in time needs damascus.heartbeat_seconds well below damascus.stale_claim_minutes.'
    FROM (SELECT count(*) AS lost, jsonb_agg(DISTINCT c.worker) AS workers
          FROM damascus.cycles AS c
          WHERE c.started_at >= now() - since AND c.verdict = 'claim_lost') AS s
    WHERE s.lost > 0
    UNION ALL
    -- Tickets going round between a phase and the one that rejects it.
    SELECT 'warning',
           format('%s tickets were rejected %s times or more by phase %s', s.tickets, 2, s.phase),
           jsonb_build_object('phase', s.phase, 'tickets', s.tickets, 'ticket_ids', s.ids, 'rejections', s.rejections),
           'Read the rejection reasons (damascus.tickets.feedback): the implementing phase''s prompt or the reviewer''s may need to change.'
    FROM (SELECT r.phase, count(*) AS tickets, jsonb_agg(r.ticket_id ORDER BY r.ticket_id) AS ids,
                 sum(r.n) AS rejections
          FROM (SELECT c.phase, c.ticket_id, count(*) AS n
                FROM damascus.cycles AS c
                WHERE c.started_at >= now() - since AND c.verdict = 'rejected'
                GROUP BY c.phase, c.ticket_id
                HAVING count(*) >= 2) AS r
          GROUP BY r.phase) AS s
    UNION ALL
    -- Tickets waiting at an approval phase for more than a day.
    SELECT 'info',
           format('%s tickets have waited over a day for approval at phase %s', s.tickets, s.phase),
           jsonb_build_object('phase', s.phase, 'tickets', s.tickets, 'ticket_ids', s.ids, 'oldest', s.oldest),
           format('Decide them: SELECT damascus_approve(id) or damascus_reject(id, reasons) FROM damascus.tickets WHERE state = %L;', s.state)
    FROM (SELECT p.name AS phase, p.from_state AS state, count(*) AS tickets,
                 jsonb_agg(t.id ORDER BY t.id) AS ids, (now() - min(t.updated_at))::text AS oldest
          FROM damascus.phases AS p
          JOIN damascus.tickets AS t ON t.state = p.from_state
          WHERE p.enabled AND p.kind = 'approval' AND t.updated_at < now() - interval '1 day'
          GROUP BY p.name, p.from_state) AS s
    UNION ALL
    -- Tickets no worker picks up: in a state no enabled llm or approval phase claims, or claimable for an hour.
    SELECT 'warning',
           format('%s tickets in state %s have not moved for over an hour%s', s.tickets, s.state,
                  CASE WHEN s.claimed_by_phase THEN '' ELSE ' (no enabled phase claims that state)' END),
           jsonb_build_object('state', s.state, 'tickets', s.tickets, 'ticket_ids', s.ids, 'oldest', s.oldest),
           CASE WHEN s.claimed_by_phase
                THEN 'Are damascus workers running (SELECT * FROM damascus.worker_status) or is something scheduling damascus_tick()?'
                ELSE 'Enable or add a phase whose from_state is this state, or move the tickets with damascus_retry / damascus_cancel.' END
    FROM (SELECT t.state, count(*) AS tickets, (jsonb_agg(t.id ORDER BY t.id)) AS ids,
                 (now() - min(t.updated_at))::text AS oldest,
                 EXISTS (SELECT 1 FROM damascus.phases AS p WHERE p.enabled AND p.from_state = t.state) AS claimed_by_phase
          FROM damascus.tickets AS t
          WHERE t.state NOT IN ('done', 'failed', 'cancelled') AND t.claimed_at IS NULL
            AND (t.not_before IS NULL OR t.not_before <= now())
            AND t.updated_at < now() - interval '1 hour'
            AND NOT EXISTS (SELECT 1 FROM damascus.phases AS p
                            WHERE p.enabled AND p.kind = 'approval' AND p.from_state = t.state)
          GROUP BY t.state) AS s
    UNION ALL
    -- The provider refused for its spend limit: nothing is sent until someone resumes it.
    SELECT 'critical',
           'the LLM provider is parked: it refused a call for its spend limit (enforced_spend_limit_reached)',
           jsonb_build_object('parked', p.parked,
                              'last_refusal', (SELECT c.detail FROM damascus.cycles AS c
                                               WHERE c.detail LIKE '%enforced_spend_limit_reached%'
                                               ORDER BY c.id DESC LIMIT 1)),
           'Raise the spend limit with the provider, then: SELECT damascus_resume_provider();'
    FROM damascus.provider_state() AS p
    WHERE p.parked
    UNION ALL
    -- A budget holding work back now.
    SELECT 'warning',
           format('budget %s (%s per %s) holds work back: %s', b.id, b.scope, b.period, b.blocked_reason),
           jsonb_build_object('budget', b.id, 'scope', b.scope, 'period', b.period, 'period_start', u.period_start,
                              'limit_usd', b.limit_usd, 'limit_tokens', b.limit_tokens,
                              'spent_usd', u.spent_usd, 'spent_tokens', u.spent_tokens,
                              'reserved_usd', u.reserved_usd, 'reserved_tokens', u.reserved_tokens),
           format('Raise the limit (UPDATE damascus.budgets SET limit_usd = ... WHERE id = %s) or wait for the period to turn at %s UTC.',
                  b.id, (date_trunc(b.period, now() AT TIME ZONE 'UTC') + ('1 ' || b.period)::interval))
    FROM damascus.budgets AS b
    CROSS JOIN LATERAL damascus.budget_usage(b.scope, b.period) AS u
    WHERE b.blocked_until > now()
$$;
COMMENT ON FUNCTION damascus_analyze(interval) IS
    'Findings over the given past (default a day), one row each with severity, evidence and a hint: truncation at max_tokens, LLM failures, lost claims, rejection loops, approvals waiting, tickets not moving, budgets holding work back';
REVOKE EXECUTE ON FUNCTION damascus_analyze(interval) FROM PUBLIC;

-- Monitoring: pg_monitor and damascus_user read the views and run the analyzer; nobody else.
REVOKE ALL ON damascus.queue, damascus.phase_stats, damascus.worker_status FROM PUBLIC;
GRANT USAGE ON SCHEMA damascus TO pg_monitor;
GRANT SELECT ON damascus.queue, damascus.phase_stats, damascus.worker_status TO pg_monitor, damascus_user;
GRANT EXECUTE ON FUNCTION damascus.worker_counters() TO pg_monitor, damascus_user;
GRANT EXECUTE ON FUNCTION damascus_analyze(interval) TO pg_monitor, damascus_user;

-- Spend: what each cycle cost (priced in its verdict transaction) added up.
CREATE VIEW damascus.spend AS
SELECT (c.started_at AT TIME ZONE 'UTC')::date AS day,
       c.phase,
       c.model,
       count(*) AS cycles,
       sum(c.input_tokens) AS input_tokens,
       sum(c.output_tokens) AS output_tokens,
       sum(c.cache_write_tokens) AS cache_write_tokens,
       sum(c.cache_read_tokens) AS cache_read_tokens,
       sum(c.cost_usd) AS cost_usd,
       count(*) FILTER (WHERE c.cost_usd IS NULL AND c.input_tokens IS NOT NULL) AS unpriced_cycles
FROM damascus.cycles AS c
WHERE c.provider IS NOT NULL
GROUP BY 1, 2, 3;
COMMENT ON VIEW damascus.spend IS
    'Spend and tokens by day (UTC), phase and model; unpriced_cycles have usage but no price';

CREATE VIEW damascus.ticket_spend AS
SELECT c.ticket_id,
       count(*) AS cycles,
       sum(c.input_tokens) AS input_tokens,
       sum(c.output_tokens) AS output_tokens,
       sum(c.cache_write_tokens) AS cache_write_tokens,
       sum(c.cache_read_tokens) AS cache_read_tokens,
       sum(c.cost_usd) AS cost_usd
FROM damascus.cycles AS c
WHERE c.provider IS NOT NULL
GROUP BY c.ticket_id;
COMMENT ON VIEW damascus.ticket_spend IS
    'Per ticket, the total over all its cycles (retries and rejected answers included)';

REVOKE ALL ON damascus.spend, damascus.ticket_spend FROM PUBLIC;
GRANT SELECT ON damascus.spend, damascus.ticket_spend TO pg_monitor, damascus_user;
GRANT SELECT ON damascus.prices TO damascus_user;
GRANT INSERT, UPDATE, DELETE ON damascus.prices TO damascus_admin;

-- Budgets: what each has spent and holds reserved in its current period. Spent: cycles with a verdict that
-- started in the period. Reserved: the worst cases of cycles still running under a live claim (a dead
-- worker's reservation lapses with its claim's stale window).
CREATE VIEW damascus.budget_status AS
SELECT b.id, b.scope, b.period, s.period_start, b.limit_usd, b.limit_tokens,
       s.spent_usd, s.spent_tokens, s.reserved_usd, s.reserved_tokens,
       b.blocked_until > now() AS blocked, b.blocked_reason
FROM damascus.budgets AS b
CROSS JOIN LATERAL damascus.budget_usage(b.scope, b.period) AS s;
COMMENT ON VIEW damascus.budget_status IS
    'Per budget: the current period, its limits, what was spent, what cycles in flight hold reserved, and whether it holds claims back';

CREATE FUNCTION damascus.budget_changed() RETURNS trigger
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    -- A raised (or any changed) limit lets work go on at once.
    IF NEW.limit_usd IS DISTINCT FROM OLD.limit_usd OR NEW.limit_tokens IS DISTINCT FROM OLD.limit_tokens
       OR NEW.scope IS DISTINCT FROM OLD.scope OR NEW.period IS DISTINCT FROM OLD.period THEN
        NEW.blocked_until := NULL;
    END IF;
    RETURN NEW;
END
$$;
COMMENT ON FUNCTION damascus.budget_changed() IS 'Trigger: a changed limit, scope or period unblocks the budget';
REVOKE EXECUTE ON FUNCTION damascus.budget_changed() FROM PUBLIC;
CREATE TRIGGER budgets_unblock_on_change BEFORE UPDATE ON damascus.budgets
    FOR EACH ROW EXECUTE FUNCTION damascus.budget_changed();
COMMENT ON TRIGGER budgets_unblock_on_change ON damascus.budgets IS
    'Clears blocked_until when a limit, the scope or the period changes';

REVOKE ALL ON damascus.budget_status FROM PUBLIC;
GRANT SELECT ON damascus.budget_status TO pg_monitor, damascus_user;
GRANT SELECT ON damascus.budgets TO damascus_user;
GRANT INSERT, UPDATE, DELETE ON damascus.budgets TO damascus_admin;

-- Provider limits live in shared memory (damascus.llm_rpm, llm_input_tpm, llm_output_tpm; a 429's cooldown;
-- parked after a spend-limit refusal).
COMMENT ON FUNCTION damascus.provider_state() IS
    'The LLM provider''s state in shared memory: parked after a spend-limit refusal, and the milliseconds left of a cooldown a 429 started';
COMMENT ON FUNCTION damascus_resume_provider() IS
    'Lets calls go to the LLM provider again after it refused for its spend limit, and ends any cooldown; returns whether it was parked';
REVOKE EXECUTE ON FUNCTION damascus.provider_state() FROM PUBLIC;
REVOKE EXECUTE ON FUNCTION damascus_resume_provider() FROM PUBLIC;
GRANT EXECUTE ON FUNCTION damascus.provider_state() TO pg_monitor, damascus_user;
GRANT EXECUTE ON FUNCTION damascus_resume_provider() TO damascus_admin;
