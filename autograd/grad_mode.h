#pragma once
// Whether ops record a graph. Off inside backward and under NoGradGuard (evaluation, optimizer).

namespace scanline::autograd {

bool is_grad_enabled();
void set_grad_enabled(bool enabled);

class NoGradGuard {
 public:
  NoGradGuard() : previous_(is_grad_enabled()) { set_grad_enabled(false); }
  ~NoGradGuard() { set_grad_enabled(previous_); }
  NoGradGuard(const NoGradGuard&) = delete;
  NoGradGuard& operator=(const NoGradGuard&) = delete;

 private:
  bool previous_;
};

}  // namespace scanline::autograd

namespace scanline {
using autograd::NoGradGuard;
}
