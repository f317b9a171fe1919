#!/usr/bin/env bash
# Checks the Helm chart: alert rules (promtool check + unit tests), the dashboard JSON, the values
# files against values.schema.json, and the rendered manifests of every values file (the defaults,
# each ci/*-values.yaml, and the repository's config/production.toml with its mappings and
# connectors) with kubernetes-validate; then runs `latchkey check` on each rendered configuration,
# laid out as the pod sees it: each ConfigMap key at its volumeMount's path, the container's
# environment set (secret values replaced by placeholders).
# Installs promtool (Debian's prometheus package) when missing, and the Python tools
# (kubernetes-validate, helm-python-sdk) into the CI virtual environment (.ci/python-venv.sh);
# renders with helm, or without it through Helm's Go SDK (helm-python-sdk). The latchkey binary is
# $LATCHKEY_BIN, or built with cargo.
set -euo pipefail
cd "$(dirname "$0")/latchkey"
. ../../.ci/python-venv.sh

SUDO=""
if [ "$(id -u)" -ne 0 ]; then SUDO="sudo"; fi

if ! command -v promtool >/dev/null 2>&1; then
  echo "== installing promtool (Debian package prometheus)"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends prometheus >/dev/null
  # The package starts a Prometheus server where an init system runs; only the tool is wanted.
  $SUDO systemctl stop prometheus >/dev/null 2>&1 || true
fi
ensure_venv
if ! command -v kubernetes-validate >/dev/null 2>&1 || ! python3 -c "import jsonschema, yaml" 2>/dev/null; then
  echo "== installing kubernetes-validate (PyPI, into $LATCHKEY_VENV)"
  venv_pip kubernetes-validate jsonschema pyyaml
fi
if [ -z "${LATCHKEY_BIN:-}" ]; then
  echo "== building latchkey (for latchkey check)"
  (cd ../.. && cargo build --quiet --locked --bin latchkey)
  LATCHKEY_BIN="${CARGO_TARGET_DIR:-$(cd ../.. && pwd)/target}/debug/latchkey"
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

# Render with the helm binary where it is installed; otherwise with Helm's own Go SDK through the
# helm-python-sdk wheel (PyPI), which needs no binary: the same engine, the same templates.
render() { # values-file-or-empty output
  if command -v helm >/dev/null 2>&1; then
    helm template latchkey . ${1:+-f "$1"} > "$2"
  else
    python3 - "$1" "$2" <<'PY'
import sys, yaml
import helm_python as helm
values = yaml.safe_load(open(sys.argv[1])) if sys.argv[1] else {}
with helm.Chart.load(".") as chart:
    chart.validate_schema(chart.merge_values(values))
    manifests = chart.render(values, name="latchkey", namespace="latchkey")
with open(sys.argv[2], "w") as out:
    for name in sorted(manifests):
        if manifests[name].strip() and not name.endswith("NOTES.txt"):
            out.write(f"---\n# Source: {name}\n{manifests[name]}\n")
PY
  fi
}
if ! command -v helm >/dev/null 2>&1 && ! python3 -c "import helm_python" 2>/dev/null; then
  echo "== installing helm-python-sdk (PyPI: Helm's Go SDK, no binary needed; into $LATCHKEY_VENV)"
  venv_pip helm-python-sdk
fi
out=$(mktemp -d)
trap 'rm -rf "$out"' EXIT
echo "== helm lint"
if command -v helm >/dev/null 2>&1; then
  helm lint . -f ci/postgres-values.yaml
else
  python3 - <<'PY'
import sys
import helm_python as helm
report = helm.lint(".")
for m in report["messages"]:
    print("  ", m)
sys.exit(1 if report["errors"] else 0)
PY
fi
# The repository's production configuration, as the chart would carry it: latchkey.toml without
# what the chart writes, its mappings and connector profiles as files, its secrets from Secrets.
python3 - ../../config/production.toml "$out/production-values.yaml" <<'PY'
import glob, os, re, sys, yaml
text = open(sys.argv[1]).read()
values = yaml.safe_load(open("ci/postgres-values.yaml"))
# Drop `version` and `instance`, and the [store] and [http] tables: the chart writes those.
kept, skip = [], False
for line in text.splitlines():
    header = re.match(r"^\[([^\]]+)\]", line)
    if header:
        skip = header.group(1) in ("store", "http")
    if skip or re.match(r"^(version|instance)\s*=", line):
        continue
    kept.append(line)
values["config"] = "\n".join(kept) + "\n"
values["mappings"] = {os.path.basename(f): open(f).read() for f in sorted(glob.glob("../../mappings/*.toml"))}
values["connectors"] = {os.path.basename(f): open(f).read() for f in sorted(glob.glob("../../connectors/*.toml"))}
names = sorted(set(re.findall(r'env = "([A-Z0-9_]+)"', values["config"])))
values["secretEnv"] = [{"name": n, "secretName": "latchkey-secrets", "key": n.lower().replace("_", "-")} for n in names]
yaml.safe_dump(values, open(sys.argv[2], "w"), sort_keys=False)
PY
# `latchkey check` on a rendered chart, as the pod would see it: each ConfigMap key written where the
# Deployment mounts it, the container's environment set (secrets and the pod name as placeholders).
# Absolute paths in a configuration would be read on this machine, not in the laid-out pod: chart
# configurations use paths relative to the configuration file, as the shipped ones do.
cat > "$out/podcheck.py" <<'PY'
import os, subprocess, sys, yaml
docs = [d for d in yaml.safe_load_all(open(sys.argv[1])) if d]
root, binary = sys.argv[2], sys.argv[3]
deploy = next(d for d in docs if d["kind"] == "Deployment")
pod = deploy["spec"]["template"]["spec"]
container = pod["containers"][0]
maps = {d["metadata"]["name"]: d["data"] for d in docs if d["kind"] == "ConfigMap"}
volumes = {v["name"]: v["configMap"]["name"] for v in pod["volumes"] if "configMap" in v}
for m in container.get("volumeMounts", []):
    if m["name"] in volumes:
        path = root + m["mountPath"]
        os.makedirs(os.path.dirname(path), exist_ok=True)
        open(path, "w").write(maps[volumes[m["name"]]][m["subPath"]])
env = {"PATH": os.environ["PATH"]}
for e in container.get("env", []):
    # Secrets and the pod name are not known here: placeholders stand in for them.
    env[e["name"]] = e.get("value", "validate-placeholder")
logs = (env.get("LATCHKEY_LOG_FORMAT"), env.get("NO_COLOR"))
assert logs == ("json", "1"), f"logs are not JSON without colour by default: {logs}"
args = container["args"]
config = root + args[args.index("--config") + 1]
sys.exit(subprocess.run([binary, "check", "--config", config], env=env).returncode)
PY
for values in "" ci/postgres-values.yaml "$out/production-values.yaml"; do
  name=${values:-default}
  name=$(basename "$name" .yaml)
  echo "== helm template ($name) | kubernetes-validate"
  render "$values" "$out/$name.yaml"
  # ServiceMonitor and PrometheusRule are CRDs kubernetes-validate has no schema for; the rules
  # inside are checked by promtool below.
  python3 - "$out/$name.yaml" "$out" <<'PY'
import sys, yaml
docs = [d for d in yaml.safe_load_all(open(sys.argv[1])) if d]
core = [d for d in docs if d["apiVersion"] != "monitoring.coreos.com/v1"]
kinds = sorted(d["kind"] for d in docs)
print("   rendered:", ", ".join(kinds))
assert "Deployment" in kinds and "Service" in kinds and "ConfigMap" in kinds, kinds
yaml.safe_dump_all(core, open(sys.argv[1] + ".core", "w"))
for d in docs:
    if d["kind"] == "PrometheusRule":
        yaml.safe_dump(d["spec"], open(sys.argv[2] + "/rules.yaml", "w"))
PY
  kubernetes-validate --strict --quiet "$out/$name.yaml.core"
  if [ -f "$out/rules.yaml" ]; then promtool check rules "$out/rules.yaml"; rm "$out/rules.yaml"; fi
  echo "== latchkey check ($name), with the files where the pod mounts them"
  root="$out/$name.pod"
  python3 "$out/podcheck.py" "$out/$name.yaml" "$root" "$LATCHKEY_BIN"
done
# Several replicas on SQLite: the configuration says how many replicas share the store, and
# `latchkey check` refuses more than one on SQLite (the schema and the template refuse such values
# too; this is the configuration written by hand or by another tool).
echo "== latchkey check refuses several replicas on SQLite"
sed -i 's/^replicas = 1$/replicas = 3/' "$out/default.pod/etc/latchkey/config/latchkey.toml"
grep -q '^replicas = 3$' "$out/default.pod/etc/latchkey/config/latchkey.toml"
if "$LATCHKEY_BIN" check --config "$out/default.pod/etc/latchkey/config/latchkey.toml" 2>"$out/replicas.err"; then
  echo "latchkey check accepted 3 replicas on SQLite" >&2
  exit 1
fi
grep -q "store.replicas" "$out/replicas.err"
echo "   refused: $(cat "$out/replicas.err")"
# The check is not a formality: a configuration whose paths miss the mounts is refused.
echo "== latchkey check refuses a configuration whose paths miss the chart's mounts"
python3 - "$out/misplaced-values.yaml" <<'PY'
import sys, yaml
values = yaml.safe_load(open("values.yaml"))
values["config"] = values["config"].replace("../mappings/templates.toml", "/etc/latchkey/mappings/missing.toml")
yaml.safe_dump({"config": values["config"]}, open(sys.argv[1], "w"))
PY
render "$out/misplaced-values.yaml" "$out/misplaced.yaml"
if python3 "$out/podcheck.py" "$out/misplaced.yaml" "$out/misplaced.pod" "$LATCHKEY_BIN" 2>"$out/misplaced.err"; then
  echo "latchkey check accepted a configuration naming a file the pod does not have" >&2
  exit 1
fi
echo "   refused: $(cat "$out/misplaced.err")"
echo "== chart ok"
