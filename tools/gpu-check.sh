#!/usr/bin/env bash
# On the GPU machine: builds for Hopper (sm_90a) with all cores, runs every test (CUDA ones
# included) and the benchmarks, and writes logs plus a summary table under $OUT (or build-gpu/).
set -uo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
out="${OUT:-$root/build-gpu/out}"
mkdir -p "$out"
export NCCL_NVLS_ENABLE=0  # never NVLink multicast on the shared hosts
summary="$out/summary.md"
echo "| step | status | seconds |" >"$summary"
echo "| --- | --- | --- |" >>"$summary"

step() {  # step NAME LOGFILE COMMAND...: runs, logs, records status and time
  local name="$1" log="$out/$2"; shift 2
  local start=$SECONDS
  "$@" >"$log" 2>&1
  local rc=$?
  local status=$([ $rc -eq 0 ] && echo ok || echo "FAILED ($rc)")
  echo "| $name | $status | $((SECONDS - start)) |" >>"$summary"
  echo "== $name: $status (log: $log)"
  [ $rc -ne 0 ] && tail -n 40 "$log"
  return $rc
}

nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader >"$out/gpu.txt" 2>&1
build_dir="$root/build-gpu"
step configure configure.log cmake -S "$root" -B "$build_dir" -G Ninja -DCMAKE_BUILD_TYPE=Release \
  -DSCANLINE_CUDA=ON -DSCANLINE_CUDA_ARCH=90a || { cat "$summary"; exit 1; }
step build build.log cmake --build "$build_dir" -j 16 || { cat "$summary"; exit 1; }
step cuda-tests cuda-tests.log ctest --test-dir "$build_dir" -L cuda --output-on-failure
# memcheck over the CUDA suite in one process. Skipped: the multi-GiB cases (index math past 2^31,
# the scan's 65536-step and peak-memory cases: slow under memcheck; racecheck below covers the
# scan) and the out-of-memory test, whose cudaMalloc failure is deliberate (an API error).
if [ "${SKIP_MEMCHECK:-0}" != 1 ] && command -v compute-sanitizer >/dev/null; then
  step memcheck memcheck.log compute-sanitizer --tool memcheck --error-exitcode 1 \
    "$build_dir/bin/scanline_cuda_tests" --test-case-exclude='*large*,*out of memory*,*peak memory*,*65536*' --no-intro=true
fi
# racecheck (shared-memory hazards) over the scan and SSD kernels' tests, minus the multi-GiB
# memory cases.
if [ "${SKIP_MEMCHECK:-0}" != 1 ] && command -v compute-sanitizer >/dev/null; then
  step racecheck racecheck.log compute-sanitizer --tool racecheck --error-exitcode 1 \
    "$build_dir/bin/scanline_cuda_tests" --source-file='*selective_scan*,*scan_unfused*,*ssd*,*rms_norm_gated*' \
    --test-case-exclude='*peak memory*,*8192*,*65536*' --no-intro=true
fi
step cpu-tests cpu-tests.log ctest --test-dir "$build_dir" -L cpu --output-on-failure -j 8
step bench-ops bench-ops.log "$build_dir/bin/scanline" bench ops
step bench-scan bench-scan.log "$build_dir/bin/scanline" bench scan
step bench-ssd bench-ssd.log "$build_dir/bin/scanline" bench ssd
# The PyTorch peer of the SSD (bench/peers/ssd_torch.py: the same chunked algorithm, eager and
# torch.compile) on the same cases, after checking itself against the recurrence; it reads
# bench-ssd.log for the ratios and fails unless scanline is faster. Skipped without torch.
ssd_cases=(8,2048,24,64,128,1 4,8192,32,64,128,8)
if python3 -c "import torch" >/dev/null 2>&1; then
  step ssd-torch ssd-torch.log python3 "$root/bench/peers/ssd_torch.py" --cases "${ssd_cases[@]}" \
    --json "$out/ssd-torch.json" --scanline-log "$out/bench-ssd.log"
else
  echo "| ssd-torch | skipped: python3 has no torch | 0 |" >>"$summary"
  echo "== ssd-torch: skipped: python3 has no torch (bench/peers/ssd_torch.py needs PyTorch)"
fi
step bench-attention bench-attention.log "$build_dir/bin/scanline" bench attention
# The PyTorch peer of the attention (bench/peers/attention_torch.py: scaled_dot_product_attention,
# causal, enable_gqa=True, bf16) on the same cases, after checking itself against a naive softmax;
# it reads bench-attention.log for the side-by-side table and fails unless scanline reaches 0.8x
# SDPA's speed. Skipped without torch.
attention_cases=(4,16,4,4096,64 4,16,4,4096,128)
if python3 -c "import torch" >/dev/null 2>&1; then
  step attention-torch attention-torch.log python3 "$root/bench/peers/attention_torch.py" \
    --cases "${attention_cases[@]}" --json "$out/attention-torch.json" --scanline-log "$out/bench-attention.log"
else
  echo "| attention-torch | skipped: python3 has no torch | 0 |" >>"$summary"
  echo "== attention-torch: skipped: python3 has no torch (bench/peers/attention_torch.py needs PyTorch)"
fi
# Our own attention kernels on the same cases (the op uses cuDNN for bf16 when the build has it).
SCANLINE_ATTENTION_ENGINE=native "$build_dir/bin/scanline" bench attention >"$out/bench-attention-native.log" 2>&1
# Whole training steps of issue 10's set-ups, each followed by its PyTorch peer
# (bench/peers/lm_torch.py: the same model in torch.nn, torch.compile per block) in this same run.
# The Mamba-1 peer runs eager: its Python-loop scan takes minutes to compile.
for setup in mamba1_130m mamba2_130m hybrid_234m; do
  step "bench-train-$setup" "bench-train-$setup.log" "$build_dir/bin/scanline" bench train \
    --config "$root/configs/bench/$setup.yaml"
  if python3 -c "import torch" >/dev/null 2>&1; then
    peer_flags=(--steps 10 --warmup 3)
    [ "$setup" = mamba1_130m ] && peer_flags=(--no-compile --steps 5 --warmup 2)
    step "lm-torch-$setup" "lm-torch-$setup.log" python3 "$root/bench/peers/lm_torch.py" \
      --config "$root/configs/bench/$setup.yaml" "${peer_flags[@]}" --json "$out/lm-torch-$setup.json" \
      --scanline-log "$out/bench-train-$setup.log"
  fi
done
# Data parallel (issue 8), with two or more GPUs: the ~130M hybrid's step on up to 8 of them, its
# backward with the all-reduce overlapped and not, against one GPU at the same 8 sequences a GPU.
gpus=$(nvidia-smi -L 2>/dev/null | grep -c "^GPU")
if [ "$gpus" -ge 2 ]; then
  n=$((gpus < 8 ? gpus : 8))
  ddp="$root/configs/hybrid_130m_ddp.yaml"
  sed "s/^  batch_size: .*/  batch_size: 8/" "$ddp" >"$out/hybrid_ddp_1gpu.yaml"
  sed "s/^  batch_size: .*/  batch_size: $((8 * n))/" "$ddp" >"$out/hybrid_ddp_${n}gpu.yaml"
  step bench-train-ddp-1gpu bench-train-ddp-1gpu.log "$build_dir/bin/scanline" bench train \
    --config "$out/hybrid_ddp_1gpu.yaml" --profile-steps 0
  for overlap in 1 0; do
    step "bench-train-ddp-${n}gpu-overlap$overlap" "bench-train-ddp-${n}gpu-overlap$overlap.log" \
      "$build_dir/bin/scanline" launch --nproc "$n" -- bench train --config "$out/hybrid_ddp_${n}gpu.yaml" \
      --overlap "$overlap" --profile-steps 0
  done
else
  echo "| bench-train-ddp | skipped: $gpus GPU(s) visible, 2 needed | 0 |" >>"$summary"
fi
grep -h -E "tests passed|tests failed" "$out"/*tests.log >>"$summary" 2>/dev/null
grep -h -A40 "^### " "$out/bench-ops.log" >>"$summary" 2>/dev/null
grep -h -A9 "^### " "$out/bench-scan.log" >>"$summary" 2>/dev/null
grep -h -A7 "^### " "$out/bench-ssd.log" >>"$summary" 2>/dev/null
grep -h -A9 "^### " "$out/ssd-torch.log" >>"$summary" 2>/dev/null
grep -h -A7 "^### " "$out/bench-attention.log" >>"$summary" 2>/dev/null
grep -h -A7 "^### " "$out/attention-torch.log" >>"$summary" 2>/dev/null
grep -h -A5 "^### bench train" "$out"/lm-torch-*.log >>"$summary" 2>/dev/null
for log in "$out"/bench-train-ddp-*.log; do
  [ -f "$log" ] && { echo "$(basename "$log" .log):"; grep -E "^\| (step|[0-9])|data parallel" "$log"; } >>"$summary"
done
cat "$summary"
