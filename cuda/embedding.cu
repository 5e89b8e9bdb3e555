#include "cuda/embedding.h"

#include <cub/device/device_radix_sort.cuh>

#include <algorithm>
#include <climits>
#include <cstdint>
#include <type_traits>

#include "core/cuda/device_utils.cuh"

namespace scanline::cuda {
namespace {

constexpr int kThreads = 256;          // 8 warps a block, one row a warp
constexpr int64_t kMaxGrid = 1 << 20;  // grid-stride beyond this many blocks
constexpr unsigned long long kNoBadPosition = ~0ULL;

// ---- forward: gather -------------------------------------------------------------------------

// One warp per output row: reads the index, checks it (a bad one records its position with
// atomicMin, so the first bad position wins whatever the schedule), copies the row. kVec: rows are
// whole 16-byte words, contiguous and aligned; else any row and column strides, element by element.
template <typename T, typename I, bool kVec>
__global__ void __launch_bounds__(kThreads)
    embedding_gather(const T* __restrict__ weight, int64_t row_stride, int64_t col_stride,
                     const I* __restrict__ indices, int64_t n, int64_t num_embeddings, int64_t dim,
                     T* __restrict__ out, unsigned long long* __restrict__ bad_position) {
  constexpr int W = int(16 / sizeof(T));
  const int lane = int(threadIdx.x & 31);
  const int64_t warps_per_block = blockDim.x >> 5;
  for (int64_t i = int64_t(blockIdx.x) * warps_per_block + (threadIdx.x >> 5); i < n;
       i += int64_t(gridDim.x) * warps_per_block) {
    const int64_t index = int64_t(indices[i]);
    if (index < 0 || index >= num_embeddings) {
      if (lane == 0) atomicMin(bad_position, static_cast<unsigned long long>(i));
      continue;
    }
    const T* src = weight + index * row_stride;
    T* dst = out + i * dim;
    if constexpr (kVec) {
      const int64_t packs = dim / W;
#pragma unroll 4
      for (int64_t pk = lane; pk < packs; pk += 32)
        reinterpret_cast<int4*>(dst)[pk] = __ldg(reinterpret_cast<const int4*>(src) + pk);
    } else {
      for (int64_t j = lane; j < dim; j += 32) dst[j] = src[j * col_stride];
    }
  }
}

// ---- backward: sort, find each row's run, sum ---------------------------------------------------

__global__ void iota_kernel(int32_t* __restrict__ out, int64_t n) {
  for (int64_t i = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; i < n; i += int64_t(gridDim.x) * blockDim.x)
    out[i] = int32_t(i);
}

// starts[r] = the first position p of the sorted keys with keys[p] >= r, for r in [0, num_rows]:
// row r's positions are sorted_positions[starts[r] .. starts[r + 1]). One binary search a thread.
template <typename K>
__global__ void run_starts(const K* __restrict__ keys, int64_t n, int64_t num_rows, int32_t* __restrict__ starts) {
  for (int64_t r = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; r <= num_rows;
       r += int64_t(gridDim.x) * blockDim.x) {
    int64_t lo = 0, hi = n;
    while (lo < hi) {
      const int64_t mid = (lo + hi) >> 1;
      if (int64_t(keys[mid]) < r) lo = mid + 1;
      else hi = mid;
    }
    starts[r] = int32_t(lo);
  }
}

// One warp per weight row: the sum of the gradient rows of its positions, in position order, in
// the math type; zeros for a row no position read. A lane holds kPacks packs of W of a chunk of
// 32 * kPacks packs; wider rows take several chunks.
template <typename T, bool kVec, int kPacks>
__global__ void __launch_bounds__(kThreads)
    embedding_grad_rows(const T* __restrict__ grad, const int32_t* __restrict__ positions,
                        const int32_t* __restrict__ starts, int64_t num_rows, int64_t dim, T* __restrict__ out) {
  using A = math_t<T>;
  constexpr int W = kVec ? int(16 / sizeof(T)) : 1;
  const int lane = int(threadIdx.x & 31);
  const int64_t warps_per_block = blockDim.x >> 5;
  const int64_t packs = dim / W;
  for (int64_t r = int64_t(blockIdx.x) * warps_per_block + (threadIdx.x >> 5); r < num_rows;
       r += int64_t(gridDim.x) * warps_per_block) {
    const int32_t begin = starts[r], end = starts[r + 1];
    T* dst = out + r * dim;
    for (int64_t chunk = 0; chunk < packs; chunk += 32 * kPacks) {
      A acc[kPacks][W];
#pragma unroll
      for (int i = 0; i < kPacks; ++i)
#pragma unroll
        for (int e = 0; e < W; ++e) acc[i][e] = A(0);
      for (int32_t p = begin; p < end; ++p) {
        const T* src = grad + int64_t(positions[p]) * dim;
#pragma unroll
        for (int i = 0; i < kPacks; ++i) {
          const int64_t pk = chunk + lane + 32 * i;
          if (pk >= packs) continue;
          alignas(16) T v[W];
          if constexpr (kVec) *reinterpret_cast<int4*>(v) = __ldg(reinterpret_cast<const int4*>(src) + pk);
          else v[0] = src[pk];
#pragma unroll
          for (int e = 0; e < W; ++e) acc[i][e] += load_math(&v[e]);
        }
      }
#pragma unroll
      for (int i = 0; i < kPacks; ++i) {
        const int64_t pk = chunk + lane + 32 * i;
        if (pk >= packs) continue;
        alignas(16) T v[W];
#pragma unroll
        for (int e = 0; e < W; ++e) v[e] = from_math<T>(acc[i][e]);
        if constexpr (kVec) reinterpret_cast<int4*>(dst)[pk] = *reinterpret_cast<const int4*>(v);
        else dst[pk] = v[0];
      }
    }
  }
}

// ---- host side ---------------------------------------------------------------------------------

// Multi-index of flat (row-major) position `flat` in `shape`.
Shape unravel(int64_t flat, const Shape& shape) {
  Shape index(shape.size());
  for (size_t d = shape.size(); d-- > 0;) {
    index[d] = flat % shape[d];
    flat /= shape[d];
  }
  return index;
}

unsigned warp_row_blocks(int64_t rows) {
  return unsigned(std::clamp<int64_t>((rows + kThreads / 32 - 1) / (kThreads / 32), 1, kMaxGrid));
}

// Calls fn.template operator()<I>() with the C++ type of an index dtype.
template <typename Fn>
void dispatch_indices(DType dtype, const char* op, Fn&& fn) {
  dispatch_index(dtype, op, [&]<typename I>() { fn.template operator()<I>(); });
}

// Sorts (key = index, value = position) pairs by key; returns the sorted positions and writes the
// sorted keys to keys_out. Only the bits below num_embeddings are sorted (indices are in range).
template <typename I>
Tensor sort_positions(const Tensor& indices, int64_t num_embeddings, Tensor& keys_out, cudaStream_t stream) {
  using K = std::make_unsigned_t<I>;  // indices are >= 0, so unsigned order is index order
  const int64_t n = indices.numel();
  const Device device = indices.device();
  keys_out = empty({n}, {.dtype = indices.dtype(), .device = device});
  Tensor positions_in = empty({n}, {.dtype = DType::i32, .device = device});
  Tensor positions_out = empty({n}, {.dtype = DType::i32, .device = device});
  iota_kernel<<<blocks_for(n, kThreads), kThreads, 0, stream>>>(data_at<int32_t>(positions_in), n);
  CUDA_CHECK_LAUNCH("embedding iota_kernel");
  int end_bit = 1;
  while (end_bit < int(sizeof(K) * 8) && (uint64_t(num_embeddings - 1) >> end_bit) != 0) ++end_bit;
  const K* keys_in = reinterpret_cast<const K*>(data_at<const I>(indices));
  K* keys = reinterpret_cast<K*>(data_at<I>(keys_out));
  const int32_t* values_in = data_at<const int32_t>(positions_in);
  int32_t* values = data_at<int32_t>(positions_out);
  size_t temp_bytes = 0;
  CUDA_CHECK(cub::DeviceRadixSort::SortPairs(nullptr, temp_bytes, keys_in, keys, values_in, values, int(n), 0,
                                             end_bit, stream));
  Tensor temp = empty({std::max<int64_t>(1, int64_t((temp_bytes + 7) / 8))}, {.dtype = DType::i64, .device = device});
  CUDA_CHECK(cub::DeviceRadixSort::SortPairs(data_at<int64_t>(temp), temp_bytes, keys_in, keys, values_in, values,
                                             int(n), 0, end_bit, stream));
  return positions_out;
}

template <typename T, bool kVec>
void launch_grad_rows(const T* grad, const int32_t* positions, const int32_t* starts, int64_t num_rows, int64_t dim,
                      T* out, cudaStream_t stream) {
  constexpr int W = kVec ? int(16 / sizeof(T)) : 1;
  const int64_t packs = dim / W;
  const unsigned blocks = warp_row_blocks(num_rows);
  // Packs a lane holds: enough for the row in one chunk up to 4 (wider rows loop over chunks).
  if (packs <= 32)
    embedding_grad_rows<T, kVec, 1><<<blocks, kThreads, 0, stream>>>(grad, positions, starts, num_rows, dim, out);
  else if (packs <= 64)
    embedding_grad_rows<T, kVec, 2><<<blocks, kThreads, 0, stream>>>(grad, positions, starts, num_rows, dim, out);
  else
    embedding_grad_rows<T, kVec, 4><<<blocks, kThreads, 0, stream>>>(grad, positions, starts, num_rows, dim, out);
  CUDA_CHECK_LAUNCH("embedding_grad_rows");
}

}  // namespace

Tensor embedding_forward(const char* op, const Tensor& weight, const Tensor& indices_in) {
  check_cuda_tensor(op, weight, "weight");
  check_cuda_tensor(op, indices_in, "indices");
  DeviceGuard guard(weight.device().index);
  cudaStream_t stream = current_stream();
  const Tensor indices = as_contiguous(indices_in);
  const int64_t n = indices.numel(), num_embeddings = weight.size(0), dim = weight.size(1);
  Shape out_shape = indices.shape();
  out_shape.push_back(dim);
  Tensor out = empty(out_shape, weight.options());
  if (n == 0) return out;
  Tensor bad = empty({1}, {.dtype = DType::i64, .device = weight.device()});
  CUDA_CHECK(cudaMemsetAsync(data_at<int64_t>(bad), 0xff, sizeof(int64_t), stream));  // kNoBadPosition
  auto* bad_position = reinterpret_cast<unsigned long long*>(data_at<int64_t>(bad));
  const int64_t row_stride = weight.strides()[0], col_stride = weight.strides()[1];
  dispatch_floating_device(weight.dtype(), op, [&]<typename T>() {
    dispatch_indices(indices.dtype(), op, [&]<typename I>() {
      constexpr int64_t W = 16 / sizeof(T);
      const T* w = data_at<const T>(weight);
      T* o = data_at<T>(out);
      const bool vec = col_stride == 1 && dim % W == 0 && row_stride % W == 0 && aligned16(w) &&
                       aligned16(o);
      const unsigned blocks = warp_row_blocks(n);
      if (vec)
        embedding_gather<T, I, true><<<blocks, kThreads, 0, stream>>>(w, row_stride, 1, data_at<const I>(indices), n,
                                                                       num_embeddings, dim, o, bad_position);
      else
        embedding_gather<T, I, false><<<blocks, kThreads, 0, stream>>>(
            w, row_stride, col_stride, data_at<const I>(indices), n, num_embeddings, dim, o, bad_position);
      CUDA_CHECK_LAUNCH("embedding_gather");
    });
  });
  // One small copy back (it waits for the gather); the index itself is read only on failure.
  const int64_t position = bad.item<int64_t>();
  if (position != int64_t(kNoBadPosition)) {
    const int64_t index = as_strided(indices, {}, {}, indices.offset() + position).item<int64_t>();
    SCANLINE_FAIL(op, ": index ", index, " at position ", unravel(position, indices.shape()), " of indices ",
                  describe(indices_in), " is out of range for a table of ", num_embeddings,
                  " rows (valid indices are 0 to ", num_embeddings - 1, ")");
  }
  return out;
}

Tensor embedding_backward(const Tensor& grad_in, const Tensor& indices_in, int64_t num_embeddings) {
  check_cuda_tensor("embedding backward", grad_in, "grad");
  DeviceGuard guard(grad_in.device().index);
  cudaStream_t stream = current_stream();
  const Tensor grad = as_contiguous(grad_in);
  const Tensor indices = as_contiguous(indices_in);
  const int64_t n = indices.numel(), dim = grad.shape().back();
  Tensor out = empty({num_embeddings, dim}, grad.options());
  if (num_embeddings == 0 || dim == 0) return out;
  if (n == 0) {
    fill_(out, 0.0);
    return out;
  }
  SCANLINE_CHECK(n <= INT32_MAX, "embedding backward: at most ", INT32_MAX, " indices are supported on CUDA, found ",
                 describe(indices_in));
  Tensor sorted_keys, positions, starts = empty({num_embeddings + 1}, {.dtype = DType::i32, .device = grad.device()});
  dispatch_indices(indices.dtype(), "embedding backward", [&]<typename I>() {
    positions = sort_positions<I>(indices, num_embeddings, sorted_keys, stream);
    using K = std::make_unsigned_t<I>;
    run_starts<K><<<blocks_for(num_embeddings + 1, kThreads), kThreads, 0, stream>>>(
        reinterpret_cast<const K*>(data_at<const I>(sorted_keys)), n, num_embeddings, data_at<int32_t>(starts));
    CUDA_CHECK_LAUNCH("embedding run_starts");
  });
  dispatch_floating_device(grad.dtype(), "embedding backward", [&]<typename T>() {
    constexpr int64_t W = 16 / sizeof(T);
    const T* g = data_at<const T>(grad);
    T* o = data_at<T>(out);
    const int32_t* pos = data_at<const int32_t>(positions);
    const int32_t* st = data_at<const int32_t>(starts);
    if (dim % W == 0 && aligned16(g) && aligned16(o))
      launch_grad_rows<T, true>(g, pos, st, num_embeddings, dim, o, stream);
    else
      launch_grad_rows<T, false>(g, pos, st, num_embeddings, dim, o, stream);
  });
  return out;
}

}  // namespace scanline::cuda
