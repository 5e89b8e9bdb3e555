#!/usr/bin/env python3
"""The PyTorch peer of `scanline bench train`: whole training steps of the same language model
(Mamba-1, Mamba-2 or a hybrid, read from the same YAML) in plain torch.nn modules, torch.compile,
bf16 autocast with fp32 parameters, fused AdamW, on the same batch shape, so that scanline's
tokens/s and the peer's are measured side by side in one run (issue 10).

The model follows docs/DESIGN.md: token embedding, one pre-norm residual block a pattern symbol
(`M` the Mamba-1 or Mamba-2 mixer, `*` grouped-query attention through
F.scaled_dot_product_attention, `-` the MLP) with the residual stream in fp32, a final RMSNorm, an
LM head tied to the embedding, the vocabulary padded to a multiple of 16, cross-entropy on fp32
logits. No mamba_ssm, no causal_conv1d, no custom kernels:
  - Mamba-2: ssd_torch.ssd_chunked (the chunked SSD of the SSD peer), then the gated RMSNorm.
  - Mamba-1: selective_scan_chunked below. A scan whose decay differs per (channel, state) has no
    matrix-product form, and a whole-sequence scan materializes (batch, E, N, L) fp32 tensors
    (1.6 GB each at 8 x 1536 x 16 x 2048). So the sequence is cut into chunks of T (--scan-chunk,
    64): (1) each chunk's end state from a zero start in closed form, sum_t exp(A (c_T - c_t))
    dt_t u_t B_t with c the in-chunk cumulative sum of dt (exponents <= 0: stable, no T x T
    matrix); (2) the states entering the chunks by a loop over the L/T chunks on (batch, E, N);
    (3) a loop over the T positions of every chunk at once on (batch, E, L/T, N) from those
    states, reading y_t = C_t . h_t at each step. L/T + T small steps instead of L, exact (a check
    below compares it with the step-by-step recurrence). Its inputs are all the mixer saves:
    the scan runs under torch.utils.checkpoint and is recomputed in the backward, which keeps
    its intermediates (several GB a layer at batch 8) to one layer at a time.
torch.compile (default mode) is applied per block (regional compilation: the 24 to 48 blocks
share one compiled graph a kind, compiled once, not once a layer) plus the head and loss;
--compile-scope model compiles the whole forward instead. If compilation fails, the error is
printed and the run goes on in eager mode, saying so.

Before timing, both mixers are checked in float64 on tiny shapes against their step-by-step
recurrences (Mamba-1: mamba_ssm's selective_scan_ref; Mamba-2: ssd_torch.ssd_recurrence), output
and every gradient to 1e-8 relative; exit 1 otherwise. Then warm-up steps (compilation happens
there) and timed steps, each: zero_grad, forward + loss (autocast), backward, gradient clipping
(optim.grad_clip, as scanline's optimizer phase), AdamW step; CUDA events around each phase, one
synchronization a step as scanline's loop. Medians as scanline's: the element at n/2 of the
sorted times. With --scanline-log (the output of `scanline bench train` with the same config) it
prints both side by side, the ratio of tokens/s and "scanline faster: yes/no"; the exit code
stays 0 (the lead judges).

Usage:
  python3 bench/peers/lm_torch.py --config configs/bench/mamba1_130m.yaml [--steps 20 --warmup 5]
      [--no-compile | --compile-scope blocks|model] [--scan-chunk 64] [--json out.json]
      [--scanline-log bench-train-mamba1.log]
"""
import argparse
import gc
import json
import math
import os
import re
import sys
import time
from dataclasses import dataclass

try:
    import torch
    import torch.nn as nn
    import torch.nn.functional as F
    from torch.utils.checkpoint import checkpoint
except ImportError:
    print("lm_torch.py: skipped: this python3 has no torch (the PyTorch peer needs the GPU machine's PyTorch)")
    sys.exit(0)

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from attention_torch import sdpa, sdpa_mode  # noqa: E402  (the attention peer's SDPA call)
from ssd_torch import ssd_chunked, ssd_recurrence  # noqa: E402  (the SSD peer's chunked SSD)

H100_DENSE_BF16 = 989e12  # bench/train_bench.cpp's MFU denominator
MODEL_KEYS = {"ssm", "d_model", "n_layers", "pattern", "hybrid", "vocab_size", "d_state", "d_conv", "expand",
              "dt_rank", "selective", "headdim", "ngroups", "chunk_size", "n_heads", "n_kv_heads", "head_dim", "rope",
              "rope_theta", "mlp", "mlp_hidden", "tie_embeddings", "norm_eps"}


# ---- configuration ----------------------------------------------------------------------------

class ConfigError(Exception):
    pass


@dataclass
class ModelConfig:  # trainer/run_config.h's defaults
    ssm: str = "mamba1"
    d_model: int = 64
    pattern: str = "MM"
    vocab_size: int = 256
    d_state: int = 16
    d_conv: int = 4
    expand: int = 2
    dt_rank: int = 0  # 0: ceil(d_model / 16)
    headdim: int = 64
    ngroups: int = 1
    chunk_size: int = 256
    n_heads: int = 0  # 0: d_model / 64
    n_kv_heads: int = 0  # 0: n_heads
    head_dim: int = 0  # 0: d_model / n_heads
    rope: bool = False
    rope_theta: float = 10000.0
    mlp: str = "swiglu"
    mlp_hidden: int = 0  # 0: 8d/3 up to a multiple of 64 (swiglu), else 4d
    tie_embeddings: bool = True
    norm_eps: float = 1e-5
    seq_len: int = 256  # data.seq_len: the RoPE table's length
    scan_chunk: int = 64  # Mamba-1's chunk (--scan-chunk), not a scanline key
    sdpa_mode: str = "gqa"  # attention_torch.sdpa_mode() of this torch

    @property
    def d_inner(self):
        return self.expand * self.d_model

    @property
    def resolved_dt_rank(self):
        return self.dt_rank or (self.d_model + 15) // 16

    @property
    def heads(self):
        return self.n_heads or self.d_model // 64

    @property
    def kv_heads(self):
        return self.n_kv_heads or self.heads

    @property
    def resolved_head_dim(self):
        return self.head_dim or (self.d_model // self.heads if self.heads else 0)

    @property
    def resolved_mlp_hidden(self):
        if self.mlp_hidden:
            return self.mlp_hidden
        return (8 * self.d_model + 191) // 192 * 64 if self.mlp == "swiglu" else 4 * self.d_model

    @property
    def padded_vocab(self):
        return (self.vocab_size + 15) // 16 * 16


def _strip_comment(line):
    quote = None
    for i, ch in enumerate(line):
        if quote:
            quote = None if ch == quote else quote
        elif ch in "\"'":
            quote = ch
        elif ch == "#" and (i == 0 or line[i - 1] in " \t"):
            return line[:i]
    return line


def _scalar(text):
    if len(text) >= 2 and text[0] == text[-1] and text[0] in "\"'":
        return text[1:-1]
    if text.lower() in ("true", "false"):
        return text.lower() == "true"
    for kind in (int, float):
        try:
            return kind(text)
        except ValueError:
            pass
    return text


def parse_simple_yaml(text):
    """Nested maps of scalars (quoted strings, numbers, booleans, comments): what the bench
    configs use, for a python3 without PyYAML."""
    root = {}
    stack = [(-1, root)]  # (indent, map) of the open maps
    for number, raw in enumerate(text.splitlines(), 1):
        line = _strip_comment(raw).rstrip()
        if not line.strip():
            continue
        indent = len(line) - len(line.lstrip(" "))
        key, sep, value = line.strip().partition(":")
        if not sep or not key.strip():
            raise ConfigError(f"line {number}: expected 'key: value' (without PyYAML only nested maps of scalars)")
        while stack[-1][0] >= indent:
            stack.pop()
        parent, value = stack[-1][1], value.strip()
        if value:
            parent[key.strip()] = _scalar(value)
        else:
            parent[key.strip()] = child = {}
            stack.append((indent, child))
    return root


def _get(doc, section, key, default, kind):
    body = doc.get(section) or {}
    if not isinstance(body, dict):
        raise ConfigError(f"{section}: expected a mapping")
    value = body.get(key, default)
    try:
        if kind is bool:
            if isinstance(value, str) and value.lower() in ("true", "false"):
                return value.lower() == "true"
            if isinstance(value, bool):
                return value
            raise ValueError
        if isinstance(value, bool) or value is None:
            raise ValueError
        if kind is int:
            if float(value) != int(float(value)):
                raise ValueError
            return int(float(value))
        return kind(value)  # float ("1e-5" is a string to PyYAML) or str
    except (TypeError, ValueError):
        raise ConfigError(f"{section}.{key}: expected {kind.__name__}, got {value!r}") from None


def read_config(path):
    """The model and run settings of a scanline YAML. Raises ConfigError on what the peer cannot build."""
    with open(path) as f:
        text = f.read()
    try:
        import yaml
        doc = yaml.safe_load(text) or {}
    except ImportError:
        doc = parse_simple_yaml(text)
    if not isinstance(doc, dict):
        raise ConfigError("expected a mapping of sections")
    model = doc.get("model") or {}
    unknown = sorted(set(model) - MODEL_KEYS)
    if unknown:
        raise ConfigError(f"model: unknown key(s) {', '.join(unknown)}")
    if "hybrid" in model:
        raise ConfigError("model.hybrid: not supported by the peer (write the layer pattern out)")
    if not _get(doc, "model", "selective", True, bool):
        raise ConfigError("model.selective: false (the LTI ablation) is not supported by the peer")
    g = lambda key, default, kind: _get(doc, "model", key, default, kind)  # noqa: E731
    cfg = ModelConfig(
        ssm=g("ssm", "mamba1", str), d_model=g("d_model", 64, int),
        pattern=g("pattern", "", str) or "M" * g("n_layers", 2, int), vocab_size=g("vocab_size", 256, int),
        d_state=g("d_state", 16, int), d_conv=g("d_conv", 4, int), expand=g("expand", 2, int),
        dt_rank=g("dt_rank", 0, int), headdim=g("headdim", 64, int), ngroups=g("ngroups", 1, int),
        chunk_size=g("chunk_size", 256, int), n_heads=g("n_heads", 0, int), n_kv_heads=g("n_kv_heads", 0, int),
        head_dim=g("head_dim", 0, int), rope=g("rope", False, bool), rope_theta=g("rope_theta", 10000.0, float),
        mlp=g("mlp", "swiglu", str), mlp_hidden=g("mlp_hidden", 0, int),
        tie_embeddings=g("tie_embeddings", True, bool), norm_eps=g("norm_eps", 1e-5, float),
        seq_len=_get(doc, "data", "seq_len", 256, int))
    bad = sorted(set(cfg.pattern) - set("M*-"))
    if bad:
        raise ConfigError(f"model.pattern: unknown symbol(s) {' '.join(map(repr, bad))} in {cfg.pattern!r} "
                          "(expected M an SSM block, * attention, - MLP)")
    if cfg.ssm not in ("mamba1", "mamba2"):
        raise ConfigError(f"model.ssm: expected mamba1 or mamba2, got {cfg.ssm!r}")
    if cfg.mlp not in ("swiglu", "gelu", "relu2"):
        raise ConfigError(f"model.mlp: expected swiglu, gelu or relu2, got {cfg.mlp!r}")
    if "M" in cfg.pattern and cfg.ssm == "mamba2" and (cfg.headdim < 1 or cfg.ngroups < 1 or cfg.d_inner % cfg.headdim
                                                       or (cfg.d_inner // cfg.headdim) % cfg.ngroups):
        raise ConfigError("model.headdim must divide d_model * expand and ngroups the heads")
    if "*" in cfg.pattern and (cfg.heads < 1 or cfg.heads % cfg.kv_heads or cfg.resolved_head_dim < 1):
        raise ConfigError("model.n_heads / n_kv_heads / head_dim: n_kv_heads must divide n_heads")
    run = {"batch": _get(doc, "train", "batch_size", 32, int), "seq_len": cfg.seq_len,
           "precision": _get(doc, "train", "precision", "fp32", str), "seed": _get(doc, "train", "seed", 0, int),
           "lr": _get(doc, "optim", "lr", 1e-3, float), "beta1": _get(doc, "optim", "beta1", 0.9, float),
           "beta2": _get(doc, "optim", "beta2", 0.95, float), "eps": _get(doc, "optim", "eps", 1e-8, float),
           "weight_decay": _get(doc, "optim", "weight_decay", 0.1, float),
           "grad_clip": _get(doc, "optim", "grad_clip", 1.0, float)}
    if run["precision"] not in ("bf16", "fp32"):
        raise ConfigError(f"train.precision: expected bf16 or fp32, got {run['precision']!r}")
    return cfg, run


# ---- the selective scan (Mamba-1) -------------------------------------------------------------

def selective_scan_ref(u, delta, A, B, C, D, z, delta_bias, chunk=None):
    """The definition, one step at a time (mamba_ssm's selective_scan_ref): u, delta, z (b, E, L),
    A (E, N), B, C (b, N, L), D, delta_bias (E); Δ = softplus(delta + bias),
    h_t = exp(Δ_t A) h_{t-1} + Δ_t u_t B_t, y_t = C_t·h_t + D u_t, out = y·SiLU(z)."""
    acc = torch.float64 if u.dtype == torch.float64 else torch.float32
    uf, Bf, Cf = u.to(acc), B.to(acc), C.to(acc)
    dlt = F.softplus(delta.to(acc) + delta_bias.to(acc)[:, None])
    h = uf.new_zeros(u.shape[0], u.shape[1], A.shape[1])
    ys = []
    for t in range(u.shape[2]):
        h = torch.exp(dlt[:, :, t, None] * A.to(acc)) * h + (dlt[:, :, t] * uf[:, :, t])[..., None] * Bf[:, None, :, t]
        ys.append((h * Cf[:, None, :, t]).sum(-1))
    y = torch.stack(ys, dim=2) + uf * D.to(acc)[:, None]
    return (y * F.silu(z.to(acc))).to(u.dtype)


def selective_scan_chunked(u, delta, A, B, C, D, z, delta_bias, chunk=64):
    """selective_scan_ref's result by chunks of T positions (the module docstring says how), in
    fp32 (f64 for f64 inputs) whatever autocast says: only elementwise ops and sums on explicitly
    cast tensors, no matrix product that autocast would run in bf16. L need not be a multiple of
    T (zero padding at the end, Δ = 0 there: causal, so the outputs kept are unchanged). Returns
    u's dtype."""
    b, E, L = u.shape
    N, io = A.shape[1], u.dtype
    acc = torch.float64 if io == torch.float64 else torch.float32
    A, uf = A.to(acc), u.to(acc)
    dlt = F.softplus(delta.to(acc) + delta_bias.to(acc)[:, None])
    du, Bf, Cf = dlt * uf, B.to(acc), C.to(acc)
    T = min(chunk, L)
    pad = (-L) % T
    if pad:
        dlt, du, Bf, Cf = [F.pad(t, (0, pad)) for t in (dlt, du, Bf, Cf)]
    c = (L + pad) // T
    d4, du4 = dlt.reshape(b, E, c, T), du.reshape(b, E, c, T)
    Bk = Bf.reshape(b, N, c, T).permute(0, 2, 3, 1)  # (b, c, T, N)
    Ck = Cf.reshape(b, N, c, T).permute(0, 2, 3, 1)
    Ae = A[:, None, :]  # (E, 1, N): broadcasts against (b, E, c, N)

    # 1. Each chunk's end state from zero, S = Σ_t exp(A (c_T − c_t)) Δ_t u_t B_t, and its decay
    #    exp(A c_T), c_t = Σ_{s<=t} Δ_s (a loop of adds: torch.cumsum trips Inductor, see ssd_torch).
    total, cums = torch.zeros_like(d4[..., 0]), []
    for t in range(T):
        total = total + d4[..., t]
        cums.append(total)
    cum = torch.stack(cums, dim=-1)  # (b, E, c, T)
    tail = (total.unsqueeze(-1) - cum).unsqueeze(-1) * A[:, None, None, :]  # (b, E, c, T, N), <= 0
    S = (torch.exp(tail) * (du4.unsqueeze(-1) * Bk.unsqueeze(1))).sum(3)  # (b, E, c, N)
    decay = torch.exp(total.unsqueeze(-1) * Ae)  # (b, E, c, N)

    # 2. The state entering each chunk: H_0 = 0, H_{k+1} = decay_k H_k + S_k.
    state, starts = uf.new_zeros(b, E, N), []
    for k in range(c):
        starts.append(state)
        state = decay[:, :, k] * state + S[:, :, k]
    h = torch.stack(starts, dim=2)  # (b, E, c, N)

    # 3. Position t of every chunk at once, from the entering states: y_t = C_t·h_t.
    ys = []
    for t in range(T):
        h = torch.exp(d4[..., t, None] * Ae) * h + du4[..., t, None] * Bk[:, None, :, t]
        ys.append((h * Ck[:, None, :, t]).sum(-1))  # (b, E, c)
    y = torch.stack(ys, dim=-1).reshape(b, E, c * T)[..., :L]
    y = (y + uf * D.to(acc)[:, None]) * F.silu(z.to(acc))
    return y.to(io)


def ssd_padded(x, dt, A, B, C, D, dt_bias, chunk):
    """ssd_torch.ssd_chunked (x (b, L, h, P), dt (b, L, h), B, C (b, L, g, N)) for any L: zero
    padding at the end to a multiple of the chunk (causal: the kept outputs are unchanged)."""
    L = x.shape[1]
    pad = (-L) % chunk
    if pad:
        x, B, C = [F.pad(t, (0, 0, 0, 0, 0, pad)) for t in (x, B, C)]
        dt = F.pad(dt, (0, 0, 0, pad))
    y, _ = ssd_chunked(x, dt, A, B, C, D, dt_bias, chunk)
    return y[:, :L]


def ssd_reference(x, dt, A, B, C, D, dt_bias, chunk=None):
    return ssd_recurrence(x, dt, A, B, C, D, dt_bias)[0]


# ---- modules ----------------------------------------------------------------------------------

def dt_bias_init(n, dt_min=1e-3, dt_max=0.1, floor=1e-4):
    """softplus^-1 of Δ = max(exp(U[log dt_min, log dt_max]), floor) (mamba_ssm)."""
    dt = torch.exp(torch.rand(n) * (math.log(dt_max) - math.log(dt_min)) + math.log(dt_min)).clamp(min=floor)
    return dt + torch.log(-torch.expm1(-dt))


class RMSNorm(nn.Module):
    def __init__(self, d, eps):
        super().__init__()
        self.weight, self.eps = nn.Parameter(torch.ones(d)), eps

    def forward(self, x):  # in fp32 (the residual stream's dtype), whatever autocast says
        x = x.float()
        return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.eps) * self.weight


class Mamba1Mixer(nn.Module):
    """mamba_ssm's Mamba: in_proj d→2E (x, z), causal depthwise conv1d + SiLU, x_proj E→R+2N,
    dt_proj R→E (bias inside the scan, with softplus), A = −exp(A_log), D, y·SiLU(z), out_proj."""

    def __init__(self, cfg):
        super().__init__()
        d, E, N, R, k = cfg.d_model, cfg.d_inner, cfg.d_state, cfg.resolved_dt_rank, cfg.d_conv
        self.N, self.R, self.chunk = N, R, cfg.scan_chunk
        self.in_proj = nn.Linear(d, 2 * E, bias=False)
        self.conv1d = nn.Conv1d(E, E, k, groups=E, padding=k - 1, bias=True)
        self.x_proj = nn.Linear(E, R + 2 * N, bias=False)
        self.dt_proj = nn.Linear(R, E, bias=True)
        with torch.no_grad():
            nn.init.uniform_(self.dt_proj.weight, -R ** -0.5, R ** -0.5)
            self.dt_proj.bias.copy_(dt_bias_init(E))
        self.A_log = nn.Parameter(torch.log(torch.arange(1, N + 1, dtype=torch.float32)).repeat(E, 1))
        self.D = nn.Parameter(torch.ones(E))
        self.out_proj = nn.Linear(E, d, bias=False)
        self.scan = selective_scan_chunked  # check() swaps in selective_scan_ref

    def forward(self, h):
        L = h.shape[1]
        x, z = self.in_proj(h).chunk(2, dim=-1)
        x = F.silu(self.conv1d(x.transpose(1, 2))[..., :L])  # (b, E, L)
        dt, B, C = torch.split(self.x_proj(x.transpose(1, 2)), [self.R, self.N, self.N], dim=-1)
        dt = F.linear(dt, self.dt_proj.weight)  # the bias is added in the scan
        A = -torch.exp(self.A_log)
        # Recomputed in the backward: only the scan's inputs stay saved (module docstring).
        y = checkpoint(self.scan, x, dt.transpose(1, 2), A, B.transpose(1, 2), C.transpose(1, 2), self.D,
                       z.transpose(1, 2), self.dt_proj.bias, self.chunk, use_reentrant=False)
        return self.out_proj(y.transpose(1, 2))


class Mamba2Mixer(nn.Module):
    """mamba_ssm's Mamba2: in_proj to (z, x, B, C, dt), conv1d + SiLU on (x, B, C), the chunked
    SSD (softplus(dt + dt_bias), D per head), RMSNorm(y·SiLU(z)) per group, out_proj."""

    def __init__(self, cfg):
        super().__init__()
        d, E, N, G, k = cfg.d_model, cfg.d_inner, cfg.d_state, cfg.ngroups, cfg.d_conv
        self.E, self.N, self.G, self.P, self.H = E, N, G, cfg.headdim, E // cfg.headdim
        self.chunk, self.eps = cfg.chunk_size, 1e-5  # Mamba2Config.norm_eps (model.norm_eps is the blocks')
        conv_dim = E + 2 * G * N
        self.in_proj = nn.Linear(d, E + conv_dim + self.H, bias=False)
        self.conv1d = nn.Conv1d(conv_dim, conv_dim, k, groups=conv_dim, padding=k - 1, bias=True)
        self.dt_bias = nn.Parameter(dt_bias_init(self.H))
        self.A_log = nn.Parameter(torch.log(torch.empty(self.H).uniform_(1.0, 16.0)))
        self.D = nn.Parameter(torch.ones(self.H))
        self.norm_weight = nn.Parameter(torch.ones(E))
        self.out_proj = nn.Linear(E, d, bias=False)
        self.ssd = ssd_padded  # check() swaps in ssd_reference

    def forward(self, h):
        (b, L, _), E, N, G, H, P = h.shape, self.E, self.N, self.G, self.H, self.P
        z, xBC, dt = torch.split(self.in_proj(h), [E, E + 2 * G * N, H], dim=-1)
        xBC = F.silu(self.conv1d(xBC.transpose(1, 2))[..., :L]).transpose(1, 2).contiguous()
        x, B, C = torch.split(xBC, [E, G * N, G * N], dim=-1)
        A = -torch.exp(self.A_log)
        acc = torch.float64 if h.dtype == torch.float64 else torch.float32
        # ssd_chunked picks its own precisions (bf16 operands, fp32 decays and states): autocast
        # would turn its fp32 products (cumulative sums, state passing) into bf16 ones.
        with torch.autocast(device_type=h.device.type, enabled=False):
            y = self.ssd(x.reshape(b, L, H, P), dt, A, B.reshape(b, L, G, N), C.reshape(b, L, G, N), self.D,
                         self.dt_bias, self.chunk)
            g = (y.reshape(b, L, E).to(acc) * F.silu(z.to(acc))).reshape(b, L, G, E // G)
            g = g * torch.rsqrt(g.pow(2).mean(-1, keepdim=True) + self.eps)
            y = (g.reshape(b, L, E) * self.norm_weight.to(acc)).to(h.dtype)
        return self.out_proj(y)


class Attention(nn.Module):
    """mamba_ssm's MHA: in_proj to [q heads | k heads | v heads], optional RoPE (rotate_half),
    causal SDPA with grouped kv heads, out_proj."""

    def __init__(self, cfg):
        super().__init__()
        self.Hq, self.Hkv, self.Dh = cfg.heads, cfg.kv_heads, cfg.resolved_head_dim
        self.in_proj = nn.Linear(cfg.d_model, (self.Hq + 2 * self.Hkv) * self.Dh, bias=False)
        self.out_proj = nn.Linear(self.Hq * self.Dh, cfg.d_model, bias=False)
        self.rope, self.mode = cfg.rope, cfg.sdpa_mode
        if cfg.rope:  # angles in double, as ops/rope.h
            inv = cfg.rope_theta ** (-torch.arange(0, self.Dh, 2, dtype=torch.float64) / self.Dh)
            ang = torch.outer(torch.arange(cfg.seq_len, dtype=torch.float64), inv).repeat(1, 2)
            self.register_buffer("cos", ang.cos().float(), persistent=False)
            self.register_buffer("sin", ang.sin().float(), persistent=False)

    def forward(self, h):
        b, L, _ = h.shape
        q, k, v = torch.split(self.in_proj(h), [self.Hq * self.Dh, self.Hkv * self.Dh, self.Hkv * self.Dh], dim=-1)
        q, k, v = q.view(b, L, self.Hq, self.Dh), k.view(b, L, self.Hkv, self.Dh), v.view(b, L, self.Hkv, self.Dh)
        if self.rope:
            cos, sin = self.cos[:L, None, :], self.sin[:L, None, :]

            def rotate(t):
                t1, t2 = t.chunk(2, dim=-1)
                return (t * cos + torch.cat([-t2, t1], dim=-1) * sin).to(t.dtype)

            q, k = rotate(q), rotate(k)
        return self.out_proj(sdpa(q, k, v, True, self.mode).reshape(b, L, self.Hq * self.Dh))


class MLP(nn.Module):
    """SwiGLU (mamba_ssm's GatedMLP: fc1 to (y, gate), fc2(y·SiLU(gate))), GELU or squared ReLU."""

    def __init__(self, cfg):
        super().__init__()
        hidden, self.kind = cfg.resolved_mlp_hidden, cfg.mlp
        self.fc1 = nn.Linear(cfg.d_model, 2 * hidden if cfg.mlp == "swiglu" else hidden, bias=False)
        self.fc2 = nn.Linear(hidden, cfg.d_model, bias=False)

    def forward(self, h):
        u = self.fc1(h)
        if self.kind == "swiglu":
            y, gate = u.chunk(2, dim=-1)
            u = y * F.silu(gate)
        elif self.kind == "gelu":
            u = F.gelu(u)
        else:
            u = F.relu(u).square()
        return self.fc2(u)


class Block(nn.Module):
    """Pre-norm residual block: residual + module(RMSNorm(residual)), the residual in fp32."""

    def __init__(self, symbol, cfg, act_dtype):
        super().__init__()
        self.norm, self.act_dtype = RMSNorm(cfg.d_model, cfg.norm_eps), act_dtype
        if symbol == "M":
            self.mixer = Mamba1Mixer(cfg) if cfg.ssm == "mamba1" else Mamba2Mixer(cfg)
        elif symbol == "*":
            self.mixer = Attention(cfg)
        else:
            self.mixer = MLP(cfg)

    def out_proj(self):
        return self.mixer.fc2 if isinstance(self.mixer, MLP) else self.mixer.out_proj

    def forward(self, residual):
        return residual + self.mixer(self.norm(residual).to(self.act_dtype)).to(residual.dtype)


class LanguageModel(nn.Module):
    def __init__(self, cfg, act_dtype):
        super().__init__()
        self.act_dtype = act_dtype
        self.embedding = nn.Embedding(cfg.padded_vocab, cfg.d_model)
        nn.init.normal_(self.embedding.weight, std=0.02)
        self.layers = nn.ModuleList(Block(s, cfg, act_dtype) for s in cfg.pattern)
        self.norm_f = RMSNorm(cfg.d_model, cfg.norm_eps)
        self.lm_head = None if cfg.tie_embeddings else nn.Linear(cfg.d_model, cfg.padded_vocab, bias=False)
        with torch.no_grad():  # the prenorm residual rescaling, every block counted
            for block in self.layers:
                block.out_proj().weight.div_(math.sqrt(len(self.layers)))
        self.use_eager()

    def use_eager(self):
        self.block_calls, self.head_call = list(self.layers), self.head_loss

    def use_compiled_blocks(self):  # regional compilation: one graph a block kind, reused by every layer
        self.block_calls = [torch.compile(block, dynamic=False) for block in self.layers]
        self.head_call = torch.compile(self.head_loss, dynamic=False)

    def forward(self, tokens, targets):
        residual = self.embedding(tokens).float()
        for call in self.block_calls:
            residual = call(residual)
        return self.head_call(residual, targets)

    def head_loss(self, residual, targets):
        normed = self.norm_f(residual).to(self.act_dtype)
        logits = F.linear(normed, self.embedding.weight if self.lm_head is None else self.lm_head.weight)
        return F.cross_entropy(logits.float().reshape(-1, logits.shape[-1]), targets.reshape(-1))


# ---- correctness ------------------------------------------------------------------------------

def relative_error(got, ref):
    return ((got.double() - ref.double()).abs().max() / ref.double().abs().max().clamp_min(1e-30)).item()


def compare_mixer(mixer, attr, fast, ref, x):
    """Output and gradients (input, every parameter) of the mixer with `fast` and with `ref`."""
    grad_y = torch.randn_like(x)
    runs = []
    for fn in (fast, ref):
        setattr(mixer, attr, fn)
        xi = x.detach().clone().requires_grad_()
        y = mixer(xi)
        runs.append([y] + list(torch.autograd.grad(y, [xi] + list(mixer.parameters()), grad_y)))
    setattr(mixer, attr, fast)
    names = ["y", "dx"] + ["d" + n for n, _ in mixer.named_parameters()]
    return {name: relative_error(got, want) for name, got, want in zip(names, *runs)}


def check(device, tol=1e-8):
    """Both mixers in float64 on tiny shapes (several chunks, L not a multiple of the chunk, Δ up
    to ~1.3) against the step-by-step recurrences. Raises AssertionError on a mismatch."""
    torch.manual_seed(0)
    f64 = dict(dtype=torch.float64, device=device)
    cases = [("mamba1", ModelConfig(ssm="mamba1", d_model=8, d_state=4, dt_rank=2, scan_chunk=8), 37, "scan",
              selective_scan_chunked, selective_scan_ref),
             ("mamba2", ModelConfig(ssm="mamba2", d_model=16, d_state=8, headdim=8, ngroups=2, chunk_size=16), 40,
              "ssd", ssd_padded, ssd_reference)]
    worst = {}
    for label, cfg, L, attr, fast, ref in cases:
        mixer = (Mamba1Mixer if cfg.ssm == "mamba1" else Mamba2Mixer)(cfg).to(**f64)
        with torch.no_grad():
            (mixer.dt_proj.bias if cfg.ssm == "mamba1" else mixer.dt_bias).uniform_(-1.0, 1.0)
        errors = compare_mixer(mixer, attr, fast, ref, torch.randn(2, L, cfg.d_model, **f64))
        name = max(errors, key=errors.get)
        worst[label] = errors[name]
        if not errors[name] <= tol:
            raise AssertionError(f"lm_torch.py: the {label} mixer differs from its recurrence: {name} relative "
                                 f"error {errors[name]:.3g} > {tol:g}")
    return worst


# ---- timing -----------------------------------------------------------------------------------

def upper_median(v):
    return sorted(v)[len(v) // 2]  # bench/train_bench.cpp's median


def train_steps(loss_fn, optimizer, params, inputs, targets, run, steps, warmup):
    """warmup + steps training steps; median phase times (ms), peak GiB and the last loss."""
    autocast = run["precision"] == "bf16"
    device_type = inputs.device.type
    times = {"step": [], "forward": [], "backward": [], "optimizer": []}
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    loss_value = float("nan")
    for s in range(warmup + steps):
        wall = time.perf_counter()
        ev = [torch.cuda.Event(enable_timing=True) for _ in range(4)]
        ev[0].record()
        optimizer.zero_grad(set_to_none=True)
        with torch.autocast(device_type, dtype=torch.bfloat16, enabled=autocast):
            loss = loss_fn(inputs, targets)
        ev[1].record()
        loss.backward()
        ev[2].record()
        if run["grad_clip"] > 0:
            torch.nn.utils.clip_grad_norm_(params, run["grad_clip"], foreach=True)
        optimizer.step()
        ev[3].record()
        ev[3].synchronize()
        loss_value = loss.item()
        del loss
        if s < warmup:
            print(f"lm_torch.py: warm-up step {s + 1}/{warmup}: {time.perf_counter() - wall:.1f} s",
                  file=sys.stderr, flush=True)
            continue
        for key, (a, b) in zip(times, [(0, 3), (0, 1), (1, 2), (2, 3)]):
            times[key].append(ev[a].elapsed_time(ev[b]))
    result = {key + "_ms": upper_median(v) for key, v in times.items()}
    result["peak_gib"] = torch.cuda.max_memory_allocated() / 2**30
    result["loss"] = loss_value
    return result


def parse_scanline_log(path):
    """`scanline bench train`'s output (bench/train_bench.cpp): its config, parameters and table row."""
    out = {}
    try:
        with open(path) as f:
            lines = f.read().splitlines()
    except OSError as e:
        print(f"lm_torch.py: cannot read the scanline log: {e}")
        return out
    num = r"\s*([0-9.]+)\s*\|"
    row = re.compile(r"^\|" + num * 5 + r"\s*([0-9.]+)%\s*\|\s*([0-9.]+)%\s*\|" + num)
    keys = ["step_ms", "forward_ms", "backward_ms", "optimizer_ms", "tokens_per_s", "mfu_measured", "mfu_989",
            "peak_gib"]
    for line in lines:
        m = re.match(r"^scanline bench train on (.*): (\S+)\s*$", line)
        if m:
            out["device"], out["config"] = m.group(1), m.group(2)
        m = re.match(r"^model: ([0-9.]+)M parameters", line)
        if m:
            out["params"] = float(m.group(1)) * 1e6
        m = row.match(line)
        if m:
            out.update({k: float(v) for k, v in zip(keys, m.groups())})
    return out


def table_row(label, r):
    return (f"| {label} | {r['step_ms']:.1f} | {r['forward_ms']:.1f} | {r['backward_ms']:.1f} | "
            f"{r['optimizer_ms']:.1f} | {r['tokens_per_s']:.0f} | {r['mfu_989']:.1f}% | {r['peak_gib']:.2f} | "
            f"{r['params'] / 1e6:.1f}M |")


def first_line(e):
    text = str(e).strip().splitlines()
    return f"{type(e).__name__}: {text[0][:300] if text else ''}"


def main():
    if hasattr(sys.stdout, "reconfigure"):
        sys.stdout.reconfigure(line_buffering=True)  # keep the log's order when stdout is a file
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", required=True, help="the scanline YAML (configs/bench/*.yaml)")
    parser.add_argument("--steps", type=int, default=20, help="timed steps (median)")
    parser.add_argument("--warmup", type=int, default=5, help="untimed steps first (compilation happens there)")
    parser.add_argument("--no-compile", action="store_true", help="eager only")
    parser.add_argument("--compile-scope", choices=["blocks", "model"], default="blocks",
                        help="torch.compile each block and the head (default) or the whole forward")
    parser.add_argument("--scan-chunk", type=int, default=64, help="Mamba-1's selective-scan chunk")
    parser.add_argument("--json", help="write the results here")
    parser.add_argument("--scanline-log", help="the output of `scanline bench train` with this config")
    args = parser.parse_args()
    if args.steps < 1 or args.warmup < 0 or args.scan_chunk < 1:
        parser.error("expected --steps >= 1, --warmup >= 0 and --scan-chunk >= 1")
    try:
        cfg, run = read_config(args.config)
    except Exception as e:  # OSError, ConfigError, a YAML error
        print(f"lm_torch.py: {args.config}: {e}")
        return 2
    cfg.scan_chunk, cfg.sdpa_mode = args.scan_chunk, sdpa_mode() or "repeat"

    torch.backends.cuda.matmul.allow_tf32 = False  # fp32 products exact, as scanline's (and the scan's cumsums)
    torch.backends.cudnn.allow_tf32 = False
    device = "cuda" if torch.cuda.is_available() else "cpu"
    device_name = torch.cuda.get_device_name(0) if device == "cuda" else "CPU"
    print(f"lm_torch.py: torch {torch.__version__} on {device_name}: {args.config}")
    try:
        worst = check(device)
    except AssertionError as e:
        print(e)
        return 1
    print("correctness: the mixers match their float64 recurrences, output and gradients (largest relative "
          "errors: " + ", ".join(f"{k} {v:.1e}" for k, v in worst.items()) + ")")
    if device != "cuda":
        print("lm_torch.py: no CUDA device: correctness checked, timings skipped")
        return 0
    return bench(cfg, run, args, device, {"torch": torch.__version__, "device": device_name, "config": args.config,
                                          "check": worst})


def bench(cfg, run, args, device, report):
    """Builds the model, times it (compiled, else eager), prints the tables; returns the exit code."""
    name = os.path.splitext(os.path.basename(args.config))[0]
    act = torch.bfloat16 if run["precision"] == "bf16" else torch.float32
    torch.manual_seed(run["seed"])
    model = LanguageModel(cfg, act).to(device)
    n_params = sum(p.numel() for p in model.parameters())
    batch, L = run["batch"], run["seq_len"]
    print(f"model: {n_params / 1e6:.1f}M parameters, {cfg.ssm}, pattern \"{cfg.pattern}\", batch {batch} x {L} "
          f"tokens, {run['precision']}, vocab {cfg.vocab_size} padded to {cfg.padded_vocab}")
    named = list(model.named_parameters())
    no_decay = lambda n, p: p.ndim < 2 or n.endswith("A_log")  # noqa: E731  norms, biases, A_log, D, dt bias
    groups = [{"params": [p for n, p in named if not no_decay(n, p)], "weight_decay": run["weight_decay"]},
              {"params": [p for n, p in named if no_decay(n, p)], "weight_decay": 0.0}]
    optimizer = torch.optim.AdamW(groups, lr=run["lr"], betas=(run["beta1"], run["beta2"]), eps=run["eps"],
                                  fused=device == "cuda")  # (False only in a CPU test of this function)
    params = list(model.parameters())
    gen = torch.Generator(device=device).manual_seed(7)
    tokens = torch.randint(0, cfg.vocab_size, (batch, L + 1), device=device, generator=gen)
    inputs, targets = tokens[:, :L].contiguous(), tokens[:, 1:].contiguous()

    report.update(params=n_params, batch=batch, seq_len=L, precision=run["precision"], pattern=cfg.pattern)
    result, mode, note = None, "eager", "--no-compile" if args.no_compile else None
    if not args.no_compile:
        mode = "torch.compile per block" if args.compile_scope == "blocks" else "torch.compile whole model"
        try:
            dyn = torch._dynamo.config
            for key in ("recompile_limit", "cache_size_limit"):  # one entry a block kind; never eager past a limit
                if hasattr(dyn, key):
                    setattr(dyn, key, max(getattr(dyn, key), 64))
            if args.compile_scope == "blocks":
                model.use_compiled_blocks()
                loss_fn = model
            else:
                loss_fn = torch.compile(model, dynamic=False)
            result = train_steps(loss_fn, optimizer, params, inputs, targets, run, args.steps, args.warmup)
        except Exception as e:  # an Inductor error, say: report it and time eager instead
            mode, note = "eager", f"torch.compile failed ({first_line(e)}): eager instead"
            print(f"lm_torch.py: {note}")
        loss_fn = None
        if result is None:
            model.use_eager()
            if hasattr(torch, "_dynamo"):
                torch._dynamo.reset()
            gc.collect()
            torch.cuda.empty_cache()
    if result is None:
        try:
            result = train_steps(model, optimizer, params, inputs, targets, run, args.steps, args.warmup)
        except Exception as e:
            print(f"lm_torch.py: FAILED: the eager run raised {first_line(e)}")
            report["error"] = first_line(e)
            if args.json:
                with open(args.json, "w") as f:
                    json.dump(report, f, indent=2)
            return 1
    result["tokens_per_s"] = batch * L / (result["step_ms"] * 1e-3)
    result["mfu_989"] = 100.0 * 6.0 * n_params * result["tokens_per_s"] / H100_DENSE_BF16
    result["params"] = n_params
    report.update(result, mode=mode, mode_note=note)

    header = ("| | step ms | forward ms | backward ms | optimizer ms | tokens/s | MFU (989) | peak GiB | parameters |\n"
              "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
    print(f"\n### PyTorch peer of `scanline bench train`: {name} ({mode}, {run['precision']}, fused AdamW, "
          f"batch {batch} x {L})\n")
    print(header)
    print(table_row(f"PyTorch peer: {name}", result))
    if note:
        print(f"\n{mode}: {note}")
    print(f"\nloss after {args.warmup + args.steps} steps on the fixed random batch: {result['loss']:.4f} (medians "
          f"over {args.steps} steps after {args.warmup} warm-up steps; the optimizer phase includes the gradient "
          "clipping)")

    if args.scanline_log:
        ours = parse_scanline_log(args.scanline_log)
        report["scanline"] = ours
        print(f"\n### bench train: scanline against the PyTorch peer (same run): {name}\n")
        if "tokens_per_s" not in ours:
            print(f"no `scanline bench train` table row found in {args.scanline_log}")
            print("scanline faster: no")
        else:
            if "config" in ours and os.path.basename(ours["config"]) != os.path.basename(args.config):
                print(f"warning: the scanline log is of {ours['config']}, not {args.config}\n")
            ours.setdefault("params", float("nan"))
            print(header)
            print(table_row("scanline", ours))
            print(table_row(f"PyTorch peer ({mode})", result))
            ratio = ours["tokens_per_s"] / result["tokens_per_s"]
            report["ratio_tokens_per_s"], report["scanline_faster"] = ratio, ratio > 1.0
            print(f"\nscanline/peer tokens/s: {ratio:.2f}x")
            print(f"scanline faster: {'yes' if ratio > 1.0 else 'no'}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(report, f, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
