# damascus on the official PostgreSQL 15 image, with pg_cron next to it.
#
#   docker build -t damascus .
#   docker run -d --name damascus -e POSTGRES_PASSWORD=secret -e ANTHROPIC_API_KEY=sk-ant-... damascus
#   docker exec -it damascus psql -U postgres -c "SELECT damascus_submit('Add a health endpoint', 'GET /healthz returns 200')"
#
# The worker serves the database named by damascus.database ('postgres' here); to use another one, pass e.g.
# `postgres -c damascus.database=app -c cron.database_name=app` as the container command and create both
# extensions in that database. Settings below apply when the container initialises an empty data directory.

# ---------------------------------------------------------------------------------------------------------------
# Builder: the same steps as `make deps` + `cargo pgrx install`, on the same Debian release and PostgreSQL
# packages (the image's PGDG repository) as the runtime stage, so the library matches the server it loads into.
FROM postgres:15-bookworm AS builder

# curl and CA certificates only fetch rustup; scripts/deps.sh installs everything else.
RUN apt-get update \
 && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends curl ca-certificates \
 && rm -rf /var/lib/apt/lists/*

# The toolchain the crate declares (rust-version = "1.95"); minimal profile: no docs, no clippy/rustfmt.
ENV RUSTUP_HOME=/usr/local/rustup \
    CARGO_HOME=/usr/local/cargo \
    PATH=/usr/local/cargo/bin:$PATH
RUN curl --proto '=https' --tlsv1.2 -sSf https://sh.rustup.rs \
      | sh -s -- -y --no-modify-path --profile minimal --default-toolchain 1.95.0 \
 && rustc --version

# Literally what `make deps` runs: the Debian packages (postgresql-server-dev-15, clang, libclang-dev, ...),
# `cargo install cargo-pgrx --version 0.18.1 --locked`, and `cargo pgrx init --pg15 <pg_config>`.
# Copied on its own so this slow layer is reused while only the source changes.
COPY scripts/deps.sh /tmp/deps.sh
RUN PG_CONFIG=/usr/lib/postgresql/15/bin/pg_config bash /tmp/deps.sh \
 && rm -rf /var/lib/apt/lists/* "$CARGO_HOME/registry/cache"

# Only what the build reads (not target/ or .run/): the workspace manifests, its crates, the SQL and control file.
WORKDIR /src
COPY Cargo.toml Cargo.lock damascus.control Makefile ./
COPY src ./src
COPY crates ./crates
COPY sql ./sql
COPY fakellm ./fakellm
COPY bench/core.rs ./bench/core.rs

# Installs damascus.so into /usr/lib/postgresql/15/lib and damascus.control + damascus--<version>.sql (and the
# upgrade scripts) into /usr/share/postgresql/15/extension of this stage, where the runtime stage picks them up;
# `make install-sql` adds the older full install scripts (CREATE EXTENSION damascus VERSION '0.1.0'), as make
# test and make install do.
RUN cargo pgrx install --release --pg-config /usr/lib/postgresql/15/bin/pg_config \
 && make install-sql PG_CONFIG=/usr/lib/postgresql/15/bin/pg_config

# ---------------------------------------------------------------------------------------------------------------
# Runtime: the plain image plus pg_cron (optional scheduling of `SELECT damascus_tick()`) and the built files.
FROM postgres:15-bookworm

RUN apt-get update \
 && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends postgresql-15-cron \
 && rm -rf /var/lib/apt/lists/*

COPY --from=builder /usr/lib/postgresql/15/lib/damascus.so /usr/lib/postgresql/15/lib/
COPY --from=builder /usr/share/postgresql/15/extension/damascus* /usr/share/postgresql/15/extension/

# Both libraries start background workers, which only works when preloaded. The image's initdb copies this
# sample into every new data directory, so the settings are the default for a fresh volume (an existing volume
# keeps its own postgresql.conf). The worker needs no API key here: pass ANTHROPIC_API_KEY with `docker run -e`,
# and the server reads it from its environment; nothing secret is baked into the image.
RUN { \
      echo; \
      echo "# Added by the damascus image"; \
      echo "shared_preload_libraries = 'damascus,pg_cron'"; \
      echo "damascus.database = 'postgres'"; \
      echo "cron.database_name = 'postgres'"; \
    } >> /usr/share/postgresql/postgresql.conf.sample

# Runs once, on first start with an empty data directory, after initdb (see the image's docs on initdb.d).
COPY scripts/docker-initdb.sh /docker-entrypoint-initdb.d/10-damascus.sh
