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

// The op's user-facing name, for error messages on either device.
inline const char* op_name(BinaryOp op) {
  switch (op) {
    case BinaryOp::add: return "add";
    case BinaryOp::sub: return "sub";
    case BinaryOp::mul: return "mul";
    case BinaryOp::div: return "div";
    case BinaryOp::maximum: return "maximum";
    case BinaryOp::minimum: return "minimum";
    case BinaryOp::pow: return "pow";
  }
  return "binary";
}

inline const char* op_name(UnaryOp op) {
  switch (op) {
    case UnaryOp::neg: return "neg";
    case UnaryOp::exp: return "exp";
    case UnaryOp::log: return "log";
    case UnaryOp::sqrt: return "sqrt";
    case UnaryOp::rsqrt: return "rsqrt";
    case UnaryOp::square: return "square";
    case UnaryOp::sigmoid: return "sigmoid";
    case UnaryOp::silu: return "silu";
    case UnaryOp::softplus: return "softplus";
    case UnaryOp::gelu: return "gelu";
    case UnaryOp::gelu_tanh: return "gelu_tanh";
    case UnaryOp::relu: return "relu";
    case UnaryOp::tanh: return "tanh";
    case UnaryOp::abs: return "abs";
  }
  return "unary";
}

}  // namespace scanline
