// cuDNN attention engine (see cuda/attention_cudnn.h): the engine choice, and under
// SCANLINE_HAVE_CUDNN the operation graphs, plans and their execution.
#include "cuda/attention_cudnn.h"

#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>

#include "core/cuda/stream.h"

#ifdef SCANLINE_HAVE_CUDNN
#include <algorithm>
#include <array>
#include <bit>
#include <limits>
#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <sstream>

#include "cuda/attention_launch.h"
#include "cuda/cudnn_check.h"
#endif

namespace scanline::cuda {

AttentionEngine attention_engine() {
  const char* env = std::getenv("SCANLINE_ATTENTION_ENGINE");
  if (env == nullptr || *env == '\0' || std::strcmp(env, "auto") == 0) return AttentionEngine::automatic;
  if (std::strcmp(env, "cudnn") == 0) return AttentionEngine::cudnn;
  if (std::strcmp(env, "native") == 0) return AttentionEngine::native;
  SCANLINE_FAIL("SCANLINE_ATTENTION_ENGINE must be auto, cudnn or native but is '", env, "'");
}

namespace {

// The inputs the cuDNN engine is for; everything else goes to our kernels in every mode.
bool cudnn_engine_takes(const Tensor& q) {
  return q.dtype() == DType::bf16 && q.dim() == 4 && (q.size(3) == 64 || q.size(3) == 128) && q.numel() > 0;
}

}  // namespace

#ifdef SCANLINE_HAVE_CUDNN

namespace {

bool debug_enabled() {
  static const bool on = [] {
    const char* env = std::getenv("SCANLINE_CUDNN_DEBUG");
    return env != nullptr && *env != '\0' && std::strcmp(env, "0") != 0;
  }();
  return on;
}

constexpr int kMaxDevices = 64;
constexpr int64_t kAlign = 256;  // bytes between the pieces of one workspace allocation

// ---- Long-lived state ---------------------------------------------------------------------------
// Handles and plans are created on first use and never destroyed (as cuda/matmul.cpp's cuBLASLt
// state): destroying them during static destruction would race the CUDA runtime's shutdown. One
// mutex guards the cache and each use of a handle (cudnnSetStream + cudnnBackendExecute).
std::mutex& state_mutex() {
  static auto* mutex = new std::mutex;
  return *mutex;
}

cudnnHandle_t handle_for(int device) {
  static auto* handles = new cudnnHandle_t[kMaxDevices]();
  SCANLINE_CHECK(device >= 0 && device < kMaxDevices, "attention (cuDNN): CUDA device index ", device,
                 " is beyond the supported ", kMaxDevices);
  if (!handles[device]) {
    DeviceGuard guard(device);
    CUDNN_CHECK(cudnnCreate(&handles[device]));
  }
  return handles[device];
}

int64_t runtime_version() {
  static const int64_t version = int64_t(cudnnGetVersion());
  return version;
}

// ---- Graph construction -------------------------------------------------------------------------

using Dims = std::array<int64_t, 4>;

// Unique ids of the tensors the caller binds to memory (the variant pack); virtual tensors count
// up from kFirstVirtual.
enum Uid : int64_t {
  kQ = 1, kK, kV, kO, kStats, kScale, kNegInf, kDO, kDQ, kDK, kDV, kSoftmaxSum, kDQAccum, kOne, kSeqQ, kSeqKV,
  kFirstVirtual = 100
};

std::string dims_text(const Dims& d) {
  std::ostringstream out;
  out << '[' << d[0] << ", " << d[1] << ", " << d[2] << ", " << d[3] << ']';
  return out.str();
}

// The descriptors of one operation graph, kept alive with it: tensors, each operation and the
// descriptors operations reference (matmul, pointwise and reduction descriptors).
class Graph {
 public:
  explicit Graph(std::string name) : name_(std::move(name)) {}

  cudnnBackendDescriptor_t tensor(const std::string& what, int64_t uid, cudnnDataType_t type, const Dims& dims,
                                  const Dims& strides, bool is_virtual, bool by_value = false) {
    BackendDescriptor& t = keep(CUDNN_DESC(CUDNN_BACKEND_TENSOR_DESCRIPTOR),
                                "tensor " + what + " " + dims_text(dims) + " strides " + dims_text(strides));
    t.set_data_type(CUDNN_ATTR(CUDNN_ATTR_TENSOR_DATA_TYPE), type);
    t.set_int64s(CUDNN_ATTR(CUDNN_ATTR_TENSOR_DIMENSIONS), {dims.begin(), dims.end()});
    t.set_int64s(CUDNN_ATTR(CUDNN_ATTR_TENSOR_STRIDES), {strides.begin(), strides.end()});
    t.set_int64(CUDNN_ATTR(CUDNN_ATTR_TENSOR_UNIQUE_ID), uid);
    t.set_int64(CUDNN_ATTR(CUDNN_ATTR_TENSOR_BYTE_ALIGNMENT), 16);
    t.set_bool(CUDNN_ATTR(CUDNN_ATTR_TENSOR_IS_VIRTUAL), is_virtual);
    if (by_value) t.set_bool(CUDNN_ATTR(CUDNN_ATTR_TENSOR_IS_BY_VALUE), true);
    t.finalize();
    return t.get();
  }
  // An intermediate the fused engine keeps on chip.
  cudnnBackendDescriptor_t virt(const std::string& what, cudnnDataType_t type, const Dims& dims, const Dims& strides) {
    return tensor(what, next_uid_++, type, dims, strides, true);
  }
  // A scalar passed by value (its host address goes in the variant pack).
  cudnnBackendDescriptor_t scalar(const std::string& what, int64_t uid, cudnnDataType_t type = CUDNN_DATA_FLOAT) {
    return tensor(what, uid, type, {1, 1, 1, 1}, {1, 1, 1, 1}, false, true);
  }

  void matmul(const std::string& what, cudnnBackendDescriptor_t a, cudnnBackendDescriptor_t b,
              cudnnBackendDescriptor_t c, cudnnBackendDescriptor_t m_override = nullptr,
              cudnnBackendDescriptor_t n_override = nullptr, cudnnBackendDescriptor_t k_override = nullptr) {
    BackendDescriptor& desc = keep(CUDNN_DESC(CUDNN_BACKEND_MATMUL_DESCRIPTOR), "matmul " + what);
    desc.set_data_type(CUDNN_ATTR(CUDNN_ATTR_MATMUL_COMP_TYPE), CUDNN_DATA_FLOAT);
    desc.finalize();
    BackendDescriptor& op = keep(CUDNN_DESC(CUDNN_BACKEND_OPERATION_MATMUL_DESCRIPTOR), "matmul node " + what);
    op.set_desc(CUDNN_ATTR(CUDNN_ATTR_OPERATION_MATMUL_ADESC), a);
    op.set_desc(CUDNN_ATTR(CUDNN_ATTR_OPERATION_MATMUL_BDESC), b);
    op.set_desc(CUDNN_ATTR(CUDNN_ATTR_OPERATION_MATMUL_CDESC), c);
    op.set_desc(CUDNN_ATTR(CUDNN_ATTR_OPERATION_MATMUL_DESC), desc.get());
    if (m_override) op.set_desc(CUDNN_ATTR(CUDNN_ATTR_OPERATION_MATMUL_GEMM_M_OVERRIDE_DESC), m_override);
    if (n_override) op.set_desc(CUDNN_ATTR(CUDNN_ATTR_OPERATION_MATMUL_GEMM_N_OVERRIDE_DESC), n_override);
    if (k_override) op.set_desc(CUDNN_ATTR(CUDNN_ATTR_OPERATION_MATMUL_GEMM_K_OVERRIDE_DESC), k_override);
    op.finalize();
    ops_.push_back(op.get());
  }

  // y = mode(x[, b[, t]]); axis for GEN_INDEX.
  void pointwise(const std::string& what, cudnnPointwiseMode_t mode, cudnnBackendDescriptor_t x,
                 cudnnBackendDescriptor_t y, cudnnBackendDescriptor_t b = nullptr, cudnnBackendDescriptor_t t = nullptr,
                 cudnnDataType_t compute = CUDNN_DATA_FLOAT, int64_t axis = -1) {
    BackendDescriptor& desc = keep(CUDNN_DESC(CUDNN_BACKEND_POINTWISE_DESCRIPTOR), "pointwise " + what);
    desc.set(CUDNN_ATTR(CUDNN_ATTR_POINTWISE_MODE), CUDNN_TYPE_POINTWISE_MODE, 1, &mode);
    desc.set_data_type(CUDNN_ATTR(CUDNN_ATTR_POINTWISE_MATH_PREC), compute);
    if (axis >= 0) desc.set_int64(CUDNN_ATTR(CUDNN_ATTR_POINTWISE_AXIS), axis);
    desc.finalize();
    BackendDescriptor& op = keep(CUDNN_DESC(CUDNN_BACKEND_OPERATION_POINTWISE_DESCRIPTOR), "pointwise node " + what);
    op.set_desc(CUDNN_ATTR(CUDNN_ATTR_OPERATION_POINTWISE_PW_DESCRIPTOR), desc.get());
    op.set_desc(CUDNN_ATTR(CUDNN_ATTR_OPERATION_POINTWISE_XDESC), x);
    if (b) op.set_desc(CUDNN_ATTR(CUDNN_ATTR_OPERATION_POINTWISE_BDESC), b);
    if (t) op.set_desc(CUDNN_ATTR(CUDNN_ATTR_OPERATION_POINTWISE_TDESC), t);
    op.set_desc(CUDNN_ATTR(CUDNN_ATTR_OPERATION_POINTWISE_YDESC), y);
    op.finalize();
    ops_.push_back(op.get());
  }

  // y = reduce(x) over the dims where y has size 1 (or fewer heads: GQA groups).
  void reduction(const std::string& what, cudnnReduceTensorOp_t mode, cudnnBackendDescriptor_t x,
                 cudnnBackendDescriptor_t y) {
    BackendDescriptor& desc = keep(CUDNN_DESC(CUDNN_BACKEND_REDUCTION_DESCRIPTOR), "reduction " + what);
    desc.set(CUDNN_ATTR(CUDNN_ATTR_REDUCTION_OPERATOR), CUDNN_TYPE_REDUCTION_OPERATOR_TYPE, 1, &mode);
    desc.set_data_type(CUDNN_ATTR(CUDNN_ATTR_REDUCTION_COMP_TYPE), CUDNN_DATA_FLOAT);
    desc.finalize();
    BackendDescriptor& op = keep(CUDNN_DESC(CUDNN_BACKEND_OPERATION_REDUCTION_DESCRIPTOR), "reduction node " + what);
    op.set_desc(CUDNN_ATTR(CUDNN_ATTR_OPERATION_REDUCTION_XDESC), x);
    op.set_desc(CUDNN_ATTR(CUDNN_ATTR_OPERATION_REDUCTION_YDESC), y);
    op.set_desc(CUDNN_ATTR(CUDNN_ATTR_OPERATION_REDUCTION_DESC), desc.get());
    op.finalize();
    ops_.push_back(op.get());
  }

  // y: x's elements under other dims/strides (a transpose).
  void reshape(const std::string& what, cudnnBackendDescriptor_t x, cudnnBackendDescriptor_t y) {
    BackendDescriptor& op = keep(CUDNN_DESC(CUDNN_BACKEND_OPERATION_RESHAPE_DESCRIPTOR), "reshape node " + what);
    op.set_desc(CUDNN_ATTR(CUDNN_ATTR_OPERATION_RESHAPE_XDESC), x);
    op.set_desc(CUDNN_ATTR(CUDNN_ATTR_OPERATION_RESHAPE_YDESC), y);
    op.finalize();
    ops_.push_back(op.get());
  }

  // The operation graph of every node added so far (handle: null only for host-side checks).
  cudnnBackendDescriptor_t finalize(cudnnHandle_t handle) {
    BackendDescriptor& g = keep(CUDNN_DESC(CUDNN_BACKEND_OPERATIONGRAPH_DESCRIPTOR),
                                "the operation graph (" + std::to_string(ops_.size()) + " nodes)");
    if (handle) g.set_handle(CUDNN_ATTR(CUDNN_ATTR_OPERATIONGRAPH_HANDLE), handle);
    g.set_descs(CUDNN_ATTR(CUDNN_ATTR_OPERATIONGRAPH_OPS), ops_);
    g.finalize();
    return g.get();
  }

  BackendDescriptor& keep(cudnnBackendDescriptorType_t type, const char* type_name, const std::string& what) {
    descriptors_.push_back(std::make_unique<BackendDescriptor>(type, type_name, name_ + ": " + what));
    return *descriptors_.back();
  }

 private:
  std::string name_;
  std::vector<std::unique_ptr<BackendDescriptor>> descriptors_;
  std::vector<cudnnBackendDescriptor_t> ops_;
  int64_t next_uid_ = kFirstVirtual;
};

// One attention problem as cuDNN sees it: (batch, heads, L, headdim) element strides of each
// operand (from our (batch, L, heads, headdim) tensors).
struct Problem {
  int device = 0;
  bool backward = false;
  int64_t b = 0, h = 0, hk = 0, s = 0, d = 0;
  bool causal = false;
  double scale = 0.0;
  Dims q{}, k{}, v{}, o{}, dout{};  // BHSD strides
  Dims dq{}, dk{}, dv{}, stats{};    // backward: the outputs' BHSD strides and Stats' (b, h, s, 1) strides

  std::vector<int64_t> key() const {
    std::vector<int64_t> key{device, backward, b, h, hk, s, d, causal, std::bit_cast<int64_t>(scale)};
    for (const Dims* x : {&q, &k, &v, &o, &dout, &dq, &dk, &dv, &stats}) key.insert(key.end(), x->begin(), x->end());
    return key;
  }
  std::string text() const {
    std::ostringstream out;
    out << (backward ? "backward" : "forward") << " cuda:" << device << " batch " << b << " L " << s << " heads " << h
        << "/" << hk << " headdim " << d << (causal ? " causal" : " full") << " scale " << scale
        << " bf16, BHSD strides q " << dims_text(q) << " k " << dims_text(k) << " v " << dims_text(v);
    if (backward) out << " o " << dims_text(o) << " dO " << dims_text(dout);
    return out.str();
  }
};

// t itself when cuDNN can read it in place (last dim contiguous, 16-byte aligned data, every other
// dim of size > 1 a positive whole number of 16-byte rows apart), else a dense copy.
Tensor cudnn_operand(const Tensor& t) {
  bool ok = t.strides()[3] == 1 && aligned16(t.raw_data());
  for (size_t d = 0; d < 3; ++d) {
    const int64_t size = t.shape()[d], stride = t.strides()[d];
    ok = ok && (size == 1 || (stride > 0 && stride % 8 == 0));
  }
  return ok ? t : contiguous_copy(t, t.dtype(), t.device());
}

// (batch, L, heads, headdim) element strides read as (batch, heads, L, headdim).
Dims bhsd_strides(const Tensor& t) {
  const Shape& st = t.strides();
  return {st[0], st[2], st[1], st[3]};
}
Dims packed_bhsd(int64_t h, int64_t s, int64_t d) { return {h * s * d, s * d, d, 1}; }
// Our contiguous (batch, L, heads, headdim) outputs as BHSD.
Dims our_layout(int64_t h, int64_t s, int64_t d) { return {s * h * d, d, h * d, 1}; }

float negative_infinity() {
  // cudnn-frontend masks with the lowest float before cuDNN 9.10 and with -inf from then on.
  return runtime_version() < 91000 ? -3.4028234663852886e38f : -std::numeric_limits<float>::infinity();
}

// A cached plan: the graph's descriptors, the execution plan, and what a call must provide.
struct Plan {
  std::string problem;   // Problem::text()
  std::string error;     // non-empty: cuDNN rejected the problem (the plan is unusable)
  std::string engine;    // the engine config chosen (for cudnn_attention_plans())
  std::unique_ptr<Graph> graph;
  std::vector<std::unique_ptr<BackendDescriptor>> keep;  // engine heuristics, configs, the plan
  cudnnBackendDescriptor_t plan = nullptr;
  int64_t workspace = 0;                     // cuDNN's own workspace bytes
  int64_t softmax_sum_bytes = 0, dq_accum_bytes = 0;  // backward buffers the graph names
  bool zero_dq_accum = false;                // cuDNN < 9.6 wants dQ_accum zeroed by the caller
  Tensor seq_q, seq_kv;                      // i32 (batch) = L: the padding-mask workaround's inputs
  float neg_inf = 0.0f;                      // the masks' by-value -inf (or lowest float)
};

// The causal mask of cudnn-frontend's SDPA: keep s_ij where i >= j, else -inf.
cudnnBackendDescriptor_t causal_mask(Graph& g, cudnnBackendDescriptor_t s, cudnnBackendDescriptor_t neg_inf,
                                     const Dims& dims, const Dims& strides) {
  auto row = g.virt("causal row index", CUDNN_DATA_INT32, dims, strides);
  g.pointwise("causal row index", CUDNN_POINTWISE_GEN_INDEX, s, row, nullptr, nullptr, CUDNN_DATA_INT32, 2);
  auto col = g.virt("causal column index", CUDNN_DATA_INT32, dims, strides);
  g.pointwise("causal column index", CUDNN_POINTWISE_GEN_INDEX, s, col, nullptr, nullptr, CUDNN_DATA_INT32, 3);
  auto keep = g.virt("causal row >= column", CUDNN_DATA_BOOLEAN, dims, strides);
  g.pointwise("causal row >= column", CUDNN_POINTWISE_CMP_GE, row, keep, col, nullptr, CUDNN_DATA_BOOLEAN);
  auto out = g.virt("causally masked scores", CUDNN_DATA_FLOAT, dims, strides);
  g.pointwise("causal select", CUDNN_POINTWISE_BINARY_SELECT, s, out, neg_inf, keep);
  return out;
}

// cudnn-frontend's padding mask (rows < seq_q and columns < seq_kv kept, else -inf).
cudnnBackendDescriptor_t padding_mask(Graph& g, const std::string& tag, cudnnBackendDescriptor_t s,
                                      cudnnBackendDescriptor_t neg_inf, cudnnBackendDescriptor_t seq_q,
                                      cudnnBackendDescriptor_t seq_kv, const Dims& dims, const Dims& strides) {
  auto row = g.virt("padding row index" + tag, CUDNN_DATA_INT32, dims, strides);
  g.pointwise("padding row index" + tag, CUDNN_POINTWISE_GEN_INDEX, s, row, nullptr, nullptr, CUDNN_DATA_INT32, 2);
  auto col = g.virt("padding column index" + tag, CUDNN_DATA_INT32, dims, strides);
  g.pointwise("padding column index" + tag, CUDNN_POINTWISE_GEN_INDEX, s, col, nullptr, nullptr, CUDNN_DATA_INT32, 3);
  auto row_ok = g.virt("padding row < seq_q" + tag, CUDNN_DATA_BOOLEAN, dims, strides);
  g.pointwise("padding row < seq_q" + tag, CUDNN_POINTWISE_CMP_LT, row, row_ok, seq_q, nullptr, CUDNN_DATA_BOOLEAN);
  auto col_ok = g.virt("padding column < seq_kv" + tag, CUDNN_DATA_BOOLEAN, dims, strides);
  g.pointwise("padding column < seq_kv" + tag, CUDNN_POINTWISE_CMP_LT, col, col_ok, seq_kv, nullptr,
              CUDNN_DATA_BOOLEAN);
  auto both = g.virt("padding mask" + tag, CUDNN_DATA_BOOLEAN, dims, strides);
  g.pointwise("padding mask" + tag, CUDNN_POINTWISE_LOGICAL_AND, row_ok, both, col_ok, nullptr, CUDNN_DATA_BOOLEAN);
  auto out = g.virt("padding-masked scores" + tag, CUDNN_DATA_FLOAT, dims, strides);
  g.pointwise("padding select" + tag, CUDNN_POINTWISE_BINARY_SELECT, s, out, neg_inf, both);
  return out;
}

// Forward: O = softmax(scale · Q Kᵀ [causal]) V and Stats = log Σ exp(scaled scores).
void build_forward(Graph& g, const Problem& p) {
  const int64_t b = p.b, h = p.h, hk = p.hk, s = p.s, d = p.d;
  auto Q = g.tensor("Q", kQ, CUDNN_DATA_BFLOAT16, {b, h, s, d}, p.q, false);
  auto KT = g.tensor("K^T", kK, CUDNN_DATA_BFLOAT16, {b, hk, d, s}, {p.k[0], p.k[1], p.k[3], p.k[2]}, false);
  auto V = g.tensor("V", kV, CUDNN_DATA_BFLOAT16, {b, hk, s, d}, p.v, false);
  auto O = g.tensor("O", kO, CUDNN_DATA_BFLOAT16, {b, h, s, d}, p.o, false);
  auto stats = g.tensor("Stats", kStats, CUDNN_DATA_FLOAT, {b, h, s, 1}, {h * s, s, 1, 1}, false);
  auto scale = g.scalar("attention scale", kScale);
  const Dims ss{b, h, s, s}, ss_strides{h * s * s, s * s, s, 1}, row{b, h, s, 1}, row_strides{h * s, s, 1, 1};

  auto S = g.virt("S", CUDNN_DATA_FLOAT, ss, ss_strides);
  g.matmul("S = Q K^T", Q, KT, S);
  auto scaled = g.virt("S * scale", CUDNN_DATA_FLOAT, ss, ss_strides);
  g.pointwise("S * scale", CUDNN_POINTWISE_MUL, S, scaled, scale);
  if (p.causal) scaled = causal_mask(g, scaled, g.scalar("-inf", kNegInf), ss, ss_strides);

  auto m = g.virt("row max", CUDNN_DATA_FLOAT, row, row_strides);
  g.reduction("row max", CUDNN_REDUCE_TENSOR_MAX, scaled, m);
  auto shifted = g.virt("S - max", CUDNN_DATA_FLOAT, ss, ss_strides);
  g.pointwise("S - max", CUDNN_POINTWISE_SUB, scaled, shifted, m);
  auto e = g.virt("exp(S - max)", CUDNN_DATA_FLOAT, ss, ss_strides);
  g.pointwise("exp(S - max)", CUDNN_POINTWISE_EXP, shifted, e);
  auto l = g.virt("row sum of exp", CUDNN_DATA_FLOAT, row, row_strides);
  g.reduction("row sum of exp", CUDNN_REDUCE_TENSOR_ADD, e, l);
  auto log_l = g.virt("log(row sum)", CUDNN_DATA_FLOAT, row, row_strides);
  g.pointwise("log(row sum)", CUDNN_POINTWISE_LOG, l, log_l);
  g.pointwise("Stats = max + log(sum)", CUDNN_POINTWISE_ADD, m, stats, log_l);
  // P in the inputs' type: cuDNN wants the second product's A operand in the I/O type.
  auto P = g.virt("P", CUDNN_DATA_BFLOAT16, ss, ss_strides);
  g.pointwise("P = exp / sum", CUDNN_POINTWISE_DIV, e, P, l);
  g.matmul("O = P V", P, V, O);
}

// Backward, as cudnn-frontend's composite SDPA backward (dQ accumulated in an f32 buffer). With
// the padding-mask workaround (cuDNN <= 9.15 and L % 128 != 0) the scores are masked with
// per-batch lengths equal to L, and the products carry the lengths as M/N/K overrides.
void build_backward(Graph& g, const Problem& p, Plan& plan, bool padding) {
  const int64_t b = p.b, h = p.h, hk = p.hk, s = p.s, d = p.d;
  auto Q = g.tensor("Q", kQ, CUDNN_DATA_BFLOAT16, {b, h, s, d}, p.q, false);
  auto KT = g.tensor("K^T", kK, CUDNN_DATA_BFLOAT16, {b, hk, d, s}, {p.k[0], p.k[1], p.k[3], p.k[2]}, false);
  auto VT = g.tensor("V^T", kV, CUDNN_DATA_BFLOAT16, {b, hk, d, s}, {p.v[0], p.v[1], p.v[3], p.v[2]}, false);
  auto O = g.tensor("O", kO, CUDNN_DATA_BFLOAT16, {b, h, s, d}, p.o, false);
  auto dO = g.tensor("dO", kDO, CUDNN_DATA_BFLOAT16, {b, h, s, d}, p.dout, false);
  auto stats = g.tensor("Stats", kStats, CUDNN_DATA_FLOAT, {b, h, s, 1}, p.stats, false);
  auto dQ = g.tensor("dQ", kDQ, CUDNN_DATA_BFLOAT16, {b, h, s, d}, p.dq, false);
  auto dK = g.tensor("dK", kDK, CUDNN_DATA_BFLOAT16, {b, hk, s, d}, p.dk, false);
  auto dV = g.tensor("dV", kDV, CUDNN_DATA_BFLOAT16, {b, hk, s, d}, p.dv, false);
  auto scale = g.scalar("attention scale", kScale);
  auto one = g.scalar("one", kOne);
  const bool need_neg_inf = p.causal || padding;
  auto neg_inf = need_neg_inf ? g.scalar("-inf", kNegInf) : nullptr;
  cudnnBackendDescriptor_t seq_q = nullptr, seq_kv = nullptr;
  if (padding) {
    seq_q = g.tensor("seq_len_q", kSeqQ, CUDNN_DATA_INT32, {b, 1, 1, 1}, {1, 1, 1, 1}, false);
    seq_kv = g.tensor("seq_len_kv", kSeqKV, CUDNN_DATA_INT32, {b, 1, 1, 1}, {1, 1, 1, 1}, false);
  }
  const Dims ss{b, h, s, s}, ss_strides{h * s * s, s * s, s, 1}, row{b, h, s, 1}, row_strides{h * s, s, 1, 1};
  const Dims ss_t_strides{h * s * s, s * s, 1, s};  // (b, h, s_kv, s_q) view of an (s_q, s_kv) matrix

  // D = rowsum(dO ∘ O), stored (the fused engine computes it in a pre-pass).
  auto dOO = g.virt("dO * O", CUDNN_DATA_FLOAT, {b, h, s, d}, packed_bhsd(h, s, d));
  g.pointwise("dO * O", CUDNN_POINTWISE_MUL, dO, dOO, O);
  auto rowsum = g.virt("rowsum(dO * O)", CUDNN_DATA_FLOAT, row, row_strides);
  g.reduction("rowsum(dO * O)", CUDNN_REDUCE_TENSOR_ADD, dOO, rowsum);
  auto softmax_sum = g.tensor("softmax_sum", kSoftmaxSum, CUDNN_DATA_FLOAT, row, row_strides, false);
  g.pointwise("softmax_sum = rowsum * 1", CUDNN_POINTWISE_MUL, rowsum, softmax_sum, one);
  plan.softmax_sum_bytes = b * h * s * 4;

  // P = exp(S · scale − Stats), masked.
  auto S = g.virt("S", CUDNN_DATA_FLOAT, ss, ss_strides);
  g.matmul("S = Q K^T", Q, KT, S, seq_q, seq_kv);
  auto scaled = g.virt("S * scale", CUDNN_DATA_FLOAT, ss, ss_strides);
  g.pointwise("S * scale", CUDNN_POINTWISE_MUL, S, scaled, scale);
  auto shifted = g.virt("S - Stats", CUDNN_DATA_FLOAT, ss, ss_strides);
  g.pointwise("S - Stats", CUDNN_POINTWISE_SUB, scaled, shifted, stats);
  if (padding) {
    shifted = padding_mask(g, "", shifted, neg_inf, seq_q, seq_kv, ss, ss_strides);
    // cudnn-frontend applies it a second time for cuDNN 9.0 to 9.9.
    if (runtime_version() >= 90000 && runtime_version() < 91000)
      shifted = padding_mask(g, " (again)", shifted, neg_inf, seq_q, seq_kv, ss, ss_strides);
  }
  if (p.causal) shifted = causal_mask(g, shifted, neg_inf, ss, ss_strides);
  auto P = g.virt("P = exp(S - Stats)", CUDNN_DATA_FLOAT, ss, ss_strides);
  g.pointwise("P = exp(S - Stats)", CUDNN_POINTWISE_EXP, shifted, P);

  // out (b, hk, s, d) = a · x: one product a query head, summed over each kv head's group (GQA).
  auto kv_head_product = [&](const std::string& name, const std::string& result, cudnnBackendDescriptor_t a,
                             cudnnBackendDescriptor_t x, cudnnBackendDescriptor_t out) {
    if (h == hk) {
      g.matmul(name, a, x, out, seq_kv, nullptr, seq_q);
      return;
    }
    auto per_head = g.virt(result + " per query head", CUDNN_DATA_BFLOAT16, {b, h, s, d}, packed_bhsd(h, s, d));
    g.matmul(name, a, x, per_head, seq_kv, nullptr, seq_q);
    g.reduction(result + " summed over the group", CUDNN_REDUCE_TENSOR_ADD, per_head, out);
  };
  // dV = Pᵀ dO (per query head, then summed over each kv head's group).
  auto PT = g.virt("P^T", CUDNN_DATA_BFLOAT16, {b, h, s, s}, ss_t_strides);
  g.reshape("P^T", P, PT);
  kv_head_product("dV = P^T dO", "dV", PT, dO, dV);

  // dS = P ∘ (dO Vᵀ − D) · scale.
  auto dP = g.virt("dP = dO V^T", CUDNN_DATA_FLOAT, ss, ss_strides);
  g.matmul("dP = dO V^T", dO, VT, dP, seq_q, seq_kv);
  auto dP_centered = g.virt("dP - softmax_sum", CUDNN_DATA_FLOAT, ss, ss_strides);
  g.pointwise("dP - softmax_sum", CUDNN_POINTWISE_SUB, dP, dP_centered, softmax_sum);
  auto dS_unscaled = g.virt("P * (dP - softmax_sum)", CUDNN_DATA_FLOAT, ss, ss_strides);
  g.pointwise("P * (dP - softmax_sum)", CUDNN_POINTWISE_MUL, dP_centered, dS_unscaled, P);
  auto dS = g.virt("dS", CUDNN_DATA_FLOAT, ss, ss_strides);
  g.pointwise("dS = ... * scale", CUDNN_POINTWISE_MUL, dS_unscaled, dS, scale);

  // dK = dSᵀ Q (per query head, then summed over the group).
  auto dST = g.virt("dS^T", CUDNN_DATA_BFLOAT16, {b, h, s, s}, ss_t_strides);
  g.reshape("dS^T", dS, dST);
  kv_head_product("dK = dS^T Q", "dK", dST, Q, dK);

  // dQ = dS K into an f32 accumulator, then cast.
  // (f32 like every virtual tensor cudnn-frontend leaves untyped; the engine reads K's bf16 from memory.)
  auto K = g.virt("K", CUDNN_DATA_FLOAT, {b, hk, s, d}, p.k);
  g.reshape("K (from K^T)", KT, K);
  auto dQ_accum = g.tensor("dQ_accum", kDQAccum, CUDNN_DATA_FLOAT, {b, h, s, d}, packed_bhsd(h, s, d), false);
  g.matmul("dQ = dS K", dS, K, dQ_accum, seq_q, nullptr, seq_kv);
  g.pointwise("dQ = dQ_accum", CUDNN_POINTWISE_IDENTITY, dQ_accum, dQ);
  plan.dq_accum_bytes = b * h * s * d * 4;
  plan.zero_dq_accum = runtime_version() < 90600;
}

// Descriptor-valued attribute read: `count` fresh descriptors of `type` filled by cuDNN.
std::vector<std::unique_ptr<BackendDescriptor>> get_descriptors(const BackendDescriptor& from,
                                                                cudnnBackendAttributeName_t attr, const char* attr_name,
                                                                cudnnBackendDescriptorType_t type,
                                                                const char* type_name, int64_t count,
                                                                const std::string& what) {
  std::vector<std::unique_ptr<BackendDescriptor>> out;
  if (count <= 0) return out;
  std::vector<cudnnBackendDescriptor_t> raw;
  for (int64_t i = 0; i < count; ++i) {
    out.push_back(std::make_unique<BackendDescriptor>(type, type_name, what + " " + std::to_string(i)));
    raw.push_back(out.back()->get());
  }
  int64_t got = 0;
  const cudnnStatus_t status =
      cudnnBackendGetAttribute(from.get(), attr, CUDNN_TYPE_BACKEND_DESCRIPTOR, count, &got, raw.data());
  SCANLINE_CHECK(status == CUDNN_STATUS_SUCCESS, "cuDNN: reading ", attr_name, " of ", from.what(),
                 " failed: ", cudnn_status_text(status));
  out.resize(size_t(std::min(got, count)));
  return out;
}

// "engine 8 (tensor core, nondeterministic)" for a finalized engine config.
std::string describe_engine_config(const BackendDescriptor& config, const std::string& what) {
  auto engines = get_descriptors(config, CUDNN_ATTR(CUDNN_ATTR_ENGINECFG_ENGINE),
                                 CUDNN_DESC(CUDNN_BACKEND_ENGINE_DESCRIPTOR), 1, what + " engine");
  if (engines.empty()) return "engine ?";
  int64_t index = -1, n = 0;
  cudnnBackendGetAttribute(engines[0]->get(), CUDNN_ATTR_ENGINE_GLOBAL_INDEX, CUDNN_TYPE_INT64, 1, &n, &index);
  cudnnBackendNumericalNote_t notes[CUDNN_NUMERICAL_NOTE_TYPE_COUNT];
  int64_t n_notes = 0;
  cudnnBackendGetAttribute(engines[0]->get(), CUDNN_ATTR_ENGINE_NUMERICAL_NOTE, CUDNN_TYPE_NUMERICAL_NOTE,
                           CUDNN_NUMERICAL_NOTE_TYPE_COUNT, &n_notes, notes);
  std::string text = "engine " + std::to_string(index);
  std::string list;
  for (int64_t i = 0; i < std::min<int64_t>(n_notes, CUDNN_NUMERICAL_NOTE_TYPE_COUNT); ++i) {
    const char* name = nullptr;
    switch (notes[i]) {
      case CUDNN_NUMERICAL_NOTE_TENSOR_CORE: name = "tensor core"; break;
      case CUDNN_NUMERICAL_NOTE_DOWN_CONVERT_INPUTS: name = "down-converts inputs"; break;
      case CUDNN_NUMERICAL_NOTE_REDUCED_PRECISION_REDUCTION: name = "reduced-precision reduction"; break;
      case CUDNN_NUMERICAL_NOTE_NONDETERMINISTIC: name = "nondeterministic"; break;
      default: name = nullptr;
    }
    if (name) list += std::string(list.empty() ? "" : ", ") + name;
  }
  return list.empty() ? text : text + " (" + list + ")";
}

// Heuristics (mode A, then FALLBACK), then the first engine config that finalizes into a plan.
void choose_engine(Plan& plan, cudnnBackendDescriptor_t op_graph, cudnnHandle_t handle, const std::string& name) {
  std::vector<std::string> rejected;
  int64_t tried = 0;
  for (cudnnBackendHeurMode_t mode : {CUDNN_HEUR_MODE_A, CUDNN_HEUR_MODE_FALLBACK}) {
    const char* mode_name = mode == CUDNN_HEUR_MODE_A ? "A" : "FALLBACK";
    auto heur = std::make_unique<BackendDescriptor>(CUDNN_DESC(CUDNN_BACKEND_ENGINEHEUR_DESCRIPTOR),
                                                    name + ": engine heuristics (mode " + mode_name + ")");
    heur->set_desc(CUDNN_ATTR(CUDNN_ATTR_ENGINEHEUR_OPERATION_GRAPH), op_graph);
    heur->set(CUDNN_ATTR(CUDNN_ATTR_ENGINEHEUR_MODE), CUDNN_TYPE_HEUR_MODE, 1, &mode);
    if (const cudnnStatus_t st = heur->try_finalize(); st != CUDNN_STATUS_SUCCESS) {
      rejected.push_back(std::string("heuristics mode ") + mode_name + ": " + cudnn_status_text(st));
      continue;
    }
    int64_t count = 0;
    const cudnnStatus_t status = cudnnBackendGetAttribute(heur->get(), CUDNN_ATTR_ENGINEHEUR_RESULTS,
                                                          CUDNN_TYPE_BACKEND_DESCRIPTOR, 0, &count, nullptr);
    SCANLINE_CHECK(status == CUDNN_STATUS_SUCCESS, "cuDNN: counting the engine configs of ", heur->what(),
                   " failed: ", cudnn_status_text(status));
    auto configs = get_descriptors(*heur, CUDNN_ATTR(CUDNN_ATTR_ENGINEHEUR_RESULTS),
                                   CUDNN_DESC(CUDNN_BACKEND_ENGINECFG_DESCRIPTOR), count,
                                   name + ": engine config (mode " + mode_name + ")");
    for (auto& config : configs) {
      ++tried;
      auto exec = std::make_unique<BackendDescriptor>(CUDNN_DESC(CUDNN_BACKEND_EXECUTION_PLAN_DESCRIPTOR),
                                                      name + ": execution plan");
      exec->set_handle(CUDNN_ATTR(CUDNN_ATTR_EXECUTION_PLAN_HANDLE), handle);
      exec->set_desc(CUDNN_ATTR(CUDNN_ATTR_EXECUTION_PLAN_ENGINE_CONFIG), config->get());
      const cudnnStatus_t st = exec->try_finalize();
      const std::string why = st == CUDNN_STATUS_SUCCESS ? "" : cudnn_status_text(st);  // before other calls
      const std::string engine = describe_engine_config(*config, config->what());
      if (st != CUDNN_STATUS_SUCCESS) {
        if (rejected.size() < 8) rejected.push_back(engine + ": " + why);
        continue;
      }
      int64_t n = 0;
      const cudnnStatus_t ws = cudnnBackendGetAttribute(exec->get(), CUDNN_ATTR_EXECUTION_PLAN_WORKSPACE_SIZE,
                                                        CUDNN_TYPE_INT64, 1, &n, &plan.workspace);
      SCANLINE_CHECK(ws == CUDNN_STATUS_SUCCESS, "cuDNN: reading the workspace size of ", exec->what(),
                     " failed: ", cudnn_status_text(ws));
      plan.engine = engine + " from heuristics mode " + mode_name;
      plan.plan = exec->get();
      plan.keep.push_back(std::move(heur));
      plan.keep.push_back(std::move(config));
      plan.keep.push_back(std::move(exec));
      return;
    }
  }
  std::string why;
  for (const std::string& r : rejected) why += "\n  " + r;
  SCANLINE_FAIL("cuDNN: no engine config of the ", name, " graph finalizes into an execution plan (", tried,
                " tried)", why);
}

// Plans by Problem::key(); guarded by state_mutex().
std::map<std::vector<int64_t>, std::shared_ptr<Plan>>& plan_cache() {
  static auto* plans = new std::map<std::vector<int64_t>, std::shared_ptr<Plan>>;
  return *plans;
}

// Builds (or finds) the plan of a problem; a rejection is cached as a plan with `error` set.
std::shared_ptr<Plan> plan_for(const Problem& p) {
  auto* plans = &plan_cache();
  const auto key = p.key();
  auto it = plans->find(key);
  if (it != plans->end()) return it->second;

  auto plan = std::make_shared<Plan>();
  plan->problem = p.text();
  plan->neg_inf = negative_infinity();
  const std::string name = std::string("attention ") + (p.backward ? "backward" : "forward");
  try {
    const cudnnHandle_t handle = handle_for(p.device);
    DeviceGuard guard(p.device);
    const int64_t version = runtime_version();
    SCANLINE_CHECK(version >= 90000, "the cuDNN attention engine needs cuDNN 9 but the library loaded is ", version);
    plan->graph = std::make_unique<Graph>(name);
    // cudnn-frontend's workaround for cuDNN <= 9.15: without a padding mask the backward is wrong
    // for sequence lengths that are not a multiple of 128.
    const bool padding = p.backward && p.s % 128 != 0 && version <= 91500;
    if (p.backward) build_backward(*plan->graph, p, *plan, padding);
    else build_forward(*plan->graph, p);
    if (padding) {
      const std::vector<int32_t> lengths(size_t(p.b), int32_t(p.s));
      plan->seq_q = from_vector<int32_t>(lengths, {p.b}, Device::cuda(p.device));
      plan->seq_kv = from_vector<int32_t>(lengths, {p.b}, Device::cuda(p.device));
      synchronize(p.device);  // the lengths are read on whatever stream later calls use
    }
    const cudnnBackendDescriptor_t graph = plan->graph->finalize(handle);
    choose_engine(*plan, graph, handle, name);
    plan->engine += ", workspace " + std::to_string(plan->workspace) + " bytes" +
                    (padding ? ", padding-mask workaround" : "") + ", cuDNN " + std::to_string(version);
    if (debug_enabled())
      std::fprintf(stderr, "scanline cuDNN attention: %s: %s\n", plan->problem.c_str(), plan->engine.c_str());
  } catch (const Error& e) {
    plan->error = std::string(e.what()) + "\n  problem: " + plan->problem;
    plan->plan = nullptr;
    if (debug_enabled())
      std::fprintf(stderr, "scanline cuDNN attention: rejected, our kernels take it: %s\n", plan->error.c_str());
  }
  plans->emplace(key, plan);
  return plan;
}

std::vector<std::string> describe_plans() {
  std::lock_guard<std::mutex> lock(state_mutex());
  std::vector<std::string> lines;
  for (const auto& [key, plan] : plan_cache())
    lines.push_back(plan->problem + ": " + (plan->error.empty() ? plan->engine : "rejected: " + plan->error));
  return lines;
}

int64_t align_up(int64_t n) { return (n + kAlign - 1) / kAlign * kAlign; }

// A buffer the graph names besides cuDNN's workspace (softmax_sum, dQ_accum), carved from the
// same allocation.
struct Scratch {
  int64_t uid, bytes;
  bool zero;  // cleared on the stream before the graph runs
};

// Runs a plan on the current stream: binds the variant pack (uids -> addresses) and executes.
void execute(const Plan& plan, int device, std::vector<int64_t> uids, std::vector<void*> pointers,
             const std::vector<Scratch>& scratch) {
  std::vector<int64_t> offsets;
  int64_t total = align_up(plan.workspace);
  for (const Scratch& x : scratch) {
    offsets.push_back(total);
    total += align_up(x.bytes);
  }
  const cudaStream_t stream = current_stream(device);
  Tensor workspace;  // back to the caching allocator on return: stream-ordered, so after the graph
  char* base = nullptr;
  if (total > 0) {
    workspace = empty({total}, {.dtype = DType::b8, .device = Device::cuda(device)});
    base = static_cast<char*>(workspace.raw_data());
  }
  for (size_t i = 0; i < scratch.size(); ++i) {
    uids.push_back(scratch[i].uid);
    pointers.push_back(base + offsets[i]);
    if (scratch[i].zero) CUDA_CHECK(cudaMemsetAsync(base + offsets[i], 0, size_t(scratch[i].bytes), stream));
  }
  std::lock_guard<std::mutex> lock(state_mutex());
  const cudnnHandle_t handle = handle_for(device);
  CUDNN_CHECK(cudnnSetStream(handle, stream));
  BackendDescriptor pack(CUDNN_DESC(CUDNN_BACKEND_VARIANT_PACK_DESCRIPTOR), "attention variant pack");
  pack.set_int64s(CUDNN_ATTR(CUDNN_ATTR_VARIANT_PACK_UNIQUE_IDS), uids);
  pack.set(CUDNN_ATTR(CUDNN_ATTR_VARIANT_PACK_DATA_POINTERS), CUDNN_TYPE_VOID_PTR, int64_t(pointers.size()),
           pointers.data());
  void* ws = base;
  pack.set(CUDNN_ATTR(CUDNN_ATTR_VARIANT_PACK_WORKSPACE), CUDNN_TYPE_VOID_PTR, 1, &ws);
  pack.finalize();
  const cudnnStatus_t status = cudnnBackendExecute(handle, plan.plan, pack.get());
  SCANLINE_CHECK(status == CUDNN_STATUS_SUCCESS, "cuDNN: executing the plan of ", plan.problem, " (", plan.engine,
                 ") failed: ", cudnn_status_text(status));
  if (sync_after_launch()) CUDA_CHECK(cudaDeviceSynchronize());
}

void check_inputs(const char* op, std::initializer_list<const Tensor*> tensors, int64_t headdim) {
  attn::check_operands(op, tensors, headdim);
  for (const Tensor* t : tensors)
    SCANLINE_CHECK(t->dtype() == DType::bf16, op, ": the cuDNN engine takes bf16 inputs but found ", describe(*t));
}

std::shared_ptr<Plan> locked_plan(const Problem& p) {
  std::lock_guard<std::mutex> lock(state_mutex());
  return plan_for(p);
}

// nullopt when cuDNN rejects the problem and `must` is false.
std::optional<AttentionForwardResult> run_forward(const Tensor& q_in, const Tensor& k_in, const Tensor& v_in,
                                                  bool causal, double scale, bool must) {
  constexpr const char* op = "attention (cuDNN)";
  const int64_t batch = q_in.size(0), L = q_in.size(1), heads = q_in.size(2), D = q_in.size(3);
  check_inputs(op, {&q_in, &k_in, &v_in}, D);
  DeviceGuard guard(q_in.device().index);
  AttentionForwardResult r;
  r.out = empty(q_in.shape(), q_in.options());
  r.lse = empty({batch, heads, L}, {.dtype = DType::f32, .device = q_in.device()});
  if (batch * heads * L == 0) return r;
  const Tensor q = cudnn_operand(q_in), k = cudnn_operand(k_in), v = cudnn_operand(v_in);
  Problem p;
  p.device = q.device().index;
  p.b = batch, p.h = heads, p.hk = k.size(2), p.s = L, p.d = D;
  p.causal = causal, p.scale = scale;
  p.q = bhsd_strides(q), p.k = bhsd_strides(k), p.v = bhsd_strides(v), p.o = our_layout(heads, L, D);
  const std::shared_ptr<Plan> plan = locked_plan(p);
  if (!plan->error.empty()) {
    SCANLINE_CHECK(!must, "attention: the cuDNN engine cannot run this problem (SCANLINE_ATTENTION_ENGINE=auto "
                          "falls back to our kernels): ", plan->error);
    return std::nullopt;
  }
  float scale_f = float(scale);
  std::vector<int64_t> uids{kQ, kK, kV, kO, kStats, kScale};
  std::vector<void*> ptrs{q.raw_data(), k.raw_data(), v.raw_data(), r.out.raw_data(), r.lse.raw_data(), &scale_f};
  float neg_inf = plan->neg_inf;
  if (causal) {
    uids.push_back(kNegInf);
    ptrs.push_back(&neg_inf);
  }
  execute(*plan, p.device, uids, ptrs, {});
  return r;
}

// One cuDNN backward over views: q, out, dout, dq (batch, L, h, D), k, v, dk, dv (batch, L, hk, D),
// lse (batch, h, L) f32, all read and written in place. Returns cuDNN's rejection, if any.
std::string backward_part(const Tensor& q, const Tensor& k, const Tensor& v, const Tensor& out, const Tensor& lse,
                          const Tensor& dout, const Tensor& dq, const Tensor& dk, const Tensor& dv, bool causal,
                          double scale) {
  Problem p;
  p.device = q.device().index;
  p.backward = true;
  p.b = q.size(0), p.h = q.size(2), p.hk = k.size(2), p.s = q.size(1), p.d = q.size(3);
  p.causal = causal, p.scale = scale;
  p.q = bhsd_strides(q), p.k = bhsd_strides(k), p.v = bhsd_strides(v), p.o = bhsd_strides(out);
  p.dout = bhsd_strides(dout);
  p.dq = bhsd_strides(dq), p.dk = bhsd_strides(dk), p.dv = bhsd_strides(dv);
  p.stats = {lse.strides()[0], lse.strides()[1], lse.strides()[2], 1};
  const std::shared_ptr<Plan> plan = locked_plan(p);
  if (!plan->error.empty()) return plan->error;
  float scale_f = float(scale), neg_inf = plan->neg_inf, one = 1.0f;
  std::vector<int64_t> uids{kQ, kK, kV, kO, kDO, kStats, kDQ, kDK, kDV, kScale, kOne};
  std::vector<void*> ptrs{q.raw_data(),  k.raw_data(),  v.raw_data(),  out.raw_data(), dout.raw_data(), lse.raw_data(),
                          dq.raw_data(), dk.raw_data(), dv.raw_data(), &scale_f,       &one};
  if (causal || plan->seq_q.defined()) {
    uids.push_back(kNegInf);
    ptrs.push_back(&neg_inf);
  }
  if (plan->seq_q.defined()) {
    uids.insert(uids.end(), {kSeqQ, kSeqKV});
    ptrs.insert(ptrs.end(), {plan->seq_q.raw_data(), plan->seq_kv.raw_data()});
  }
  execute(*plan, p.device, uids, ptrs,
          {{kSoftmaxSum, plan->softmax_sum_bytes, false}, {kDQAccum, plan->dq_accum_bytes, plan->zero_dq_accum}});
  return {};
}

// Elements [start, start + length) of dimension dim, a view (core's as_strided: cuda/ sits below
// ops/, whose narrow is autograd-aware).
Tensor slice_view(const Tensor& t, int64_t dim, int64_t start, int64_t length) {
  Shape shape = t.shape();
  shape[dim] = length;
  return as_strided(t, shape, t.strides(), t.offset() + start * t.strides()[dim]);
}

std::optional<AttentionBackwardResult> run_backward(const Tensor& q_in, const Tensor& k_in, const Tensor& v_in,
                                                    const Tensor& out_in, const Tensor& lse_in, const Tensor& grad_in,
                                                    bool causal, double scale, bool need_dq, bool need_dkv,
                                                    bool must) {
  constexpr const char* op = "attention backward (cuDNN)";
  const int64_t batch = q_in.size(0), L = q_in.size(1), heads = q_in.size(2), D = q_in.size(3);
  const int64_t kv_heads = k_in.size(2);
  check_inputs(op, {&q_in, &k_in, &v_in, &out_in, &grad_in}, D);
  attn::check_backward_operands(op, q_in, out_in, lse_in, grad_in);
  DeviceGuard guard(q_in.device().index);
  AttentionBackwardResult r;
  // cuDNN writes all three; the ones not asked for are dropped on return.
  Tensor dq = empty(q_in.shape(), q_in.options()), dk = empty(k_in.shape(), k_in.options()),
         dv = empty(v_in.shape(), v_in.options());
  auto result = [&] {
    if (need_dq) r.dq = dq;
    if (need_dkv) r.dk = dk, r.dv = dv;
    return r;
  };
  if (batch * heads * L == 0) return result();
  const Tensor q = cudnn_operand(q_in), k = cudnn_operand(k_in), v = cudnn_operand(v_in);
  const Tensor out = cudnn_operand(out_in), dout = cudnn_operand(grad_in);
  const Tensor lse = as_contiguous(lse_in);
  // cuDNN's f32 dQ accumulator and its workspace come on top of the tensors (about 0.8x them at
  // GQA 4): run the backward in two halves of the kv heads (or of the batch when there is one kv
  // head), each half's outputs written in place, so only half of that is live at once and the
  // peak stays under 1.5x Q, K, V, O and their gradients (issue 7). Each half still fills the GPU.
  const int64_t dim = kv_heads % 2 == 0 ? 2 : batch % 2 == 0 ? 0 : -1;
  const int64_t parts = dim < 0 ? 1 : 2;
  const int64_t group = heads / kv_heads;
  for (int64_t i = 0; i < parts; ++i) {
    auto part = [&](const Tensor& t, bool query_heads) {
      if (parts == 1) return t;
      if (dim == 0) return slice_view(t, 0, i * batch / 2, batch / 2);
      const int64_t n = kv_heads / 2 * (query_heads ? group : 1);
      return slice_view(t, 2, i * n, n);
    };
    const Tensor lse_part = parts == 1 ? lse
                            : dim == 0 ? slice_view(lse, 0, i * batch / 2, batch / 2)
                                       : slice_view(lse, 1, i * kv_heads / 2 * group, kv_heads / 2 * group);
    const std::string error =
        backward_part(part(q, true), part(k, false), part(v, false), part(out, true), lse_part, part(dout, true),
                      part(dq, true), part(dk, false), part(dv, false), causal, scale);
    if (!error.empty()) {
      SCANLINE_CHECK(!must, "attention: the cuDNN engine cannot run this problem (SCANLINE_ATTENTION_ENGINE=auto "
                            "falls back to our kernels): ", error);
      return std::nullopt;
    }
  }
  return result();
}

}  // namespace

bool cudnn_attention_built() { return true; }
int64_t cudnn_runtime_version() { return runtime_version(); }

AttentionForwardResult attention_fwd_cudnn(const Tensor& q, const Tensor& k, const Tensor& v, bool causal,
                                           double scale) {
  return *run_forward(q, k, v, causal, scale, true);
}

AttentionBackwardResult attention_bwd_cudnn(const Tensor& q, const Tensor& k, const Tensor& v, const Tensor& out,
                                            const Tensor& lse, const Tensor& grad_out, bool causal, double scale,
                                            bool need_dq, bool need_dkv) {
  return *run_backward(q, k, v, out, lse, grad_out, causal, scale, need_dq, need_dkv, true);
}

std::vector<std::string> cudnn_attention_plans() { return describe_plans(); }

#else  // !SCANLINE_HAVE_CUDNN

namespace {
[[noreturn]] void no_cudnn() {
  SCANLINE_FAIL("attention: the cuDNN engine was asked for (SCANLINE_ATTENTION_ENGINE=cudnn or a direct call) but "
                "this scanline was built without cuDNN (configure with -DSCANLINE_CUDNN=ON and cuDNN 9 installed, "
                "or use SCANLINE_ATTENTION_ENGINE=auto|native)");
}
}  // namespace

bool cudnn_attention_built() { return false; }
int64_t cudnn_runtime_version() { return 0; }

AttentionForwardResult attention_fwd_cudnn(const Tensor&, const Tensor&, const Tensor&, bool, double) { no_cudnn(); }

AttentionBackwardResult attention_bwd_cudnn(const Tensor&, const Tensor&, const Tensor&, const Tensor&, const Tensor&,
                                            const Tensor&, bool, double, bool, bool) {
  no_cudnn();
}

std::vector<std::string> cudnn_attention_plans() { return {}; }

#endif  // SCANLINE_HAVE_CUDNN

AttentionForwardResult attention_fwd_dispatch(const Tensor& q, const Tensor& k, const Tensor& v, bool causal,
                                              double scale) {
  const AttentionEngine engine = attention_engine();
  if (engine != AttentionEngine::native && cudnn_engine_takes(q)) {
#ifdef SCANLINE_HAVE_CUDNN
    if (auto r = run_forward(q, k, v, causal, scale, engine == AttentionEngine::cudnn)) return *std::move(r);
#else
    if (engine == AttentionEngine::cudnn) attention_fwd_cudnn(q, k, v, causal, scale);
#endif
  }
  return attention_fwd(q, k, v, causal, scale);
}

AttentionBackwardResult attention_bwd_dispatch(const Tensor& q, const Tensor& k, const Tensor& v, const Tensor& out,
                                               const Tensor& lse, const Tensor& grad_out, bool causal, double scale,
                                               bool need_dq, bool need_dkv) {
  const AttentionEngine engine = attention_engine();
  if (engine != AttentionEngine::native && cudnn_engine_takes(q) && (need_dq || need_dkv)) {
#ifdef SCANLINE_HAVE_CUDNN
    if (auto r = run_backward(q, k, v, out, lse, grad_out, causal, scale, need_dq, need_dkv,
                              engine == AttentionEngine::cudnn))
      return *std::move(r);
#else
    if (engine == AttentionEngine::cudnn)
      attention_bwd_cudnn(q, k, v, out, lse, grad_out, causal, scale, need_dq, need_dkv);
#endif
  }
  return attention_bwd(q, k, v, out, lse, grad_out, causal, scale, need_dq, need_dkv);
}

}  // namespace scanline::cuda
