#!/usr/bin/env bash
# A local PostgreSQL on 127.0.0.1 for helixflow's tests and benchmarks, as root, without systemd.
#
# Installs Debian's `postgresql` when missing, makes sure a cluster exists (the one the
# package created, or a new `main`), makes it listen on 127.0.0.1 only, starts it with
# pg_ctlcluster (which runs the server as the `postgres` user), and creates a login role
# that may create databases plus a database it owns (Prefect's migrations create the
# trusted extension pg_trgm, which the owner may do). Idempotent: when the role can log in
# over TCP already it exits at once. The password goes to psql on stdin, never on a
# command line, and is never printed.
#
# Usage: sudo bash deployments/postgres/local-postgres.sh
#   HELIXFLOW_PG_PORT (5432)  HELIXFLOW_PG_USER (helixflow)  HELIXFLOW_PG_DB (helixflow)
#   HELIXFLOW_PG_PASSWORD (a fixed test password; tests/conftest.py uses the same default)
#   HELIXFLOW_PG_TIMEOUT (60 s)
# Then: helixflow server start --database postgresql+asyncpg://helixflow@127.0.0.1:5432/helixflow
#       with HELIXFLOW_DATABASE_PASSWORD set.
set -euo pipefail

PORT="${HELIXFLOW_PG_PORT:-5432}"
ROLE="${HELIXFLOW_PG_USER:-helixflow}"
DB="${HELIXFLOW_PG_DB:-helixflow}"
PASSWORD="${HELIXFLOW_PG_PASSWORD:-hf-local-test-7c2e}"
TIMEOUT="${HELIXFLOW_PG_TIMEOUT:-60}"
log() { echo "local-postgres: $*" >&2; }

can_login() {
  command -v psql >/dev/null 2>&1 &&
    PGPASSWORD="$PASSWORD" PGCONNECT_TIMEOUT=3 psql -h 127.0.0.1 -p "$PORT" -U "$ROLE" -d "$DB" \
      -XtAq -c 'select 1' >/dev/null 2>&1
}

if can_login; then
  exit 0
fi

if [ "$(id -u)" -ne 0 ]; then
  log "must run as root to install and start PostgreSQL (it is not up on 127.0.0.1:$PORT)"; exit 1
fi

# -- package -------------------------------------------------------------------------------
if ! command -v pg_ctlcluster >/dev/null 2>&1 || ! command -v psql >/dev/null 2>&1; then
  log "installing: postgresql"
  export DEBIAN_FRONTEND=noninteractive
  # No init system in a container: keep maintainer scripts from starting daemons.
  policy=/usr/sbin/policy-rc.d
  made_policy=0
  if [ ! -e "$policy" ]; then printf '#!/bin/sh\nexit 101\n' >"$policy"; chmod +x "$policy"; made_policy=1; fi
  apt-get -o DPkg::Lock::Timeout=900 update -qq
  apt-get -o DPkg::Lock::Timeout=900 install -y -qq --no-install-recommends postgresql >/dev/null
  [ "$made_policy" -eq 1 ] && rm -f "$policy"
fi

# -- cluster -------------------------------------------------------------------------------
# The first cluster listed (the package creates `<version> main`), or a new one.
read -r VERSION NAME _ < <(pg_lsclusters -h 2>/dev/null | head -n1) || true
if [ -z "${VERSION:-}" ]; then
  VERSION="$(ls /usr/lib/postgresql | sort -V | tail -n1)"
  NAME=main
  log "creating cluster $VERSION/$NAME"
  pg_createcluster "$VERSION" "$NAME" >/dev/null
fi
CONF_DIR="/etc/postgresql/$VERSION/$NAME/conf.d"
install -d -o postgres -g postgres "$CONF_DIR"
cat >"$CONF_DIR/helixflow.conf.tmp" <<CONF
# written by helixflow deployments/postgres/local-postgres.sh
listen_addresses = '127.0.0.1'
port = $PORT
CONF
if ! cmp -s "$CONF_DIR/helixflow.conf.tmp" "$CONF_DIR/helixflow.conf" 2>/dev/null; then
  mv "$CONF_DIR/helixflow.conf.tmp" "$CONF_DIR/helixflow.conf"
  # A running server reads listen_addresses and port at start only.
  if pg_ctlcluster "$VERSION" "$NAME" status >/dev/null 2>&1; then
    pg_ctlcluster "$VERSION" "$NAME" restart
  fi
else
  rm -f "$CONF_DIR/helixflow.conf.tmp"
fi
install -d -o postgres -g postgres -m 2775 /var/run/postgresql
pg_ctlcluster "$VERSION" "$NAME" status >/dev/null 2>&1 || pg_ctlcluster "$VERSION" "$NAME" start

deadline=$((SECONDS + TIMEOUT))
until pg_isready -q -h 127.0.0.1 -p "$PORT"; do
  if [ $SECONDS -ge $deadline ]; then
    log "PostgreSQL $VERSION/$NAME not ready on 127.0.0.1:$PORT after ${TIMEOUT}s"
    tail -n 20 "/var/log/postgresql/postgresql-$VERSION-$NAME.log" >&2 || true
    exit 1
  fi
  sleep 0.5
done

# -- role and database ---------------------------------------------------------------------
quoted_password="${PASSWORD//\'/\'\'}"
runuser -u postgres -- psql -X -q -v ON_ERROR_STOP=1 -p "$PORT" -d postgres >/dev/null <<SQL
SELECT format('CREATE ROLE %I LOGIN CREATEDB', '$ROLE')
 WHERE NOT EXISTS (SELECT FROM pg_roles WHERE rolname = '$ROLE') \gexec
ALTER ROLE "$ROLE" LOGIN CREATEDB PASSWORD '$quoted_password';
SELECT format('CREATE DATABASE %I OWNER %I', '$DB', '$ROLE')
 WHERE NOT EXISTS (SELECT FROM pg_database WHERE datname = '$DB') \gexec
SQL

if ! can_login; then
  log "role $ROLE cannot log in to $DB on 127.0.0.1:$PORT (see pg_hba.conf of $VERSION/$NAME)"; exit 1
fi
log "PostgreSQL $VERSION/$NAME on 127.0.0.1:$PORT: role $ROLE, database $DB"
