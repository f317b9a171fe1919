#!/usr/bin/env bash
# SCIM 2.0 conformance: starts `latchkey run` (SQLite in a temp dir, the Nuki simulator, one SCIM
# tenant) and runs scim2-tester against it. Exits non-zero when any check fails.
# Needs: target/debug/latchkey (cargo build), `pip install scim2-cli scim2-tester`.
# scim2-tester 0.5.2 runs 135 checks here: it PATCH-adds and -removes only attributes /Schemas marks
# optional, and a Group's displayName is required, so those two checks are not run.
set -euo pipefail

repo="$(cd "$(dirname "$0")/.." && pwd)"
bin="${LATCHKEY_BIN:-$repo/target/debug/latchkey}"
tmp="$(mktemp -d)"
pids=()
cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  for p in "${pids[@]}"; do wait "$p" 2>/dev/null || true; done
  rm -rf "$tmp"
}
trap cleanup EXIT

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1]); s.close()'; }
sim_port="$(free_port)"
http_port="$(free_port)"
token="conformance-$(head -c 16 /dev/urandom | od -An -tx1 | tr -d ' \n')"

sed -e "s|url = \"sqlite://latchkey-demo.db\"|url = \"sqlite://$tmp/state.db\"|" \
    -e "s|\"\.\./\.\./|\"$repo/|g" \
    -e "s|\"nuki-only-templates.toml\"|\"$repo/tests/fixtures/nuki-only-templates.toml\"|" \
    -e "s|base_url = \"http://127.0.0.1:8701\"|base_url = \"http://127.0.0.1:$sim_port\"|" \
    "$repo/tests/fixtures/nuki-only.toml" | awk '/^\[/ { skip = ($0 ~ /^\[(scim|http)/) } !skip' > "$tmp/latchkey.toml"
cat >> "$tmp/latchkey.toml" <<TOML

[http]
listen = "127.0.0.1:$http_port"

[scim.tenants.conformance]
token = { env = "LATCHKEY_CONFORMANCE_SCIM_TOKEN" }
TOML

"$bin" sim nuki --port "$sim_port" --token nuki-sim-token >"$tmp/sim.log" 2>&1 &
pids+=($!)
LATCHKEY_DEMO_NUKI_TOKEN=nuki-sim-token LATCHKEY_CONFORMANCE_SCIM_TOKEN="$token" \
  "$bin" run --config "$tmp/latchkey.toml" >"$tmp/latchkey.log" 2>&1 &
pids+=($!)

for _ in $(seq 1 100); do
  curl -fsS "http://127.0.0.1:$http_port/healthz" >/dev/null 2>&1 && break
  sleep 0.1
done
curl -fsS "http://127.0.0.1:$http_port/healthz" >/dev/null || { cat "$tmp/latchkey.log"; exit 1; }

out="$tmp/scim2.out"
set +e
scim2 --url "http://127.0.0.1:$http_port/scim/v2" -h "Authorization: Bearer $token" test >"$out" 2>&1
rc=$?
set -e
cat "$out"
passed="$(grep -cE '^SUCCESS' "$out" || true)"
failed="$(grep -cE '^(ERROR|CRITICAL)' "$out" || true)"
echo "scim2-tester: $passed checks succeeded, $failed failed (exit code $rc)"
[ "$rc" -eq 0 ] && [ "$failed" -eq 0 ] && [ "$passed" -gt 0 ]
