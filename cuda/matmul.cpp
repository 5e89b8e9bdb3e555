#include "cuda/matmul.h"

#include <cublasLt.h>

#include <algorithm>
#include <climits>
#include <cstdint>
#include <functional>
#include <map>
#include <mutex>
#include <optional>
#include <string>
#include <unordered_map>
#include <utility>

#include "core/cuda/launch.h"
#include "core/cuda/stream.h"
#include "cuda/cublas_check.h"

namespace scanline::cuda {
namespace {

// cuBLAS's recommended workspace on Hopper (split-K and stream-K algorithms need it).
constexpr size_t kWorkspaceBytes = size_t(32) << 20;
constexpr int kMaxDevices = 64;

// ---- Long-lived state -------------------------------------------------------------------------
// Handles, workspaces and plans are created on first use and deliberately never destroyed:
// tearing down cuBLASLt or freeing into the caching allocator during static destruction would
// race the CUDA runtime's own shutdown. One mutex guards all of it, and the enqueueing of each
// product (a cached descriptor gets its bias pointer set per call).
std::mutex& state_mutex() {
  static auto* mutex = new std::mutex;
  return *mutex;
}

cublasLtHandle_t handle_for(int device) {
  static auto* handles = new cublasLtHandle_t[kMaxDevices]();
  SCANLINE_CHECK(device >= 0 && device < kMaxDevices, "matmul: CUDA device index ", device,
                 " is beyond the supported ", kMaxDevices);
  if (!handles[device]) {
    DeviceGuard guard(device);
    CUBLAS_CHECK(cublasLtCreate(&handles[device]));
  }
  return handles[device];
}

// One workspace per (device, stream): two streams never share scratch memory, and the memory
// comes from the caching allocator on the stream that uses it.
void* workspace_for(int device, cudaStream_t stream) {
  static auto* workspaces = new std::map<std::pair<int, cudaStream_t>, Tensor>;
  auto key = std::make_pair(device, stream);
  auto it = workspaces->find(key);
  if (it == workspaces->end()) {
    Tensor ws = empty({int64_t(kWorkspaceBytes)}, {.dtype = DType::b8, .device = Device::cuda(device)});
    it = workspaces->emplace(key, ws).first;
  }
  return it->second.raw_data();
}

// ---- Operand layouts ----------------------------------------------------------------------------

// How a rows x cols row-major-indexed matrix with element strides (rs, cs) is read without a
// copy: as stored row-major (unit column stride, ld = rs) or as the transpose of a row-major
// matrix (unit row stride, ld = cs). Strides of size-1 dims never matter.
struct MatrixLayout {
  bool transposed;
  int64_t ld;
};

std::optional<MatrixLayout> matrix_layout(int64_t rows, int64_t cols, int64_t rs, int64_t cs) {
  if ((cs == 1 || cols == 1) && (rows == 1 || rs >= std::max<int64_t>(cols, 1)))
    return MatrixLayout{false, rows == 1 ? std::max<int64_t>(cols, 1) : rs};
  if ((rs == 1 || rows == 1) && (cols == 1 || cs >= std::max<int64_t>(rows, 1)))
    return MatrixLayout{true, cols == 1 ? std::max<int64_t>(rows, 1) : cs};
  return std::nullopt;
}

// The one stride that steps t through its batch dims (all but the last two) in row-major batch
// order, or nullopt when they don't collapse to one stride (e.g. a broadcast over an inner
// batch dim but not an outer one). 0 for a single or fully broadcast batch.
std::optional<int64_t> batch_stride(const Tensor& t) {
  std::optional<int64_t> unit;
  int64_t span = 1;  // batch elements one step of dim d spans
  for (int64_t d = t.dim() - 3; d >= 0; --d) {
    const int64_t size = t.shape()[size_t(d)], stride = t.strides()[size_t(d)];
    if (size == 1) continue;
    if (!unit) unit = stride;
    else if (stride != *unit * span) return std::nullopt;
    span *= size;
  }
  return unit.value_or(0);
}

// One GEMM operand as the kernel reads it: batch matrices of rows x cols at storage offsets
// t.offset() + i * batch_stride, element (r, c) at r * rs + c * cs.
struct Operand {
  Tensor t;
  int64_t rows, cols, rs, cs, batch_stride;
  MatrixLayout layout{false, 0};

  // Replaces the operand with a contiguous copy (one matrix when the batch is broadcast).
  void make_contiguous(int64_t batch) {
    const bool one = batch == 1 || batch_stride == 0;
    Tensor view = one ? as_strided(t, {rows, cols}, {rs, cs}, t.offset())
                      : as_strided(t, {batch, rows, cols}, {batch_stride, rs, cs}, t.offset());
    t = contiguous_copy(view, view.dtype(), view.device());
    rs = cols;
    cs = 1;
    batch_stride = one ? 0 : rows * cols;
  }
  // Reads the operand in place when its strides allow, else copies it first.
  void resolve_layout(int64_t batch) {
    auto l = matrix_layout(rows, cols, rs, cs);
    if (!l) {
      make_contiguous(batch);
      l = matrix_layout(rows, cols, rs, cs);
    }
    layout = *l;
  }
  const void* data() const { return t.raw_data(); }
};

// Largest power of two (up to 256, cuBLASLt's default assumption) dividing the address.
uint32_t alignment_of(const void* p) {
  const auto address = reinterpret_cast<uintptr_t>(p);
  uint32_t alignment = 1;
  while (alignment < 256 && address % (2 * alignment) == 0) alignment *= 2;
  return alignment;
}

// ---- Plans: descriptors and the chosen algorithm, cached per problem -----------------------------
// Everything in cuBLASLt's own column-major terms: D (M x N) = op(A) (M x K) @ op(B) (K x N). Our
// row-major out (rows x n) is D = out^T, so cuBLASLt's A is our b and its B is our a.
struct PlanKey {
  int device;
  DType dtype;
  bool tf32, bias;
  bool trans_a, trans_b;
  int64_t m, n, k, batch;
  int64_t lda, ldb, ldc, stride_a, stride_b, stride_c;
  uint32_t align_a, align_b, align_c, align_bias;
  bool operator==(const PlanKey&) const = default;
};

struct PlanKeyHash {
  size_t operator()(const PlanKey& key) const {
    size_t h = 0;
    auto mix = [&h](uint64_t v) { h ^= std::hash<uint64_t>{}(v) + 0x9e3779b97f4a7c15ULL + (h << 6) + (h >> 2); };
    mix(uint64_t(key.device));
    mix(uint64_t(key.dtype) | uint64_t(key.tf32) << 8 | uint64_t(key.bias) << 9 | uint64_t(key.trans_a) << 10 |
        uint64_t(key.trans_b) << 11);
    for (int64_t v : {key.m, key.n, key.k, key.batch, key.lda, key.ldb, key.ldc, key.stride_a, key.stride_b,
                      key.stride_c})
      mix(uint64_t(v));
    mix(uint64_t(key.align_a) | uint64_t(key.align_b) << 16 | uint64_t(key.align_c) << 32 |
        uint64_t(key.align_bias) << 48);
    return h;
  }
};

struct Plan {
  cublasLtMatmulDesc_t desc = nullptr;
  cublasLtMatrixLayout_t a = nullptr, b = nullptr, c = nullptr;
  cublasLtMatmulAlgo_t algo{};
  bool found = false;  // false: cuBLASLt has no algorithm for this problem (e.g. this epilogue)
};

std::unordered_map<PlanKey, Plan, PlanKeyHash>& plans() {
  static auto* cache = new std::unordered_map<PlanKey, Plan, PlanKeyHash>;
  return *cache;
}

struct TypeInfo {
  cudaDataType_t data;
  cublasComputeType_t compute;
  cudaDataType_t scale;
};

TypeInfo types_for(DType dtype, bool tf32) {
  switch (dtype) {
    case DType::f32: return {CUDA_R_32F, tf32 ? CUBLAS_COMPUTE_32F_FAST_TF32 : CUBLAS_COMPUTE_32F, CUDA_R_32F};
    case DType::bf16: return {CUDA_R_16BF, CUBLAS_COMPUTE_32F, CUDA_R_32F};
    case DType::f16: return {CUDA_R_16F, CUBLAS_COMPUTE_32F, CUDA_R_32F};
    case DType::f64: return {CUDA_R_64F, CUBLAS_COMPUTE_64F, CUDA_R_64F};
    default: SCANLINE_FAIL("matmul: expected a floating dtype (f64, f32, bf16, f16) but found ", dtype);
  }
}

cublasLtMatrixLayout_t make_layout(cudaDataType_t type, int64_t rows, int64_t cols, int64_t ld, int64_t batch,
                                   int64_t stride) {
  cublasLtMatrixLayout_t layout = nullptr;
  CUBLAS_CHECK(cublasLtMatrixLayoutCreate(&layout, type, uint64_t(rows), uint64_t(cols), ld));
  if (batch > 1) {
    const int32_t count = int32_t(batch);
    CUBLAS_CHECK(cublasLtMatrixLayoutSetAttribute(layout, CUBLASLT_MATRIX_LAYOUT_BATCH_COUNT, &count, sizeof(count)));
    CUBLAS_CHECK(
        cublasLtMatrixLayoutSetAttribute(layout, CUBLASLT_MATRIX_LAYOUT_STRIDED_BATCH_OFFSET, &stride, sizeof(stride)));
  }
  return layout;
}

// Builds the descriptors and asks cuBLASLt's heuristic for its best algorithm under our workspace
// size, the operands' actual alignments, and split-K reductions kept in the compute type.
Plan build_plan(cublasLtHandle_t handle, const PlanKey& key, const void* bias) {
  const TypeInfo types = types_for(key.dtype, key.tf32);
  Plan plan;
  CUBLAS_CHECK(cublasLtMatmulDescCreate(&plan.desc, types.compute, types.scale));
  const int32_t trans_a = key.trans_a ? CUBLAS_OP_T : CUBLAS_OP_N;
  const int32_t trans_b = key.trans_b ? CUBLAS_OP_T : CUBLAS_OP_N;
  CUBLAS_CHECK(cublasLtMatmulDescSetAttribute(plan.desc, CUBLASLT_MATMUL_DESC_TRANSA, &trans_a, sizeof(trans_a)));
  CUBLAS_CHECK(cublasLtMatmulDescSetAttribute(plan.desc, CUBLASLT_MATMUL_DESC_TRANSB, &trans_b, sizeof(trans_b)));
  if (key.bias) {
    // Bias of length M (= D's rows = our n), packed, the output's type, broadcast over columns
    // (our rows) and, with the default batch stride 0, over the batch.
    const uint32_t epilogue = CUBLASLT_EPILOGUE_BIAS;
    const int32_t bias_type = types.data;
    CUBLAS_CHECK(cublasLtMatmulDescSetAttribute(plan.desc, CUBLASLT_MATMUL_DESC_EPILOGUE, &epilogue, sizeof(epilogue)));
    CUBLAS_CHECK(
        cublasLtMatmulDescSetAttribute(plan.desc, CUBLASLT_MATMUL_DESC_BIAS_DATA_TYPE, &bias_type, sizeof(bias_type)));
    CUBLAS_CHECK(cublasLtMatmulDescSetAttribute(plan.desc, CUBLASLT_MATMUL_DESC_BIAS_POINTER, &bias, sizeof(bias)));
  }
  // op(A) is M x K: stored M x K, or K x M when transposed; likewise op(B) K x N.
  plan.a = make_layout(types.data, key.trans_a ? key.k : key.m, key.trans_a ? key.m : key.k, key.lda, key.batch,
                       key.stride_a);
  plan.b = make_layout(types.data, key.trans_b ? key.n : key.k, key.trans_b ? key.k : key.n, key.ldb, key.batch,
                       key.stride_b);
  plan.c = make_layout(types.data, key.m, key.n, key.ldc, key.batch, key.stride_c);

  cublasLtMatmulPreference_t preference = nullptr;
  CUBLAS_CHECK(cublasLtMatmulPreferenceCreate(&preference));
  const uint64_t workspace = kWorkspaceBytes;
  // Allow no split-K scheme that sums partials in the output type (INPLACE, OUTPUT_TYPE): bf16
  // partial sums would break fp32 accumulation, and in-place reduction order is not fixed.
  const uint32_t reduction = CUBLASLT_REDUCTION_SCHEME_COMPUTE_TYPE;
  CUBLAS_CHECK(cublasLtMatmulPreferenceSetAttribute(preference, CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES, &workspace,
                                                    sizeof(workspace)));
  CUBLAS_CHECK(cublasLtMatmulPreferenceSetAttribute(preference, CUBLASLT_MATMUL_PREF_REDUCTION_SCHEME_MASK, &reduction,
                                                    sizeof(reduction)));
  CUBLAS_CHECK(cublasLtMatmulPreferenceSetAttribute(preference, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_A_BYTES,
                                                    &key.align_a, sizeof(key.align_a)));
  CUBLAS_CHECK(cublasLtMatmulPreferenceSetAttribute(preference, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_B_BYTES,
                                                    &key.align_b, sizeof(key.align_b)));
  CUBLAS_CHECK(cublasLtMatmulPreferenceSetAttribute(preference, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_C_BYTES,
                                                    &key.align_c, sizeof(key.align_c)));
  CUBLAS_CHECK(cublasLtMatmulPreferenceSetAttribute(preference, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_D_BYTES,
                                                    &key.align_c, sizeof(key.align_c)));
  cublasLtMatmulHeuristicResult_t result{};
  int returned = 0;
  const cublasStatus_t status = cublasLtMatmulAlgoGetHeuristic(handle, plan.desc, plan.a, plan.b, plan.c, plan.c,
                                                               preference, 1, &result, &returned);
  CUBLAS_CHECK(cublasLtMatmulPreferenceDestroy(preference));
  // NOT_SUPPORTED: no algorithm for this configuration. An epilogue cuBLASLt rejects for this
  // dtype is "not found" too (the caller adds the bias itself); anything else is our bug.
  const bool tolerated = status == CUBLAS_STATUS_NOT_SUPPORTED || (key.bias && status == CUBLAS_STATUS_INVALID_VALUE);
  SCANLINE_CHECK(status == CUBLAS_STATUS_SUCCESS || tolerated, "cuBLAS error in cublasLtMatmulAlgoGetHeuristic: ",
                 cublasGetStatusName(status), " (", cublasGetStatusString(status), ")");
  plan.found = status == CUBLAS_STATUS_SUCCESS && returned > 0 && result.state == CUBLAS_STATUS_SUCCESS;
  if (plan.found) plan.algo = result.algo;
  return plan;
}

// The cached plan for key (built on first use). Caller holds state_mutex().
Plan& plan_for(cublasLtHandle_t handle, const PlanKey& key, const void* bias) {
  auto& cache = plans();
  auto it = cache.find(key);
  if (it == cache.end()) it = cache.emplace(key, build_plan(handle, key, bias)).first;
  return it->second;
}

std::string describe_problem(const PlanKey& key) {
  return std::string(dtype_name(key.dtype)) + " [" + std::to_string(key.n) + " x " + std::to_string(key.k) + "] @ [" +
         std::to_string(key.k) + " x " + std::to_string(key.m) + "], batch " + std::to_string(key.batch) +
         (key.tf32 ? ", tf32" : "");
}

}  // namespace

Tensor gemm(const Tensor& a_in, const Tensor& b_in, const Tensor& bias_in, bool allow_tf32) {
  check_cuda_tensor("matmul", a_in, "a");
  check_cuda_tensor("matmul", b_in, "b");
  SCANLINE_CHECK(a_in.dim() >= 2 && a_in.dim() == b_in.dim(),
                 "matmul: expected operands of equal rank >= 2 but found ", describe(a_in), " and ", describe(b_in));
  SCANLINE_CHECK(a_in.dtype() == b_in.dtype() && is_floating(a_in.dtype()),
                 "matmul: expected operands of one floating dtype but found ", describe(a_in), " and ", describe(b_in));
  SCANLINE_CHECK(a_in.device() == b_in.device(), "matmul: operands on different devices: ", describe(a_in), " and ",
                 describe(b_in));
  const int64_t nd = a_in.dim();
  const int64_t m = a_in.size(-2), k = a_in.size(-1), n = b_in.size(-1);
  const Shape batch_shape(a_in.shape().begin(), a_in.shape().end() - 2);
  SCANLINE_CHECK(Shape(b_in.shape().begin(), b_in.shape().end() - 2) == batch_shape && b_in.size(-2) == k,
                 "matmul: operands do not match: ", describe(a_in), " @ ", describe(b_in));
  if (bias_in.defined()) {
    check_cuda_tensor("matmul", bias_in, "bias");
    SCANLINE_CHECK(bias_in.dim() == 1 && bias_in.size(0) == n && bias_in.dtype() == a_in.dtype() &&
                       bias_in.device() == a_in.device(),
                   "matmul: expected a bias of shape [", n, "] like ", describe(a_in), " but found ", describe(bias_in));
  }

  const int device = a_in.device().index;
  DeviceGuard guard(device);
  Shape out_shape = batch_shape;
  out_shape.insert(out_shape.end(), {m, n});
  Tensor out = empty(out_shape, a_in.options());
  if (out.numel() == 0) return out;

  // The bias read as the whole output (stride 0 over every dim but the last).
  auto bias_broadcast = [&] {
    Shape strides(size_t(nd), 0);
    strides.back() = bias_in.strides()[0];
    return as_strided(bias_in, out_shape, strides, bias_in.offset());
  };
  if (k == 0) {  // an empty sum
    if (bias_in.defined()) copy_into(out, bias_broadcast());
    else fill_(out, 0.0);
    return out;
  }

  int64_t batch = numel_of(batch_shape);
  Operand a{a_in, m, k, a_in.strides()[size_t(nd - 2)], a_in.strides()[size_t(nd - 1)], 0};
  Operand b{b_in, k, n, b_in.strides()[size_t(nd - 2)], b_in.strides()[size_t(nd - 1)], 0};
  for (Operand* op : {&a, &b}) {
    if (std::optional<int64_t> stride = batch_stride(op->t)) {
      op->batch_stride = *stride;
    } else {  // batch dims that don't collapse to one stride: expand into a contiguous copy
      op->t = contiguous_copy(op->t, op->t.dtype(), op->t.device());
      op->rs = op->cols;
      op->cs = 1;
      op->batch_stride = op->rows * op->cols;
    }
  }
  // A batch of row blocks times one shared b (e.g. activations @ a weight) is a single GEMM of
  // batch * m rows: the output is contiguous, so its rows follow each other the same way.
  if (batch > 1 && b.batch_stride == 0 && batch * m <= INT_MAX && (m == 1 || a.batch_stride == m * a.rs)) {
    if (m == 1) a.rs = a.batch_stride;
    a.rows = batch * m;
    a.batch_stride = 0;
    batch = 1;
  }
  SCANLINE_CHECK(a.rows <= INT_MAX && n <= INT_MAX && k <= INT_MAX && batch <= INT_MAX,
                 "matmul: sizes (rows ", a.rows, ", n ", n, ", k ", k, ", batch ", batch,
                 ") exceed what cuBLASLt accepts (2^31 - 1)");
  a.resolve_layout(batch);
  b.resolve_layout(batch);

  const DType dtype = a_in.dtype();
  const bool tf32 = allow_tf32 && dtype == DType::f32;
  Tensor bias;
  if (bias_in.defined()) bias = bias_in.strides()[0] == 1 ? bias_in : contiguous_copy(bias_in, dtype, bias_in.device());
  const double one = 1.0, zero = 0.0;
  const float one_f = 1.0f, zero_f = 0.0f;
  const bool double_scale = dtype == DType::f64;
  cudaStream_t stream = current_stream(device);

  std::lock_guard<std::mutex> lock(state_mutex());
  cublasLtHandle_t handle = handle_for(device);
  void* workspace = workspace_for(device, stream);
  bool use_epilogue = bias.defined();
  for (int attempt = 0;; ++attempt) {
    const void* bias_ptr = use_epilogue ? bias.raw_data() : nullptr;
    PlanKey key{};
    key.device = device;
    key.dtype = dtype;
    key.tf32 = tf32;
    key.bias = use_epilogue;
    key.trans_a = b.layout.transposed;  // cuBLASLt's A is our b (n x k as read), B is our a
    key.trans_b = a.layout.transposed;
    key.m = n;
    key.n = a.rows;
    key.k = k;
    key.batch = batch;
    key.lda = b.layout.ld;
    key.ldb = a.layout.ld;
    key.ldc = n;
    key.stride_a = batch > 1 ? b.batch_stride : 0;
    key.stride_b = batch > 1 ? a.batch_stride : 0;
    key.stride_c = batch > 1 ? a.rows * n : 0;
    key.align_a = alignment_of(b.data());
    key.align_b = alignment_of(a.data());
    key.align_c = alignment_of(out.raw_data());
    key.align_bias = use_epilogue ? alignment_of(bias_ptr) : 0;
    Plan& plan = plan_for(handle, key, bias_ptr);
    if (!plan.found && use_epilogue) {  // no fused bias for this problem: C = bias, beta = 1
      use_epilogue = false;
      continue;
    }
    if (!plan.found && attempt < 2 && std::min(key.align_a, key.align_b) < 16) {
      // Views at odd offsets: fresh copies are 512-byte aligned, which every algorithm accepts.
      for (auto [operand, alignment] : {std::pair{&b, key.align_a}, std::pair{&a, key.align_b}}) {
        if (alignment >= 16) continue;
        operand->make_contiguous(batch);
        operand->resolve_layout(batch);
      }
      continue;
    }
    SCANLINE_CHECK(plan.found, "matmul: cuBLASLt found no algorithm for ", describe_problem(key));
    const bool accumulate_bias = bias.defined() && !use_epilogue;
    if (accumulate_bias) copy_into(out, bias_broadcast());
    if (use_epilogue)
      CUBLAS_CHECK(cublasLtMatmulDescSetAttribute(plan.desc, CUBLASLT_MATMUL_DESC_BIAS_POINTER, &bias_ptr,
                                                  sizeof(bias_ptr)));
    const void* alpha = double_scale ? static_cast<const void*>(&one) : static_cast<const void*>(&one_f);
    const void* beta = accumulate_bias ? alpha
                                       : (double_scale ? static_cast<const void*>(&zero) : static_cast<const void*>(&zero_f));
    CUBLAS_CHECK(cublasLtMatmul(handle, plan.desc, alpha, b.data(), plan.a, a.data(), plan.b, beta, out.raw_data(),
                                plan.c, out.raw_data(), plan.c, &plan.algo, workspace, kWorkspaceBytes, stream));
    break;
  }
  if (sync_after_launch()) CUDA_CHECK(cudaStreamSynchronize(stream));
  return out;
}

Tensor linear(const Tensor& x, const Tensor& weight, const Tensor& bias, bool allow_tf32) {
  check_cuda_tensor("linear", x, "input");
  check_cuda_tensor("linear", weight, "weight");
  SCANLINE_CHECK(x.dim() == 2 && weight.dim() == 2 && x.size(1) == weight.size(1),
                 "linear: expected input (rows, in) and weight (out, in) but found ", describe(x), " and ",
                 describe(weight));
  // weight^T (in, out) as a view: cuBLASLt reads it with the transpose flag, no copy.
  Tensor weight_t = as_strided(weight, {weight.size(1), weight.size(0)}, {weight.stride(1), weight.stride(0)},
                               weight.offset());
  return gemm(x, weight_t, bias, allow_tf32);
}

size_t gemm_plan_count() {
  std::lock_guard<std::mutex> lock(state_mutex());
  return plans().size();
}

}  // namespace scanline::cuda
