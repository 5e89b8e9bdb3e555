#pragma once
// The vocabulary of elementwise ops, shared by the CPU references in ops/ and the CUDA kernels
// in cuda/ (which may not include ops/).
#include <cstdint>

namespace scanline {

enum class BinaryOp : uint8_t { add, sub, mul, div, maximum, minimum, pow };
enum class UnaryOp : uint8_t {
  neg, exp, log, sqrt, rsqrt, square, sigmoid, silu, softplus, gelu, gelu_tanh, relu, tanh, abs
};
enum class CompareOp : uint8_t { eq, ne, lt, le, gt, ge };

}  // namespace scanline
