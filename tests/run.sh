#!/usr/bin/env bash
# Runs the whole test suite on a fresh machine. Installs and starts what the tests need when it is
# missing (PostgreSQL on 127.0.0.1:5432, user postgres, trust auth, database `test`), then runs every
# test with PostgreSQL required: a store test that cannot reach it fails instead of being skipped.
# The same for slapd (slapd and ldap-utils are installed when missing).
set -euo pipefail
cd "$(dirname "$0")/.."

SUDO=""
if [ "$(id -u)" -ne 0 ]; then SUDO="sudo"; fi

pg_ready() { pg_isready -h 127.0.0.1 -p 5432 -q 2>/dev/null; }

ensure_postgres() {
  if ! command -v pg_ctlcluster >/dev/null 2>&1; then
    echo "== installing PostgreSQL"
    $SUDO apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq postgresql >/dev/null
  fi
  local version
  version=$(ls /etc/postgresql | sort -V | tail -1)
  local hba="/etc/postgresql/$version/main/pg_hba.conf"
  # The tests connect as postgres over TCP without a password, as on the project's machines.
  if ! $SUDO grep -q "^host all postgres 127.0.0.1/32 trust" "$hba"; then
    echo "== changing PostgreSQL's configuration: $hba gets two lines at the top,"
    echo "   'host all postgres 127.0.0.1/32 trust' and 'host all postgres ::1/128 trust'"
    echo "   (the user postgres connects from this machine without a password), then a reload."
    echo "   A copy of the file as it was: $hba.before-latchkey-tests"
    [ -e "$hba.before-latchkey-tests" ] || $SUDO cp "$hba" "$hba.before-latchkey-tests"
    $SUDO sed -i '1i host all postgres 127.0.0.1/32 trust' "$hba"
    $SUDO sed -i '1i host all postgres ::1/128 trust' "$hba"
    if pg_ready; then $SUDO pg_ctlcluster --skip-systemctl-redirect "$version" main reload; fi
  fi
  if ! pg_ready; then
    echo "== starting PostgreSQL $version"
    $SUDO pg_ctlcluster --skip-systemctl-redirect "$version" main start
  fi
  for _ in $(seq 1 30); do pg_ready && break; sleep 1; done
  pg_ready || { echo "PostgreSQL did not start" >&2; exit 1; }
  if ! psql -h 127.0.0.1 -U postgres -tAc "SELECT 1 FROM pg_database WHERE datname = 'test'" | grep -q 1; then
    psql -h 127.0.0.1 -U postgres -c "CREATE DATABASE test" >/dev/null
  fi
}

if ! pg_ready || ! psql -h 127.0.0.1 -U postgres -d test -tAc "SELECT 1" >/dev/null 2>&1; then
  ensure_postgres
fi

# OpenLDAP for tests/suite/ldap.rs: the tests start their own slapd as a child process (a temp directory,
# a free loopback port); only the binaries and modules are needed. Debian's package starts a system
# slapd on port 389 where service scripts are allowed to run; the tests do not use it.
ensure_slapd() {
  if ! command -v slapd >/dev/null 2>&1 && [ ! -x /usr/sbin/slapd ]; then
    echo "== installing slapd and ldap-utils"
    $SUDO apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq slapd ldap-utils >/dev/null
    if command -v service >/dev/null 2>&1; then $SUDO service slapd stop >/dev/null 2>&1 || true; fi
  fi
}
ensure_slapd

# The web console's tests: a real OpenID Connect provider (tests/oidc, the `oidc-provider` package
# run with node) and a real headless browser (Debian's chromium with its WebDriver, chromedriver).
ensure_browser() {
  local missing=()
  command -v node >/dev/null 2>&1 || missing+=(nodejs npm)
  command -v chromium >/dev/null 2>&1 || missing+=(chromium)
  command -v chromedriver >/dev/null 2>&1 || missing+=(chromium-driver)
  # Text in screenshots needs a font.
  [ -n "$(fc-list 2>/dev/null | head -1)" ] || missing+=(fonts-dejavu-core)
  if [ ${#missing[@]} -gt 0 ]; then
    echo "== installing ${missing[*]}"
    $SUDO apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${missing[@]}" >/dev/null
  fi
  if [ ! -d tests/oidc/node_modules/oidc-provider ]; then
    echo "== installing the test OpenID provider (npm ci in tests/oidc)"
    (cd tests/oidc && npm ci --no-audit --no-fund --loglevel=error)
  fi
}
ensure_browser

export LATCHKEY_TEST_POSTGRES_URL="${LATCHKEY_TEST_POSTGRES_URL:-postgres://postgres@127.0.0.1:5432/test}"
export LATCHKEY_TEST_REQUIRE_POSTGRES=1
export LATCHKEY_TEST_REQUIRE_LDAP=1
export LATCHKEY_TEST_REQUIRE_BROWSER=1
echo "== cargo test (SQLite and PostgreSQL at $LATCHKEY_TEST_POSTGRES_URL)"
cargo test --workspace --all-targets --locked -- --test-threads=2
