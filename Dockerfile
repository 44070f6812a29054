# Placeholder until the build stage lands; see README.
FROM postgres:15-bookworm
