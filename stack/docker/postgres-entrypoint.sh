#!/bin/sh
# Initialise an empty /data (size-capped tmpfs volume), then exec postgres as PID 1.
# Authentication: scram-sha-256 for every TCP client (no trust), peer on the local socket.
# Passwords come from the compose secrets /run/secrets/pg-<name>.pgpass ("*:*:*:role:pw").
set -eu
BIN=/usr/lib/postgresql/15/bin
PGDATA=/data/pgdata
password() { cut -d: -f5- "/run/secrets/pg-$1.pgpass"; }
for name in postgres checkout probe; do
    test -s "/run/secrets/pg-$name.pgpass" || { echo "missing secret pg-$name.pgpass" >&2; exit 1; }
done
mkdir -p "$PGDATA"
chown postgres:postgres /data "$PGDATA"
chmod 0700 "$PGDATA"
if [ ! -s "$PGDATA/PG_VERSION" ]; then
    pwfile=/data/.pwfile
    (umask 077; password postgres > "$pwfile")
    chown postgres:postgres "$pwfile"
    runuser -u postgres -- "$BIN/initdb" -D "$PGDATA" -U postgres --auth-host=scram-sha-256 \
        --auth-local=peer --pwfile="$pwfile" -E UTF8 --no-sync >/dev/null
    rm -f "$pwfile"
    # published on 127.0.0.1 only; inside the stack's network every client needs a password
    echo "host all all 0.0.0.0/0 scram-sha-256" >> "$PGDATA/pg_hba.conf"
    # the stack's tuning, shared with the local stack (stack/postgresql.conf)
    cat /opt/cc/postgresql.conf >> "$PGDATA/postgresql.conf"
    runuser -u postgres -- "$BIN/pg_ctl" -D "$PGDATA" -w -t 60 -o "-c listen_addresses='' -k /tmp" start >/dev/null
    runuser -u postgres -- psql -h /tmp -U postgres -v ON_ERROR_STOP=1 -q -c "CREATE DATABASE checkout"
    runuser -u postgres -- psql -h /tmp -U postgres -d checkout -v ON_ERROR_STOP=1 -q -f /opt/cc/schema.sql
    # roles: checkout_app (read/insert/update orders), checkout_probe (read orders); the
    # passwords reach psql through its environment (\getenv), never a command line
    CC_APP_PW=$(password checkout) CC_PROBE_PW=$(password probe)
    export CC_APP_PW CC_PROBE_PW
    runuser -u postgres -- psql -h /tmp -U postgres -d checkout -v ON_ERROR_STOP=1 -q -f /opt/cc/roles.sql
    unset CC_APP_PW CC_PROBE_PW
    runuser -u postgres -- "$BIN/pg_ctl" -D "$PGDATA" -w -t 60 -m fast stop >/dev/null
fi
exec runuser -u postgres -- "$BIN/postgres" -D "$PGDATA" -p 5432 -k /tmp -c listen_addresses='*'
