#!/usr/bin/env bash
# Checks the Helm chart: alert rules (promtool check + unit tests), the dashboard JSON, the values
# files against values.schema.json, and, where helm is installed, the rendered manifests with
# kubernetes-validate (default values, and several replicas on PostgreSQL).
# Installs promtool (Debian's prometheus package) and kubernetes-validate (PyPI) when missing.
# LATCHKEY_REQUIRE_HELM=1 makes a missing helm a failure instead of a skipped step.
set -euo pipefail
cd "$(dirname "$0")/latchkey"

SUDO=""
if [ "$(id -u)" -ne 0 ]; then SUDO="sudo"; fi

if ! command -v promtool >/dev/null 2>&1; then
  echo "== installing promtool (Debian package prometheus)"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends prometheus >/dev/null
  # The package starts a Prometheus server where an init system runs; only the tool is wanted.
  $SUDO systemctl stop prometheus >/dev/null 2>&1 || true
fi
if ! command -v kubernetes-validate >/dev/null 2>&1; then
  echo "== installing kubernetes-validate (PyPI)"
  python3 -m pip install -q kubernetes-validate
fi

echo "== promtool check rules"
promtool check rules files/latchkey-rules.yaml
echo "== promtool test rules"
(cd files && promtool test rules latchkey-rules.test.yaml)

echo "== dashboard JSON and values schema"
python3 - <<'PY'
import copy, json, sys
import jsonschema, yaml

dash = json.load(open("dashboards/latchkey.json"))
assert dash["schemaVersion"] >= 36 and dash["panels"], "dashboard: schemaVersion and panels"
schema = json.load(open("values.schema.json"))
jsonschema.Draft7Validator.check_schema(schema)
defaults = yaml.safe_load(open("values.yaml"))

def merge(base, over):
    out = copy.deepcopy(base)
    for k, v in (over or {}).items():
        out[k] = merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out

import glob
cases = [("values.yaml", defaults)] + [(f, merge(defaults, yaml.safe_load(open(f)))) for f in sorted(glob.glob("ci/*-values.yaml"))]
# Values the chart must refuse: several replicas on SQLite; PostgreSQL without its Secret.
bad = [
    ("3 replicas on SQLite", merge(defaults, {"replicaCount": 3})),
    ("postgres without a Secret", merge(defaults, {"database": {"kind": "postgres"}})),
    ("unknown key", merge(defaults, {"replicas": 2})),
]
v = jsonschema.Draft7Validator(schema)
for name, values in cases:
    errors = list(v.iter_errors(values))
    if errors:
        sys.exit(f"{name}: {errors[0].message}")
    print(f"  {name}: valid")
for name, values in bad:
    if v.is_valid(values):
        sys.exit(f"schema accepts bad values: {name}")
    print(f"  rejected as it should: {name}")
PY

if command -v helm >/dev/null 2>&1; then
  out=$(mktemp -d)
  trap 'rm -rf "$out"' EXIT
  echo "== helm lint"
  helm lint . -f ci/postgres-values.yaml
  for values in "" ci/postgres-values.yaml; do
    name=${values:-default}
    name=$(basename "$name" .yaml)
    echo "== helm template ($name) | kubernetes-validate"
    helm template latchkey . ${values:+-f "$values"} > "$out/$name.yaml"
    # ServiceMonitor and PrometheusRule are CRDs kubernetes-validate has no schema for; the rules
    # inside are checked by promtool below.
    python3 - "$out/$name.yaml" "$out" <<'PY'
import sys, yaml
docs = [d for d in yaml.safe_load_all(open(sys.argv[1])) if d]
core = [d for d in docs if d["apiVersion"] != "monitoring.coreos.com/v1"]
yaml.safe_dump_all(core, open(sys.argv[1] + ".core", "w"))
for d in docs:
    if d["kind"] == "PrometheusRule":
        yaml.safe_dump(d["spec"], open(sys.argv[2] + "/rules.yaml", "w"))
PY
    kubernetes-validate --strict --quiet "$out/$name.yaml.core"
    if [ -f "$out/rules.yaml" ]; then promtool check rules "$out/rules.yaml"; rm "$out/rules.yaml"; fi
  done
else
  echo "== helm is not installed: the templates were NOT rendered, and kubernetes-validate did not run on them"
  if [ "${LATCHKEY_REQUIRE_HELM:-0}" = "1" ]; then exit 1; fi
fi
echo "== chart ok"
