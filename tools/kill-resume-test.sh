#!/usr/bin/env bash
# Kills `scanline train` with SIGKILL at random moments (checkpointing every step, so many kills land
# during a checkpoint write) and checks after every kill that the run still has a loadable
# checkpoint and that `--resume auto` continues from it, never going back; finally the run
# completes. Issue 5, acceptance 2.
#   tools/kill-resume-test.sh [TRIALS] [SCANLINE_BINARY]      (default 20, build/bin/scanline)
set -uo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
trials="${1:-20}"
bin="${2:-$root/build/bin/scanline}"
run="$(mktemp -d)/run"
log="$(dirname "$run")/log"
# The default task, made small and checkpointing every step.
args=(train "$root/configs/default.yaml" --set train.run_dir="$run" --set train.steps=400 --set train.log_every=50
      --set checkpoint.every=1 --set checkpoint.keep=2 --set eval.every=0 --set train.device=cpu)
last=0
fail() { echo "kill-resume-test: FAILED: $*" >&2; tail -n 20 "$log" >&2; exit 1; }
for ((i = 1; i <= trials; i++)); do
  "$bin" "${args[@]}" --resume auto >"$log" 2>&1 &
  pid=$!
  sleep "0.$((RANDOM % 9 + 1))$((RANDOM % 10))"  # 0.10 .. 0.99 s
  kill -9 "$pid" 2>/dev/null
  wait "$pid" 2>/dev/null
  # What did this attempt start from? A fresh start is only allowed before any checkpoint existed.
  if grep -q "resumed from" "$log"; then
    step=$(grep -o "resumed from .* at step [0-9]*" "$log" | grep -o "[0-9]*$")
    [ "$step" -ge "$last" ] || fail "trial $i resumed at step $step, behind step $last"
    last=$step
  elif grep -q "starting a fresh run" "$log"; then
    [ "$last" -eq 0 ] || fail "trial $i found no checkpoint after step $last had been resumed"
  elif [ -s "$log" ]; then
    grep -qi "error" "$log" && fail "trial $i: $(grep -i error "$log" | head -n 1)"
  fi
  n=$(ls "$run"/ckpt-*.h5 2>/dev/null | wc -l)
  echo "trial $i: killed; resumed at step $last; $n checkpoint file(s); $(ls "$run" 2>/dev/null | grep -c tmp) temporary"
done
"$bin" "${args[@]}" --resume auto >"$log" 2>&1 || fail "the final resume exited with $?"
grep -q "resumed from" "$log" || fail "the final run did not resume"
grep -q "final: step 400" "$log" || fail "the final run did not reach step 400"
echo "kill-resume-test: $trials kills, every resume continued (last resumed at step $last); $(grep 'final:' "$log")"
