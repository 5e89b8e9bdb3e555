// Reductions (sum, amax, max + first argmax) of CUDA tensors over any set of dims.
//
// The host first plans the problem: size-1 dims are dropped, the others sorted by input stride
// (outermost first) and merged where they are contiguous with each other, split into kept dims
// (the output rows) and reduced dims. Then one of three kernels runs:
//  - rows:    the reduced dims merge into one contiguous run (stride 1): a thread (runs of <= 16),
//             a warp (<= 1024) or a block per output, 16-byte loads, 4 in flight per thread;
//  - columns: one reduced dim and a kept dim of stride 1: threads run over the kept columns
//             (coalesced, 16-byte loads of W columns) and loop over the reduced rows, 8 warps per
//             block on interleaved rows, combined through shared memory;
//  - general: anything else, a row kernel reading through the StridedLayout of the reduced dims.
// When there are too few outputs to fill the GPU the reduced extent is split over several blocks
// that write accumulators to a workspace tensor, reduced by a second launch (two-pass). The
// partitions depend only on the problem's shape, never on the device, and every combination runs
// in a fixed order, so results are deterministic. No atomics.
#include "cuda/reduce.h"

#include <algorithm>
#include <vector>

#include "cuda/reduce_kernels.cuh"

namespace scanline::cuda {
namespace {

using namespace reduce_detail;

constexpr int64_t kTargetThreads = int64_t(1) << 19;  // threads that keep every SM's memory pipe full
constexpr int64_t kMinChunk = 4096;                   // fewest row elements per block when splitting
constexpr int64_t kMinRowsPerSplit = 32;              // fewest reduced rows per column block

int64_t ceil_div(int64_t a, int64_t b) { return (a + b - 1) / b; }

// ---- host side: planning and launches ----

struct Dim {
  int64_t size, in_stride, out_stride;
};

struct Plan {
  std::vector<Dim> kept, reduced;  // outermost (largest input stride) first
  int64_t rows = 1, length = 1;
};

Shape kept_shape_of(const Tensor& x, const std::vector<int64_t>& dims) {
  Shape shape = x.shape();
  for (int64_t d : dims) shape[size_t(d)] = 1;
  return shape;
}

Plan plan_reduction(const Tensor& x, const std::vector<int64_t>& dims, const char* op) {
  std::vector<bool> reduced(size_t(x.dim()), false);
  for (int64_t d : dims) {
    SCANLINE_CHECK(d >= 0 && d < x.dim() && !reduced[size_t(d)], op, ": bad reduction dim ", d, " for ", describe(x));
    reduced[size_t(d)] = true;
  }
  const Shape out_strides = contiguous_strides(kept_shape_of(x, dims));
  struct Entry {
    Dim dim;
    bool reduced;
  };
  std::vector<Entry> entries;
  for (size_t d = 0; d < size_t(x.dim()); ++d)
    if (x.shape()[d] != 1)
      entries.push_back({{x.shape()[d], x.strides()[d], reduced[d] ? 0 : out_strides[d]}, reduced[d]});
  std::stable_sort(entries.begin(), entries.end(),
                   [](const Entry& a, const Entry& b) { return a.dim.in_stride > b.dim.in_stride; });
  Plan plan;
  for (const Entry& e : entries) {
    std::vector<Dim>& list = e.reduced ? plan.reduced : plan.kept;
    // Two dims of one kind merge when the outer one steps over the inner one exactly, in the
    // input and (kept dims) in the output: the merged index enumerates the same elements in order.
    if (!list.empty() && list.back().in_stride == e.dim.in_stride * e.dim.size &&
        (e.reduced || list.back().out_stride == e.dim.out_stride * e.dim.size)) {
      list.back().size *= e.dim.size;
      list.back().in_stride = e.dim.in_stride;
      list.back().out_stride = e.dim.out_stride;
    } else {
      list.push_back(e.dim);
    }
  }
  SCANLINE_CHECK(plan.kept.size() <= size_t(kMaxDims) && plan.reduced.size() <= size_t(kMaxDims), op,
                 ": tensors of more than ", kMaxDims, " non-mergeable dimensions are not supported, found ",
                 describe(x));
  for (const Dim& d : plan.kept) plan.rows *= d.size;
  for (const Dim& d : plan.reduced) plan.length *= d.size;
  return plan;
}

StridedLayout layout_from(const std::vector<Dim>& dims, bool out) {
  StridedLayout l;
  l.ndim = int(dims.size());
  for (size_t i = 0; i < dims.size(); ++i) {
    l.sizes[i] = dims[i].size;
    l.strides[i] = out ? dims[i].out_stride : dims[i].in_stride;
  }
  return l;
}

template <typename Acc>
Acc* workspace_for(Tensor& holder, int64_t count, Device device) {
  holder = empty({ceil_div(count * int64_t(sizeof(Acc)), 8)}, {.dtype = DType::i64, .device = device});
  return reinterpret_cast<Acc*>(data_at<int64_t>(holder));
}

template <typename T, typename Op, RowMode kMode, int kGroup>
void launch_rows_as(const void* in, const RowProblem& p, typename Op::Acc* partial, T* out, int64_t* index) {
  const int64_t groups = p.rows * p.splits;
  const int per_block = kGroup == 1 ? kThreads : (kGroup == 32 ? kThreads / 32 : 1);
  reduce_rows_kernel<T, Op, kMode, kGroup>
      <<<blocks_for(groups, per_block), kThreads, 0, current_stream()>>>(in, p, partial, out, index);
  CUDA_CHECK_LAUNCH("reduce_rows_kernel");
}

template <typename T, typename Op, RowMode kMode>
void launch_rows(const void* in, int group, const RowProblem& p, typename Op::Acc* partial, T* out, int64_t* index) {
  if (group == 1) launch_rows_as<T, Op, kMode, 1>(in, p, partial, out, index);
  else if (group == 32) launch_rows_as<T, Op, kMode, 32>(in, p, partial, out, index);
  else launch_rows_as<T, Op, kMode, 0>(in, p, partial, out, index);
}

// Rows of p.length elements (contiguous or through p.reduced), split over blocks when the rows
// alone cannot fill the GPU.
template <typename T, typename Op>
void reduce_rows(const T* in, bool contiguous, RowProblem p, T* out, int64_t* index, Device device) {
  using Acc = typename Op::Acc;
  const int group = p.length <= 16 ? 1 : (p.length <= 1024 ? 32 : 0);
  p.chunk = p.length, p.splits = 1;
  if (group == 0 && p.rows * kThreads < kTargetThreads) {
    const int64_t splits = std::min(ceil_div(kTargetThreads, p.rows * kThreads), ceil_div(p.length, kMinChunk));
    if (splits > 1) {
      p.chunk = ceil_div(ceil_div(p.length, splits), 256) * 256;
      p.splits = ceil_div(p.length, p.chunk);
    }
  }
  Tensor workspace;
  Acc* partial = p.splits > 1 ? workspace_for<Acc>(workspace, p.rows * p.splits, device) : nullptr;
  if (contiguous) launch_rows<T, Op, RowMode::contiguous>(in, group, p, partial, out, index);
  else launch_rows<T, Op, RowMode::layout>(in, group, p, partial, out, index);
  if (!partial) return;
  RowProblem q;
  q.rows = p.rows, q.length = p.splits, q.chunk = p.splits, q.splits = 1, q.out = p.out;
  launch_rows_as<T, Op, RowMode::partial, 0>(partial, q, nullptr, out, index);
}

template <typename T, typename Op, int W, bool kPartialIn>
void launch_columns_as(const void* in, const ColumnProblem& p, typename Op::Acc* partial, T* out, int64_t* index) {
  reduce_columns_kernel<T, Op, W, kPartialIn><<<blocks_for(p.col_blocks * p.outer * p.splits, 1), dim3(32, kRowLanes),
                                                0, current_stream()>>>(in, p, partial, out, index);
  CUDA_CHECK_LAUNCH("reduce_columns_kernel");
}

// width: the pack of columns per thread for T input (1 or 16 bytes' worth), 0 for accumulator
// input (a previous pass). Splits the rows over blocks, then reduces the partials the same way.
template <typename T, typename Op>
void reduce_columns(const void* in, int width, ColumnProblem p, T* out, int64_t* index, Device device) {
  using Acc = typename Op::Acc;
  constexpr int V = int(16 / sizeof(T));
  p.col_blocks = ceil_div(ceil_div(p.columns, std::max(width, 1)), 32);
  p.chunk = p.length, p.splits = 1;
  const int64_t threads = p.col_blocks * 32 * kRowLanes * p.outer;
  if (threads < kTargetThreads) {
    const int64_t splits = std::min(ceil_div(kTargetThreads, threads), ceil_div(p.length, kMinRowsPerSplit));
    if (splits > 1) {
      p.chunk = ceil_div(p.length, splits);
      p.splits = ceil_div(p.length, p.chunk);
    }
  }
  Tensor workspace;
  Acc* partial = p.splits > 1 ? workspace_for<Acc>(workspace, p.splits * p.outer * p.columns, device) : nullptr;
  if (width == 0) launch_columns_as<T, Op, 1, true>(in, p, partial, out, index);
  else if (width == 1) launch_columns_as<T, Op, 1, false>(in, p, partial, out, index);
  else launch_columns_as<T, Op, V, false>(in, p, partial, out, index);
  if (!partial) return;
  ColumnProblem q = p;
  q.length = p.splits, q.row_stride = p.outer * p.columns;
  q.outer_in = StridedLayout{};
  q.outer_in.ndim = 1, q.outer_in.sizes[0] = p.outer, q.outer_in.strides[0] = p.columns;
  reduce_columns<T, Op>(partial, 0, q, out, index, device);
}

template <typename T, typename Op>
void run_plan(const Tensor& x, const Plan& plan, const Tensor& out, const Tensor& index) {
  constexpr int V = int(16 / sizeof(T));
  const T* in = data_at<const T>(x);
  T* o = data_at<T>(out);
  int64_t* idx = index.defined() ? data_at<int64_t>(index) : nullptr;
  const bool one_reduced = plan.reduced.size() == 1;
  if (one_reduced && plan.reduced[0].in_stride == 1) {
    RowProblem p;
    p.rows = plan.rows, p.length = plan.length;
    p.kept = layout_from(plan.kept, false), p.out = layout_from(plan.kept, true);
    return reduce_rows<T, Op>(in, true, p, o, idx, x.device());
  }
  // A kept dim of stride 1 (the last such one: the innermost) makes the columns.
  int column_dim = -1;
  for (size_t i = 0; i < plan.kept.size(); ++i)
    if (plan.kept[i].in_stride == 1) column_dim = int(i);
  if (one_reduced && column_dim >= 0) {
    std::vector<Dim> outer = plan.kept;
    const Dim column = outer[size_t(column_dim)];
    outer.erase(outer.begin() + column_dim);
    ColumnProblem p;
    p.columns = column.size, p.out_col_stride = column.out_stride;
    p.outer = plan.rows / column.size;
    p.length = plan.length, p.row_stride = plan.reduced[0].in_stride;
    p.outer_in = layout_from(outer, false), p.outer_out = layout_from(outer, true);
    bool vector = aligned16(in) && p.columns % V == 0 && p.row_stride % V == 0;
    for (const Dim& d : outer) vector = vector && d.in_stride % V == 0;
    return reduce_columns<T, Op>(in, vector ? V : 1, p, o, idx, x.device());
  }
  RowProblem p;
  p.rows = plan.rows, p.length = plan.length;
  p.kept = layout_from(plan.kept, false), p.out = layout_from(plan.kept, true);
  p.reduced = layout_from(plan.reduced, false);
  reduce_rows<T, Op>(in, false, p, o, idx, x.device());
}

template <typename Fn>
decltype(auto) dispatch_all_device(DType dtype, const char* op, Fn&& fn) {
  return dispatch_all(dtype, op, [&]<typename T>() { return fn.template operator()<device_t<T>>(); });
}

int64_t reduced_numel(const Tensor& x, const std::vector<int64_t>& dims) {
  int64_t n = 1;
  for (int64_t d : dims) n *= x.shape()[size_t(d)];
  return n;
}

// The shared driver: empty outputs, empty reductions and size-1 reductions need no kernel.
template <template <typename> class OpT>
void reduce_into(const char* op, const Tensor& x, const std::vector<int64_t>& dims, const Tensor& out,
                 const Tensor& index) {
  if (out.numel() == 0) return;
  DeviceGuard guard(x.device().index);
  if (reduced_numel(x, dims) == 0) return fill_(out, 0.0);  // a sum over nothing
  const Plan plan = plan_reduction(x, dims, op);
  if (plan.reduced.empty()) {  // every reduced dim has size 1: the values themselves
    copy_into(out, x);
    if (index.defined()) fill_(index, 0.0);
    return;
  }
  dispatch_all_device(x.dtype(), op, [&]<typename T>() { run_plan<T, OpT<acc_of<T>>>(x, plan, out, index); });
}

}  // namespace

Tensor sum_dims(const Tensor& x, const std::vector<int64_t>& dims) {
  check_cuda_tensor("sum", x, "input");
  Tensor out = empty(kept_shape_of(x, dims), x.options());
  reduce_into<SumOp>("sum", x, dims, out, Tensor());
  return out;
}

Tensor amax_dims(const Tensor& x, const std::vector<int64_t>& dims) {
  check_cuda_tensor("amax", x, "input");
  SCANLINE_CHECK(reduced_numel(x, dims) > 0, "amax: cannot reduce over an empty dimension of ", describe(x));
  Tensor out = empty(kept_shape_of(x, dims), x.options());
  reduce_into<MaxOp>("amax", x, dims, out, Tensor());
  return out;
}

std::pair<Tensor, Tensor> max_along(const Tensor& x, int64_t dim) {
  check_cuda_tensor("max", x, "input");
  SCANLINE_CHECK(dim >= 0 && dim < x.dim(), "max: dim ", dim, " is out of range for ", describe(x));
  SCANLINE_CHECK(x.shape()[size_t(dim)] > 0, "max: cannot reduce over an empty dimension of ", describe(x));
  Tensor values = empty(kept_shape_of(x, {dim}), x.options());
  Tensor indices = empty(values.shape(), x.options().with_dtype(DType::i64));
  reduce_into<ArgMaxOp>("max", x, {dim}, values, indices);
  return {values, indices};
}

}  // namespace scanline::cuda
