// FHIRPath (normative release N1, http://hl7.org/fhirpath/N1/) as used by FHIR R4, evaluated
// over FHIR JSON documents (json::Value) typed by the R4 structure model (fhir/model.h).
//
// Use:
//   absl::StatusOr<Expression> e = Expression::Parse("name.where(use = 'official').given");
//   Environment env = Environment::ForResource(patient_json);
//   absl::StatusOr<Collection> r = Evaluate(*e, Item::Resource(patient_json), env);
//   // invariants, with the focus at any element (the validator's use):
//   absl::StatusOr<std::optional<bool>> ok =
//       EvaluateBoolean(*e, Item::MakeNode(&period_json, "Period", element_def), env);
//
// Contract:
//   - Parse compiles once into an immutable AST; unknown functions, wrong argument counts,
//     unknown lower-case type names in is/as/ofType (string1), malformed literals, invalid
//     literal regular expressions and limit violations (ParseOptions) are parse errors:
//     absl::InvalidArgumentError("fhirpath: <what> at <line>:<column>").
//   - An Expression is immutable and cheap to copy (copies share the AST); one Expression may be
//     evaluated from many threads at once. Regular expressions given as literals to matches(),
//     matchesFull() and replaceMatches() are compiled at parse time.
//   - Evaluation never throws and never recurses deeper than the AST (bounded at parse). Errors:
//     absl::InvalidArgumentError for FHIRPath execution errors (a collection of several items
//     where one is required, operands of the wrong type, ...), and
//     absl::ResourceExhaustedError when a Limits budget is spent (steps, time, collection size,
//     string size, regular-expression input size). Every operation whose cost grows faster than
//     its input (deduplication, equivalence, subsetOf, ...) is charged to the step budget.
//   - Results may point into the evaluated documents, into the Expression (string literals) and
//     into the Model: keep all three alive while using a result. Environment and its documents
//     are only read. No global mutable state: caches live in one evaluation.
//
// FHIR specifics (http://hl7.org/fhir/R4/fhirpath.html): a primitive's id/extension come from the
// "_name" sibling (a primitive with only "_name" still exists, without a value); choice elements
// are reached by their base name (Observation.value finds valueQuantity, typed Quantity) and also,
// outside strict mode, by their JSON name (Observation.valueQuantity); a type name as first step
// (Patient.name) selects the focus when it is of that type and gives empty otherwise. Resource.id
// is typed "id" as R4 documents it. Decimals are exact (1.0 = 1.00, 0.1 + 0.2 = 0.3); quantities
// compare across UCUM units of the same dimension (mg/g/kg, cm/m, mm[Hg]/kPa, '10*3/uL', ...), and
// calendar durations (1 week = 7 'd'; years and months compare only with each other).
//
// Where this engine departs from the letter of N1 (outside strict mode), for the R4 invariants:
//   - as() on several items returns those of the type instead of failing (dom-3 applies
//     descendants().as(canonical)); strict mode fails as N1 says.
//   - Unknown capitalised type names (R4B resources named by the R4 definitions' dom-r4b) match
//     nothing instead of failing to parse.
//   - `answer is Boolean` (R4's que-7) is, per N1, System.Boolean and false for FHIR booleans;
//     callers wanting R4's intent must rewrite it to `answer is boolean`.
//
// Deliberately incomplete (documented, never an error):
//   - conformsTo(url): true/false for the core StructureDefinition of a type
//     (http://hl7.org/fhir/StructureDefinition/<Type>); empty for any other profile.
//   - memberOf(url): empty when the value set is unknown or not fully expanded in the Model.
//   - subsumes(), subsumedBy(), elementDefinition(), slice(), checkModifiers(): empty.
//   - resolve(): contained resources ("#id"), and entries of a Bundle that is %rootResource or
//     %resource (by fullUrl, or "Type/id"); anything else resolves to empty.
//   - Static (semantic) checking is limited to strict mode (Environment::strict): unknown element
//     names, JSON choice names, type names that cannot match the focus, element names absent
//     from the type given to as()/ofType(), and first()/skip()/... on children()/descendants().
#ifndef FHIRWARD_FHIR_FHIRPATH_H_
#define FHIRWARD_FHIR_FHIRPATH_H_

#include <atomic>
#include <chrono>
#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <utility>

#include "absl/container/inlined_vector.h"
#include "absl/status/statusor.h"
#include "common/clock.h"
#include "fhir/model.h"
#include "json/value.h"

namespace fhirward::fhir::fhirpath {

namespace internal {
struct Ast;
}  // namespace internal

// ---------------------------------------------------------------------------------------------
// System values

// An exact decimal: mantissa × 10^-scale, at most 38 significant digits and 38 decimal places.
// Keeps the precision it was written with ("1.50" prints as "1.50"); compares by value.
class Decimal {
 public:
  static constexpr int kMaxScale = 38;
  Decimal() = default;
  Decimal(__int128 mantissa, int scale)
      : lo_(static_cast<uint64_t>(mantissa)),
        hi_(static_cast<int64_t>(mantissa >> 64)),
        scale_(scale) {}
  static Decimal FromInt(int64_t v) { return Decimal(v, 0); }
  // FHIRPath / JSON number text ("-1.50", "1e3"); nullopt when malformed or out of range.
  static std::optional<Decimal> Parse(std::string_view text);
  std::string ToString() const;
  __int128 mantissa() const { return (static_cast<__int128>(hi_) << 64) | lo_; }
  int scale() const { return scale_; }
  bool is_negative() const { return hi_ < 0; }
  double ToDouble() const;

 private:
  // The mantissa in two halves: 8-byte alignment keeps Item small.
  uint64_t lo_ = 0;
  int64_t hi_ = 0;
  int32_t scale_ = 0;
};

// Date, DateTime or Time with partial precision (FHIRPath §1.5.4-1.5.6).
struct Temporal {
  enum class Kind : uint8_t { kDate, kDateTime, kTime };
  // Precisions, coarse to fine; a Time starts at kHour.
  enum Precision : uint8_t { kYear, kMonth, kDay, kHour, kMinute, kSecond, kMillisecond };
  Kind kind = Kind::kDate;
  Precision precision = kYear;
  int16_t year = 0;
  uint8_t month = 1, day = 1, hour = 0, minute = 0, second = 0;
  uint16_t millisecond = 0;
  bool has_tz = false;
  int16_t tz_minutes = 0;  // offset east of UTC

  // FHIR / FHIRPath text without '@': "2014-01-05", "2015-02-04T14:34:28.123+09:00",
  // "14:34:28" (Time without 'T'). A DateTime of day precision or less prints as a date.
  std::string ToString() const;
  // FHIR lexical forms: date "YYYY[-MM[-DD]]", dateTime/instant
  // "YYYY[-MM[-DD[Thh:mm:ss[.f+][tz]]]]" (the FHIRPath forms "YYYY-MM-DDThh" and "YYYY-MM-DDThh:mm"
  // are accepted too), time "hh[:mm[:ss[.f+]]]". Values are range-checked (month 1-12, day within
  // month, ...).
  static std::optional<Temporal> ParseDate(std::string_view text);
  static std::optional<Temporal> ParseDateTime(std::string_view text);
  static std::optional<Temporal> ParseTime(std::string_view text);
};

// A quantity: value and UCUM unit ("mg", "1"), or a calendar duration keyword ("week", "days")
// when `calendar` is set (written unquoted in FHIRPath: 4 days).
struct Quantity {
  Decimal value;
  std::string unit = "1";
  bool calendar = false;
  std::string ToString() const;  // "4 'mg'", "1 week"
};

// ---------------------------------------------------------------------------------------------
// Items and collections

// One element of a collection: a FHIR node (a JSON value in a document with its FHIR type) or a
// System value (Boolean, Integer, Decimal, String, Date, DateTime, Time, Quantity) or the result
// of type(). Copying is cheap: nodes and most strings are pointers.
class Item {
 public:
  enum class Kind : uint8_t {
    kNode,
    kBoolean,
    kInteger,
    kDecimal,
    kString,
    kDate,
    kDateTime,
    kTime,
    kQuantity,
    kTypeInfo
  };
  // A FHIR node. `value` is the JSON value (nullptr for a primitive that only has "_name");
  // `ext` the "_name" object of a primitive (id, extension); `def` the ElementDef that holds it
  // (nullptr for a resource root or when unknown); `type` its FHIR type (nullptr: untyped JSON).
  struct Node {
    const json::Value* value = nullptr;
    const json::Value* ext = nullptr;
    const ElementDef* def = nullptr;
    const TypeDef* type = nullptr;
  };
  struct TypeInfo {
    std::string_view ns;    // "System" or "FHIR"
    std::string_view name;  // "Integer", "Patient"
  };

  Item() { p_.integer = 0; }  // the Boolean false, for containers
  Item(const Item& o) : kind_(o.kind_), p_(o.p_), owned_(o.owned_) { Retain(); }
  Item(Item&& o) noexcept : kind_(o.kind_), p_(o.p_), owned_(o.owned_) { o.owned_ = nullptr; }
  Item& operator=(const Item& o) {
    if (this == &o) return *this;
    o.Retain();
    Release();
    kind_ = o.kind_;
    p_ = o.p_;
    owned_ = o.owned_;
    return *this;
  }
  Item& operator=(Item&& o) noexcept {
    if (this != &o) {
      Release();
      kind_ = o.kind_;
      p_ = o.p_;
      owned_ = o.owned_;
      o.owned_ = nullptr;
    }
    return *this;
  }
  ~Item() { Release(); }
  // A node typed `fhir_type` (resolved in Model::R4(); unknown names give an untyped node). A
  // "Resource"-typed node takes its type from "resourceType".
  static Item MakeNode(const json::Value* value, std::string_view fhir_type,
                       const ElementDef* def = nullptr, const json::Value* primitive_ext = nullptr);
  static Item MakeNode(const Node& node) {
    Item i(Kind::kNode);
    i.p_.node = node;
    return i;
  }
  // A resource root typed by its "resourceType" (untyped when absent or unknown).
  static Item Resource(const json::Value& resource);
  static Item MakeBoolean(bool b) {
    Item i(Kind::kBoolean);
    i.p_.boolean = b;
    return i;
  }
  static Item MakeInteger(int64_t v) {
    Item i(Kind::kInteger);
    i.p_.integer = v;
    return i;
  }
  static Item MakeDecimal(const Decimal& d) {
    Item i(Kind::kDecimal);
    i.p_.decimal = d;
    return i;
  }
  static Item MakeString(std::string s);
  // Not owned: `s` must outlive the item.
  static Item MakeStringView(std::string_view s) {
    Item i(Kind::kString);
    i.p_.str = {s.data(), s.size()};
    return i;
  }
  static Item MakeTemporal(const Temporal& t);
  static Item MakeQuantity(Quantity q);
  static Item MakeTypeInfo(std::string_view ns, std::string_view name) {
    Item i(Kind::kTypeInfo);
    i.p_.type_info = TypeInfo{ns, name};
    return i;
  }

  Kind kind() const { return kind_; }
  bool is_node() const { return kind_ == Kind::kNode; }
  // Accessors; each requires the matching kind().
  const Node& node() const { return p_.node; }
  bool boolean() const { return p_.boolean; }
  int64_t integer() const { return p_.integer; }
  const Decimal& decimal() const { return p_.decimal; }
  std::string_view string() const { return std::string_view(p_.str.data, p_.str.size); }
  const Temporal& temporal() const { return p_.temporal; }
  const Quantity& quantity() const { return *p_.quantity; }
  const TypeInfo& type_info() const { return p_.type_info; }
  // The FHIR type name of a node ("" when untyped), or the System type name of a value
  // ("Boolean", "Integer", ...).
  std::string_view type_name() const;

 private:
  explicit Item(Kind kind) : kind_(kind) {}

  // The storage of a computed string or quantity, shared by the copies of an Item (an intrusive
  // count: copying an Item that owns nothing is a plain copy).
  struct Owned {
    std::atomic<uint32_t> refs{1};
    virtual ~Owned() = default;
  };
  struct OwnedString;
  struct OwnedQuantity;
  void Retain() const {
    if (owned_ != nullptr) owned_->refs.fetch_add(1, std::memory_order_relaxed);
  }
  void Release() {
    if (owned_ != nullptr && owned_->refs.fetch_sub(1, std::memory_order_acq_rel) == 1) {
      delete owned_;
    }
    owned_ = nullptr;
  }

  // A tagged union of trivially copyable values.
  union Payload {
    Payload() : integer(0) {}
    Node node;
    bool boolean;
    int64_t integer;
    Decimal decimal;
    struct {
      const char* data;
      size_t size;
    } str;
    Temporal temporal;
    const Quantity* quantity;
    TypeInfo type_info;
  };
  Kind kind_ = Kind::kBoolean;
  Payload p_;
  Owned* owned_ = nullptr;  // keeps a computed string or a quantity alive
};

using Collection = absl::InlinedVector<Item, 1>;

// A readable rendering for tests and diagnostics: System values in FHIRPath literal syntax
// (true, 5, 1.50, 'text', @2014-01-05, @T10:30, 4 'mg'), nodes as "<type> <json>".
std::string ToDebugString(const Item& item);
std::string ToDebugString(const Collection& items);  // "[a, b]"

// ---------------------------------------------------------------------------------------------
// Expressions

// Parsing and evaluating an expression at max_depth take roughly 2 KB of stack per level
// (about 256 KB at the default): far below the 8 MB of a default thread.
struct ParseOptions {
  size_t max_length = 64 * 1024;  // bytes of expression text
  size_t max_depth = 128;         // nesting of the AST
};

class Expression {
 public:
  static absl::StatusOr<Expression> Parse(std::string_view text, const ParseOptions& options = {});
  const std::string& text() const;
  const internal::Ast& ast() const { return *ast_; }

 private:
  explicit Expression(std::shared_ptr<const internal::Ast> ast) : ast_(std::move(ast)) {}
  std::shared_ptr<const internal::Ast> ast_;
};

// ---------------------------------------------------------------------------------------------
// Evaluation

// Budgets of one evaluation. Exceeding one is absl::ResourceExhaustedError.
struct Limits {
  uint64_t max_steps = 2'000'000;            // AST node visits plus items processed
  std::chrono::milliseconds max_time{0};     // wall time, 0 = no limit (checked every 4096 steps)
  size_t max_collection_size = 100'000;      // items in one intermediate collection
  size_t max_string_bytes = 1 << 20;         // length of one computed string
  size_t max_regex_input_bytes = 16 * 1024;  // text given to matches()/replaceMatches()
  size_t max_regex_pattern_bytes = 1024;     // a pattern computed at evaluation time
};

struct Environment {
  // %resource (defaults to root_resource) and %rootResource (defaults to resource).
  const json::Value* resource = nullptr;
  const json::Value* root_resource = nullptr;
  // Caller-supplied variables, by name without '%'. %resource, %rootResource and %context are
  // always the built-in ones; a variable named here overrides %ucum, %sct, %loinc, %vs-* and
  // %ext-* (which otherwise give the FHIR URLs).
  std::map<std::string, Collection, std::less<>> variables;
  // htmlChecks(): called with the XHTML text of the focus; true when absent.
  std::function<bool(std::string_view xhtml)> html_checks;
  // trace(name[, projection]): called with the name and the traced items; ignored when absent.
  std::function<void(std::string_view name, const Collection& items)> trace;
  // now(), today(), timeOfDay() (UTC); SystemClock when null.
  const Clock* clock = nullptr;
  // Strict mode (N1's letter): unknown element names on typed nodes, JSON choice names
  // (valueQuantity), type names as first step that cannot match the focus, names absent from
  // the type given to as()/ofType(), ordered functions on children()/descendants() and as() on
  // several items are errors instead of empty.
  bool strict = false;
  Limits limits;

  // An environment whose %resource and %rootResource are `resource`.
  static Environment ForResource(const json::Value& resource) {
    Environment env;
    env.resource = &resource;
    env.root_resource = &resource;
    return env;
  }
};

absl::StatusOr<Collection> Evaluate(const Expression& expression, const Collection& focus,
                                    const Environment& env);
absl::StatusOr<Collection> Evaluate(const Expression& expression, const Item& focus,
                                    const Environment& env);

// For invariants: the result as a Boolean by the singleton evaluation rules. Empty → nullopt,
// one Boolean → its value, one other item → true, several items → InvalidArgumentError.
absl::StatusOr<std::optional<bool>> EvaluateBoolean(const Expression& expression, const Item& focus,
                                                    const Environment& env);

}  // namespace fhirward::fhir::fhirpath

#endif  // FHIRWARD_FHIR_FHIRPATH_H_
