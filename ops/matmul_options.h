#pragma once
// Switches of the matrix products. allow_tf32 lets f32 products on CUDA run on TF32 tensor cores
// (10-bit mantissa inputs, fp32 accumulation: ~1e-3 relative error, several times faster). Off
// by default, so f32 means fp32; bf16/f16/f64 products and CPU products ignore it.
namespace scanline {

void set_allow_tf32(bool allow);
bool allow_tf32();

// Sets allow_tf32 for the guard's lifetime, then restores the previous value.
class AllowTf32Guard {
 public:
  explicit AllowTf32Guard(bool allow) : previous_(allow_tf32()) { set_allow_tf32(allow); }
  ~AllowTf32Guard() { set_allow_tf32(previous_); }
  AllowTf32Guard(const AllowTf32Guard&) = delete;
  AllowTf32Guard& operator=(const AllowTf32Guard&) = delete;

 private:
  bool previous_;
};

}  // namespace scanline
