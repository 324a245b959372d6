#!/usr/bin/env bash
# Creates a Python 3.10 virtual environment from a lock file.
#   tools/bootstrap.sh [VENV_DIR [LOCK_FILE]]
#     .venv         requirements.lock         the project (default)
#     .venv-tflite  requirements-tflite.lock  tflite-support alone: the TFLite
#                   Task Library, which cannot share a process with TensorFlow
# The project itself is installed (editable) only with requirements.lock.
# Needs: a CPython 3.10 interpreter, the Debian package libusb-1.0-0 (for
# tflite-support; installed here with apt-get when running as root).
set -euo pipefail
cd "$(dirname "$0")/.."
venv="${1:-.venv}"
lock="${2:-requirements.lock}"

find_python310() {
  local candidates=()
  [ -n "${PYTHON310:-}" ] && candidates+=("$PYTHON310")
  candidates+=(python3.10)
  if command -v pyenv >/dev/null 2>&1; then
    candidates+=("$(pyenv root)"/versions/3.10*/bin/python3.10)
  fi
  candidates+=("$HOME"/.pyenv/versions/3.10*/bin/python3.10 /usr/bin/python3.10 /usr/local/bin/python3.10)
  for p in "${candidates[@]}"; do
    # A pyenv shim can exist and still fail to run: try it.
    if "$p" -c 'import sys; assert sys.version_info[:2] == (3, 10)' >/dev/null 2>&1; then
      echo "$p"; return 0
    fi
  done
  return 1
}

if ! py=$(find_python310); then
  echo "ERROR: no working Python 3.10 interpreter found (tfx 1.16 needs >=3.9,<3.11)." >&2
  echo "Install one (e.g. 'pyenv install 3.10' or your distribution's python3.10)," >&2
  echo "or point PYTHON310 at it: PYTHON310=/path/to/python3.10 make test" >&2
  exit 1
fi

if ! ldconfig -p 2>/dev/null | grep -q 'libusb-1.0.so.0'; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    echo "Installing the Debian package libusb-1.0-0 (needed by tflite-support)..."
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq libusb-1.0-0 >/dev/null
  else
    echo "ERROR: libusb-1.0.so.0 is missing; tflite-support needs it." >&2
    echo "Install the Debian package: sudo apt-get install -y libusb-1.0-0" >&2
    exit 1
  fi
fi

echo "Creating $venv from $lock with $py ($("$py" --version))..."
"$py" -m venv "$venv"
"$venv/bin/python" -m pip install -q --upgrade pip==24.3.1 setuptools==75.8.0 wheel==0.45.1
"$venv/bin/python" -m pip install -q --no-deps -r "$lock"
if [ "$lock" = requirements.lock ]; then
  "$venv/bin/python" -m pip install -q --no-deps -e .
fi
"$venv/bin/python" -m pip check
touch "$venv/.installed"
echo "Environment ready: $venv"
