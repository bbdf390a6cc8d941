#include "fhir/validator.h"

#include <algorithm>
#include <cctype>
#include <string>
#include <unordered_map>

#include "absl/container/inlined_vector.h"
#include "common/str_cat.h"
#include "fhir/model.h"
#include "fhir/primitives.h"
#include "fhir/profiles.h"
#include "fhir/resources.h"
#include "fhir/validator_internal.h"
#include "fhir/xhtml.h"

namespace fhirward::fhir {

std::string_view SeverityName(IssueSeverity s) {
  switch (s) {
    case IssueSeverity::kFatal:
      return "fatal";
    case IssueSeverity::kError:
      return "error";
    case IssueSeverity::kWarning:
      return "warning";
    case IssueSeverity::kInformation:
      return "information";
  }
  return "error";
}

json::Value ValidationReport::ToOperationOutcome() const {
  json::Array list;
  for (const ValidationIssue& i : issues) {
    json::Value issue = json::Value::MakeObject();
    issue.Set("severity", json::Value::String(std::string(SeverityName(i.severity))));
    issue.Set("code", json::Value::String(i.code));
    json::Value details = json::Value::MakeObject();
    details.Set("text", json::Value::String(i.message));
    if (!i.rule.empty()) {
      json::Value coding = json::Value::MakeObject();
      coding.Set("system", json::Value::String("https://fhirward.dev/validation-rule"));
      coding.Set("code", json::Value::String(i.rule));
      details.Set("coding", json::Value::MakeArray({std::move(coding)}));
    }
    issue.Set("details", std::move(details));
    issue.Set("diagnostics", json::Value::String(i.message));
    if (!i.expression.empty()) {
      issue.Set("expression", json::Value::MakeArray({json::Value::String(i.expression)}));
    }
    list.push_back(std::move(issue));
  }
  if (truncated) {
    json::Value issue = json::Value::MakeObject();
    issue.Set("severity", json::Value::String("error"));
    issue.Set("code", json::Value::String("too-costly"));
    issue.Set("diagnostics", json::Value::String("too many findings; the rest were not listed"));
    list.push_back(std::move(issue));
  }
  if (list.empty()) {
    json::Value issue = json::Value::MakeObject();
    issue.Set("severity", json::Value::String("information"));
    issue.Set("code", json::Value::String("informational"));
    issue.Set("diagnostics", json::Value::String("No issues found"));
    list.push_back(std::move(issue));
  }
  json::Value oo = json::Value::MakeObject();
  oo.Set("resourceType", json::Value::String("OperationOutcome"));
  oo.Set("issue", json::Value::MakeArray(std::move(list)));
  return oo;
}

namespace {

// A short, safe rendering of an offending value for messages: never more than
// 40 characters, so messages cannot carry a payload back.
std::string Snippet(std::string_view s) {
  constexpr size_t kMax = 40;
  std::string out;
  for (char c : s.substr(0, kMax)) {
    out.push_back(static_cast<unsigned char>(c) < 0x20 ? '?' : c);
  }
  if (s.size() > kMax) out += "...";
  return out;
}

std::string_view JsonKindName(const json::Value& v) {
  switch (v.kind()) {
    case json::Value::Kind::kNull:
      return "null";
    case json::Value::Kind::kBool:
      return "a boolean";
    case json::Value::Kind::kNumber:
      return "a number";
    case json::Value::Kind::kString:
      return "a string";
    case json::Value::Kind::kArray:
      return "an array";
    case json::Value::Kind::kObject:
      return "an object";
  }
  return "?";
}

bool IsUpperAlpha(char c) { return c >= 'A' && c <= 'Z'; }

// RFC 2045 token characters.
bool IsMimeTokenChar(char c) {
  return c > 0x20 && c < 0x7f &&
         std::string_view("()<>@,;:\\\"/[]?=").find(c) == std::string_view::npos;
}

// "type/subtype", optionally followed by ";" parameters (BCP 13, RFC 2045 §5.1).
bool IsMimeType(std::string_view s) {
  size_t i = 0;
  auto token = [&]() {
    size_t start = i;
    while (i < s.size() && IsMimeTokenChar(s[i])) ++i;
    return i > start;
  };
  if (!token() || i >= s.size() || s[i++] != '/' || !token()) return false;
  // Parameters: their values are often written loosely (spaces); only the
  // separator is checked.
  while (i < s.size() && s[i] == ' ') ++i;
  return i == s.size() || s[i] == ';';
}

// The "_name" sibling of member `name`, found without building the key.
const json::Value* FindSibling(const json::Value& obj, std::string_view name) {
  for (const json::Member& m : obj.members()) {
    if (m.first.size() == name.size() + 1 && m.first[0] == '_' &&
        std::string_view(m.first).substr(1) == name) {
      return &m.second;
    }
  }
  return nullptr;
}

// "Patient.id", "Resource.id": the logical id of a resource, typed string in
// the snapshots but bound by the id rules ([A-Za-z0-9\-\.]{1,64}).
bool IsResourceIdElement(const ElementDef& def) {
  std::string_view p = def.path;
  if (!p.ends_with(".id")) return false;
  std::string_view owner = p.substr(0, p.size() - 3);
  if (owner.find('.') != std::string_view::npos) return false;
  const TypeDef* t = Model::R4().FindType(owner);
  return t != nullptr && t->kind == TypeKind::kResource;
}

}  // namespace

struct Validator::Compiled {
  Invariants invariants;
};

class ValidationRun : public IssueSink {
 public:
  ValidationRun(const ValidatorOptions& options, const Invariants* invariants,
                const json::Value& root)
      : options_(options), invariants_(invariants), model_(Model::R4()), root_(root) {}

  ValidationReport Finish() { return std::move(report_); }

  void Report(IssueSeverity severity, std::string_view code, std::string expression,
              std::string message, std::string_view rule) override {
    if (severity == IssueSeverity::kError || severity == IssueSeverity::kFatal) {
      ++report_.errors;
    } else if (severity == IssueSeverity::kWarning) {
      ++report_.warnings;
    }
    if (report_.issues.size() >= options_.max_issues) {
      report_.truncated = true;
      return;
    }
    report_.issues.push_back(ValidationIssue{severity, std::string(code), std::move(expression),
                                             std::move(message), std::string(rule)});
  }
  void Error(std::string_view code, const Loc& loc, std::string message, std::string_view rule) {
    Report(IssueSeverity::kError, code, loc.str(), std::move(message), rule);
  }

  // `resource` is a resource at `at` (null for the resource validated);
  // `container` is the resource holding it in `contained` (or null).
  void ValidateResource(const json::Value& resource, const Loc* at, const json::Value* container) {
    const Loc unnamed;
    const Loc& expr = at != nullptr ? *at : unnamed;
    if (!resource.is_object()) {
      Error("structure", expr,
            Cat("a resource must be a JSON object, not ", JsonKindName(resource)), "json-type");
      return;
    }
    const json::Value* rt = resource.Find("resourceType");
    if (rt == nullptr || !rt->is_string()) {
      Error("structure", expr, "resourceType is missing or not a string", "resource-type");
      return;
    }
    const std::string& type_name = rt->as_string();
    const TypeDef* type = model_.FindType(type_name);
    if (type == nullptr || type->kind != TypeKind::kResource || type->is_abstract) {
      Error("structure", expr,
            Cat("'", Snippet(type_name), "' is not a concrete FHIR R4 resource type"),
            "resource-type");
      return;
    }
    const Loc root{nullptr, type_name};
    const Loc& here = at != nullptr ? *at : root;
    ResourceFrame frame{&resource, container != nullptr ? container : &resource, type_name,
                        &visited_};
    ResourceFrame* saved = frame_;
    frame_ = &frame;
    ValidateObject(resource, type->root, type_name, type, type->children, here,
                   /*is_resource=*/true);
    if (type_name == "Bundle") CheckBundleEntries(resource, here);
    if (const json::Value* meta = resource.Find("meta"); meta != nullptr && meta->is_object()) {
      CheckProfiles(resource, *meta, here);
    }
    frame_ = saved;
  }

  // meta.profile: each loaded profile is checked; an unknown one is a warning.
  void CheckProfiles(const json::Value& resource, const json::Value& meta, const Loc& loc) {
    const json::Value* profiles = meta.Find("profile");
    if (profiles == nullptr || !profiles->is_array()) return;
    for (const json::Value& p : profiles->items()) {
      if (!p.is_string()) continue;
      if (options_.profiles != nullptr &&
          options_.profiles->Validate(p.as_string(), resource, loc.str(), *this)) {
        continue;
      }
      const Loc meta_loc{&loc, "meta"};
      Report(IssueSeverity::kWarning, "not-supported", Loc{&meta_loc, "profile"}.str(),
             Cat("profile '", Snippet(p.as_string()),
                 "' is not loaded; validated against the base specification only"),
             "profile-unknown");
    }
  }

  // Validates the members of a JSON object holding a value of `type`, whose
  // element definitions are `children`.
  void ValidateObject(const json::Value& obj, const ElementDef* element, std::string_view type,
                      const TypeDef* type_def, std::span<const ElementDef* const> children,
                      const Loc& expr, bool is_resource, bool has_value = false) {
    const json::Object& members = obj.members();
    if (members.empty() && !is_resource) {
      Error("structure", expr,
            "an element must have a value or children: empty objects are not allowed", "ele-1");
      return;
    }
    // ele-1: hasValue() or (children().count() > id.count())
    if (!is_resource && !has_value && members.size() == 1 && members[0].first == "id") {
      Error("structure", expr, "an element must have a value or children other than id", "ele-1");
    }
    // Occurrences per child definition; presence by JSON name (choices).
    absl::InlinedVector<uint32_t, 64> counts(children.size(), 0);
    absl::InlinedVector<std::string_view, 64> choice_names(children.size());
    bool has_siblings = false;
    for (const json::Member& m : members) has_siblings |= !m.first.empty() && m.first[0] == '_';
    visited_ += members.size();
    for (const json::Member& m : members) {
      const std::string& name = m.first;
      if (is_resource && name == "resourceType") continue;
      bool extension_sibling = !name.empty() && name[0] == '_';
      std::string_view base = extension_sibling ? std::string_view(name).substr(1) : name;
      auto match = Model::ResolveChild(children, base);
      const Loc child_expr{&expr, base};
      // A primitive's `value` is the JSON value itself, never a member of "_x".
      if (match && match->type_def == nullptr && !match->element->types.empty() &&
          match->element->types[0].starts_with("System.")) {
        match.reset();
      }
      if (!match || base.empty()) {
        Error("structure", Loc{&expr, name}, Cat("unknown element '", Snippet(name), "' in ", type),
              "unknown-element");
        continue;
      }
      size_t index = static_cast<size_t>(
          std::find(children.begin(), children.end(), match->element) - children.begin());
      const ElementDef& def = *match->element;
      const TypeDef* child_type = match->type_def;
      bool primitive = child_type != nullptr && child_type->kind == TypeKind::kPrimitive;
      if (def.is_choice) {
        if (!choice_names[index].empty() && choice_names[index] != base) {
          Error("structure", child_expr,
                Cat("only one of the ", def.name, "[x] choices may be present (found ",
                    choice_names[index], " and ", base, ")"),
                "choice");
          continue;
        }
        choice_names[index] = base;
      }
      if (extension_sibling) {
        if (!primitive) {
          Error(
              "structure", Loc{&expr, name},
              Cat("'", Snippet(name), "' is not allowed: '", base, "' is not a primitive element"),
              "unknown-element");
          continue;
        }
        const json::Value* value = obj.Find(base);
        uint32_t n = ValidatePrimitiveExtensions(m.second, value, def, child_type, child_expr);
        if (value == nullptr) counts[index] = std::max(counts[index], n);
        continue;
      }
      const json::Value* ext = has_siblings ? FindSibling(obj, base) : nullptr;
      counts[index] = std::max(
          counts[index], ValidateMember(m.second, ext, def, match->type, child_type, child_expr));
    }
    for (size_t i = 0; i < children.size(); ++i) {
      const ElementDef& def = *children[i];
      // A primitive's value is the JSON value beside "_x", checked by the caller.
      if (!def.type_defs.empty() && def.type_defs[0] == nullptr) continue;
      if (counts[i] < def.min) {
        std::string what = def.is_choice ? Cat(def.name, "[x]") : def.name;
        Error("required", Loc{&expr, def.name},
              def.min == 1
                  ? Cat("missing required element '", what, "' in ", type)
                  : Cat("'", what, "' needs at least ", def.min, " items, found ", counts[i]),
              "cardinality");
      }
      if (def.max != kUnbounded && counts[i] > def.max) {
        Error("structure", Loc{&expr, def.name},
              Cat("'", def.name, "' allows at most ", def.max, " items, found ", counts[i]),
              "cardinality");
      }
    }
    if (invariants_ != nullptr && frame_ != nullptr) {
      invariants_->Check(obj, element, type_def, expr, *frame_, *this);
    }
  }

  // A member that is not a `_` sibling. Returns the number of occurrences.
  uint32_t ValidateMember(const json::Value& value, const json::Value* ext, const ElementDef& def,
                          std::string_view type, const TypeDef* type_def, const Loc& expr) {
    bool primitive = type_def != nullptr && type_def->kind == TypeKind::kPrimitive;
    if (def.is_array()) {
      if (!value.is_array()) {
        Error("structure", expr,
              Cat("'", def.name, "' must be an array, not ", JsonKindName(value)), "json-type");
        return 1;
      }
      const json::Array& items = value.items();
      if (items.empty()) {
        Error("structure", expr, "arrays must not be empty", "ele-1");
        return 0;
      }
      const json::Array* ext_items = ext != nullptr && ext->is_array() ? &ext->items() : nullptr;
      visited_ += items.size();
      uint32_t n = 0;
      for (size_t i = 0; i < items.size(); ++i) {
        const Loc item_expr{expr.parent, expr.name, i};
        if (items[i].is_null()) {
          bool covered = primitive && ext_items != nullptr && i < ext_items->size() &&
                         (*ext_items)[i].is_object();
          if (!covered) {
            Error("structure", item_expr,
                  "null is only allowed in a primitive array whose '_' sibling has content at "
                  "the same index",
                  "json-null");
          } else {
            ++n;
          }
          continue;
        }
        ++n;
        ValidateValue(items[i], def, type, type_def, item_expr);
      }
      return n;
    }
    if (value.is_array()) {
      Error("structure", expr, Cat("'", def.name, "' must be a single value, not an array"),
            "json-type");
      return static_cast<uint32_t>(value.items().size());
    }
    if (value.is_null()) {
      Error("structure", expr, "null is not a valid value", "json-null");
      return 0;
    }
    ValidateValue(value, def, type, type_def, expr);
    return 1;
  }

  // The `_name` sibling of primitive `name` (`value` may be null when only the
  // sibling is present). Returns the occurrences it contributes.
  uint32_t ValidatePrimitiveExtensions(const json::Value& ext, const json::Value* value,
                                       const ElementDef& def, const TypeDef* type_def,
                                       const Loc& expr) {
    std::span<const ElementDef* const> kids = type_def->children;
    std::string_view type = type_def->name;
    // A primitive type whose definition allows no extensions (xhtml: the
    // narrative div) has no "_x" sibling at all.
    auto ext_def = Model::ResolveChild(kids, "extension");
    if (ext_def && ext_def->element->max == 0) {
      const std::string name = Cat("_", expr.name);
      Error("structure", Loc{expr.parent, name},
            Cat("a ", type, " value cannot have an id or extensions (no '", name, "')"),
            "unknown-element");
      return 0;
    }
    if (def.is_array()) {
      if (!ext.is_array()) {
        Error("structure", expr, "the '_' sibling of an array must be an array", "json-type");
        return 0;
      }
      if (value != nullptr && value->is_array() && value->items().size() != ext.items().size()) {
        Error("structure", expr, "the '_' sibling array must have as many items as the value array",
              "json-type");
      }
      uint32_t n = 0;
      for (size_t i = 0; i < ext.items().size(); ++i) {
        const json::Value& item = ext.items()[i];
        const Loc item_expr{expr.parent, expr.name, i};
        if (item.is_null()) {
          bool has_value = value != nullptr && value->is_array() && i < value->items().size() &&
                           !value->items()[i].is_null();
          if (!has_value) {
            Error("structure", item_expr, "an item must have a value or an extension", "json-null");
          }
          continue;
        }
        if (!item.is_object()) {
          Error("structure", item_expr, "the '_' sibling items must be objects", "json-type");
          continue;
        }
        ++n;
        const bool has_value = value != nullptr && value->is_array() && i < value->items().size() &&
                               !value->items()[i].is_null();
        ValidateObject(item, nullptr, type, type_def, kids, item_expr, false, has_value);
      }
      return n;
    }
    if (!ext.is_object()) {
      Error("structure", expr, "the '_' sibling of a primitive must be an object", "json-type");
      return 0;
    }
    ValidateObject(ext, nullptr, type, type_def, kids, expr, false,
                   value != nullptr && !value->is_null());
    return 1;
  }

  void ValidateValue(const json::Value& value, const ElementDef& def, std::string_view type,
                     const TypeDef* type_def, const Loc& expr) {
    if (type == "Resource" || (type_def != nullptr && type_def->kind == TypeKind::kResource)) {
      bool in_contained = std::string_view(def.path).ends_with(".contained");
      ValidateResource(value, &expr, in_contained ? frame_->resource : nullptr);
      return;
    }
    if (type_def == nullptr) {
      // System types only occur on primitives' `.value`, which JSON never names.
      Error("structure", expr, Cat("no definition for type '", type, "'"), "model");
      return;
    }
    if (type_def->kind == TypeKind::kPrimitive) {
      std::string_view check_type = type;
      if (IsResourceIdElement(def)) check_type = "id";  // snapshot says string, rule says id
      if (auto problem = CheckPrimitive(check_type, value)) {
        Error("value", expr, *problem, "primitive");
        return;
      }
      if (type == "xhtml") {
        std::vector<XhtmlIssue> issues = CheckNarrativeXhtml(value.as_string());
        for (const XhtmlIssue& x : issues) Error("security", expr, x.message, x.rule);
        // txt-2 as the HL7 validator applies it to R4: its R4 expression is
        // htmlChecks(), which checks markup, not content; an empty narrative is
        // reported but does not refuse the resource (several official examples
        // have one).
        if (issues.empty() && !NarrativeHasContent(value.as_string())) {
          Report(IssueSeverity::kWarning, "invariant", expr.str(),
                 "txt-2: The narrative SHALL have some non-whitespace content", "txt-2");
        }
        return;
      }
      if (value.is_string() && options_.check_bindings &&
          def.binding == BindingStrength::kRequired) {
        CheckCode(def, "", value.as_string(), expr);
      }
      return;
    }
    if (!value.is_object()) {
      Error("structure", expr,
            Cat("'", def.name, "' must be an object (", type, "), not ", JsonKindName(value)),
            "json-type");
      return;
    }
    ValidateObject(value, &def, type, type_def,
                   def.children.empty() ? std::span<const ElementDef* const>(type_def->children)
                                        : std::span<const ElementDef* const>(def.children),
                   expr, false);
    if (type == "Extension") {
      CheckExtension(value, expr);
    } else if (type == "Reference") {
      CheckReference(value, def, expr);
    }
    if (type == "Coding" && options_.check_bindings) CheckCodeSystem(value, expr);
    if (options_.check_bindings && def.binding == BindingStrength::kRequired) {
      if (type == "Coding") {
        CheckCoding(def, value, expr);
      } else if (type == "CodeableConcept") {
        CheckCodeableConcept(def, value, expr);
      }
    }
  }

  void CheckExtension(const json::Value& ext, const Loc& expr) {
    bool has_value = false;
    for (const json::Member& m : ext.members()) {
      std::string_view n = m.first;
      if (n.starts_with("_")) n.remove_prefix(1);  // a primitive value with only extensions
      if (n.size() > 5 && n.starts_with("value") && IsUpperAlpha(n[5])) has_value = true;
    }
    bool has_nested = ext.Find("extension") != nullptr;
    if (has_value == has_nested) {
      Error("invariant", expr,
            has_value ? "an extension must have either a value or nested extensions, not both"
                      : "an extension must have a value or nested extensions",
            "ext-1");
    }
    if (const json::Value* url = ext.Find("url"); url != nullptr && url->is_string()) {
      const std::string& u = url->as_string();
      // Relative urls are allowed: they name sub-extensions of a complex extension.
      if (u.find_first_of(" \t\r\n") != std::string::npos) {
        Error("value", Loc{&expr, "url"}, "an extension url must not contain whitespace",
              "ext-url");
      }
    }
  }

  // The resource type a reference points at, when it can be told: "Type/id"
  // (relative or at the end of a RESTful URL), a contained resource ("#id"), or
  // a Bundle entry by fullUrl. Empty when unknown. Reports malformed references.
  std::string_view ReferencedType(std::string_view s, const Loc& where, bool* bad) {
    *bad = false;
    if (s.starts_with("#")) {
      const json::Value* container = frame_->root;
      if (s.size() == 1) return container->GetString("resourceType").value_or("");
      const json::Value* contained = container->Find("contained");
      if (contained == nullptr || !contained->is_array()) return {};  // ref-1 reports it
      for (const json::Value& c : contained->items()) {
        if (c.is_object() && c.GetString("id") == s.substr(1)) {
          return c.GetString("resourceType").value_or("");
        }
      }
      return {};
    }
    // scheme ":" (RFC 3986): an absolute URI.
    size_t colon = 0;
    if (!s.empty() && std::isalpha(static_cast<unsigned char>(s[0]))) {
      colon = 1;
      while (colon < s.size() && (std::isalnum(static_cast<unsigned char>(s[colon])) ||
                                  s[colon] == '+' || s[colon] == '-' || s[colon] == '.')) {
        ++colon;
      }
      if (colon >= s.size() || s[colon] != ':') colon = 0;
    }
    const bool absolute = colon > 0;
    if (absolute && s.find_first_of(" \t\r\n") == std::string_view::npos) {
      // A Bundle entry named by this fullUrl.
      if (std::string_view t = BundleEntryType(s); !t.empty()) return t;
    }
    std::string_view path = s;
    size_t hist = path.find("/_history/");
    if (hist != std::string_view::npos) {
      if (!IsValidId(path.substr(hist + 10))) {
        Error("value", where, Cat("invalid version in reference '", Snippet(s), "'"),
              "reference-format");
        *bad = true;
        return {};
      }
      path = path.substr(0, hist);
    }
    std::string_view type;
    std::string_view id;
    size_t slash = path.rfind('/');
    if (slash != std::string_view::npos) {
      id = path.substr(slash + 1);
      std::string_view head = path.substr(0, slash);
      size_t prev = head.rfind('/');
      type = prev == std::string_view::npos ? head : head.substr(prev + 1);
      if (!absolute && prev != std::string_view::npos) type = {};  // "a/b/c" relative
    }
    const bool rest_like = !type.empty() && IsResourceType(type) && IsValidId(id);
    if (absolute) {
      if (s.find_first_of(" \t\r\n") != std::string_view::npos) {
        Error("value", where, Cat("invalid reference '", Snippet(s), "': whitespace in a URI"),
              "reference-format");
        *bad = true;
        return {};
      }
      return rest_like && (s.starts_with("http://") || s.starts_with("https://"))
                 ? type
                 : std::string_view();
    }
    if (rest_like) return type;
    // A conditional reference ("Patient?identifier=...") is resolved by the
    // server when a transaction is processed; nowhere else.
    size_t q = s.find('?');
    if (q != std::string_view::npos && IsResourceType(s.substr(0, q)) && InTransaction()) {
      return s.substr(0, q);
    }
    Error("value", where,
          Cat("invalid reference '", Snippet(s),
              "': expected Type/id, an absolute URI, #id or a urn:uuid:"),
          "reference-format");
    *bad = true;
    return {};
  }

  bool InTransaction() const {
    auto rt = root_.GetString("resourceType");
    auto bt = root_.GetString("type");
    return rt == "Bundle" && (bt == "transaction" || bt == "batch");
  }

  // The resourceType of the entry of the validated Bundle whose fullUrl is
  // `url` (an index built on first use: references are resolved in linear time).
  std::string_view BundleEntryType(std::string_view url) {
    if (!entry_index_built_) {
      entry_index_built_ = true;
      const json::Value* entries =
          root_.GetString("resourceType") == "Bundle" ? root_.Find("entry") : nullptr;
      if (entries != nullptr && entries->is_array()) {
        for (const json::Value& e : entries->items()) {
          if (!e.is_object()) continue;
          auto full = e.GetString("fullUrl");
          const json::Value* r = e.Find("resource");
          if (!full || r == nullptr || !r->is_object()) continue;
          entry_types_.emplace(*full, r->GetString("resourceType").value_or(""));
        }
      }
    }
    auto it = entry_types_.find(url);
    return it == entry_types_.end() ? std::string_view() : it->second;
  }

  void CheckReference(const json::Value& ref, const ElementDef& def, const Loc& expr) {
    const json::Value* r = ref.Find("reference");
    if (r == nullptr || !r->is_string()) return;
    const Loc where{&expr, "reference"};
    bool bad = false;
    std::string_view type = ReferencedType(r->as_string(), where, &bad);
    if (bad || type.empty()) return;
    if (auto declared = ref.GetString("type"); declared && *declared != type) {
      Error("structure", Loc{&expr, "type"},
            Cat("Reference.type is ", Snippet(*declared), " but the reference points to a ", type),
            "reference-target");
    }
    if (def.target_types.empty()) return;
    for (const std::string& t : def.target_types) {
      if (t == type || t == "Resource") return;
    }
    std::string allowed;
    for (const std::string& t : def.target_types) allowed += Cat(allowed.empty() ? "" : ", ", t);
    Error("structure", where,
          Cat("a reference to ", type, " is not allowed here (allowed: ", allowed, ")"),
          "reference-target");
  }

  // Bundle.entry.fullUrl "SHALL NOT disagree with the id in the resource": a
  // RESTful fullUrl ends with the entry's Type/id.
  void CheckBundleEntries(const json::Value& bundle, const Loc& here) {
    const json::Value* entries = bundle.Find("entry");
    if (entries == nullptr || !entries->is_array()) return;
    const Loc entry_loc{&here, "entry"};
    for (size_t i = 0; i < entries->items().size(); ++i) {
      const json::Value& e = entries->items()[i];
      if (!e.is_object()) continue;
      auto full = e.GetString("fullUrl");
      const json::Value* r = e.Find("resource");
      if (!full || r == nullptr || !r->is_object()) continue;
      auto id = r->GetString("id");
      auto rt = r->GetString("resourceType");
      if (!id || !rt || !(full->starts_with("http://") || full->starts_with("https://"))) continue;
      std::string_view path = *full;
      if (size_t h = path.find("/_history/"); h != std::string_view::npos) path = path.substr(0, h);
      size_t slash = path.rfind('/');
      if (slash == std::string_view::npos) continue;
      std::string_view tail_id = path.substr(slash + 1);
      std::string_view head = path.substr(0, slash);
      std::string_view tail_type = head.substr(head.rfind('/') + 1);
      if (!IsResourceType(tail_type)) continue;  // not RESTful-looking
      if (tail_type != *rt || tail_id != *id) {
        const Loc item{entry_loc.parent, "entry", i};
        Error("invariant", Loc{&item, "fullUrl"},
              Cat("the fullUrl names ", tail_type, "/", Snippet(tail_id), " but the resource is ",
                  *rt, "/", Snippet(*id)),
              "bundle-fullurl");
      }
    }
  }

  const ValueSetExpansion* RequiredValueSet(const ElementDef& def) {
    const ValueSetExpansion* vs = model_.FindValueSet(def.value_set);
    return vs != nullptr && vs->complete ? vs : nullptr;
  }

  void CheckCode(const ElementDef& def, std::string_view system, std::string_view code,
                 const Loc& expr) {
    if (def.value_set == "http://hl7.org/fhir/ValueSet/mimetypes") {
      // BCP 13 cannot be enumerated; an attachment's type/subtype can be checked
      // (other mimetypes-bound elements hold looser values in the official
      // examples, such as TestScript's "json").
      if (def.path == "Attachment.contentType" && !IsMimeType(code)) {
        Error("code-invalid", expr,
              Cat("'", Snippet(code), "' is not a MIME type (type/subtype[;parameter=value])"),
              "binding");
      }
      return;
    }
    const ValueSetExpansion* vs = RequiredValueSet(def);
    if (vs == nullptr || vs->Contains(system, code)) return;
    Error("code-invalid", expr,
          Cat("the code '", Snippet(code), "' is not in the required value set ", def.value_set),
          "binding");
  }

  // A Coding naming a code system the definitions hold completely must use one
  // of its codes, whatever the binding.
  void CheckCodeSystem(const json::Value& coding, const Loc& expr) {
    auto system = coding.GetString("system");
    auto code = coding.GetString("code");
    if (!system || !code) return;
    // Only HL7's own systems are held; skip the lookup for LOINC, SNOMED CT, ...
    if (!system->starts_with("http://terminology.hl7.org/") &&
        !system->starts_with("http://hl7.org/fhir/")) {
      return;
    }
    const CodeSystemCodes* cs = model_.FindCodeSystem(*system);
    if (cs == nullptr || cs->Contains(*code)) return;
    Error("code-invalid", Loc{&expr, "code"},
          Cat("the code '", Snippet(*code), "' is not defined in the code system ", *system),
          "code-unknown");
  }

  // Value set members are system + code: a Coding without a system is in none.
  void CheckCoding(const ElementDef& def, const json::Value& coding, const Loc& expr) {
    auto code = coding.GetString("code");
    if (!code) return;
    const ValueSetExpansion* vs = RequiredValueSet(def);
    if (vs == nullptr) return;
    auto system = coding.GetString("system");
    if (system && !system->empty() && vs->Contains(*system, *code)) return;
    Error("code-invalid", expr,
          system ? Cat("the code '", Snippet(*code), "' of ", Snippet(*system),
                       " is not in the required value set ", def.value_set)
                 : Cat("the coding has no system, so it cannot be in the required value set ",
                       def.value_set),
          "binding");
  }

  void CheckCodeableConcept(const ElementDef& def, const json::Value& cc, const Loc& expr) {
    const ValueSetExpansion* vs = RequiredValueSet(def);
    if (vs == nullptr) return;
    const json::Value* codings = cc.Find("coding");
    bool any_code = false;
    if (codings != nullptr && codings->is_array()) {
      for (const json::Value& c : codings->items()) {
        if (!c.is_object()) continue;
        auto code = c.GetString("code");
        if (!code) continue;
        any_code = true;
        auto system = c.GetString("system");
        if (system && !system->empty() && vs->Contains(*system, *code)) return;
      }
    }
    Error("code-invalid", expr,
          any_code ? Cat("none of the codings is in the required value set ", def.value_set)
                   : Cat("a code from the required value set ", def.value_set, " is needed"),
          "binding");
  }

 private:
  const ValidatorOptions& options_;
  const Invariants* invariants_;
  const Model& model_;
  const json::Value& root_;
  ValidationReport report_;
  ResourceFrame* frame_ = nullptr;
  uint64_t visited_ = 0;  // JSON members and array items seen (invariant budgets)
  bool entry_index_built_ = false;
  std::unordered_map<std::string_view, std::string_view> entry_types_;  // Bundle fullUrl → type
};

Validator::Validator(ValidatorOptions options) : options_(std::move(options)) {
  auto compiled = std::make_unique<Compiled>();
  compiled_ = std::move(compiled);
}

Validator::~Validator() = default;

ValidationReport Validator::Validate(const json::Value& resource) const {
  ValidationRun run(options_, options_.check_invariants ? &compiled_->invariants : nullptr,
                    resource);
  run.ValidateResource(resource, nullptr, nullptr);
  return run.Finish();
}

}  // namespace fhirward::fhir
