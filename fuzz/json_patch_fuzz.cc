// libFuzzer target for RFC 6902 JSON Patch (json/patch.h).
//
// The input is split at its first NUL byte into a document and a patch (no
// NUL: the whole input is the document and the patch is empty, so the reader
// refuses it). Both are read with small limits; when both parse, the patch is
// applied, which must either:
//  - fail with one of the patch error codes and a detail naming the operation
//    or the patch document, leaving the document exactly unchanged; or
//  - succeed with a document whose compact JSON re-reads (default limits) to
//    an equal value, and that respects PatchLimits::max_depth.
// Applying the same patch twice to equal documents must give the same result
// (the patch is deterministic and does not depend on the document's history).
#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <string>
#include <string_view>

#include "common/error.h"
#include "json/patch.h"
#include "json/value.h"

namespace {

using fhirward::CodeOf;
using fhirward::DetailOf;
using fhirward::ErrorCode;
using fhirward::json::ApplyPatch;
using fhirward::json::JsonEquals;
using fhirward::json::Limits;
using fhirward::json::Parse;
using fhirward::json::PatchLimits;
using fhirward::json::Value;
using fhirward::json::Write;

[[noreturn]] void Die(const char* what) {
  std::fprintf(stderr, "json_patch_fuzz: %s\n", what);
  std::abort();
}

void CheckError(const absl::Status& status) {
  switch (CodeOf(status)) {
    case ErrorCode::kInvalidRequest:    // malformed patch document
    case ErrorCode::kValidationFailed:  // cannot be applied to this document
    case ErrorCode::kTooCostly:         // a PatchLimits bound
      break;
    default:
      Die("unexpected error code");
  }
  const std::string detail = DetailOf(status);
  if (detail.rfind("operation ", 0) != 0 && detail.rfind("the patch ", 0) != 0) {
    Die("error detail names neither an operation nor the patch");
  }
  if (detail.size() > 400) Die("error detail too long");
}

// Levels of arrays/objects in `v` (a scalar is 0); the reader's limit bounds
// the recursion.
size_t Depth(const Value& v) {
  size_t deepest = 0;
  if (v.is_array()) {
    for (const Value& item : v.items()) deepest = std::max(deepest, Depth(item));
    return deepest + 1;
  }
  if (v.is_object()) {
    for (const auto& member : v.members()) deepest = std::max(deepest, Depth(member.second));
    return deepest + 1;
  }
  return 0;
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const std::string_view input(reinterpret_cast<const char*>(data), size);
  const size_t nul = input.find('\0');
  const std::string_view doc_text = input.substr(0, nul);
  const std::string_view patch_text =
      nul == std::string_view::npos ? std::string_view() : input.substr(nul + 1);

  Limits limits;
  limits.max_depth = 8;
  limits.max_string_bytes = 64;
  limits.max_array_items = 16;
  limits.max_object_members = 16;
  limits.max_total_bytes = 4096;
  auto doc = Parse(doc_text, limits);
  auto patch = Parse(patch_text, limits);
  if (!doc.ok() || !patch.ok()) return 0;

  PatchLimits patch_limits;
  patch_limits.max_operations = 16;
  patch_limits.max_depth = 16;
  patch_limits.max_result_bytes = 1 << 16;

  const Value original = *doc;
  Value result = *doc;
  const absl::Status status = ApplyPatch(*patch, result, patch_limits);
  if (!status.ok()) {
    CheckError(status);
    if (!(result == original)) Die("a failed patch changed the document");
    return 0;
  }

  if (Depth(result) > patch_limits.max_depth) Die("result deeper than PatchLimits::max_depth");
  const std::string out = Write(result);
  auto again = Parse(out);
  if (!again.ok()) Die("patched document does not reparse");
  if (!(*again == result)) Die("reparsed patched document differs");
  if (!JsonEquals(*again, result)) Die("JsonEquals is not reflexive");

  Value second = original;
  if (!ApplyPatch(*patch, second, patch_limits).ok()) Die("patch is not deterministic");
  if (!(second == result)) Die("patch gave two different results");
  return 0;
}
