-- $1 title, $2 body, $3 priority
INSERT INTO damascus.tickets (title, body, priority)
VALUES ($1, $2, $3)
RETURNING id
