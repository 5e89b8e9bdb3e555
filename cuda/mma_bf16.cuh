#pragma once
// Warp-level bf16 tensor-core products (mma.sync m16n8k16, fp32 accumulation) and the ldmatrix
// loads that feed them, for sm_80 and newer. Fragment layouts (PTX ISA, "mma.m16n8k16"), with
// g = lane / 4 and q = lane % 4:
//   A (16 x 16, row-major), 4 registers of 2 bf16: a[0] = A[g][2q..2q+1], a[1] = A[g+8][2q..],
//     a[2] = A[g][2q+8..], a[3] = A[g+8][2q+8..]
//   B (16 x 8, k x n), 2 registers: b[0] = B[2q..2q+1][g], b[1] = B[2q+8..2q+9][g]
//   C/D (16 x 8, fp32), 4 floats: c[0..1] = C[g][2q..2q+1], c[2..3] = C[g+8][2q..2q+1]
// ldmatrix x4 loads four 8x8 bf16 matrices: lanes 8i..8i+7 give the row addresses of matrix i
// (16-byte aligned shared memory); register i then holds matrix i's element [lane/4][2(lane%4)..]
// (or of its transpose with the .trans forms).
#include <cstdint>
#include <cuda_bf16.h>

namespace scanline::cuda::mma {

__device__ __forceinline__ void mma_bf16_16816(float c[4], const uint32_t a[4], const uint32_t b[2]) {
  asm volatile(
      "mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, "
      "{%0,%1,%2,%3};\n"
      : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b[0]), "r"(b[1]));
}

__device__ __forceinline__ uint32_t smem_address(const void* p) {
  return static_cast<uint32_t>(__cvta_generic_to_shared(p));
}

__device__ __forceinline__ void ldmatrix_x4(uint32_t r[4], const void* row) {
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0,%1,%2,%3}, [%4];\n"
               : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
               : "r"(smem_address(row)));
}

__device__ __forceinline__ void ldmatrix_x4_trans(uint32_t r[4], const void* row) {
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0,%1,%2,%3}, [%4];\n"
               : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
               : "r"(smem_address(row)));
}

__device__ __forceinline__ void ldmatrix_x2(uint32_t r[2], const void* row) {
  asm volatile("ldmatrix.sync.aligned.m8n8.x2.shared.b16 {%0,%1}, [%2];\n"
               : "=r"(r[0]), "=r"(r[1])
               : "r"(smem_address(row)));
}

__device__ __forceinline__ void ldmatrix_x2_trans(uint32_t r[2], const void* row) {
  asm volatile("ldmatrix.sync.aligned.m8n8.x2.trans.shared.b16 {%0,%1}, [%2];\n"
               : "=r"(r[0]), "=r"(r[1])
               : "r"(smem_address(row)));
}

// Two floats as one register of bf16 (lo in the low half), rounded to nearest.
__device__ __forceinline__ uint32_t pack_bf16x2(float lo, float hi) {
  const __nv_bfloat162 v = __floats2bfloat162_rn(lo, hi);
  return *reinterpret_cast<const uint32_t*>(&v);
}

// fp32 operands on bf16 tensor cores: x = hi + lo with hi = bf16(x), lo = bf16(x - hi). The
// product hi·hi + hi·lo + lo·hi (three mma) keeps about 16 bits of each operand, well inside
// the 1e-3 relative the fp32-input path is held to (one bf16 product would give ~4e-3).
__device__ __forceinline__ void split_bf16(float x, __nv_bfloat16& hi, __nv_bfloat16& lo) {
  hi = __float2bfloat16_rn(x);
  lo = __float2bfloat16_rn(x - __bfloat162float(hi));
}

}  // namespace scanline::cuda::mma
