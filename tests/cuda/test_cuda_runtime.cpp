#include <doctest/doctest.h>

#include <vector>

#include "cuda/device_query.h"

TEST_CASE("a kernel launched on the device writes every element") {
  REQUIRE(scanline::cuda::device_count() > 0);
  MESSAGE("device 0: ", scanline::cuda::device_name(0), " (sm_", scanline::cuda::compute_capability(0), ")");
  const int n = 1000003;  // not a multiple of the block size
  std::vector<float> host(n, -1.0f);
  scanline::cuda::fill_iota_roundtrip(host.data(), n, 0.5f);
  for (int i = 0; i < n; i += 9973) CHECK(host[i] == doctest::Approx(0.5f * float(i)));
  CHECK(host[n - 1] == doctest::Approx(0.5f * float(n - 1)));
}
