#pragma once
// Shapes and strides (in elements), and the arithmetic on them that views and broadcasting need.
#include <cstdint>
#include <initializer_list>
#include <ostream>
#include <string>
#include <vector>

namespace scanline {

using Shape = std::vector<int64_t>;

int64_t numel_of(const Shape& shape);
Shape contiguous_strides(const Shape& shape);
std::string shape_str(const Shape& shape);  // "[2, 3, 4]"

// Wraps a possibly negative dimension into [0, ndim); names the op in the error.
int64_t wrap_dim(int64_t dim, int64_t ndim, const char* op);

// The broadcast of two shapes (numpy rules), or an Error naming the op and both shapes.
Shape broadcast_shapes(const Shape& a, const Shape& b, const char* op);

// Strides that read `shape` (already broadcast-compatible) as if expanded to `target`: 0 on
// broadcast dimensions, leading dimensions added.
std::vector<int64_t> broadcast_strides(const Shape& shape, const std::vector<int64_t>& strides,
                                       const Shape& target);

inline std::ostream& operator<<(std::ostream& out, const Shape& shape) { return out << shape_str(shape); }

}  // namespace scanline
