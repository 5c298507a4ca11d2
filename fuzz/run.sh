#!/usr/bin/env bash
# Run every fuzz target for SECONDS each (default 20), on a stable toolchain
# (cargo-fuzz needs RUSTC_BOOTSTRAP=1 there; no sanitizer). Longer by hand:
#   fuzz/run.sh 600
# A finding is saved under fuzz/artifacts/TARGET/; add it to the corpus once fixed.
set -euo pipefail
cd "$(dirname "$0")"
SECONDS_EACH=${1:-20}
command -v cargo-fuzz >/dev/null 2>&1 || cargo install cargo-fuzz --locked --quiet
for target in token token_second_opinion normalize config openapi introspection_answer jwks credentials cors websocket_frames claims trace_context; do
  mkdir -p "corpus/$target"
  echo "fuzzing $target for ${SECONDS_EACH}s"
  RUSTC_BOOTSTRAP=1 cargo fuzz run -s none "$target" "corpus/$target" -- \
    -max_total_time="$SECONDS_EACH" -max_len=4096 -print_final_stats=0 2>&1 | tail -3
done
