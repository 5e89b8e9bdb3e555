#!/usr/bin/env python3
"""The PyTorch peer of `scanline bench ssd`: Mamba-2's SSD layer computed by the same chunked
algorithm (Dao & Gu 2024) in plain PyTorch (no mamba_ssm, no custom kernels), eager and under
torch.compile, on the same shapes and inputs as the scanline bench, forward and forward+backward.

Before timing, the chunked implementation is checked against a naive sequential recurrence in
float64 on tiny shapes (f32: outputs and every gradient; bf16: outputs), so the peer is known
to compute the layer. Then, per case: median milliseconds of several repetitions (CUDA events,
warm-up and compilation excluded), a Markdown table and, with --json, a JSON file. With
--scanline-log (the log of `scanline bench ssd` from the same run) it also prints the ratios of
scanline's times to the peer's, and exits 1 unless scanline is faster than both modes on every
row.

Usage (tools/gpu-check.sh runs it after `scanline bench ssd`):
  python3 bench/peers/ssd_torch.py [--cases 8,2048,24,64,128,1 4,8192,32,64,128,8] [--chunk 256]
      [--json out.json] [--scanline-log bench-ssd.log] [--no-compile]
"""
import argparse
import json
import math
import re
import statistics
import sys

try:
    import torch
    import torch.nn.functional as F
except ImportError:
    print("ssd_torch.py: skipped: this python3 has no torch (the PyTorch peer needs the GPU machine's PyTorch)")
    sys.exit(0)

# mamba_ssm's mamba_chunk_scan_combined on an H100 of this kind (issue 6): (fwd ms, fwd+bwd ms).
TRITON_MS = {(8, 2048, 24, 64, 128, 1): (0.705, 5.06), (4, 8192, 32, 64, 128, 8): (1.04, 6.13)}
DEFAULT_CASES = ["8,2048,24,64,128,1", "4,8192,32,64,128,8"]


def cumsum_last(v):
    """Inclusive cumulative sum over the last dimension as a product with a lower-triangular
    matrix of ones, in v's (fp32) precision. torch.cumsum would do, but torch 2.11's Inductor fails
    to generate code for it here (SplitScan codegen error), and both modes run the same program."""
    n = v.shape[-1]
    ones = torch.ones(n, n, dtype=v.dtype, device=v.device).triu()  # [j, i] = 1 for j <= i
    return torch.matmul(v, ones)


def ssd_chunked(x, dt, A, B, C, D, dt_bias, chunk):
    """Mamba-2's SSD by chunks, softplus(dt + dt_bias) fused, D per head, no gate, no initial state.

    x (b, L, h, P), dt (b, L, h) and B, C (b, L, g, N) in one dtype (the matrix products' operand
    dtype: bf16 runs on tensor cores with fp32 accumulation); A, D, dt_bias (h) f32. Head k reads
    group k // (h / g). L must be a multiple of chunk. Returns y (b, L, h, P) in x's dtype and the
    final state (b, h, P, N) in fp32.

    Precision follows mamba_ssm's Triton kernels: Δ, the cumulative exponents, the decays and the
    states in fp32; matrix products with operands in the input dtype and fp32 accumulation; the
    decayed C·B^T tile and the states rounded to the input dtype before the products that read
    them. (A product's result comes back in the operand dtype, where Triton keeps C·B^T and the
    chunk states in fp32: one more rounding of those two on the bf16 path.)
    """
    b, L, h, P = x.shape
    g, N = B.shape[2], B.shape[3]
    assert L % chunk == 0, f"L = {L} must be a multiple of the chunk size {chunk}"
    c, Q, hg = L // chunk, chunk, h // g
    io = x.dtype
    acc = torch.promote_types(io, torch.float32)

    # Δ = softplus(dt + bias) and a_i = Σ_{j<=i} Δ_j A within each chunk: (b, c, h, Q), fp32.
    delta = F.softplus(dt.to(acc) + dt_bias.to(acc))
    delta = delta.view(b, c, Q, h).transpose(2, 3).contiguous()
    a = cumsum_last(delta * A.to(acc).view(1, 1, h, 1))

    # Chunked operands: x (b, c, g, hg, Q, P); B, C (b, c, g, 1, Q, N), shared by a group's heads.
    xc = x.view(b, c, Q, g, hg, P).permute(0, 1, 3, 4, 2, 5)
    Bc = B.view(b, c, Q, g, N).permute(0, 1, 3, 2, 4).unsqueeze(3)
    Cc = C.view(b, c, Q, g, N).permute(0, 1, 3, 2, 4).unsqueeze(3)

    # 1. Within each chunk: y_i += Σ_{j<=i} (C_i·B_j) exp(a_i − a_j) Δ_j x_j.
    CB = torch.matmul(Cc, Bc.transpose(-1, -2))  # (b, c, g, 1, Q, Q)
    causal = torch.ones(Q, Q, dtype=torch.bool, device=x.device).tril()
    segment = a.unsqueeze(-1) - a.unsqueeze(-2)  # (b, c, h, Q, Q): a_i − a_j
    decay = torch.exp(segment.masked_fill(~causal, float("-inf")))
    weights = (decay * delta.unsqueeze(-2)).view(b, c, g, hg, Q, Q)
    M = (CB.to(acc) * weights).to(io)
    y_diag = torch.matmul(M, xc)  # (b, c, g, hg, Q, P)

    # 2. Each chunk's own end state S_c = Σ_j exp(a_last − a_j) Δ_j x_j ⊗ B_j: (b, c, h, P, N).
    w = (torch.exp(a[..., -1:] - a) * delta).view(b, c, g, hg, Q, 1)
    S = torch.matmul((xc.to(acc) * w).to(io).transpose(-1, -2), Bc).to(acc)
    S = S.reshape(b, c, h, P * N)

    # 3. States across chunks: H_k (entering chunk k) = Σ_{m<k} exp(cs_k − cs_{m+1}) S_m, with
    #    cs_k = Σ_{m<k} a_last(m); H_c is the final state. A (c+1) × c matrix per (b, h), fp32.
    cs = F.pad(cumsum_last(a[..., -1].transpose(1, 2)).transpose(1, 2), (0, 0, 1, 0))  # (b, c + 1, h)
    span = cs.unsqueeze(2) - cs[:, 1:].unsqueeze(1)  # (b, c + 1, c, h): cs_k − cs_{m+1}
    earlier = torch.ones(c + 1, c, dtype=torch.bool, device=x.device).tril(-1)  # m < k
    passing = torch.exp(span.masked_fill(~earlier.unsqueeze(-1), float("-inf")))
    H = torch.einsum("bkmh,bmhs->bkhs", passing, S)  # (b, c + 1, h, P·N)
    final_state = H[:, c].reshape(b, h, P, N)

    # 4. The incoming state's term exp(a_i) C_i·H_k, and D·x.
    Hk = H[:, :c].reshape(b, c, g, hg, P, N).to(io)
    y_off = torch.matmul(Cc, Hk.transpose(-1, -2))  # (b, c, g, hg, Q, P)
    y = (y_diag.to(acc) + y_off.to(acc) * torch.exp(a).view(b, c, g, hg, Q, 1)
         + xc.to(acc) * D.to(acc).view(1, 1, g, hg, 1, 1))
    y = y.permute(0, 1, 4, 2, 3, 5).reshape(b, L, h, P).to(io)
    return y, final_state


def ssd_recurrence(x, dt, A, B, C, D, dt_bias):
    """The definition, one step at a time: h_t = exp(Δ_t A) h_{t−1} + Δ_t x_t ⊗ B_t,
    y_t = h_t·C_t + D x_t (ops/ssd.h). Returns y and the final state."""
    b, L, h, P = x.shape
    hg = h // B.shape[2]
    delta = F.softplus(dt + dt_bias)
    Bh, Ch = B.repeat_interleave(hg, dim=2), C.repeat_interleave(hg, dim=2)  # (b, L, h, N)
    state = x.new_zeros(b, h, P, B.shape[3])
    ys = []
    for t in range(L):
        decay = torch.exp(delta[:, t] * A)[..., None, None]
        state = decay * state + (delta[:, t, :, None] * x[:, t])[..., None] * Bh[:, t, :, None, :]
        ys.append((state * Ch[:, t, :, None, :]).sum(-1) + D[:, None] * x[:, t])
    return torch.stack(ys, dim=1), state


def softplus_inverse(delta):
    return math.log(math.expm1(delta))


def make_inputs(shape, seed, device, io_dtype):
    """The scanline bench's distribution (bench/ssd_bench.cpp): x, B, C, grad_y standard normal;
    dt_bias = softplus^-1 of a Δ log-uniform in [1e-3, 0.1] per head; dt + dt_bias uniform in a
    range 0.02 inside [softplus^-1(1e-3), softplus^-1(0.1)] (Δ in [1e-3, 0.1] after bf16
    rounding); A = −exp(U[log 1, log 16]); D uniform in [0.5, 1.5]. Returns (inputs, grad_y)."""
    b, L, h, P, N, g = shape
    gen = torch.Generator(device=device).manual_seed(seed)
    f32 = dict(dtype=torch.float32, device=device, generator=gen)

    def uniform(size, low, high):
        return torch.rand(size, **f32) * (high - low) + low

    x = torch.randn(b, L, h, P, **f32)
    B = torch.randn(b, L, g, N, **f32)
    C = torch.randn(b, L, g, N, **f32)
    grad_y = torch.randn(b, L, h, P, **f32)
    low, high = softplus_inverse(1e-3) + 0.02, softplus_inverse(0.1) - 0.02
    delta0 = torch.exp(uniform(h, math.log(F.softplus(torch.tensor(low)).item()),
                               math.log(F.softplus(torch.tensor(high)).item())))
    dt_bias = torch.log(torch.expm1(delta0))
    A = -torch.exp(uniform(h, 0.0, math.log(16.0)))
    dt = uniform((b, L, h), low, high) - dt_bias
    D = uniform(h, 0.5, 1.5)
    inputs = [x.to(io_dtype), dt.to(io_dtype), A, B.to(io_dtype), C.to(io_dtype), D, dt_bias]
    return inputs, grad_y.to(io_dtype)


def relative_error(got, ref):
    return ((got.double() - ref.double()).abs().max() / ref.double().abs().max().clamp_min(1e-30)).item()


def check(device):
    """The chunked peer against the float64 recurrence on tiny shapes (a short chunk so that every
    term and the passing over several chunks are exercised). Raises on a mismatch."""
    torch.backends.cuda.matmul.allow_tf32 = False  # exact fp32 products for the f32 check
    torch.manual_seed(0)
    names = ["x", "dt", "A", "B", "C", "D", "dt_bias"]
    worst = {}
    for shape, chunk in [((2, 64, 4, 8, 16, 2), 16), ((1, 96, 3, 16, 8, 1), 32)]:
        for io, tol in [(torch.float32, 1e-4), (torch.bfloat16, 2e-2)]:
            inputs, grad_y = make_inputs(shape, 7, device, io)
            grad_state = torch.randn(shape[0], shape[2], shape[3], shape[4], device=device)
            ref_in = [t.detach().double().requires_grad_() for t in inputs]
            got_in = [t.detach().clone().requires_grad_() for t in inputs]
            y_ref, s_ref = ssd_recurrence(*ref_in)
            y, s = ssd_chunked(*got_in, chunk)
            results = {"y": relative_error(y, y_ref), "final_state": relative_error(s, s_ref)}
            if io == torch.float32:  # gradients: autograd through the chunked form
                loss_ref = (y_ref * grad_y.double()).sum() + (s_ref * grad_state.double()).sum()
                loss = (y * grad_y).sum() + (s * grad_state).sum()
                g_ref = torch.autograd.grad(loss_ref, ref_in)
                g = torch.autograd.grad(loss, got_in)
                for name, gi, gr in zip(names, g, g_ref):
                    results["d" + name] = relative_error(gi, gr)
            for key, err in results.items():
                label = f"{str(io).replace('torch.', '')} {key}"
                worst[label] = max(worst.get(label, 0.0), err)
                if not err <= tol:
                    raise AssertionError(f"ssd_torch.py: the chunked peer differs from the recurrence at shape "
                                         f"{shape}, chunk {chunk}, {label}: relative error {err:.3g} > {tol:g}")
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


def peak_bytes(fn):
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    fn()
    torch.cuda.synchronize()
    return torch.cuda.max_memory_allocated()


def run_case(shape, chunk, fn, reps, device="cuda"):
    inputs, grad_y = make_inputs(shape, 1, device, torch.bfloat16)
    inputs = [t.requires_grad_() for t in inputs]

    def forward():
        with torch.no_grad():
            fn(*inputs, chunk)

    def forward_backward():
        # The gradients of loss = (y·grad_y).sum(), without forming the loss.
        y, _ = fn(*inputs, chunk)
        torch.autograd.grad(y, inputs, grad_y)

    out = {
        "fwd_ms": time_ms(forward, 5, reps, 3),
        "fwd_bwd_ms": time_ms(forward_backward, 3, reps, 3),
        "fwd_bwd_peak_bytes": peak_bytes(forward_backward),
    }
    del inputs, grad_y
    torch.cuda.empty_cache()
    return out


def parse_scanline_log(path):
    """Rows `| (batch, L, heads, headdim, N, ngroups) | pass | ms | ...` of `scanline bench ssd`."""
    rows = {}
    pattern = re.compile(r"^\|\s*\(([\d,\s]+)\)\s*\|\s*(fwd\+bwd|fwd)\s*\|\s*([0-9.]+)\s*\|")
    try:
        f = open(path)
    except OSError as e:
        print(f"ssd_torch.py: cannot read the scanline log: {e}")
        return rows
    with f:
        for line in f:
            m = pattern.match(line)
            if m:
                rows[(tuple(int(v) for v in m.group(1).split(",")), m.group(2))] = float(m.group(3))
    return rows


def fmt(v, spec):
    return "-" if v is None else format(v, spec)


def main():
    sys.stdout.reconfigure(line_buffering=True)  # keep the log's order when stdout is a file
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--cases", nargs="+", default=DEFAULT_CASES,
                        help="batch,L,heads,headdim,N,ngroups per case")
    parser.add_argument("--chunk", type=int, default=256)
    parser.add_argument("--reps", type=int, default=7, help="timed repetitions (median)")
    parser.add_argument("--json", help="write the results here")
    parser.add_argument("--scanline-log", help="the output of `scanline bench ssd` from this run")
    parser.add_argument("--no-compile", action="store_true", help="eager only")
    args = parser.parse_args()
    cases = [tuple(int(v) for v in c.split(",")) for c in args.cases]
    for case in cases:
        if len(case) != 6 or case[2] % case[5] or case[1] % args.chunk:
            parser.error(f"case {case}: expected batch,L,heads,headdim,N,ngroups with ngroups dividing heads "
                         f"and L a multiple of the chunk {args.chunk}")

    device = "cuda" if torch.cuda.is_available() else "cpu"
    worst = check(device)
    print(f"ssd_torch.py: torch {torch.__version__} on {torch.cuda.get_device_name(0) if device == 'cuda' else 'CPU'}")
    print("correctness: the chunked peer matches the float64 recurrence (largest relative errors: "
          + ", ".join(f"{k} {v:.1e}" for k, v in worst.items()) + ")")
    if device != "cuda":
        print("ssd_torch.py: no CUDA device: correctness checked, timings skipped")
        return 0

    modes = {"eager": ssd_chunked}
    compile_note = None
    if args.no_compile:
        compile_note = "not run (--no-compile)"
    elif not hasattr(torch, "compile"):
        compile_note = f"not available in torch {torch.__version__}"
    results = []
    for case in cases:
        entry = {"shape": list(case), "chunk": args.chunk}
        entry["eager"] = run_case(case, args.chunk, ssd_chunked, args.reps)
        entry["compile"] = None
        if compile_note is None:
            try:
                torch._dynamo.reset()
                compiled = torch.compile(ssd_chunked, dynamic=False)
                entry["compile"] = run_case(case, args.chunk, compiled, args.reps)
            except Exception as e:  # report, keep the eager numbers
                compile_note = f"failed: {type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"
        print(f"ssd_torch.py: {case} done", file=sys.stderr, flush=True)
        results.append(entry)

    print(f"\n### PyTorch peer: the chunked SSD in plain PyTorch (bf16, chunk {args.chunk})\n")
    print("| (batch, L, heads, headdim, N, ngroups) | pass | eager ms | torch.compile ms | eager peak GiB | "
          "compile peak GiB |")
    print("| --- | --- | ---: | ---: | ---: | ---: |")
    for e in results:
        shape = "(" + ", ".join(map(str, e["shape"])) + ")"
        ce = e["compile"] or {}
        for pass_, key in [("fwd", "fwd_ms"), ("fwd+bwd", "fwd_bwd_ms")]:
            peak_e = e["eager"]["fwd_bwd_peak_bytes"] / 2**30 if pass_ == "fwd+bwd" else None
            peak_c = ce["fwd_bwd_peak_bytes"] / 2**30 if pass_ == "fwd+bwd" and ce else None
            print(f"| {shape} | {pass_} | {e['eager'][key]:.3f} | {fmt(ce.get(key), '.3f')} | "
                  f"{fmt(peak_e, '.1f')} | {fmt(peak_c, '.1f')} |")
    if compile_note:
        print(f"\ntorch.compile: {compile_note}")

    report = {"torch": torch.__version__, "device": torch.cuda.get_device_name(0), "check": worst,
              "compile_note": compile_note, "cases": results}
    status = 0
    if args.scanline_log:
        ours = parse_scanline_log(args.scanline_log)
        report["scanline_ms"] = [{"shape": list(k[0]), "pass": k[1], "ms": v} for k, v in ours.items()]
        print(f"\n### SSD: scanline against the PyTorch peer (same run) and Triton (bf16, chunk {args.chunk})\n")
        print("| (batch, L, heads, headdim, N, ngroups) | pass | scanline ms | eager ms | compile ms | Triton ms | "
              "vs eager | vs compile | vs Triton |")
        print("| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
        faster = True
        for e in results:
            case = tuple(e["shape"])
            ce = e["compile"] or {}
            for i, (pass_, key) in enumerate([("fwd", "fwd_ms"), ("fwd+bwd", "fwd_bwd_ms")]):
                mine = ours.get((case, pass_))
                eager, comp = e["eager"][key], ce.get(key)
                triton = TRITON_MS.get(case, (None, None))[i]
                faster = faster and mine is not None and mine < eager and (comp is None or mine < comp)

                def speedup(peer):
                    return "-" if peer is None or mine is None else f"{peer / mine:.2f}x"

                print(f"| {'(' + ', '.join(map(str, case)) + ')'} | {pass_} | {fmt(mine, '.3f')} | {eager:.3f} | "
                      f"{fmt(comp, '.3f')} | {fmt(triton, '.3f')} | {speedup(eager)} | {speedup(comp)} | "
                      f"{speedup(triton)} |")
        print(f"\nssd_torch.py: scanline is {'faster' if faster else 'NOT faster'} than the PyTorch peer "
              f"(eager{'' if compile_note else ' and torch.compile'}) on every case"
              + ("" if ours else f" (no rows found in {args.scanline_log})"))
        status = 0 if faster else 1
    if args.json:
        with open(args.json, "w") as f:
            json.dump(report, f, indent=2)
    return status


if __name__ == "__main__":
    sys.exit(main())
