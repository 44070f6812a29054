-- The plain tables the peers work on: the same shape as damascus's tickets and cycles (sql/schema.sql), in their
-- own schema "peers", with no extension behind them. The Python peer claims, records and judges through these;
-- the graphile-worker peer writes its verdict into peers.tickets and keeps its own queue in graphile_worker.*.
-- Idempotent: run.sh loads it into a fresh database, but a second load changes nothing.

CREATE SCHEMA IF NOT EXISTS peers;

-- Fencing tokens: every claim takes the next value, so a late verdict from an older claim can be told apart.
CREATE SEQUENCE IF NOT EXISTS peers.claim_tokens AS bigint;

CREATE TABLE IF NOT EXISTS peers.tickets (
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
    CONSTRAINT tickets_claim_is_whole CHECK ((claimed_at IS NULL) = (claim_token IS NULL))
);

-- Serves the claim query: state filter, then priority and age (damascus's tickets_claim_order).
CREATE INDEX IF NOT EXISTS tickets_claim_order ON peers.tickets (state, priority DESC, created_at, id);

CREATE TABLE IF NOT EXISTS peers.cycles (
    id            bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    ticket_id     bigint      NOT NULL REFERENCES peers.tickets (id) ON DELETE CASCADE,
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
    input_tokens  integer,
    output_tokens integer,
    llm_ms        integer
);

-- A ticket's history, in order (damascus's cycles_ticket).
CREATE INDEX IF NOT EXISTS cycles_ticket ON peers.cycles (ticket_id, id);
