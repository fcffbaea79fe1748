#!/usr/bin/env bash
# Runs the criterion benchmarks in quick mode and checks the issue-3 targets on the
# medians criterion records:
#   phase 2 median < 20 ns at 10, 1,000 and 10,000 rules;
#   10,000 rules within 1.2x of 10 rules;
#   at 1,000 rules the compiled decision >= 50x faster than the reference evaluator;
#   phase 1 (classify) < 20 us at 1,000 rules.
# Usage: crates/procguard-policy/check-bench.sh [--no-run]   (--no-run: only check
# the results of the last run). Timing on a busy machine is noisy: a failure here
# is worth a re-run before it is worth an investigation.
set -euo pipefail
cd "$(dirname "$0")"
if [[ "${1:-}" != "--no-run" ]]; then
    cargo bench -p procguard-policy --bench decide -- --warm-up-time 1 --measurement-time 2
fi
TARGET_DIR="$(cargo metadata --format-version 1 --no-deps | python3 -c 'import json,sys; print(json.load(sys.stdin)["target_directory"])')"
python3 - "$TARGET_DIR/criterion" <<'PY'
import json, os, sys
root = sys.argv[1]
def median(*parts):
    with open(os.path.join(root, *parts, "new", "estimates.json")) as f:
        return json.load(f)["median"]["point_estimate"]
c = {n: median("phase2", "compiled", str(n)) for n in (10, 1000, 10000)}
ref1000 = median("phase2", "reference", "1000")
p1 = median("phase1_classify_1000")
checks = [
    (f"phase 2 medians {c[10]:.2f} / {c[1000]:.2f} / {c[10000]:.2f} ns < 20 ns", max(c.values()) < 20.0),
    (f"flat: 10,000 rules / 10 rules = {c[10000] / c[10]:.3f} <= 1.2", c[10000] / c[10] <= 1.2),
    (f"vs reference at 1,000 rules: {ref1000 / c[1000]:.0f}x >= 50x", ref1000 / c[1000] >= 50.0),
    (f"phase 1 at 1,000 rules: {p1 / 1000:.2f} us < 20 us", p1 < 20_000.0),
]
failed = 0
for text, ok in checks:
    print(("ok    " if ok else "FAIL  ") + text)
    failed += not ok
print(f"{len(checks) - failed} passed, {failed} failed")
sys.exit(1 if failed else 0)
PY
