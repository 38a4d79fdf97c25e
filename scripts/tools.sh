#!/usr/bin/env bash
# Installs the pinned Python-packaged tools the test command uses into
# .tools-venv (once): cfn-lint for the SAM template, cargo-lambda for the
# Lambda runtime test and builds. Prints the venv's bin directory.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
venv=".tools-venv"
pins=("cfn-lint==1.58.0" "cargo-lambda==1.9.2")
stamp="$venv/.pins"
if [ ! -f "$stamp" ] || [ "$(cat "$stamp")" != "${pins[*]}" ]; then
  echo "tools: installing ${pins[*]} into $venv" >&2
  rm -rf "$venv"
  if ! python3 -m venv "$venv" 2>/dev/null; then
    rm -rf "$venv"
    python3 -m pip install --quiet --user --disable-pip-version-check virtualenv \
      || python3 -m pip install --quiet --user --break-system-packages --disable-pip-version-check virtualenv
    python3 -m virtualenv --quiet "$venv"
  fi
  "$venv/bin/pip" install --quiet --disable-pip-version-check "${pins[@]}"
  echo "${pins[*]}" > "$stamp"
fi
echo "$PWD/$venv/bin"
