-- damascus schema: tickets, the cycles that worked on them, and the fencing-token sequence.
-- Loaded first by CREATE EXTENSION (extension_sql_file!, bootstrap).

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
    max_attempts integer     NOT NULL DEFAULT 3 CHECK (max_attempts >= 1),
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
    CONSTRAINT tickets_claim_is_whole CHECK ((claimed_at IS NULL) = (claim_token IS NULL))
);
COMMENT ON TABLE damascus.tickets IS 'Work items; each moves through the phases (new -> specified ...) one cycle at a time';
COMMENT ON COLUMN damascus.tickets.id IS 'Ticket id, as damascus_submit returns it';
COMMENT ON COLUMN damascus.tickets.title IS 'What the ticket asks for, in one line';
COMMENT ON COLUMN damascus.tickets.body IS 'The details the phases work from';
COMMENT ON COLUMN damascus.tickets.state IS 'The phase input or output state the ticket is in: new, specified, failed';
COMMENT ON COLUMN damascus.tickets.priority IS 'Higher is claimed first; ties go to the oldest ticket';
COMMENT ON COLUMN damascus.tickets.attempts IS 'Rejected answers (wrong or truncated) in the current phase';
COMMENT ON COLUMN damascus.tickets.max_attempts IS 'Rejected answers allowed before the ticket fails';
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

CREATE INDEX tickets_claim_order ON damascus.tickets (state, priority DESC, created_at, id);
COMMENT ON INDEX damascus.tickets_claim_order IS 'Serves the claim query: state filter, then priority and age';

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
    llm_ms        integer
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
COMMENT ON COLUMN damascus.cycles.worker IS 'The worker or tick that ran the cycle';
COMMENT ON COLUMN damascus.cycles.claim_token IS 'Fencing token the cycle held';
COMMENT ON COLUMN damascus.cycles.claim_xid IS 'Transaction id of the claim transaction';
COMMENT ON COLUMN damascus.cycles.phase_xid IS 'Transaction id of the phase transaction (records the cycle, reads inputs)';
COMMENT ON COLUMN damascus.cycles.verdict_xid IS 'Transaction id of the verdict transaction';
COMMENT ON COLUMN damascus.cycles.verdict IS 'spec_ok, spec_wrong, spec_truncated, llm_error, claim_lost, error or interrupted; NULL while running';
COMMENT ON COLUMN damascus.cycles.detail IS 'Why: the missing section, the HTTP error, the lost claim, the caught ERROR';
COMMENT ON COLUMN damascus.cycles.http_status IS 'HTTP status of the LLM call, NULL if no response';
COMMENT ON COLUMN damascus.cycles.stop_reason IS 'stop_reason the LLM API reported';
COMMENT ON COLUMN damascus.cycles.llm_ms IS 'Wall time of the LLM call in milliseconds, outside any transaction';

CREATE INDEX cycles_ticket ON damascus.cycles (ticket_id, id);
COMMENT ON INDEX damascus.cycles_ticket IS 'A ticket''s history, in order';

REVOKE ALL ON SCHEMA damascus FROM PUBLIC;
REVOKE ALL ON ALL TABLES IN SCHEMA damascus FROM PUBLIC;
REVOKE ALL ON ALL SEQUENCES IN SCHEMA damascus FROM PUBLIC;
