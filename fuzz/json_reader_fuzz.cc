// libFuzzer target for the JSON reader and writer.
//
// Any input must either be rejected with one of the JSON error codes (and a
// detail naming the byte offset) or parse to a Value that survives
// Write -> Parse unchanged, in both compact and pretty form, with Write being
// stable on the reparsed value. A parse under tighter limits must either fail
// with a limit/format error or agree with the default parse.
#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <string>
#include <string_view>

#include "common/error.h"
#include "json/value.h"

namespace {

using fhirward::CodeOf;
using fhirward::DetailOf;
using fhirward::ErrorCode;
using fhirward::json::Limits;
using fhirward::json::Parse;
using fhirward::json::Value;
using fhirward::json::Write;
using fhirward::json::WriteOptions;

[[noreturn]] void Die(const char* what) {
  std::fprintf(stderr, "json_reader_fuzz: %s\n", what);
  std::abort();
}

void CheckError(const absl::Status& status) {
  switch (CodeOf(status)) {
    case ErrorCode::kInvalidJson:
    case ErrorCode::kInvalidUtf8:
    case ErrorCode::kDuplicateKey:
    case ErrorCode::kJsonTooDeep:
    case ErrorCode::kJsonTooLarge:
      break;
    default:
      Die("unexpected error code");
  }
  const std::string detail = DetailOf(status);
  if (detail.rfind("at byte ", 0) != 0) Die("error detail lacks the byte offset");
  if (detail.size() > 160) Die("error detail too long");
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const std::string_view text(reinterpret_cast<const char*>(data), size);
  auto parsed = Parse(text);
  if (!parsed.ok()) {
    CheckError(parsed.status());
  } else {
    for (bool pretty : {false, true}) {
      WriteOptions opts;
      opts.pretty = pretty;
      const std::string out = Write(*parsed, opts);
      auto again = Parse(out);
      if (!again.ok()) Die("writer output does not reparse");
      if (!(*again == *parsed)) Die("reparsed value differs");
      if (Write(*again, opts) != out) Die("writer output is not stable");
    }
  }

  Limits tight;
  tight.max_depth = 4;
  tight.max_string_bytes = 16;
  tight.max_array_items = 8;
  tight.max_object_members = 8;
  tight.max_total_bytes = 4096;
  auto small = Parse(text, tight);
  if (!small.ok()) {
    CheckError(small.status());
  } else if (!parsed.ok() || !(*small == *parsed)) {
    Die("tight-limit parse accepted what the default parse did not, or disagreed");
  }
  return 0;
}
