// SSD backward, pass 4: everything indexed by a source step j of a chunk (see cuda/ssd_bwd.cu).
// A block owns one time tile J (64 steps) of one chunk, one group and a tile of that group's
// heads; warp w owns steps j = 16w .. 16w + 15 of the tile. Per head h, with Dout the gradient of
// the state leaving the chunk, a the cumulative log-decay (a_last at the chunk's last step):
//   dxs_j = exp(a_last − a_j) Dout·B_j + Σ_{i>=j} (C_i·B_j) exp(a_i − a_j) dy_i    (d loss / d (Δ_j x_j))
//   dx_j = Δ_j dxs_j + D dy_j,   ddir_j = x_j·dxs_j (dΔ_j's direct part),
//   w_j = Δ_j x_j·(exp(a_last − a_j) Dout·B_j),
//   dB_j += Δ_j [exp(a_last − a_j) x_jᵀ Dout + Σ_{i>=j} exp(a_i − a_j) (dy_i·x_j) C_i]   (over the heads),
//   rowsum_i += Σ_{j in J} T_ij with T_ij = (C_i·B_j) exp(a_i − a_j) Δ_j (dy_i·x_j)   (for i >= j),
//   tcol_j = Σ_{i>=j} T_ij   (from the same f32 values, so that the two cancel in the suffix sums
//   of d loss / d a exactly as they do in exact arithmetic; x_j·dxs_j has bf16-rounded operands),
//   dD partial: Σ_{j in J} dy_j ⊙ x_j.
// Products on tensor cores, each a warp's 16-row strip:
//   state terms  dxs = B_J·Doutᵀ (K = N), x_J·Dout (K = P), once per head;
//   per tile I >= J: CBᵀ = B_J·C_Iᵀ (K = N), Mᵀ = x_J·dy_Iᵀ (K = P), both 16 x 64 in registers, decayed
//   and masked there, then dxs += (CBᵀ∘E)·dy_I and dB += (Mᵀ∘E∘Δ)·C_I (K = 64) with the decayed tiles
//   as A operands straight from the accumulators.
// The sums of T over the strip's rows are reduce-scattered over the warp and summed over the 4
// warps in shared memory, in a fixed order, into this block's slot of `rowpart` (one writer a
// value); its sums over columns stay in registers (a quad reduction at the end of the head). dB
// sums over the block's heads in fragment-private shared memory accumulators.
#include "cuda/ssd_bwd_common.cuh"

namespace scanline::cuda::ssd_grad {
namespace {

// Shared memory: floats first (dB accumulators, the head's a2 and Δ, two reduction scratches),
// then the bf16 tiles; Dout (used only by the state terms) shares its space with the pair tiles.
template <bool kS, bool kYS, int P, int N>
struct DxSmem {
  static constexpr int kFloats = kRows * N + 2 * kMaxChunk + kWarps * kRows + kWarps * P;
  static constexpr int kTiles = tile_elems(kS, kRows, N) + tile_elems(kS, kRows, P);
  static constexpr int kPair = tile_elems(kS, kRows, N) + tile_elems(kYS, kRows, P);
  static constexpr int kDout = tile_elems(kS, P, N);
  static constexpr int kUnion = kPair > kDout ? kPair : kDout;
  static constexpr size_t kBytes = size_t(kFloats) * 4 + size_t(kTiles + kUnion) * 2;
  static_assert(kFloats % 4 == 0, "the tiles start 16-byte aligned");
};

template <typename T>
__device__ __forceinline__ float2 load2(const T* p) {
  if constexpr (std::is_same_v<T, float>) return make_float2(p[0], p[1]);
  else return make_float2(__bfloat162float(p[0]), __bfloat162float(p[1]));
}

template <typename T>
__device__ __forceinline__ void store2(T* p, float a, float b) {
  if constexpr (std::is_same_v<T, float>) {
    p[0] = a;
    p[1] = b;
  } else {
    p[0] = __float2bfloat16_rn(a);
    p[1] = __float2bfloat16_rn(b);
  }
}

template <typename T, typename TY, int P, int N>
__global__ void __launch_bounds__(kThreads) ssd_bwd_dx_kernel(const DxParams<T, TY> p) {
  constexpr bool kS = kSplit<T>, kYS = kSplit<TY>;
  constexpr int NTP = P / 8, NTN = N / 8, kChunkN = NTN < 8 ? NTN : 8;
  extern __shared__ __align__(16) unsigned char smem[];
  float4* acc_dB = reinterpret_cast<float4*>(smem);  // kRows · N floats, fragment-private slots
  float* s_a2 = reinterpret_cast<float*>(smem) + kRows * N;
  float* s_delta = s_a2 + kMaxChunk;
  float* s_colsum = s_delta + kMaxChunk;  // [kWarps][64]
  float* s_dD = s_colsum + kWarps * kRows;  // [kWarps][P]
  bf16* cursor = reinterpret_cast<bf16*>(s_dD + kWarps * P);
  const STile<kS> sB = carve<kS>(cursor, kRows, N);
  const STile<kS> sX = carve<kS>(cursor, kRows, P);
  bf16* pair_cursor = cursor;
  const STile<kS> sD = carve<kS>(cursor, P, N);
  const STile<kS> sC = carve<kS>(pair_cursor, kRows, N);
  const STile<kYS> sY = carve<kYS>(pair_cursor, kRows, P);

  const Dims& d = p.d;
  const int tid = int(threadIdx.x), warp = tid >> 5, lane = tid & 31, g = lane >> 2, q = lane & 3;
  // Blocks of tile 0 (the most pairs) first.
  const int64_t rest = d.batch * d.n_chunks * d.groups * d.head_tiles;
  const int J = int(int64_t(blockIdx.x) / rest);
  int64_t idx = int64_t(blockIdx.x) % rest;
  const int64_t ht = idx % d.head_tiles;
  idx /= d.head_tiles;
  const int64_t grp = idx % d.groups;
  idx /= d.groups;
  const int64_t c = idx % d.n_chunks, b = idx / d.n_chunks;
  const int len = int(min(d.Q, d.L - c * d.Q));
  const int j0 = J * kRows;
  const int64_t t0 = c * d.Q;
  const int64_t h_begin = grp * d.per_group + ht * d.heads_per_tile;
  const int64_t h_end = min(h_begin + d.heads_per_tile, (grp + 1) * d.per_group);
  if (j0 >= len) {  // a tile past the end of a short last chunk: only its dD partials (zeros)
    if (p.dD_part)
      for (int64_t h = h_begin; h < h_end; ++h)
        for (int k = tid; k < P; k += kThreads)
          p.dD_part[(((b * d.n_chunks + c) * d.heads + h) * d.tiles + J) * P + k] = 0.0f;
    return;
  }
  const int valid_j = min(kRows, len - j0);
  const int rl0 = 16 * warp + g, rl1 = rl0 + 8;  // this lane's rows of the tile
  const int jr0 = j0 + rl0, jr1 = j0 + rl1;      // ... and of the chunk

  stage<kS, kRows, N, kThreads>(sB, p.B.at(b, t0 + j0, grp), p.B.st, valid_j, p.B.vec);
  if (p.need_B) {
    const float4 zero4 = make_float4(0.0f, 0.0f, 0.0f, 0.0f);
    for (int nt = 0; nt < NTN; ++nt) acc_dB[(warp * NTN + nt) * 32 + lane] = zero4;
  }

  for (int64_t h = h_begin; h < h_end; ++h) {
    const int64_t r = (b * d.n_chunks + c) * d.heads + h;
    __syncthreads();  // the previous head is done with sX, s_a2, s_delta, the union and s_dD
    stage<kS, kRows, P, kThreads>(sX, p.x.at(b, t0 + j0, h), p.x.st, valid_j, p.x.vec);
    stage<kS, P, N, kThreads>(sD, p.dout + r * P * N, N, P, p.dout_vec);
    for (int k = tid; k < d.Q; k += kThreads) {
      s_a2[k] = p.a2[r * d.Q + k];
      s_delta[k] = p.delta[r * d.Q + k];
    }
    stage_wait();
    __syncthreads();
    const float a2_last = s_a2[d.Q - 1];
    const float a2j0 = s_a2[jr0], a2j1 = s_a2[jr1], dl0 = s_delta[jr0], dl1 = s_delta[jr1];
    const float e0 = exp2_approx(a2_last - a2j0), e1 = exp2_approx(a2_last - a2j1);  // exp(a_last − a_j)

    // The state terms. dB: exp(a_last − a_j) Δ_j x_jᵀ Dout (Dout read as [k = p][n]).
    if (p.need_B) {
#pragma unroll
      for (int n0 = 0; n0 < NTN; n0 += kChunkN) {
        float part[kChunkN][4];
        zero(part);
        gemm_smem<kS, kS, kChunkN, P / 16, false>(part, sX, 16 * warp, sD, 8 * n0);
        scale_rows(part, e0 * dl0, e1 * dl1);
        add_to_shared(acc_dB, part, n0, NTN);
      }
    }
    // dxs: exp(a_last − a_j) B_j·Doutᵀ (Dout read as [n = p][k = state]).
    float dxs[NTP][4];
    zero(dxs);
    gemm_smem<kS, kS, NTP, N / 16, true>(dxs, sB, 16 * warp, sD, 0);
    scale_rows(dxs, e0, e1);
    if (p.w) {
      const float2 s = row_dot<kS, NTP>(dxs, sX, 16 * warp);
      if (q == 0) {
        if (jr0 < len) p.w[r * d.Q + jr0] = dl0 * s.x;
        if (jr1 < len) p.w[r * d.Q + jr1] = dl1 * s.y;
      }
    }
    __syncthreads();  // everyone is done with Dout: the union now holds C_I and dy_I

    float tcol0 = 0.0f, tcol1 = 0.0f;  // Σ_i T_ij of this lane's columns for rows j = jr0, jr1

    for (int I = J; I < d.tiles && I * kRows < len; ++I) {
      const int i0 = I * kRows, valid_i = min(kRows, len - i0);
      stage<kS, kRows, N, kThreads>(sC, p.C.at(b, t0 + i0, grp), p.C.st, valid_i, p.C.vec);
      stage<kYS, kRows, P, kThreads>(sY, p.dy.at(b, t0 + i0, h), p.dy.st, valid_i, p.dy.vec);
      stage_wait();
      __syncthreads();
      float cb[8][4], m[8][4];  // rows j of the strip, columns i of tile I
      zero(cb);
      zero(m);
      gemm_smem<kS, kS, 8, N / 16, true>(cb, sB, 16 * warp, sC, 0);  // C_i·B_j
      gemm_smem<kS, kYS, 8, P / 16, true>(m, sX, 16 * warp, sY, 0);  // dy_i·x_j
      // Decay and causal mask; T_ij = (C_i·B_j) e_ij Δ_j (dy_i·x_j) summed over the lane's two rows
      // for the row sums; Δ_j into the dB operand.
      const bool diagonal = I == J;
      float t_rows[16];
#pragma unroll
      for (int nt = 0; nt < 8; ++nt)
#pragma unroll
        for (int e = 0; e < 4; ++e) {
          const int col = 8 * nt + 2 * q + (e & 1), row = e < 2 ? rl0 : rl1;
          const float a2j = e < 2 ? a2j0 : a2j1, dl = e < 2 ? dl0 : dl1;
          const float f = !diagonal || col >= row ? exp2_approx(s_a2[i0 + col] - a2j) : 0.0f;
          cb[nt][e] *= f;
          const float t = cb[nt][e] * m[nt][e] * dl;
          if (e < 2) {
            t_rows[2 * nt + e] = t;
            tcol0 += t;
          } else {
            t_rows[2 * nt + e - 2] += t;
            tcol1 += t;
          }
          m[nt][e] *= f * dl;
        }
      if (p.rowpart) {
        const float2 cs = column_sums(t_rows);
        *reinterpret_cast<float2*>(s_colsum + warp * kRows + 8 * g + 2 * q) = cs;
      }
      Frag a_cb[4], a_m[4];
      to_operand<kS>(cb, a_cb);
      to_operand<kS>(m, a_m);
      gemm_reg<kS, kYS, NTP, 4>(dxs, a_cb, sY, 0);  // dy_I read as [k = i][n = p]
      if (p.need_B) {
#pragma unroll
        for (int n0 = 0; n0 < NTN; n0 += kChunkN) {
          float part[kChunkN][4];
          zero(part);
          gemm_reg<kS, kS, kChunkN, 4>(part, a_m, sC, 8 * n0);  // C_I read as [k = i][n]
          add_to_shared(acc_dB, part, n0, NTN);
        }
      }
      __syncthreads();  // C_I, dy_I read; s_colsum complete
      if (p.rowpart && tid < kRows)
        p.rowpart[(r * d.tiles + J) * d.Q + i0 + tid] =
            ((s_colsum[tid] + s_colsum[kRows + tid]) + s_colsum[2 * kRows + tid]) + s_colsum[3 * kRows + tid];
    }

    // The head's per-step outputs: tcol, ddir, dx (+ D dy), and the dD partial sums.
    if (p.tcol) {
      tcol0 += __shfl_xor_sync(0xffffffffu, tcol0, 1);
      tcol1 += __shfl_xor_sync(0xffffffffu, tcol1, 1);
      tcol0 += __shfl_xor_sync(0xffffffffu, tcol0, 2);
      tcol1 += __shfl_xor_sync(0xffffffffu, tcol1, 2);
      if (q == 0) {
        if (jr0 < len) p.tcol[r * d.Q + jr0] = tcol0;
        if (jr1 < len) p.tcol[r * d.Q + jr1] = tcol1;
      }
    }
    if (p.ddir) {
      const float2 s = row_dot<kS, NTP>(dxs, sX, 16 * warp);
      if (q == 0) {
        if (jr0 < len) p.ddir[r * d.Q + jr0] = s.x;
        if (jr1 < len) p.ddir[r * d.Q + jr1] = s.y;
      }
    }
    if (p.dx || p.dD_part) {
      float dD_col[NTP][2];
#pragma unroll
      for (int nt = 0; nt < NTP; ++nt) dD_col[nt][0] = dD_col[nt][1] = 0.0f;
#pragma unroll
      for (int half = 0; half < 2; ++half) {
        const int jr = half ? jr1 : jr0;
        if (jr >= len) continue;
        const float dl = half ? dl1 : dl0;
        const TY* dy_row = p.dy.at(b, t0 + jr, h);
        const T* x_row = p.x.at(b, t0 + jr, h);
        T* dx_row = p.dx ? p.dx + ((b * d.L + t0 + jr) * d.heads + h) * P : nullptr;
#pragma unroll
        for (int nt = 0; nt < NTP; ++nt) {
          const int col = 8 * nt + 2 * q;
          const float2 dy = load2(dy_row + col);
          if (dx_row) {
            float D0 = 0.0f, D1 = 0.0f;
            if (p.D) {
              D0 = p.D_per_channel ? p.D[h * P + col] : p.D[h];
              D1 = p.D_per_channel ? p.D[h * P + col + 1] : D0;
            }
            store2(dx_row + col, dl * dxs[nt][2 * half] + D0 * dy.x, dl * dxs[nt][2 * half + 1] + D1 * dy.y);
          }
          if (p.dD_part) {
            const float2 xv = load2(x_row + col);
            dD_col[nt][0] += dy.x * xv.x;
            dD_col[nt][1] += dy.y * xv.y;
          }
        }
      }
      if (p.dD_part) {  // column sums over the strip's rows (lanes of equal q), then over the warps
#pragma unroll
        for (int nt = 0; nt < NTP; ++nt)
#pragma unroll
          for (int e = 0; e < 2; ++e) {
            float v = dD_col[nt][e];
            v += __shfl_xor_sync(0xffffffffu, v, 4);
            v += __shfl_xor_sync(0xffffffffu, v, 8);
            v += __shfl_xor_sync(0xffffffffu, v, 16);
            if (g == 0) s_dD[warp * P + 8 * nt + 2 * q + e] = v;
          }
        __syncthreads();
        for (int k = tid; k < P; k += kThreads)
          p.dD_part[(r * d.tiles + J) * P + k] = ((s_dD[k] + s_dD[P + k]) + s_dD[2 * P + k]) + s_dD[3 * P + k];
      }
    }
  }

  if (p.need_B) {
    if (p.dB)
      write_slots(acc_dB, NTN, p.dB + ((b * d.L + t0 + j0) * d.groups + grp) * N, d.groups * N, valid_j);
    else
      write_slots(acc_dB, NTN, p.dB_part + (((b * d.groups + grp) * d.head_tiles + ht) * d.n_chunks * d.Q + t0 + j0) * N,
                  int64_t(N), kRows);
  }
}

}  // namespace

template <typename T, typename TY>
void launch_dx(const DxParams<T, TY>& p, int64_t P, int64_t N, cudaStream_t stream) {
  const int64_t blocks = p.d.batch * p.d.n_chunks * p.d.groups * p.d.head_tiles * p.d.tiles;
  SCANLINE_CHECK(blocks <= int64_t(0x7fffffff), "ssd backward: ", blocks, " blocks exceed the CUDA grid limit");
  if (blocks == 0) return;
  dispatch_shape(P, N, [&]<int kP, int kN>() {
    const size_t smem = DxSmem<kSplit<T>, kSplit<TY>, kP, kN>::kBytes;
    auto kernel = ssd_bwd_dx_kernel<T, TY, kP, kN>;
    allow_shared_memory(kernel, smem);
    kernel<<<unsigned(blocks), kThreads, smem, stream>>>(p);
    CUDA_CHECK_LAUNCH("ssd backward dx");
  });
}

template void launch_dx<float, float>(const DxParams<float, float>&, int64_t, int64_t, cudaStream_t);
template void launch_dx<bf16, bf16>(const DxParams<bf16, bf16>&, int64_t, int64_t, cudaStream_t);
template void launch_dx<bf16, float>(const DxParams<bf16, float>&, int64_t, int64_t, cudaStream_t);

}  // namespace scanline::cuda::ssd_grad
