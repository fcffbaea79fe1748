#!/usr/bin/env bash
# Bounded fuzzing session of the policy blob decoder.
#   crates/procguard-policy/run-fuzz.sh [SECONDS]   (default 60)
# Installs cargo-fuzz if missing. cargo-fuzz needs nightly flags: on a stable
# toolchain RUSTC_BOOTSTRAP=1 enables them. Falls back to no sanitizer (-s none) when
# the AddressSanitizer runtime is unavailable. Seeds the corpus with encoded example
# policies so the fuzzer starts past the checksum.
set -euo pipefail
SECONDS_BUDGET="${1:-60}"
HERE="$(cd "$(dirname "$0")" && pwd)"
cd "$HERE"

if ! cargo fuzz --version >/dev/null 2>&1; then
    cargo install cargo-fuzz --locked
fi

export RUSTC_BOOTSTRAP=1
mkdir -p fuzz/corpus/decode_blob
# Seed corpus: the canonical blobs of the example policies (written by a test helper).
cargo run --quiet --features toml --example write_seed_blobs -- fuzz/corpus/decode_blob

run() {
    cargo fuzz run "$@" decode_blob fuzz/corpus/decode_blob -- \
        -max_total_time="$SECONDS_BUDGET" -max_len=4096 -print_final_stats=1
}
# AddressSanitizer when its runtime is available (decided by a build, so a
# crash found with ASan is never retried and hidden without it).
if cargo fuzz build decode_blob >/dev/null 2>&1; then
    run
else
    echo "run-fuzz.sh: AddressSanitizer unavailable; fuzzing without it (-s none)" >&2
    run -s none
fi
