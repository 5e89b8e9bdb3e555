#!/usr/bin/env python3
"""The PyTorch peer of `scanline bench attention`: torch.nn.functional.scaled_dot_product_attention
(causal, enable_gqa=True, bf16) on the same shapes, forward and forward+backward.

Before timing, SDPA is checked against a naive softmax attention in float64 on a tiny GQA shape
(causal and not; f32 to 1e-4, bf16 to 2e-2), outputs and the three gradients. Then, per case:
median milliseconds of several repetitions (CUDA events, warm-up excluded), TFLOP/s with the
bench's FLOP count, a Markdown table and, with --json, a JSON file. With --scanline-log (the log of
`scanline bench attention` from the same run) it also prints scanline's times beside SDPA's with
the "vs SDPA" ratios (SDPA ms / scanline ms), and exits 1 unless scanline reaches at least 0.8x
SDPA's speed on every row.

Inputs are laid out as scanline's, (batch, L, heads, headdim), and handed to SDPA as the
(batch, heads, L, headdim) views `.transpose(1, 2)`, as a model's q, k, v projections give them.

Usage (tools/gpu-check.sh runs it after `scanline bench attention`):
  python3 bench/peers/attention_torch.py [--cases 4,16,4,4096,64 4,16,4,4096,128]
      [--json out.json] [--scanline-log bench-attention.log]
"""
import argparse
import json
import re
import statistics
import sys

try:
    import torch
    import torch.nn.functional as F
except ImportError:
    print("attention_torch.py: skipped: this python3 has no torch (the PyTorch peer needs the GPU machine's PyTorch)")
    sys.exit(0)

# scaled_dot_product_attention (causal, enable_gqa=True, bf16) on an H100 of this kind (issue 7):
# (batch, heads, kv_heads, L, headdim) -> (fwd ms, fwd+bwd ms).
ISSUE_SDPA_MS = {(4, 16, 4, 4096, 64): (0.41, 1.44), (4, 16, 4, 4096, 128): (0.50, 2.14)}
DEFAULT_CASES = ["4,16,4,4096,64", "4,16,4,4096,128"]
TARGET = 0.8  # scanline's required fraction of SDPA's speed (issue 7; goal 1.0)


def attention_flops(shape, backward):
    """bench/attention_bench.h: forward 4·b·h·L²·d/2 (causal half), backward 2.5x the forward."""
    b, h, _, L, d = shape
    fwd = 4.0 * b * h * L * L * d / 2.0
    return 2.5 * fwd if backward else fwd


def sdpa_mode():
    """How this torch runs grouped-query SDPA: 'gqa' (enable_gqa=True, torch >= 2.5), 'repeat'
    (SDPA on k, v repeated to every query head) or None (no SDPA: torch < 2.0)."""
    if not hasattr(F, "scaled_dot_product_attention"):
        return None
    try:
        x = torch.zeros(1, 2, 4, 8)
        F.scaled_dot_product_attention(x, x[:, :1], x[:, :1], is_causal=True, enable_gqa=True)
        return "gqa"
    except (TypeError, RuntimeError):
        return "repeat"


def sdpa(q, k, v, causal, mode):
    """q (b, L, h, d), k, v (b, L, kv, d) -> (b, L, h, d) through SDPA's (b, h, L, d) views."""
    qt, kt, vt = q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)
    if mode == "gqa":
        out = F.scaled_dot_product_attention(qt, kt, vt, is_causal=causal, enable_gqa=True)
    else:
        group = q.shape[2] // k.shape[2]
        out = F.scaled_dot_product_attention(qt, kt.repeat_interleave(group, dim=1),
                                             vt.repeat_interleave(group, dim=1), is_causal=causal)
    return out.transpose(1, 2)


def naive(q, k, v, causal):
    """The definition (ops/attention.h): softmax(q·k^T / sqrt(d)) v, head h reading kv head h // group."""
    group = q.shape[2] // k.shape[2]
    k, v = k.repeat_interleave(group, dim=2), v.repeat_interleave(group, dim=2)
    s = torch.einsum("bihd,bjhd->bhij", q, k) / q.shape[-1] ** 0.5
    if causal:
        L = q.shape[1]
        mask = torch.ones(L, L, dtype=torch.bool, device=q.device).tril()
        s = s.masked_fill(~mask, float("-inf"))
    return torch.einsum("bhij,bjhd->bihd", torch.softmax(s, dim=-1), v)


def relative_error(got, ref):
    return ((got.double() - ref.double()).abs().max() / ref.double().abs().max().clamp_min(1e-30)).item()


def check(device, mode):
    """SDPA against the float64 naive attention on tiny GQA shapes (odd L). Raises on a mismatch."""
    torch.backends.cuda.matmul.allow_tf32 = False
    gen = torch.Generator(device="cpu").manual_seed(0)
    worst = {}
    for (b, L, h, kv, d) in [(2, 37, 4, 2, 64), (1, 70, 6, 2, 128)]:
        for causal in (True, False):
            for io, tol in [(torch.float32, 1e-4), (torch.bfloat16, 2e-2)]:
                q, k, v, g = (torch.randn(b, L, n, d, generator=gen).to(device) for n in (h, kv, kv, h))
                # The reference reads the inputs as rounded to io, so that only SDPA's arithmetic differs.
                got_in = [t.to(io).requires_grad_() for t in (q, k, v)]
                ref_in = [t.detach().double().requires_grad_() for t in got_in]
                ref = naive(*ref_in, causal)
                out = sdpa(*got_in, causal, mode)
                results = {"out": relative_error(out, ref)}
                grad = g.to(io)
                for name, gi, gr in zip(["dq", "dk", "dv"], torch.autograd.grad(out, got_in, grad),
                                        torch.autograd.grad(ref, ref_in, grad.double())):
                    results[name] = relative_error(gi, gr)
                for key, err in results.items():
                    label = f"{str(io).replace('torch.', '')} {key}"
                    worst[label] = max(worst.get(label, 0.0), err)
                    if not err <= tol:
                        raise AssertionError(f"attention_torch.py: SDPA differs from the naive attention at "
                                             f"(b, L, h, kv, d) = {(b, L, h, kv, d)}, causal {causal}, {label}: "
                                             f"relative error {err:.3g} > {tol:g}")
    return worst


def time_ms(fn, inner, repeats, warmup):
    """Median over `repeats` batches of `inner` calls (ms per call), after `warmup` calls."""
    for _ in range(warmup):
        fn()
    torch.cuda.synchronize()
    samples = []
    for _ in range(repeats):
        start, stop = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        for _ in range(inner):
            fn()
        stop.record()
        stop.synchronize()
        samples.append(start.elapsed_time(stop) / inner)
    return statistics.median(samples)


def run_case(shape, mode, reps):
    b, h, kv, L, d = shape
    gen = torch.Generator(device="cuda").manual_seed(1)
    opts = dict(device="cuda", dtype=torch.bfloat16, generator=gen)
    q = torch.randn(b, L, h, d, **opts).requires_grad_()
    k = torch.randn(b, L, kv, d, **opts).requires_grad_()
    v = torch.randn(b, L, kv, d, **opts).requires_grad_()
    grad_out = torch.randn(b, L, h, d, **opts)

    def forward():
        with torch.no_grad():
            sdpa(q, k, v, True, mode)

    def forward_backward():  # dq, dk, dv without accumulating into .grad
        torch.autograd.grad(sdpa(q, k, v, True, mode), (q, k, v), grad_out)

    out = {"fwd_ms": time_ms(forward, 10, reps, 3), "fwd_bwd_ms": time_ms(forward_backward, 5, reps, 3)}
    del q, k, v, grad_out
    torch.cuda.empty_cache()
    return out


def parse_scanline_log(path):
    """Rows `| (batch, heads, kv_heads, L, headdim) | pass | ms | ...` of `scanline bench attention`."""
    rows = {}
    pattern = re.compile(r"^\|\s*\(([\d,\s]+)\)\s*\|\s*(fwd\+bwd|fwd)\s*\|\s*([0-9.]+)\s*\|")
    try:
        f = open(path)
    except OSError as e:
        print(f"attention_torch.py: cannot read the scanline log: {e}")
        return rows
    with f:
        for line in f:
            m = pattern.match(line)
            if m:
                rows[(tuple(int(v) for v in m.group(1).split(",")), m.group(2))] = float(m.group(3))
    return rows


def fmt(v, spec):
    return "-" if v is None else format(v, spec)


PASSES = [("fwd", "fwd_ms"), ("fwd+bwd", "fwd_bwd_ms")]


def print_sdpa_table(results, mode):
    print(f"\n### PyTorch peer: scaled_dot_product_attention ({'enable_gqa=True' if mode == 'gqa' else 'k, v repeated'}"
          ", causal, bf16)\n")
    print("| (batch, heads, kv_heads, L, headdim) | pass | SDPA ms | TFLOP/s | issue's SDPA ms |")
    print("| --- | --- | ---: | ---: | ---: |")
    for e in results:
        case = tuple(e["shape"])
        for i, (pass_, key) in enumerate(PASSES):
            flops = attention_flops(case, False) * (3.5 if pass_ == "fwd+bwd" else 1.0)
            ms = e["sdpa"][key]
            print(f"| {'(' + ', '.join(map(str, case)) + ')'} | {pass_} | {ms:.3f} | {flops / (ms * 1e-3) / 1e12:.1f} | "
                  f"{fmt(ISSUE_SDPA_MS.get(case, (None, None))[i], '.3f')} |")


def print_comparison(results, ours):
    """scanline beside SDPA; returns whether scanline reaches TARGET x SDPA's speed on every row."""
    print("\n### Attention: scanline against SDPA (same run) and the issue's SDPA times (causal, GQA, bf16)\n")
    print("| (batch, heads, kv_heads, L, headdim) | pass | scanline ms | SDPA ms | issue's SDPA ms | vs SDPA | "
          "vs issue's SDPA |")
    print("| --- | --- | ---: | ---: | ---: | ---: | ---: |")
    met = True
    for e in results:
        case = tuple(e["shape"])
        for i, (pass_, key) in enumerate(PASSES):
            mine, peer = ours.get((case, pass_)), e["sdpa"][key]
            issue = ISSUE_SDPA_MS.get(case, (None, None))[i]
            met = met and mine is not None and peer / mine >= TARGET

            def speed(ref):
                return "-" if ref is None or mine is None else f"{ref / mine:.2f}x"

            print(f"| {'(' + ', '.join(map(str, case)) + ')'} | {pass_} | {fmt(mine, '.3f')} | {peer:.3f} | "
                  f"{fmt(issue, '.3f')} | {speed(peer)} | {speed(issue)} |")
    return met


def main():
    if hasattr(sys.stdout, "reconfigure"):
        sys.stdout.reconfigure(line_buffering=True)  # keep the log's order when stdout is a file
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--cases", nargs="+", default=DEFAULT_CASES, help="batch,heads,kv_heads,L,headdim per case")
    parser.add_argument("--reps", type=int, default=7, help="timed repetitions (median)")
    parser.add_argument("--json", help="write the results here")
    parser.add_argument("--scanline-log", help="the output of `scanline bench attention` from this run")
    args = parser.parse_args()
    cases = [tuple(int(v) for v in c.split(",")) for c in args.cases]
    for case in cases:
        if len(case) != 5 or case[1] % case[2]:
            parser.error(f"case {case}: expected batch,heads,kv_heads,L,headdim with kv_heads dividing heads")

    device = "cuda" if torch.cuda.is_available() else "cpu"
    print(f"attention_torch.py: torch {torch.__version__} on "
          f"{torch.cuda.get_device_name(0) if device == 'cuda' else 'CPU'}")
    mode = sdpa_mode()
    if mode is None:
        print(f"attention_torch.py: skipped: torch {torch.__version__} has no scaled_dot_product_attention "
              "(torch >= 2.0; enable_gqa needs >= 2.5)")
        return 0
    if mode == "repeat":
        print(f"attention_torch.py: torch {torch.__version__}'s SDPA has no enable_gqa (torch >= 2.5): "
              "k and v are repeated to every query head instead")
    worst = check(device, mode)
    print("correctness: SDPA matches the float64 naive attention (largest relative errors: "
          + ", ".join(f"{k} {v:.1e}" for k, v in worst.items()) + ")")
    if device != "cuda":
        print("attention_torch.py: no CUDA device: correctness checked, timings skipped")
        return 0

    results = []
    for case in cases:
        results.append({"shape": list(case), "sdpa": run_case(case, mode, args.reps)})
        print(f"attention_torch.py: {case} done", file=sys.stderr, flush=True)
    print_sdpa_table(results, mode)

    report = {"torch": torch.__version__, "device": torch.cuda.get_device_name(0), "sdpa_mode": mode,
              "check": worst, "cases": results}
    status = 0
    if args.scanline_log:
        ours = parse_scanline_log(args.scanline_log)
        report["scanline_ms"] = [{"shape": list(k[0]), "pass": k[1], "ms": v} for k, v in ours.items()]
        met = print_comparison(results, ours)
        print(f"\nattention_torch.py: scanline {'reaches' if met else 'does NOT reach'} {TARGET}x SDPA's speed "
              "on every row" + ("" if ours else f" (no rows found in {args.scanline_log})"))
        report["scanline_meets_target"] = met
        status = 0 if met else 1
    if args.json:
        with open(args.json, "w") as f:
            json.dump(report, f, indent=2)
    return status


if __name__ == "__main__":
    sys.exit(main())
