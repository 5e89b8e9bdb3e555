// SSD backward, pass 2 (see cuda/ssd_bwd.cu): per (batch, chunk, head) the gate's backward and
// the chunk's own contribution to the gradient of the state entering it,
//   dy = grad_y·silu(z),  dz = grad_y·y_ungated·silu'(z),  G_c = Σ_i exp(a_i) dy_i ⊗ C_i  (P x N).
// A block of P/16 warps walks the chunk in tiles of 64 steps: it stages exp(a_i)·dy_i (computing
// the gate on the way and writing dy, in f32, and dz, each element once) and C_i as bf16 tiles (dy
// split into hi and lo when it is f32), and warp w accumulates rows 16w .. 16w + 15 of G on tensor
// cores (A = the dy tile read transposed).
#include "cuda/ssd_bwd_common.cuh"

namespace scanline::cuda::ssd_grad {
namespace {

template <bool kS, bool kYS, int P, int N>
struct GateSmem {
  static constexpr size_t kBytes = size_t(tile_elems(kYS, kRows, P) + tile_elems(kS, kRows, N)) * 2;
};

template <typename T, typename TY, int P, int N>
__global__ void __launch_bounds__(2 * P) ssd_bwd_gate_kernel(const GateParams<T, TY> p) {
  constexpr bool kS = kSplit<T>, kYS = kSplit<TY>;
  constexpr int NTN = N / 8, kVecs = P / 8;
  static_assert(kRows * kVecs % (2 * P) == 0 && kRows * kVecs / (2 * P) % 2 == 0, "whole batches a thread");
  extern __shared__ __align__(16) unsigned char smem[];
  bf16* cursor = reinterpret_cast<bf16*>(smem);
  const STile<kYS> sY = carve<kYS>(cursor, kRows, P);
  const STile<kS> sC = carve<kS>(cursor, kRows, N);

  const Dims& d = p.d;
  const int tid = int(threadIdx.x), warp = tid >> 5, lane = tid & 31, g = lane >> 2, q = lane & 3;
  const int64_t r = blockIdx.x;  // (b · n_chunks + c) · heads + h
  const int64_t h = r % d.heads, c = r / d.heads % d.n_chunks, b = r / (d.heads * d.n_chunks);
  const int64_t grp = h / d.per_group, t0 = c * d.Q;
  const int len = int(min(d.Q, d.L - t0));
  const bool gate = p.z.ptr != nullptr, want_dz = gate && p.dz != nullptr;

  float acc[NTN][4];
  zero(acc);
  for (int k0 = 0; k0 < len; k0 += kRows) {
    const int valid = min(kRows, len - k0);
    __syncthreads();  // the previous tile's products are done with sY and sC
    stage<kS, kRows, N, 2 * P>(sC, p.C.at(b, t0 + k0, grp), p.C.st, valid, p.C.vec);  // in flight meanwhile
    // The dy tile, with the gate on the way: the loads of kBatch rows' vectors are issued before
    // any is used (kRows · P/8 vectors over 2P threads: 4 a thread).
    constexpr int kIters = kRows * kVecs / (2 * P), kBatch = 2;
    const int stid = opaque(tid);
#pragma unroll
    for (int it0 = 0; it0 < kIters; it0 += kBatch) {
      float v[kBatch][8], zv[kBatch][8], yv[kBatch][8];
#pragma unroll
      for (int k = 0; k < kBatch; ++k) {
        const int idx = stid + (it0 + k) * 2 * P, row = idx / kVecs, col = idx % kVecs * 8;
#pragma unroll
        for (int e = 0; e < 8; ++e) v[k][e] = zv[k][e] = yv[k][e] = 0.0f;
        if (row < valid) {
          const int64_t t = t0 + k0 + row;
          load8(p.gy.at(b, t, h) + col, p.gy.vec, v[k]);
          if (gate) load8(p.z.at(b, t, h) + col, p.z.vec, zv[k]);
          if (want_dz) load8(p.y_ungated.at(b, t, h) + col, p.y_ungated.vec, yv[k]);
        }
      }
#pragma unroll
      for (int k = 0; k < kBatch; ++k) {
        const int idx = stid + (it0 + k) * 2 * P, row = idx / kVecs, col = idx % kVecs * 8;
        if (row < valid) {
          const int64_t t = t0 + k0 + row;
          if (gate) {
            float dz[8];
#pragma unroll
            for (int e = 0; e < 8; ++e) {
              const float s = sigmoid_f(zv[k][e]);
              dz[e] = v[k][e] * yv[k][e] * s * (1.0f + zv[k][e] * (1.0f - s));
              v[k][e] *= zv[k][e] * s;
            }
            const int64_t at = ((b * d.L + t) * d.heads + h) * P + col;
            store8(p.dy + at, v[k]);
            if (want_dz) store8(p.dz + at, dz);
          }
          const float decay = exp2_approx(p.a2[r * d.Q + k0 + row]);
#pragma unroll
          for (int e = 0; e < 8; ++e) v[k][e] *= decay;
        }
        put8(sY, row, col, v[k]);
      }
    }
    stage_wait();
    __syncthreads();
#pragma unroll
    for (int ks = 0; ks < kRows / 16; ++ks) {
      const Frag a = load_a_trans(sY, 16 * ks, 16 * warp);  // A[p][i] = tile[i][p]
#pragma unroll
      for (int np = 0; np < NTN / 2; ++np)
        mma_pair<kYS, kS>(acc[2 * np], acc[2 * np + 1], a, load_b_kn(sC, 16 * ks, 16 * np));
    }
  }

  T* out = p.G + r * P * N;
  const int p0 = 16 * warp + g;
#pragma unroll
  for (int nt = 0; nt < NTN; ++nt) {
    const int col = 8 * nt + 2 * q;
    if constexpr (std::is_same_v<T, float>) {
      *reinterpret_cast<float2*>(out + p0 * N + col) = make_float2(acc[nt][0], acc[nt][1]);
      *reinterpret_cast<float2*>(out + (p0 + 8) * N + col) = make_float2(acc[nt][2], acc[nt][3]);
    } else {
      *reinterpret_cast<__nv_bfloat162*>(out + p0 * N + col) = __floats2bfloat162_rn(acc[nt][0], acc[nt][1]);
      *reinterpret_cast<__nv_bfloat162*>(out + (p0 + 8) * N + col) = __floats2bfloat162_rn(acc[nt][2], acc[nt][3]);
    }
  }
}

}  // namespace

template <typename T, typename TY>
void launch_gate(const GateParams<T, TY>& p, int64_t P, int64_t N, cudaStream_t stream) {
  const int64_t blocks = p.d.chunk_rows();
  SCANLINE_CHECK(blocks <= int64_t(0x7fffffff), "ssd backward: ", blocks, " blocks exceed the CUDA grid limit");
  if (blocks == 0) return;
  dispatch_shape(P, N, [&]<int kP, int kN>() {
    const size_t smem = GateSmem<kSplit<T>, kSplit<TY>, kP, kN>::kBytes;
    auto kernel = ssd_bwd_gate_kernel<T, TY, kP, kN>;
    allow_shared_memory(kernel, smem);
    kernel<<<unsigned(blocks), 2 * kP, smem, stream>>>(p);
    CUDA_CHECK_LAUNCH("ssd backward gate");
  });
}

template void launch_gate<float, float>(const GateParams<float, float>&, int64_t, int64_t, cudaStream_t);
template void launch_gate<bf16, bf16>(const GateParams<bf16, bf16>&, int64_t, int64_t, cudaStream_t);
template void launch_gate<bf16, float>(const GateParams<bf16, float>&, int64_t, int64_t, cudaStream_t);

}  // namespace scanline::cuda::ssd_grad
