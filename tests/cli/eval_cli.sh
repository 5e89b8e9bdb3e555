#!/usr/bin/env bash
# `scanline eval` end to end on a tiny selective-copying run trained here: the Markdown table,
# the JSON fields, another task with --set, a run folder = its checkpoint file, tools/plot_eval.py
# on the JSON (when matplotlib is installed), and bad flags -> exit 2 naming the flag. Then
# eval.lengths: `scanline train` evaluating its trained model into <run_dir>/eval.json.
#   tests/cli/eval_cli.sh SCANLINE_BINARY [tools/plot_eval.py]
set -uo pipefail
bin="$(realpath "$1")"
plot="${2:-$(cd "$(dirname "$0")/../.." && pwd)/tools/plot_eval.py}"
dir="$(mktemp -d)"
trap 'rm -rf "$dir"' EXIT
failures=0
fail() { echo "FAILED $1"; failures=$((failures + 1)); }
cd "$dir" || exit 1

cat >run.yaml <<'YAML'
model: {d_model: 16, n_layers: 2, vocab_size: 32}
data: {task: selective_copying, seq_len: 32, task_options: {n_memorize: 4, n_colors: 8}}
train: {steps: 3, batch_size: 4, device: cpu, run_dir: run-sc}
eval: {batches: 1}
YAML
"$bin" train run.yaml >/dev/null 2>&1 || { echo "train failed"; exit 1; }
ckpt=run-sc/ckpt-00000003.h5

out="$("$bin" eval --checkpoint "$ckpt" --lengths 32,64 --examples 10 --batch 4 --json sc.json 2>&1)"; rc=$?
[ $rc -eq 0 ] || fail "eval: exit $rc: $out"
grep -q '^| length | examples | answer exact match | token accuracy | seconds |$' <<<"$out" || fail "table header: $out"
grep -Eq '^\| 32 \| 10 \| [01]\.[0-9]{4} \| [01]\.[0-9]{4} \| [0-9.]+ \|$' <<<"$out" || fail "row 32: $out"
grep -Eq '^\| 64 \| 10 \| ' <<<"$out" || fail "row 64: $out"
python3 - sc.json "$ckpt" <<'PY' || fail "sc.json fields"
import json, sys
r = json.load(open(sys.argv[1]))
assert r["name"] == "run-sc" and r["task"] == "selective_copying" and r["checkpoint"] == sys.argv[2], r
assert r["step"] == 3 and r["dtype"] == "f32" and r["task_options"] == {"n_colors": "8", "n_memorize": "4"}, r
assert [x["length"] for x in r["lengths"]] == [32, 64], r
for x in r["lengths"]:
    assert x["examples"] == 10 and 0 <= x["exact_match"] <= x["token_accuracy"] <= 1, x
    # 10 examples of 4 answer tokens: multiples of 1/10 and 1/40
    assert abs(x["exact_match"] * 10 - round(x["exact_match"] * 10)) < 1e-9, x
    assert abs(x["token_accuracy"] * 40 - round(x["token_accuracy"] * 40)) < 1e-9, x
PY
echo "ok eval + json"

# The run folder and batch 1 give the same scores; the default length is the run's seq_len.
"$bin" eval --checkpoint run-sc --lengths 32,64 --examples 10 --batch 1 --json folder.json --name other >/dev/null || fail "folder eval"
python3 -c "
import json; a = json.load(open('sc.json')); b = json.load(open('folder.json'))
key = lambda r: [(x['length'], x['exact_match'], x['token_accuracy']) for x in r['lengths']]
assert key(a) == key(b) and b['name'] == 'other', (a, b)" || fail "run folder / batch 1 differ"
out="$("$bin" eval --checkpoint run-sc --examples 3 2>&1)" || fail "default length: $out"
grep -Eq '^\| 32 \| 3 \| ' <<<"$out" || fail "default length row: $out"
echo "ok run folder, batch 1, default length"

# Another task: induction heads over 16 tokens fits the 32-token vocabulary; copying with --set.
out="$("$bin" eval --checkpoint "$ckpt" --task induction_heads --lengths 16,48 --examples 4 2>&1)" || fail "induction: $out"
grep -Eq '^\| 48 \| 4 \| ' <<<"$out" || fail "induction row: $out"
out="$("$bin" eval --checkpoint "$ckpt" --task copying --set data.task_options.n_tokens=8 --lengths 3 --examples 4 --json cp.json 2>&1)" || fail "copying: $out"
python3 -c "
import json; r = json.load(open('cp.json'))
assert r['task'] == 'copying' and r['task_options'] == {'n_tokens': '8'} and r['lengths'][0]['length'] == 3, r" || fail "copying json"
echo "ok other tasks"

# eval.lengths: the same evaluation at the end of `scanline train`, on the final parameters: the
# table on stdout and run-ev/eval.json, equal (but for the seconds) to scanline eval's JSON of the
# final checkpoint.
out="$("$bin" train run.yaml --set train.run_dir=run-ev --set 'eval.lengths=[16,32]' --set eval.examples=6 \
  --set eval.batch=4 2>&1)"; rc=$?
[ $rc -eq 0 ] || fail "train with eval.lengths: exit $rc: $out"
grep -Eq '^\| 16 \| 6 \| [01]\.[0-9]{4} \| [01]\.[0-9]{4} \| [0-9.]+ \|$' <<<"$out" || fail "train table row 16: $out"
grep -Eq '^\| 32 \| 6 \| ' <<<"$out" || fail "train table row 32: $out"
"$bin" eval --checkpoint run-ev --lengths 16,32 --examples 6 --batch 4 --json ev.json >/dev/null || fail "eval run-ev"
python3 - run-ev/eval.json ev.json <<'PY' || fail "run-ev/eval.json fields"
import json, sys
r, e = json.load(open(sys.argv[1])), json.load(open(sys.argv[2]))
assert r["name"] == "run-ev" and r["task"] == "selective_copying" and r["checkpoint"] == "run-ev/ckpt-00000003.h5", r
assert r["step"] == 3 and r["dtype"] == "f32" and r["task_options"] == {"n_colors": "8", "n_memorize": "4"}, r
assert [x["length"] for x in r["lengths"]] == [16, 32], r
for x in r["lengths"]:
    assert x["examples"] == 6 and 0 <= x["exact_match"] <= x["token_accuracy"] <= 1 and x["seconds"] >= 0, x
for x in r["lengths"] + e["lengths"]:
    del x["seconds"]
assert r == e, (r, e)
PY
# A length the task cannot use stops before training (exit 2, the key named, no run folder).
out="$("$bin" train run.yaml --set train.run_dir=run-bad --set 'eval.lengths=[32,5]' 2>&1)"; rc=$?
[ $rc -eq 2 ] && grep -qF "eval.lengths: selective_copying cannot be evaluated at length 5" <<<"$out" && [ ! -e run-bad ] ||
  fail "train with a bad eval length: exit $rc: $out"
echo "ok train with eval.lengths"

if python3 -c "import matplotlib" >/dev/null 2>&1 || /usr/bin/python3 -c "import matplotlib" >/dev/null 2>&1; then
  out="$(python3 "$plot" sc.json folder.json --metric both --out plots/eval.png 2>&1)" || fail "plot_eval: $out"
  [ -s plots/eval.png ] || fail "plot_eval wrote no PNG: $out"
  out="$(python3 "$plot" none.json 2>&1)"; [ $? -eq 2 ] && grep -q "does not exist" <<<"$out" || fail "plot_eval missing file: $out"
  echo "ok plot_eval"
else
  echo "skipped plot_eval: no matplotlib"
fi

# bad NAME EXPECTED-CODE FRAGMENT ARGS...
bad() {
  local name="$1" code="$2" expect="$3"; shift 3
  out="$("$bin" eval "$@" 2>&1)"; rc=$?
  if [ $rc -ne "$code" ] || ! grep -qF -- "$expect" <<<"$out"; then fail "$name: exit $rc (expected $code and '$expect'): $out"
  else echo "ok $name: $(grep -F -- "$expect" <<<"$out" | head -n 1)"; fi
}
bad no_checkpoint 2 "no checkpoint (--checkpoint PATH)" --lengths 32
bad missing 2 "--checkpoint 'nope.h5' does not exist" --checkpoint nope.h5
bad task 2 "--task must be selective_copying, copying, induction_heads or phonebook, found 'sorting'" --checkpoint "$ckpt" --task sorting
bad lengths_word 2 "--lengths expects an integer, found 'x'" --checkpoint "$ckpt" --lengths 32,x
bad lengths_zero 2 "--lengths: every length must be at least 1, found 0" --checkpoint "$ckpt" --lengths 0
bad lengths_empty 2 "--lengths expects an integer, found ''" --checkpoint "$ckpt" --lengths 32,
bad examples 2 "--examples must be at least 1" --checkpoint "$ckpt" --examples 0
bad batch 2 "--batch expects an integer, found 'big'" --checkpoint "$ckpt" --batch big
bad set_key 2 "--set expects data.task_options.KEY=VALUE" --checkpoint "$ckpt" --set train.seed=3
bad set_length 2 "--set data.task_options.entries: for phonebook the length (--lengths) sets entries" --checkpoint "$ckpt" --task phonebook --lengths 4 --set data.task_options.entries=9
bad short 2 "--lengths 5 (selective_copying): " --checkpoint "$ckpt" --lengths 32,5
# nothing printed before the error
out="$("$bin" eval --checkpoint "$ckpt" --lengths 32,5 2>/dev/null)"; [ -z "$out" ] || fail "output before a bad length: $out"
bad option 2 "n_colours" --checkpoint "$ckpt" --set data.task_options.n_colours=3
bad vocab 2 "model.vocab_size" --checkpoint "$ckpt" --task phonebook --lengths 4
bad other_task_lengths 2 "--lengths: give the lengths to test copying at" --checkpoint "$ckpt" --task copying
bad dtype 2 "--dtype must be f32 or bf16" --checkpoint "$ckpt" --dtype f16
bad unknown 2 "unknown option '--length'" --checkpoint "$ckpt" --length 3
bad json 2 "--json 'no/such/dir/x.json' cannot be written" --checkpoint "$ckpt" --examples 1 --json no/such/dir/x.json
mkdir empty-run
bad empty_folder 2 "--checkpoint 'empty-run' is a folder without a valid checkpoint" --checkpoint empty-run
if ! "$bin" --version | grep -q CUDA; then
  bad device 2 "--device cuda: no CUDA device" --checkpoint "$ckpt" --device cuda
fi
head -c 2000 "$ckpt" >truncated.h5
bad corrupt 1 "checkpoint 'truncated.h5'" --checkpoint truncated.h5
[ $failures -eq 0 ] && echo "eval_cli: all passed" || { echo "eval_cli: $failures failed"; exit 1; }
