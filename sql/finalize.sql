-- damascus finalize: loaded last by CREATE EXTENSION, after the functions pgrx generates. Holds what needs
-- those functions: the phase checks, the default pipeline, comments and privileges of the functions.
-- Every change here also goes into the upgrade script (sql/damascus--0.1.0--0.2.0.sql).

-- Per-row rules of a phase definition (placeholders, validator, max_tokens floors) are decided by the
-- same Rust code that later runs the phase, so what is accepted here is what a worker can run.
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

COMMENT ON FUNCTION damascus_submit(text, text, integer) IS
    'Queues a ticket in state new and returns its id; title must not be blank';
COMMENT ON FUNCTION damascus_tick() IS
    'Runs one cycle now in a background worker and returns its ticket, phase, verdict and state (no row if nothing was claimable)';
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

-- Least privilege: only roles an administrator grants may queue work, spend LLM calls or move tickets.
REVOKE EXECUTE ON FUNCTION damascus_submit(text, text, integer) FROM PUBLIC;
REVOKE EXECUTE ON FUNCTION damascus_tick() FROM PUBLIC;
REVOKE EXECUTE ON FUNCTION damascus_approve(bigint, text) FROM PUBLIC;
REVOKE EXECUTE ON FUNCTION damascus_reject(bigint, text) FROM PUBLIC;
REVOKE EXECUTE ON FUNCTION damascus_retry(bigint) FROM PUBLIC;
REVOKE EXECUTE ON FUNCTION damascus_cancel(bigint) FROM PUBLIC;
REVOKE EXECUTE ON FUNCTION damascus_release(bigint) FROM PUBLIC;
REVOKE EXECUTE ON FUNCTION damascus.check_phase(text, text, integer, text, jsonb, jsonb) FROM PUBLIC;
REVOKE EXECUTE ON FUNCTION damascus.check_phase_row() FROM PUBLIC;
REVOKE EXECUTE ON FUNCTION damascus.check_pipeline() FROM PUBLIC;

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
