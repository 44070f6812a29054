-- Retention: delete one batch of finished cycle rows older than damascus.cycle_retention, oldest first, through
-- cycles_started (a range, never a scan of the kept rows). Open cycles (verdict NULL) are never deleted.
-- $1 integer retention in minutes, $2 integer batch size. Returns how many rows went.
WITH gone AS (
    DELETE FROM damascus.cycles AS c
    WHERE c.id = ANY (ARRAY(
        SELECT o.id FROM damascus.cycles AS o
        WHERE o.started_at < now() - make_interval(mins => $1) AND o.verdict IS NOT NULL
        ORDER BY o.started_at
        LIMIT $2
    ))
    RETURNING 1
)
SELECT count(*) FROM gone
