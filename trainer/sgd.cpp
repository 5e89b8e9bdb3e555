#include "trainer/sgd.h"

#include "autograd/grad_mode.h"
#include "ops/elementwise.h"
#include "ops/views.h"

namespace scanline {

SGD::SGD(std::vector<Tensor> params, double lr, double momentum)
    : params_(std::move(params)), velocity_(params_.size()), lr_(lr), momentum_(momentum) {
  SCANLINE_CHECK(lr > 0.0, "SGD: learning rate must be positive, found ", lr);
  SCANLINE_CHECK(momentum >= 0.0 && momentum < 1.0, "SGD: momentum must be in [0, 1), found ", momentum);
  for (const Tensor& p : params_)
    SCANLINE_CHECK(p.is_leaf() && p.requires_grad(), "SGD: parameters must be leaves that require grad, found ",
                   describe(p));
}

void SGD::step() {
  NoGradGuard no_grad;
  for (size_t i = 0; i < params_.size(); ++i) {
    Tensor g = params_[i].grad();
    if (!g.defined()) continue;
    if (momentum_ > 0.0) {
      velocity_[i] = velocity_[i].defined() ? add(mul(velocity_[i], momentum_), g) : clone(g);
      g = velocity_[i];
    }
    copy_into(params_[i], sub(params_[i], mul(g, lr_)));
  }
}

void SGD::zero_grad() {
  for (Tensor& p : params_) p.zero_grad();
}

}  // namespace scanline
