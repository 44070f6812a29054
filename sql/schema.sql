-- damascus schema: tickets, the phases that move them, the cycles that worked on them, and the fencing-token sequence.
-- Loaded first by CREATE EXTENSION (extension_sql_file!, bootstrap). Every change here also goes into the
-- upgrade script from the previous version (sql/damascus--0.1.0--0.2.0.sql); tests/upgrade.rs holds them equal.

CREATE SCHEMA damascus;
COMMENT ON SCHEMA damascus IS 'damascus: tickets and the cycles an LLM pipeline ran on them';

CREATE SEQUENCE damascus.claim_tokens AS bigint;
COMMENT ON SEQUENCE damascus.claim_tokens IS
    'Fencing tokens: every claim takes the next value, so a late verdict from an older claim can be told apart';

CREATE TABLE damascus.tickets (
    id           bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    title        text        NOT NULL CHECK (length(btrim(title)) > 0 AND length(title) <= 500),
    body         text        NOT NULL DEFAULT '' CHECK (length(body) <= 100000),
    state        text        NOT NULL DEFAULT 'new' CHECK (length(state) BETWEEN 1 AND 63),
    priority     integer     NOT NULL DEFAULT 0,
    attempts     integer     NOT NULL DEFAULT 0 CHECK (attempts >= 0),
    llm_errors   integer     NOT NULL DEFAULT 0 CHECK (llm_errors >= 0),
    claimed_at   timestamptz,
    claimed_by   text,
    claim_token  bigint,
    not_before   timestamptz,
    outputs      jsonb       NOT NULL DEFAULT '{}' CHECK (jsonb_typeof(outputs) = 'object'),
    last_verdict text,
    last_error   text,
    created_at   timestamptz NOT NULL DEFAULT now(),
    updated_at   timestamptz NOT NULL DEFAULT now(),
    rejections   integer     NOT NULL DEFAULT 0 CHECK (rejections >= 0),
    feedback     text,
    CONSTRAINT tickets_claim_is_whole CHECK ((claimed_at IS NULL) = (claim_token IS NULL))
);
COMMENT ON TABLE damascus.tickets IS 'Work items; each moves through the phases (new -> specified ...) one cycle at a time';
COMMENT ON COLUMN damascus.tickets.id IS 'Ticket id, as damascus_submit returns it';
COMMENT ON COLUMN damascus.tickets.title IS 'What the ticket asks for, in one line';
COMMENT ON COLUMN damascus.tickets.body IS 'The details the phases work from';
COMMENT ON COLUMN damascus.tickets.state IS 'Where the ticket is: a state some phase claims (new, specified, implemented ...) or done, failed, cancelled';
COMMENT ON COLUMN damascus.tickets.priority IS 'Higher is claimed first; ties go to the oldest ticket';
COMMENT ON COLUMN damascus.tickets.attempts IS 'Refused answers (wrong or truncated) in the current phase; the phase''s max_attempts fails the ticket';
COMMENT ON COLUMN damascus.tickets.llm_errors IS 'Consecutive transport failures; drives the retry delay, never fails a ticket';
COMMENT ON COLUMN damascus.tickets.claimed_at IS 'When the current claim was taken; NULL when unclaimed';
COMMENT ON COLUMN damascus.tickets.claimed_by IS 'Which worker holds the claim';
COMMENT ON COLUMN damascus.tickets.claim_token IS 'Fencing token of the current claim; only its holder may write a verdict';
COMMENT ON COLUMN damascus.tickets.not_before IS 'The ticket is not claimable before this time (set after an LLM error)';
COMMENT ON COLUMN damascus.tickets.outputs IS 'Accepted output per phase name, e.g. outputs->>''refine_spec''';
COMMENT ON COLUMN damascus.tickets.last_verdict IS 'Verdict of the latest cycle';
COMMENT ON COLUMN damascus.tickets.last_error IS 'Why the latest cycle did not succeed, if it did not';
COMMENT ON COLUMN damascus.tickets.created_at IS 'When the ticket was submitted';
COMMENT ON COLUMN damascus.tickets.updated_at IS 'When a cycle last changed the ticket';
COMMENT ON COLUMN damascus.tickets.rejections IS 'Rejections (verdict rejected, by a review or an approval) since submission or the last retry';
COMMENT ON COLUMN damascus.tickets.feedback IS 'Reasons of the latest rejection, offered to the next prompt as {{feedback}}';

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

CREATE TABLE damascus.cycles (
    id            bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    ticket_id     bigint      NOT NULL REFERENCES damascus.tickets (id) ON DELETE CASCADE,
    phase         text        NOT NULL,
    attempt       integer     NOT NULL,
    worker        text        NOT NULL,
    claim_token   bigint      NOT NULL,
    claim_xid     bigint      NOT NULL,
    phase_xid     bigint,
    verdict_xid   bigint,
    started_at    timestamptz NOT NULL DEFAULT now(),
    finished_at   timestamptz,
    verdict       text,
    detail        text,
    http_status   integer,
    stop_reason   text,
    input_tokens  integer,
    output_tokens integer,
    llm_ms        integer,
    provider      text,
    model         text,
    prompt_sha256 text,
    answer        text
);
COMMENT ON TABLE damascus.cycles IS 'One row per cycle: claim, phase and verdict, each its own committed transaction';
COMMENT ON COLUMN damascus.cycles.id IS 'Cycle id, in start order';
COMMENT ON COLUMN damascus.cycles.ticket_id IS 'The ticket the cycle worked on';
COMMENT ON COLUMN damascus.cycles.phase IS 'The phase that ran, e.g. refine_spec';
COMMENT ON COLUMN damascus.cycles.started_at IS 'When the phase transaction recorded the cycle';
COMMENT ON COLUMN damascus.cycles.finished_at IS 'When the verdict (or error) was written';
COMMENT ON COLUMN damascus.cycles.input_tokens IS 'Prompt tokens the LLM API reported';
COMMENT ON COLUMN damascus.cycles.output_tokens IS 'Answer tokens the LLM API reported';
COMMENT ON COLUMN damascus.cycles.attempt IS 'Which attempt at this phase the cycle was (1 = first)';
COMMENT ON COLUMN damascus.cycles.worker IS 'The worker or tick that ran the cycle, or the role (session_user) that approved or rejected';
COMMENT ON COLUMN damascus.cycles.claim_token IS 'Fencing token the cycle held';
COMMENT ON COLUMN damascus.cycles.claim_xid IS 'Transaction id of the claim transaction';
COMMENT ON COLUMN damascus.cycles.phase_xid IS 'Transaction id of the phase transaction (records the cycle, reads inputs)';
COMMENT ON COLUMN damascus.cycles.verdict_xid IS 'Transaction id of the verdict transaction';
COMMENT ON COLUMN damascus.cycles.verdict IS 'The phase''s verdict (spec_ok, impl_wrong, approved, rejected ...) or llm_error, claim_lost, error, interrupted; NULL while running';
COMMENT ON COLUMN damascus.cycles.detail IS 'Why: the missing section, the rejection''s reasons, an approval''s note, the HTTP error, the lost claim, the caught ERROR';
COMMENT ON COLUMN damascus.cycles.provider IS 'Wire format of the call: anthropic or openai; NULL for an approval decision';
COMMENT ON COLUMN damascus.cycles.model IS 'Model the request named';
COMMENT ON COLUMN damascus.cycles.prompt_sha256 IS 'sha256 (hex) of the request body sent to the LLM, so two cycles asked the same thing exactly when these match';
COMMENT ON COLUMN damascus.cycles.answer IS 'The model''s raw answer text, accepted or not';
COMMENT ON COLUMN damascus.cycles.http_status IS 'HTTP status of the LLM call, NULL if no response';
COMMENT ON COLUMN damascus.cycles.stop_reason IS 'stop_reason the LLM API reported';
COMMENT ON COLUMN damascus.cycles.llm_ms IS 'Wall time of the LLM call in milliseconds, outside any transaction';

CREATE INDEX cycles_ticket ON damascus.cycles (ticket_id, id);
COMMENT ON INDEX damascus.cycles_ticket IS 'A ticket''s history, in order';

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

ALTER TABLE damascus.cycles ADD COLUMN ratelimit jsonb;
COMMENT ON COLUMN damascus.cycles.ratelimit IS 'The remaining figures of the provider''s rate-limit headers on its answer (anthropic-ratelimit-*-remaining, x-ratelimit-remaining-*), by header; NULL when it sent none';

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

REVOKE ALL ON SCHEMA damascus FROM PUBLIC;
REVOKE ALL ON ALL TABLES IN SCHEMA damascus FROM PUBLIC;
REVOKE ALL ON ALL SEQUENCES IN SCHEMA damascus FROM PUBLIC;
