#!/usr/bin/env bash
# Installs the pinned Python-packaged tools the test command uses into
# .tools-venv (once): cfn-lint for the SAM template, cargo-lambda for the
# Lambda runtime test and builds. Prints the venv's bin directory.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
bash scripts/venv.sh .tools-venv "cfn-lint==1.58.0" "cargo-lambda==1.9.2"
echo "$PWD/.tools-venv/bin"
