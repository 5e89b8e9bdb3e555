#pragma once
// scanline::Error and SCANLINE_CHECK: every user-visible failure says what was expected and what
// was found. Messages are built by streaming the arguments, so shapes and dtypes print directly.
#include <sstream>
#include <stdexcept>
#include <string>
#include <vector>

namespace scanline {

class Error : public std::runtime_error {
 public:
  explicit Error(const std::string& what) : std::runtime_error(what) {}
};

namespace detail {
template <typename T>
void put(std::ostringstream& out, const T& value) {
  out << value;
}
// Shapes, strides and dim lists print as [a, b, c].
template <typename T>
void put(std::ostringstream& out, const std::vector<T>& values) {
  out << '[';
  for (size_t i = 0; i < values.size(); ++i) out << (i ? ", " : "") << values[i];
  out << ']';
}
template <typename... Args>
std::string concat(const Args&... args) {
  std::ostringstream out;
  (put(out, args), ...);
  return out.str();
}
[[noreturn]] void throw_error(const char* file, int line, const std::string& message);
}  // namespace detail

}  // namespace scanline

// SCANLINE_CHECK(cond, "op: expected ...", value, " but found ", other) throws scanline::Error.
#define SCANLINE_CHECK(cond, ...)                                                          \
  do {                                                                                     \
    if (!(cond)) [[unlikely]]                                                              \
      ::scanline::detail::throw_error(__FILE__, __LINE__, ::scanline::detail::concat(__VA_ARGS__)); \
  } while (0)

#define SCANLINE_FAIL(...) \
  ::scanline::detail::throw_error(__FILE__, __LINE__, ::scanline::detail::concat(__VA_ARGS__))
