// StrCat for std::string_view: absl::StrCat on this platform (abseil 20220623)
// takes absl::string_view, which is not std::string_view, so std::string_view
// arguments do not convert. Cat() takes anything convertible to
// std::string_view, integers and characters.
#ifndef FHIRWARD_COMMON_STR_CAT_H_
#define FHIRWARD_COMMON_STR_CAT_H_

#include <initializer_list>
#include <string>
#include <string_view>
#include <type_traits>

namespace fhirward {
namespace str_cat_internal {

inline void Append(std::string& out, std::string_view s) { out.append(s); }
inline void Append(std::string& out, char c) { out.push_back(c); }
template <typename T>
requires(std::is_integral_v<T> && !std::is_same_v<T, char> &&
         !std::is_same_v<T, bool>) void Append(std::string& out, T v) {
  out.append(std::to_string(v));
}

}  // namespace str_cat_internal

// Cat({"a", b, c}): string pieces only, one allocation.
inline std::string Cat(std::initializer_list<std::string_view> parts) {
  size_t size = 0;
  for (std::string_view p : parts) size += p.size();
  std::string out;
  out.reserve(size);
  for (std::string_view p : parts) out.append(p);
  return out;
}

template <typename... Args>
std::string Cat(const Args&... args) {
  std::string out;
  (str_cat_internal::Append(out, args), ...);
  return out;
}

}  // namespace fhirward

#endif  // FHIRWARD_COMMON_STR_CAT_H_
