// Attention backward (see cuda/attention.h), deterministic: no atomics, every gradient element
// summed by one thread in a fixed order.
//  1. prep (here): per query row, D = rowsum(dO ∘ O) and lse2 = lse · log2(e), padded to whole
//     128-row tiles (D = 0 and lse2 = +inf past L, so padded rows get P = 0);
//  2. dK, dV (cuda/attention_bwd_dkdv.cu): per (64-key tile, kv head, batch row);
//  3. dQ (here): one block of 4 warps per (query tile, head, batch row): bf16 warps own 32 query
//     rows (128-row tiles; 64-key tiles for headdim 64, 32-key tiles for 128), f32 warps 16 rows
//     (64-row tiles, 64-key tiles). Per key tile (double buffered) a warp recomputes S = Q K^T
//     and dP = dO V^T, forms P = exp2(S·scale·log2e − lse2) and dS = P ∘ (dP − D) in registers,
//     and adds dS K (dS straight from the accumulators as the A operand). dQ = scale · Σ dS K.
#include "cuda/attention.h"

#include "cuda/attention_common.cuh"
#include "cuda/attention_launch.h"

namespace scanline::cuda {
namespace {

using namespace attn;

constexpr int kPrepThreads = 256;
constexpr int kDqThreads = 128;

// One row a group of headdim/8 threads (8 elements each), combined with shuffles inside the group.
template <typename T>
__global__ void __launch_bounds__(kPrepThreads)
    attention_bwd_prep_kernel(const T* out, const T* dout, const float* lse, float* lse2, float* delta,
                              int64_t o_batch, int64_t o_row, int64_t o_head, int64_t L, int64_t L_pad, int heads,
                              int headdim, int64_t rows) {
  const int per_row = headdim / 8;
  const int64_t idx = int64_t(blockIdx.x) * kPrepThreads + threadIdx.x;
  const int64_t row = idx / per_row;
  const int sub = int(idx % per_row);
  const int64_t bh = row / L_pad, i = row % L_pad, b = bh / heads, h = bh % heads;
  const bool valid = row < rows && i < L;
  float acc = 0.0f;
  if (valid) {
    const T* o = out + ((b * L + i) * heads + h) * headdim + sub * 8;
    const T* d = dout + b * o_batch + i * o_row + h * o_head + sub * 8;
    if constexpr (std::is_same_v<T, bf16>) {
      const uint4 ov = *reinterpret_cast<const uint4*>(o), dv = *reinterpret_cast<const uint4*>(d);
      const __nv_bfloat162* op = reinterpret_cast<const __nv_bfloat162*>(&ov);
      const __nv_bfloat162* dp = reinterpret_cast<const __nv_bfloat162*>(&dv);
#pragma unroll
      for (int e = 0; e < 4; ++e) {
        const float2 a = __bfloat1622float2(op[e]), c = __bfloat1622float2(dp[e]);
        acc = fmaf(a.x, c.x, acc);
        acc = fmaf(a.y, c.y, acc);
      }
    } else {
#pragma unroll
      for (int e = 0; e < 2; ++e) {
        const float4 a = reinterpret_cast<const float4*>(o)[e], c = reinterpret_cast<const float4*>(d)[e];
        acc = fmaf(a.x, c.x, fmaf(a.y, c.y, fmaf(a.z, c.z, fmaf(a.w, c.w, acc))));
      }
    }
  }
  for (int offset = per_row / 2; offset > 0; offset >>= 1) acc += __shfl_xor_sync(0xffffffffu, acc, offset);
  if (sub == 0 && row < rows) {
    delta[row] = valid ? acc : 0.0f;
    lse2[row] = valid ? lse[bh * L + i] * kLog2e : INFINITY;
  }
}

// dQ tiles: bf16 warps own two m16 tiles (32 query rows: each K/V fragment feeds two products),
// with 64-key tiles for headdim 64 and 32-key tiles for 128 (registers: dQ, S and dP
// accumulators); split f32 operands one m16 tile and 64 keys.
template <typename T>
inline constexpr int kDqMT = kParts<T> == 1 ? 2 : 1;
template <typename T>
inline constexpr int kDqRows = 4 * 16 * kDqMT<T>;  // query rows a block (4 warps)
template <typename T, int kD>
inline constexpr int kDqKeys = kParts<T> == 1 && kD == 128 ? 32 : 64;

template <typename T, int kD>
constexpr size_t dq_smem_bytes() {
  return size_t(kParts<T>) * padded(kD) * (2 * kDqRows<T> + 4 * kDqKeys<T, kD>) * sizeof(bf16);
}

template <typename T, int kD, bool kCausal>
__global__ void __launch_bounds__(kDqThreads) attention_bwd_dq_kernel(const BwdParams<T> p) {
  constexpr int P = kParts<T>;
  constexpr int kLd = padded(kD);
  constexpr int kMT = kDqMT<T>, kWarpRows = 16 * kMT;
  constexpr int kBq = kDqRows<T>, kBk = kDqKeys<T, kD>;
  constexpr int kNT = kBk / 8, kDT = kD / 8, kKS = kD / 16;
  constexpr bool kInRegs = kD == 64 && kMT == 1 && P == 1;  // Q and dO fragments kept in registers
  constexpr uint32_t kQPart = uint32_t(kBq * kLd * 2);
  constexpr uint32_t kKPart = uint32_t(kBk * kLd * 2);
  constexpr uint32_t kBuf = P * kKPart;

  extern __shared__ __align__(16) unsigned char smem_raw[];
  bf16* sQ = reinterpret_cast<bf16*>(smem_raw);
  bf16* sdO = sQ + P * kBq * kLd;
  bf16* sK = sdO + P * kBq * kLd;  // [2][P][kBk][kLd]
  bf16* sV = sK + 2 * P * kBk * kLd;

  const int tid = int(threadIdx.x), warp = tid >> 5, lane = tid & 31, g = lane >> 2, qd = lane & 3;
  const int64_t bh_count = p.batch * p.heads, L = p.L;
  const int n_q_tiles = int((L + kBq - 1) / kBq);
  const int64_t rank = int64_t(blockIdx.x) / bh_count, bh = int64_t(blockIdx.x) % bh_count;
  const int q_tile = kCausal ? n_q_tiles - 1 - int(rank) : int(rank);  // heaviest tiles first
  const int64_t b = bh / p.heads;
  const int h = int(bh % p.heads), kvh = h / p.group;
  const int64_t i0 = int64_t(q_tile) * kBq;
  int n_kv = int((L + kBk - 1) / kBk);
  if (kCausal) n_kv = min(n_kv, int((i0 + kBq - 1) / kBk) + 1);
  const T* k_src = p.k + b * p.k_batch + kvh * p.k_head;
  const T* v_src = p.v + b * p.v_batch + kvh * p.v_head;

  auto load_kv = [&](int tile, int buf) {
    const int64_t j0 = int64_t(tile) * kBk;
    const int valid = int(min64(kBk, L - j0));
    load_tile<T, kBk, kD, kDqThreads>(sK + buf * P * kBk * kLd, k_src + j0 * p.k_row, p.k_row, valid);
    load_tile<T, kBk, kD, kDqThreads>(sV + buf * P * kBk * kLd, v_src + j0 * p.v_row, p.v_row, valid);
  };
  const int q_valid = int(min64(kBq, L - i0));
  load_tile<T, kBq, kD, kDqThreads>(sQ, p.q + b * p.q_batch + h * p.q_head + i0 * p.q_row, p.q_row, q_valid);
  load_tile<T, kBq, kD, kDqThreads>(sdO, p.dout + b * p.o_batch + h * p.o_head + i0 * p.o_row, p.o_row, q_valid);
  load_kv(n_kv - 1, 0);
  cp_async_commit();

  const int64_t row_w = i0 + warp * kWarpRows;  // this warp's first query row
  float lse2[kMT][2], dlt[kMT][2];               // rows g and g + 8 of each m-tile (L_pad covers the tile)
#pragma unroll
  for (int mt = 0; mt < kMT; ++mt)
#pragma unroll
    for (int hf = 0; hf < 2; ++hf) {
      lse2[mt][hf] = p.lse2[bh * p.L_pad + row_w + mt * 16 + g + hf * 8];
      dlt[mt][hf] = p.delta[bh * p.L_pad + row_w + mt * 16 + g + hf * 8];
    }
  const uint32_t q_addr = mma::smem_address(sQ) + lane_off_a(kLd) + uint32_t(warp * kWarpRows * kLd * 2);
  const uint32_t do_addr = mma::smem_address(sdO) + lane_off_a(kLd) + uint32_t(warp * kWarpRows * kLd * 2);
  const uint32_t k_nk = mma::smem_address(sK) + lane_off_nk(kLd);
  const uint32_t v_nk = mma::smem_address(sV) + lane_off_nk(kLd);
  const uint32_t k_kn = mma::smem_address(sK) + lane_off_a(kLd);

  float dq[kMT][kDT][4];
#pragma unroll
  for (int mt = 0; mt < kMT; ++mt)
#pragma unroll
    for (int dn = 0; dn < kDT; ++dn) dq[mt][dn][0] = dq[mt][dn][1] = dq[mt][dn][2] = dq[mt][dn][3] = 0.0f;
  uint32_t qf[kInRegs ? kKS : 1][P][4], dof[kInRegs ? kKS : 1][P][4];

  for (int it = 0; it < n_kv; ++it) {
    const int tile = n_kv - 1 - it, buf = it & 1;
    if (it + 1 < n_kv) {
      load_kv(tile - 1, buf ^ 1);
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
          load_a<P>(qf[ks], q_addr + uint32_t(ks * 32), kQPart);
          load_a<P>(dof[ks], do_addr + uint32_t(ks * 32), kQPart);
        }
      }
    }
    const int64_t j0 = int64_t(tile) * kBk;
    if (row_w < L && !(kCausal && j0 > row_w + kWarpRows - 1)) {
      // S = Q K^T and dP = dO V^T for the warp's rows and the tile's keys.
      float s[kMT][kNT][4], dp[kMT][kNT][4];
#pragma unroll
      for (int mt = 0; mt < kMT; ++mt)
#pragma unroll
        for (int nt = 0; nt < kNT; ++nt)
#pragma unroll
          for (int e = 0; e < 4; ++e) s[mt][nt][e] = dp[mt][nt][e] = 0.0f;
#pragma unroll
      for (int ks = 0; ks < kKS; ++ks) {
        uint32_t a[kMT][P][4], ad[kMT][P][4];
#pragma unroll
        for (int mt = 0; mt < kMT; ++mt) {
          if constexpr (kInRegs) {
#pragma unroll
            for (int part = 0; part < P; ++part)
#pragma unroll
              for (int e = 0; e < 4; ++e) a[mt][part][e] = qf[ks][part][e], ad[mt][part][e] = dof[ks][part][e];
          } else {
            load_a<P>(a[mt], q_addr + uint32_t((mt * 16 * kLd + ks * 16) * 2), kQPart);
            load_a<P>(ad[mt], do_addr + uint32_t((mt * 16 * kLd + ks * 16) * 2), kQPart);
          }
        }
#pragma unroll
        for (int np = 0; np < kNT / 2; ++np) {
          const uint32_t off = buf * kBuf + uint32_t((np * 16 * kLd + ks * 16) * 2);
          uint32_t bk[P][4], bv[P][4];
          load_b_nk<P>(bk, k_nk + off, kKPart);
          load_b_nk<P>(bv, v_nk + off, kKPart);
#pragma unroll
          for (int mt = 0; mt < kMT; ++mt) {
            mma_parts<P>(s[mt][2 * np], a[mt], bk, 0);
            mma_parts<P>(s[mt][2 * np + 1], a[mt], bk, 1);
            mma_parts<P>(dp[mt][2 * np], ad[mt], bv, 0);
            mma_parts<P>(dp[mt][2 * np + 1], ad[mt], bv, 1);
          }
        }
      }
      // P = exp2(S·scale·log2e − lse2) (0 where masked), dS = P ∘ (dP − D), kept in s.
      const bool mask = j0 + kBk > L || (kCausal && j0 + kBk - 1 > row_w);
      // Tile-relative: key c is kept when c < key_end and (causal) c <= row − j0 (>= −31 here).
      const int key_end = int(min64(kBk, L - j0));
      const int diag = int(min64(kBk, row_w - j0)) + g;
#pragma unroll
      for (int mt = 0; mt < kMT; ++mt)
#pragma unroll
        for (int nt = 0; nt < kNT; ++nt)
#pragma unroll
          for (int e = 0; e < 4; ++e) {
            const int hf = e >> 1;
            float pr = fast_exp2(fmaf(s[mt][nt][e], p.scale_log2, -lse2[mt][hf]));
            if (mask) {
              const int col = nt * 8 + 2 * qd + (e & 1);
              if (col >= key_end || (kCausal && col > diag + mt * 16 + hf * 8)) pr = 0.0f;
            }
            s[mt][nt][e] = pr * (dp[mt][nt][e] - dlt[mt][hf]);
          }
      // dQ += dS K.
#pragma unroll
      for (int kk = 0; kk < kBk / 16; ++kk) {
        uint32_t da[kMT][P][4];
#pragma unroll
        for (int mt = 0; mt < kMT; ++mt) acc_to_a<P>(da[mt], s[mt][2 * kk], s[mt][2 * kk + 1]);
#pragma unroll
        for (int dp2 = 0; dp2 < kD / 16; ++dp2) {
          uint32_t bk[P][4];
          load_b_kn<P>(bk, k_kn + buf * kBuf + uint32_t((kk * 16 * kLd + dp2 * 16) * 2), kKPart);
#pragma unroll
          for (int mt = 0; mt < kMT; ++mt) {
            mma_parts<P>(dq[mt][2 * dp2], da[mt], bk, 0);
            mma_parts<P>(dq[mt][2 * dp2 + 1], da[mt], bk, 1);
          }
        }
      }
    }
    __syncthreads();
  }

  T* out = p.dq + (b * L * p.heads + h) * kD;
  const int64_t out_row = int64_t(p.heads) * kD;
#pragma unroll
  for (int mt = 0; mt < kMT; ++mt)
#pragma unroll
    for (int hf = 0; hf < 2; ++hf) {
      const int64_t row = row_w + mt * 16 + g + hf * 8;
      if (row < L) {
#pragma unroll
        for (int dn = 0; dn < kDT; ++dn)
          store_pair(out + row * out_row + dn * 8 + 2 * qd, dq[mt][dn][2 * hf] * p.scale,
                     dq[mt][dn][2 * hf + 1] * p.scale);
      }
    }
}

template <typename T, int kD, bool kCausal>
void launch_dq(const BwdParams<T>& p) {
  auto kernel = attention_bwd_dq_kernel<T, kD, kCausal>;
  const size_t smem = dq_smem_bytes<T, kD>();
  allow_shared_memory(kernel, smem);
  const int64_t blocks = (p.L + kDqRows<T> - 1) / kDqRows<T> * p.batch * p.heads;
  kernel<<<unsigned(blocks), kDqThreads, smem, current_stream()>>>(p);
  CUDA_CHECK_LAUNCH("attention backward dq");
}

}  // namespace

AttentionBackwardResult attention_bwd(const Tensor& q_in, const Tensor& k_in, const Tensor& v_in,
                                      const Tensor& out_in, const Tensor& lse_in, const Tensor& grad_in, bool causal,
                                      double scale, bool need_dq, bool need_dkv) {
  constexpr const char* op = "attention backward";
  const int64_t batch = q_in.shape()[0], L = q_in.shape()[1], heads = q_in.shape()[2], D = q_in.shape()[3];
  const int64_t kv_heads = k_in.shape()[2];
  check_operands(op, {&q_in, &k_in, &v_in, &out_in, &grad_in}, D);
  check_backward_operands(op, q_in, out_in, lse_in, grad_in);
  DeviceGuard guard(q_in.device().index);
  AttentionBackwardResult r;
  if (need_dq) r.dq = empty(q_in.shape(), q_in.options());
  if (need_dkv) {
    r.dk = empty(k_in.shape(), k_in.options());
    r.dv = empty(v_in.shape(), v_in.options());
  }
  if (batch * heads * L == 0 || !(need_dq || need_dkv)) return r;

  const Tensor q = rows_aligned(q_in), k = rows_aligned(k_in), v = rows_aligned(v_in), dout = rows_aligned(grad_in);
  const Tensor out = out_in.is_contiguous() && aligned16(out_in.raw_data())
                         ? out_in
                         : contiguous_copy(out_in, out_in.dtype(), out_in.device());
  const Tensor lse = as_contiguous(lse_in);
  const int64_t L_pad = (L + 127) / 128 * 128;  // whole query tiles of every backward kernel
  check_grid(op, (L_pad / kBwdTile) * batch * heads);
  const TensorOptions f32{.dtype = DType::f32, .device = q.device()};
  const Tensor lse2 = empty({batch, heads, L_pad}, f32), delta = empty({batch, heads, L_pad}, f32);

  auto run = [&]<typename T>() {
    BwdParams<T> p{};
    p.q = data_at<const T>(q);
    p.k = data_at<const T>(k);
    p.v = data_at<const T>(v);
    p.dout = data_at<const T>(dout);
    p.lse2 = data_at<const float>(lse2);
    p.delta = data_at<const float>(delta);
    p.dq = need_dq ? data_at<T>(r.dq) : nullptr;
    p.dk = need_dkv ? data_at<T>(r.dk) : nullptr;
    p.dv = need_dkv ? data_at<T>(r.dv) : nullptr;
    p.q_batch = q.strides()[0], p.q_row = q.strides()[1], p.q_head = q.strides()[2];
    p.k_batch = k.strides()[0], p.k_row = k.strides()[1], p.k_head = k.strides()[2];
    p.v_batch = v.strides()[0], p.v_row = v.strides()[1], p.v_head = v.strides()[2];
    p.o_batch = dout.strides()[0], p.o_row = dout.strides()[1], p.o_head = dout.strides()[2];
    p.L = L, p.L_pad = L_pad, p.batch = batch;
    p.heads = int(heads), p.kv_heads = int(kv_heads), p.group = int(heads / kv_heads);
    p.scale = float(scale);
    p.scale_log2 = float(scale * 1.4426950408889634);

    const int64_t rows = batch * heads * L_pad, per_row = D / 8;
    attention_bwd_prep_kernel<T><<<blocks_for(rows * per_row, kPrepThreads, int64_t(0x7fffffff)), kPrepThreads, 0,
                                   current_stream()>>>(data_at<const T>(out), p.dout, data_at<const float>(lse),
                                                       data_at<float>(lse2), data_at<float>(delta), p.o_batch,
                                                       p.o_row, p.o_head, L, L_pad, int(heads), int(D), rows);
    CUDA_CHECK_LAUNCH("attention backward prep");
    if (need_dkv) launch_bwd_dkdv<T>(p, D, causal);
    if (need_dq) {
      with_headdim(D, [&]<int kD>() {
        if (causal) launch_dq<T, kD, true>(p);
        else launch_dq<T, kD, false>(p);
      });
    }
  };
  if (q.dtype() == DType::f32) run.template operator()<float>();
  else run.template operator()<bf16>();
  return r;
}

}  // namespace scanline::cuda
