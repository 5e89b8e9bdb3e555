#include "core/cuda/device_utils.cuh"
#include "core/cuda/tensor_kernels.h"

#include <cstring>
#include <initializer_list>
#include <optional>

namespace scanline::cuda {
namespace {

template <typename D, typename S>
__device__ __forceinline__ D convert(S s) {
  if constexpr (std::is_same_v<D, S>) return s;
  else if constexpr (std::is_same_v<D, bool>) return load_math(&s) != math_t<S>(0);
  else if constexpr (std::is_integral_v<S> && std::is_integral_v<D>) return D(s);
  else if constexpr (std::is_integral_v<D>) return D(load_math(&s));
  else if constexpr (std::is_same_v<S, double>) {
    // Round once: double -> bf16/f16 directly, not through float.
    if constexpr (std::is_same_v<D, __nv_bfloat16>) return __double2bfloat16(s);
    else if constexpr (std::is_same_v<D, __half>) return __double2half(s);
    else return D(s);
  } else if constexpr (std::is_integral_v<S>) return convert<D>(double(s));  // one rounding, as on the CPU
  else return from_math<D>(math_t<D>(load_math(&s)));
}


// 32-bit offsets where every index and offset fits: 64-bit division costs several times more, and
// the strided copies and accumulations are bound by it otherwise.
__device__ __forceinline__ uint32_t offset32(const StridedLayout& l, uint32_t linear) {
  uint32_t off = 0;
  for (int d = l.ndim - 1; d >= 0; --d) {
    const uint32_t s = uint32_t(l.sizes[d]);
    off += (linear % s) * uint32_t(l.strides[d]);
    linear /= s;
  }
  return off;
}

template <typename I>
__device__ __forceinline__ I offset_in(const StridedLayout& l, I linear) {
  if constexpr (sizeof(I) == 4) return offset32(l, linear);
  else return l.offset(linear);
}

template <typename D, typename S, typename I>
__global__ void copy_kernel(D* dst, StridedLayout dl, const S* src, StridedLayout sl, I n) {
  for (I i = blockIdx.x * I(blockDim.x) + threadIdx.x; i < n; i += I(gridDim.x) * blockDim.x)
    dst[offset_in(dl, i)] = convert<D>(src[offset_in(sl, i)]);
}

// A copy whose source and destination are contiguous along different dims (a transposed or
// permuted view made contiguous, or the reverse): 32 x 32 tiles through shared memory, so that
// both the reads (along the source's unit-stride dim, the tile's rows) and the writes (along the
// destination's, its columns) are coalesced. The other dims are a batch of such matrices.
struct TransposePlan {
  int64_t rows = 0, cols = 0;       // sizes of the source's unit-stride dim and the destination's
  int64_t src_col_stride = 0;       // the source's stride along the destination's unit-stride dim
  int64_t dst_row_stride = 0;       // and the reverse
  StridedLayout batch_src, batch_dst;
  int64_t batch = 1, row_tiles = 0, col_tiles = 0;  // tiles of the kernel's side
};

constexpr int kTile = 32, kTileRows = 8;

// Tile t of a plan whose tiles have `side` rows and columns: where its matrix and corner start.
template <typename D, typename S>
struct TileAt {
  const S* src;
  D* dst;
  int64_t r0, c0;
};
template <typename D, typename S>
__device__ __forceinline__ TileAt<D, S> tile_at(D* dst, const S* src, const TransposePlan& p, int64_t t, int side) {
  const int64_t ct = t % p.col_tiles, rest = t / p.col_tiles;
  const int64_t rt = rest % p.row_tiles, b = rest / p.row_tiles;
  return {src + p.batch_src.offset(b), dst + p.batch_dst.offset(b), rt * side, ct * side};
}

// Accumulate: dst += src instead of dst = src (the gradient of a transposed view added into one).
template <typename D, typename S, bool Accumulate = false>
__global__ void transpose_copy_kernel(D* dst, const S* src, TransposePlan p) {
  __shared__ D tile[kTile][kTile + 1];
  const int64_t tiles = p.batch * p.row_tiles * p.col_tiles;
  for (int64_t t = blockIdx.x; t < tiles; t += gridDim.x) {
    const auto [s, d, r0, c0] = tile_at(dst, src, p, t, kTile);
    for (int j = threadIdx.y; j < kTile; j += kTileRows) {
      const int64_t r = r0 + threadIdx.x, c = c0 + j;
      if (r < p.rows && c < p.cols) tile[j][threadIdx.x] = convert<D>(s[r + c * p.src_col_stride]);
    }
    __syncthreads();
    for (int j = threadIdx.y; j < kTile; j += kTileRows) {
      const int64_t r = r0 + j, c = c0 + threadIdx.x;
      if (r >= p.rows || c >= p.cols) continue;
      D* out = d + r * p.dst_row_stride + c;
      if constexpr (Accumulate) *out = from_math<D>(load_math(out) + load_math(&tile[threadIdx.x][j]));
      else *out = tile[threadIdx.x][j];
    }
    __syncthreads();
  }
}

// Contiguous same-dtype copies are a cudaMemcpy; this handles 16-byte vectors of converted data.
template <typename D, typename S>
__global__ void copy_contiguous_kernel(D* dst, const S* src, int64_t n) {
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < n; i += int64_t(gridDim.x) * blockDim.x)
    dst[i] = convert<D>(src[i]);
}

// A copy of rows that are contiguous on both sides but lie apart (slices of a wider last dim, the
// pieces of a split projection): a row's address once per row, V elements a thread at a time.
struct RowPlan {
  int64_t rows = 0, cols = 0;
  StridedLayout src_rows, dst_rows;  // the dims above the last, for a row's offset
};

template <typename T, int V>
struct alignas(sizeof(T) * V) Pack {
  T v[V];
};

template <typename D, typename S, int V>
__global__ void row_copy_kernel(D* dst, const S* src, RowPlan p) {
  const int64_t packs = p.cols / V;
  for (int64_t r = blockIdx.y; r < p.rows; r += gridDim.y) {
    const Pack<S, V>* s = reinterpret_cast<const Pack<S, V>*>(src + p.src_rows.offset(r));
    Pack<D, V>* d = reinterpret_cast<Pack<D, V>*>(dst + p.dst_rows.offset(r));
    for (int64_t c = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; c < packs; c += int64_t(gridDim.x) * blockDim.x) {
      const Pack<S, V> in = s[c];
      Pack<D, V> out;
#pragma unroll
      for (int i = 0; i < V; ++i) out.v[i] = convert<D>(in.v[i]);
      d[c] = out;
    }
  }
}

// The transpose of 2-byte types (the bf16 activations) in 64 x 64 tiles, two neighbours a thread:
// 4-byte accesses put 128 contiguous bytes under each warp instruction on both sides and twice the
// bytes in flight of the 32 x 32 kernel. Needs even sizes and strides (pairs stay together).
constexpr int kWideTile = 64;

template <typename D, typename S, bool Accumulate>
__global__ void __launch_bounds__(kTile * kTileRows) transpose_pairs_kernel(D* dst, const S* src, TransposePlan p) {
  __shared__ __align__(4) D tile[kWideTile][kWideTile + 2];  // [column][row]: an odd word count a line
  const int64_t tiles = p.batch * p.row_tiles * p.col_tiles;
  const int pair = 2 * int(threadIdx.x);
  for (int64_t t = blockIdx.x; t < tiles; t += gridDim.x) {
    const auto [s, d, r0, c0] = tile_at(dst, src, p, t, kWideTile);
    for (int j = threadIdx.y; j < kWideTile; j += kTileRows) {
      const int64_t r = r0 + pair, c = c0 + j;
      if (r >= p.rows || c >= p.cols) continue;
      const Pack<S, 2> in = *reinterpret_cast<const Pack<S, 2>*>(s + r + c * p.src_col_stride);
      *reinterpret_cast<Pack<D, 2>*>(&tile[j][pair]) = {convert<D>(in.v[0]), convert<D>(in.v[1])};
    }
    __syncthreads();
    for (int j = threadIdx.y; j < kWideTile; j += kTileRows) {
      const int64_t r = r0 + j, c = c0 + pair;
      if (r >= p.rows || c >= p.cols) continue;
      Pack<D, 2>* out = reinterpret_cast<Pack<D, 2>*>(d + r * p.dst_row_stride + c);
      Pack<D, 2> v = {tile[pair][j], tile[pair + 1][j]};
      if constexpr (Accumulate) {
        const Pack<D, 2> old = *out;
        for (int i = 0; i < 2; ++i) v.v[i] = from_math<D>(load_math(&old.v[i]) + load_math(&v.v[i]));
      }
      *out = v;
    }
    __syncthreads();
  }
}

template <typename T>
__global__ void fill_kernel(T* dst, StridedLayout l, T value, int64_t n) {
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < n; i += int64_t(gridDim.x) * blockDim.x)
    dst[l.offset(i)] = value;
}

template <typename T, typename I>
__global__ void accumulate_kernel(T* dst, StridedLayout dl, const T* src, StridedLayout sl, I n) {
  for (I i = blockIdx.x * I(blockDim.x) + threadIdx.x; i < n; i += I(gridDim.x) * blockDim.x) {
    T* d = dst + offset_in(dl, i);
    *d = from_math<T>(load_math(d) + load_math(src + offset_in(sl, i)));
  }
}

template <typename Fn>
decltype(auto) dispatch_all_device(DType dtype, const char* op, Fn&& fn) {
  return dispatch_all(dtype, op, [&]<typename T>() { return fn.template operator()<device_t<T>>(); });
}

constexpr int kThreads = 256;

// Whether every linear index and storage offset of these layouts fits 32-bit arithmetic.
bool fits32(int64_t n, std::initializer_list<const StridedLayout*> layouts) {
  constexpr int64_t kMax = int64_t(1) << 31;
  if (n >= kMax) return false;
  for (const StridedLayout* l : layouts) {
    int64_t extent = 0;
    for (int d = 0; d < l->ndim; ++d) {
      if (l->strides[d] < 0) return false;
      extent += (l->sizes[d] - 1) * l->strides[d];
    }
    if (extent >= kMax) return false;
  }
  return true;
}

// The transposed-copy plan when src and dst have unit strides along different dims, else nothing.
std::optional<TransposePlan> plan_transpose(const Tensor& dst, const Tensor& src) {
  const Shape& shape = dst.shape();
  int a = -1, b = -1;  // the last dims of size > 1 with unit stride in src and in dst
  for (int d = 0; d < int(shape.size()); ++d) {
    if (shape[d] == 1) continue;
    if (src.strides()[d] == 1) a = d;
    if (dst.strides()[d] == 1) b = d;
  }
  // Tiles of a few rows or columns would idle most of their threads: the plain copy does better.
  constexpr int64_t kMinSide = 8;
  if (a < 0 || b < 0 || a == b || shape[a] < kMinSide || shape[b] < kMinSide) return std::nullopt;
  TransposePlan p;
  p.rows = shape[a];
  p.cols = shape[b];
  p.src_col_stride = src.strides()[b];
  p.dst_row_stride = dst.strides()[a];
  // The other dims are the batch of matrices (layout_of_dims drops size-1 dims and merges runs).
  Shape batch_shape;
  std::vector<int64_t> src_strides, dst_strides;
  for (int d = 0; d < int(shape.size()); ++d) {
    if (d == a || d == b) continue;
    batch_shape.push_back(shape[d]);
    src_strides.push_back(src.strides()[d]);
    dst_strides.push_back(dst.strides()[d]);
  }
  p.batch_src = layout_of_dims(batch_shape, src_strides);
  p.batch_dst = layout_of_dims(batch_shape, dst_strides);
  p.batch = numel_of(batch_shape);
  return p;  // the tile counts are the launcher's (its tile size)
}

// Whether the pair kernel applies: 2-byte types, even sizes, strides and addresses, tiles of 64.
template <typename D, typename S>
bool pairs_fit(const TransposePlan& p, const void* d, const void* s) {
  if constexpr (sizeof(D) != 2 || sizeof(S) != 2) {
    return false;
  } else {
    bool even = p.rows % 2 == 0 && p.cols % 2 == 0 && p.src_col_stride % 2 == 0 && p.dst_row_stride % 2 == 0 &&
                reinterpret_cast<uintptr_t>(d) % 4 == 0 && reinterpret_cast<uintptr_t>(s) % 4 == 0;
    for (int i = 0; i < p.batch_src.ndim; ++i)
      even = even && p.batch_src.strides[i] % 2 == 0 && p.batch_dst.strides[i] % 2 == 0;
    return even && p.rows >= kWideTile && p.cols >= kWideTile;
  }
}

template <typename D, typename S, bool Accumulate>
void launch_transpose(D* d, const S* s, TransposePlan p, cudaStream_t stream) {
  const bool pairs = pairs_fit<D, S>(p, d, s);
  const int64_t side = pairs ? kWideTile : kTile;
  p.row_tiles = (p.rows + side - 1) / side;
  p.col_tiles = (p.cols + side - 1) / side;
  const unsigned blocks = blocks_for(p.batch * p.row_tiles * p.col_tiles, 1);
  if constexpr (sizeof(D) == 2 && sizeof(S) == 2) {  // instantiated for the 2-byte pairs only
    if (pairs) {
      transpose_pairs_kernel<D, S, Accumulate><<<blocks, dim3(kTile, kTileRows), 0, stream>>>(d, s, p);
      return;
    }
  }
  transpose_copy_kernel<D, S, Accumulate><<<blocks, dim3(kTile, kTileRows), 0, stream>>>(d, s, p);
}

// The row-copy plan when both tensors are contiguous along the last dim (and it is long enough to
// fill a warp), else nothing.
std::optional<RowPlan> plan_rows(const Tensor& dst, const Tensor& src) {
  const Shape& shape = dst.shape();
  constexpr int64_t kMinCols = 32;
  if (shape.size() < 2 || shape.back() < kMinCols || dst.strides().back() != 1 || src.strides().back() != 1)
    return std::nullopt;
  RowPlan p;
  p.cols = shape.back();
  const Shape outer(shape.begin(), shape.end() - 1);
  p.rows = dst.numel() / p.cols;
  p.src_rows = layout_of_dims(outer, std::vector<int64_t>(src.strides().begin(), src.strides().end() - 1));
  p.dst_rows = layout_of_dims(outer, std::vector<int64_t>(dst.strides().begin(), dst.strides().end() - 1));
  return p;
}

// The widest pack (16 bytes of the wider type at most) that divides the rows and their alignment.
template <typename D, typename S>
int row_pack(const RowPlan& p, const void* d, const void* s) {
  constexpr int kWidest = int(16 / (sizeof(D) > sizeof(S) ? sizeof(D) : sizeof(S)));
  auto fits = [&](int v) {
    if (p.cols % v != 0 || reinterpret_cast<uintptr_t>(d) % (sizeof(D) * v) != 0 ||
        reinterpret_cast<uintptr_t>(s) % (sizeof(S) * v) != 0)
      return false;
    for (int i = 0; i < p.src_rows.ndim; ++i)
      if (p.src_rows.strides[i] % v != 0 || p.dst_rows.strides[i] % v != 0) return false;
    return true;
  };
  for (int v = kWidest; v > 1; v /= 2)
    if (fits(v)) return v;
  return 1;
}

template <typename D, typename S>
void launch_row_copy(D* d, const S* s, const RowPlan& p, cudaStream_t stream) {
  const int v = row_pack<D, S>(p, d, s);
  const int64_t packs = p.cols / v;
  const int threads = packs >= 256 ? 256 : int((packs + 31) / 32 * 32);
  const dim3 grid(unsigned((packs + threads - 1) / threads), unsigned(p.rows < 65535 ? p.rows : 65535));
  auto launch = [&]<int V>() { row_copy_kernel<D, S, V><<<grid, threads, 0, stream>>>(d, s, p); };
  switch (v) {
    case 8: launch.template operator()<8>(); break;
    case 4: launch.template operator()<4>(); break;
    case 2: launch.template operator()<2>(); break;
    default: launch.template operator()<1>(); break;
  }
}

}  // namespace

void copy_tensor(const Tensor& dst, const Tensor& src) {
  SCANLINE_CHECK(dst.device() == src.device() && dst.device().is_cuda() && dst.shape() == src.shape(),
                 "cuda copy: expected tensors of one shape on one CUDA device, found ", describe(dst), " and ",
                 describe(src));
  const int64_t n = dst.numel();
  if (n == 0) return;
  DeviceGuard guard(dst.device().index);
  cudaStream_t stream = current_stream();
  dispatch_all_device(dst.dtype(), "copy", [&]<typename D>() {
    dispatch_all_device(src.dtype(), "copy", [&]<typename S>() {
      D* d = data_at<D>(dst);
      const S* s = data_at<const S>(src);
      if (dst.is_contiguous() && src.is_contiguous()) {
        copy_contiguous_kernel<D, S><<<blocks_for(n, kThreads), kThreads, 0, stream>>>(d, s, n);
      } else if (const std::optional<RowPlan> r = plan_rows(dst, src)) {
        launch_row_copy(d, s, *r, stream);
      } else if (const std::optional<TransposePlan> t = plan_transpose(dst, src)) {
        launch_transpose<D, S, false>(d, s, *t, stream);
      } else {
        const StridedLayout dl = layout_of(dst), sl = layout_of(src);
        if (fits32(n, {&dl, &sl}))
          copy_kernel<D, S, uint32_t><<<blocks_for(n, kThreads), kThreads, 0, stream>>>(d, dl, s, sl, uint32_t(n));
        else
          copy_kernel<D, S, int64_t><<<blocks_for(n, kThreads), kThreads, 0, stream>>>(d, dl, s, sl, n);
      }
      CUDA_CHECK_LAUNCH("copy_kernel");
    });
  });
}

void fill_tensor(const Tensor& t, double value) {
  const int64_t n = t.numel();
  if (n == 0) return;
  DeviceGuard guard(t.device().index);
  // The host converts the value with core's rounding rules; the kernel stores its bits.
  Tensor host_value = full({}, value, {.dtype = t.dtype()});
  dispatch_all_device(t.dtype(), "fill", [&]<typename T>() {
    T v;
    std::memcpy(&v, host_value.raw_data(), sizeof(T));
    fill_kernel<T><<<blocks_for(n, kThreads), kThreads, 0, current_stream()>>>(data_at<T>(t), layout_of(t), v, n);
    CUDA_CHECK_LAUNCH("fill_kernel");
  });
}

void accumulate_tensor(const Tensor& dst, const Tensor& src) {
  const int64_t n = dst.numel();
  if (n == 0) return;
  DeviceGuard guard(dst.device().index);
  dispatch_floating_device(dst.dtype(), "accumulate", [&]<typename T>() {
    if (const std::optional<TransposePlan> t = plan_transpose(dst, src)) {
      launch_transpose<T, T, true>(data_at<T>(dst), data_at<const T>(src), *t, current_stream());
      CUDA_CHECK_LAUNCH("transpose_copy_kernel");
      return;
    }
    const StridedLayout dl = layout_of(dst), sl = layout_of(src);
    if (fits32(n, {&dl, &sl}))
      accumulate_kernel<T, uint32_t><<<blocks_for(n, kThreads), kThreads, 0, current_stream()>>>(
          data_at<T>(dst), dl, data_at<const T>(src), sl, uint32_t(n));
    else
      accumulate_kernel<T, int64_t><<<blocks_for(n, kThreads), kThreads, 0, current_stream()>>>(
          data_at<T>(dst), dl, data_at<const T>(src), sl, n);
    CUDA_CHECK_LAUNCH("accumulate_kernel");
  });
}

}  // namespace scanline::cuda
