// The SSD backward (cuda/ssd.h): the chunked algorithm's gradients from the states entering each
// chunk that the forward saved. ops/ssd_chunked_bwd_cpu.cpp is the same sequence of passes on
// CPU in double, checked against the recurrence. Within chunk c (Q steps, the last possibly
// short; a_i = Σ_{j<=i} Δ_j A; dy the gradient of the ungated output; H_c the entering state):
//   1. cumsum   one warp per (batch, chunk, head): Δ = softplus(dt + bias) and a (in log2 units).
//   2. gate     one block per (batch, chunk, head): dy = grad_y·silu(z), dz, and
//               G_c = Σ_i exp(a_i) dy_i ⊗ C_i on tensor cores (cuda/ssd_bwd_gate.cu).
//   3. reverse  one block per (batch, head, slice of P·N): the state gradient, last chunk to first:
//               Dout_c = d loss / d H_{c+1} (grad_final_state for the last), Dout_{c−1} =
//               exp(a_last) Dout_c + G_c (in place of G, both stored in the inputs' dtype),
//               d initial_state, and per slice
//               exp(a_last) ⟨H_c, Dout_c⟩ (the incoming state's part of d loss / d a_last).
//   4. dx       per (tile J of 64 source steps, chunk, group, tile of heads): dx, dB, the direct
//               part of dΔ (x·dxs), w_j, the row and column sums of T_ij, dD partials
//               (cuda/ssd_bwd_dx.cu).
//   5. dC       per (tile I of 64 output steps, chunk, group, tile of heads): dC and the incoming
//               state's part of d loss / d a_i (cuda/ssd_bwd_dc.cu).
//   6. final    one warp per (batch, chunk, head): g_k = d loss / d a_k (row sums of T − column
//               sums − w + the incoming state's part; + Σ w + q at a_last), its suffix sums S, then
//               dΔ = x·dxs + A·S, d dt (through softplus), and per-chunk dA = Σ Δ·S, d dt_bias.
//   7. sums     in a fixed order: dA, d dt_bias, dD over batch, chunks (and tiles, channels);
//               dB, dC over the head tiles when a group's heads span several blocks.
// Deterministic: every value has one writer, every sum a fixed partition and order; no atomics.
// Memory: per-chunk states and per-step scalars only (no (batch, L, heads, headdim, N) tensor).
#include <algorithm>

#include "cuda/ssd.h"
#include "cuda/ssd_bwd_common.cuh"

namespace scanline::cuda {
namespace ssd_grad {
namespace {

constexpr int kSmallThreads = 128;        // 4 warps: the cumsum and final kernels' warps per block
constexpr int kReverseThreads = 256;
constexpr int64_t kSliceElems = 4 * kReverseThreads;  // P·N values of a reverse block
constexpr int kSumThreads = 256;
// Blocks the tile kernels (passes 4 and 5) aim for; a group's heads are split into tiles until
// there are about this many (more tiles: more partial dB/dC sums to add afterwards).
constexpr int64_t kTargetBlocks = 1024;

int64_t ceil_div(int64_t a, int64_t b) { return (a + b - 1) / b; }

// ---- 1. Δ and the cumulative log2-decay ---------------------------------------------------------

// Lane k of a warp owns steps [k·items, (k + 1)·items) of the chunk (items = Q / 32 <= 8).
template <typename T>
__global__ void __launch_bounds__(kSmallThreads) ssd_bwd_cumsum_kernel(const CumsumParams<T> p) {
  const Dims& d = p.d;
  const int64_t r = int64_t(blockIdx.x) * (kSmallThreads / 32) + (threadIdx.x >> 5);
  if (r >= d.chunk_rows()) return;  // whole warps
  const int lane = int(threadIdx.x & 31), items = int(d.Q / 32);
  const int64_t h = r % d.heads, c = r / d.heads % d.n_chunks, b = r / (d.heads * d.n_chunks);
  const float A = p.A[h], bias = p.bias ? p.bias[h] : 0.0f;
  float delta[8], cum[8], run = 0.0f;
#pragma unroll
  for (int k = 0; k < 8; ++k) {
    delta[k] = cum[k] = 0.0f;
    if (k < items) {
      const int64_t t = c * d.Q + lane * items + k;
      if (t < d.L) {
        const float raw = load_math(p.dt + b * p.sdb + t * p.sdt + h * p.sdh) + bias;
        delta[k] = p.softplus ? softplus_f(raw) : raw;
      }
      run += delta[k] * A;
      cum[k] = run;
    }
  }
  float incl = run;
#pragma unroll
  for (int off = 1; off < 32; off <<= 1) {
    const float up = __shfl_up_sync(0xffffffffu, incl, off);
    if (lane >= off) incl += up;
  }
  float before = __shfl_up_sync(0xffffffffu, incl, 1);
  if (lane == 0) before = 0.0f;
#pragma unroll
  for (int k = 0; k < 8; ++k)
    if (k < items) {
      const int64_t at = r * d.Q + lane * items + k;
      p.delta[at] = delta[k];
      p.a2[at] = (before + cum[k]) * kLog2e;
    }
}

// ---- 3. the state gradient across chunks ------------------------------------------------------

__device__ __forceinline__ float4 axpy4(float a, float4 x, float4 y) {
  return make_float4(a * x.x + y.x, a * x.y + y.y, a * x.z + y.z, a * x.w + y.w);
}

// 4 consecutive values of T as floats, and back.
__device__ __forceinline__ float4 load4(const float* p) { return *reinterpret_cast<const float4*>(p); }
__device__ __forceinline__ float4 load4(const bf16* p) {
  const uint2 raw = *reinterpret_cast<const uint2*>(p);
  const float2 a = __bfloat1622float2(*reinterpret_cast<const __nv_bfloat162*>(&raw.x));
  const float2 b = __bfloat1622float2(*reinterpret_cast<const __nv_bfloat162*>(&raw.y));
  return make_float4(a.x, a.y, b.x, b.y);
}
__device__ __forceinline__ void store4(float* p, float4 v) { *reinterpret_cast<float4*>(p) = v; }
__device__ __forceinline__ void store4(bf16* p, float4 v) {
  const __nv_bfloat162 a = __floats2bfloat162_rn(v.x, v.y), b = __floats2bfloat162_rn(v.z, v.w);
  uint2 raw;
  raw.x = *reinterpret_cast<const uint32_t*>(&a);
  raw.y = *reinterpret_cast<const uint32_t*>(&b);
  *reinterpret_cast<uint2*>(p) = raw;
}

// A thread owns 4 consecutive values of P·N; the loads of chunk c − 1 are issued before chunk c's
// block reduction so that they overlap it. The recurrence and the dot run in f32 on the unrounded
// Dout; only what is stored is rounded to T.
template <typename T>
__global__ void __launch_bounds__(kReverseThreads) ssd_bwd_reverse_kernel(const ReverseParams<T> p) {
  __shared__ float scratch[32];
  const Dims& d = p.d;
  const int64_t slice = int64_t(blockIdx.x) % p.slices, bh = int64_t(blockIdx.x) / p.slices;
  const int64_t b = bh / d.heads, h = bh % d.heads;
  const int64_t k = slice * kSliceElems + 4 * int64_t(threadIdx.x);
  const bool active = k < p.PN;
  const float4 zero4 = make_float4(0.0f, 0.0f, 0.0f, 0.0f);
  auto slot = [&](int64_t c) { return ((b * d.n_chunks + c) * d.heads + h) * p.PN + k; };
  float4 dv = active && p.grad_final ? load4(p.grad_final + bh * p.PN + k) : zero4;
  float4 G = zero4, Hc = zero4;
  if (active) {
    G = load4(p.dout + slot(d.n_chunks - 1));
    Hc = load4(p.states + slot(d.n_chunks - 1));
  }
  for (int64_t c = d.n_chunks - 1; c >= 0; --c) {
    float4 G_next = zero4, H_next = zero4;
    if (active && c > 0) {
      G_next = load4(p.dout + slot(c - 1));
      H_next = load4(p.states + slot(c - 1));
    }
    const int64_t r = (b * d.n_chunks + c) * d.heads + h;
    const float decay = exp2_approx(p.a2[r * d.Q + d.Q - 1]);
    if (active) store4(p.dout + slot(c), dv);
    float dot = ((Hc.x * dv.x + Hc.y * dv.y) + Hc.z * dv.z) + Hc.w * dv.w;
    dot = block_sum(dot, scratch);
    if (threadIdx.x == 0) p.q_part[r * p.slices + slice] = decay * dot;
    dv = axpy4(decay, dv, G);
    G = G_next;
    Hc = H_next;
  }
  if (active && p.dinit) store4(p.dinit + bh * p.PN + k, dv);
}

// ---- 6. d loss / d a, its suffix sums, dΔ, d dt ------------------------------------------------

template <typename T>
__global__ void __launch_bounds__(kSmallThreads) ssd_bwd_final_kernel(const FinalParams<T> p) {
  const Dims& d = p.d;
  const int64_t r = int64_t(blockIdx.x) * (kSmallThreads / 32) + (threadIdx.x >> 5);
  if (r >= d.chunk_rows()) return;  // whole warps
  const int lane = int(threadIdx.x & 31), items = int(d.Q / 32);
  const int64_t h = r % d.heads, c = r / d.heads % d.n_chunks, b = r / (d.heads * d.n_chunks);
  const int len = int(min(d.Q, d.L - c * d.Q));
  const float* rowpart = p.rowpart + r * d.tiles * d.Q;
  float g[8], w_sum = 0.0f;
#pragma unroll
  for (int k = 0; k < 8; ++k) {
    g[k] = 0.0f;
    const int i = lane * items + k;
    if (k < items && i < len) {
      float rows = 0.0f;
      for (int J = 0; J <= i / kRows; ++J) rows += rowpart[J * d.Q + i];
      const int64_t at = r * d.Q + i;
      g[k] = ((rows - p.tcol[at]) + p.ginc[at]) - p.w[at];
      w_sum += p.w[at];
    }
  }
  w_sum = warp_sum(w_sum);
  float q_sum = 0.0f;
  for (int64_t s = 0; s < p.slices; ++s) q_sum += p.q_part[r * p.slices + s];
#pragma unroll
  for (int k = 0; k < 8; ++k)
    if (k < items && lane * items + k == len - 1) g[k] += w_sum + q_sum;  // a_last's extra terms
  // S_k = Σ_{k' >= k} g_k': within the lane, then the lanes after it.
  float suffix[8], run = 0.0f;
#pragma unroll
  for (int k = 7; k >= 0; --k) {
    run += g[k];
    suffix[k] = run;
  }
  float incl = run;
#pragma unroll
  for (int off = 1; off < 32; off <<= 1) {
    const float down = __shfl_down_sync(0xffffffffu, incl, off);
    if (lane + off < 32) incl += down;
  }
  float after = __shfl_down_sync(0xffffffffu, incl, 1);
  if (lane == 31) after = 0.0f;
  const float A = p.A[h], bias = p.bias ? p.bias[h] : 0.0f;
  float dA = 0.0f, dbias = 0.0f;
#pragma unroll
  for (int k = 0; k < 8; ++k) {
    const int i = lane * items + k;
    if (k < items && i < len) {
      const int64_t at = r * d.Q + i, t = c * d.Q + i;
      const float S = suffix[k] + after;
      const float ddelta = p.ddir[at] + A * S;
      float draw = ddelta;
      if (p.softplus) draw *= sigmoid_f(load_math(p.dt + b * p.sdb + t * p.sdt + h * p.sdh) + bias);
      if (p.ddt) p.ddt[(b * d.L + t) * d.heads + h] = from_math<T>(draw);
      dA += p.delta[at] * S;
      dbias += draw;
    }
  }
  dA = warp_sum(dA);
  dbias = warp_sum(dbias);
  if (lane == 0) {
    if (p.dA_part) p.dA_part[r] = dA;
    if (p.dbias_part) p.dbias_part[r] = dbias;
  }
}

// ---- 7. fixed-order sums ----------------------------------------------------------------------

// out[h·W + w] = Σ_o Σ_m part[((o·H + h)·M + m)·W + w], or (collapse) out[h] = that summed over w too.
// One block an output: the threads take the terms at fixed strides, then a fixed-order block sum,
// so the result depends on the shape only. (A thread an output summed up to 16K terms serially:
// 0.9 ms for dD at issue 6's first shape.)
__global__ void __launch_bounds__(kSumThreads) ssd_bwd_sum_kernel(const float* __restrict__ part,
                                                                  float* __restrict__ out, int64_t outer, int64_t H,
                                                                  int64_t M, int64_t W, bool collapse) {
  __shared__ float scratch[32];
  const int64_t i = blockIdx.x;
  const int64_t h = collapse ? i : i / W, w0 = collapse ? 0 : i % W, wn = collapse ? W : 1;
  const int64_t count = outer * M * wn;
  float total = 0.0f;
  for (int64_t k = threadIdx.x; k < count; k += kSumThreads) {
    const int64_t w = w0 + k % wn, om = k / wn;
    total += part[((om / M * H + h) * M + om % M) * W + w];
  }
  total = block_sum(total, scratch);
  if (threadIdx.x == 0) out[i] = total;
}

// dB or dC (batch, L, groups, N) = Σ over the head tiles, in order, of the partials
// (batch, groups, head_tiles, n_chunks·Q, N); four values a thread.
template <typename T>
__global__ void ssd_bwd_sum_heads_kernel(const float* __restrict__ part, T* __restrict__ out, int64_t batch, int64_t L,
                                         int64_t groups, int64_t head_tiles, int64_t padded_L, int64_t N) {
  const int64_t n4 = batch * L * groups * N / 4;
  for (int64_t i = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; i < n4; i += int64_t(gridDim.x) * blockDim.x) {
    const int64_t e = 4 * i, n = e % N, rest = e / N, grp = rest % groups, t = rest / groups % L, b = rest / (groups * L);
    float4 s = make_float4(0.0f, 0.0f, 0.0f, 0.0f);
    for (int64_t ht = 0; ht < head_tiles; ++ht) {
      const float4 v = *reinterpret_cast<const float4*>(part + (((b * groups + grp) * head_tiles + ht) * padded_L + t) * N + n);
      s.x += v.x, s.y += v.y, s.z += v.z, s.w += v.w;
    }
    out[e] = from_math<T>(s.x);
    out[e + 1] = from_math<T>(s.y);
    out[e + 2] = from_math<T>(s.z);
    out[e + 3] = from_math<T>(s.w);
  }
}

void sum_partials(const Tensor& part, const Tensor& out, int64_t outer, int64_t H, int64_t M, int64_t W, bool collapse,
                  cudaStream_t stream) {
  const int64_t n = collapse ? H : H * W;
  if (n == 0) return;
  ssd_bwd_sum_kernel<<<unsigned(n), kSumThreads, 0, stream>>>(data_at<const float>(part),
                                                                             data_at<float>(out), outer, H, M, W, collapse);
  CUDA_CHECK_LAUNCH("ssd backward sum");
}

}  // namespace

template <typename T>
void launch_cumsum(const CumsumParams<T>& p, cudaStream_t stream) {
  const int64_t blocks = ceil_div(p.d.chunk_rows(), kSmallThreads / 32);
  ssd_bwd_cumsum_kernel<T><<<unsigned(blocks), kSmallThreads, 0, stream>>>(p);
  CUDA_CHECK_LAUNCH("ssd backward cumsum");
}

template <typename T>
void launch_reverse(const ReverseParams<T>& p, cudaStream_t stream) {
  const int64_t blocks = p.d.batch * p.d.heads * p.slices;
  ssd_bwd_reverse_kernel<T><<<unsigned(blocks), kReverseThreads, 0, stream>>>(p);
  CUDA_CHECK_LAUNCH("ssd backward reverse");
}

template <typename T>
void launch_final(const FinalParams<T>& p, cudaStream_t stream) {
  const int64_t blocks = ceil_div(p.d.chunk_rows(), kSmallThreads / 32);
  ssd_bwd_final_kernel<T><<<unsigned(blocks), kSmallThreads, 0, stream>>>(p);
  CUDA_CHECK_LAUNCH("ssd backward final");
}

namespace {

// A token tensor as Rows (views with a unit innermost stride are read in place, others copied).
template <typename T>
Rows<T> rows_of(const Tensor& t, Tensor& keep) {
  keep = t.strides().back() == 1 ? t : as_contiguous(t);
  const Shape& s = keep.strides();
  Rows<T> r;
  r.ptr = data_at<const T>(keep);
  r.sb = s[0];
  r.st = s[1];
  r.sk = s[2];
  const int64_t bytes = int64_t(sizeof(T));
  r.vec = aligned16(r.ptr) && (r.sb * bytes) % 16 == 0 && (r.st * bytes) % 16 == 0 && (r.sk * bytes) % 16 == 0;
  return r;
}

// A dense f32 tensor whose data starts 16-byte aligned (copied when it does not).
Tensor dense_aligned(const Tensor& t) {
  Tensor out = as_contiguous(t);
  if (!aligned16(data_at<const float>(out))) out = contiguous_copy(out, DType::f32, out.device());
  return out;
}

template <typename T>
T* ptr_or_null(const Tensor& t) { return t.defined() ? data_at<T>(t) : nullptr; }

bool supported(int64_t P, int64_t N, int64_t Q) {
  return (P == 32 || P == 64 || P == 128) && (N == 16 || N == 32 || N == 64 || N == 128) &&
         (Q == 64 || Q == 128 || Q == 256);
}

}  // namespace
}  // namespace ssd_grad

SsdBackwardResult ssd_bwd(const Tensor& x, const Tensor& dt, const Tensor& A, const Tensor& B, const Tensor& C,
                          const Tensor& D, const Tensor& z, const Tensor& dt_bias, bool dt_softplus,
                          int64_t chunk_size, const Tensor& initial_state, const Tensor& chunk_states,
                          const Tensor& y_ungated, const Tensor& grad_y, const Tensor& grad_final_state,
                          const std::array<bool, 9>& needs) {
  using namespace ssd_grad;
  constexpr const char* op = "ssd backward";
  check_cuda_tensor(op, x, "x");
  DeviceGuard guard(x.device().index);
  const int64_t batch = x.shape()[0], L = x.shape()[1], H = x.shape()[2], P = x.shape()[3];
  const int64_t G = B.shape()[2], N = B.shape()[3], Q = chunk_size;
  SCANLINE_CHECK(x.dtype() == DType::f32 || x.dtype() == DType::bf16, op,
                 ": the CUDA kernels take f32 or bf16 inputs but x is ", describe(x));
  SCANLINE_CHECK(supported(P, N, Q), op, ": the CUDA kernels take headdim 32, 64 or 128, N 16, 32, 64 or 128 and ",
                 "chunk_size 64, 128 or 256 but found headdim ", P, ", N ", N, ", chunk_size ", Q);
  const int64_t n_chunks = ceil_div(L, Q);
  const Shape states_shape{batch, n_chunks, H, P, N}, state_shape{batch, H, P, N};
  SCANLINE_CHECK(chunk_states.defined() && chunk_states.shape() == states_shape && chunk_states.dtype() == DType::f32,
                 op, ": expected the forward's chunk_states of shape ", states_shape, " (f32) but found ",
                 describe(chunk_states));
  SCANLINE_CHECK(grad_y.defined() && grad_y.shape() == x.shape() && grad_y.dtype() == x.dtype(), op,
                 ": expected grad_y like x ", describe(x), " but found ", describe(grad_y));
  if (grad_final_state.defined())
    SCANLINE_CHECK(grad_final_state.shape() == state_shape && grad_final_state.dtype() == DType::f32, op,
                   ": expected grad_final_state of shape ", state_shape, " (f32) but found ", describe(grad_final_state));
  const bool need_dz = needs[6] && z.defined();
  if (need_dz)
    SCANLINE_CHECK(y_ungated.defined() && y_ungated.shape() == x.shape() && y_ungated.dtype() == x.dtype(), op,
                   ": expected the forward's y_ungated like x ", describe(x), " but found ", describe(y_ungated));

  const TensorOptions input_opts = x.options(), param_opts = A.options();
  const TensorOptions f32{.dtype = DType::f32, .device = x.device()};
  auto wanted = [&](int i, const Tensor& input, const Shape& shape, TensorOptions opts) {
    return needs[size_t(i)] && input.defined() ? empty(shape, opts) : Tensor();
  };
  SsdBackwardResult r;
  r.x = wanted(0, x, x.shape(), input_opts);
  r.dt = wanted(1, dt, dt.shape(), input_opts);
  r.A = wanted(2, A, A.shape(), param_opts);
  r.B = wanted(3, B, B.shape(), input_opts);
  r.C = wanted(4, C, C.shape(), input_opts);
  r.D = wanted(5, D, D.defined() ? D.shape() : Shape{}, param_opts);
  r.z = wanted(6, z, x.shape(), input_opts);
  r.dt_bias = wanted(7, dt_bias, {H}, param_opts);
  r.initial_state = wanted(8, initial_state, state_shape, param_opts);
  if (batch == 0 || H == 0) {  // no terms: the summed gradients are zeros, the rest is empty
    for (const Tensor* t : {&r.A, &r.D, &r.dt_bias})
      if (t->defined()) fill_(*t, 0.0);
    return r;
  }
  bool any = false;
  for (const Tensor* t : {&r.x, &r.dt, &r.A, &r.B, &r.C, &r.D, &r.z, &r.dt_bias, &r.initial_state}) any |= t->defined();
  if (!any) return r;
  const bool need_g = r.dt.defined() || r.A.defined() || r.dt_bias.defined();
  const bool run_dx = r.x.defined() || r.B.defined() || r.D.defined() || need_g;
  const bool run_dc = r.C.defined() || need_g;

  Dims dims;
  dims.batch = batch;
  dims.L = L;
  dims.heads = H;
  dims.groups = G;
  dims.per_group = H / G;
  dims.Q = Q;
  dims.n_chunks = n_chunks;
  dims.tiles = Q / kRows;
  {
    const int64_t base = batch * n_chunks * G * dims.tiles;
    dims.head_tiles = std::clamp<int64_t>(ceil_div(kTargetBlocks, base), 1, dims.per_group);
    dims.heads_per_tile = ceil_div(dims.per_group, dims.head_tiles);
    dims.head_tiles = ceil_div(dims.per_group, dims.heads_per_tile);
  }
  const int64_t rows = dims.chunk_rows(), PN = P * N, slices = ceil_div(PN, kSliceElems);
  SCANLINE_CHECK(rows <= int64_t(0x7fffffff) && batch * H * slices <= int64_t(0x7fffffff), op, ": ", rows,
                 " (batch, chunk, head) rows exceed the CUDA grid limit");

  // Parameters and states: dense f32, 16-byte aligned where read as vectors.
  const Tensor A_d = as_contiguous(A);
  const Tensor D_d = D.defined() ? as_contiguous(D) : Tensor();
  const Tensor bias_d = dt_bias.defined() ? as_contiguous(dt_bias) : Tensor();
  const Tensor states = dense_aligned(chunk_states);
  const Tensor gf = grad_final_state.defined() ? dense_aligned(grad_final_state) : Tensor();

  // Workspaces.
  const Tensor delta = empty({rows, Q}, f32), a2 = empty({rows, Q}, f32);
  const Tensor dout = empty({rows, P, N}, input_opts), q_part = empty({rows, slices}, f32);  // see ReverseParams
  // The gate's output dy in f32 (see GateParams in cuda/ssd_bwd_common.cuh).
  const Tensor dy_gated = z.defined() ? empty(x.shape(), f32) : Tensor();
  const Tensor ddir = need_g ? empty({rows, Q}, f32) : Tensor(), w = need_g ? empty({rows, Q}, f32) : Tensor();
  const Tensor tcol = need_g ? empty({rows, Q}, f32) : Tensor();
  const Tensor ginc = need_g ? empty({rows, Q}, f32) : Tensor();
  const Tensor rowpart = need_g ? empty({rows, dims.tiles, Q}, f32) : Tensor();
  const Tensor dD_part = r.D.defined() ? empty({rows, dims.tiles, P}, f32) : Tensor();
  const Tensor dA_part = r.A.defined() ? empty({rows}, f32) : Tensor();
  const Tensor dbias_part = r.dt_bias.defined() ? empty({rows}, f32) : Tensor();
  const Shape head_part_shape{batch, G, dims.head_tiles, n_chunks * Q, N};
  const Tensor dB_part = r.B.defined() && dims.head_tiles > 1 ? empty(head_part_shape, f32) : Tensor();
  const Tensor dC_part = r.C.defined() && dims.head_tiles > 1 ? empty(head_part_shape, f32) : Tensor();
  cudaStream_t stream = current_stream();

  auto run = [&]<typename T, typename TY>() {
    Tensor keep_x, keep_z, keep_B, keep_C, keep_gy, keep_yu, keep_dy;
    const Rows<T> xr = rows_of<T>(x, keep_x), Br = rows_of<T>(B, keep_B), Cr = rows_of<T>(C, keep_C);
    const Rows<T> gyr = rows_of<T>(grad_y, keep_gy);
    const Rows<T> zr = z.defined() ? rows_of<T>(z, keep_z) : Rows<T>{};
    const Rows<T> yur = need_dz ? rows_of<T>(y_ungated, keep_yu) : Rows<T>{};
    Rows<TY> dyr;  // d loss / d (ungated y): the gate's output, or grad_y itself
    if constexpr (std::is_same_v<T, TY>) dyr = z.defined() ? rows_of<TY>(dy_gated, keep_dy) : gyr;
    else dyr = rows_of<TY>(dy_gated, keep_dy);
    const Shape dts = dt.strides();

    CumsumParams<T> cp{data_at<const T>(dt), dts[0], dts[1], dts[2], data_at<const float>(A_d),
                       ptr_or_null<const float>(bias_d), dt_softplus, data_at<float>(delta), data_at<float>(a2), dims};
    launch_cumsum(cp, stream);

    GateParams<T, TY> gp{gyr, zr, yur, Cr, ptr_or_null<TY>(dy_gated), need_dz ? ptr_or_null<T>(r.z) : nullptr,
                     data_at<const float>(a2), data_at<T>(dout), dims};
    launch_gate(gp, P, N, stream);

    ReverseParams<T> rp{data_at<T>(dout), data_at<const float>(states), ptr_or_null<const float>(gf),
                     data_at<const float>(a2), data_at<float>(q_part), ptr_or_null<float>(r.initial_state), PN, slices,
                     dims};
    launch_reverse(rp, stream);

    if (run_dx) {
      DxParams<T, TY> xp;
      xp.x = xr;
      xp.dy = dyr;
      xp.B = Br;
      xp.C = Cr;
      xp.delta = data_at<const float>(delta);
      xp.a2 = data_at<const float>(a2);
      xp.dout = data_at<const T>(dout);
      xp.D = ptr_or_null<const float>(D_d);
      xp.D_per_channel = D.defined() && D.dim() == 2;
      xp.dout_vec = true;  // a fresh workspace
      xp.dx = ptr_or_null<T>(r.x);
      xp.ddir = ptr_or_null<float>(ddir);
      xp.w = ptr_or_null<float>(w);
      xp.tcol = ptr_or_null<float>(tcol);
      xp.rowpart = ptr_or_null<float>(rowpart);
      xp.dD_part = ptr_or_null<float>(dD_part);
      xp.dB = dims.head_tiles == 1 ? ptr_or_null<T>(r.B) : nullptr;
      xp.dB_part = ptr_or_null<float>(dB_part);
      xp.need_B = r.B.defined();
      xp.d = dims;
      launch_dx(xp, P, N, stream);
    }
    if (run_dc) {
      DcParams<T, TY> cp5;
      cp5.x = xr;
      cp5.dy = dyr;
      cp5.B = Br;
      cp5.C = Cr;
      cp5.delta = data_at<const float>(delta);
      cp5.a2 = data_at<const float>(a2);
      cp5.states = data_at<const float>(states);
      cp5.states_vec = true;  // dense_aligned
      cp5.ginc = ptr_or_null<float>(ginc);
      cp5.dC = dims.head_tiles == 1 ? ptr_or_null<T>(r.C) : nullptr;
      cp5.dC_part = ptr_or_null<float>(dC_part);
      cp5.need_C = r.C.defined();
      cp5.d = dims;
      launch_dc(cp5, P, N, stream);
    }
    if (need_g) {
      FinalParams<T> fp{data_at<const T>(dt), dts[0], dts[1], dts[2], data_at<const float>(A_d),
                        ptr_or_null<const float>(bias_d), dt_softplus, data_at<const float>(delta),
                        data_at<const float>(ddir), data_at<const float>(w), data_at<const float>(tcol),
                        data_at<const float>(rowpart),
                        data_at<const float>(ginc), data_at<const float>(q_part), slices, ptr_or_null<T>(r.dt),
                        ptr_or_null<float>(dA_part), ptr_or_null<float>(dbias_part), dims};
      launch_final(fp, stream);
    }

    // 7. Fixed-order sums.
    const int64_t outer = batch * n_chunks;
    if (r.A.defined()) sum_partials(dA_part, r.A, outer, H, 1, 1, false, stream);
    if (r.dt_bias.defined()) sum_partials(dbias_part, r.dt_bias, outer, H, 1, 1, false, stream);
    if (r.D.defined()) sum_partials(dD_part, r.D, outer, H, dims.tiles, P, D.dim() == 1, stream);
    for (const auto& [part, out] : {std::pair{dB_part, r.B}, std::pair{dC_part, r.C}}) {
      if (!part.defined()) continue;
      const int64_t n4 = batch * L * G * N / 4;
      ssd_bwd_sum_heads_kernel<T><<<blocks_for(n4, kSumThreads), kSumThreads, 0, stream>>>(
          data_at<const float>(part), data_at<T>(out), batch, L, G, dims.head_tiles, n_chunks * Q, N);
      CUDA_CHECK_LAUNCH("ssd backward sum over heads");
    }
  };
  if (x.dtype() == DType::f32) run.template operator()<float, float>();
  else if (z.defined()) run.template operator()<bf16, float>();
  else run.template operator()<bf16, bf16>();
  return r;
}

}  // namespace scanline::cuda
