-- Which version of the extension is created in this database (no row: none). Workers wait quietly until it
-- is the version of the loaded library.
SELECT extversion FROM pg_catalog.pg_extension WHERE extname = 'damascus'
