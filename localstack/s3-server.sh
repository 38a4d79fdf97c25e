#!/usr/bin/env bash
# Start or stop the S3 test server (moto, pinned) on loopback.
#
#   localstack/s3-server.sh start   # creates localstack/.venv if missing, starts moto_server,
#                                   # waits until it answers, prints the endpoint
#   localstack/s3-server.sh stop    # stops the server it started, by PID
#   localstack/s3-server.sh env     # prints `export SHOAL_TEST_S3_ENDPOINT=...` for a running server
#
# Env: SHOAL_S3_PORT (default 5599).
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
venv="$here/.venv"
port="${SHOAL_S3_PORT:-5599}"
pidfile="$here/.s3-server.pid"
logfile="$here/.s3-server.log"
moto_pin="moto[server]==5.2.5"

ensure_venv() {
  bash "$here/../scripts/venv.sh" "$venv" "$moto_pin"
}

answers() {
  python3 - "$port" <<'PY'
import sys, urllib.request
try:
    urllib.request.urlopen(f"http://127.0.0.1:{sys.argv[1]}/", timeout=1)
    sys.exit(0)
except Exception as e:
    # any HTTP answer (even an error status) means the server is up
    sys.exit(0 if hasattr(e, "code") else 1)
PY
}

start() {
  if [ -f "$pidfile" ] && kill -0 "$(cat "$pidfile")" 2>/dev/null; then
    echo "s3-server: already running (pid $(cat "$pidfile")) on 127.0.0.1:$port" >&2
    return 0
  fi
  ensure_venv
  # moto keeps everything in memory; a fresh start is an empty server.
  nohup "$venv/bin/moto_server" -H 127.0.0.1 -p "$port" >"$logfile" 2>&1 &
  echo $! >"$pidfile"
  for _ in $(seq 1 100); do
    if answers; then
      echo "s3-server: moto listening on http://127.0.0.1:$port (pid $(cat "$pidfile"))" >&2
      return 0
    fi
    if ! kill -0 "$(cat "$pidfile")" 2>/dev/null; then
      echo "s3-server: moto exited; log follows" >&2
      cat "$logfile" >&2
      rm -f "$pidfile"
      return 1
    fi
    sleep 0.2
  done
  echo "s3-server: moto did not answer on port $port within 20 s" >&2
  stop
  return 1
}

stop() {
  if [ -f "$pidfile" ]; then
    pid="$(cat "$pidfile")"
    if kill -0 "$pid" 2>/dev/null; then
      kill "$pid" 2>/dev/null || true
      for _ in $(seq 1 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
      kill -9 "$pid" 2>/dev/null || true
    fi
    rm -f "$pidfile"
    echo "s3-server: stopped (pid $pid)" >&2
  fi
}

case "${1:-}" in
  start) start ;;
  stop) stop ;;
  env) echo "export SHOAL_TEST_S3_ENDPOINT=http://127.0.0.1:$port" ;;
  *) echo "usage: $0 start|stop|env" >&2; exit 2 ;;
esac
