#!/usr/bin/env bash
# Creates a Python virtualenv holding exactly the given pinned packages,
# once (a stamp file records the pins; a change of pins rebuilds it):
#
#   scripts/venv.sh DIR PACKAGE==VERSION ...
#
# Debian's system python3 may lack the venv module (python3-venv); then
# virtualenv from PyPI, which needs only pip, makes the environment.
set -euo pipefail
venv="$1"
shift
stamp="$venv/.pins"
if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$*" ]; then
  exit 0
fi
echo "venv: installing $* into $venv" >&2
rm -rf "$venv"
if ! python3 -m venv "$venv" 2>/dev/null; then
  rm -rf "$venv"
  python3 -m pip install --quiet --user --disable-pip-version-check virtualenv \
    || python3 -m pip install --quiet --user --break-system-packages --disable-pip-version-check virtualenv
  python3 -m virtualenv --quiet "$venv"
fi
"$venv/bin/pip" install --quiet --disable-pip-version-check "$@"
echo "$*" >"$stamp"
