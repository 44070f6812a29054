#!/usr/bin/env bash
# Run by the postgres image's entrypoint (from /docker-entrypoint-initdb.d/, see the Dockerfile) once, when it
# initialises an empty data directory. Creates both extensions in the database the workers serve: damascus.database
# and cron.database_name are both 'postgres' in the image, and pg_cron refuses CREATE EXTENSION anywhere else.
# No `set -e` here: the entrypoint sources non-executable .sh files into its own shell (which already runs with
# `set -Eeo pipefail`), and psql's ON_ERROR_STOP makes a failed statement fail the initialisation either way.
psql -v ON_ERROR_STOP=1 --username "${POSTGRES_USER:-postgres}" --dbname postgres <<'SQL'
CREATE EXTENSION damascus;
CREATE EXTENSION pg_cron;
SQL
