#pragma once
// The rows of `scanline bench ops`, one function per op family. Each appends timed rows with the
// minimal bytes (or FLOPs) the op must move, and its target fraction of the roofline.
#include <cstddef>
#include <vector>

#include "bench/timing.h"

namespace scanline::bench {

void append_elementwise_rows(std::vector<Row>& rows, size_t tensor_bytes);
void append_norm_rows(std::vector<Row>& rows, size_t tensor_bytes);
void append_cross_entropy_rows(std::vector<Row>& rows, bool quick);
void append_matmul_rows(std::vector<Row>& rows, bool quick);

}  // namespace scanline::bench
