# Sourced by .ci/run: a PostgreSQL cluster on loopback for the multi-replica tests (tests/postgres.rs), and
# PORTICO_TEST_POSTGRES_URL naming a role that may create databases (each test makes its own).
# Idempotent: a cluster that exists or already runs, and a role that exists, are reused.
# Needs Debian's `postgresql` (postgresql-common's pg_lsclusters/pg_ctlcluster); runs as root.

portico_postgres() {
  local line version cluster port status
  line=$(pg_lsclusters --no-header | head -n 1)
  if [ -z "$line" ]; then
    version=$(ls /usr/lib/postgresql | sort -V | tail -n 1)
    pg_createcluster "$version" main >/dev/null
    line=$(pg_lsclusters --no-header | head -n 1)
  fi
  read -r version cluster port status _ <<<"$line"
  case "$status" in
    online*) ;;
    *) pg_ctlcluster "$version" "$cluster" start ;;
  esac
  # Debian's cluster listens on localhost and takes scram-sha-256 passwords over TCP.
  runuser -u postgres -- psql -p "$port" -v ON_ERROR_STOP=1 -q <<'SQL'
DO $$ BEGIN
  IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'portico_test') THEN
    CREATE ROLE portico_test LOGIN CREATEDB PASSWORD 'portico_test';
  END IF;
END $$;
SQL
  export PORTICO_TEST_POSTGRES_URL="postgres://portico_test:portico_test@127.0.0.1:$port/postgres"
  echo "PostgreSQL $version/$cluster on 127.0.0.1:$port for the tests"
}

portico_postgres
