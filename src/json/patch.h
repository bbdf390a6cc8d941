// RFC 6902 JSON Patch over json::Value, with RFC 6901 JSON Pointer paths.
//
// ApplyPatch(patch, doc) applies the operations of `patch` (the parsed JSON
// Patch document: an array of operation objects) to `doc` in order. It is
// atomic: on any failure `doc` is left exactly as it was (the operations are
// applied to a copy that replaces `doc` only when all of them succeeded).
//
// Operations: add, remove, replace, move, copy, test, as in RFC 6902 §4.
// Members other than op/path/from/value are ignored (RFC 6902 §4). Pointers
// follow RFC 6901: "" is the whole document, "~1" is "/", "~0" is "~", array
// indexes are "0" or digits without a leading zero, and "-" (the element after
// the last) is accepted only as the target of add, move and copy. `test`
// compares with JSON equality (RFC 6902 §4.6, see JsonEquals below).
//
// Errors (a Status made by fhirward::Error; the detail names the zero-based
// operation index and op, e.g. "operation 2 (replace): path /name/5 does not
// exist (index 5 is out of range for an array of 2 items)"):
//   kInvalidRequest  (400) the patch document is malformed: not an array, an
//                    operation that is not an object, op missing, not a string
//                    or unknown, path/from missing or not a string, value
//                    missing, a pointer that is not RFC 6901 syntax, a move
//                    into a child of its own source, a remove of the whole
//                    document. Decidable from the patch alone.
//   kValidationFailed (422) the patch is well formed but cannot be applied to
//                    this document: a path or from that does not resolve
//                    (missing member, index out of range or malformed, "-"
//                    outside add/move/copy targets, a step through a scalar),
//                    or a test operation whose value differs.
//   kTooCostly       (400) a PatchLimits bound is exceeded.
// Details echo pointers and op names from the patch (truncated), never values
// from either document.
//
// Never throws (short of std::bad_alloc); pointer walking and comparison are
// iterative. Copying values still recurses once per nesting level, which the
// depth limit bounds for everything a patch adds.
#ifndef FHIRWARD_JSON_PATCH_H_
#define FHIRWARD_JSON_PATCH_H_

#include <cstddef>

#include "absl/status/status.h"
#include "json/value.h"

namespace fhirward::json {

struct PatchLimits {
  // Operations in one patch document.
  size_t max_operations = 1000;
  // No operation may place a value below this many levels of arrays/objects
  // (the nesting json::Limits::max_depth counts); also the most reference
  // tokens one pointer may have. Keeps a patched document re-readable with
  // the default json::Limits.
  size_t max_depth = 64;
  // Bound on the approximate size in bytes of the patched document written as
  // compact JSON (strings counted unescaped). Checked when an operation adds
  // to the document, so repeated copies cannot grow it without bound.
  size_t max_result_bytes = 16 * 1024 * 1024;
};

// Applies `patch` to `doc`; see above. On error `doc` is unchanged.
absl::Status ApplyPatch(const Value& patch, Value& doc, const PatchLimits& limits = {});

// JSON equality of RFC 6902 §4.6, as used by the test operation: same kind;
// strings equal byte for byte; numbers numerically equal (1, 1.0, 10e-1 and
// 0.1e1 are equal; 0 and -0 are equal; number texts whose exponent has more
// than 18 digits are compared as text); arrays equal item by item in order;
// objects with the same set of member names and equal values, in any order.
// Iterative: safe on any nesting depth.
bool JsonEquals(const Value& a, const Value& b);

}  // namespace fhirward::json

#endif  // FHIRWARD_JSON_PATCH_H_
