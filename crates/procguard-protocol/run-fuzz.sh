#!/usr/bin/env bash
# Bounded fuzzing session of the driver's IOCTL dispatcher (host build).
#   crates/procguard-protocol/run-fuzz.sh [SECONDS]   (default 60)
# Installs cargo-fuzz if missing; RUSTC_BOOTSTRAP=1 enables the nightly flags
# cargo-fuzz needs on a stable toolchain; AddressSanitizer when available.
set -euo pipefail
SECONDS_BUDGET="${1:-60}"
cd "$(cd "$(dirname "$0")" && pwd)"
if ! cargo fuzz --version >/dev/null 2>&1; then
    cargo install cargo-fuzz --locked
fi
export RUSTC_BOOTSTRAP=1
mkdir -p fuzz/corpus/dispatch_ioctl
run() {
    cargo fuzz run "$@" dispatch_ioctl fuzz/corpus/dispatch_ioctl -- \
        -max_total_time="$SECONDS_BUDGET" -max_len=8192 -print_final_stats=1
}
if cargo fuzz build dispatch_ioctl >/dev/null 2>&1; then
    run
else
    echo "run-fuzz.sh: AddressSanitizer unavailable; fuzzing without it (-s none)" >&2
    run -s none
fi
