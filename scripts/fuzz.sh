#!/usr/bin/env bash
# Runs every cargo-fuzz target in fuzz/ for a bounded time (the test
# command runs this with 20 s each):
#
#   scripts/fuzz.sh [seconds per target] [target ...]
#
# Installs cargo-fuzz (pinned) into .tools-cargo/ once. The fuzz build
# needs unstable compiler flags (-Zsanitizer=address); the machine has
# only the pinned stable toolchain, so the script sets RUSTC_BOOTSTRAP=1
# for this build alone (the stable compiler ships the sanitizer runtimes).
# Each run starts from the committed seeds (fuzz/seeds/<target>) and
# keeps what it discovers in fuzz/corpus/<target> (not committed). A
# crash fails the script and prints how to replay it.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
seconds="${1:-30}"
shift || true
targets=("$@")
[ ${#targets[@]} -gt 0 ] || targets=(segment_decode ann_index manifest_parse config_parse filter_parse api_request lambda_event)

fuzz_pin="0.13.2"
root="$PWD/.tools-cargo"
if [ "$("$root/bin/cargo-fuzz" --version 2>/dev/null)" != "cargo-fuzz $fuzz_pin" ]; then
  echo "fuzz: installing cargo-fuzz $fuzz_pin into $root" >&2
  cargo install --quiet --locked --root "$root" cargo-fuzz --version "$fuzz_pin"
fi
export PATH="$root/bin:$PATH" RUSTC_BOOTSTRAP=1

cargo fuzz build -O
for t in "${targets[@]}"; do
  mkdir -p "fuzz/corpus/$t"
  log="fuzz/corpus/$t.log"
  if cargo fuzz run -O "$t" "fuzz/corpus/$t" "fuzz/seeds/$t" -- \
    -max_total_time="$seconds" -rss_limit_mb=2048 -timeout=10 >"$log" 2>&1; then
    echo "fuzz: ok   $t: $(grep -E '^Done [0-9]+ runs' "$log" | tail -1)"
  else
    echo "fuzz: FAIL $t (full log: $log)"
    grep -m 3 -A 6 -E "panicked at|ERROR: (AddressSanitizer|libFuzzer)" "$log" || tail -40 "$log"
    artifact="$(ls -t fuzz/artifacts/"$t"/* 2>/dev/null | head -1)"
    echo "replay: PATH=$root/bin:\$PATH RUSTC_BOOTSTRAP=1 cargo fuzz run -O $t $artifact"
    exit 1
  fi
done
