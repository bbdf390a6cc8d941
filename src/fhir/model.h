// The FHIR R4 (4.0.1) structure model: every type's elements with cardinality,
// types, choice types, bindings and constraints, and the expanded value sets of
// required bindings. Generated at build time by tools/gen-r4-model.mjs from the
// pinned official definitions and embedded in the binary; parsed once on first
// use. Immutable after construction: safe to share between threads.
//
// Paths follow StructureDefinition.snapshot: "Patient.contact.name". A choice
// element keeps its "[x]" in `path` ("Observation.value[x]") and its JSON
// prefix in `name` ("value"); the concrete JSON member is name + capitalised
// type ("valueQuantity"). Inherited elements (id, meta, extension, ...) are
// listed in every type's children, as in the snapshot.
#ifndef FHIRWARD_FHIR_MODEL_H_
#define FHIRWARD_FHIR_MODEL_H_

#include <cstdint>
#include <limits>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <vector>

namespace fhirward::fhir {

inline constexpr uint32_t kUnbounded = std::numeric_limits<uint32_t>::max();

enum class TypeKind { kPrimitive, kComplex, kResource };
enum class BindingStrength { kNone, kExample, kPreferred, kExtensible, kRequired };

struct Constraint {
  std::string key;         // "ele-1", "pat-1", "dom-2"
  bool error = true;       // severity: error (true) or warning (false)
  std::string human;       // the specification's message
  std::string expression;  // FHIRPath, evaluated with the element as focus
};

struct TypeDef;

struct ElementDef {
  std::string path;  // "Patient.contact.name", "Observation.value[x]"
  std::string name;  // JSON name; for a choice the prefix without "[x]": "value"
  uint32_t min = 0;
  uint32_t max = 1;        // kUnbounded for "*"
  bool is_choice = false;  // name + capitalised type code is the JSON member
  bool is_array() const { return max > 1; }
  // Type codes as FHIR names: "string", "Quantity", "Reference", "BackboneElement",
  // "Resource" (for contained / Bundle.entry.resource). For a primitive's `.value`
  // element the FHIRPath system type: "System.String", "System.Boolean", ...
  std::vector<std::string> types;
  // The TypeDef of each entry of `types` (null for System types).
  std::vector<const TypeDef*> type_defs;
  // For Reference / canonical: allowed target type names ("Patient", "Resource").
  std::vector<std::string> target_types;
  // Inline children (BackboneElement / Element defined in place, or the target of
  // a contentReference such as Questionnaire.item.item → Questionnaire.item).
  // Empty when the children come from the type (types[0]).
  std::vector<const ElementDef*> children;
  BindingStrength binding = BindingStrength::kNone;
  std::string value_set;                // canonical URL without "|version"
  std::vector<Constraint> constraints;  // element-level, as in the snapshot
  bool is_modifier = false;
  bool is_summary = false;
  // Fixed / pattern values (profiles only; empty in the base model): JSON text.
  std::string fixed_json;
  std::string pattern_json;
};

struct TypeDef {
  std::string name;  // "Patient", "HumanName", "string"
  TypeKind kind = TypeKind::kComplex;
  bool is_abstract = false;
  std::string base;  // "DomainResource"; empty for Element / Resource
  const TypeDef* base_def = nullptr;
  const ElementDef* root = nullptr;         // the element named by the type itself (constraints)
  std::vector<const ElementDef*> children;  // direct children in snapshot order
  // Primitives: the regular expression from the specification (ECMAScript syntax,
  // anchored), or empty where the specification gives none (boolean, xhtml).
  std::string regex;
};

struct ValueSetExpansion {
  std::string url;
  // (system, code) pairs of the expansion; sorted by code then system.
  std::vector<std::pair<std::string, std::string>> codes;
  // False when the value set could not be fully expanded at generation time
  // (it includes a whole external code system, a filter, or unknown content):
  // codes then cannot be checked and validators must not reject on it.
  bool complete = true;
  bool Contains(std::string_view system, std::string_view code) const;  // system may be empty
  bool ContainsCode(std::string_view code) const;
};

// The codes of a code system the definitions hold completely (FHIR, v2, v3).
struct CodeSystemCodes {
  std::string url;
  std::vector<std::string> codes;  // sorted
  bool Contains(std::string_view code) const;
};

// An R4 SearchParameter: its FHIRPath expression selects the values to index
// (the expression may name several resource types: "Patient.address |
// Person.address"; evaluated on a resource, only its own type's part matches).
struct SearchParamDef {
  std::string url;
  std::string code;        // "birthdate", "_id"
  std::string type;        // number|date|string|token|reference|composite|quantity|uri|special
  std::string expression;  // FHIRPath
  std::vector<std::string> bases;         // resource types (or Resource/DomainResource)
  std::vector<std::string> target_types;  // reference parameters
  std::vector<std::pair<std::string, std::string>> components;  // composite: (definition, expr)
};

class Model {
 public:
  // The R4 core model (lazy, thread-safe initialisation).
  static const Model& R4();

  const TypeDef* FindType(std::string_view name) const;
  const ElementDef* FindElement(std::string_view path) const;         // by snapshot path
  const ValueSetExpansion* FindValueSet(std::string_view url) const;  // url without version
  // The search parameters that apply to resource `type`, including those
  // defined on Resource and DomainResource (_id, _lastUpdated, _tag, ...).
  std::vector<const SearchParamDef*> SearchParamsOf(std::string_view type) const;
  // The search parameter `code` of resource `type`, or null.
  const SearchParamDef* FindSearchParam(std::string_view type, std::string_view code) const;
  // A complete, case-sensitive code system of the definitions, or null.
  const CodeSystemCodes* FindCodeSystem(std::string_view url) const;

  // The children of a value of `element` whose type is `type` (one of element->types):
  // inline children when present, else the children of `type`.
  std::span<const ElementDef* const> ChildrenOf(const ElementDef& element,
                                                std::string_view type) const;

  // Resolves a JSON member name among `children`: "birthDate" → the element,
  // "valueQuantity" → (Observation.value[x], "Quantity"). Returns nullopt for an
  // unknown name. `type` is the concrete type code of the member.
  struct ChildMatch {
    const ElementDef* element;
    std::string_view type;
    const TypeDef* type_def;  // null for System types
  };
  static std::optional<ChildMatch> ResolveChild(std::span<const ElementDef* const> children,
                                                std::string_view json_name);

  // True when `type` is `base` or derives from it ("Patient" is "DomainResource"
  // and "Resource"; "Age" is "Quantity"; "code" is "string").
  bool IsA(std::string_view type, std::string_view base) const;

  std::span<const TypeDef* const> types() const { return type_list_; }

  Model(const Model&) = delete;
  Model& operator=(const Model&) = delete;
  ~Model();

 private:
  Model();
  struct Storage;
  Storage* storage_;
  std::vector<const TypeDef*> type_list_;
};

// The capitalised form used in choice member names: "quantity" → "Quantity",
// "dateTime" → "DateTime".
std::string CapitaliseType(std::string_view type);

}  // namespace fhirward::fhir

#endif  // FHIRWARD_FHIR_MODEL_H_
