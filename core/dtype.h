#pragma once
// Element types. f64 exists for references and gradient checks; training uses f32 and bf16.
#include <cstdint>
#include <ostream>
#include <string>

#include "core/error.h"
#include "core/half.h"

namespace scanline {

enum class DType : uint8_t { f64, f32, bf16, f16, i64, i32, b8 };

size_t dtype_size(DType dtype);
const char* dtype_name(DType dtype);
DType dtype_from_name(const std::string& name);  // "f32", "float32", "bf16", ...
bool is_floating(DType dtype);
inline std::ostream& operator<<(std::ostream& out, DType dtype) { return out << dtype_name(dtype); }

template <typename T> constexpr DType dtype_of();
template <> constexpr DType dtype_of<double>() { return DType::f64; }
template <> constexpr DType dtype_of<float>() { return DType::f32; }
template <> constexpr DType dtype_of<BFloat16>() { return DType::bf16; }
template <> constexpr DType dtype_of<Half>() { return DType::f16; }
template <> constexpr DType dtype_of<int64_t>() { return DType::i64; }
template <> constexpr DType dtype_of<int32_t>() { return DType::i32; }
template <> constexpr DType dtype_of<bool>() { return DType::b8; }

// The type CPU kernels compute in: double for f64, float for every narrower floating type.
template <typename T> struct AccType { using type = float; };
template <> struct AccType<double> { using type = double; };
template <> struct AccType<int64_t> { using type = int64_t; };
template <> struct AccType<int32_t> { using type = int64_t; };
template <> struct AccType<bool> { using type = int64_t; };
template <typename T> using acc_t = typename AccType<T>::type;

// Calls fn.template operator()<T>() with the C++ type of a floating dtype.
template <typename Fn>
decltype(auto) dispatch_floating(DType dtype, const char* op, Fn&& fn) {
  switch (dtype) {
    case DType::f64: return fn.template operator()<double>();
    case DType::f32: return fn.template operator()<float>();
    case DType::bf16: return fn.template operator()<BFloat16>();
    case DType::f16: return fn.template operator()<Half>();
    default: SCANLINE_FAIL(op, ": expected a floating dtype (f64, f32, bf16, f16) but found ", dtype);
  }
}

// Calls fn.template operator()<T>() for any dtype.
template <typename Fn>
decltype(auto) dispatch_all(DType dtype, const char* op, Fn&& fn) {
  switch (dtype) {
    case DType::f64: return fn.template operator()<double>();
    case DType::f32: return fn.template operator()<float>();
    case DType::bf16: return fn.template operator()<BFloat16>();
    case DType::f16: return fn.template operator()<Half>();
    case DType::i64: return fn.template operator()<int64_t>();
    case DType::i32: return fn.template operator()<int32_t>();
    case DType::b8: return fn.template operator()<bool>();
  }
  SCANLINE_FAIL(op, ": unknown dtype");
}

// Calls fn.template operator()<T>() for an integer dtype (indices).
template <typename Fn>
decltype(auto) dispatch_index(DType dtype, const char* op, Fn&& fn) {
  switch (dtype) {
    case DType::i64: return fn.template operator()<int64_t>();
    case DType::i32: return fn.template operator()<int32_t>();
    default: SCANLINE_FAIL(op, ": expected an index dtype (i64 or i32) but found ", dtype);
  }
}

}  // namespace scanline
