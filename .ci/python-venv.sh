# Sourced by .ci/run and charts/validate.sh: Python tools go into a virtual environment this script
# creates (stock Debian and Ubuntu refuse `pip install` into the system interpreter, PEP 668), and its
# bin/ goes first on PATH.
#   ensure_venv             create it when missing (installs python3-venv when Debian lacks it)
#   venv_pip PACKAGE...     install into it
LATCHKEY_VENV="${LATCHKEY_VENV:-${CARGO_TARGET_DIR:-$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)/target}/ci-venv}"

ensure_venv() {
  if [ ! -x "$LATCHKEY_VENV/bin/pip" ]; then
    echo "== creating the Python virtual environment $LATCHKEY_VENV"
    if ! python3 -m venv "$LATCHKEY_VENV" >/dev/null 2>&1; then
      # Debian ships venv's ensurepip separately.
      rm -rf "$LATCHKEY_VENV"
      local sudo=""
      if [ "$(id -u)" -ne 0 ]; then sudo="sudo"; fi
      echo "== installing python3-venv (Debian package)"
      $sudo apt-get update -qq
      DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq python3-venv >/dev/null
      python3 -m venv "$LATCHKEY_VENV"
    fi
    "$LATCHKEY_VENV/bin/pip" install -q --upgrade pip >/dev/null
  fi
  export PATH="$LATCHKEY_VENV/bin:$PATH"
}

venv_pip() {
  "$LATCHKEY_VENV/bin/pip" install -q "$@"
}
