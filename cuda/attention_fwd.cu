// Attention forward (see cuda/attention.h): one block per (128-row query tile, head, batch row).
// bf16: 4 warps, warp w owning query rows [32w, 32w + 32) of the tile as two m16 tiles (f32:
// 8 warps of 16 rows, the split operands' fragments taking twice the registers); per 64-key
// tile it computes S = Q K^T (32 x 64: 64 floats a thread), masks the diagonal tiles, updates
// the running row max m and sum l, rescales its O accumulator (32 x headdim: headdim floats a
// thread) and adds P V with P converted in registers to the A operand (bf16, or hi + lo for f32).
// K/V tiles are double buffered (the next tile's cp.async runs under this tile's products).
// Key tiles are visited from the last to the first, so the masked diagonal tiles come first.
#include "cuda/attention.h"

#include "cuda/attention_common.cuh"
#include "cuda/attention_launch.h"

namespace scanline::cuda {
namespace {

using namespace attn;

constexpr int kFwdRows = 128;  // query rows a block
constexpr int kFwdKeys = 64;   // keys a tile
// m16 tiles a warp: two for bf16 (each K/V fragment feeds two products), one for split f32
// operands (whose fragments take twice the registers); 4 or 8 warps cover the 128 rows.
template <typename T>
inline constexpr int kFwdMT = kParts<T> == 1 ? 2 : 1;
template <typename T>
inline constexpr int kFwdThreads = 32 * kFwdRows / (16 * kFwdMT<T>);

template <typename T>
struct FwdParams {
  const T* q;
  const T* k;
  const T* v;
  T* out;      // (batch, L, heads, headdim), contiguous
  float* lse;  // (batch, heads, L)
  int64_t q_batch, q_row, q_head, k_batch, k_row, k_head, v_batch, v_row, v_head;
  int64_t L, batch;
  int heads, group, n_q_tiles;
  float scale_log2;  // scale · log2(e)
};

template <typename T, int kD>
constexpr size_t fwd_smem_bytes() {
  return size_t(kParts<T>) * padded(kD) * (kFwdRows + 4 * kFwdKeys) * sizeof(bf16);
}

template <typename T, int kD, bool kCausal>
__global__ void __launch_bounds__(kFwdThreads<T>) attention_fwd_kernel(const FwdParams<T> p) {
  constexpr int P = kParts<T>;
  constexpr int kLd = padded(kD);
  constexpr int kMT = kFwdMT<T>;        // m16 tiles a warp
  constexpr int kWarpRows = 16 * kMT;
  constexpr int kThreads = kFwdThreads<T>;
  constexpr int kNT = kFwdKeys / 8;     // n8 tiles of S
  constexpr int kDT = kD / 8;           // n8 tiles of O
  constexpr int kKS = kD / 16;          // k16 steps of Q K^T
  constexpr bool kQInRegs = kD == 64 && P == 1;
  constexpr uint32_t kQPart = uint32_t(kFwdRows * kLd * 2);  // bytes between hi and lo tiles
  constexpr uint32_t kKVPart = uint32_t(kFwdKeys * kLd * 2);
  constexpr uint32_t kKVBuf = P * kKVPart;

  extern __shared__ __align__(16) unsigned char smem_raw[];
  bf16* sQ = reinterpret_cast<bf16*>(smem_raw);
  bf16* sK = sQ + P * kFwdRows * kLd;   // [2][P][kFwdKeys][kLd]
  bf16* sV = sK + 2 * P * kFwdKeys * kLd;

  const int tid = int(threadIdx.x), warp = tid >> 5, lane = tid & 31, g = lane >> 2, qd = lane & 3;
  const int64_t bh_count = p.batch * p.heads;
  const int64_t rank = int64_t(blockIdx.x) / bh_count, bh = int64_t(blockIdx.x) % bh_count;
  const int q_tile = kCausal ? p.n_q_tiles - 1 - int(rank) : int(rank);  // heaviest tiles first
  const int64_t b = bh / p.heads;
  const int h = int(bh % p.heads), kvh = h / p.group;
  const int64_t i0 = int64_t(q_tile) * kFwdRows, L = p.L;

  const T* q_src = p.q + b * p.q_batch + h * p.q_head + i0 * p.q_row;
  const T* k_src = p.k + b * p.k_batch + kvh * p.k_head;
  const T* v_src = p.v + b * p.v_batch + kvh * p.v_head;
  int n_kv = int((L + kFwdKeys - 1) / kFwdKeys);
  if (kCausal) n_kv = min(n_kv, int((i0 + kFwdRows - 1) / kFwdKeys) + 1);

  auto load_kv = [&](int tile, int buf) {
    const int64_t j0 = int64_t(tile) * kFwdKeys;
    const int valid = int(min64(kFwdKeys, L - j0));
    load_tile<T, kFwdKeys, kD, kThreads>(sK + buf * P * kFwdKeys * kLd, k_src + j0 * p.k_row, p.k_row, valid);
    load_tile<T, kFwdKeys, kD, kThreads>(sV + buf * P * kFwdKeys * kLd, v_src + j0 * p.v_row, p.v_row, valid);
  };
  load_tile<T, kFwdRows, kD, kThreads>(sQ, q_src, p.q_row, int(min64(kFwdRows, L - i0)));
  load_kv(n_kv - 1, 0);
  cp_async_commit();

  // Per-lane ldmatrix addresses.
  const uint32_t q_addr = mma::smem_address(sQ) + lane_off_a(kLd) + uint32_t(warp * kWarpRows * kLd * 2);
  const uint32_t k_addr = mma::smem_address(sK) + lane_off_nk(kLd);
  const uint32_t v_addr = mma::smem_address(sV) + lane_off_a(kLd);

  float o[kMT][kDT][4];
  float m[kMT][2], l[kMT][2];
#pragma unroll
  for (int mt = 0; mt < kMT; ++mt) {
#pragma unroll
    for (int dn = 0; dn < kDT; ++dn) o[mt][dn][0] = o[mt][dn][1] = o[mt][dn][2] = o[mt][dn][3] = 0.0f;
    m[mt][0] = m[mt][1] = -INFINITY;
    l[mt][0] = l[mt][1] = 0.0f;
  }
  uint32_t qf[kQInRegs ? kMT : 1][kQInRegs ? kKS : 1][P][4];

  const int64_t row_w = i0 + warp * kWarpRows;  // this warp's first query row
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
    if constexpr (kQInRegs) {
      if (it == 0) {
#pragma unroll
        for (int mt = 0; mt < kMT; ++mt)
#pragma unroll
          for (int ks = 0; ks < kKS; ++ks) load_a<P>(qf[mt][ks], q_addr + uint32_t((mt * 16 * kLd + ks * 16) * 2), kQPart);
      }
    }
    const int64_t j0 = int64_t(tile) * kFwdKeys;
    const bool active = row_w < L && !(kCausal && j0 > row_w + kWarpRows - 1);  // warp-uniform
    if (active) {
      // S = Q K^T for the warp's rows and the tile's 64 keys.
      float s[kMT][kNT][4];
#pragma unroll
      for (int mt = 0; mt < kMT; ++mt)
#pragma unroll
        for (int nt = 0; nt < kNT; ++nt) s[mt][nt][0] = s[mt][nt][1] = s[mt][nt][2] = s[mt][nt][3] = 0.0f;
      const uint32_t kb = k_addr + buf * kKVBuf;
#pragma unroll
      for (int ks = 0; ks < kKS; ++ks) {
        uint32_t a[kMT][P][4];
#pragma unroll
        for (int mt = 0; mt < kMT; ++mt) {
          if constexpr (kQInRegs) {
#pragma unroll
            for (int part = 0; part < P; ++part)
#pragma unroll
              for (int e = 0; e < 4; ++e) a[mt][part][e] = qf[mt][ks][part][e];
          } else {
            load_a<P>(a[mt], q_addr + uint32_t((mt * 16 * kLd + ks * 16) * 2), kQPart);
          }
        }
#pragma unroll
        for (int np = 0; np < kNT / 2; ++np) {
          uint32_t bk[P][4];
          load_b_nk<P>(bk, kb + uint32_t((np * 16 * kLd + ks * 16) * 2), kKVPart);
#pragma unroll
          for (int mt = 0; mt < kMT; ++mt) {
            mma_parts<P>(s[mt][2 * np], a[mt], bk, 0);
            mma_parts<P>(s[mt][2 * np + 1], a[mt], bk, 1);
          }
        }
      }
      // Mask keys past L and, on diagonal tiles, keys after the query.
      const bool mask = j0 + kFwdKeys > L || (kCausal && j0 + kFwdKeys - 1 > row_w);
      if (mask) {
        // In tile-relative columns: key c is kept when c < key_end and (causal) c <= row − j0.
        const int key_end = int(min64(kFwdKeys, L - j0));
        // row_w + g − j0: at least −31 for an active warp; clamped above (no causal mask past 64).
        const int diag = int(min64(kFwdKeys, row_w - j0)) + g;
#pragma unroll
        for (int mt = 0; mt < kMT; ++mt)
#pragma unroll
          for (int nt = 0; nt < kNT; ++nt)
#pragma unroll
            for (int e = 0; e < 4; ++e) {
              const int col = nt * 8 + 2 * qd + (e & 1);
              if (col >= key_end || (kCausal && col > diag + mt * 16 + (e >> 1) * 8)) s[mt][nt][e] = -INFINITY;
            }
      }
      // Online softmax: new row max (in log2 units of the scaled scores), rescale O and l.
#pragma unroll
      for (int mt = 0; mt < kMT; ++mt)
#pragma unroll
        for (int hf = 0; hf < 2; ++hf) {
          float mx = -INFINITY;
#pragma unroll
          for (int nt = 0; nt < kNT; ++nt) mx = fmaxf(mx, fmaxf(s[mt][nt][2 * hf], s[mt][nt][2 * hf + 1]));
          const float m_new = fmaxf(m[mt][hf], quad_max(mx) * p.scale_log2);
          const float base = m_new == -INFINITY ? 0.0f : m_new;
          const float corr = fast_exp2(m[mt][hf] - base);
          m[mt][hf] = m_new;
          float sum = 0.0f;
#pragma unroll
          for (int nt = 0; nt < kNT; ++nt)
#pragma unroll
            for (int e = 2 * hf; e < 2 * hf + 2; ++e) {
              s[mt][nt][e] = fast_exp2(fmaf(s[mt][nt][e], p.scale_log2, -base));
              sum += s[mt][nt][e];
            }
          l[mt][hf] = l[mt][hf] * corr + sum;
#pragma unroll
          for (int dn = 0; dn < kDT; ++dn) {
            o[mt][dn][2 * hf] *= corr;
            o[mt][dn][2 * hf + 1] *= corr;
          }
        }
      // O += P V, P (16 x 64 a m-tile) straight from the accumulators.
      const uint32_t vb = v_addr + buf * kKVBuf;
#pragma unroll
      for (int kk = 0; kk < kFwdKeys / 16; ++kk) {
        uint32_t pa[kMT][P][4];
#pragma unroll
        for (int mt = 0; mt < kMT; ++mt) acc_to_a<P>(pa[mt], s[mt][2 * kk], s[mt][2 * kk + 1]);
#pragma unroll
        for (int dp = 0; dp < kD / 16; ++dp) {
          uint32_t bv[P][4];
          load_b_kn<P>(bv, vb + uint32_t((kk * 16 * kLd + dp * 16) * 2), kKVPart);
#pragma unroll
          for (int mt = 0; mt < kMT; ++mt) {
            mma_parts<P>(o[mt][2 * dp], pa[mt], bv, 0);
            mma_parts<P>(o[mt][2 * dp + 1], pa[mt], bv, 1);
          }
        }
      }
    }
    __syncthreads();  // every warp is done with `buf` before the next iteration's load refills it
  }

  // Epilogue: O / l and the log-sum-exp (natural log) of each row.
  const int64_t out_row = int64_t(p.heads) * kD;
  T* out = p.out + (b * L * p.heads + h) * kD;
  float* lse = p.lse + bh * L;
#pragma unroll
  for (int mt = 0; mt < kMT; ++mt)
#pragma unroll
    for (int hf = 0; hf < 2; ++hf) {
      const float total = quad_sum(l[mt][hf]);
      const float inv = total > 0.0f ? 1.0f / total : 0.0f;
#pragma unroll
      for (int dn = 0; dn < kDT; ++dn) {
        o[mt][dn][2 * hf] *= inv;
        o[mt][dn][2 * hf + 1] *= inv;
      }
      const int64_t row = row_w + mt * 16 + g + hf * 8;
      if (qd == 0 && row < L) lse[row] = (m[mt][hf] + __log2f(total)) * kLn2;
    }
  if constexpr (std::is_same_v<T, bf16>) {
    // Through the warp's own rows of sQ (read by no other warp) for 16-byte row stores.
    bf16* stage = sQ + warp * kWarpRows * kLd;
    __syncwarp();
#pragma unroll
    for (int mt = 0; mt < kMT; ++mt)
#pragma unroll
      for (int dn = 0; dn < kDT; ++dn)
#pragma unroll
        for (int hf = 0; hf < 2; ++hf)
          *reinterpret_cast<__nv_bfloat162*>(stage + (mt * 16 + g + hf * 8) * kLd + dn * 8 + 2 * qd) =
              __floats2bfloat162_rn(o[mt][dn][2 * hf], o[mt][dn][2 * hf + 1]);
    __syncwarp();
    constexpr int kVecs = kD / 8;
#pragma unroll
    for (int idx = lane; idx < kWarpRows * kVecs; idx += 32) {
      const int r = idx / kVecs, c = idx % kVecs * 8;
      if (row_w + r < L)
        *reinterpret_cast<uint4*>(out + (row_w + r) * out_row + c) =
            *reinterpret_cast<const uint4*>(stage + r * kLd + c);
    }
  } else {
#pragma unroll
    for (int mt = 0; mt < kMT; ++mt)
#pragma unroll
      for (int hf = 0; hf < 2; ++hf) {
        const int64_t row = row_w + mt * 16 + g + hf * 8;
        if (row < L) {
#pragma unroll
          for (int dn = 0; dn < kDT; ++dn)
            store_pair(out + row * out_row + dn * 8 + 2 * qd, o[mt][dn][2 * hf], o[mt][dn][2 * hf + 1]);
        }
      }
  }
}

template <typename T, int kD, bool kCausal>
void launch_fwd(const FwdParams<T>& p) {
  auto kernel = attention_fwd_kernel<T, kD, kCausal>;
  const size_t smem = fwd_smem_bytes<T, kD>();
  allow_shared_memory(kernel, smem);
  const int64_t blocks = int64_t(p.n_q_tiles) * p.batch * p.heads;
  kernel<<<unsigned(blocks), kFwdThreads<T>, smem, current_stream()>>>(p);
  CUDA_CHECK_LAUNCH("attention forward");
}

}  // namespace

AttentionForwardResult attention_fwd(const Tensor& q_in, const Tensor& k_in, const Tensor& v_in, bool causal,
                                     double scale) {
  constexpr const char* op = "attention";
  const int64_t batch = q_in.shape()[0], L = q_in.shape()[1], heads = q_in.shape()[2], D = q_in.shape()[3];
  check_operands(op, {&q_in, &k_in, &v_in}, D);
  DeviceGuard guard(q_in.device().index);
  const int64_t kv_heads = k_in.shape()[2];
  AttentionForwardResult r;
  r.out = empty(q_in.shape(), q_in.options());
  r.lse = empty({batch, heads, L}, {.dtype = DType::f32, .device = q_in.device()});
  if (batch * heads * L == 0) return r;
  const Tensor q = rows_aligned(q_in), k = rows_aligned(k_in), v = rows_aligned(v_in);
  const int64_t n_q_tiles = (L + kFwdRows - 1) / kFwdRows;
  check_grid(op, n_q_tiles * batch * heads);

  auto run = [&]<typename T>() {
    FwdParams<T> p{};
    p.q = data_at<const T>(q);
    p.k = data_at<const T>(k);
    p.v = data_at<const T>(v);
    p.out = data_at<T>(r.out);
    p.lse = data_at<float>(r.lse);
    p.q_batch = q.strides()[0], p.q_row = q.strides()[1], p.q_head = q.strides()[2];
    p.k_batch = k.strides()[0], p.k_row = k.strides()[1], p.k_head = k.strides()[2];
    p.v_batch = v.strides()[0], p.v_row = v.strides()[1], p.v_head = v.strides()[2];
    p.L = L, p.batch = batch;
    p.heads = int(heads), p.group = int(heads / kv_heads), p.n_q_tiles = int(n_q_tiles);
    p.scale_log2 = float(scale * 1.4426950408889634);
    with_headdim(D, [&]<int kD>() {
      if (causal) launch_fwd<T, kD, true>(p);
      else launch_fwd<T, kD, false>(p);
    });
  };
  if (q.dtype() == DType::f32) run.template operator()<float>();
  else run.template operator()<bf16>();
  return r;
}

}  // namespace scanline::cuda
