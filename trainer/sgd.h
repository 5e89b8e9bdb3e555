#pragma once
// Plain SGD with optional momentum: enough for the MLP demo; AdamW arrives with the trainer issue.
#include <vector>

#include "core/tensor.h"

namespace scanline {

class SGD {
 public:
  SGD(std::vector<Tensor> params, double lr, double momentum = 0.0);
  void step();       // p -= lr * (momentum buffer or grad); parameters without grad are skipped
  void zero_grad();  // drops every parameter's gradient

 private:
  std::vector<Tensor> params_;
  std::vector<Tensor> velocity_;
  double lr_, momentum_;
};

}  // namespace scanline
