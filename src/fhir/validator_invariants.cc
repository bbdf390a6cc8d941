// The specification's invariants (ElementDefinition.constraint, FHIRPath),
// compiled once from the R4 model and evaluated per element by the validator.
#include <chrono>
#include <string>
#include <unordered_map>
#include <vector>

#include "common/str_cat.h"
#include "fhir/fhirpath.h"
#include "fhir/validator_internal.h"

namespace fhirward::fhir {
namespace {

// Checked structurally by the validator (faster, and with a precise location):
// ele-1 (values or children), ext-1 (value xor extensions), and txt-1/txt-2
// (htmlChecks(): the narrative XHTML rules of xhtml.h).
bool CheckedStructurally(std::string_view key) {
  return key == "ele-1" || key == "ext-1" || key == "txt-1" || key == "txt-2";
}

// Beyond its step budget (StepBudget, validator_internal.h) or this much
// time, an invariant is refused as too costly rather than slowing the server.
constexpr std::chrono::milliseconds kMaxTimePerConstraint{2000};

}  // namespace

struct Invariants::Impl {
  struct Compiled {
    absl::StatusOr<fhirpath::Expression> expression;
  };
  // By expression text: most constraints are shared by many elements.
  std::unordered_map<std::string, Compiled> by_text;
  std::unordered_map<const Constraint*, const Compiled*> by_constraint;
  size_t compiled = 0;

  void Add(const Constraint& c) {
    if (CheckedStructurally(c.key)) return;
    auto it = by_text.find(c.expression);
    if (it == by_text.end()) {
      it = by_text.emplace(c.expression, Compiled{fhirpath::Expression::Parse(c.expression)}).first;
      if (it->second.expression.ok()) ++compiled;
    }
    by_constraint.emplace(&c, &it->second);
  }
};

Invariants::Invariants() : impl_(std::make_unique<Impl>()) {
  for (const TypeDef* type : Model::R4().types()) {
    std::vector<const ElementDef*> stack;
    if (type->root != nullptr) {
      for (const Constraint& c : type->root->constraints) impl_->Add(c);
    }
    stack.assign(type->children.begin(), type->children.end());
    while (!stack.empty()) {
      const ElementDef* el = stack.back();
      stack.pop_back();
      for (const Constraint& c : el->constraints) impl_->Add(c);
      // Inline children only: a contentReference shares its target's children,
      // which are visited under the target.
      for (const ElementDef* child : el->children) {
        if (child->path.size() > el->path.size() && child->path.starts_with(el->path) &&
            child->path[el->path.size()] == '.') {
          stack.push_back(child);
        }
      }
    }
  }
}

Invariants::~Invariants() = default;

size_t Invariants::compiled_count() const { return impl_->compiled; }

void Invariants::Check(const json::Value& obj, const ElementDef* element, const TypeDef* type_def,
                       const Loc& loc, const ResourceFrame& frame, IssueSink& sink) const {
  const bool is_resource = type_def != nullptr && type_def->kind == TypeKind::kResource;
  // The element's own constraints, then the type's (Period's per-1 applies to
  // every Period wherever it appears). A resource root is its type's root.
  // dom-6 (narrative) is best practice for a resource on its own; a contained
  // resource is described by its container's narrative.
  const bool contained = is_resource && frame.resource != frame.root;
  const Constraint* applicable[64];
  size_t n = 0;
  auto collect = [&](const ElementDef* def) {
    if (def == nullptr) return;
    for (const Constraint& c : def->constraints) {
      if (CheckedStructurally(c.key)) continue;
      if (contained && c.key == "dom-6") continue;
      bool seen = false;
      for (size_t i = 0; i < n; ++i) seen = seen || applicable[i]->key == c.key;
      if (!seen && n < std::size(applicable)) applicable[n++] = &c;
    }
  };
  collect(element);
  if (type_def != nullptr && type_def->root != element && type_def->name != "BackboneElement" &&
      type_def->name != "Element") {
    collect(type_def->root);
  }
  if (n == 0) return;

  fhirpath::Environment env;
  env.resource = frame.resource;
  env.root_resource = frame.root;
  env.limits.max_steps = StepBudget(frame.visited != nullptr ? *frame.visited : 0);
  env.limits.max_time = kMaxTimePerConstraint;
  fhirpath::Item focus =
      is_resource
          ? fhirpath::Item::Resource(obj)
          : fhirpath::Item::MakeNode(fhirpath::Item::Node{&obj, nullptr, element, type_def});
  for (size_t i = 0; i < n; ++i) {
    const Constraint& c = *applicable[i];
    auto it = impl_->by_constraint.find(&c);
    if (it == impl_->by_constraint.end()) continue;
    const auto& compiled = it->second->expression;
    if (!compiled.ok()) {
      sink.Report(IssueSeverity::kWarning, "not-supported", loc.str(),
                  Cat("invariant ", c.key, " was not checked: its expression is not ",
                      "supported by this validator"),
                  c.key);
      continue;
    }
    auto result = fhirpath::EvaluateBoolean(*compiled, focus, env);
    if (!result.ok()) {
      if (result.status().code() == absl::StatusCode::kResourceExhausted) {
        sink.Report(IssueSeverity::kError, "too-costly", loc.str(),
                    Cat("invariant ", c.key, " is too costly to evaluate on this content"), c.key);
      } else {
        sink.Report(IssueSeverity::kWarning, "processing", loc.str(),
                    Cat("invariant ", c.key, " could not be evaluated: ",
                        std::string(result.status().message()).substr(0, 120)),
                    c.key);
      }
      continue;
    }
    // An empty result passes: most R4 invariants are empty when the elements
    // they talk about are absent (treating empty as failure refuses about a
    // hundred official examples).
    if (result->has_value() && !**result) {
      sink.Report(c.error ? IssueSeverity::kError : IssueSeverity::kWarning, "invariant", loc.str(),
                  Cat(c.key, ": ", c.human), c.key);
    }
  }
}

}  // namespace fhirward::fhir
