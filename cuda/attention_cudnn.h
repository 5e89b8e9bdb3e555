#pragma once
// cuDNN's fused flash attention as a second engine behind the attention op (ops/attention.h), for
// bf16 inputs with headdim 64 or 128; f32 inputs (and builds without cuDNN) always use our own
// kernels (cuda/attention.h). The engine builds cuDNN backend operation graphs directly (no
// cudnn_frontend), in the shapes NVIDIA's frontend gives its SDPA nodes so that cuDNN's fused
// engines match them:
//   forward   S = Q·Kᵀ, S·scale, causal mask (GEN_INDEX rows/cols, CMP_GE, BINARY_SELECT with −inf),
//             m = rowmax, E = exp(S − m), l = rowsum(E), Stats = m + log l, P = E / l (bf16),
//             O = P·V;
//   backward  D = rowsum(dO ∘ O) (an f32 buffer), P = exp(S·scale − Stats) masked, dV = Pᵀ·dO,
//             dS = P ∘ (dO·Vᵀ − D) · scale, dK = dSᵀ·Q, dQ = dS·K (accumulated in f32, then cast);
//             GQA: dK, dV per query head reduced over each kv head's group.
// Tensors are 4-d (batch, heads, L, headdim) views of our (batch, L, heads, headdim) layout: no
// copies for inputs whose last dim is contiguous, rows 16-byte aligned. Stats is our lse
// (batch, heads, L) f32: the natural log of Σ_j exp(s_ij) over the scaled, masked scores, so the
// forward of one engine and the backward of the other are interchangeable.
//
// Plans (graph, engine config from cuDNN's heuristics, workspace size) are built once per
// (device, shape, strides, causal, scale) and cached for the process; one cuDNN handle per device
// (never destroyed, like cuda/matmul.cpp's cuBLASLt handles). Workspace comes from the caching
// allocator on the current stream, and the graph runs on the current stream.
//
// Engine choice, per call: SCANLINE_ATTENTION_ENGINE = auto (default) | cudnn | native.
//   auto    cuDNN when this build links it, the inputs are bf16 with headdim 64/128 and cuDNN
//           accepts the graph; otherwise (and whenever cuDNN rejects a shape: remembered per
//           shape) our kernels. SCANLINE_CUDNN_DEBUG=1 prints each plan built and each fallback
//           reason to stderr.
//   cudnn   as auto, but a graph or plan cuDNN rejects (or a build without cuDNN) throws
//           scanline::Error with the cuDNN status, cuDNN's last error string and the node and
//           attribute that failed. f32 inputs and other head dims still use our kernels.
//   native  always our kernels.
// cuDNN's backward accumulates dQ with f32 atomics: unlike our kernels it is not bit-for-bit
// deterministic from run to run. It runs in two halves (of the kv heads, else of the batch) so
// that its f32 dQ accumulator and workspace stay under half the tensors' size at any time.
#include <cstdint>
#include <string>
#include <vector>

#include "core/tensor.h"
#include "cuda/attention.h"

namespace scanline::cuda {

enum class AttentionEngine { automatic, cudnn, native };

// SCANLINE_ATTENTION_ENGINE read now (an unknown value throws).
AttentionEngine attention_engine();

// Whether this build links cuDNN; its runtime version (cudnnGetVersion(), e.g. 91400), 0 without.
bool cudnn_attention_built();
int64_t cudnn_runtime_version();

// The op's CUDA entry points (ops/attention.cpp): pick the engine as above, then run it.
AttentionForwardResult attention_fwd_dispatch(const Tensor& q, const Tensor& k, const Tensor& v, bool causal,
                                              double scale);
AttentionBackwardResult attention_bwd_dispatch(const Tensor& q, const Tensor& k, const Tensor& v, const Tensor& out,
                                               const Tensor& lse, const Tensor& grad_out, bool causal, double scale,
                                               bool need_dq, bool need_dkv);

// The cuDNN engine itself, whatever SCANLINE_ATTENTION_ENGINE says: arguments and results as
// attention_fwd / attention_bwd (cuda/attention.h), bf16 only, headdim 64 or 128. Throws
// scanline::Error when cuDNN rejects the graph or no engine config finalizes (the message names
// the cuDNN call, node, attribute, status and cuDNN's last error), or when built without cuDNN.
// The backward always computes dq, dk and dv (the flags only say which ones are returned).
AttentionForwardResult attention_fwd_cudnn(const Tensor& q, const Tensor& k, const Tensor& v, bool causal,
                                           double scale);
AttentionBackwardResult attention_bwd_cudnn(const Tensor& q, const Tensor& k, const Tensor& v, const Tensor& out,
                                            const Tensor& lse, const Tensor& grad_out, bool causal, double scale,
                                            bool need_dq = true, bool need_dkv = true);

// One line per cached plan (or remembered rejection): the problem, the engine (global index,
// numerical notes), workspace bytes, or why cuDNN rejected it. For tests and benchmarks.
std::vector<std::string> cudnn_attention_plans();

}  // namespace scanline::cuda
