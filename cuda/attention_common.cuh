#pragma once
// Device helpers of the attention kernels (cuda/attention_fwd.cu, attention_bwd*.cu,
// attention_decode.cu): shared-memory tiles of bf16 operands, the ldmatrix fragment loads for
// each tile orientation, the split products of f32 operands, and the online-softmax pieces.
//
// Shared tiles are row-major bf16 [rows][kD + 8]: 16 bytes of padding make the row stride an odd
// number of 16-byte units (144 or 272 bytes), so the 8 row addresses of every ldmatrix phase
// fall into distinct bank groups (conflict-free without a swizzle), and so do the 8 rows a
// quarter-warp writes with 16-byte stores. An operand tile of an f32 input is two tiles, hi =
// bf16(x) and lo = bf16(x - hi), kRows · (kD + 8) elements apart; products of split operands are
// hi·hi + hi·lo + lo·hi (three mma.sync, cuda/mma_bf16.cuh).
#include <type_traits>

#include "core/cuda/device_utils.cuh"
#include "cuda/mma_bf16.cuh"

namespace scanline::cuda::attn {

using bf16 = __nv_bfloat16;

inline constexpr float kLog2e = 1.4426950408889634f;
inline constexpr float kLn2 = 0.6931471805599453f;

// bf16 operands are used as they are; f32 operands are split into two bf16 halves.
template <typename T>
inline constexpr int kParts = std::is_same_v<T, float> ? 2 : 1;

// Row stride (elements) of a shared tile of kD columns.
__host__ __device__ constexpr int padded(int cols) { return cols + 8; }

// 2^x with the hardware approximation (ex2.approx.ftz: relative error ~2^-22; 2^-inf = 0).
__device__ __forceinline__ float fast_exp2(float x) {
  float y;
  asm("ex2.approx.ftz.f32 %0, %1;\n" : "=f"(y) : "f"(x));
  return y;
}

// min and max of 64-bit integers (rows left in a tile and similar).
__device__ __forceinline__ int64_t min64(int64_t a, int64_t b) { return a < b ? a : b; }
__device__ __forceinline__ int64_t max64(int64_t a, int64_t b) { return a > b ? a : b; }

// ---- cp.async (16 bytes, global -> shared) ------------------------------------------------------

// Copies 16 bytes, or writes 16 zero bytes when !valid (the source is then not read).
__device__ __forceinline__ void cp_async16(uint32_t smem, const void* gmem, bool valid) {
  asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(smem), "l"(gmem), "r"(valid ? 16 : 0)
               : "memory");
}
__device__ __forceinline__ void cp_async_commit() { asm volatile("cp.async.commit_group;\n" ::: "memory"); }
// Waits until at most kPending of this thread's committed groups are still in flight.
template <int kPending>
__device__ __forceinline__ void cp_async_wait() {
  asm volatile("cp.async.wait_group %0;\n" ::"n"(kPending) : "memory");
}

// ---- ldmatrix on precomputed shared addresses ---------------------------------------------------

__device__ __forceinline__ void ldsm_x4(uint32_t r[4], uint32_t addr) {
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0,%1,%2,%3}, [%4];\n"
               : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
               : "r"(addr));
}
__device__ __forceinline__ void ldsm_x4_trans(uint32_t r[4], uint32_t addr) {
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0,%1,%2,%3}, [%4];\n"
               : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
               : "r"(addr));
}

// Byte offsets, within a tile of row stride ld elements, of the row this lane addresses in an
// ldmatrix x4 (lanes 8i..8i+7 address matrix i; cuda/mma_bf16.cuh has the fragment layouts):
//  lane_off_a:  matrices (rows 0-7, k 0-7), (rows 8-15, k 0-7), (rows 0-7, k 8-15), (rows 8-15, k 8-15)
//               of a tile stored [row][k]: the A operand; with .trans, the B operand of a tile stored
//               [k][n] (matrices (k 0-7, n 0-7), (k 8-15, n 0-7), (k 0-7, n 8-15), (k 8-15, n 8-15)
//               = b[0], b[1] of n-tile 0, then of n-tile 1).
//  lane_off_nk: matrices (n 0-7, k 0-7), (n 0-7, k 8-15), (n 8-15, k 0-7), (n 8-15, k 8-15) of a tile
//               stored [n][k]: the B operands of two n-tiles.
__device__ __forceinline__ uint32_t lane_off_a(int ld) {
  const int lane = int(threadIdx.x & 31), m = lane >> 3, r = lane & 7;
  return uint32_t((((m & 1) * 8 + r) * ld + (m >> 1) * 8) * 2);
}
__device__ __forceinline__ uint32_t lane_off_nk(int ld) {
  const int lane = int(threadIdx.x & 31), m = lane >> 3, r = lane & 7;
  return uint32_t((((m >> 1) * 8 + r) * ld + (m & 1) * 8) * 2);
}

// A (16 x 16) of each part; addr = tile base + lane_off_a + byte offset of (row0, k0).
template <int kParts>
__device__ __forceinline__ void load_a(uint32_t (&a)[kParts][4], uint32_t addr, uint32_t part_bytes) {
#pragma unroll
  for (int p = 0; p < kParts; ++p) ldsm_x4(a[p], addr + p * part_bytes);
}

// B (16 x 8) of n-tiles n0 and n0 + 8 from a tile stored [n][k]; addr = base + lane_off_nk + (n0, k0).
template <int kParts>
__device__ __forceinline__ void load_b_nk(uint32_t (&b)[kParts][4], uint32_t addr, uint32_t part_bytes) {
#pragma unroll
  for (int p = 0; p < kParts; ++p) ldsm_x4(b[p], addr + p * part_bytes);
}

// B (16 x 8) of n-tiles n0 and n0 + 8 from a tile stored [k][n]; addr = base + lane_off_a + (k0, n0).
template <int kParts>
__device__ __forceinline__ void load_b_kn(uint32_t (&b)[kParts][4], uint32_t addr, uint32_t part_bytes) {
#pragma unroll
  for (int p = 0; p < kParts; ++p) ldsm_x4_trans(b[p], addr + p * part_bytes);
}

// c += a·b for n-tile `half` (0 or 1) of a two-n-tile B (registers {2 half, 2 half + 1} of b):
// one mma (bf16) or hi·hi + hi·lo + lo·hi (split f32).
template <int kParts>
__device__ __forceinline__ void mma_parts(float c[4], const uint32_t (&a)[kParts][4], const uint32_t (&b)[kParts][4],
                                          int half) {
  const uint32_t b0[2] = {b[0][2 * half], b[0][2 * half + 1]};
  mma::mma_bf16_16816(c, a[0], b0);
  if constexpr (kParts == 2) {
    const uint32_t b1[2] = {b[1][2 * half], b[1][2 * half + 1]};
    mma::mma_bf16_16816(c, a[0], b1);
    mma::mma_bf16_16816(c, a[1], b0);
  }
}

// Two floats as bf16 hi and lo registers: hi = bf16(v), lo = bf16(v − hi).
__device__ __forceinline__ void split_pack(float v0, float v1, uint32_t& hi, uint32_t& lo) {
  const __nv_bfloat162 h = __floats2bfloat162_rn(v0, v1);
  const float2 back = __bfloat1622float2(h);
  hi = *reinterpret_cast<const uint32_t*>(&h);
  lo = mma::pack_bf16x2(v0 - back.x, v1 - back.y);
}

// The A operand (16 x 16) whose columns 0-7 are the accumulator c0 (an m16n8 tile) and columns
// 8-15 are c1: a[0] = (row g, cols 2q..), a[1] = (row g+8, cols 2q..), a[2], a[3] the same of c1.
template <int kParts>
__device__ __forceinline__ void acc_to_a(uint32_t (&a)[kParts][4], const float c0[4], const float c1[4]) {
  if constexpr (kParts == 1) {
    a[0][0] = mma::pack_bf16x2(c0[0], c0[1]);
    a[0][1] = mma::pack_bf16x2(c0[2], c0[3]);
    a[0][2] = mma::pack_bf16x2(c1[0], c1[1]);
    a[0][3] = mma::pack_bf16x2(c1[2], c1[3]);
  } else {
    split_pack(c0[0], c0[1], a[0][0], a[1][0]);
    split_pack(c0[2], c0[3], a[0][1], a[1][1]);
    split_pack(c1[0], c1[1], a[0][2], a[1][2]);
    split_pack(c1[2], c1[3], a[0][3], a[1][3]);
  }
}

// ---- tiles --------------------------------------------------------------------------------------

// Rows [0, kRows) of a source whose row r starts at src + r·row_stride (kD contiguous values, 16-byte
// aligned) into the shared tile at dst (row stride padded(kD); for f32 the lo tile follows at
// kRows·padded(kD) elements). Rows at or past `valid` become zeros and their source is not read.
// bf16 goes through cp.async (the caller commits and waits); f32 through registers, split into
// hi and lo (visible after the caller's __syncthreads).
template <typename T, int kRows, int kD, int kThreads>
__device__ __forceinline__ void load_tile(bf16* dst, const T* src, int64_t row_stride, int valid) {
  constexpr int kLd = padded(kD);
  constexpr int kPer = 16 / int(sizeof(T));  // elements a 16-byte vector
  constexpr int kVecs = kD / kPer;          // vectors a row
  constexpr int kTotal = kRows * kVecs;
  static_assert(kD % 16 == 0 && kTotal % kThreads == 0, "whole vectors for every thread");
  const int tid = int(threadIdx.x);
  if constexpr (std::is_same_v<T, bf16>) {
    const uint32_t base = mma::smem_address(dst);
#pragma unroll 1  // rolled: the hot kernels must not hold every row's address in registers
    for (int it = 0; it < kTotal / kThreads; ++it) {
      const int idx = it * kThreads + tid, r = idx / kVecs, c = idx % kVecs * kPer;
      const bool in = r < valid;
      cp_async16(base + uint32_t((r * kLd + c) * 2), src + int64_t(in ? r : 0) * row_stride + c, in);
    }
  } else {
    static_assert(std::is_same_v<T, float>, "f32 or bf16 tiles");
    constexpr int kBatch = kTotal / kThreads < 8 ? kTotal / kThreads : 8;  // loads in flight per thread
    static_assert((kTotal / kThreads) % kBatch == 0, "whole batches");
#pragma unroll
    for (int it0 = 0; it0 < kTotal / kThreads; it0 += kBatch) {
      float4 v[kBatch];
#pragma unroll
      for (int u = 0; u < kBatch; ++u) {
        const int idx = (it0 + u) * kThreads + tid, r = idx / kVecs, c = idx % kVecs * kPer;
        v[u] = r < valid ? __ldg(reinterpret_cast<const float4*>(src + int64_t(r) * row_stride + c))
                         : make_float4(0.f, 0.f, 0.f, 0.f);
      }
#pragma unroll
      for (int u = 0; u < kBatch; ++u) {
        const int idx = (it0 + u) * kThreads + tid, r = idx / kVecs, c = idx % kVecs * kPer;
        uint2 h, l;
        split_pack(v[u].x, v[u].y, h.x, l.x);
        split_pack(v[u].z, v[u].w, h.y, l.y);
        *reinterpret_cast<uint2*>(dst + r * kLd + c) = h;
        *reinterpret_cast<uint2*>(dst + kRows * kLd + r * kLd + c) = l;
      }
    }
  }
}

// Writes two output values (columns col, col + 1 of a row) to global memory in T.
__device__ __forceinline__ void store_pair(float* p, float v0, float v1) {
  *reinterpret_cast<float2*>(p) = make_float2(v0, v1);
}
__device__ __forceinline__ void store_pair(bf16* p, float v0, float v1) {
  *reinterpret_cast<__nv_bfloat162*>(p) = __floats2bfloat162_rn(v0, v1);
}

// Max and sum over the 4 lanes of a quad (the lanes holding one accumulator row).
__device__ __forceinline__ float quad_max(float v) {
  v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, 1));
  return fmaxf(v, __shfl_xor_sync(0xffffffffu, v, 2));
}
__device__ __forceinline__ float quad_sum(float v) {
  v += __shfl_xor_sync(0xffffffffu, v, 1);
  return v + __shfl_xor_sync(0xffffffffu, v, 2);
}

// Opts a kernel into more than the default 48 KiB of dynamic shared memory when it needs it.
template <typename Kernel>
void allow_shared_memory(Kernel kernel, size_t bytes) {
  if (bytes > 48 * 1024)
    CUDA_CHECK(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, int(bytes)));
}

}  // namespace scanline::cuda::attn
