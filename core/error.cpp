#include "core/error.h"

namespace scanline::detail {

void throw_error(const char* file, int line, const std::string& message) {
  // The source location goes last: the user reads what went wrong first.
  const char* base = file;
  for (const char* p = file; *p; ++p)
    if (*p == '/') base = p + 1;
  throw Error(message + " [" + base + ":" + std::to_string(line) + "]");
}

}  // namespace scanline::detail
