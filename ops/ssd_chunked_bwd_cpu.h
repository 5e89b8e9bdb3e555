#pragma once
// The chunked SSD backward on CPU in double (ops/ssd_chunked_bwd_cpu.cpp): the decomposition the
// CUDA backward (cuda/ssd_bwd*.cu) implements, pass for pass, so that its math is tested against
// the recurrence's backward (cpu::ssd_backward) without a GPU. Not used by the op itself.
#include <cstdint>

#include "ops/ssd_cpu.h"

namespace scanline::cpu {

// Every gradient of ssd (ops/ssd.h) for the inputs that are defined, computed in chunks of
// chunk_size (>= 1) steps from the chunked forward's states entering each chunk. grad_y:
// (batch, L, heads, headdim); grad_final_state: (batch, heads, headdim, N) or undefined (zeros).
// Results are rounded once to their input's dtype, as cpu::ssd_backward's are.
SsdGrads ssd_chunked_backward(const SsdArgs& args, int64_t chunk_size, const Tensor& grad_y,
                              const Tensor& grad_final_state);

}  // namespace scanline::cpu
