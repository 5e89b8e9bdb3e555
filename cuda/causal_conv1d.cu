#include "cuda/causal_conv1d.h"

#include <algorithm>
#include <initializer_list>

#include "core/cuda/device_utils.cuh"
#include "cuda/time_rows.h"

namespace scanline::cuda {
namespace {

// Taps are handled as lags: out[t] = bias + sum_m lag[m] * x[t - m] with lag[m] = weight[k - 1 - m]
// for m < k and 0 for m in [k, KMAX), KMAX in {4, 8} a template. Sums run from m = KMAX - 1 down to
// 0, which is the CPU reference's tap order (j ascending); the zero lags add exact zeros.

constexpr int64_t kMaxGrid = 1 << 20;  // grid-stride beyond this many blocks

template <typename A, typename T>
__device__ __forceinline__ A to_acc(T v) { return A(load_math(&v)); }
template <typename T, typename A>
__device__ __forceinline__ T from_acc(A v) { return from_math<T>(math_t<T>(v)); }

template <typename A>
__device__ __forceinline__ A sigmoid_of(A z) {
  if constexpr (std::is_same_v<A, double>) return 1.0 / (1.0 + ::exp(-z));
  else return 1.0f / (1.0f + ::expf(-z));
}

// N contiguous elements at p as whole words: 16-byte words when N * sizeof(T) is a multiple of
// 16, else one 8-byte word. p is aligned to the word size.
template <int N, typename T>
__device__ __forceinline__ void load_words(const T* __restrict__ p, T* v) {
  constexpr int kBytes = int(N * sizeof(T));
  if constexpr (kBytes % 16 == 0) {
#pragma unroll
    for (int c = 0; c < kBytes / 16; ++c) reinterpret_cast<int4*>(v)[c] = __ldg(reinterpret_cast<const int4*>(p) + c);
  } else {
    static_assert(kBytes == 8, "packs are 8 bytes or whole 16-byte words");
    *reinterpret_cast<int2*>(v) = __ldg(reinterpret_cast<const int2*>(p));
  }
}

template <int N, typename T>
__device__ __forceinline__ void store_words(T* __restrict__ p, const T* v) {
  constexpr int kBytes = int(N * sizeof(T));
  if constexpr (kBytes % 16 == 0) {
#pragma unroll
    for (int c = 0; c < kBytes / 16; ++c) reinterpret_cast<int4*>(p)[c] = reinterpret_cast<const int4*>(v)[c];
  } else {
    static_assert(kBytes == 8, "packs are 8 bytes or whole 16-byte words");
    *reinterpret_cast<int2*>(p) = *reinterpret_cast<const int2*>(v);
  }
}

// out[e] = p[i + e] for e < N, zero where i + e is outside [0, limit). Whole words when vec and all
// N are inside (the caller guarantees alignment then).
template <int N, typename A, typename T>
__device__ __forceinline__ void load_run(const T* __restrict__ p, int64_t i, int64_t limit, bool vec, A* out) {
  if (vec && i >= 0 && i + N <= limit) {
    alignas(16) T v[N];
    load_words<N>(p + i, v);
#pragma unroll
    for (int e = 0; e < N; ++e) out[e] = to_acc<A>(v[e]);
  } else {
#pragma unroll
    for (int e = 0; e < N; ++e) out[e] = (i + e >= 0 && i + e < limit) ? to_acc<A>(p[i + e]) : A(0);
  }
}

// p[i + e] = in[e] for the e with i + e < limit.
template <int N, typename T, typename A>
__device__ __forceinline__ void store_run(T* __restrict__ p, int64_t i, int64_t limit, bool vec, const A* in) {
  alignas(16) T v[N];
#pragma unroll
  for (int e = 0; e < N; ++e) v[e] = from_acc<T>(in[e]);
  if (vec && i + N <= limit) {
    store_words<N>(p + i, v);
  } else {
#pragma unroll
    for (int e = 0; e < N; ++e)
      if (i + e < limit) p[i + e] = v[e];
  }
}

// lag[m] of channel c (weight is contiguous (channels, k)); zero for a channel >= channels.
template <int KMAX, typename A, typename T>
__device__ __forceinline__ void load_lags(const T* __restrict__ weight, int64_t c, int64_t channels, int k, A* lag) {
#pragma unroll
  for (int m = 0; m < KMAX; ++m) lag[m] = (m < k && c < channels) ? to_acc<A>(weight[c * k + (k - 1 - m)]) : A(0);
}

// d silu(z) / dz = s (1 + z (1 - s)), s = sigmoid(z); the CPU reference's formula.
template <typename A>
__device__ __forceinline__ A silu_grad(A g, A z) {
  const A s = sigmoid_of(z);
  return g * (s * (A(1) + z * (A(1) - s)));
}

// ---- channels-first (batch, channels, length): threads along the length -------------------------

// Where the (b, c) row of a channels-first tensor starts, in elements from its data pointer. Rows
// lie in any order: b-major when contiguous, channel-major ((channels, batch, length) memory) for
// mamba_ssm's in_proj output; a row's time steps are adjacent.
struct Rows {
  int64_t batch_stride, channel_stride;
  __device__ __forceinline__ int64_t start(int64_t row, int64_t channels) const {
    return (row / channels) * batch_stride + (row % channels) * channel_stride;
  }
};

constexpr int kCfThreads = 128;
constexpr int kCfStep = 8;                           // outputs a thread
constexpr int64_t kCfTile = kCfThreads * kCfStep;    // time steps a block pass
constexpr int kCfTilesPerPart = 4;                   // a backward part: 4096 time steps of one row

// vec: every x and out row starts 16-byte aligned (row_alignment), so whole 8-step packs are words.
template <typename T, int KMAX>
__global__ void __launch_bounds__(kCfThreads)
    conv_cf_forward(const T* __restrict__ x, Rows x_rows, const T* __restrict__ weight, const T* __restrict__ bias,
                    T* __restrict__ out, Rows out_rows, int64_t rows, int64_t channels, int64_t length, int k,
                    bool silu, bool vec) {
  using A = math_t<T>;
  const int64_t tiles = (length + kCfTile - 1) / kCfTile;
  for (int64_t unit = blockIdx.x; unit < rows * tiles; unit += gridDim.x) {
    const int64_t row = unit / tiles, tile = unit % tiles;
    const int64_t t0 = tile * kCfTile + int64_t(threadIdx.x) * kCfStep;
    if (t0 >= length) continue;
    const int64_t c = row % channels;
    A lag[KMAX];
    load_lags<KMAX>(weight, c, channels, k, lag);
    const A b = bias ? to_acc<A>(bias[c]) : A(0);
    const T* xr = x + x_rows.start(row, channels);
    A buf[2 * kCfStep];  // x[t0 - 8 .. t0 + 8)
    load_run<kCfStep>(xr, t0 - kCfStep, length, vec, buf);
    load_run<kCfStep>(xr, t0, length, vec, buf + kCfStep);
    A z[kCfStep];
#pragma unroll
    for (int e = 0; e < kCfStep; ++e) {
      A acc = b;
#pragma unroll
      for (int m = KMAX - 1; m >= 0; --m) acc += lag[m] * buf[kCfStep + e - m];
      z[e] = silu ? acc * sigmoid_of(acc) : acc;
    }
    store_run<kCfStep>(out + out_rows.start(row, channels), t0, length, vec, z);
  }
}

// Unit = (row, part of kCfTilesPerPart tiles). partial[(part_id * channels + c) * (KMAX + 1) + v]
// holds the part's sum of dz * x[t - v] (v < KMAX) and of dz (v = KMAX), part_id = b * parts + part.
template <typename T, int KMAX>
__global__ void __launch_bounds__(kCfThreads)
    conv_cf_backward(const T* __restrict__ x, Rows x_rows, const T* __restrict__ weight, const T* __restrict__ bias,
                     const T* __restrict__ grad, Rows grad_rows, T* __restrict__ dx, Rows dx_rows,
                     math_t<T>* __restrict__ partial, int64_t rows, int64_t channels, int64_t length, int k, bool silu,
                     bool vec, int64_t parts) {
  using A = math_t<T>;
  __shared__ A warp_sums[kCfThreads / 32][KMAX + 1];
  const int lane = int(threadIdx.x & 31), warp = int(threadIdx.x >> 5);
  for (int64_t unit = blockIdx.x; unit < rows * parts; unit += gridDim.x) {
    const int64_t row = unit / parts, part = unit % parts;
    const int64_t c = row % channels;
    A lag[KMAX];
    load_lags<KMAX>(weight, c, channels, k, lag);
    const A b = bias ? to_acc<A>(bias[c]) : A(0);
    const T* xr = x + x_rows.start(row, channels);
    const T* gr = grad + grad_rows.start(row, channels);
    A dw[KMAX], db = A(0);
#pragma unroll
    for (int m = 0; m < KMAX; ++m) dw[m] = A(0);
    for (int sub = 0; sub < kCfTilesPerPart; ++sub) {
      const int64_t t0 = (part * kCfTilesPerPart + sub) * kCfTile + int64_t(threadIdx.x) * kCfStep;
      if (t0 >= length) break;
      A xb[3 * kCfStep];  // x[t0 - 8 .. t0 + 16)
      A dz[2 * kCfStep];  // dz[t0 .. t0 + 16), zero past the end
      load_run<kCfStep>(xr, t0 - kCfStep, length, vec, xb);
      load_run<kCfStep>(xr, t0, length, vec, xb + kCfStep);
      load_run<kCfStep>(xr, t0 + kCfStep, length, vec, xb + 2 * kCfStep);
      load_run<kCfStep>(gr, t0, length, vec, dz);
      load_run<kCfStep>(gr, t0 + kCfStep, length, vec, dz + kCfStep);
      if (silu) {
#pragma unroll
        for (int i = 0; i < 2 * kCfStep; ++i) {
          A z = b;
#pragma unroll
          for (int m = KMAX - 1; m >= 0; --m) z += lag[m] * xb[kCfStep + i - m];
          dz[i] = silu_grad(dz[i], z);
        }
      }
      if (dx) {
        // x[s] feeds out[s + m] through lag m.
        A d[kCfStep];
#pragma unroll
        for (int e = 0; e < kCfStep; ++e) {
          A acc = A(0);
#pragma unroll
          for (int m = KMAX - 1; m >= 0; --m) acc += lag[m] * dz[e + m];
          d[e] = acc;
        }
        store_run<kCfStep>(dx + dx_rows.start(row, channels), t0, length, vec, d);
      }
      if (partial) {
#pragma unroll
        for (int e = 0; e < kCfStep; ++e) {
          db += dz[e];
#pragma unroll
          for (int m = 0; m < KMAX; ++m) dw[m] += dz[e] * xb[kCfStep + e - m];
        }
      }
    }
    if (!partial) continue;
    // Warp sums, then warp 0's lanes add the warps in order: a fixed tree.
#pragma unroll
    for (int v = 0; v <= KMAX; ++v) {
      const A s = warp_sum(v < KMAX ? dw[v] : db);
      if (lane == 0) warp_sums[warp][v] = s;
    }
    __syncthreads();
    if (threadIdx.x <= KMAX) {
      A total = A(0);
#pragma unroll
      for (int w = 0; w < kCfThreads / 32; ++w) total += warp_sums[w][threadIdx.x];
      const int64_t b_index = row / channels;
      partial[((b_index * parts + part) * channels + c) * (KMAX + 1) + threadIdx.x] = total;
    }
    __syncthreads();
  }
}

// ---- channels-last (batch, length, channels): threads along the channels ------------------------

constexpr int kClLanes = 32;    // threads along the channels (blockDim.x)
constexpr int kClGroups = 4;    // time groups (blockDim.y)
constexpr int kClSteps = 64;    // time steps a thread walks
constexpr int64_t kClTile = int64_t(kClGroups) * kClSteps;  // time steps of a block

// Channels a thread: 4 (one 16-byte word of f32, 8 bytes of bf16/f16), 2 of f64.
template <typename T>
constexpr int kCpt = sizeof(T) >= 8 ? 2 : 4;

// The kCpt channels at c0 of the (b, t) row p, zeros past `channels`. vec: channels % kCpt == 0
// and aligned bases.
template <typename A, typename T>
__device__ __forceinline__ void load_channels(const T* __restrict__ p, int64_t c0, int64_t channels, bool vec, A* out) {
  constexpr int N = kCpt<T>;
  if (vec) {
    alignas(16) T v[N];
    load_words<N>(p + c0, v);
#pragma unroll
    for (int e = 0; e < N; ++e) out[e] = to_acc<A>(v[e]);
  } else {
#pragma unroll
    for (int e = 0; e < N; ++e) out[e] = c0 + e < channels ? to_acc<A>(p[c0 + e]) : A(0);
  }
}

template <typename T, typename A>
__device__ __forceinline__ void store_channels(T* __restrict__ p, int64_t c0, int64_t channels, bool vec, const A* in) {
  constexpr int N = kCpt<T>;
  alignas(16) T v[N];
#pragma unroll
  for (int e = 0; e < N; ++e) v[e] = from_acc<T>(in[e]);
  if (vec) {
    store_words<N>(p + c0, v);
  } else {
#pragma unroll
    for (int e = 0; e < N; ++e)
      if (c0 + e < channels) p[c0 + e] = v[e];
  }
}

// xw[m] = x[t - m] of the kCpt channels at c0 (zeros outside [0, length)); xb is the batch's base.
template <int KMAX, typename A, typename T>
__device__ __forceinline__ void cl_load_window(const T* __restrict__ xb, int64_t t, int64_t length, int64_t c0,
                                               int64_t channels, bool vec, A (*xw)[kCpt<T>]) {
#pragma unroll
  for (int m = 0; m < KMAX; ++m) {
    if (t - m >= 0 && t - m < length) {
      load_channels(xb + (t - m) * channels, c0, channels, vec, xw[m]);
    } else {
#pragma unroll
      for (int e = 0; e < kCpt<T>; ++e) xw[m][e] = A(0);
    }
  }
}

// d loss / d pre-activation at one time step from its gradient row g: g, or with SiLU
// g * silu'(z) with z recomputed from the x window xw of that step.
template <int KMAX, typename A, typename T>
__device__ __forceinline__ void cl_dz(const T* __restrict__ g, int64_t c0, int64_t channels, bool vec, bool silu,
                                      const A (*lag)[KMAX], const A* b, A (*xw)[kCpt<T>], A* out) {
  load_channels(g, c0, channels, vec, out);
  if (!silu) return;
#pragma unroll
  for (int e = 0; e < kCpt<T>; ++e) {
    A z = b[e];
#pragma unroll
    for (int m = KMAX - 1; m >= 0; --m) z += lag[e][m] * xw[m][e];
    out[e] = silu_grad(out[e], z);
  }
}

struct ClUnit {
  int64_t b, time_block, c0, t_begin, t_end;
};

__device__ __forceinline__ ClUnit cl_unit(int64_t unit, int64_t time_blocks, int64_t channel_blocks, int64_t length,
                                          int cpt) {
  ClUnit u;
  const int64_t cb = unit % channel_blocks, rest = unit / channel_blocks;
  u.time_block = rest % time_blocks;
  u.b = rest / time_blocks;
  u.c0 = (cb * kClLanes + threadIdx.x) * cpt;
  u.t_begin = u.time_block * kClTile + int64_t(threadIdx.y) * kClSteps;
  u.t_end = min(length, u.t_begin + kClSteps);
  return u;
}

template <typename T, int KMAX>
__global__ void __launch_bounds__(kClLanes * kClGroups)
    conv_cl_forward(const T* __restrict__ x, const T* __restrict__ weight, const T* __restrict__ bias,
                    T* __restrict__ out, int64_t batch, int64_t length, int64_t channels, int k, bool silu, bool vec) {
  using A = math_t<T>;
  constexpr int N = kCpt<T>;
  const int64_t channel_blocks = (channels + kClLanes * N - 1) / (kClLanes * N);
  const int64_t time_blocks = (length + kClTile - 1) / kClTile;
  for (int64_t unit = blockIdx.x; unit < batch * time_blocks * channel_blocks; unit += gridDim.x) {
    const ClUnit u = cl_unit(unit, time_blocks, channel_blocks, length, N);
    if (u.c0 >= channels || u.t_begin >= length) continue;
    A lag[N][KMAX], b[N];
#pragma unroll
    for (int e = 0; e < N; ++e) {
      load_lags<KMAX>(weight, u.c0 + e, channels, k, lag[e]);
      b[e] = (bias && u.c0 + e < channels) ? to_acc<A>(bias[u.c0 + e]) : A(0);
    }
    const T* xb = x + u.b * length * channels;
    T* ob = out + u.b * length * channels;
    // window[m] = x[t - m]: entries m >= 1 are there when step t starts, it loads x[t] into
    // window[0] and ends by sliding the window one step forward.
    A window[KMAX][N];
#pragma unroll
    for (int m = 1; m < KMAX; ++m) {
      const int64_t t = u.t_begin - m;
      if (t >= 0) load_channels(xb + t * channels, u.c0, channels, vec, window[m]);
      else
#pragma unroll
        for (int e = 0; e < N; ++e) window[m][e] = A(0);
    }
#pragma unroll 4
    for (int64_t t = u.t_begin; t < u.t_end; ++t) {
      load_channels(xb + t * channels, u.c0, channels, vec, window[0]);
      A z[N];
#pragma unroll
      for (int e = 0; e < N; ++e) {
        A acc = b[e];
#pragma unroll
        for (int m = KMAX - 1; m >= 0; --m) acc += lag[e][m] * window[m][e];
        z[e] = silu ? acc * sigmoid_of(acc) : acc;
      }
#pragma unroll
      for (int m = KMAX - 1; m > 0; --m)
#pragma unroll
        for (int e = 0; e < N; ++e) window[m][e] = window[m - 1][e];
      store_channels(ob + t * channels, u.c0, channels, vec, z);
    }
  }
}

// Each thread walks its 64 steps backwards in time with two windows: xw[m] = x[t - m] (for the
// pre-activation and dweight) and dzw[m] = dz[t + m] (for dx). The block's 4 time groups add their
// dweight sums in order; partial[((b * time_blocks + time_block) * channels + c) * (KMAX + 1) + v].
template <typename T, int KMAX>
__global__ void __launch_bounds__(kClLanes * kClGroups)
    conv_cl_backward(const T* __restrict__ x, const T* __restrict__ weight, const T* __restrict__ bias,
                     const T* __restrict__ grad, T* __restrict__ dx, math_t<T>* __restrict__ partial, int64_t batch,
                     int64_t length, int64_t channels, int k, bool silu, bool vec) {
  using A = math_t<T>;
  constexpr int N = kCpt<T>;
  constexpr int V = KMAX + 1;
  __shared__ A sums[kClGroups][kClLanes][N * V];
  const int64_t channel_blocks = (channels + kClLanes * N - 1) / (kClLanes * N);
  const int64_t time_blocks = (length + kClTile - 1) / kClTile;
  for (int64_t unit = blockIdx.x; unit < batch * time_blocks * channel_blocks; unit += gridDim.x) {
    const ClUnit u = cl_unit(unit, time_blocks, channel_blocks, length, N);
    const bool active = u.c0 < channels && u.t_begin < length;
    A dw[N][KMAX], db[N];
#pragma unroll
    for (int e = 0; e < N; ++e) {
      db[e] = A(0);
#pragma unroll
      for (int m = 0; m < KMAX; ++m) dw[e][m] = A(0);
    }
    if (active) {
      A lag[N][KMAX], b[N];
#pragma unroll
      for (int e = 0; e < N; ++e) {
        load_lags<KMAX>(weight, u.c0 + e, channels, k, lag[e]);
        b[e] = (bias && u.c0 + e < channels) ? to_acc<A>(bias[u.c0 + e]) : A(0);
      }
      const T* xb = x + u.b * length * channels;
      const T* gb = grad + u.b * length * channels;
      A xw[KMAX][N], dzw[KMAX][N];
#pragma unroll
      for (int m = 0; m < KMAX; ++m)
#pragma unroll
        for (int e = 0; e < N; ++e) dzw[m][e] = A(0);
      // dzw[m] = dz[t + m] at step t: as if a step t_end had run, dzw[j] = dz[t_end + j] first
      // (zero past the end of the row).
#pragma unroll
      for (int j = 0; j + 1 < KMAX; ++j) {
        if (u.t_end + j >= length) break;
        cl_load_window<KMAX>(xb, u.t_end + j, length, u.c0, channels, vec, xw);
        cl_dz<KMAX>(gb + (u.t_end + j) * channels, u.c0, channels, vec, silu, lag, b, xw, dzw[j]);
      }
      cl_load_window<KMAX>(xb, u.t_end - 1, length, u.c0, channels, vec, xw);
#pragma unroll 2
      for (int64_t t = u.t_end - 1; t >= u.t_begin; --t) {
#pragma unroll
        for (int m = KMAX - 1; m > 0; --m)
#pragma unroll
          for (int e = 0; e < N; ++e) dzw[m][e] = dzw[m - 1][e];
        cl_dz<KMAX>(gb + t * channels, u.c0, channels, vec, silu, lag, b, xw, dzw[0]);
        if (dx) {
          A d[N];
#pragma unroll
          for (int e = 0; e < N; ++e) {
            A acc = A(0);
#pragma unroll
            for (int m = KMAX - 1; m >= 0; --m) acc += lag[e][m] * dzw[m][e];
            d[e] = acc;
          }
          store_channels(dx + u.b * length * channels + t * channels, u.c0, channels, vec, d);
        }
        if (partial) {
#pragma unroll
          for (int e = 0; e < N; ++e) {
            db[e] += dzw[0][e];
#pragma unroll
            for (int m = 0; m < KMAX; ++m) dw[e][m] += dzw[0][e] * xw[m][e];
          }
        }
        // Slide the x window one step back: xw[m] = x[t - 1 - m].
#pragma unroll
        for (int m = 0; m + 1 < KMAX; ++m)
#pragma unroll
          for (int e = 0; e < N; ++e) xw[m][e] = xw[m + 1][e];
        if (t - KMAX >= 0) load_channels(xb + (t - KMAX) * channels, u.c0, channels, vec, xw[KMAX - 1]);
        else
#pragma unroll
          for (int e = 0; e < N; ++e) xw[KMAX - 1][e] = A(0);
      }
    }
    if (!partial) continue;
#pragma unroll
    for (int e = 0; e < N; ++e) {
#pragma unroll
      for (int m = 0; m < KMAX; ++m) sums[threadIdx.y][threadIdx.x][e * V + m] = dw[e][m];
      sums[threadIdx.y][threadIdx.x][e * V + KMAX] = db[e];
    }
    __syncthreads();
    if (threadIdx.y == 0 && u.c0 < channels) {
      A* out = partial + ((u.b * time_blocks + u.time_block) * channels + u.c0) * V;
      for (int i = 0; i < N * V; ++i) {
        if (u.c0 + i / V >= channels) break;
        A total = A(0);
#pragma unroll
        for (int g = 0; g < kClGroups; ++g) total += sums[g][threadIdx.x][i];
        out[i] = total;
      }
    }
    __syncthreads();
  }
}

// ---- dweight, dbias: the parts' sums added in order ---------------------------------------------

// 32 (channel, v) entries a block, 32 threads down the parts (strided, in order), then thread row
// 0 adds the 32 sums in order. Entry v < KMAX is lag v = tap k - 1 - v; v = KMAX is the bias.
template <typename T, int KMAX>
__global__ void __launch_bounds__(1024)
    conv_weight_reduce(const math_t<T>* __restrict__ partial, int64_t parts, int64_t channels, int k,
                       T* __restrict__ dweight, T* __restrict__ dbias) {
  using A = math_t<T>;
  constexpr int V = KMAX + 1;
  __shared__ A sums[32][33];
  const int64_t entries = channels * V;
  const int64_t i = int64_t(blockIdx.x) * 32 + threadIdx.x;
  A acc = A(0);
  if (i < entries)
    for (int64_t p = threadIdx.y; p < parts; p += 32) acc += partial[p * entries + i];
  sums[threadIdx.y][threadIdx.x] = acc;
  __syncthreads();
  if (threadIdx.y != 0 || i >= entries) return;
  A total = A(0);
#pragma unroll 8
  for (int r = 0; r < 32; ++r) total += sums[r][threadIdx.x];
  const int64_t c = i / V;
  const int v = int(i % V);
  if (v < KMAX) {
    if (dweight && v < k) dweight[c * k + (k - 1 - v)] = from_acc<T>(total);
  } else if (dbias) {
    dbias[c] = from_acc<T>(total);
  }
}

// ---- host side ---------------------------------------------------------------------------------

template <typename T>
const T* ptr_or_null(const Tensor& t) { return t.defined() ? data_at<const T>(t) : nullptr; }
template <typename T>
T* mut_ptr_or_null(const Tensor& t) { return t.defined() ? data_at<T>(t) : nullptr; }

bool all_aligned(std::initializer_list<const void*> ptrs) {
  for (const void* p : ptrs)
    if (p && !aligned16(p)) return false;
  return true;
}

unsigned grid_for(int64_t units) { return unsigned(std::clamp<int64_t>(units, 1, kMaxGrid)); }

template <typename Fn>
void dispatch_width(int k, Fn&& fn) {
  if (k <= 4) fn.template operator()<4>();
  else fn.template operator()<8>();
}

struct Dims {
  int64_t batch, channels, length;
};

Dims dims_of(const Tensor& x, bool channels_last) {
  return {x.shape()[0], channels_last ? x.shape()[2] : x.shape()[1], channels_last ? x.shape()[1] : x.shape()[2]};
}

void check_output(const char* op, const Tensor& t, const Shape& shape, const char* name) {
  if (!t.defined()) return;
  check_cuda_tensor(op, t, name);
  SCANLINE_CHECK(t.is_contiguous() && t.shape() == shape, op, ": expected ", name,
                 " to be a contiguous tensor of shape ", shape, " but found ", describe(t));
}

// What the kernels read: channels-first rows in place in any order when their time steps are
// adjacent, anything else (channels-last included) as a contiguous copy.
Tensor readable(const Tensor& t, bool channels_last) { return channels_last ? as_contiguous(t) : time_contiguous(t); }

// x-shaped outputs: channels-last contiguous; channels-first rows in any order (the op picks x's)
// with adjacent time steps.
void check_activation_output(const char* op, const Tensor& t, const Shape& shape, bool channels_last,
                             const char* name) {
  if (channels_last || !t.defined()) return check_output(op, t, shape, name);
  check_cuda_tensor(op, t, name);
  SCANLINE_CHECK(t.shape() == shape && time_adjacent(t), op, ": expected ", name, " of shape ", shape,
                 " with stride 1 along the length but found ", describe(t), " with strides ", t.strides());
}

Rows rows_of(const Tensor& t) { return t.defined() ? Rows{t.strides()[0], t.strides()[1]} : Rows{0, 0}; }

}  // namespace

void causal_conv1d_forward(const Tensor& x_in, const Tensor& weight_in, const Tensor& bias_in, bool silu,
                           bool channels_last, const Tensor& out) {
  constexpr const char* op = "causal_conv1d";
  check_cuda_tensor(op, x_in, "x");
  check_activation_output(op, out, x_in.shape(), channels_last, "out");
  DeviceGuard guard(x_in.device().index);
  const Tensor x = readable(x_in, channels_last), weight = as_contiguous(weight_in);
  const Tensor bias = bias_in.defined() ? as_contiguous(bias_in) : Tensor();
  const auto [batch, channels, length] = dims_of(x, channels_last);
  const int k = int(weight.shape()[1]);
  if (x.numel() == 0) return;
  cudaStream_t stream = current_stream();
  dispatch_floating_device(x.dtype(), op, [&]<typename T>() {
    const T* px = data_at<const T>(x);
    T* po = data_at<T>(out);
    const T* pw = data_at<const T>(weight);
    const T* pb = ptr_or_null<T>(bias);
    dispatch_width(k, [&]<int KMAX>() {
      if (channels_last) {
        const bool vec = channels % kCpt<T> == 0 && all_aligned({px, po});
        const int64_t units = batch * ((length + kClTile - 1) / kClTile) *
                              ((channels + kClLanes * kCpt<T> - 1) / (kClLanes * kCpt<T>));
        conv_cl_forward<T, KMAX><<<grid_for(units), dim3(kClLanes, kClGroups), 0, stream>>>(
            px, pw, pb, po, batch, length, channels, k, silu, vec);
      } else {
        const Rows x_rows = rows_of(x), out_rows = rows_of(out);
        const bool vec = row_alignment({x, out}) >= 16;
        const int64_t units = batch * channels * ((length + kCfTile - 1) / kCfTile);
        conv_cf_forward<T, KMAX><<<grid_for(units), kCfThreads, 0, stream>>>(
            px, x_rows, pw, pb, po, out_rows, batch * channels, channels, length, k, silu, vec);
      }
      CUDA_CHECK_LAUNCH("causal_conv1d forward");
    });
  });
}

void causal_conv1d_backward(const Tensor& x_in, const Tensor& weight_in, const Tensor& bias_in, bool silu,
                            bool channels_last, const Tensor& grad_in, const Tensor& grad_x,
                            const Tensor& grad_weight, const Tensor& grad_bias) {
  constexpr const char* op = "causal_conv1d backward";
  check_cuda_tensor(op, x_in, "x");
  check_activation_output(op, grad_x, x_in.shape(), channels_last, "grad_x");
  check_output(op, grad_weight, weight_in.shape(), "grad_weight");
  if (bias_in.defined()) check_output(op, grad_bias, bias_in.shape(), "grad_bias");
  DeviceGuard guard(x_in.device().index);
  const Tensor x = readable(x_in, channels_last), grad = readable(grad_in, channels_last);
  const Tensor weight = as_contiguous(weight_in);
  const Tensor bias = bias_in.defined() ? as_contiguous(bias_in) : Tensor();
  const auto [batch, channels, length] = dims_of(x, channels_last);
  const int k = int(weight.shape()[1]);
  const bool need_partial = grad_weight.defined() || grad_bias.defined();
  if (!grad_x.defined() && !need_partial) return;
  if (x.numel() == 0) {  // no (batch, time) terms: zero sums
    if (grad_weight.defined()) fill_(grad_weight, 0.0);
    if (grad_bias.defined()) fill_(grad_bias, 0.0);
    return;
  }
  cudaStream_t stream = current_stream();
  dispatch_floating_device(x.dtype(), op, [&]<typename T>() {
    using A = math_t<T>;
    const T* px = data_at<const T>(x);
    const T* pg = data_at<const T>(grad);
    const T* pw = data_at<const T>(weight);
    const T* pb = ptr_or_null<T>(bias);
    T* pdx = mut_ptr_or_null<T>(grad_x);
    dispatch_width(k, [&]<int KMAX>() {
      // The fixed partition of (batch, time): channels-last parts are blocks' 256-step tiles,
      // channels-first parts 4096 steps of a row.
      const int64_t part_length = channels_last ? kClTile : kCfTile * kCfTilesPerPart;
      const int64_t parts_per_batch = (length + part_length - 1) / part_length;
      const int64_t parts = batch * parts_per_batch;
      Tensor partial_t;
      A* partial = nullptr;
      if (need_partial) {
        partial_t = empty({parts, channels, KMAX + 1}, {.dtype = dtype_of<A>(), .device = x.device()});
        partial = data_at<A>(partial_t);
      }
      if (channels_last) {
        const bool vec = channels % kCpt<T> == 0 && all_aligned({px, pg, pdx});
        const int64_t units = parts * ((channels + kClLanes * kCpt<T> - 1) / (kClLanes * kCpt<T>));
        conv_cl_backward<T, KMAX><<<grid_for(units), dim3(kClLanes, kClGroups), 0, stream>>>(
            px, pw, pb, pg, pdx, partial, batch, length, channels, k, silu, vec);
      } else {
        const Rows x_rows = rows_of(x), grad_rows = rows_of(grad), dx_rows = rows_of(grad_x);
        const bool vec = row_alignment({x, grad, grad_x}) >= 16;
        conv_cf_backward<T, KMAX><<<grid_for(batch * channels * parts_per_batch), kCfThreads, 0, stream>>>(
            px, x_rows, pw, pb, pg, grad_rows, pdx, dx_rows, partial, batch * channels, channels, length, k, silu,
            vec, parts_per_batch);
      }
      CUDA_CHECK_LAUNCH("causal_conv1d backward");
      if (need_partial) {
        const int64_t entries = channels * (KMAX + 1);
        conv_weight_reduce<T, KMAX><<<unsigned((entries + 31) / 32), dim3(32, 32), 0, stream>>>(
            partial, parts, channels, k, mut_ptr_or_null<T>(grad_weight), mut_ptr_or_null<T>(grad_bias));
        CUDA_CHECK_LAUNCH("causal_conv1d conv_weight_reduce");
      }
    });
  });
}

}  // namespace scanline::cuda
