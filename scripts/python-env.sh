#!/usr/bin/env bash
# Creates (or refreshes) the Python environment the tests use, in target/pyenv, with the
# packages of scripts/requirements-test.txt and the SDK (clients/python) installed editable.
# Idempotent: re-installs only when the requirements or the SDK's pyproject changed.
set -euo pipefail
cd "$(dirname "$0")/.."

venv=target/pyenv
stamp="$venv/.stamp"
want="$({ cat scripts/requirements-test.txt; cat clients/python/pyproject.toml 2>/dev/null || true; } | sha256sum | cut -d' ' -f1)"

# A venv copied from another checkout still points at that checkout: make a fresh one.
if [ -e "$venv/bin/pip" ] && ! head -n1 "$venv/bin/pip" | grep -qF "$(pwd)/$venv/bin/python"; then
  echo "setup: $venv belongs to another checkout; recreating it"
  rm -rf "$venv"
fi
if [ ! -x "$venv/bin/python" ]; then
  echo "setup: creating the Python test environment in $venv"
  /usr/bin/python3 -m venv "$venv"
fi
if [ "$(cat "$stamp" 2>/dev/null || true)" != "$want" ]; then
  echo "setup: installing the Python test packages"
  "$venv/bin/pip" install --quiet --disable-pip-version-check -r scripts/requirements-test.txt </dev/null
  if [ -f clients/python/pyproject.toml ]; then
    "$venv/bin/pip" install --quiet --disable-pip-version-check -e clients/python </dev/null
  fi
  echo "$want" > "$stamp"
else
  echo "setup: Python test environment up to date"
fi
