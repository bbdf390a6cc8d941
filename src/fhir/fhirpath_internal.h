// Private to the FHIRPath engine (fhirpath_*.cc): the AST, the evaluator and the value
// operations shared by the parser, the evaluator and the function library.
#ifndef FHIRWARD_FHIR_FHIRPATH_INTERNAL_H_
#define FHIRWARD_FHIR_FHIRPATH_INTERNAL_H_

#include <array>
#include <chrono>
#include <cstdint>
#include <memory>
#include <optional>
#include <regex>
#include <span>
#include <string>
#include <string_view>
#include <unordered_map>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "fhir/fhirpath.h"
#include "fhir/model.h"

namespace fhirward::fhir::fhirpath::internal {

// ---------------------------------------------------------------------------------------------
// AST

enum class NodeKind : uint8_t {
  kEmpty,     // {}
  kLiteral,   // literal
  kThis,      // $this
  kIndex,     // $index
  kTotal,     // $total
  kVariable,  // %name
  kMember,    // identifier: navigation from the input
  kFunction,  // name(args) applied to the input
  kInvoke,    // args[0] . args[1]
  kIndexer,   // args[0] [ args[1] ]
  kNegate,    // - args[0]
  kBinary,    // args[0] op args[1]
  kIs,        // args[0] is type
  kAs,        // args[0] as type
};

enum class BinOp : uint8_t {
  kMul,
  kDiv,
  kIntDiv,
  kMod,
  kAdd,
  kSub,
  kConcat,
  kUnion,
  kLt,
  kGt,
  kLe,
  kGe,
  kEq,
  kEquiv,
  kNe,
  kNotEquiv,
  kIn,
  kContains,
  kAnd,
  kOr,
  kXor,
  kImplies,
};

// A resolved type specifier: FHIR type and/or System type by name.
struct TypeSpec {
  enum class Ns : uint8_t { kAny, kSystem, kFhir };
  Ns ns = Ns::kAny;
  std::string name;
  const TypeDef* fhir = nullptr;     // when the name is a FHIR type and ns allows it
  std::optional<Item::Kind> system;  // when the name is a System type and ns allows it
};

class Evaluator;
struct Frame;
struct AstNode;

// The input of an invocation: items of a collection, viewed without copying.
using Input = std::span<const Item>;

using FunctionImpl = absl::Status (*)(Evaluator& ev, const AstNode& call, Input input,
                                      const Frame& frame, Collection* out);

struct FunctionDef {
  std::string_view name;
  uint8_t min_args;
  uint8_t max_args;  // 255: any number
  FunctionImpl impl;
  bool type_argument = false;  // is(), as(), ofType(): the argument is a type specifier
};
const FunctionDef* FindFunction(std::string_view name);

// "line:column" (1-based) of byte `pos` of an expression, for error messages.
std::string Position(std::string_view text, size_t pos);

struct AstNode {
  NodeKind kind = NodeKind::kEmpty;
  BinOp op = BinOp::kAdd;
  bool descending = false;  // sort() key written as -expr
  uint32_t pos = 0;         // byte offset in the expression text
  uint32_t height = 1;      // 1 + the largest height of the arguments
  // Slot of the per-evaluation memo, or -1. Set on subexpressions that do not depend on the
  // focus or $this and that sit inside a lambda argument (re-evaluated per item): dom-3's
  // %resource.descendants() inside contained.where(...). Equal subexpressions share a slot.
  int32_t memo_slot = -1;
  std::string name;  // member, function or variable name; string literal text
  std::vector<std::unique_ptr<AstNode>> args;
  Item literal;
  TypeSpec type;                            // kIs, kAs, and type-argument functions
  const FunctionDef* fn = nullptr;          // kFunction
  std::shared_ptr<const std::regex> regex;  // literal pattern of matches()/replaceMatches()
};

struct Ast {
  std::string text;
  std::unique_ptr<AstNode> root;
  int32_t memo_slots = 0;
};

// The TypeDef named `name`; fast when `name` is one of the Model's own type strings
// (ElementDef::types), which navigation passes (a pointer lookup instead of hashing text).
const TypeDef* FindTypeFast(std::string_view name);

// ---------------------------------------------------------------------------------------------
// Values (fhirpath_values.cc)

enum class Tri : uint8_t { kFalse, kTrue, kEmpty };

// Decimal arithmetic; nullopt on overflow (or division by zero).
std::optional<Decimal> DecAdd(const Decimal& a, const Decimal& b);
std::optional<Decimal> DecSub(const Decimal& a, const Decimal& b);
std::optional<Decimal> DecMul(const Decimal& a, const Decimal& b);
std::optional<Decimal> DecDiv(const Decimal& a, const Decimal& b);  // strips trailing zeros
std::optional<Decimal> DecMod(const Decimal& a, const Decimal& b);
std::optional<Decimal> DecIntDiv(const Decimal& a, const Decimal& b);  // truncated, scale 0
int DecCompare(const Decimal& a, const Decimal& b);
Decimal DecNegate(const Decimal& a);
enum class Rounding { kHalfAwayFromZero, kTruncate, kFloor, kCeiling };
// The value at `scale` decimal places (scale may exceed the current scale: zeros are added).
std::optional<Decimal> DecRescale(const Decimal& a, int scale, Rounding mode);
Decimal DecStrip(const Decimal& a);  // trailing fractional zeros removed
std::optional<Decimal> DecFromDouble(double v);
std::optional<int64_t> DecToInt64(const Decimal& a);  // only integral values

// Temporal operations.
// Three-way comparison; nullopt when indeterminate (different precision, one timezone missing).
// Requires comparable kinds (Date/DateTime with each other, Time with Time).
std::optional<int> TemporalCompare(const Temporal& a, const Temporal& b);
bool TemporalComparable(const Temporal& a, const Temporal& b);
bool SamePrecision(const Temporal& a, const Temporal& b);
// a + sign * q for calendar/UCUM time units; InvalidArgument for other units.
absl::StatusOr<Temporal> TemporalAdd(const Temporal& a, const Quantity& q, int sign);
Temporal TemporalToDate(const Temporal& a);

// UCUM units: value × num / den in base units of dimension `dims`.
struct UnitInfo {
  Decimal num = Decimal::FromInt(1);
  Decimal den = Decimal::FromInt(1);
  std::array<int8_t, 8> dims{};  // m g s rad K C cd, calendar-month
};
std::optional<UnitInfo> ParseUnit(std::string_view ucum);
std::optional<UnitInfo> QuantityUnit(const Quantity& q);  // calendar keywords included
// The UCUM code for a calendar keyword ("weeks" → "wk"); "a"/"mo" for year(s)/month(s).
std::optional<std::string_view> CalendarToUcum(std::string_view keyword);
bool IsCalendarKeyword(std::string_view word);
// q expressed in `unit` (nullopt when not comparable or out of range).
std::optional<Decimal> ConvertQuantity(const Quantity& q, const UnitInfo& from, const UnitInfo& to);
bool SameDims(const UnitInfo& a, const UnitInfo& b);
// Three-way comparison of quantities; nullopt when the units are not comparable.
std::optional<int> QuantityCompare(const Quantity& a, const Quantity& b);
std::optional<bool> QuantityEquivalent(const Quantity& a, const Quantity& b);

// True for FHIR primitive types (boolean, string, code, date, ...).
bool IsPrimitiveType(const TypeDef* type);
// The System value of an item: a primitive node converted (strings are not copied), a FHIR
// Quantity node (Quantity, Age, Duration, ...) as System.Quantity; System values as they are.
// nullopt for other complex nodes, primitives without a value and values that do not parse.
std::optional<Item> ToSystem(const Item& item);

// Item equality (=): kEmpty when indeterminate. Complex nodes compare structurally.
Tri ItemEqual(const Item& a, const Item& b);
bool ItemEquivalent(const Item& a, const Item& b);
// Ordering (<, >, ...): nullopt when indeterminate; InvalidArgument when not comparable types.
absl::StatusOr<std::optional<int>> ItemCompare(const Item& a, const Item& b);
// A hash consistent with ItemEqual(a, b) == kTrue.
size_t ItemHash(const Item& a);
std::string_view KindName(Item::Kind kind);  // "Boolean", "Integer", ...

// Keeps the first of equal items (ItemEqual), hashing to compare only likely duplicates. Each
// comparison counts against `max_comparisons`: Add() returns false once it is exceeded.
class Deduplicator {
 public:
  explicit Deduplicator(uint64_t max_comparisons) : max_comparisons_(max_comparisons) {}
  bool Add(const Item& item, bool* added);
  uint64_t comparisons() const { return comparisons_; }
  Collection Take() { return std::move(kept_); }
  const Collection& kept() const { return kept_; }

 private:
  std::unordered_map<size_t, absl::InlinedVector<size_t, 1>> buckets_;
  Collection kept_;
  uint64_t comparisons_ = 0;
  uint64_t max_comparisons_;
};

// Deduplicates `items` in place (first occurrence kept); false when more than
// `max_comparisons` were needed (items are then unchanged).
bool Distinct(Collection* items, uint64_t max_comparisons, uint64_t* comparisons);

// Arithmetic operators (+ - * / div mod &) on two System values or nodes.
absl::StatusOr<std::optional<Item>> Arithmetic(BinOp op, const Item& a, const Item& b,
                                               size_t max_string_bytes);

// toString() of a single item; nullopt when not convertible.
std::optional<std::string> ItemToString(const Item& item);

// Text of a JSON string with escapes and a UTF-8 helper.
size_t Utf8Length(std::string_view s);

// ---------------------------------------------------------------------------------------------
// Evaluation (fhirpath_eval.cc)

struct Frame {
  std::span<const Item> this_;        // $this, and the input of terms
  int64_t index = -1;                 // $index, -1 when undefined
  const Collection* total = nullptr;  // $total
};

class Evaluator {
 public:
  Evaluator(const Environment& env, const Collection& focus);

  absl::Status Eval(const AstNode& node, Input input, const Frame& frame, Collection* out);
  // Argument `i` of `call`, evaluated in the caller's frame.
  absl::Status EvalArg(const AstNode& call, size_t i, const Frame& frame, Collection* out) {
    return Eval(*call.args[i], frame.this_, frame, out);
  }
  // Argument `i` evaluated with `item` as $this (where, select, ...).
  absl::Status EvalLambda(const AstNode& call, size_t i, Input this_, int64_t index,
                          const Frame& frame, Collection* out);

  absl::Status Step(uint64_t n = 1) {
    steps_ += n;
    if (steps_ > next_check_) return CheckBudget();
    return absl::OkStatus();
  }
  absl::Status CheckSize(size_t n) const;
  // Distinct() within the step budget (each comparison is a step).
  absl::Status Dedupe(Collection* items);
  uint64_t remaining_steps() const {
    return steps_ >= env_.limits.max_steps ? 0 : env_.limits.max_steps - steps_;
  }

  // Navigation.
  absl::Status Member(const Item& item, std::string_view name, Collection* out);
  absl::Status Children(const Item& item, Collection* out);
  absl::Status Descendants(Input input, Collection* out);
  // The type of a node as the Model sees it (nullptr when untyped).
  std::span<const ElementDef* const> ChildDefs(const Item::Node& node) const;
  bool TypeMatches(const Item& item, const TypeSpec& spec, bool exact) const;
  // Singleton rules.
  absl::StatusOr<std::optional<bool>> ToBoolean(Input c, std::string_view what) const;
  absl::StatusOr<const Item*> Singleton(Input c, std::string_view what) const;

  const Temporal& Now();
  absl::Status Error(const AstNode& node, std::string_view message) const;

  void set_ast(const Ast& ast) {
    text_ = ast.text;
    memo_slots_ = ast.memo_slots;
  }
  const Environment& env() const { return env_; }
  const Model& model() const { return model_; }
  const Collection& focus() const { return focus_; }
  uint64_t steps() const { return steps_; }

 private:
  absl::Status CheckBudget();
  absl::Status Variable(const AstNode& node, Collection* out);
  absl::Status StrictCheck(const AstNode& invoke) const;
  absl::Status Binary(const AstNode& node, Input input, const Frame& frame, Collection* out);
  void AddMember(const json::Object& obj, std::string_view key, const ElementDef* def,
                 const TypeDef* type, Collection* out) const;
  // The node(s) of a member given its value and "_name" sibling (arrays are paired by index).
  void AddValues(const json::Value* v, const json::Value* ext, const ElementDef* def,
                 const TypeDef* type, Collection* out) const;
  Item MakeChild(const json::Value* value, const json::Value* ext, const ElementDef* def,
                 const TypeDef* type) const;

  const Environment& env_;
  const Model& model_;
  const Collection& focus_;
  std::string_view text_;  // the expression, for error positions
  uint64_t steps_ = 0;
  uint64_t next_check_ = 4096;
  std::chrono::steady_clock::time_point deadline_;
  bool has_deadline_ = false;
  std::optional<Temporal> now_;
  int32_t memo_slots_ = 0;
  std::vector<std::optional<Collection>> memo_;  // sized on first use
};

// Compiles a regular expression for matches()/replaceMatches(): ECMAScript syntax, '.' matching
// line ends too (FHIRPath single-line mode), size-bounded, run by the polynomial (BFS)
// executor. `search_only`: the regex only answers whether some substring matches (matches()),
// which allows dropping a trailing optional part (see SimplifyForSearch). InvalidArgument when
// rejected.
absl::StatusOr<std::shared_ptr<const std::regex>> CompileRegex(std::string_view pattern,
                                                               size_t max_pattern_bytes,
                                                               bool search_only);

}  // namespace fhirward::fhir::fhirpath::internal

#endif  // FHIRWARD_FHIR_FHIRPATH_INTERNAL_H_
