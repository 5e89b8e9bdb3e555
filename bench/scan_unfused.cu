// The unfused selective scan (see bench/scan_unfused.h). Two kinds of kernels:
//  - tile kernels: one block per (slice row, tile of `tile` steps). The (b, d, t, n) tensors of a
//    tile are tile·N contiguous floats, read and written in that order; B and C, laid out
//    (n, t), are staged through shared memory as [t][N + 1] so both sides stay coalesced.
//  - scan kernels: one block per slice row, time in spans of J·kSteps steps. Thread (j, n) owns
//    kSteps consecutive steps of state n; it composes its steps' affine maps, the block combines
//    the J parts through shared memory, and each thread re-walks its steps from its prefix. A
//    warp's loads at one step cover whole runs of N consecutive floats.
// Math as the fused kernels: f32, exp2 of a pre-scaled exponent, softplus = max(x, 0) +
// log1p(exp(-|x|)), sigmoid = 1 / (1 + exp(-x)).
#include "bench/scan_unfused.h"

#include <algorithm>
#include <cmath>

#include "core/cuda/device_utils.cuh"

namespace scanline::bench {
namespace {

using cuda::from_math;
using cuda::load_math;

constexpr int kTileThreads = 256;
constexpr int kSteps = 8;          // consecutive steps a scan thread owns in a span
// Scan blocks: 128 threads (256 for N > 128), registers capped so that 8 blocks of 128 fit an SM.
constexpr int kScanMaxThreads = 256, kScanMinBlocks = 4;
constexpr int64_t kMaxStates = 256;
constexpr float kLog2e = 1.4426950408889634f;

__device__ __forceinline__ float softplus_f(float x) { return fmaxf(x, 0.0f) + log1pf(expf(-fabsf(x))); }
__device__ __forceinline__ float sigmoid_f(float x) { return 1.0f / (1.0f + expf(-x)); }

// Everything one slice's kernels read and write. Slice row r = b · channels + (d - d0).
template <typename T>
struct Slice {
  const T *u, *delta, *z, *B, *C, *dy;
  const float *A, *D, *bias, *h0, *dfinal;
  int64_t batch, d_inner, L, N, groups, per_group;
  bool softplus;
  int64_t d0, channels;  // this slice: channels [d0, d0 + channels)
  int64_t tile;          // steps a tile-kernel block covers
  int64_t parts;         // J: threads along time per state in the scan kernels
  // Workspace of the slice: (rows, L) and (rows, L, N) f32.
  float *dt, *decay, *dbu, *h, *ypre;  // dbu holds the state gradient in the backward
  float *gate, *draw, *dA_part;        // ds = d loss / d (ungated y), d loss / d (delta + bias), (rows, N)
  float *acc_B, *acc_C;                // (batch, groups, L, N), summed over the slices
  // Outputs (null where not produced).
  T *y, *du, *ddelta, *dz;
  float *final_state, *dA, *dD, *dbias, *dinit;

  __device__ int64_t channel(int64_t r) const { return d0 + r % channels; }
  __device__ int64_t row(int64_t r) const { return (r / channels) * d_inner + channel(r); }
  __device__ int64_t bc_row(int64_t r) const { return (r / channels) * groups + channel(r) / per_group; }
};

struct Tile {
  int64_t r, t0;
  int steps;
};

template <typename T>
__device__ __forceinline__ Tile tile_of(const Slice<T>& s) {
  const int64_t tiles = (s.L + s.tile - 1) / s.tile, block = int64_t(blockIdx.x);
  Tile ti;
  ti.r = block / tiles;
  ti.t0 = (block % tiles) * s.tile;
  ti.steps = int(min(s.tile, s.L - ti.t0));
  return ti;
}

// dst[t · (N + 1) + n] = src[n · L + t0 + t]: one (N, L) block of B or C, read along t. Index
// math within a tile in 32 bits (a tile holds at most ~2200 (t, n) pairs; 64-bit division would
// cost more than the memory traffic).
template <typename T>
__device__ __forceinline__ void stage_nt(const T* src, int64_t L, int64_t t0, int steps, int N, float* dst) {
  for (int k = threadIdx.x; k < N * steps; k += blockDim.x) {
    const int n = k / steps, t = k % steps;
    dst[t * (N + 1) + n] = load_math(src + n * L + t0 + t);
  }
}

// ---- forward ----------------------------------------------------------------------------------

// (a) Δ, exp(Δ·A) and Δ·B·u. Shared: B tile [tile][N + 1], Δ [tile], Δ·u [tile], A·log2(e) [N].
template <typename T>
__global__ void __launch_bounds__(kTileThreads) discretize_kernel(Slice<T> s) {
  extern __shared__ float smem[];
  const Tile ti = tile_of(s);
  const int N = int(s.N);
  const int64_t L = s.L, d = s.channel(ti.r), row = s.row(ti.r);
  float* Bs = smem;
  float* dts = Bs + s.tile * (N + 1);
  float* dtus = dts + s.tile;
  float* As = dtus + s.tile;
  for (int n = threadIdx.x; n < N; n += blockDim.x) As[n] = s.A[d * N + n] * kLog2e;
  const float bias = s.bias ? s.bias[d] : 0.0f;
  for (int t = threadIdx.x; t < ti.steps; t += blockDim.x) {
    const int64_t at = row * L + ti.t0 + t;
    const float raw = load_math(s.delta + at) + bias;
    const float dt = s.softplus ? softplus_f(raw) : raw;
    dts[t] = dt;
    dtus[t] = dt * load_math(s.u + at);
    s.dt[ti.r * L + ti.t0 + t] = dt;
  }
  stage_nt(s.B + s.bc_row(ti.r) * N * L, L, ti.t0, ti.steps, N, Bs);
  __syncthreads();
  const int64_t base = (ti.r * L + ti.t0) * N;
  for (int k = threadIdx.x; k < ti.steps * N; k += blockDim.x) {
    const int t = k / N, n = k % N;
    s.decay[base + k] = exp2f(dts[t] * As[n]);
    s.dbu[base + k] = dtus[t] * Bs[t * (N + 1) + n];
  }
}

// (b) h_t = exp(Δ·A)_t · h_{t-1} + (Δ·B·u)_t. Shared: carry [2][N], the parts' maps [2][J][N]
// twice (double-buffered so one __syncthreads a span suffices).
template <typename T>
__global__ void __launch_bounds__(kScanMaxThreads, kScanMinBlocks) forward_scan_kernel(Slice<T> s) {
  extern __shared__ float smem[];
  const int64_t N = s.N, L = s.L, J = s.parts, span = J * kSteps;
  float* carry = smem;
  float* pa = carry + 2 * N;
  float* pb = pa + 2 * J * N;
  const int64_t r = blockIdx.x, row = s.row(r);
  const int64_t j = threadIdx.x / N, n = threadIdx.x % N;
  const bool active = j < J;
  for (int64_t i = threadIdx.x; i < N; i += blockDim.x) carry[i] = s.h0 ? s.h0[row * N + i] : 0.0f;
  const float* decay = s.decay + r * L * N;
  const float* dbu = s.dbu + r * L * N;
  float* h = s.h + r * L * N;
  int64_t slot = 0;
  for (int64_t t_begin = 0; t_begin < L; t_begin += span, slot ^= 1) {
    const int64_t t_thread = t_begin + j * kSteps;
    float a[kSteps], b[kSteps];
    if (active) {
#pragma unroll
      for (int k = 0; k < kSteps; ++k) {
        const int64_t t = t_thread + k;
        a[k] = t < L ? decay[t * N + n] : 1.0f;  // past L: the identity map
        b[k] = t < L ? dbu[t * N + n] : 0.0f;
      }
      float ca = 1.0f, cb = 0.0f;
#pragma unroll
      for (int k = 0; k < kSteps; ++k) {
        cb = a[k] * cb + b[k];
        ca = a[k] * ca;
      }
      pa[(slot * J + j) * N + n] = ca;
      pb[(slot * J + j) * N + n] = cb;
    }
    __syncthreads();
    if (active) {
      float hv = carry[slot * N + n];
      for (int64_t q = 0; q < j; ++q) hv = pa[(slot * J + q) * N + n] * hv + pb[(slot * J + q) * N + n];
#pragma unroll
      for (int k = 0; k < kSteps; ++k) {
        hv = a[k] * hv + b[k];
        if (t_thread + k < L) h[(t_thread + k) * N + n] = hv;
      }
      if (j == J - 1) carry[(slot ^ 1) * N + n] = hv;
    }
  }
  __syncthreads();
  for (int64_t i = threadIdx.x; i < N; i += blockDim.x) s.final_state[row * N + i] = carry[slot * N + i];
}

// (c) y = (Σ_n C·h + D·u) · SiLU(z); keeps the ungated value for the backward. Shared: C tile,
// then C·h in place.
template <typename T>
__global__ void __launch_bounds__(kTileThreads) output_kernel(Slice<T> s) {
  extern __shared__ float smem[];
  const Tile ti = tile_of(s);
  const int N = int(s.N);
  const int64_t L = s.L, d = s.channel(ti.r), row = s.row(ti.r);
  float* Cs = smem;
  stage_nt(s.C + s.bc_row(ti.r) * N * L, L, ti.t0, ti.steps, N, Cs);
  __syncthreads();
  const int64_t base = (ti.r * L + ti.t0) * N;
#pragma unroll 4
  for (int k = threadIdx.x; k < ti.steps * N; k += blockDim.x) Cs[k / N * (N + 1) + k % N] *= s.h[base + k];
  __syncthreads();
  const float D = s.D ? s.D[d] : 0.0f;
  for (int t = threadIdx.x; t < ti.steps; t += blockDim.x) {
    float acc = 0.0f;
    for (int n = 0; n < N; ++n) acc += Cs[t * (N + 1) + n];
    const int64_t at = row * L + ti.t0 + t;
    const float pre = acc + D * load_math(s.u + at);
    if (s.ypre) s.ypre[ti.r * L + ti.t0 + t] = pre;
    float out = pre;
    if (s.z) {
      const float zv = load_math(s.z + at);
      out *= zv * sigmoid_f(zv);
    }
    s.y[at] = from_math<T>(out);
  }
}

// ---- backward ---------------------------------------------------------------------------------

// ds = dy · SiLU(z) and dz = dy · pre · SiLU'(z), per (b, d, t).
template <typename T>
__global__ void gate_kernel(Slice<T> s) {
  const int64_t L = s.L, total = s.batch * s.channels * L;
  for (int64_t i = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; i < total; i += int64_t(gridDim.x) * blockDim.x) {
    const int64_t at = s.row(i / L) * L + i % L;
    const float gy = load_math(s.dy + at);
    if (s.z) {
      const float zv = load_math(s.z + at), sig = sigmoid_f(zv);
      s.gate[i] = gy * zv * sig;
      s.dz[at] = from_math<T>(gy * s.ypre[i] * sig * (1.0f + zv * (1.0f - sig)));
    } else {
      s.gate[i] = gy;
    }
  }
}

// The state gradient backwards in time: g_t = x_{t+1} + ds_t·C_t, x_t = exp(Δ·A)_t · g_t, from
// x_L = d loss / d final_state; writes g (over Δ·B·u, no longer needed), x_0 (d initial_state)
// and dA's partial Σ_t g·exp(Δ·A)·h_{t-1}·Δ per (row, n). Shared: carry [2][N], maps [J][N] x2,
// C [N][span + 1], ds [span], Δ [span].
template <typename T>
__global__ void __launch_bounds__(kScanMaxThreads, kScanMinBlocks) reverse_scan_kernel(Slice<T> s) {
  extern __shared__ float smem[];
  const int64_t N = s.N, L = s.L, J = s.parts, span = J * kSteps;
  float* carry = smem;
  float* pa = carry + 2 * N;
  float* pb = pa + J * N;
  float* Cs = pb + J * N;
  float* gs = Cs + N * (span + 1);
  float* dts = gs + span;
  const int64_t r = blockIdx.x, row = s.row(r);
  const int64_t j = threadIdx.x / N, n = threadIdx.x % N;
  const bool active = j < J;
  for (int64_t i = threadIdx.x; i < N; i += blockDim.x) carry[i] = s.dfinal ? s.dfinal[row * N + i] : 0.0f;
  const float* decay = s.decay + r * L * N;
  const float* h = s.h + r * L * N;
  float* g_out = s.dbu + r * L * N;
  const T* C = s.C + s.bc_row(r) * N * L;
  const float h_init = active && s.h0 ? s.h0[row * N + n] : 0.0f;
  float dA_acc = 0.0f;
  int64_t slot = 0;
  for (int64_t t_begin = (L - 1) / span * span; t_begin >= 0; t_begin -= span, slot ^= 1) {
    const int steps = int(min(span, L - t_begin));
    for (int k = threadIdx.x; k < int(N) * steps; k += blockDim.x) {  // 32-bit: cheap division
      const int nn = k / steps, tt = k % steps;
      Cs[nn * (span + 1) + tt] = load_math(C + nn * L + t_begin + tt);
    }
    for (int tt = threadIdx.x; tt < steps; tt += blockDim.x) {
      gs[tt] = s.gate[r * L + t_begin + tt];
      dts[tt] = s.dt[r * L + t_begin + tt];
    }
    __syncthreads();
    // Every load of the span before the walk's stores (which the compiler may not move them past).
    float a[kSteps], c[kSteps], e[kSteps];  // exp(Δ·A), ds·C, exp(Δ·A)·h_{t-1}·Δ (dA's factor)
    if (active) {
#pragma unroll
      for (int k = 0; k < kSteps; ++k) {
        const int64_t tl = j * kSteps + k, t = t_begin + tl;
        const bool in = tl < steps;  // past L: the identity map
        a[k] = in ? decay[t * N + n] : 1.0f;
        c[k] = in ? gs[tl] * Cs[n * (span + 1) + tl] : 0.0f;
        const float h_prev = !in ? 0.0f : (t > 0 ? h[(t - 1) * N + n] : h_init);
        e[k] = a[k] * h_prev * (in ? dts[tl] : 0.0f);
      }
      float qa = 1.0f, qb = 0.0f;  // x_left = qa · x_right + qb over the thread's steps
#pragma unroll
      for (int k = kSteps - 1; k >= 0; --k) {
        qb = a[k] * (qb + c[k]);
        qa = a[k] * qa;
      }
      pa[j * N + n] = qa;
      pb[j * N + n] = qb;
    }
    __syncthreads();
    if (active) {
      float x = carry[slot * N + n];
      for (int64_t q = J - 1; q > j; --q) x = pa[q * N + n] * x + pb[q * N + n];
#pragma unroll
      for (int k = kSteps - 1; k >= 0; --k) {
        const int64_t tl = j * kSteps + k, t = t_begin + tl;
        if (tl < steps) {
          const float g = x + c[k];
          g_out[t * N + n] = g;
          dA_acc += g * e[k];
          x = a[k] * g;
        }
      }
      if (j == 0) carry[(slot ^ 1) * N + n] = x;
    }
  }
  __syncthreads();
  if (active) pa[j * N + n] = dA_acc;
  __syncthreads();
  for (int64_t i = threadIdx.x; i < N; i += blockDim.x) {
    float sum = 0.0f;
    for (int64_t q = 0; q < J; ++q) sum += pa[q * N + i];
    s.dA_part[r * N + i] = sum;
    if (s.dinit) s.dinit[row * N + i] = carry[slot * N + i];
  }
}

// du = ds·D + Δ·Σ_n g·B and d(delta + bias) = Σ_n (g·exp(Δ·A)·h_{t-1}·A + g·B·u) (· sigmoid
// for softplus), per (b, d, t). Shared: B tile, the two per-(t, n) terms, u [tile].
template <typename T>
__global__ void __launch_bounds__(kTileThreads) step_grads_kernel(Slice<T> s) {
  extern __shared__ float smem[];
  const Tile ti = tile_of(s);
  const int N = int(s.N), stride = N + 1;
  const int64_t L = s.L, d = s.channel(ti.r), row = s.row(ti.r);
  float* Bs = smem;
  float* r1 = Bs + s.tile * stride;
  float* r2 = r1 + s.tile * stride;
  float* us = r2 + s.tile * stride;
  stage_nt(s.B + s.bc_row(ti.r) * N * L, L, ti.t0, ti.steps, N, Bs);
  for (int t = threadIdx.x; t < ti.steps; t += blockDim.x) us[t] = load_math(s.u + row * L + ti.t0 + t);
  __syncthreads();
  const float* A = s.A + d * N;
  const int64_t base = (ti.r * L + ti.t0) * N;
#pragma unroll 4
  for (int k = threadIdx.x; k < ti.steps * N; k += blockDim.x) {
    const int t = k / N, n = k % N;
    const float g = s.dbu[base + k], a = s.decay[base + k];
    const float h_prev = ti.t0 + t > 0 ? s.h[base + k - N] : (s.h0 ? s.h0[row * N + n] : 0.0f);
    const float gB = g * Bs[t * stride + n];
    r1[t * stride + n] = g * a * h_prev * A[n] + gB * us[t];
    r2[t * stride + n] = gB;
  }
  __syncthreads();
  const float D = s.D ? s.D[d] : 0.0f, bias = s.bias ? s.bias[d] : 0.0f;
  for (int t = threadIdx.x; t < ti.steps; t += blockDim.x) {
    float ddt = 0.0f, gB = 0.0f;
    for (int n = 0; n < N; ++n) {
      ddt += r1[t * stride + n];
      gB += r2[t * stride + n];
    }
    const int64_t i = ti.r * L + ti.t0 + t, at = row * L + ti.t0 + t;
    const float du = s.gate[i] * D + s.dt[i] * gB;
    const float raw = load_math(s.delta + at) + bias;
    const float draw = s.softplus ? ddt * sigmoid_f(raw) : ddt;
    s.du[at] = from_math<T>(du);
    s.ddelta[at] = from_math<T>(draw);
    s.draw[i] = draw;
  }
}

// dB += Σ_d g·Δ·u and dC += Σ_d ds·h over the slice's channels of each group, into the
// (batch, groups, L, N) accumulators; one thread per (b, g, t, n), channels in order.
template <typename T>
__global__ void bc_grads_kernel(Slice<T> s) {
  const int64_t L = s.L, N = s.N, per = L * N, total = s.batch * s.groups * per;
  for (int64_t k = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; k < total; k += int64_t(gridDim.x) * blockDim.x) {
    const int64_t bg = k / per, tn = k % per, t = tn / N, b = bg / s.groups, g = bg % s.groups;
    const int64_t d_lo = max(g * s.per_group, s.d0), d_hi = min((g + 1) * s.per_group, s.d0 + s.channels);
    if (d_lo >= d_hi) continue;
    float dB = s.acc_B[k], dC = s.acc_C[k];
#pragma unroll 4
    for (int64_t d = d_lo; d < d_hi; ++d) {
      const int64_t r = b * s.channels + d - s.d0, i = r * L + t, e = r * per + tn;
      dB += s.dbu[e] * s.dt[i] * load_math(s.u + (b * s.d_inner + d) * L + t);
      dC += s.gate[i] * s.h[e];
    }
    s.acc_B[k] = dB;
    s.acc_C[k] = dC;
  }
}

// dA[d0 + c, n] = Σ_b dA_part[b, c, n].
__global__ void reduce_dA_kernel(const float* part, float* dA, int64_t batch, int64_t channels, int64_t N, int64_t d0) {
  for (int64_t k = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; k < channels * N; k += int64_t(gridDim.x) * blockDim.x) {
    float sum = 0.0f;
    for (int64_t b = 0; b < batch; ++b) sum += part[b * channels * N + k];
    dA[d0 * N + k] = sum;
  }
}

// dD = Σ_{b,t} ds·u and d delta_bias = Σ_{b,t} d(delta + bias); one block per channel.
template <typename T>
__global__ void __launch_bounds__(kTileThreads) reduce_dD_kernel(Slice<T> s) {
  __shared__ float scratch[32];
  const int64_t c = blockIdx.x, d = s.d0 + c, L = s.L;
  float sd = 0.0f, sb = 0.0f;
  for (int64_t b = 0; b < s.batch; ++b)
    for (int64_t t = threadIdx.x; t < L; t += blockDim.x) {
      const int64_t i = (b * s.channels + c) * L + t;
      sd += s.gate[i] * load_math(s.u + (b * s.d_inner + d) * L + t);
      sb += s.draw[i];
    }
  sd = cuda::block_sum(sd, scratch);
  sb = cuda::block_sum(sb, scratch);
  if (threadIdx.x == 0) {
    if (s.dD) s.dD[d] = sd;
    if (s.dbias) s.dbias[d] = sb;
  }
}

// out (bg, N, L) = acc (bg, L, N) through 32 x 32 shared tiles; block (32, 8).
template <typename T>
__global__ void transpose_kernel(const float* acc, T* out, int64_t L, int64_t N) {
  __shared__ float tile[32][33];
  const int64_t tiles_t = (L + 31) / 32, tiles_n = (N + 31) / 32;
  int64_t block = blockIdx.x;
  const int64_t t_base = block % tiles_t * 32;
  block /= tiles_t;
  const int64_t n_base = block % tiles_n * 32, bg = block / tiles_n;
  for (int y = threadIdx.y; y < 32; y += blockDim.y) {
    const int64_t t = t_base + y, n = n_base + threadIdx.x;
    if (t < L && n < N) tile[y][threadIdx.x] = acc[(bg * L + t) * N + n];
  }
  __syncthreads();
  for (int y = threadIdx.y; y < 32; y += blockDim.y) {
    const int64_t n = n_base + y, t = t_base + threadIdx.x;
    if (n < N && t < L) out[(bg * N + n) * L + t] = from_math<T>(tile[threadIdx.x][y]);
  }
}

// ---- host -------------------------------------------------------------------------------------

Tensor dense(const Tensor& t) { return t.defined() ? as_contiguous(t) : Tensor(); }
template <typename P>
P* ptr(const Tensor& t) { return t.defined() ? cuda::data_at<P>(t) : nullptr; }

unsigned grid_of(int64_t blocks, const char* what) {
  SCANLINE_CHECK(blocks >= 1 && blocks <= int64_t(0x7fffffff), "unfused_selective_scan: ", what, " needs ", blocks,
                 " blocks, beyond the grid limit");
  return unsigned(blocks);
}

struct Tensors {
  Tensor u, delta, A, B, C, D, z, bias, h0, dy, dfinal;
};

template <typename T>
void run(const Tensors& in, bool softplus, UnfusedScanResult& res, const Tensor& acc_B, const Tensor& acc_C,
         int64_t slice_channels) {
  const bool backward = in.dy.defined();
  const Device device = in.u.device();
  const TensorOptions f32{.dtype = DType::f32, .device = device};
  cudaStream_t stream = cuda::current_stream();
  Slice<T> base{};
  base.u = ptr<const T>(in.u);
  base.delta = ptr<const T>(in.delta);
  base.z = ptr<const T>(in.z);
  base.B = ptr<const T>(in.B);
  base.C = ptr<const T>(in.C);
  base.dy = ptr<const T>(in.dy);
  base.A = ptr<const float>(in.A);
  base.D = ptr<const float>(in.D);
  base.bias = ptr<const float>(in.bias);
  base.h0 = ptr<const float>(in.h0);
  base.dfinal = ptr<const float>(in.dfinal);
  base.batch = in.u.shape()[0];
  base.d_inner = in.u.shape()[1];
  base.L = in.u.shape()[2];
  base.N = in.A.shape()[1];
  base.groups = in.B.shape()[1];
  base.per_group = base.d_inner / base.groups;
  base.softplus = softplus;
  const int64_t L = base.L, N = base.N;
  base.tile = std::clamp<int64_t>(2048 / N, 8, 128);
  const int scan_threads = N <= 128 ? 128 : 256;
  base.parts = std::min<int64_t>(32, scan_threads / N);
  const int64_t span = base.parts * kSteps;
  base.y = ptr<T>(res.y);
  base.final_state = ptr<float>(res.final_state);
  if (backward) {
    base.du = ptr<T>(res.u);
    base.ddelta = ptr<T>(res.delta);
    base.dz = ptr<T>(res.z);
    base.dA = ptr<float>(res.A);
    base.dD = ptr<float>(res.D);
    base.dbias = ptr<float>(res.delta_bias);
    base.dinit = ptr<float>(res.initial_state);
    base.acc_B = ptr<float>(acc_B);
    base.acc_C = ptr<float>(acc_C);
  }
  const size_t tile_smem = size_t(base.tile * (N + 1)) * sizeof(float);
  const size_t scan_smem = size_t(2 * N + 4 * base.parts * N) * sizeof(float);
  const size_t reverse_smem = size_t(2 * N + 2 * base.parts * N + N * (span + 1) + 2 * span) * sizeof(float);

  for (int64_t d0 = 0; d0 < base.d_inner; d0 += slice_channels) {
    Slice<T> s = base;
    s.d0 = d0;
    s.channels = std::min(slice_channels, base.d_inner - d0);
    const int64_t rows = base.batch * s.channels;
    Tensor dt = empty({rows * L}, f32), decay = empty({rows * L * N}, f32), dbu = empty({rows * L * N}, f32),
           h = empty({rows * L * N}, f32), ypre = backward ? empty({rows * L}, f32) : Tensor();
    s.dt = ptr<float>(dt);
    s.decay = ptr<float>(decay);
    s.dbu = ptr<float>(dbu);
    s.h = ptr<float>(h);
    s.ypre = ptr<float>(ypre);
    const unsigned tile_blocks = grid_of(rows * ((L + base.tile - 1) / base.tile), "a tile kernel");
    discretize_kernel<T><<<tile_blocks, kTileThreads, tile_smem + size_t(2 * base.tile + N) * sizeof(float), stream>>>(s);
    CUDA_CHECK_LAUNCH("unfused discretize_kernel");
    forward_scan_kernel<T><<<grid_of(rows, "the scan"), scan_threads, scan_smem, stream>>>(s);
    CUDA_CHECK_LAUNCH("unfused forward_scan_kernel");
    output_kernel<T><<<tile_blocks, kTileThreads, tile_smem, stream>>>(s);
    CUDA_CHECK_LAUNCH("unfused output_kernel");
    if (!backward) continue;

    Tensor gate = empty({rows * L}, f32), draw = empty({rows * L}, f32), dA_part = empty({rows * N}, f32);
    s.gate = ptr<float>(gate);
    s.draw = ptr<float>(draw);
    s.dA_part = ptr<float>(dA_part);
    gate_kernel<T><<<cuda::blocks_for(rows * L, kTileThreads), kTileThreads, 0, stream>>>(s);
    CUDA_CHECK_LAUNCH("unfused gate_kernel");
    reverse_scan_kernel<T><<<grid_of(rows, "the reverse scan"), scan_threads, reverse_smem, stream>>>(s);
    CUDA_CHECK_LAUNCH("unfused reverse_scan_kernel");
    step_grads_kernel<T><<<tile_blocks, kTileThreads, 3 * tile_smem + base.tile * sizeof(float), stream>>>(s);
    CUDA_CHECK_LAUNCH("unfused step_grads_kernel");
    bc_grads_kernel<T><<<cuda::blocks_for(base.batch * base.groups * L * N, kTileThreads), kTileThreads, 0, stream>>>(s);
    CUDA_CHECK_LAUNCH("unfused bc_grads_kernel");
    reduce_dA_kernel<<<cuda::blocks_for(s.channels * N, kTileThreads), kTileThreads, 0, stream>>>(
        s.dA_part, s.dA, base.batch, s.channels, N, d0);
    CUDA_CHECK_LAUNCH("unfused reduce_dA_kernel");
    if (s.dD || s.dbias) {
      reduce_dD_kernel<T><<<grid_of(s.channels, "the dD reduction"), kTileThreads, 0, stream>>>(s);
      CUDA_CHECK_LAUNCH("unfused reduce_dD_kernel");
    }
  }
  if (!backward) return;
  const int64_t bgs = base.batch * base.groups;
  const unsigned blocks = grid_of(bgs * ((L + 31) / 32) * ((N + 31) / 32), "the dB/dC transpose");
  transpose_kernel<T><<<blocks, dim3(32, 8), 0, stream>>>(base.acc_B, ptr<T>(res.B), L, N);
  CUDA_CHECK_LAUNCH("unfused transpose_kernel dB");
  transpose_kernel<T><<<blocks, dim3(32, 8), 0, stream>>>(base.acc_C, ptr<T>(res.C), L, N);
  CUDA_CHECK_LAUNCH("unfused transpose_kernel dC");
}

// Scan blocks the device holds at once (the smaller of the forward and reverse kernels').
int64_t scan_resident_blocks(int64_t N) {
  const int threads = N <= 128 ? 128 : 256;
  int sms = 0, fwd32 = 0, rev32 = 0, fwd16 = 0, rev16 = 0;
  CUDA_CHECK(cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, cuda::current_device()));
  CUDA_CHECK(cudaOccupancyMaxActiveBlocksPerMultiprocessor(&fwd32, forward_scan_kernel<float>, threads, 0));
  CUDA_CHECK(cudaOccupancyMaxActiveBlocksPerMultiprocessor(&rev32, reverse_scan_kernel<float>, threads, 0));
  CUDA_CHECK(cudaOccupancyMaxActiveBlocksPerMultiprocessor(&fwd16, forward_scan_kernel<__nv_bfloat16>, threads, 0));
  CUDA_CHECK(cudaOccupancyMaxActiveBlocksPerMultiprocessor(&rev16, reverse_scan_kernel<__nv_bfloat16>, threads, 0));
  return int64_t(sms) * std::max(1, std::min({fwd32, rev32, fwd16, rev16}));
}

}  // namespace

double unfused_workspace_bytes(int64_t batch, int64_t channels, int64_t L, int64_t N) {
  // exp(Δ·A), Δ·B·u (then the state gradient) and h per (b, d, t, n); Δ, the ungated y, its
  // gradient and d(delta + bias) per (b, d, t).
  return 4.0 * double(batch) * double(channels) * double(L) * (3.0 * double(N) + 4.0);
}

int64_t unfused_slice_channels(int64_t batch, int64_t d_inner, int64_t L, int64_t N, double budget_bytes) {
  const double total = unfused_workspace_bytes(batch, d_inner, L, N);
  int64_t slices = std::max<int64_t>(1, int64_t(std::ceil(total / budget_bytes)));
  if (slices == 1) return d_inner;
  // A scan block walks its row's whole length, so a slice with a few more rows than fit the GPU
  // at once would take two full-length waves: slices are cut so that their rows all fit.
  const int64_t rows = std::max<int64_t>(1, scan_resident_blocks(N) / batch);
  if ((d_inner + slices - 1) / slices > rows) slices = (d_inner + rows - 1) / rows;
  return (d_inner + slices - 1) / slices;
}

UnfusedScanResult unfused_selective_scan(const UnfusedScanInputs& args, const Tensor& grad_y,
                                         const Tensor& grad_final_state, int64_t slice_channels) {
  constexpr const char* op = "unfused_selective_scan";
  cuda::check_cuda_tensor(op, args.u, "u");
  cuda::DeviceGuard guard(args.u.device().index);
  const DType dtype = args.u.dtype();
  SCANLINE_CHECK(dtype == DType::f32 || dtype == DType::bf16, op, ": expected f32 or bf16 inputs but found u ",
                 describe(args.u));
  SCANLINE_CHECK(args.u.dim() == 3 && args.A.dim() == 2 && args.B.dim() == 4 && args.A.dtype() == DType::f32, op,
                 ": expected u (batch, d_inner, L), A (d_inner, N) f32 and B (batch, groups, N, L) but found u ",
                 describe(args.u), ", A ", describe(args.A), ", B ", describe(args.B));
  for (const Tensor* t : {&args.delta, &args.B, &args.C, &args.z})
    SCANLINE_CHECK(!t->defined() || t->dtype() == dtype, op, ": expected delta, B, C and z of u's dtype ", dtype,
                   " but found ", describe(*t));
  const int64_t batch = args.u.shape()[0], d_inner = args.u.shape()[1], L = args.u.shape()[2];
  const int64_t N = args.A.shape()[1], groups = args.B.shape()[1];
  SCANLINE_CHECK(batch >= 1 && d_inner >= 1 && L >= 1 && N >= 1 && N <= kMaxStates && groups >= 1 &&
                     d_inner % groups == 0 && slice_channels >= 1,
                 op, ": needs batch, d_inner, L >= 1, 1 <= N <= ", kMaxStates,
                 ", groups dividing d_inner and slices of >= 1 channel; found u ", describe(args.u), ", A ",
                 describe(args.A), ", B ", describe(args.B), ", slices of ", slice_channels);
  Tensors in{dense(args.u), dense(args.delta), dense(args.A), dense(args.B), dense(args.C), dense(args.D),
             dense(args.z), dense(args.delta_bias), dense(args.initial_state), dense(grad_y), dense(grad_final_state)};
  const TensorOptions f32{.dtype = DType::f32, .device = args.u.device()};
  UnfusedScanResult res;
  res.y = empty(args.u.shape(), args.u.options());
  res.final_state = empty({batch, d_inner, N}, f32);
  Tensor acc_B, acc_C;
  if (grad_y.defined()) {
    res.u = empty(args.u.shape(), args.u.options());
    res.delta = empty(args.u.shape(), args.u.options());
    if (args.z.defined()) res.z = empty(args.u.shape(), args.u.options());
    res.A = empty({d_inner, N}, f32);
    res.B = empty(args.B.shape(), args.B.options());
    res.C = empty(args.B.shape(), args.B.options());
    if (args.D.defined()) res.D = empty({d_inner}, f32);
    if (args.delta_bias.defined()) res.delta_bias = empty({d_inner}, f32);
    if (args.initial_state.defined()) res.initial_state = empty({batch, d_inner, N}, f32);
    acc_B = empty({batch, groups, L, N}, f32);
    acc_C = empty({batch, groups, L, N}, f32);
    CUDA_CHECK(cudaMemsetAsync(acc_B.raw_data(), 0, acc_B.nbytes(), cuda::current_stream()));
    CUDA_CHECK(cudaMemsetAsync(acc_C.raw_data(), 0, acc_C.nbytes(), cuda::current_stream()));
  }
  if (dtype == DType::f32)
    run<float>(in, args.softplus, res, acc_B, acc_C, slice_channels);
  else
    run<__nv_bfloat16>(in, args.softplus, res, acc_B, acc_C, slice_channels);
  return res;
}

}  // namespace scanline::bench
