#!/usr/bin/env bash
# The whole test suite: the README's test command and what CI runs.
#
# Starts the S3 test servers (moto, SeaweedFS and LocalStack, on
# 127.0.0.1), then runs cargo fmt --check, cargo clippy (-D warnings),
# every Rust test (including the S3 integration tests over HTTP against
# moto), the S3 tests again against SeaweedFS and against LocalStack, the
# boto3 test of the S3 Vectors API, the pytest suite of the Python package
# (python/, built with maturin), the Lambda functions in the real runtime
# (cargo lambda watch, loopback), cfn-lint on the SAM template, static
# checks of the deployment manifests, and every fuzz target for a bounded
# time (SHOAL_FUZZ_SECONDS, default 20); stops the servers even when
# something fails.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

# The suite builds everything once: incremental caches would only add 2 GB
# or more to the target directory (CI's disk filled at stop 42).
export CARGO_INCREMENTAL=0

export SHOAL_S3_PORT="${SHOAL_S3_PORT:-5599}"
export SHOAL_SEAWEED_PORT="${SHOAL_SEAWEED_PORT:-8533}"
export SHOAL_LOCALSTACK_PORT="${SHOAL_LOCALSTACK_PORT:-4599}"
# On failure, SeaweedFS's and LocalStack's own error logs name what went
# wrong on their side (a 500 reaches the tests only as "InternalError").
trap 'rc=$?; if [ "$rc" -ne 0 ]; then bash localstack/s3-server.sh errors seaweedfs;
      bash localstack/s3-server.sh errors localstack; fi
      bash localstack/s3-server.sh stop moto; bash localstack/s3-server.sh stop seaweedfs
      bash localstack/s3-server.sh stop localstack' EXIT
bash localstack/s3-server.sh start moto
bash localstack/s3-server.sh start seaweedfs
bash localstack/s3-server.sh start localstack

export SHOAL_TEST_S3_ENDPOINT="http://127.0.0.1:${SHOAL_S3_PORT}"
# moto accepts any credentials; the SDK needs some to sign requests.
export AWS_ACCESS_KEY_ID="${AWS_ACCESS_KEY_ID:-test}"
export AWS_SECRET_ACCESS_KEY="${AWS_SECRET_ACCESS_KEY:-test}"
export AWS_REGION="${AWS_REGION:-us-east-1}"

echo "== cargo fmt --check"
cargo fmt --all -- --check
cargo fmt --manifest-path fuzz/Cargo.toml -- --check
echo "== cargo clippy --all-targets -- -D warnings"
cargo clippy --workspace --all-targets --locked -- -D warnings
cargo clippy --manifest-path fuzz/Cargo.toml --all-targets --locked -- -D warnings
echo "== structure (layering, cycles, conditional writes, front ends, shipped features)"
python3 scripts/check-structure.py
echo "== cargo test"
# S3 tests cannot pass by skipping: each skip is logged here, and any fails the run.
export SHOAL_TEST_SKIP_LOG="$(mktemp)"
cargo test --workspace --locked
if [ -s "$SHOAL_TEST_SKIP_LOG" ]; then
  echo "FAIL: these S3 tests skipped instead of running against $SHOAL_TEST_S3_ENDPOINT:" >&2
  cat "$SHOAL_TEST_SKIP_LOG" >&2
  exit 1
fi
# The S3 tests again against another server: every test with s3 in its
# name (the store conformance suite, the s3:: backend instances and the
# *_s3 scenarios). Fails unless the whole suite ran and passed.
s3_suite_against() {
  local name="$1" endpoint="$2" log ran
  log="$(mktemp)"
  SHOAL_TEST_S3_ENDPOINT="$endpoint" cargo test --workspace --locked -- s3 2>&1 | tee "$log"
  ran="$(grep -Eo '^test result: ok\. [0-9]+ passed' "$log" | awk '{s += $4} END {print s + 0}')"
  rm -f "$log"
  if [ "$ran" -lt 50 ]; then
    echo "FAIL: only $ran S3 tests ran against $name (expected the whole S3 suite)" >&2
    exit 1
  fi
  echo "$ran S3 tests passed against $name"
  if [ -s "$SHOAL_TEST_SKIP_LOG" ]; then
    echo "FAIL: these S3 tests skipped instead of running against $name:" >&2
    cat "$SHOAL_TEST_SKIP_LOG" >&2
    exit 1
  fi
}
echo "== the S3 tests again, against SeaweedFS (a second, independent S3 server)"
s3_suite_against SeaweedFS "http://127.0.0.1:${SHOAL_SEAWEED_PORT}"
echo "== the S3 tests again, against LocalStack (localstack-core's S3, no Docker)"
s3_suite_against LocalStack "http://127.0.0.1:${SHOAL_LOCALSTACK_PORT}"
rm -f "$SHOAL_TEST_SKIP_LOG"
echo "== the S3 Vectors API with boto3 (local directory, moto, SeaweedFS and LocalStack)"
localstack/.venv/bin/python tests/s3vectors_boto3.py
echo "== README's main command: cargo run -- demo (dev profile, scratch bucket)"
demo_dir="$(mktemp -d)"
cargo run --quiet --locked -- --bucket "$demo_dir/index" demo >"$demo_dir/demo.log" 2>&1 \
  || { cat "$demo_dir/demo.log"; exit 1; }
grep -E "recall@10" "$demo_dir/demo.log"
rm -rf "$demo_dir"
echo "== the Python package: pip install ./python, pytest (local directory, memory, moto, SeaweedFS)"
# After the demo: its build compiled shoal's dependencies with the features
# the Python module needs, so this adds only pyo3, numpy and shoal itself.
bash scripts/python-test.sh
echo "== lambda functions in the real runtime (cargo lambda watch)"
bash scripts/lambda-test.sh
tools="$(bash scripts/tools.sh)"
echo "== cfn-lint infra/template.yaml"
"$tools/cfn-lint" infra/template.yaml
echo "== deployment manifests (static checks)"
"$tools/python" scripts/check-manifests.py
echo "== deployment examples' commands on a fresh bucket (k8s, docker compose)"
"$tools/python" tests/deploy_commands.py
echo "== fuzz targets, ${SHOAL_FUZZ_SECONDS:-20} s each (cargo fuzz)"
bash scripts/fuzz.sh "${SHOAL_FUZZ_SECONDS:-20}"
echo "== all checks passed"
