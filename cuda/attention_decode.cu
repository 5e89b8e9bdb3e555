// One-token attention against a KV cache (see ops/attention_decode.h), flash-decoding style:
//  1. split: one block of 4 warps per (split of the cache length, group of up to 16 query heads
//     sharing a kv head, kv head, batch row). The group's queries are the 16 rows of one m16 tile
//     (kept in registers), 64-key K/V tiles are double buffered in shared memory, and warp w
//     takes keys [16w, 16w + 16) of each tile with its own online softmax; the 4 warps' partial
//     results are merged through shared memory and the split's normalized output and log2
//     log-sum-exp go to a workspace;
//  2. combine: per (batch row, head), the splits merged with weights 2^(lse_s − max lse).
// The number of splits fills the GPU about twice whatever the batch and kv heads; a split past
// a row's length writes an empty result (lse = −inf). Deterministic (fixed splits and orders).
#include "cuda/attention.h"

#include <algorithm>
#include <vector>

#include "cuda/attention_common.cuh"
#include "cuda/attention_launch.h"

namespace scanline::cuda {
namespace {

using namespace attn;

constexpr int kDecThreads = 128;
constexpr int kDecKeys = 64;   // keys a tile
constexpr int kDecRows = 16;   // query heads a block

template <typename T>
struct DecodeParams {
  const T* q;
  const T* k;
  const T* v;
  const void* lengths;  // (batch) i32 or i64
  bool lengths_i64;
  float* o_part;        // (batch, heads, splits, headdim) f32
  float* lse_part;      // (batch, heads, splits) f32, log2 units
  int64_t q_batch, q_head, k_batch, k_row, k_head, v_batch, v_row, v_head;
  int64_t max_len, chunk;  // chunk: keys a split, a multiple of kDecKeys
  int64_t batch;
  int heads, kv_heads, group, head_tiles, splits;
  float scale_log2;
};

template <typename T, int kD>
constexpr size_t decode_smem_bytes() {
  return size_t(kParts<T>) * padded(kD) * (kDecRows + 4 * kDecKeys) * sizeof(bf16);
}

template <typename T, int kD>
__global__ void __launch_bounds__(kDecThreads) attention_decode_split_kernel(const DecodeParams<T> p) {
  constexpr int P = kParts<T>;
  constexpr int kLd = padded(kD);
  constexpr int kDT = kD / 8, kKS = kD / 16;
  constexpr uint32_t kQPart = uint32_t(kDecRows * kLd * 2);
  constexpr uint32_t kKVPart = uint32_t(kDecKeys * kLd * 2);
  constexpr uint32_t kKVBuf = P * kKVPart;
  static_assert(size_t(4) * kDecRows * (kD + 2) * sizeof(float) <= size_t(4) * P * kDecKeys * kLd * sizeof(bf16),
                "the warps' partial results fit where the K/V tiles were");

  extern __shared__ __align__(16) unsigned char smem_raw[];
  bf16* sQ = reinterpret_cast<bf16*>(smem_raw);
  bf16* sK = sQ + P * kDecRows * kLd;  // [2][P][kDecKeys][kLd]
  bf16* sV = sK + 2 * P * kDecKeys * kLd;

  const int tid = int(threadIdx.x), warp = tid >> 5, lane = tid & 31, g = lane >> 2, qd = lane & 3;
  int64_t idx = blockIdx.x;
  const int split = int(idx % p.splits);
  idx /= p.splits;
  const int head_tile = int(idx % p.head_tiles);
  idx /= p.head_tiles;
  const int kvh = int(idx % p.kv_heads);
  const int64_t b = idx / p.kv_heads;
  const int h0 = kvh * p.group + head_tile * kDecRows;            // first query head of the block
  const int n_rows = min(kDecRows, p.group - head_tile * kDecRows);  // valid query heads

  int64_t len = p.lengths_i64 ? static_cast<const int64_t*>(p.lengths)[b]
                              : int64_t(static_cast<const int32_t*>(p.lengths)[b]);
  len = max64(0, min64(len, p.max_len));
  const int64_t start = int64_t(split) * p.chunk, end = min64(len, start + p.chunk);
  const int64_t part_row = (b * p.heads + h0) * p.splits + split;  // (batch, head h0, split)

  if (start >= end) {  // nothing of this row's cache in the split
    for (int i = tid; i < n_rows * kD; i += kDecThreads)
      p.o_part[(part_row + int64_t(i / kD) * p.splits) * kD + i % kD] = 0.0f;
    if (tid < n_rows) p.lse_part[part_row + int64_t(tid) * p.splits] = -INFINITY;
    return;
  }

  const T* k_src = p.k + b * p.k_batch + kvh * p.k_head;
  const T* v_src = p.v + b * p.v_batch + kvh * p.v_head;
  const int n_tiles = int((end - start + kDecKeys - 1) / kDecKeys);
  auto load_kv = [&](int tile, int buf) {
    const int64_t j0 = start + int64_t(tile) * kDecKeys;
    const int valid = int(min64(kDecKeys, end - j0));
    load_tile<T, kDecKeys, kD, kDecThreads>(sK + buf * P * kDecKeys * kLd, k_src + j0 * p.k_row, p.k_row, valid);
    load_tile<T, kDecKeys, kD, kDecThreads>(sV + buf * P * kDecKeys * kLd, v_src + j0 * p.v_row, p.v_row, valid);
  };
  load_tile<T, kDecRows, kD, kDecThreads>(sQ, p.q + b * p.q_batch + h0 * p.q_head, p.q_head, n_rows);
  load_kv(0, 0);
  cp_async_commit();

  const uint32_t q_addr = mma::smem_address(sQ) + lane_off_a(kLd);
  const uint32_t k_addr = mma::smem_address(sK) + lane_off_nk(kLd) + uint32_t(warp * 16 * kLd * 2);
  const uint32_t v_addr = mma::smem_address(sV) + lane_off_a(kLd) + uint32_t(warp * 16 * kLd * 2);

  uint32_t qf[kKS][P][4];
  float o[kDT][4];
  float m[2] = {-INFINITY, -INFINITY}, l[2] = {0.0f, 0.0f};
#pragma unroll
  for (int dn = 0; dn < kDT; ++dn) o[dn][0] = o[dn][1] = o[dn][2] = o[dn][3] = 0.0f;

  for (int it = 0; it < n_tiles; ++it) {
    const int buf = it & 1;
    if (it + 1 < n_tiles) {
      load_kv(it + 1, buf ^ 1);
      cp_async_commit();
      cp_async_wait<1>();
    } else {
      cp_async_wait<0>();
    }
    __syncthreads();
    if (it == 0) {
#pragma unroll
      for (int ks = 0; ks < kKS; ++ks) load_a<P>(qf[ks], q_addr + uint32_t(ks * 32), kQPart);
    }
    const int64_t j_w = start + int64_t(it) * kDecKeys + warp * 16;  // this warp's first key
    if (j_w < end) {
      float s[2][4] = {{0.0f, 0.0f, 0.0f, 0.0f}, {0.0f, 0.0f, 0.0f, 0.0f}};
#pragma unroll
      for (int ks = 0; ks < kKS; ++ks) {
        uint32_t bk[P][4];
        load_b_nk<P>(bk, k_addr + buf * kKVBuf + uint32_t(ks * 32), kKVPart);
        mma_parts<P>(s[0], qf[ks], bk, 0);
        mma_parts<P>(s[1], qf[ks], bk, 1);
      }
#pragma unroll
      for (int nt = 0; nt < 2; ++nt)
#pragma unroll
        for (int e = 0; e < 4; ++e)
          if (j_w + nt * 8 + 2 * qd + (e & 1) >= end) s[nt][e] = -INFINITY;
#pragma unroll
      for (int hf = 0; hf < 2; ++hf) {
        const float mx = quad_max(fmaxf(fmaxf(s[0][2 * hf], s[0][2 * hf + 1]), fmaxf(s[1][2 * hf], s[1][2 * hf + 1])));
        const float m_new = fmaxf(m[hf], mx * p.scale_log2);
        const float base = m_new == -INFINITY ? 0.0f : m_new;
        const float corr = fast_exp2(m[hf] - base);
        m[hf] = m_new;
        float sum = 0.0f;
#pragma unroll
        for (int nt = 0; nt < 2; ++nt)
#pragma unroll
          for (int e = 2 * hf; e < 2 * hf + 2; ++e) {
            s[nt][e] = fast_exp2(fmaf(s[nt][e], p.scale_log2, -base));
            sum += s[nt][e];
          }
        l[hf] = l[hf] * corr + sum;
#pragma unroll
        for (int dn = 0; dn < kDT; ++dn) {
          o[dn][2 * hf] *= corr;
          o[dn][2 * hf + 1] *= corr;
        }
      }
      uint32_t pa[P][4];
      acc_to_a<P>(pa, s[0], s[1]);
#pragma unroll
      for (int dp = 0; dp < kD / 16; ++dp) {
        uint32_t bv[P][4];
        load_b_kn<P>(bv, v_addr + buf * kKVBuf + uint32_t(dp * 32), kKVPart);
        mma_parts<P>(o[2 * dp], pa, bv, 0);
        mma_parts<P>(o[2 * dp + 1], pa, bv, 1);
      }
    }
    __syncthreads();  // also ends every read of sK/sV before the merge below reuses them
  }

  // Merge the 4 warps: each leaves its row max, row sum and unnormalized O in shared memory.
  float* sM = reinterpret_cast<float*>(sK);  // [4][16]
  float* sL = sM + 4 * kDecRows;              // [4][16]
  float* sO = sL + 4 * kDecRows;              // [4][16][kD]
#pragma unroll
  for (int hf = 0; hf < 2; ++hf) {
    const float total = quad_sum(l[hf]);
    const int row = g + hf * 8;
    if (qd == 0) {
      sM[warp * kDecRows + row] = m[hf];
      sL[warp * kDecRows + row] = total;
    }
#pragma unroll
    for (int dn = 0; dn < kDT; ++dn)
      *reinterpret_cast<float2*>(sO + (warp * kDecRows + row) * kD + dn * 8 + 2 * qd) =
          make_float2(o[dn][2 * hf], o[dn][2 * hf + 1]);
  }
  __syncthreads();
  for (int i = tid; i < n_rows * kD; i += kDecThreads) {
    const int row = i / kD, c = i % kD;
    float mx = -INFINITY;
#pragma unroll
    for (int w = 0; w < 4; ++w) mx = fmaxf(mx, sM[w * kDecRows + row]);
    float total = 0.0f, acc = 0.0f;
    if (mx != -INFINITY) {
#pragma unroll
      for (int w = 0; w < 4; ++w) {
        const float f = fast_exp2(sM[w * kDecRows + row] - mx);
        total += f * sL[w * kDecRows + row];
        acc += f * sO[(w * kDecRows + row) * kD + c];
      }
    }
    p.o_part[(part_row + int64_t(row) * p.splits) * kD + c] = total > 0.0f ? acc / total : 0.0f;
    if (c == 0) p.lse_part[part_row + int64_t(row) * p.splits] = total > 0.0f ? mx + __log2f(total) : -INFINITY;
  }
}

// One block per (batch row, head), one thread per output column.
template <typename T>
__global__ void attention_decode_combine_kernel(const float* o_part, const float* lse_part, T* out, int splits,
                                                int headdim) {
  const int64_t row = blockIdx.x;  // b · heads + h
  const float* lse = lse_part + row * splits;
  float mx = -INFINITY;
  for (int s = 0; s < splits; ++s) mx = fmaxf(mx, lse[s]);
  for (int c = int(threadIdx.x); c < headdim; c += int(blockDim.x)) {
    float total = 0.0f, acc = 0.0f;
    if (mx != -INFINITY) {
      for (int s = 0; s < splits; ++s) {
        const float f = fast_exp2(lse[s] - mx);
        total += f;
        acc += f * o_part[(row * splits + s) * headdim + c];
      }
    }
    out[row * headdim + c] = from_math<T>(total > 0.0f ? acc / total : 0.0f);
  }
}

int sm_count(int device) {
  static int counts[64] = {};
  if (device < 0 || device >= 64) return 132;
  if (counts[device] == 0) {
    int n = 0;
    CUDA_CHECK(cudaDeviceGetAttribute(&n, cudaDevAttrMultiProcessorCount, device));
    counts[device] = std::max(n, 1);
  }
  return counts[device];
}

}  // namespace

Tensor attention_decode(const Tensor& q_in, const Tensor& k_in, const Tensor& v_in, const Tensor& lengths_in,
                        double scale) {
  constexpr const char* op = "attention_decode";
  const int64_t batch = q_in.shape()[0], heads = q_in.shape()[1], D = q_in.shape()[2];
  const int64_t max_len = k_in.shape()[1], kv_heads = k_in.shape()[2], group = heads / kv_heads;
  check_operands(op, {&q_in, &k_in, &v_in}, D);
  check_cuda_tensor(op, lengths_in, "lengths");
  SCANLINE_CHECK(lengths_in.dtype() == DType::i32 || lengths_in.dtype() == DType::i64, op,
                 ": expected lengths i32 or i64 but found ", describe(lengths_in));
  DeviceGuard guard(q_in.device().index);
  Tensor out = empty(q_in.shape(), q_in.options());
  if (batch * heads == 0) return out;
  const Tensor q = rows_aligned(q_in), k = rows_aligned(k_in), v = rows_aligned(v_in);
  const Tensor lengths = as_contiguous(lengths_in);

  // Splits: about two blocks per SM over all (batch, kv head, head tile), at least 128 keys each.
  const int64_t head_tiles = (group + kDecRows - 1) / kDecRows;
  const int64_t base_blocks = batch * kv_heads * head_tiles;
  const int64_t key_tiles = std::max<int64_t>(1, (max_len + kDecKeys - 1) / kDecKeys);
  const int64_t want = std::max<int64_t>(1, (2 * sm_count(q.device().index) + base_blocks - 1) / base_blocks);
  int64_t splits = std::min(want, std::max<int64_t>(1, key_tiles / 2));
  const int64_t chunk = (key_tiles + splits - 1) / splits * kDecKeys;
  splits = std::max<int64_t>(1, (max_len + chunk - 1) / chunk);
  check_grid(op, base_blocks * splits);
  check_grid(op, batch * heads);

  const TensorOptions f32{.dtype = DType::f32, .device = q.device()};
  const Tensor o_part = empty({batch, heads, splits, D}, f32), lse_part = empty({batch, heads, splits}, f32);
  auto run = [&]<typename T>() {
    DecodeParams<T> p{};
    p.q = data_at<const T>(q);
    p.k = data_at<const T>(k);
    p.v = data_at<const T>(v);
    p.lengths = lengths.raw_data();
    p.lengths_i64 = lengths.dtype() == DType::i64;
    p.o_part = data_at<float>(o_part);
    p.lse_part = data_at<float>(lse_part);
    p.q_batch = q.strides()[0], p.q_head = q.strides()[1];
    p.k_batch = k.strides()[0], p.k_row = k.strides()[1], p.k_head = k.strides()[2];
    p.v_batch = v.strides()[0], p.v_row = v.strides()[1], p.v_head = v.strides()[2];
    p.max_len = max_len, p.chunk = chunk, p.batch = batch;
    p.heads = int(heads), p.kv_heads = int(kv_heads), p.group = int(group);
    p.head_tiles = int(head_tiles), p.splits = int(splits);
    p.scale_log2 = float(scale * 1.4426950408889634);
    with_headdim(D, [&]<int kD>() {
      auto kernel = attention_decode_split_kernel<T, kD>;
      const size_t smem = decode_smem_bytes<T, kD>();
      allow_shared_memory(kernel, smem);
      kernel<<<unsigned(base_blocks * splits), kDecThreads, smem, current_stream()>>>(p);
      CUDA_CHECK_LAUNCH("attention_decode split");
    });
    attention_decode_combine_kernel<T><<<unsigned(batch * heads), unsigned(D), 0, current_stream()>>>(
        p.o_part, p.lse_part, data_at<T>(out), int(splits), int(D));
    CUDA_CHECK_LAUNCH("attention_decode combine");
  };
  if (q.dtype() == DType::f32) run.template operator()<float>();
  else run.template operator()<bf16>();
  return out;
}

}  // namespace scanline::cuda
