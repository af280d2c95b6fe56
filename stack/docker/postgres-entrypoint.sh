#!/bin/sh
# Initialise an empty /data (size-capped tmpfs volume), then exec postgres as PID 1.
set -eu
BIN=/usr/lib/postgresql/15/bin
PGDATA=/data/pgdata
mkdir -p "$PGDATA"
chown postgres:postgres /data "$PGDATA"
chmod 0700 "$PGDATA"
if [ ! -s "$PGDATA/PG_VERSION" ]; then
    runuser -u postgres -- "$BIN/initdb" -D "$PGDATA" -U postgres --auth=trust -E UTF8 --no-sync >/dev/null
    # published on 127.0.0.1 only; inside the stack's own network every peer is trusted
    echo "host all all 0.0.0.0/0 trust" >> "$PGDATA/pg_hba.conf"
    runuser -u postgres -- "$BIN/pg_ctl" -D "$PGDATA" -w -t 60 -o "-c listen_addresses='' -k /tmp" start >/dev/null
    runuser -u postgres -- psql -h /tmp -U postgres -v ON_ERROR_STOP=1 -q -c "CREATE DATABASE checkout"
    runuser -u postgres -- psql -h /tmp -U postgres -d checkout -v ON_ERROR_STOP=1 -q -f /opt/cc/schema.sql
    runuser -u postgres -- "$BIN/pg_ctl" -D "$PGDATA" -w -t 60 -m fast stop >/dev/null
fi
exec runuser -u postgres -- "$BIN/postgres" -D "$PGDATA" -p 5432 -k /tmp \
    -c listen_addresses='*' -c shared_buffers=32MB -c max_connections=60 \
    -c max_wal_size=64MB -c min_wal_size=32MB -c log_min_messages=warning
