-- damascus finalize: comments and privileges of the SQL functions (loaded last by CREATE EXTENSION).

COMMENT ON FUNCTION damascus_submit(text, text, integer) IS
    'Queues a ticket in state new and returns its id; title must not be blank';
COMMENT ON FUNCTION damascus_tick() IS
    'Runs one cycle now in a background worker and returns its ticket, phase, verdict and state (no row if nothing was claimable)';

-- Least privilege: only roles an administrator grants may queue work or spend LLM calls.
REVOKE EXECUTE ON FUNCTION damascus_submit(text, text, integer) FROM PUBLIC;
REVOKE EXECUTE ON FUNCTION damascus_tick() FROM PUBLIC;
