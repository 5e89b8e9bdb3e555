#pragma once
// Shared by the SSD backward's kernel files (cuda/ssd_bwd*.cu; the pass structure is described at
// the top of cuda/ssd_bwd.cu): the kernels' parameters and launchers, shared-memory operand tiles,
// the ldmatrix fragment loads of each orientation, the (split) tensor-core products of a warp's
// 16-row strip, and the register-level helpers around them.
//
// Tiles. A shared tile is row-major bf16 with a row stride of cols + 8 elements (cols a multiple
// of 16): the stride is then an odd number of 16-byte units, so the 8 row addresses of every
// ldmatrix phase land in distinct bank groups, and 32-bit reads at accumulator positions (rows
// g, columns 2q) hit 32 distinct banks. f32 token inputs are kept as two tiles, hi = bf16(v) and
// lo = bf16(v − hi), and multiplied with three mma (hi·hi + hi·lo + lo·hi): about 16 bits of each
// operand, for the 1e-3 the f32 path is held to. Intermediate products fed to a second product
// (the decayed C·Bᵀ and dy·xᵀ tiles) are rounded to bf16 on the bf16 path and split on the f32
// path, as they go from accumulator to operand registers.
//
// A time tile is kRows = 64 steps of a chunk; a block of 4 warps owns one, warp w its rows
// 16w .. 16w + 15, and every product of the backward is a warp computing a 16-row strip.
#include <cstdint>
#include <type_traits>

#include "core/cuda/device_utils.cuh"
#include "cuda/mma_bf16.cuh"

namespace scanline::cuda::ssd_grad {

using bf16 = __nv_bfloat16;

inline constexpr int kRows = 64;         // steps of a time tile
inline constexpr int kWarps = 4;         // warps of a tile kernel's block, 16 rows each
inline constexpr int kThreads = 32 * kWarps;
inline constexpr int kMaxChunk = 256;    // largest chunk_size: per-chunk arrays in shared memory
inline constexpr float kLog2e = 1.4426950408889634f;

// f32 inputs are split into hi and lo bf16 halves; bf16 inputs are used as they are.
template <typename T>
inline constexpr bool kSplit = std::is_same_v<T, float>;

// ---- parameters (host and device) ----------------------------------------------------------------

// A token tensor read in place, innermost dimension contiguous: the values of (b, t, k) (k a head
// or a group) start at ptr + b·sb + t·st + k·sk. vec: every such row start is 16-byte aligned.
template <typename T>
struct Rows {
  const T* ptr = nullptr;
  int64_t sb = 0, st = 0, sk = 0;
  bool vec = false;
  __host__ __device__ const T* at(int64_t b, int64_t t, int64_t k) const { return ptr + b * sb + t * st + k * sk; }
};

// Sizes every pass shares. Chunk rows r = (b·n_chunks + c)·heads + h index the per-chunk arrays:
// (rows, Q) per step, (rows, P·N) per state.
struct Dims {
  int64_t batch, L, heads, groups, per_group, Q, n_chunks;
  int64_t tiles;           // Q / kRows
  int64_t head_tiles;      // blocks a group's heads are split over in the tile kernels
  int64_t heads_per_tile;  // ceil(per_group / head_tiles)
  __host__ __device__ int64_t chunk_rows() const { return batch * n_chunks * heads; }
};

// Pass 1: Δ and the cumulative log2-decay per chunk step.
template <typename T>
struct CumsumParams {
  const T* dt;                 // (batch, L, heads) with strides sdb, sdt, sdh
  int64_t sdb, sdt, sdh;
  const float *A, *bias;       // (heads); bias may be null
  bool softplus;
  float *delta, *a2;           // (rows, Q): Δ (0 past L) and log2(e)·Σ_{k<=i} Δ_k A (constant past L)
  Dims d;
};

// The gradient of the ungated output, dy, is read as TY: the input grad_y (T) without a gate, or
// the gate's f32 output with one (dy·silu(z) is not a bf16 value, and d loss / d A is
// ill-conditioned enough in dy that rounding it to bf16 alone can move dA by a few percent), in
// which case its products take the split path.

// Pass 2: the gate's backward and G_c = Σ_i exp(a_i) dy_i ⊗ C_i.
template <typename T, typename TY>
struct GateParams {
  Rows<T> gy, z, y_ungated;    // z.ptr null: no gate; y_ungated.ptr null: dz not wanted
  Rows<T> C;
  TY* dy;                      // (batch, L, heads, P) contiguous, null without a gate
  T* dz;                       // (batch, L, heads, P) contiguous or null
  const float* a2;
  T* G;                        // (rows, P, N)
  Dims d;
};

// Pass 3: the state gradient across chunks, last to first. G_c and Dout_c are stored in the
// inputs' dtype T (half the memory of f32 for bf16, the size of one chunk_states): the tile
// kernels use Dout_c as a bf16 operand anyway, and the recurrence itself runs in f32 registers.
template <typename T>
struct ReverseParams {
  T* dout;                     // (rows, P·N): G_c in, Dout_c = d loss / d H_{c+1} out
  const float* states;         // (rows, P·N): H_c, the state entering chunk c
  const float* grad_final;     // (batch, heads, P·N) or null (zeros)
  const float* a2;
  float* q_part;               // (rows, slices): exp(a_last) ⟨H_c, Dout_c⟩ per slice of P·N
  float* dinit;                // (batch, heads, P·N) or null
  int64_t PN, slices;
  Dims d;
};

// Pass 4: per source tile j (see cuda/ssd_bwd_dx.cu).
template <typename T, typename TY>
struct DxParams {
  Rows<T> x, B, C;
  Rows<TY> dy;                 // d loss / d (ungated y)
  const float *delta, *a2;
  const T* dout;               // (rows, P, N)
  const float* D;              // null, (heads) or (heads, P)
  bool D_per_channel, dout_vec;
  T* dx;                       // (batch, L, heads, P) or null
  float *ddir, *w, *tcol;      // (rows, Q) or null
  float* rowpart;              // (rows, tiles, Q) or null
  float* dD_part;              // (rows, tiles, P) or null
  T* dB;                       // (batch, L, groups, N) when head_tiles == 1 (else null)
  float* dB_part;              // (batch, groups, head_tiles, n_chunks·Q, N) when head_tiles > 1
  bool need_B;
  Dims d;
};

// Pass 5: per output tile i (see cuda/ssd_bwd_dc.cu).
template <typename T, typename TY>
struct DcParams {
  Rows<T> x, B, C;
  Rows<TY> dy;
  const float *delta, *a2, *states;
  bool states_vec;
  float* ginc;                 // (rows, Q) or null
  T* dC;                       // (batch, L, groups, N) when head_tiles == 1 (else null)
  float* dC_part;              // (batch, groups, head_tiles, n_chunks·Q, N) when head_tiles > 1
  bool need_C;
  Dims d;
};

// Pass 6: d loss / d a, its suffix sums within each chunk, dΔ, d dt and per-chunk dA, d dt_bias.
template <typename T>
struct FinalParams {
  const T* dt;
  int64_t sdb, sdt, sdh;
  const float *A, *bias;
  bool softplus;
  const float *delta, *ddir, *w, *tcol, *rowpart, *ginc, *q_part;
  int64_t slices;
  T* ddt;                      // (batch, L, heads) or null
  float *dA_part, *dbias_part; // (rows) each, either may be null
  Dims d;
};

// Launchers (stream: the current one). P, N: the sizes ssd_supports takes.
template <typename T> void launch_cumsum(const CumsumParams<T>& p, cudaStream_t stream);
// (T, TY): (float, float), (bf16, bf16) and (bf16, float) are compiled.
template <typename T, typename TY> void launch_gate(const GateParams<T, TY>& p, int64_t P, int64_t N, cudaStream_t stream);
template <typename T> void launch_reverse(const ReverseParams<T>& p, cudaStream_t stream);
template <typename T, typename TY> void launch_dx(const DxParams<T, TY>& p, int64_t P, int64_t N, cudaStream_t stream);
template <typename T, typename TY> void launch_dc(const DcParams<T, TY>& p, int64_t P, int64_t N, cudaStream_t stream);
template <typename T> void launch_final(const FinalParams<T>& p, cudaStream_t stream);

// Calls fn.template operator()<P, N>() for the state shapes the kernels are compiled for.
template <typename Fn>
void dispatch_shape(int64_t P, int64_t N, Fn&& fn) {
  auto with_n = [&]<int kP>() {
    switch (N) {
      case 16: return fn.template operator()<kP, 16>();
      case 32: return fn.template operator()<kP, 32>();
      case 64: return fn.template operator()<kP, 64>();
      case 128: return fn.template operator()<kP, 128>();
      default: SCANLINE_FAIL("ssd backward: no kernel for N = ", N);
    }
  };
  switch (P) {
    case 32: return with_n.template operator()<32>();
    case 64: return with_n.template operator()<64>();
    case 128: return with_n.template operator()<128>();
    default: SCANLINE_FAIL("ssd backward: no kernel for headdim = ", P);
  }
}

// Opts a kernel into more than the default 48 KiB of dynamic shared memory when it needs it.
template <typename Kernel>
void allow_shared_memory(Kernel kernel, size_t bytes) {
  if (bytes > 48 * 1024)
    CUDA_CHECK(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, int(bytes)));
}

// ---- device: math -----------------------------------------------------------------------------

// 2^x as one MUFU.EX2 (results below 2^-126 flush to zero, which a decay may).
__device__ __forceinline__ float exp2_approx(float x) {
  float y;
  asm("ex2.approx.ftz.f32 %0, %1;" : "=f"(y) : "f"(x));
  return y;
}
__device__ __forceinline__ float softplus_f(float x) { return fmaxf(x, 0.0f) + log1pf(expf(-fabsf(x))); }
__device__ __forceinline__ float sigmoid_f(float x) { return 1.0f / (1.0f + expf(-x)); }

// ---- device: shared tiles and staging ------------------------------------------------------------

// Row stride (elements) of a shared tile with `cols` columns.
__host__ __device__ constexpr int padded(int cols) { return cols + 8; }

// A shared tile: hi (and lo when kS) of `rows` x ld bf16 each.
template <bool kS>
struct STile {
  bf16* hi;
  bf16* lo;
  int ld;
};

// Bump allocation of shared tiles; every size is a multiple of 8 elements, so tiles stay 16-byte
// aligned.
template <bool kS>
__device__ __forceinline__ STile<kS> carve(bf16*& cursor, int rows, int cols) {
  STile<kS> t{cursor, cursor, padded(cols)};
  cursor += rows * padded(cols);
  if constexpr (kS) {
    t.lo = cursor;
    cursor += rows * padded(cols);
  }
  return t;
}
__host__ __device__ constexpr int tile_elems(bool split, int rows, int cols) { return (split ? 2 : 1) * rows * padded(cols); }

// 8 consecutive values as floats: one (bf16) or two (f32) 16-byte loads when vec, else scalars.
template <typename Src>
__device__ __forceinline__ void load8(const Src* p, bool vec, float (&v)[8]) {
  if constexpr (std::is_same_v<Src, bf16>) {
    if (vec) {
      const uint4 raw = *reinterpret_cast<const uint4*>(p);
      const __nv_bfloat162* e = reinterpret_cast<const __nv_bfloat162*>(&raw);
#pragma unroll
      for (int k = 0; k < 4; ++k) {
        const float2 f = __bfloat1622float2(e[k]);
        v[2 * k] = f.x;
        v[2 * k + 1] = f.y;
      }
      return;
    }
#pragma unroll
    for (int k = 0; k < 8; ++k) v[k] = __bfloat162float(p[k]);
  } else {
    static_assert(std::is_same_v<Src, float>, "f32 or bf16 sources");
    if (vec) {
      const float4 a = reinterpret_cast<const float4*>(p)[0], b = reinterpret_cast<const float4*>(p)[1];
      v[0] = a.x, v[1] = a.y, v[2] = a.z, v[3] = a.w, v[4] = b.x, v[5] = b.y, v[6] = b.z, v[7] = b.w;
      return;
    }
#pragma unroll
    for (int k = 0; k < 8; ++k) v[k] = p[k];
  }
}

// 8 values to 8 consecutive elements of a 16-byte aligned destination (global, T's type).
template <typename T>
__device__ __forceinline__ void store8(T* p, const float (&v)[8]) {
  if constexpr (std::is_same_v<T, bf16>) {
    uint4 raw;
    uint32_t* w = &raw.x;
#pragma unroll
    for (int k = 0; k < 4; ++k) w[k] = mma::pack_bf16x2(v[2 * k], v[2 * k + 1]);
    *reinterpret_cast<uint4*>(p) = raw;
  } else {
    reinterpret_cast<float4*>(p)[0] = make_float4(v[0], v[1], v[2], v[3]);
    reinterpret_cast<float4*>(p)[1] = make_float4(v[4], v[5], v[6], v[7]);
  }
}

// Two floats as one bf16x2 register, or hi and lo registers (f32 path).
template <bool kS>
__device__ __forceinline__ void pack2(float v0, float v1, uint32_t& hi, uint32_t& lo) {
  if constexpr (kS) {
    const __nv_bfloat162 h = __floats2bfloat162_rn(v0, v1);
    const float2 back = __bfloat1622float2(h);
    hi = *reinterpret_cast<const uint32_t*>(&h);
    lo = mma::pack_bf16x2(v0 - back.x, v1 - back.y);
  } else {
    hi = mma::pack_bf16x2(v0, v1);
    lo = 0;
  }
}

// 8 values into row `row`, columns col .. col + 7 of a shared tile (one 16-byte store a half).
template <bool kS>
__device__ __forceinline__ void put8(const STile<kS>& t, int row, int col, const float (&v)[8]) {
  uint4 h, l;
  uint32_t* hw = &h.x;
  uint32_t* lw = &l.x;
#pragma unroll
  for (int k = 0; k < 4; ++k) pack2<kS>(v[2 * k], v[2 * k + 1], hw[k], lw[k]);
  *reinterpret_cast<uint4*>(t.hi + row * t.ld + col) = h;
  if constexpr (kS) *reinterpret_cast<uint4*>(t.lo + row * t.ld + col) = l;
}

// v, hidden from the optimizer: the addresses a thread derives from it are recomputed where they are
// used instead of being hoisted out of the kernels' loops (which keeps dozens of them live across
// the products, and spills).
__device__ __forceinline__ int opaque(int v) {
  asm volatile("" : "+r"(v));
  return v;
}

// cp.async of 16 bytes global -> shared, or 16 zero bytes when !valid (the source is then not read).
__device__ __forceinline__ void cp_async16(void* dst, const void* src, bool valid) {
  asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(mma::smem_address(dst)), "l"(src),
               "r"(valid ? 16 : 0)
               : "memory");
}
__device__ __forceinline__ void cp_async_commit() { asm volatile("cp.async.commit_group;\n" ::: "memory"); }
// Waits for this thread's cp.async copies; the caller then synchronizes the block.
__device__ __forceinline__ void stage_wait() { asm volatile("cp.async.wait_all;\n" ::: "memory"); }

// 16 bytes of a row as loaded: one vector of 8 bf16, or two of 4 floats.
template <typename Src>
struct Raw8 {
  uint4 v;
};
template <>
struct Raw8<float> {
  float4 a, b;
};
template <typename Src>
__device__ __forceinline__ Raw8<Src> load_raw8(const Src* p) {
  Raw8<Src> r;
  if constexpr (std::is_same_v<Src, float>) {
    r.a = reinterpret_cast<const float4*>(p)[0];
    r.b = reinterpret_cast<const float4*>(p)[1];
  } else {
    r.v = *reinterpret_cast<const uint4*>(p);
  }
  return r;
}
template <typename Src>
__device__ __forceinline__ void raw_to_floats(const Raw8<Src>& r, float (&v)[8]) {
  if constexpr (std::is_same_v<Src, float>) {
    v[0] = r.a.x, v[1] = r.a.y, v[2] = r.a.z, v[3] = r.a.w, v[4] = r.b.x, v[5] = r.b.y, v[6] = r.b.z, v[7] = r.b.w;
  } else {
    const __nv_bfloat162* e = reinterpret_cast<const __nv_bfloat162*>(&r.v);
#pragma unroll
    for (int k = 0; k < 4; ++k) {
      const float2 f = __bfloat1622float2(e[k]);
      v[2 * k] = f.x;
      v[2 * k + 1] = f.y;
    }
  }
}

// Rows [0, kTileRows) of a tile of kCols columns, staged by the kThreads threads of the block: row
// r from src + r·row_stride (kCols contiguous values; each row 16-byte aligned when vec), times
// scale[r] when scale is given, zeros from row `valid` on (their source is not read). A bf16 tile
// copied as is goes through cp.async; everything else through registers, a batch of loads in
// flight before any is converted. The caller runs stage_wait() and __syncthreads() before use.
template <bool kS, int kTileRows, int kCols, int kThreads, typename Src>
__device__ __forceinline__ void stage(const STile<kS>& t, const Src* src, int64_t row_stride, int valid, bool vec,
                                      const float* scale = nullptr) {
  static_assert(kCols % 16 == 0, "tiles have a multiple of 16 columns");
  constexpr int kVecs = kCols / 8, kTotal = kTileRows * kVecs;
  constexpr int kIters = (kTotal + kThreads - 1) / kThreads;
  const int tid = opaque(int(threadIdx.x));
  if constexpr (std::is_same_v<Src, bf16> && !kS) {
    if (vec && scale == nullptr) {
#pragma unroll
      for (int it = 0; it < kIters; ++it) {
        const int idx = tid + it * kThreads;
        if (kTotal % kThreads == 0 || idx < kTotal) {
          const int r = idx / kVecs, col = idx % kVecs * 8;
          const bool in = r < valid;
          cp_async16(t.hi + r * t.ld + col, src + int64_t(in ? r : 0) * row_stride + col, in);
        }
      }
      cp_async_commit();
      return;
    }
  }
  if (vec) {
    constexpr int kBatch = std::is_same_v<Src, float> ? 4 : 8;  // loads in flight a thread
#pragma unroll
    for (int it0 = 0; it0 < kIters; it0 += kBatch) {
      Raw8<Src> raw[kBatch];
#pragma unroll
      for (int k = 0; k < kBatch; ++k) {
        const int idx = tid + (it0 + k) * kThreads;
        if (it0 + k < kIters && (kTotal % kThreads == 0 || idx < kTotal) && idx / kVecs < valid)
          raw[k] = load_raw8(src + int64_t(idx / kVecs) * row_stride + idx % kVecs * 8);
      }
#pragma unroll
      for (int k = 0; k < kBatch; ++k) {
        const int idx = tid + (it0 + k) * kThreads;
        if (it0 + k < kIters && (kTotal % kThreads == 0 || idx < kTotal)) {
          const int r = idx / kVecs, col = idx % kVecs * 8;
          float v[8];
          if (r < valid) {
            raw_to_floats(raw[k], v);
            if (scale != nullptr) {
              const float s = scale[r];
#pragma unroll
              for (int e = 0; e < 8; ++e) v[e] *= s;
            }
          } else {
#pragma unroll
            for (int e = 0; e < 8; ++e) v[e] = 0.0f;
          }
          put8(t, r, col, v);
        }
      }
    }
    return;
  }
  for (int idx = tid; idx < kTotal; idx += kThreads) {  // misaligned rows: element loads
    const int r = idx / kVecs, col = idx % kVecs * 8;
    float v[8];
    if (r < valid) {
      load8(src + int64_t(r) * row_stride + col, false, v);
      if (scale != nullptr) {
        const float s = scale[r];
#pragma unroll
        for (int e = 0; e < 8; ++e) v[e] *= s;
      }
    } else {
#pragma unroll
      for (int e = 0; e < 8; ++e) v[e] = 0.0f;
    }
    put8(t, r, col, v);
  }
}

// ---- device: fragments and products --------------------------------------------------------------
// Fragment layouts: cuda/mma_bf16.cuh. g = lane / 4, q = lane % 4. An accumulator strip
// float acc[NT][4] covers 16 rows x 8·NT columns: acc[nt][e] is row g + 8·(e / 2), column
// 8·nt + 2q + e % 2.

// Four registers of an A operand (16 x 16) or of a B operand for two n-tiles (16 x 16: registers
// 0, 1 the first n-tile's b[0], b[1], registers 2, 3 the second's); lo only on the split path.
struct Frag {
  uint32_t hi[4], lo[4];
};

__device__ __forceinline__ int lane_id() { return int(threadIdx.x & 31); }

// A (16 x 16) from a tile stored [m][k]: rows row0.., columns k0...
template <bool kS>
__device__ __forceinline__ Frag load_a(const STile<kS>& t, int row0, int k0) {
  const int lane = lane_id();
  const int off = (row0 + (lane & 15)) * t.ld + k0 + (lane >> 4) * 8;
  Frag f;
  mma::ldmatrix_x4(f.hi, t.hi + off);
  if constexpr (kS) mma::ldmatrix_x4(f.lo, t.lo + off);
  return f;
}

// A (16 x 16) from a tile stored transposed, [k][m]: A[m][k] = tile[k0 + k][m0 + m].
template <bool kS>
__device__ __forceinline__ Frag load_a_trans(const STile<kS>& t, int k0, int m0) {
  const int lane = lane_id();
  const int off = (k0 + (lane & 7) + ((lane >> 4) << 3)) * t.ld + m0 + ((lane >> 3) & 1) * 8;
  Frag f;
  mma::ldmatrix_x4_trans(f.hi, t.hi + off);
  if constexpr (kS) mma::ldmatrix_x4_trans(f.lo, t.lo + off);
  return f;
}

// B for n-tiles n0.., n0 + 8.. (k0 .. k0 + 15) from a tile stored [n][k]: B[k][n] = tile[n0 + n][k0 + k].
template <bool kS>
__device__ __forceinline__ Frag load_b_nk(const STile<kS>& t, int n0, int k0) {
  const int lane = lane_id();
  const int off = (n0 + (lane & 7) + ((lane >> 4) << 3)) * t.ld + k0 + ((lane >> 3) & 1) * 8;
  Frag f;
  mma::ldmatrix_x4(f.hi, t.hi + off);
  if constexpr (kS) mma::ldmatrix_x4(f.lo, t.lo + off);
  return f;
}

// B for n-tiles n0.., n0 + 8.. from a tile stored [k][n]: B[k][n] = tile[k0 + k][n0 + n].
template <bool kS>
__device__ __forceinline__ Frag load_b_kn(const STile<kS>& t, int k0, int n0) {
  const int lane = lane_id();
  const int off = (k0 + (lane & 15)) * t.ld + n0 + (lane >> 4) * 8;
  Frag f;
  mma::ldmatrix_x4_trans(f.hi, t.hi + off);
  if constexpr (kS) mma::ldmatrix_x4_trans(f.lo, t.lo + off);
  return f;
}

// c0, c1 (n-tiles 0 and 1 of b) += a·b: one mma each, plus one for each split operand's lo half
// (hi·hi + hi·lo + lo·hi with both split; small terms first).
template <bool kSA, bool kSB>
__device__ __forceinline__ void mma_pair(float (&c0)[4], float (&c1)[4], const Frag& a, const Frag& b) {
  if constexpr (kSA) {
    mma::mma_bf16_16816(c0, a.lo, b.hi);
    mma::mma_bf16_16816(c1, a.lo, b.hi + 2);
  }
  if constexpr (kSB) {
    mma::mma_bf16_16816(c0, a.hi, b.lo);
    mma::mma_bf16_16816(c1, a.hi, b.lo + 2);
  }
  mma::mma_bf16_16816(c0, a.hi, b.hi);
  mma::mma_bf16_16816(c1, a.hi, b.hi + 2);
}

// acc (16 x 8·NT, from column n0 of b) += a[row0.., 0 .. 16·kSteps) · B, with B from a tile stored
// [n][k] (kBnk) or [k][n].
template <bool kSA, bool kSB, int NT, int kSteps, bool kBnk>
__device__ __forceinline__ void gemm_smem(float (&acc)[NT][4], const STile<kSA>& a, int row0, const STile<kSB>& b,
                                          int n0) {
  static_assert(NT % 2 == 0, "n-tiles come in pairs");
#pragma unroll
  for (int ks = 0; ks < kSteps; ++ks) {
    const Frag fa = load_a(a, row0, 16 * ks);
#pragma unroll
    for (int np = 0; np < NT / 2; ++np) {
      const Frag fb = kBnk ? load_b_nk(b, n0 + 16 * np, 16 * ks) : load_b_kn(b, 16 * ks, n0 + 16 * np);
      mma_pair<kSA, kSB>(acc[2 * np], acc[2 * np + 1], fa, fb);
    }
  }
}

// acc (16 x 8·NT, from column n0 of b) += A · B with A in registers (kSteps k-steps; lo halves when
// kSA) and B from a tile stored [k][n].
template <bool kSA, bool kSB, int NT, int kSteps>
__device__ __forceinline__ void gemm_reg(float (&acc)[NT][4], const Frag (&a)[kSteps], const STile<kSB>& b, int n0) {
  static_assert(NT % 2 == 0, "n-tiles come in pairs");
#pragma unroll
  for (int ks = 0; ks < kSteps; ++ks) {
#pragma unroll
    for (int np = 0; np < NT / 2; ++np) {
      const Frag fb = load_b_kn(b, 16 * ks, n0 + 16 * np);
      mma_pair<kSA, kSB>(acc[2 * np], acc[2 * np + 1], a[ks], fb);
    }
  }
}

// A 16 x 64 accumulator strip as the A operand of a product over its 64 columns (4 k-steps): the
// accumulator layout of n-tiles 2k, 2k + 1 is the A layout of k-step k. Rounded to bf16, or split.
template <bool kS>
__device__ __forceinline__ void to_operand(const float (&v)[8][4], Frag (&a)[4]) {
#pragma unroll
  for (int k = 0; k < 4; ++k) {
    pack2<kS>(v[2 * k][0], v[2 * k][1], a[k].hi[0], a[k].lo[0]);
    pack2<kS>(v[2 * k][2], v[2 * k][3], a[k].hi[1], a[k].lo[1]);
    pack2<kS>(v[2 * k + 1][0], v[2 * k + 1][1], a[k].hi[2], a[k].lo[2]);
    pack2<kS>(v[2 * k + 1][2], v[2 * k + 1][3], a[k].hi[3], a[k].lo[3]);
  }
}

template <int NT>
__device__ __forceinline__ void zero(float (&acc)[NT][4]) {
#pragma unroll
  for (int nt = 0; nt < NT; ++nt) acc[nt][0] = acc[nt][1] = acc[nt][2] = acc[nt][3] = 0.0f;
}

// Rows g and g + 8 of a strip times s0 and s1.
template <int NT>
__device__ __forceinline__ void scale_rows(float (&acc)[NT][4], float s0, float s1) {
#pragma unroll
  for (int nt = 0; nt < NT; ++nt) {
    acc[nt][0] *= s0;
    acc[nt][1] *= s0;
    acc[nt][2] *= s1;
    acc[nt][3] *= s1;
  }
}

// Two consecutive values of a shared tile as floats (hi + lo on the split path).
template <bool kS>
__device__ __forceinline__ float2 tile_pair(const STile<kS>& t, int row, int col) {
  float2 v = __bfloat1622float2(*reinterpret_cast<const __nv_bfloat162*>(t.hi + row * t.ld + col));
  if constexpr (kS) {
    const float2 l = __bfloat1622float2(*reinterpret_cast<const __nv_bfloat162*>(t.lo + row * t.ld + col));
    v.x += l.x;
    v.y += l.y;
  }
  return v;
}

// Σ_col acc[row][col] · tile[row0 + row][col] for this lane's rows g (.x) and g + 8 (.y), summed
// over the quad (every lane of it gets the sums).
template <bool kS, int NT>
__device__ __forceinline__ float2 row_dot(const float (&acc)[NT][4], const STile<kS>& t, int row0) {
  const int lane = lane_id(), g = lane >> 2, q = lane & 3;
  float s0 = 0.0f, s1 = 0.0f;
#pragma unroll
  for (int nt = 0; nt < NT; ++nt) {
    const float2 v0 = tile_pair(t, row0 + g, 8 * nt + 2 * q), v1 = tile_pair(t, row0 + g + 8, 8 * nt + 2 * q);
    s0 += acc[nt][0] * v0.x + acc[nt][1] * v0.y;
    s1 += acc[nt][2] * v1.x + acc[nt][3] * v1.y;
  }
  s0 += __shfl_xor_sync(0xffffffffu, s0, 1);
  s1 += __shfl_xor_sync(0xffffffffu, s1, 1);
  s0 += __shfl_xor_sync(0xffffffffu, s0, 2);
  s1 += __shfl_xor_sync(0xffffffffu, s1, 2);
  return make_float2(s0, s1);
}

// Column sums of a 16 x 64 strip over its 16 rows, reduce-scattered over the warp. In: v[2·nt + e],
// this lane's rows g and g + 8 of column 8nt + 2q + e already added. Out: lane (g, q) gets the
// sums of columns 8g + 2q (.x) and 8g + 2q + 1 (.y). 14 shuffles, a fixed order.
__device__ __forceinline__ float2 column_sums(float (&v)[16]) {
  const int lane = lane_id();
  // Each step keeps the half of the values selected by one bit of g (bits 2, 1, 0 of nt) and adds
  // the partner lane's copy of that half.
  const bool b4 = lane & 16, b3 = lane & 8, b2 = lane & 4;
#pragma unroll
  for (int k = 0; k < 8; ++k) {
    const float keep = b4 ? v[8 + k] : v[k], give = b4 ? v[k] : v[8 + k];
    v[k] = keep + __shfl_xor_sync(0xffffffffu, give, 16);
  }
#pragma unroll
  for (int k = 0; k < 4; ++k) {
    const float keep = b3 ? v[4 + k] : v[k], give = b3 ? v[k] : v[4 + k];
    v[k] = keep + __shfl_xor_sync(0xffffffffu, give, 8);
  }
#pragma unroll
  for (int k = 0; k < 2; ++k) {
    const float keep = b2 ? v[2 + k] : v[k], give = b2 ? v[k] : v[2 + k];
    v[k] = keep + __shfl_xor_sync(0xffffffffu, give, 4);
  }
  return make_float2(v[0], v[1]);
}

// A strip's accumulator fragments in shared memory, private to the thread: slot (warp, nt, lane)
// holds its float4, so a warp's accesses are 512 consecutive bytes (no bank conflicts).
template <int NT>
__device__ __forceinline__ void add_to_shared(float4* slots, const float (&acc)[NT][4], int nt0, int nt_total) {
  const int lane = lane_id(), warp = int(threadIdx.x >> 5);
#pragma unroll
  for (int nt = 0; nt < NT; ++nt) {
    float4& s = slots[(warp * nt_total + nt0 + nt) * 32 + lane];
    float4 v = s;
    v.x += acc[nt][0], v.y += acc[nt][1], v.z += acc[nt][2], v.w += acc[nt][3];
    s = v;
  }
}

// Writes a thread's fragments of the strip of `slots` (rows 16·warp.., all nt_total n-tiles):
// row r (0 .. 63 of the tile) and column c go to out[r·row_stride + c] when r < valid_rows.
template <typename Out>
__device__ __forceinline__ void write_slots(const float4* slots, int nt_total, Out* out, int64_t row_stride,
                                            int valid_rows) {
  const int lane = lane_id(), warp = int(threadIdx.x >> 5), g = lane >> 2, q = lane & 3;
  const int r0 = 16 * warp + g, r1 = r0 + 8;
  for (int nt = 0; nt < nt_total; ++nt) {
    const float4 v = slots[(warp * nt_total + nt) * 32 + lane];
    const int col = 8 * nt + 2 * q;
    if constexpr (std::is_same_v<Out, float>) {
      if (r0 < valid_rows) *reinterpret_cast<float2*>(out + r0 * row_stride + col) = make_float2(v.x, v.y);
      if (r1 < valid_rows) *reinterpret_cast<float2*>(out + r1 * row_stride + col) = make_float2(v.z, v.w);
    } else {
      if (r0 < valid_rows) *reinterpret_cast<__nv_bfloat162*>(out + r0 * row_stride + col) = __floats2bfloat162_rn(v.x, v.y);
      if (r1 < valid_rows) *reinterpret_cast<__nv_bfloat162*>(out + r1 * row_stride + col) = __floats2bfloat162_rn(v.z, v.w);
    }
  }
}

}  // namespace scanline::cuda::ssd_grad
