-- The heartbeat found the claim superseded during the call: close the cycle row, leave the ticket alone.
-- $1 cycle id, $2 detail.
UPDATE damascus.cycles
SET verdict = 'claim_lost', detail = $2, verdict_xid = txid_current(), finished_at = now()
WHERE id = $1
RETURNING id
