-- The checks at the end of bench/soak.sh, in three steps chosen with `psql -v step=...`:
--   snapshot  note the tickets that are neither terminal nor visibly progressing (claimed by a live lease, or
--             backing off until a time still ahead), and the cycle rows left open without their claim
--             (orphaned: verdict IS NULL, and the ticket is not claimed with that cycle's claim_token);
--   recheck   drop from those notes whatever has moved since (claimed, state or claim changed, finished...);
--             the script repeats it for a short while, so a ticket caught between its backoff's end and its
--             next claim, or a takeover caught between its claim and the phase transaction that closes the
--             dead holder's row, is not counted; what is left is stalled or orphaned for real;
--   report    print every result as SOAK<TAB>name<TAB>value, from one snapshot.
-- Also needs -v stale_min=<damascus.stale_claim_minutes>. The notes live in schema soak of the soak database.
\set ON_ERROR_STOP 1
SELECT :'step' = 'snapshot' AS step_snapshot, :'step' = 'recheck' AS step_recheck,
       :'step' = 'report' AS step_report \gset

\if :step_snapshot
SET client_min_messages = warning;
CREATE SCHEMA IF NOT EXISTS soak;
DROP TABLE IF EXISTS soak.suspect_tickets, soak.suspect_cycles;
CREATE TABLE soak.suspect_tickets AS
    SELECT t.id, t.state, t.claim_token, t.updated_at
    FROM damascus.tickets AS t
    WHERE t.state NOT IN ('done', 'failed', 'cancelled')
      AND NOT (t.claim_token IS NOT NULL AND t.claimed_at > now() - make_interval(mins => :stale_min))
      AND NOT (t.claim_token IS NULL AND t.not_before > now());
CREATE TABLE soak.suspect_cycles AS
    SELECT c.id
    FROM damascus.cycles AS c JOIN damascus.tickets AS t ON t.id = c.ticket_id
    WHERE c.verdict IS NULL AND t.claim_token IS DISTINCT FROM c.claim_token;
SELECT (SELECT count(*) FROM soak.suspect_tickets) || ' ' || (SELECT count(*) FROM soak.suspect_cycles);
\endif

\if :step_recheck
DELETE FROM soak.suspect_tickets AS s USING damascus.tickets AS t
WHERE t.id = s.id
  AND (t.state IN ('done', 'failed', 'cancelled')
       OR (t.state, t.claim_token, t.updated_at) IS DISTINCT FROM (s.state, s.claim_token, s.updated_at)
       OR (t.claim_token IS NOT NULL AND t.claimed_at > now() - make_interval(mins => :stale_min))
       OR (t.claim_token IS NULL AND t.not_before > now()));
DELETE FROM soak.suspect_cycles AS s USING damascus.cycles AS c JOIN damascus.tickets AS t ON t.id = c.ticket_id
WHERE c.id = s.id AND (c.verdict IS NOT NULL OR t.claim_token = c.claim_token);
SELECT (SELECT count(*) FROM soak.suspect_tickets) || ' ' || (SELECT count(*) FROM soak.suspect_cycles);
\endif

\if :step_report
BEGIN ISOLATION LEVEL REPEATABLE READ;

CREATE TEMP VIEW soak_tickets AS
    SELECT t.*,
           coalesce(substring(t.body FROM '\[fakellm:([^]]+)\]'), 'plain') AS kind,
           CASE WHEN t.state IN ('done', 'failed', 'cancelled') THEN 'terminal'
                WHEN t.claim_token IS NOT NULL AND t.claimed_at > now() - make_interval(mins => :stale_min) THEN 'claimed'
                WHEN t.claim_token IS NOT NULL THEN 'stale_claim'
                WHEN t.not_before > now() THEN 'backing_off'
                ELSE 'ready'
           END AS progress
    FROM damascus.tickets AS t;

-- Tickets: in all, by state, by kind (fault marker or plain) and state.
SELECT format(E'SOAK\t%s\t%s', 'tickets', count(*)) FROM damascus.tickets;
SELECT format(E'SOAK\ttickets.%s\t%s', state, count(*)) FROM damascus.tickets GROUP BY state ORDER BY state;
SELECT format(E'SOAK\tby_kind.%s.%s\t%s', kind, state, count(*)) FROM soak_tickets GROUP BY kind, state ORDER BY kind, state;

-- Tickets not terminal, and how each is doing: claimed (a live lease) or backing_off (not_before ahead) is
-- progressing; stale_claim or ready means waiting for a claim at the moment of this snapshot.
SELECT format(E'SOAK\t%s\t%s', 'not_terminal', count(*)) FROM soak_tickets WHERE progress <> 'terminal';
SELECT format(E'SOAK\t%s\t%s', 'not_terminal.progressing', count(*)) FROM soak_tickets WHERE progress IN ('claimed', 'backing_off');
SELECT format(E'SOAK\tnot_terminal.%s\t%s', p, (SELECT count(*) FROM soak_tickets WHERE progress = p))
FROM unnest(ARRAY['claimed', 'backing_off', 'stale_claim', 'ready']) AS p;
SELECT format(E'SOAK\tnot_terminal.%s.%s\t%s', kind, progress, count(*))
FROM soak_tickets WHERE progress <> 'terminal' GROUP BY kind, progress ORDER BY kind, progress;

-- Stalled: not terminal, not progressing, and unmoved through the recheck window. Must be 0.
SELECT format(E'SOAK\t%s\t%s', 'stalled_tickets', count(*)) FROM soak.suspect_tickets;
SELECT format(E'SOAK\tstalled_ticket\tid=%s state=%s kind=%s progress=%s claimed_at=%s not_before=%s llm_errors=%s attempts=%s last_verdict=%s',
              t.id, t.state, t.kind, t.progress, coalesce(t.claimed_at::text, '-'), coalesce(t.not_before::text, '-'),
              t.llm_errors, t.attempts, coalesce(t.last_verdict, '-'))
FROM soak.suspect_tickets AS s JOIN soak_tickets AS t ON t.id = s.id ORDER BY t.id LIMIT 20;

-- Exactly once: no (ticket, phase) with two accepted verdicts. (No ticket here is ever rejected by review, so
-- no phase legitimately runs to acceptance twice.) Must be 0.
SELECT format(E'SOAK\t%s\t%s', 'duplicate_accepts', count(*))
FROM (SELECT 1 FROM damascus.cycles WHERE verdict IN ('spec_ok', 'impl_ok', 'approved')
      GROUP BY ticket_id, phase HAVING count(*) > 1) AS d;
SELECT format(E'SOAK\tduplicate_accept\tticket=%s phase=%s accepts=%s cycles=%s', ticket_id, phase, count(*), string_agg(id::text, ',' ORDER BY id))
FROM damascus.cycles WHERE verdict IN ('spec_ok', 'impl_ok', 'approved')
GROUP BY ticket_id, phase HAVING count(*) > 1 ORDER BY ticket_id, phase LIMIT 20;

-- Orphaned cycle rows: open (verdict IS NULL) while their ticket is not claimed with their claim_token, and
-- still so through the recheck window. Must be 0.
SELECT format(E'SOAK\t%s\t%s', 'orphaned_cycles', count(*)) FROM soak.suspect_cycles;
SELECT format(E'SOAK\torphaned_cycle\tcycle=%s ticket=%s phase=%s claim_token=%s ticket_claim_token=%s worker=%s started_at=%s',
              c.id, c.ticket_id, c.phase, c.claim_token, coalesce(t.claim_token::text, '-'), c.worker, c.started_at)
FROM soak.suspect_cycles AS s JOIN damascus.cycles AS c ON c.id = s.id JOIN damascus.tickets AS t ON t.id = c.ticket_id
ORDER BY c.id LIMIT 20;

-- A done ticket must carry an accepted verdict of every enabled llm phase (information).
SELECT format(E'SOAK\t%s\t%s', 'done_missing_accepts', count(*))
FROM damascus.tickets AS t
WHERE t.state = 'done'
  AND EXISTS (SELECT 1 FROM damascus.phases AS p
              WHERE p.enabled AND p.kind = 'llm'
                AND NOT EXISTS (SELECT 1 FROM damascus.cycles AS c
                                WHERE c.ticket_id = t.id AND c.phase = p.name
                                  AND c.verdict IN ('spec_ok', 'impl_ok', 'approved')));

-- Cycles: in all and by verdict (open = verdict IS NULL: in flight now).
SELECT format(E'SOAK\t%s\t%s', 'cycles', count(*)) FROM damascus.cycles;
SELECT format(E'SOAK\tcycles.%s\t%s', coalesce(verdict, 'open'), count(*))
FROM damascus.cycles GROUP BY verdict ORDER BY verdict NULLS LAST;

COMMIT;
\endif
