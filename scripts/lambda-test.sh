#!/usr/bin/env bash
# Runs the three Lambda functions in the real Lambda runtime, emulated
# locally by `cargo lambda watch` on loopback, against the S3 test server:
# writer upserts, reader finds them, compactor compacts, a malformed event
# gets a clear error. Needs SHOAL_TEST_S3_ENDPOINT (scripts/test.sh sets it).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
: "${SHOAL_TEST_S3_ENDPOINT:?start the S3 test server first (scripts/test.sh does)}"
export PATH="$(bash scripts/tools.sh):$PATH"
port="${SHOAL_LAMBDA_PORT:-9109}"
bucket="lambda-test-$RANDOM$RANDOM"
python3 -c "import urllib.request as u; u.urlopen(u.Request('$SHOAL_TEST_S3_ENDPOINT/$bucket', method='PUT'))"

# Build the functions the way `cargo lambda watch` runs them (`cargo run
# --bin <function>`: no dev-dependency features), so the first invocation
# does not compile the dependency tree while the emulator waits for it.
for f in reader writer compactor; do
  cargo build --quiet -p "shoal-$f" --bin "shoal-$f"
done

log="$(mktemp)"
SHOAL_BUCKET="s3://$bucket/idx" AWS_ENDPOINT_URL="$SHOAL_TEST_S3_ENDPOINT" \
  AWS_ACCESS_KEY_ID=test AWS_SECRET_ACCESS_KEY=test AWS_REGION=us-east-1 \
  SHOAL_DIMENSIONS=3 SHOAL_PARTITIONS=4 \
  setsid cargo lambda watch --timeout 60 --invoke-address 127.0.0.1 --invoke-port "$port" >"$log" 2>&1 &
watch_pid=$!
stop() { kill -- "-$watch_pid" 2>/dev/null || true; wait "$watch_pid" 2>/dev/null || true; }
trap stop EXIT
for _ in $(seq 1 100); do
  grep -q "starting Runtime server" "$log" && break
  kill -0 "$watch_pid" 2>/dev/null || { cat "$log"; exit 1; }
  sleep 0.2
done

invoke() { # function, payload -> response body
  curl -sS --max-time 600 -X POST "http://127.0.0.1:$port/2015-03-31/functions/$1/invocations" -d "$2"
}
expect() { # label, response, python condition on `r`
  if python3 -c "import json,sys; r=json.loads(sys.argv[1]); sys.exit(0 if ($3) else 1)" "$2"; then
    echo "lambda-test: ok   $1"
  else
    echo "lambda-test: FAIL $1: $2"; echo "--- cargo lambda watch log:"; tail -50 "$log"; exit 1
  fi
}

r=$(invoke shoal-writer '{"upsert":{"records":[{"id":"a","vector":[1,0,0],"metadata":{"sku":"x"}},{"id":"b","vector":[0,1,0]},{"id":"c","vector":[0,0,1]}]}}')
expect "writer upsert acknowledged after commit" "$r" 'r["records"] == 3 and len(r["segments"]) >= 1'
for i in 1 2; do
  r=$(invoke shoal-writer "{\"upsert\":{\"records\":[{\"id\":\"x$i\",\"vector\":[1,1,$i]}]}}")
done
r=$(invoke shoal-writer '{"delete":{"ids":["c"]}}')
expect "writer delete" "$r" 'r["records"] == 1'
r=$(invoke shoal-reader '{"search":{"vector":[1,0.1,0],"k":10,"consistency":"strong"}}')
expect "reader finds the writer's records" "$r" 'r["results"][0]["id"] == "a" and r["results"][0]["metadata"]["domain"] == "product" and "c" not in [h["id"] for h in r["results"]] and len(r["results"]) == 4'
r=$(invoke shoal-reader '{"get":{"id":"b"}}')
expect "reader get" "$r" 'r["id"] == "b"'
r=$(invoke shoal-reader '{"version":"2.0","rawPath":"/v1/search","requestContext":{"http":{"method":"POST"}},"body":"{\"vector\":[0,1,0],\"k\":1}","isBase64Encoded":false}')
expect "reader Function URL event" "$r" 'r["statusCode"] == 200 and __import__("json").loads(r["body"])["results"][0]["id"] == "b"'
r=$(invoke shoal-reader '{"bogus":true}')
expect "malformed event: clear non-retryable error" "$r" 'r["errorType"] == "NonRetryable.invalid_request" and "malformed reader event" in r["errorMessage"]'
r=$(invoke shoal-writer '{"upsert":{"records":[{"id":"bad","vector":[1,2]}]}}')
expect "invalid record: clear error" "$r" 'r["errorType"] == "NonRetryable.invalid_request" and "vector has 2 dimensions" in r["errorMessage"]'
r=$(invoke shoal-compactor '{"source":"aws.events","detail-type":"Scheduled Event"}')
expect "compactor runs and saves its cursor" "$r" 'r["partitionsVisited"] >= 1 and "cursor" in r'
r=$(invoke shoal-reader '{"search":{"vector":[1,0.1,0],"k":10,"consistency":"strong"}}')
expect "reader after compaction" "$r" 'len(r["results"]) == 4'
echo "lambda-test: all passed"
