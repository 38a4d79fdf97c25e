#!/usr/bin/env bash
# Installs the `shoal` Python package from the repository the way the
# README says (`pip install ./python`) into python/.venv, with pinned
# maturin, numpy, pytest, boto3 and mypy, checks the package's stubs and
# python/examples/ with `mypy --strict`, and runs its pytest suite
# (python/tests/): a local directory and memory:// always; moto
# (SHOAL_TEST_S3_ENDPOINT) and SeaweedFS (SHOAL_SEAWEED_PORT) when set, as
# scripts/test.sh sets them (under CI a missing server fails the S3 cases).
#
#   scripts/python-test.sh [PYTEST ARGS...]
#
# The native module is built in the dev profile into the workspace's
# target directory, so after `cargo run` (the demo step) only the
# Python-specific crates (pyo3, numpy) and shoal itself are compiled.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
venv="$PWD/python/.venv"
bash scripts/venv.sh "$venv" "maturin==1.16.0" "pytest==9.2.0" "numpy==2.4.6" "boto3==1.44.8" "mypy==2.4.1"
# --no-build-isolation: build with the pinned maturin above (found on
# PATH) instead of fetching the newest into a throwaway environment.
PATH="$venv/bin:$PATH" CARGO_TARGET_DIR="$PWD/target" \
  "$venv/bin/pip" install --quiet --disable-pip-version-check --no-build-isolation \
  --config-settings=build-args="--profile dev --locked" ./python
# Type-check from python/, so `shoal` is the source package with its
# stubs (_shoal.pyi), the examples included.
(cd python && "$venv/bin/mypy" --strict shoal examples)
# From python/tests, not python/: there the shoal/ source directory would
# shadow the installed package (which holds the native module).
cd python/tests
exec "$venv/bin/pytest" -q "$@"
