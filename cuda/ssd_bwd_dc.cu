// SSD backward, pass 5: everything indexed by an output step i of a chunk (see cuda/ssd_bwd.cu).
// A block owns one time tile I (64 steps) of one chunk, one group and a tile of that group's
// heads; warp w owns steps i = 16w .. 16w + 15 of the tile. Per head h, with H_c the state
// entering the chunk and a the cumulative log-decay:
//   s_i = exp(a_i) dy_i·H_c                          (the incoming state's part of dC_i)
//   ginc_i = C_i·s_i                                 (its part of d loss / d a_i)
//   dC_i += s_i + Σ_{j<=i} exp(a_i − a_j) Δ_j (dy_i·x_j) B_j   (over the heads)
// Products on tensor cores, each a warp's 16-row strip: dy_I·H_c (K = P) once per head; per tile
// J <= I, M = dy_I·x_Jᵀ (K = P, 16 x 64 in registers), decayed and masked there, then
// dC += (M∘E∘Δ)·B_J (K = 64) with the decayed tile as the A operand straight from the
// accumulators. A head's dC strip stays in registers over its tiles J and is added to
// fragment-private shared memory accumulators once per head (the sum over the block's heads).
#include "cuda/ssd_bwd_common.cuh"

namespace scanline::cuda::ssd_grad {
namespace {

// Shared memory: floats first (dC accumulators, the head's a2 and Δ), then the bf16 tiles; H_c
// (used only by the incoming-state term) shares its space with the pair tiles x_J and B_J. H_c is
// split into hi and lo on both paths: its term is the incoming state's part of d loss / d a, whose
// sums over a chunk (dA, d dt_bias) are ill-conditioned enough that a bf16 H_c alone moves dA by
// about 1%.
template <bool kS, bool kYS, int P, int N>
struct DcSmem {
  static constexpr int kFloats = kRows * N + 2 * kMaxChunk;
  static constexpr int kTiles = tile_elems(kS, kRows, N) + tile_elems(kYS, kRows, P);
  static constexpr int kPair = tile_elems(kS, kRows, P) + tile_elems(kS, kRows, N);
  static constexpr int kState = tile_elems(true, P, N);
  static constexpr int kUnion = kPair > kState ? kPair : kState;
  static constexpr size_t kBytes = size_t(kFloats) * 4 + size_t(kTiles + kUnion) * 2;
  static_assert(kFloats % 4 == 0, "the tiles start 16-byte aligned");
};

template <typename T, typename TY, int P, int N>
__global__ void __launch_bounds__(kThreads) ssd_bwd_dc_kernel(const DcParams<T, TY> p) {
  constexpr bool kS = kSplit<T>, kYS = kSplit<TY>;
  constexpr int NTN = N / 8;
  extern __shared__ __align__(16) unsigned char smem[];
  float4* acc_dC = reinterpret_cast<float4*>(smem);  // kRows · N floats, fragment-private slots
  float* s_a2 = reinterpret_cast<float*>(smem) + kRows * N;
  float* s_delta = s_a2 + kMaxChunk;
  bf16* cursor = reinterpret_cast<bf16*>(s_delta + kMaxChunk);
  const STile<kS> sC = carve<kS>(cursor, kRows, N);
  const STile<kYS> sY = carve<kYS>(cursor, kRows, P);
  bf16* pair_cursor = cursor;
  const STile<true> sH = carve<true>(cursor, P, N);
  const STile<kS> sX = carve<kS>(pair_cursor, kRows, P);
  const STile<kS> sB = carve<kS>(pair_cursor, kRows, N);

  const Dims& d = p.d;
  const int tid = int(threadIdx.x), warp = tid >> 5, lane = tid & 31, g = lane >> 2, q = lane & 3;
  // Blocks of the last tile (the most pairs) first.
  const int64_t rest = d.batch * d.n_chunks * d.groups * d.head_tiles;
  const int I = int(d.tiles - 1 - int64_t(blockIdx.x) / rest);
  int64_t idx = int64_t(blockIdx.x) % rest;
  const int64_t ht = idx % d.head_tiles;
  idx /= d.head_tiles;
  const int64_t grp = idx % d.groups;
  idx /= d.groups;
  const int64_t c = idx % d.n_chunks, b = idx / d.n_chunks;
  const int len = int(min(d.Q, d.L - c * d.Q));
  const int i0 = I * kRows;
  if (i0 >= len) return;  // past the end of a short last chunk: nothing to write
  const int valid_i = min(kRows, len - i0);
  const int64_t t0 = c * d.Q;
  const int64_t h_begin = grp * d.per_group + ht * d.heads_per_tile;
  const int64_t h_end = min(h_begin + d.heads_per_tile, (grp + 1) * d.per_group);
  const int rl0 = 16 * warp + g, rl1 = rl0 + 8;  // this lane's rows of the tile
  const int ir0 = i0 + rl0, ir1 = i0 + rl1;      // ... and of the chunk

  stage<kS, kRows, N, kThreads>(sC, p.C.at(b, t0 + i0, grp), p.C.st, valid_i, p.C.vec);
  if (p.need_C) {
    const float4 zero4 = make_float4(0.0f, 0.0f, 0.0f, 0.0f);
    for (int nt = 0; nt < NTN; ++nt) acc_dC[(warp * NTN + nt) * 32 + lane] = zero4;
  }

  for (int64_t h = h_begin; h < h_end; ++h) {
    const int64_t r = (b * d.n_chunks + c) * d.heads + h;
    __syncthreads();  // the previous head is done with sY, s_a2, s_delta and the union
    stage<kYS, kRows, P, kThreads>(sY, p.dy.at(b, t0 + i0, h), p.dy.st, valid_i, p.dy.vec);
    stage<true, P, N, kThreads>(sH, p.states + r * P * N, N, P, p.states_vec);
    for (int k = tid; k < d.Q; k += kThreads) {
      s_a2[k] = p.a2[r * d.Q + k];
      s_delta[k] = p.delta[r * d.Q + k];
    }
    stage_wait();
    __syncthreads();
    const float a2i0 = s_a2[ir0], a2i1 = s_a2[ir1];

    // The incoming state's term, exp(a_i) dy_i·H_c (H_c read as [k = p][n]).
    float acc[NTN][4];
    zero(acc);
    gemm_smem<kYS, true, NTN, P / 16, false>(acc, sY, 16 * warp, sH, 0);
    scale_rows(acc, exp2_approx(a2i0), exp2_approx(a2i1));
    if (p.ginc) {
      const float2 s = row_dot<kS, NTN>(acc, sC, 16 * warp);
      if (q == 0) {
        if (ir0 < len) p.ginc[r * d.Q + ir0] = s.x;
        if (ir1 < len) p.ginc[r * d.Q + ir1] = s.y;
      }
    }
    if (!p.need_C) continue;
    __syncthreads();  // everyone is done with H_c: the union now holds x_J and B_J

    for (int J = 0; J <= I; ++J) {
      const int j0 = J * kRows, valid_j = min(kRows, len - j0);
      stage<kS, kRows, P, kThreads>(sX, p.x.at(b, t0 + j0, h), p.x.st, valid_j, p.x.vec);
      stage<kS, kRows, N, kThreads>(sB, p.B.at(b, t0 + j0, grp), p.B.st, valid_j, p.B.vec);
      stage_wait();
      __syncthreads();
      float m[8][4];  // rows i of the strip, columns j of tile J
      zero(m);
      gemm_smem<kYS, kS, 8, P / 16, true>(m, sY, 16 * warp, sX, 0);  // dy_i·x_j
      const bool diagonal = I == J;
#pragma unroll
      for (int nt = 0; nt < 8; ++nt)
#pragma unroll
        for (int e = 0; e < 4; ++e) {
          const int col = 8 * nt + 2 * q + (e & 1), row = e < 2 ? rl0 : rl1;
          const float a2i = e < 2 ? a2i0 : a2i1;
          m[nt][e] *= !diagonal || col <= row ? exp2_approx(a2i - s_a2[j0 + col]) * s_delta[j0 + col] : 0.0f;
        }
      Frag a_m[4];
      to_operand<kS>(m, a_m);
      gemm_reg<kS, kS, NTN, 4>(acc, a_m, sB, 0);  // B_J read as [k = j][n]
      __syncthreads();  // x_J, B_J read before the next tile's staging
    }
    add_to_shared(acc_dC, acc, 0, NTN);
  }

  if (p.need_C) {
    if (p.dC)
      write_slots(acc_dC, NTN, p.dC + ((b * d.L + t0 + i0) * d.groups + grp) * N, d.groups * N, valid_i);
    else
      write_slots(acc_dC, NTN, p.dC_part + (((b * d.groups + grp) * d.head_tiles + ht) * d.n_chunks * d.Q + t0 + i0) * N,
                  int64_t(N), kRows);
  }
}

}  // namespace

template <typename T, typename TY>
void launch_dc(const DcParams<T, TY>& p, int64_t P, int64_t N, cudaStream_t stream) {
  const int64_t blocks = p.d.batch * p.d.n_chunks * p.d.groups * p.d.head_tiles * p.d.tiles;
  SCANLINE_CHECK(blocks <= int64_t(0x7fffffff), "ssd backward: ", blocks, " blocks exceed the CUDA grid limit");
  if (blocks == 0) return;
  dispatch_shape(P, N, [&]<int kP, int kN>() {
    const size_t smem = DcSmem<kSplit<T>, kSplit<TY>, kP, kN>::kBytes;
    auto kernel = ssd_bwd_dc_kernel<T, TY, kP, kN>;
    allow_shared_memory(kernel, smem);
    kernel<<<unsigned(blocks), kThreads, smem, stream>>>(p);
    CUDA_CHECK_LAUNCH("ssd backward dC");
  });
}

template void launch_dc<float, float>(const DcParams<float, float>&, int64_t, int64_t, cudaStream_t);
template void launch_dc<bf16, bf16>(const DcParams<bf16, bf16>&, int64_t, int64_t, cudaStream_t);
template void launch_dc<bf16, float>(const DcParams<bf16, float>&, int64_t, int64_t, cudaStream_t);

}  // namespace scanline::cuda::ssd_grad
