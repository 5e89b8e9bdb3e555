#pragma once
// The backward engine: runs the recorded nodes in reverse topological order from a root and
// accumulates gradients into the leaves' .grad.
#include "core/tensor.h"

namespace scanline::autograd {

// grad defaults to 1 for a one-element root. The graph's saved tensors are freed afterwards
// unless retain_graph is set.
void backward(const Tensor& root, const Tensor& grad = Tensor(), bool retain_graph = false);

}  // namespace scanline::autograd

namespace scanline {
using autograd::backward;
}  // namespace scanline
