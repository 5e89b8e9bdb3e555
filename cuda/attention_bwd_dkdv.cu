// Attention backward, dK and dV (see cuda/attention.h and cuda/attention_bwd.cu): one block of 4
// warps per (64-key tile, kv head, batch row), warp w owning keys [16w, 16w + 16) of the tile.
// The block walks, in a fixed order, every query head of the kv head's group and, for each, the
// 64-row query tiles that can see its keys (all of them, or from the diagonal on when causal),
// with the Q / dO / lse2 / D tiles double buffered. Per query tile a warp recomputes, transposed,
//   S^T = K Q^T,  P^T = exp2(S^T·scale·log2e − lse2),  dP^T = V dO^T,  dS^T = P^T ∘ (dP^T − D)
// and accumulates dV += P^T dO and dK += dS^T Q in registers (P^T and dS^T go from the
// accumulators straight to the A operand). The group's heads are summed inside the block, so dK
// and dV are written once, without partial buffers or atomics. dK = scale · Σ dS^T Q.
#include "cuda/attention.h"

#include "cuda/attention_common.cuh"
#include "cuda/attention_launch.h"

namespace scanline::cuda::attn {
namespace {

constexpr int kDkvThreads = 128;

template <typename T, int kD>
constexpr size_t dkdv_smem_bytes() {
  return size_t(kParts<T>) * padded(kD) * 6 * kBwdTile * sizeof(bf16) + 4 * kBwdTile * sizeof(float);
}

template <typename T, int kD, bool kCausal>
__global__ void __launch_bounds__(kDkvThreads) attention_bwd_dkdv_kernel(const BwdParams<T> p) {
  constexpr int P = kParts<T>;
  constexpr int kLd = padded(kD);
  constexpr int kT = kBwdTile;
  constexpr int kNT = kT / 8, kDT = kD / 8, kKS = kD / 16;
  constexpr bool kInRegs = kD == 64 && P == 1;  // K and V fragments kept in registers
  constexpr uint32_t kPart = uint32_t(kT * kLd * 2);
  constexpr uint32_t kBuf = P * kPart;

  extern __shared__ __align__(16) unsigned char smem_raw[];
  bf16* sK = reinterpret_cast<bf16*>(smem_raw);
  bf16* sV = sK + P * kT * kLd;
  bf16* sQ = sV + P * kT * kLd;       // [2][P][kT][kLd]
  bf16* sdO = sQ + 2 * P * kT * kLd;  // [2][P][kT][kLd]
  float* sL = reinterpret_cast<float*>(sdO + 2 * P * kT * kLd);  // [2][kT] lse2
  float* sD = sL + 2 * kT;                                        // [2][kT] D

  const int tid = int(threadIdx.x), warp = tid >> 5, lane = tid & 31, g = lane >> 2, qd = lane & 3;
  const int n_tiles = int((p.L + kT - 1) / kT);
  const int64_t bk_count = p.batch * p.kv_heads;
  const int key_tile = int(int64_t(blockIdx.x) / bk_count);  // causal: the heaviest (first) tiles first
  const int64_t bk = int64_t(blockIdx.x) % bk_count, b = bk / p.kv_heads;
  const int kvh = int(bk % p.kv_heads);
  const int64_t j0 = int64_t(key_tile) * kT, L = p.L;
  const int m_start = kCausal ? key_tile : 0;
  const int per_head = n_tiles - m_start, n_it = p.group * per_head;

  const int k_valid = int(min64(kT, L - j0));
  load_tile<T, kT, kD, kDkvThreads>(sK, p.k + b * p.k_batch + kvh * p.k_head + j0 * p.k_row, p.k_row, k_valid);
  load_tile<T, kT, kD, kDkvThreads>(sV, p.v + b * p.v_batch + kvh * p.v_head + j0 * p.v_row, p.v_row, k_valid);
  // Query tile `it` of the walk: head kvh·group + it / per_head, tile m_start + it % per_head.
  auto load_q = [&](int it, int buf) {
    const int h = kvh * p.group + it / per_head;
    const int64_t i0 = int64_t(m_start + it % per_head) * kT;
    const int valid = int(min64(kT, L - i0));
    load_tile<T, kT, kD, kDkvThreads>(sQ + buf * P * kT * kLd, p.q + b * p.q_batch + h * p.q_head + i0 * p.q_row,
                                      p.q_row, valid);
    load_tile<T, kT, kD, kDkvThreads>(sdO + buf * P * kT * kLd,
                                      p.dout + b * p.o_batch + h * p.o_head + i0 * p.o_row, p.o_row, valid);
    // lse2 and D of the tile's rows: 16 vectors of 4 floats each (rows past L are padding).
    if (tid < 32) {
      const int64_t row0 = (b * p.heads + h) * p.L_pad + i0 + (tid & 15) * 4;
      const float* src = tid < 16 ? p.lse2 + row0 : p.delta + row0;
      float* dst = (tid < 16 ? sL : sD) + buf * kT + (tid & 15) * 4;
      cp_async16(mma::smem_address(dst), src, true);
    }
  };
  load_q(0, 0);
  cp_async_commit();

  const int64_t key_w = j0 + warp * 16;  // this warp's first key
  const uint32_t k_addr = mma::smem_address(sK) + lane_off_a(kLd) + uint32_t(warp * 16 * kLd * 2);
  const uint32_t v_addr = mma::smem_address(sV) + lane_off_a(kLd) + uint32_t(warp * 16 * kLd * 2);
  const uint32_t q_nk = mma::smem_address(sQ) + lane_off_nk(kLd);
  const uint32_t do_nk = mma::smem_address(sdO) + lane_off_nk(kLd);
  const uint32_t q_kn = mma::smem_address(sQ) + lane_off_a(kLd);
  const uint32_t do_kn = mma::smem_address(sdO) + lane_off_a(kLd);

  float dk[kDT][4], dv[kDT][4];
#pragma unroll
  for (int dn = 0; dn < kDT; ++dn)
#pragma unroll
    for (int e = 0; e < 4; ++e) dk[dn][e] = dv[dn][e] = 0.0f;
  uint32_t kf[kInRegs ? kKS : 1][P][4], vf[kInRegs ? kKS : 1][P][4];

  for (int it = 0; it < n_it; ++it) {
    const int buf = it & 1;
    if (it + 1 < n_it) {
      load_q(it + 1, buf ^ 1);
      cp_async_commit();
      cp_async_wait<1>();
    } else {
      cp_async_wait<0>();
    }
    __syncthreads();
    if constexpr (kInRegs) {
      if (it == 0) {
#pragma unroll
        for (int ks = 0; ks < kKS; ++ks) {
          load_a<P>(kf[ks], k_addr + uint32_t(ks * 32), kPart);
          load_a<P>(vf[ks], v_addr + uint32_t(ks * 32), kPart);
        }
      }
    }
    const int64_t i0 = int64_t(m_start + it % per_head) * kT;
    if (key_w < L && !(kCausal && key_w > i0 + kT - 1)) {
      // S^T = K Q^T and dP^T = V dO^T: 16 keys x 64 queries each.
      float s[kNT][4], dp[kNT][4];
#pragma unroll
      for (int nt = 0; nt < kNT; ++nt)
#pragma unroll
        for (int e = 0; e < 4; ++e) s[nt][e] = dp[nt][e] = 0.0f;
#pragma unroll
      for (int ks = 0; ks < kKS; ++ks) {
        uint32_t a[P][4], av[P][4];
        if constexpr (kInRegs) {
#pragma unroll
          for (int part = 0; part < P; ++part)
#pragma unroll
            for (int e = 0; e < 4; ++e) a[part][e] = kf[ks][part][e], av[part][e] = vf[ks][part][e];
        } else {
          load_a<P>(a, k_addr + uint32_t(ks * 32), kPart);
          load_a<P>(av, v_addr + uint32_t(ks * 32), kPart);
        }
#pragma unroll
        for (int np = 0; np < kNT / 2; ++np) {
          const uint32_t off = buf * kBuf + uint32_t((np * 16 * kLd + ks * 16) * 2);
          uint32_t bq[P][4], bo[P][4];
          load_b_nk<P>(bq, q_nk + off, kPart);
          load_b_nk<P>(bo, do_nk + off, kPart);
          mma_parts<P>(s[2 * np], a, bq, 0);
          mma_parts<P>(s[2 * np + 1], a, bq, 1);
          mma_parts<P>(dp[2 * np], av, bo, 0);
          mma_parts<P>(dp[2 * np + 1], av, bo, 1);
        }
      }
      // P^T (0 where the query precedes the key; padded query rows have lse2 = +inf), into s;
      // dS^T = P^T ∘ (dP^T − D) into dp.
      const bool mask = kCausal && key_w + 15 > i0;
      const float* lrow = sL + buf * kT;
      const float* drow = sD + buf * kT;
#pragma unroll
      for (int nt = 0; nt < kNT; ++nt) {
        const int col = nt * 8 + 2 * qd;
        const float2 l2 = *reinterpret_cast<const float2*>(lrow + col);
        const float2 d2 = *reinterpret_cast<const float2*>(drow + col);
#pragma unroll
        for (int e = 0; e < 4; ++e) {
          float pr = fast_exp2(fmaf(s[nt][e], p.scale_log2, -((e & 1) ? l2.y : l2.x)));
          if (mask) {
            const int64_t key = key_w + g + (e >> 1) * 8, query = i0 + col + (e & 1);
            if (query < key) pr = 0.0f;
          }
          s[nt][e] = pr;
          dp[nt][e] = pr * (dp[nt][e] - ((e & 1) ? d2.y : d2.x));
        }
      }
      // dV += P^T dO and dK += dS^T Q, over the tile's 64 queries.
#pragma unroll
      for (int kk = 0; kk < kT / 16; ++kk) {
        uint32_t pa[P][4], da[P][4];
        acc_to_a<P>(pa, s[2 * kk], s[2 * kk + 1]);
        acc_to_a<P>(da, dp[2 * kk], dp[2 * kk + 1]);
#pragma unroll
        for (int dn2 = 0; dn2 < kD / 16; ++dn2) {
          const uint32_t off = buf * kBuf + uint32_t((kk * 16 * kLd + dn2 * 16) * 2);
          uint32_t bo[P][4], bq[P][4];
          load_b_kn<P>(bo, do_kn + off, kPart);
          load_b_kn<P>(bq, q_kn + off, kPart);
          mma_parts<P>(dv[2 * dn2], pa, bo, 0);
          mma_parts<P>(dv[2 * dn2 + 1], pa, bo, 1);
          mma_parts<P>(dk[2 * dn2], da, bq, 0);
          mma_parts<P>(dk[2 * dn2 + 1], da, bq, 1);
        }
      }
    }
    __syncthreads();
  }

  const int64_t out_row = int64_t(p.kv_heads) * kD;
  T* dk_out = p.dk + (b * L * p.kv_heads + kvh) * kD;
  T* dv_out = p.dv + (b * L * p.kv_heads + kvh) * kD;
#pragma unroll
  for (int hf = 0; hf < 2; ++hf) {
    const int64_t key = key_w + g + hf * 8;
    if (key < L) {
#pragma unroll
      for (int dn = 0; dn < kDT; ++dn) {
        store_pair(dk_out + key * out_row + dn * 8 + 2 * qd, dk[dn][2 * hf] * p.scale, dk[dn][2 * hf + 1] * p.scale);
        store_pair(dv_out + key * out_row + dn * 8 + 2 * qd, dv[dn][2 * hf], dv[dn][2 * hf + 1]);
      }
    }
  }
}

template <typename T, int kD, bool kCausal>
void launch_dkdv(const BwdParams<T>& p) {
  auto kernel = attention_bwd_dkdv_kernel<T, kD, kCausal>;
  const size_t smem = dkdv_smem_bytes<T, kD>();
  allow_shared_memory(kernel, smem);
  const int64_t blocks = (p.L + kBwdTile - 1) / kBwdTile * p.batch * p.kv_heads;
  kernel<<<unsigned(blocks), kDkvThreads, smem, current_stream()>>>(p);
  CUDA_CHECK_LAUNCH("attention backward dk dv");
}

}  // namespace

template <typename T>
void launch_bwd_dkdv(const BwdParams<T>& p, int64_t headdim, bool causal) {
  with_headdim(headdim, [&]<int kD>() {
    if (causal) launch_dkdv<T, kD, true>(p);
    else launch_dkdv<T, kD, false>(p);
  });
}

template void launch_bwd_dkdv<float>(const BwdParams<float>&, int64_t, bool);
template void launch_bwd_dkdv<bf16>(const BwdParams<bf16>&, int64_t, bool);

}  // namespace scanline::cuda::attn
