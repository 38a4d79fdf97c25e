#!/usr/bin/env bash
# The whole test suite: the README's test command and what CI runs.
#
# Starts the S3 test server (moto, on 127.0.0.1), then runs cargo fmt --check,
# cargo clippy (-D warnings) and every test, including the S3 integration
# tests over HTTP, and stops the server even when something fails.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

export SHOAL_S3_PORT="${SHOAL_S3_PORT:-5599}"
bash localstack/s3-server.sh start
trap 'bash localstack/s3-server.sh stop' EXIT

export SHOAL_TEST_S3_ENDPOINT="http://127.0.0.1:${SHOAL_S3_PORT}"
# moto accepts any credentials; the SDK needs some to sign requests.
export AWS_ACCESS_KEY_ID="${AWS_ACCESS_KEY_ID:-test}"
export AWS_SECRET_ACCESS_KEY="${AWS_SECRET_ACCESS_KEY:-test}"
export AWS_REGION="${AWS_REGION:-us-east-1}"

echo "== cargo fmt --check"
cargo fmt --all -- --check
echo "== cargo clippy --all-targets -- -D warnings"
cargo clippy --all-targets --locked -- -D warnings
echo "== cargo test"
cargo test --workspace --locked
