// UTF-8 helpers shared by the JSON reader and writer and the FHIR module
// (FHIRPath strings, narrative character references). Not part of the public
// json API.
#ifndef FHIRWARD_JSON_UTF8_H_
#define FHIRWARD_JSON_UTF8_H_

#include <cstddef>
#include <cstdint>
#include <string>

namespace fhirward::json::internal {

// Length (2..4) of the well-formed UTF-8 sequence of a non-ASCII lead byte at
// `p`, or 0 when the bytes at [p, end) are not one (stray continuation byte,
// overlong form, UTF-16 surrogate, code point above U+10FFFF, truncation).
// Requires p < end and *p >= 0x80.
inline size_t Utf8SequenceLength(const unsigned char* p, const unsigned char* end) {
  const unsigned char c = p[0];
  const size_t avail = static_cast<size_t>(end - p);
  auto cont = [](unsigned char b) { return (b & 0xC0) == 0x80; };
  if (c >= 0xC2 && c <= 0xDF) {
    return (avail >= 2 && cont(p[1])) ? 2 : 0;
  }
  if (c >= 0xE0 && c <= 0xEF) {
    if (avail < 3) return 0;
    const unsigned char lo = c == 0xE0 ? 0xA0 : 0x80;  // E0: no overlong
    const unsigned char hi = c == 0xED ? 0x9F : 0xBF;  // ED: no surrogates
    if (p[1] < lo || p[1] > hi || !cont(p[2])) return 0;
    return 3;
  }
  if (c >= 0xF0 && c <= 0xF4) {
    if (avail < 4) return 0;
    const unsigned char lo = c == 0xF0 ? 0x90 : 0x80;  // F0: no overlong
    const unsigned char hi = c == 0xF4 ? 0x8F : 0xBF;  // F4: <= U+10FFFF
    if (p[1] < lo || p[1] > hi || !cont(p[2]) || !cont(p[3])) return 0;
    return 4;
  }
  return 0;  // 0x80..0xC1 (continuation / overlong lead), 0xF5..0xFF
}

// Appends code point `cp` (at most U+10FFFF; callers exclude surrogates) as
// UTF-8; a larger value appends nothing.
inline void AppendUtf8(std::string& out, uint32_t cp) {
  if (cp < 0x80) {
    out.push_back(static_cast<char>(cp));
  } else if (cp < 0x800) {
    out.push_back(static_cast<char>(0xC0 | (cp >> 6)));
    out.push_back(static_cast<char>(0x80 | (cp & 0x3F)));
  } else if (cp < 0x10000) {
    out.push_back(static_cast<char>(0xE0 | (cp >> 12)));
    out.push_back(static_cast<char>(0x80 | ((cp >> 6) & 0x3F)));
    out.push_back(static_cast<char>(0x80 | (cp & 0x3F)));
  } else if (cp < 0x110000) {
    out.push_back(static_cast<char>(0xF0 | (cp >> 18)));
    out.push_back(static_cast<char>(0x80 | ((cp >> 12) & 0x3F)));
    out.push_back(static_cast<char>(0x80 | ((cp >> 6) & 0x3F)));
    out.push_back(static_cast<char>(0x80 | (cp & 0x3F)));
  }
}

}  // namespace fhirward::json::internal

#endif  // FHIRWARD_JSON_UTF8_H_
