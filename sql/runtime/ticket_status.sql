-- Why a ticket operation found nothing to change: the ticket's state, whether it is claimed, and its last
-- cycle's phase (no row: no such ticket).
-- $1 ticket id.
SELECT t.state, t.claim_token IS NOT NULL,
       (SELECT c.phase FROM damascus.cycles AS c WHERE c.ticket_id = t.id ORDER BY c.id DESC LIMIT 1)
FROM damascus.tickets AS t
WHERE t.id = $1
