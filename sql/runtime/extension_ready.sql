-- Is the extension created in this database? Workers wait quietly until it is.
SELECT EXISTS (SELECT 1 FROM pg_catalog.pg_extension WHERE extname = 'damascus')
