// FHIRPath evaluation over FHIR JSON: navigation typed by the R4 Model, operators, variables
// and the budgets of Limits. Functions live in fhirpath_functions.cc.
#include <algorithm>
#include <cctype>
#include <chrono>
#include <string>
#include <string_view>
#include <unordered_map>

#include "absl/status/status.h"
#include "common/str_cat.h"
#include "fhir/fhirpath.h"
#include "fhir/fhirpath_internal.h"

namespace fhirward::fhir::fhirpath {
namespace internal {
namespace {

const ElementDef* FindDef(std::span<const ElementDef* const> defs, std::string_view name) {
  for (const ElementDef* d : defs) {
    if (d->name == name) return d;
  }
  return nullptr;
}

// The index of the choice element's type whose capitalised name is `suffix`, or -1.
int ChoiceType(const ElementDef& def, std::string_view suffix) {
  for (size_t i = 0; i < def.types.size(); ++i) {
    const std::string& t = def.types[i];
    if (t.size() == suffix.size() && !t.empty() &&
        std::toupper(static_cast<unsigned char>(t[0])) == suffix[0] &&
        std::string_view(t).substr(1) == suffix.substr(1)) {
      return static_cast<int>(i);
    }
  }
  return -1;
}

// The TypeDef of a single-typed element (nullptr for System types and choices).
const TypeDef* ElementType(const ElementDef* def) {
  return def != nullptr && def->type_defs.size() == 1 ? def->type_defs[0] : nullptr;
}

bool IsUpper(char c) { return c >= 'A' && c <= 'Z'; }

bool HasMember(const json::Object& obj, std::string_view key) {
  for (const auto& m : obj) {
    if (m.first == key) return true;
  }
  return false;
}

}  // namespace

Evaluator::Evaluator(const Environment& env, const Collection& focus)
    : env_(env), model_(Model::R4()), focus_(focus) {
  next_check_ = std::min<uint64_t>(4096, env.limits.max_steps);
  if (env.limits.max_time.count() > 0) {
    has_deadline_ = true;
    deadline_ = std::chrono::steady_clock::now() + env.limits.max_time;
  }
}

absl::Status Evaluator::CheckBudget() {
  if (steps_ > env_.limits.max_steps) {
    return absl::ResourceExhaustedError("fhirpath: evaluation step budget exhausted");
  }
  if (has_deadline_ && std::chrono::steady_clock::now() > deadline_) {
    return absl::ResourceExhaustedError("fhirpath: evaluation time budget exhausted");
  }
  next_check_ = std::min<uint64_t>(steps_ + 4096, env_.limits.max_steps);
  return absl::OkStatus();
}

absl::Status Evaluator::CheckSize(size_t n) const {
  if (n > env_.limits.max_collection_size) {
    return absl::ResourceExhaustedError("fhirpath: collection size limit exceeded");
  }
  return absl::OkStatus();
}

absl::Status Evaluator::Dedupe(Collection* items) {
  uint64_t comparisons = 0;
  if (!Distinct(items, remaining_steps(), &comparisons)) {
    return absl::ResourceExhaustedError("fhirpath: evaluation step budget exhausted");
  }
  return Step(comparisons + items->size());
}

absl::Status Evaluator::Error(const AstNode& node, std::string_view message) const {
  if (text_.empty()) return absl::InvalidArgumentError(Cat("fhirpath: ", message));
  return absl::InvalidArgumentError(
      Cat("fhirpath: ", message, " (at ", internal::Position(text_, node.pos), ")"));
}

absl::StatusOr<const Item*> Evaluator::Singleton(Input c, std::string_view what) const {
  if (c.empty()) return nullptr;
  if (c.size() > 1) {
    return absl::InvalidArgumentError(
        Cat("fhirpath: ", what, " requires a single item, got ", c.size()));
  }
  return &c[0];
}

absl::StatusOr<std::optional<bool>> Evaluator::ToBoolean(Input c, std::string_view what) const {
  if (c.empty()) return std::optional<bool>();
  if (c.size() > 1) {
    return absl::InvalidArgumentError(
        Cat("fhirpath: ", what, " requires a single Boolean, got ", c.size(), " items"));
  }
  auto s = ToSystem(c[0]);
  if (s && s->kind() == Item::Kind::kBoolean) return std::optional<bool>(s->boolean());
  return std::optional<bool>(true);  // singleton evaluation: one non-Boolean item is true
}

absl::Status Evaluator::EvalLambda(const AstNode& call, size_t i, Input this_, int64_t index,
                                   const Frame& frame, Collection* out) {
  Frame f = frame;
  f.this_ = this_;
  f.index = index;
  return Eval(*call.args[i], this_, f, out);
}

const Temporal& Evaluator::Now() {
  if (!now_) {
    const Clock& clock = env_.clock ? *env_.clock : SystemClock::Get();
    auto ms = std::chrono::duration_cast<std::chrono::milliseconds>(clock.Now().time_since_epoch())
                  .count();
    std::string text =
        FormatInstant(std::chrono::system_clock::time_point(std::chrono::milliseconds(ms)));
    now_ = Temporal::ParseDateTime(text);
    if (!now_) now_ = Temporal::ParseDateTime("1970-01-01T00:00:00.000Z");
  }
  return *now_;
}

// ---------------------------------------------------------------------------------------------
// Navigation

std::span<const ElementDef* const> Evaluator::ChildDefs(const Item::Node& n) const {
  if (n.def != nullptr && !n.def->children.empty()) return n.def->children;
  if (n.type != nullptr) return n.type->children;
  return {};
}

Item Evaluator::MakeChild(const json::Value* value, const json::Value* ext, const ElementDef* def,
                          const TypeDef* type) const {
  Item::Node n;
  n.value = value;
  n.ext = ext;
  n.def = def;
  n.type = type;
  if ((type == nullptr || (type->kind == TypeKind::kResource && type->is_abstract)) &&
      value != nullptr && value->is_object()) {
    if (auto rt = value->GetString("resourceType")) {
      if (const TypeDef* actual = model_.FindType(*rt)) n.type = actual;
    }
  }
  return Item::MakeNode(n);
}

void Evaluator::AddMember(const json::Object& obj, std::string_view key, const ElementDef* def,
                          const TypeDef* type, Collection* out) const {
  const json::Value* v = nullptr;
  const json::Value* ext = nullptr;
  for (const auto& [k, val] : obj) {
    if (k.size() == key.size() && k == key) {
      v = &val;
    } else if (k.size() == key.size() + 1 && k[0] == '_' && std::string_view(k).substr(1) == key) {
      ext = &val;
    }
  }
  AddValues(v, ext, def, type, out);
}

void Evaluator::AddValues(const json::Value* v, const json::Value* ext, const ElementDef* def,
                          const TypeDef* type, Collection* out) const {
  if (v == nullptr && ext == nullptr) return;
  if (def != nullptr && def->name == "id" && type != nullptr && type->name == "string") {
    // R4 declares Resource.id as "id" (the snapshots give System.String with fhir-type string).
    std::string_view owner = std::string_view(def->path).substr(0, def->path.size() - 3);
    if (owner.find('.') == std::string_view::npos) {
      const TypeDef* o = model_.FindType(owner);
      static const TypeDef* const kId = Model::R4().FindType("id");
      if (o != nullptr && o->kind == TypeKind::kResource && kId != nullptr) type = kId;
    }
  }
  if ((v && v->is_array()) || (ext && ext->is_array())) {
    const json::Array* vs = v && v->is_array() ? &v->items() : nullptr;
    const json::Array* es = ext && ext->is_array() ? &ext->items() : nullptr;
    size_t n = std::max(vs ? vs->size() : 0, es ? es->size() : 0);
    for (size_t i = 0; i < n; ++i) {
      const json::Value* vi = vs && i < vs->size() && !(*vs)[i].is_null() ? &(*vs)[i] : nullptr;
      const json::Value* ei = es && i < es->size() && (*es)[i].is_object() ? &(*es)[i] : nullptr;
      if (vi == nullptr && ei == nullptr) continue;
      out->push_back(MakeChild(vi, ei, def, type));
    }
    return;
  }
  if (v && v->is_null()) v = nullptr;
  if (ext && !ext->is_object()) ext = nullptr;
  if (v == nullptr && ext == nullptr) return;
  out->push_back(MakeChild(v, ext, def, type));
}

absl::Status Evaluator::Member(const Item& item, std::string_view name, Collection* out) {
  if (name.empty()) return absl::OkStatus();
  if (item.kind() == Item::Kind::kTypeInfo) {
    if (name == "namespace") out->push_back(Item::MakeStringView(item.type_info().ns));
    if (name == "name") out->push_back(Item::MakeStringView(item.type_info().name));
    return absl::OkStatus();
  }
  if (!item.is_node()) return absl::OkStatus();
  const Item::Node& n = item.node();
  if (IsUpper(name[0])) {
    // A type name as a path step (Patient.name): the item itself when it is of that type.
    for (const TypeDef* t = n.type; t != nullptr; t = t->base_def) {
      if (t->name == name) {
        out->push_back(item);
        return absl::OkStatus();
      }
    }
    if (n.type == nullptr && n.value && n.value->is_object()) {
      if (auto rt = n.value->GetString("resourceType"); rt && *rt == name) {
        out->push_back(item);
        return absl::OkStatus();
      }
    }
    if (env_.strict) {
      return absl::InvalidArgumentError(
          Cat("fhirpath: '", name, "' can never match a ", n.type ? n.type->name : "node"));
    }
    return absl::OkStatus();
  }
  auto defs = ChildDefs(n);
  if (n.value == nullptr || !n.value->is_object()) {
    // A primitive (or a primitive with only "_name"): id and extension live in "_name".
    if (n.ext != nullptr && n.ext->is_object()) {
      const ElementDef* def = FindDef(defs, name);
      AddMember(n.ext->members(), name, def, ElementType(def), out);
    } else if (env_.strict && n.type != nullptr && FindDef(defs, name) == nullptr) {
      return absl::InvalidArgumentError(
          Cat("fhirpath: unknown element '", name, "' on ", n.type->name));
    }
    return absl::OkStatus();
  }
  const json::Object& obj = n.value->members();
  if (const ElementDef* def = FindDef(defs, name)) {
    if (!def->is_choice) {
      AddMember(obj, name, def, ElementType(def), out);
      return absl::OkStatus();
    }
    for (const auto& [k, val] : obj) {
      std::string_view key = k;
      bool underscore = !key.empty() && key[0] == '_';
      if (underscore) key.remove_prefix(1);
      if (key.size() <= name.size() || !key.starts_with(name) || !IsUpper(key[name.size()])) {
        continue;
      }
      int type = ChoiceType(*def, key.substr(name.size()));
      if (type < 0) continue;
      if (underscore && HasMember(obj, key)) continue;  // merged with its value
      AddMember(obj, key, def, def->type_defs[type], out);
    }
    return absl::OkStatus();
  }
  if (!defs.empty()) {
    if (auto m = Model::ResolveChild(defs, name)) {
      if (env_.strict) {
        return absl::InvalidArgumentError(Cat("fhirpath: '", name,
                                              "' is a JSON name; use the element name '",
                                              m->element->name, "'"));
      }
      AddMember(obj, name, m->element, m->type_def, out);
      return absl::OkStatus();
    }
    if (env_.strict) {
      return absl::InvalidArgumentError(
          Cat("fhirpath: unknown element '", name, "' on ", n.type ? n.type->name : "node"));
    }
  }
  size_t before = out->size();
  AddMember(obj, name, nullptr, nullptr, out);
  if (out->size() == before && defs.empty()) {
    // Untyped JSON: a choice element by its base name (valueQuantity for value), typed by the
    // suffix when it names a FHIR type.
    for (const auto& [k, val] : obj) {
      std::string_view key = k;
      if (key.size() <= name.size() || !key.starts_with(name) || !IsUpper(key[name.size()])) {
        continue;
      }
      std::string suffix(key.substr(name.size()));
      const TypeDef* t = model_.FindType(suffix);
      if (t == nullptr) {
        suffix[0] = static_cast<char>(std::tolower(static_cast<unsigned char>(suffix[0])));
        t = model_.FindType(suffix);
        if (t == nullptr || t->kind != TypeKind::kPrimitive) continue;
      }
      AddMember(obj, key, nullptr, t, out);
    }
  }
  return absl::OkStatus();
}

absl::Status Evaluator::Children(const Item& item, Collection* out) {
  if (!item.is_node()) return absl::OkStatus();
  const Item::Node& n = item.node();
  auto defs = ChildDefs(n);
  const json::Value* holder = n.value != nullptr && n.value->is_object() ? n.value : n.ext;
  if (holder == nullptr || !holder->is_object()) return absl::OkStatus();
  const json::Object& obj = holder->members();
  bool is_resource = holder == n.value && n.value->Find("resourceType") != nullptr;
  if (absl::Status st = Step(obj.size()); !st.ok()) return st;
  auto add = [&](std::string_view key, const json::Value* v, const json::Value* ext) {
    std::optional<Model::ChildMatch> m;
    if (!defs.empty()) m = Model::ResolveChild(defs, key);
    AddValues(v, ext, m ? m->element : nullptr, m ? m->type_def : nullptr, out);
  };
  if (obj.size() <= 16) {
    for (const auto& [k, val] : obj) {
      std::string_view key = k;
      if (is_resource && key == "resourceType") continue;
      if (!key.empty() && key[0] == '_') {
        key.remove_prefix(1);
        if (HasMember(obj, key)) continue;  // merged with its value
        add(key, nullptr, &val);
        continue;
      }
      const json::Value* ext = nullptr;
      for (const auto& [k2, v2] : obj) {
        if (k2.size() == key.size() + 1 && k2[0] == '_' && std::string_view(k2).substr(1) == key) {
          ext = &v2;
        }
      }
      add(key, &val, ext);
    }
  } else {
    // Large objects: pair "x" with "_x" through a map, in linear time.
    std::unordered_map<std::string_view, std::pair<const json::Value*, const json::Value*>> pairs;
    pairs.reserve(obj.size());
    for (const auto& [k, val] : obj) {
      std::string_view key = k;
      bool underscore = !key.empty() && key[0] == '_';
      if (underscore) key.remove_prefix(1);
      auto& p = pairs[key];
      (underscore ? p.second : p.first) = &val;
    }
    for (const auto& [k, val] : obj) {
      std::string_view key = k;
      if (is_resource && key == "resourceType") continue;
      bool underscore = !key.empty() && key[0] == '_';
      if (underscore) key.remove_prefix(1);
      const auto& p = pairs[key];
      if (underscore && p.first != nullptr) continue;  // merged with its value
      add(key, p.first, p.second);
    }
  }
  return CheckSize(out->size());
}

absl::Status Evaluator::Descendants(Input input, Collection* out) {
  size_t start = out->size();
  for (const Item& item : input) {
    if (absl::Status st = Children(item, out); !st.ok()) return st;
  }
  for (size_t i = start; i < out->size(); ++i) {
    if (absl::Status st = Step(); !st.ok()) return st;
    Item current = (*out)[i];
    if (absl::Status st = Children(current, out); !st.ok()) return st;
  }
  return absl::OkStatus();
}

bool Evaluator::TypeMatches(const Item& item, const TypeSpec& spec, bool exact) const {
  if (item.is_node()) {
    if (spec.fhir == nullptr) return false;
    const Item::Node& n = item.node();
    if (n.type == nullptr) {
      if (n.value && n.value->is_object()) {
        auto rt = n.value->GetString("resourceType");
        return rt && *rt == spec.fhir->name;
      }
      return false;
    }
    if (n.type == spec.fhir) return true;
    // as()/ofType() on primitives want the exact type: a code is not returned as a string.
    if (exact && IsPrimitiveType(n.type)) return false;
    for (const TypeDef* t = n.type->base_def; t != nullptr; t = t->base_def) {
      if (t == spec.fhir) return true;
    }
    return false;
  }
  return spec.system.has_value() && item.kind() == *spec.system;
}

// ---------------------------------------------------------------------------------------------
// Expressions

absl::Status Evaluator::Variable(const AstNode& node, Collection* out) {
  std::string_view name = node.name;
  if (name == "resource" || name == "rootResource") {
    const json::Value* r = name == "resource"
                               ? (env_.resource ? env_.resource : env_.root_resource)
                               : (env_.root_resource ? env_.root_resource : env_.resource);
    if (r != nullptr) out->push_back(Item::Resource(*r));
    return absl::OkStatus();
  }
  if (name == "context") {
    out->insert(out->end(), focus_.begin(), focus_.end());
    return absl::OkStatus();
  }
  if (auto it = env_.variables.find(name); it != env_.variables.end()) {
    out->insert(out->end(), it->second.begin(), it->second.end());
    return absl::OkStatus();
  }
  if (name == "ucum") {
    out->push_back(Item::MakeStringView("http://unitsofmeasure.org"));
  } else if (name == "sct") {
    out->push_back(Item::MakeStringView("http://snomed.info/sct"));
  } else if (name == "loinc") {
    out->push_back(Item::MakeStringView("http://loinc.org"));
  } else if (name.starts_with("vs-") && name.size() > 3) {
    out->push_back(Item::MakeString(Cat("http://hl7.org/fhir/ValueSet/", name.substr(3))));
  } else if (name.starts_with("ext-") && name.size() > 4) {
    out->push_back(
        Item::MakeString(Cat("http://hl7.org/fhir/StructureDefinition/", name.substr(4))));
  } else {
    return Error(node, Cat("unknown variable %", name));
  }
  return absl::OkStatus();
}

absl::Status Evaluator::Eval(const AstNode& node, Input input, const Frame& frame,
                             Collection* out) {
  if (absl::Status st = Step(); !st.ok()) return st;
  switch (node.kind) {
    case NodeKind::kEmpty:
      return absl::OkStatus();
    case NodeKind::kLiteral:
      out->push_back(node.literal);
      return absl::OkStatus();
    case NodeKind::kThis:
      out->insert(out->end(), frame.this_.begin(), frame.this_.end());
      return absl::OkStatus();
    case NodeKind::kIndex:
      if (frame.index < 0) return Error(node, "$index is not defined here");
      out->push_back(Item::MakeInteger(frame.index));
      return absl::OkStatus();
    case NodeKind::kTotal:
      if (frame.total == nullptr) return Error(node, "$total is not defined here");
      out->insert(out->end(), frame.total->begin(), frame.total->end());
      return absl::OkStatus();
    case NodeKind::kVariable:
      return Variable(node, out);
    case NodeKind::kMember: {
      if (absl::Status st = Step(input.size()); !st.ok()) return st;
      for (const Item& item : input) {
        if (absl::Status st = Member(item, node.name, out); !st.ok()) return st;
      }
      return CheckSize(out->size());
    }
    case NodeKind::kFunction:
      return node.fn->impl(*this, node, input, frame, out);
    case NodeKind::kInvoke: {
      if (env_.strict) {
        if (absl::Status st = StrictCheck(node); !st.ok()) return st;
      }
      if (node.memo_slot >= 0) {
        if (memo_.empty()) memo_.resize(memo_slots_);
        std::optional<Collection>& memo = memo_[node.memo_slot];
        if (!memo) {
          Collection lhs, value;
          if (absl::Status st = Eval(*node.args[0], input, frame, &lhs); !st.ok()) return st;
          if (absl::Status st = Eval(*node.args[1], lhs, frame, &value); !st.ok()) return st;
          memo = std::move(value);
        }
        out->insert(out->end(), memo->begin(), memo->end());
        return absl::OkStatus();
      }
      Collection lhs;
      if (absl::Status st = Eval(*node.args[0], input, frame, &lhs); !st.ok()) return st;
      return Eval(*node.args[1], lhs, frame, out);
    }
    case NodeKind::kIndexer: {
      Collection lhs, index;
      if (absl::Status st = Eval(*node.args[0], input, frame, &lhs); !st.ok()) return st;
      if (absl::Status st = Eval(*node.args[1], input, frame, &index); !st.ok()) return st;
      auto i = Singleton(index, "an index");
      if (!i.ok()) return i.status();
      if (*i == nullptr) return absl::OkStatus();
      auto s = ToSystem(**i);
      if (!s || s->kind() != Item::Kind::kInteger) return Error(node, "index must be an Integer");
      int64_t k = s->integer();
      if (k >= 0 && static_cast<uint64_t>(k) < lhs.size()) out->push_back(lhs[k]);
      return absl::OkStatus();
    }
    case NodeKind::kNegate: {
      Collection operand;
      if (absl::Status st = Eval(*node.args[0], input, frame, &operand); !st.ok()) return st;
      auto one = Singleton(operand, "unary minus");
      if (!one.ok()) return one.status();
      if (*one == nullptr) return absl::OkStatus();
      auto s = ToSystem(**one);
      if (s && s->kind() == Item::Kind::kInteger) {
        if (s->integer() != INT64_MIN) out->push_back(Item::MakeInteger(-s->integer()));
      } else if (s && s->kind() == Item::Kind::kDecimal) {
        out->push_back(Item::MakeDecimal(DecNegate(s->decimal())));
      } else if (s && s->kind() == Item::Kind::kQuantity) {
        Quantity q = s->quantity();
        q.value = DecNegate(q.value);
        out->push_back(Item::MakeQuantity(std::move(q)));
      } else {
        return Error(node, "unary minus needs a number or a quantity");
      }
      return absl::OkStatus();
    }
    case NodeKind::kBinary:
      return Binary(node, input, frame, out);
    case NodeKind::kIs:
    case NodeKind::kAs: {
      Collection operand;
      if (absl::Status st = Eval(*node.args[0], input, frame, &operand); !st.ok()) return st;
      auto one = Singleton(operand, node.kind == NodeKind::kIs ? "'is'" : "'as'");
      if (!one.ok()) return one.status();
      if (*one == nullptr) return absl::OkStatus();
      if (node.kind == NodeKind::kIs) {
        out->push_back(Item::MakeBoolean(TypeMatches(**one, node.type, false)));
      } else if (TypeMatches(**one, node.type, true)) {
        out->push_back(**one);
      }
      return absl::OkStatus();
    }
  }
  return Error(node, "unknown expression");
}

// Strict mode: what static typing would reject, detectable from the shape of `lhs.rhs`.
absl::Status Evaluator::StrictCheck(const AstNode& invoke) const {
  const AstNode& lhs = *invoke.args[0];
  const AstNode& rhs = *invoke.args[1];
  const AstNode& producer = lhs.kind == NodeKind::kInvoke ? *lhs.args[1] : lhs;
  if (rhs.kind == NodeKind::kFunction && producer.kind == NodeKind::kFunction &&
      (producer.name == "children" || producer.name == "descendants") &&
      (rhs.name == "first" || rhs.name == "last" || rhs.name == "tail" || rhs.name == "skip" ||
       rhs.name == "take")) {
    return Error(rhs, Cat(rhs.name, "() needs an ordered collection; ", producer.name,
                          "() gives an unordered one"));
  }
  bool cast =
      producer.kind == NodeKind::kAs || (producer.kind == NodeKind::kFunction &&
                                         (producer.name == "as" || producer.name == "ofType"));
  if (cast && rhs.kind == NodeKind::kMember && producer.type.fhir != nullptr &&
      !IsUpper(rhs.name.empty() ? 'a' : rhs.name[0])) {
    auto defs = producer.type.fhir->children;
    if (FindDef(defs, rhs.name) == nullptr && !Model::ResolveChild(defs, rhs.name)) {
      return Error(rhs, Cat("'", rhs.name, "' is not an element of ", producer.type.fhir->name));
    }
  }
  return absl::OkStatus();
}

absl::Status Evaluator::Binary(const AstNode& node, Input input, const Frame& frame,
                               Collection* out) {
  BinOp op = node.op;
  Collection l, r;
  if (absl::Status st = Eval(*node.args[0], input, frame, &l); !st.ok()) return st;
  if (op == BinOp::kAnd || op == BinOp::kOr || op == BinOp::kXor || op == BinOp::kImplies) {
    auto a = ToBoolean(l, "a Boolean operator");
    if (!a.ok()) return a.status();
    // Short-circuit where the left operand decides.
    if ((op == BinOp::kAnd && *a == false) || (op == BinOp::kOr && *a == true)) {
      out->push_back(Item::MakeBoolean(**a));
      return absl::OkStatus();
    }
    if (op == BinOp::kImplies && *a == false) {
      out->push_back(Item::MakeBoolean(true));
      return absl::OkStatus();
    }
    if (absl::Status st = Eval(*node.args[1], input, frame, &r); !st.ok()) return st;
    auto b = ToBoolean(r, "a Boolean operator");
    if (!b.ok()) return b.status();
    std::optional<bool> x = *a, y = *b, result;
    switch (op) {
      case BinOp::kAnd:
        if (y == false)
          result = false;
        else if (x && y)
          result = true;
        break;
      case BinOp::kOr:
        if (y == true)
          result = true;
        else if (x && y)
          result = false;
        break;
      case BinOp::kXor:
        if (x && y) result = *x != *y;
        break;
      default:  // implies; x is true or empty here
        if (y == true)
          result = true;
        else if (x && y)
          result = false;
        break;
    }
    if (result) out->push_back(Item::MakeBoolean(*result));
    return absl::OkStatus();
  }
  if (absl::Status st = Eval(*node.args[1], input, frame, &r); !st.ok()) return st;
  switch (op) {
    case BinOp::kUnion: {
      if (absl::Status st = CheckSize(l.size() + r.size()); !st.ok()) return st;
      if (absl::Status st = Step(l.size() + r.size()); !st.ok()) return st;
      size_t start = out->size();
      out->insert(out->end(), l.begin(), l.end());
      out->insert(out->end(), r.begin(), r.end());
      if (start == 0) return Dedupe(out);
      Collection u(out->begin() + start, out->end());
      if (absl::Status st = Dedupe(&u); !st.ok()) return st;
      out->resize(start);
      out->insert(out->end(), u.begin(), u.end());
      return absl::OkStatus();
    }
    case BinOp::kEq:
    case BinOp::kNe: {
      if (l.empty() || r.empty()) return absl::OkStatus();
      Tri t = Tri::kTrue;
      if (l.size() != r.size()) {
        t = Tri::kFalse;
      } else {
        if (absl::Status st = Step(l.size()); !st.ok()) return st;
        for (size_t i = 0; i < l.size(); ++i) {
          Tri e = ItemEqual(l[i], r[i]);
          if (e == Tri::kFalse) {
            t = Tri::kFalse;
            break;
          }
          if (e == Tri::kEmpty) t = Tri::kEmpty;
        }
      }
      if (t == Tri::kEmpty) return absl::OkStatus();
      out->push_back(Item::MakeBoolean((t == Tri::kTrue) == (op == BinOp::kEq)));
      return absl::OkStatus();
    }
    case BinOp::kEquiv:
    case BinOp::kNotEquiv: {
      bool eq = true;
      if (l.size() != r.size()) {
        eq = false;
      } else {
        if (absl::Status st = Step(l.size() * r.size()); !st.ok()) return st;
        std::vector<bool> used(r.size(), false);
        for (const Item& a : l) {
          bool found = false;
          for (size_t j = 0; j < r.size(); ++j) {
            if (!used[j] && ItemEquivalent(a, r[j])) {
              used[j] = found = true;
              break;
            }
          }
          if (!found) {
            eq = false;
            break;
          }
        }
      }
      out->push_back(Item::MakeBoolean(eq == (op == BinOp::kEquiv)));
      return absl::OkStatus();
    }
    case BinOp::kLt:
    case BinOp::kGt:
    case BinOp::kLe:
    case BinOp::kGe: {
      auto a = Singleton(l, "a comparison");
      if (!a.ok()) return a.status();
      auto b = Singleton(r, "a comparison");
      if (!b.ok()) return b.status();
      if (*a == nullptr || *b == nullptr) return absl::OkStatus();
      auto c = ItemCompare(**a, **b);
      if (!c.ok()) return Error(node, std::string(c.status().message()));
      if (!*c) return absl::OkStatus();
      int v = **c;
      bool result = op == BinOp::kLt   ? v < 0
                    : op == BinOp::kGt ? v > 0
                    : op == BinOp::kLe ? v <= 0
                                       : v >= 0;
      out->push_back(Item::MakeBoolean(result));
      return absl::OkStatus();
    }
    case BinOp::kIn:
    case BinOp::kContains: {
      const Collection& element = op == BinOp::kIn ? l : r;
      const Collection& set = op == BinOp::kIn ? r : l;
      auto e = Singleton(element, op == BinOp::kIn ? "'in'" : "'contains'");
      if (!e.ok()) return e.status();
      if (*e == nullptr) return absl::OkStatus();
      if (absl::Status st = Step(set.size()); !st.ok()) return st;
      bool found = false;
      for (const Item& x : set) {
        if (ItemEqual(**e, x) == Tri::kTrue) {
          found = true;
          break;
        }
      }
      out->push_back(Item::MakeBoolean(found));
      return absl::OkStatus();
    }
    case BinOp::kConcat: {
      std::string text;
      for (const Collection* side : {&l, &r}) {
        auto one = Singleton(*side, "'&'");
        if (!one.ok()) return one.status();
        if (*one == nullptr) continue;
        auto s = ToSystem(**one);
        if (!s || s->kind() != Item::Kind::kString) return Error(node, "'&' needs strings");
        text.append(s->string());
      }
      if (text.size() > env_.limits.max_string_bytes) {
        return absl::ResourceExhaustedError("fhirpath: string result too large");
      }
      out->push_back(Item::MakeString(std::move(text)));
      return absl::OkStatus();
    }
    default: {
      auto a = Singleton(l, "an arithmetic operator");
      if (!a.ok()) return a.status();
      auto b = Singleton(r, "an arithmetic operator");
      if (!b.ok()) return b.status();
      if (*a == nullptr || *b == nullptr) return absl::OkStatus();
      auto result = Arithmetic(op, **a, **b, env_.limits.max_string_bytes);
      if (!result.ok()) {
        if (absl::IsResourceExhausted(result.status())) return result.status();
        return Error(node, std::string(result.status().message()));
      }
      if (*result) out->push_back(std::move(**result));
      return absl::OkStatus();
    }
  }
}

}  // namespace internal

absl::StatusOr<Collection> Evaluate(const Expression& expression, const Collection& focus,
                                    const Environment& env) {
  internal::Evaluator ev(env, focus);
  ev.set_ast(expression.ast());
  internal::Frame frame;
  frame.this_ = focus;
  Collection out;
  if (absl::Status st = ev.Eval(*expression.ast().root, focus, frame, &out); !st.ok()) return st;
  return out;
}

absl::StatusOr<Collection> Evaluate(const Expression& expression, const Item& focus,
                                    const Environment& env) {
  Collection c;
  c.push_back(focus);
  return Evaluate(expression, c, env);
}

absl::StatusOr<std::optional<bool>> EvaluateBoolean(const Expression& expression, const Item& focus,
                                                    const Environment& env) {
  auto r = Evaluate(expression, focus, env);
  if (!r.ok()) return r.status();
  if (r->empty()) return std::optional<bool>();
  if (r->size() > 1) {
    return absl::InvalidArgumentError(
        Cat("fhirpath: expected a single Boolean, got ", r->size(), " items"));
  }
  auto s = internal::ToSystem((*r)[0]);
  if (s && s->kind() == Item::Kind::kBoolean) return std::optional<bool>(s->boolean());
  return std::optional<bool>(true);
}

}  // namespace fhirward::fhir::fhirpath
