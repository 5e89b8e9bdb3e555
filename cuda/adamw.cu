#include "cuda/adamw.h"

#include <algorithm>
#include <climits>
#include <cmath>
#include <map>
#include <utility>

#include "core/cuda/device_utils.cuh"

namespace scanline::cuda {
namespace {

constexpr int kThreads = 256;
constexpr int kPack = 4;                                  // f32 elements a 16-byte vector holds
constexpr int kUnroll = 4;                                // packs a thread loads before computing
constexpr int64_t kChunk = kThreads * kPack * kUnroll;    // elements a block updates
constexpr int kMaxTensors = 64;                           // tensors a launch; keeps the params < 4 KiB

// One tensor of a launch. grad points at G elements (the launch's grad type).
struct TensorArgs {
  float* param;
  float* m;
  float* v;
  const void* grad;
  int64_t n;
  float decay;  // 1 - lr * weight_decay, exactly 1 for tensors without decay
  bool vec;     // all four buffers aligned for whole-pack loads and stores
};

struct Hyper {
  float beta1, one_minus_beta1, beta2, one_minus_beta2;
  float step_size;      // lr / (1 - beta1^t)
  float bias2_sqrt;     // sqrt(1 - beta2^t)
  float eps;
};

// The launch's tensors and where each one's blocks start: tensor t owns blocks
// [block_start[t], block_start[t + 1]), one chunk of kChunk elements a block.
struct Batch {
  TensorArgs tensors[kMaxTensors];
  int64_t block_start[kMaxTensors + 1];
  int count;
  Hyper hyper;
};

// torch.optim.AdamW's order of operations, in f32.
__device__ __forceinline__ void adamw_element(float& p, float& m, float& v, float g, const Hyper& h, float decay) {
  p *= decay;
  m = h.beta1 * m + h.one_minus_beta1 * g;
  v = h.beta2 * v + h.one_minus_beta2 * (g * g);
  const float denom = sqrtf(v) / h.bias2_sqrt + h.eps;
  p -= h.step_size * (m / denom);
}

template <typename G>
struct alignas(kPack * sizeof(G)) GradPack {
  G v[kPack];
};

// One block updates one chunk of one tensor. The block's tensor comes from a short scan of the
// (uniform, constant-cached) block starts. The vector path loads all of a thread's packs before
// computing, so each thread has kUnroll * (3 * 16 + 4 * sizeof(G)) bytes in flight.
template <typename G>
__global__ void __launch_bounds__(kThreads) adamw_kernel(const __grid_constant__ Batch batch) {
  const int64_t block = int64_t(blockIdx.x);
  int t = 0;
  while (t + 1 < batch.count && batch.block_start[t + 1] <= block) ++t;
  const TensorArgs& a = batch.tensors[t];
  const Hyper& h = batch.hyper;
  const int64_t begin = (block - batch.block_start[t]) * kChunk;
  const int64_t len = min(kChunk, a.n - begin);
  float* __restrict__ p = a.param + begin;
  float* __restrict__ m = a.m + begin;
  float* __restrict__ v = a.v + begin;
  const G* __restrict__ g = static_cast<const G*>(a.grad) + begin;
  const float decay = a.decay;

  if (a.vec) {
    const int64_t packs = len / kPack;
    float4 pv[kUnroll], mv[kUnroll], vv[kUnroll];
    GradPack<G> gv[kUnroll];
#pragma unroll
    for (int u = 0; u < kUnroll; ++u) {
      const int64_t k = threadIdx.x + int64_t(u) * kThreads;
      if (k < packs) {
        pv[u] = reinterpret_cast<const float4*>(p)[k];
        mv[u] = reinterpret_cast<const float4*>(m)[k];
        vv[u] = reinterpret_cast<const float4*>(v)[k];
        gv[u] = reinterpret_cast<const GradPack<G>*>(g)[k];
      }
    }
#pragma unroll
    for (int u = 0; u < kUnroll; ++u) {
      const int64_t k = threadIdx.x + int64_t(u) * kThreads;
      if (k < packs) {
        adamw_element(pv[u].x, mv[u].x, vv[u].x, load_math(&gv[u].v[0]), h, decay);
        adamw_element(pv[u].y, mv[u].y, vv[u].y, load_math(&gv[u].v[1]), h, decay);
        adamw_element(pv[u].z, mv[u].z, vv[u].z, load_math(&gv[u].v[2]), h, decay);
        adamw_element(pv[u].w, mv[u].w, vv[u].w, load_math(&gv[u].v[3]), h, decay);
        reinterpret_cast<float4*>(p)[k] = pv[u];
        reinterpret_cast<float4*>(m)[k] = mv[u];
        reinterpret_cast<float4*>(v)[k] = vv[u];
      }
    }
    // The last chunk of a tensor whose size is not a multiple of the pack: at most 3 elements.
    for (int64_t i = packs * kPack + threadIdx.x; i < len; i += kThreads)
      adamw_element(p[i], m[i], v[i], load_math(g + i), h, decay);
  } else {
    for (int64_t i = threadIdx.x; i < len; i += kThreads) {
      float pi = p[i], mi = m[i], vi = v[i];
      adamw_element(pi, mi, vi, load_math(g + i), h, decay);
      p[i] = pi;
      m[i] = mi;
      v[i] = vi;
    }
  }
}

// ---- host side ---------------------------------------------------------------------------------

const char* const kOp = "adamw_update";

bool aligned_to(const void* ptr, size_t bytes) { return reinterpret_cast<uintptr_t>(ptr) % bytes == 0; }

// Checks one parameter's buffers; returns the grad to read (a contiguous copy of a strided one).
Tensor checked_grad(const AdamWTensors& t) {
  check_cuda_tensor(kOp, t.param, "param");
  const Tensor& p = t.param;
  SCANLINE_CHECK(p.dtype() == DType::f32 && p.is_contiguous(), kOp, ": expected a contiguous f32 param but found ",
                 describe(p));
  for (const auto& [buffer, name] : {std::pair{&t.m, "m"}, std::pair{&t.v, "v"}}) {
    check_cuda_tensor(kOp, *buffer, name);
    SCANLINE_CHECK(buffer->dtype() == DType::f32 && buffer->is_contiguous() && buffer->shape() == p.shape() &&
                       buffer->device() == p.device(),
                   kOp, ": expected ", name, " to be a contiguous f32 tensor shaped and placed like param ",
                   describe(p), " but found ", describe(*buffer));
  }
  check_cuda_tensor(kOp, t.grad, "grad");
  SCANLINE_CHECK(t.grad.shape() == p.shape() && t.grad.device() == p.device() &&
                     (t.grad.dtype() == DType::f32 || t.grad.dtype() == DType::bf16 || t.grad.dtype() == DType::f16),
                 kOp, ": expected an f32, bf16 or f16 grad shaped and placed like param ", describe(p),
                 " but found ", describe(t.grad));
  SCANLINE_CHECK(std::isfinite(t.weight_decay) && t.weight_decay >= 0.0, kOp,
                 ": weight decay must be finite and >= 0, found ", t.weight_decay);
  return as_contiguous(t.grad);
}

Hyper make_hyper(const AdamWStep& s) {
  SCANLINE_CHECK(s.step >= 1, kOp, ": the step count must be >= 1, found ", s.step);
  SCANLINE_CHECK(s.lr >= 0.0 && std::isfinite(s.lr), kOp, ": lr must be finite and >= 0, found ", s.lr);
  SCANLINE_CHECK(s.beta1 >= 0.0 && s.beta1 < 1.0 && s.beta2 >= 0.0 && s.beta2 < 1.0, kOp,
                 ": betas must be in [0, 1), found ", s.beta1, ", ", s.beta2);
  SCANLINE_CHECK(s.eps >= 0.0, kOp, ": eps must be >= 0, found ", s.eps);
  // Bias corrections in double on the host, as the CPU reference computes them.
  const double bias1 = 1.0 - std::pow(s.beta1, double(s.step));
  const double bias2 = 1.0 - std::pow(s.beta2, double(s.step));
  return Hyper{float(s.beta1), float(1.0 - s.beta1), float(s.beta2), float(1.0 - s.beta2),
               float(s.lr / bias1), float(std::sqrt(bias2)), float(s.eps)};
}

template <typename G>
void launch(Batch& batch, cudaStream_t stream) {
  const int64_t blocks = batch.block_start[batch.count];
  if (blocks == 0) return;
  adamw_kernel<G><<<unsigned(blocks), kThreads, 0, stream>>>(batch);
  CUDA_CHECK_LAUNCH("adamw_kernel");
}

// Launches one device's tensors that share a grad dtype, kMaxTensors (or fewer blocks than the
// grid limit) at a time.
void launch_group(const std::vector<std::pair<const AdamWTensors*, Tensor>>& group, const Hyper& hyper, double lr) {
  const Tensor& first = group.front().first->param;
  DeviceGuard guard(first.device().index);
  cudaStream_t stream = current_stream();
  const DType grad_dtype = group.front().second.dtype();
  const int64_t grad_size = int64_t(dtype_size(grad_dtype));
  Batch batch{};
  batch.hyper = hyper;
  auto flush = [&] {
    dispatch_floating_device(grad_dtype, kOp, [&]<typename G>() { launch<G>(batch, stream); });
    batch.count = 0;
    batch.block_start[0] = 0;
  };
  for (const auto& [t, grad] : group) {
    const int64_t n = t->param.numel();
    if (n == 0) continue;
    const int64_t blocks = (n + kChunk - 1) / kChunk;
    SCANLINE_CHECK(blocks <= INT_MAX, kOp, ": tensor too large for one launch: ", describe(t->param));
    if (batch.count == kMaxTensors || batch.block_start[batch.count] + blocks > INT_MAX) flush();
    TensorArgs& a = batch.tensors[batch.count];
    a.param = data_at<float>(t->param);
    a.m = data_at<float>(t->m);
    a.v = data_at<float>(t->v);
    a.grad = grad.raw_data();
    a.n = n;
    a.decay = float(1.0 - lr * t->weight_decay);
    a.vec = aligned_to(a.param, 16) && aligned_to(a.m, 16) && aligned_to(a.v, 16) &&
            aligned_to(a.grad, size_t(kPack * grad_size));
    batch.block_start[batch.count + 1] = batch.block_start[batch.count] + blocks;
    ++batch.count;
  }
  if (batch.count > 0) flush();
}

}  // namespace

void adamw_update(const std::vector<AdamWTensors>& tensors, const AdamWStep& hyper) {
  const Hyper h = make_hyper(hyper);
  // Group by (device, grad dtype); the map keeps a fixed order, so launches are reproducible.
  std::map<std::pair<int, int>, std::vector<std::pair<const AdamWTensors*, Tensor>>> groups;
  for (const AdamWTensors& t : tensors) {
    Tensor grad = checked_grad(t);
    groups[{t.param.device().index, int(grad.dtype())}].emplace_back(&t, std::move(grad));
  }
  for (const auto& [key, group] : groups) launch_group(group, h, hyper.lr);
}

void adamw_update(const Tensor& param, const Tensor& grad, const Tensor& m, const Tensor& v, double weight_decay,
                  const AdamWStep& hyper) {
  adamw_update(std::vector<AdamWTensors>{{param, grad, m, v, weight_decay}}, hyper);
}

}  // namespace scanline::cuda
