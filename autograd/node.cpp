#include "autograd/node.h"

#include "autograd/grad_mode.h"
#include "core/allocator.h"

namespace scanline::autograd {

Node::~Node() {
  // Letting shared_ptr destroy a chain would recurse once per node and overflow the stack on
  // deep graphs: take the children out and release them one at a time instead.
  std::vector<std::shared_ptr<Node>> stack;
  for (Edge& e : next_edges)
    if (e.node) stack.push_back(std::move(e.node));
  while (!stack.empty()) {
    std::shared_ptr<Node> node = std::move(stack.back());
    stack.pop_back();
    if (node.use_count() == 1)  // the last owner: its children go on the stack before it dies
      for (Edge& e : node->next_edges)
        if (e.node) stack.push_back(std::move(e.node));
  }
}

std::vector<Tensor> FunctionNode::apply(const std::vector<Tensor>& grads) {
  SCANLINE_CHECK(fn_ != nullptr, "backward: the graph through '", name_,
                 "' was already used and freed; pass retain_graph=true to backward twice");
  BackwardContext ctx{grads, {}};
  ctx.needs_input_grad.reserve(next_edges.size());
  for (const Edge& e : next_edges) ctx.needs_input_grad.push_back(e.valid());
  return fn_(ctx);
}

std::vector<Tensor> AccumulateGrad::apply(const std::vector<Tensor>& grads) {
  const Tensor& g = grads[0];
  if (!leaf_->grad) {
    // A fresh copy: the arriving tensor may share storage with other values of the graph.
    leaf_->grad = contiguous_copy(g, g.dtype(), g.device()).impl_ptr();
  } else {
    accumulate_into(Tensor(leaf_->grad), g);
  }
  return {};
}

bool needs_grad(const std::vector<Tensor>& inputs) {
  if (!is_grad_enabled()) return false;
  for (const Tensor& t : inputs)
    if (t.defined() && t.requires_grad()) return true;
  return false;
}

void record(const std::string& name, const std::vector<Tensor>& inputs,
            const std::vector<Tensor>& outputs, BackwardFn fn) {
  if (!needs_grad(inputs)) return;
  auto node = std::make_shared<FunctionNode>(name, std::move(fn));
  for (const Tensor& t : inputs) {
    Edge edge;
    if (t.defined() && t.requires_grad()) {
      if (t.grad_fn()) edge = {t.grad_fn(), t.impl()->output_nr};
      else edge = {std::make_shared<AccumulateGrad>(t.impl_ptr()), 0};
    }
    node->next_edges.push_back(edge);
    node->inputs.push_back(t.defined() ? TensorMeta{t.shape(), t.dtype(), t.device()}
                                       : TensorMeta{{}, DType::f32, Device::cpu()});
  }
  for (size_t i = 0; i < outputs.size(); ++i) {
    const Tensor& out = outputs[i];
    node->outputs.push_back({out.shape(), out.dtype(), out.device()});
    if (!is_floating(out.dtype())) continue;
    TensorImpl* impl = out.impl();
    impl->requires_grad = true;
    impl->grad_fn = node;
    impl->output_nr = int(i);
  }
}

}  // namespace scanline::autograd
