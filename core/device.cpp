#include "core/device.h"

#include <charconv>

#include "core/error.h"

namespace scanline {

Device Device::parse(const std::string& text) {
  if (text == "cpu") return cpu();
  if (text == "cuda") return cuda(0);
  if (text.rfind("cuda:", 0) == 0) {
    int index = -1;
    const char* first = text.data() + 5;
    const char* last = text.data() + text.size();
    auto [ptr, ec] = std::from_chars(first, last, index);
    if (ec == std::errc() && ptr == last && first != last && index >= 0) return cuda(index);
  }
  SCANLINE_FAIL("device: expected 'cpu', 'cuda' or 'cuda:N' (N >= 0) but found '", text, "'");
}

std::string Device::str() const { return is_cpu() ? "cpu" : "cuda:" + std::to_string(index); }

}  // namespace scanline
