#!/usr/bin/env bash
# tools/plot.py draws loss.png and accuracy.png from a synthetic metrics.jsonl, for one run, for two
# runs with --out and --bpb, and exits 2 on a missing run and on a file with no records.
# Exits 77 (ctest SKIP_RETURN_CODE) with "skipped" when no python3 with matplotlib is found.
#   tests/cli/plot_test.sh [PATH/TO/tools/plot.py]
set -uo pipefail
script="${1:-$(cd "$(dirname "$0")/../.." && pwd)/tools/plot.py}"
python=""
for p in python3 /usr/bin/python3; do
  if command -v "$p" >/dev/null 2>&1 && "$p" -c "import matplotlib" >/dev/null 2>&1; then
    python="$p"
    break
  fi
done
if [ -z "$python" ]; then
  echo "skipped: no python3 with matplotlib (Debian: apt-get install python3-matplotlib)"
  exit 77
fi
dir="$(mktemp -d)"
trap 'rm -rf "$dir"' EXIT
failures=0
fail() { echo "FAILED $*"; failures=$((failures + 1)); }
nonempty() { for f in "$@"; do [ -s "$f" ] || fail "$f missing or empty"; done; }

# Records as trainer/metrics_log.cpp writes them, a null (non-finite) loss and a cut last line.
write_run() {
  mkdir -p "$1"
  {
    for s in $(seq 1 40); do
      printf '{"step": %d, "loss": %s, "lr": 0.001, "grad_norm": 1.5, "tokens_per_s": 9000.5, "tokens": %d}\n' \
        "$s" "$(awk -v s="$s" -v k="$2" 'BEGIN { print 3.5 * k * exp(-s / 15) + 0.1 }')" $((s * 2048))
      if [ $((s % 10)) -eq 0 ]; then
        printf '{"step": %d, "eval_loss": %s, "eval_accuracy": %s}\n' "$s" \
          "$(awk -v s="$s" -v k="$2" 'BEGIN { print 3.0 * k * exp(-s / 15) + 0.2 }')" \
          "$(awk -v s="$s" 'BEGIN { print s / 50 }')"
      fi
    done
    echo '{"step": 41, "loss": null, "lr": 0.001, "grad_norm": null, "tokens_per_s": 9000, "tokens": 83968}'
    printf '{"step": 42, "lo'
  } >"$1/metrics.jsonl"
}
write_run "$dir/a" 1
write_run "$dir/b" 1.2

out="$("$python" "$script" "$dir/a" 2>&1)"; rc=$?
[ $rc -eq 0 ] || fail "single run: exit $rc: $out"
nonempty "$dir/a/loss.png" "$dir/a/accuracy.png"
echo "ok single run: $out" | tr '\n' ' '; echo

out="$("$python" "$script" "$dir/a" "$dir/b" --bpb --out "$dir/plots/ab-" 2>&1)"; rc=$?
[ $rc -eq 0 ] || fail "two runs: exit $rc: $out"
nonempty "$dir/plots/ab-loss.png" "$dir/plots/ab-accuracy.png"
echo "ok two runs --bpb --out: $out" | tr '\n' ' '; echo

out="$("$python" "$script" "$dir/nonexistent" 2>&1)"; rc=$?
{ [ $rc -eq 2 ] && grep -q "does not exist" <<<"$out"; } || fail "missing run: exit $rc: $out"
echo "ok missing run: exit $rc"

mkdir -p "$dir/empty" && : >"$dir/empty/metrics.jsonl"
out="$("$python" "$script" "$dir/empty" 2>&1)"; rc=$?
{ [ $rc -eq 2 ] && grep -q "no training or eval records" <<<"$out"; } || fail "no records: exit $rc: $out"
echo "ok no records: exit $rc"

[ $failures -eq 0 ] || { echo "$failures failure(s)"; exit 1; }
echo "all plot checks passed"
