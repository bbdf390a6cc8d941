#include "fhir/model.h"

#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <deque>
#include <string_view>
#include <unordered_map>

#include "json/value.h"

namespace fhirward::fhir {
namespace {

#include "fhir/r4_model.inc"

// The embedded model is generated and fixed at build time: a malformed one is a build defect.
void Require(bool ok, std::string_view what) {
  if (!ok) {
    std::fprintf(stderr, "fhirward: embedded R4 model is invalid: %.*s\n",
                 static_cast<int>(what.size()), what.data());
    std::abort();
  }
}

struct StringHash {
  using is_transparent = void;
  size_t operator()(std::string_view s) const { return std::hash<std::string_view>{}(s); }
};
template <typename T>
using StringMap = std::unordered_map<std::string, T, StringHash, std::equal_to<>>;

std::string_view Str(const json::Value& obj, std::string_view key) {
  const json::Value* v = obj.Find(key);
  return v && v->is_string() ? std::string_view(v->as_string()) : std::string_view();
}

int64_t Int(const json::Value& obj, std::string_view key, int64_t fallback) {
  const json::Value* v = obj.Find(key);
  if (!v || !v->is_number()) return fallback;
  return v->as_int64().value_or(fallback);
}

BindingStrength ParseStrength(std::string_view s) {
  if (s == "required") return BindingStrength::kRequired;
  if (s == "extensible") return BindingStrength::kExtensible;
  if (s == "preferred") return BindingStrength::kPreferred;
  if (s == "example") return BindingStrength::kExample;
  return BindingStrength::kNone;
}

}  // namespace

struct Model::Storage {
  std::deque<ElementDef> elements;
  std::deque<TypeDef> types;
  std::deque<ValueSetExpansion> value_sets;
  std::deque<CodeSystemCodes> code_systems;
  std::deque<SearchParamDef> search_params;
  StringMap<std::vector<const SearchParamDef*>> search_params_by_base;
  StringMap<const CodeSystemCodes*> code_system_by_url;
  StringMap<const TypeDef*> type_by_name;
  StringMap<ElementDef*> element_by_path;
  StringMap<const ValueSetExpansion*> value_set_by_url;
};

Model::~Model() { delete storage_; }

Model::Model() : storage_(new Storage) {
  json::Limits limits;
  limits.max_total_bytes = kGeneratedR4Model.size() + 1;
  limits.max_array_items = 1 << 20;
  auto doc = json::Parse(kGeneratedR4Model, limits);
  Require(doc.ok(), doc.ok() ? std::string() : std::string(doc.status().message()));
  Storage& s = *storage_;

  // Pass 1: types and their elements.
  std::vector<std::pair<ElementDef*, std::string>> content_refs;
  for (const json::Value& t : doc->Find("types")->items()) {
    TypeDef& type = s.types.emplace_back();
    type.name = Str(t, "n");
    std::string_view kind = Str(t, "k");
    type.kind = kind == "p"   ? TypeKind::kPrimitive
                : kind == "r" ? TypeKind::kResource
                              : TypeKind::kComplex;
    type.is_abstract = Int(t, "a", 0) != 0;
    type.base = Str(t, "b");
    type.regex = Str(t, "re");
    for (const json::Value& e : t.Find("e")->items()) {
      ElementDef& el = s.elements.emplace_back();
      el.path = Str(e, "p");
      size_t dot = el.path.rfind('.');
      el.name = dot == std::string::npos ? el.path : el.path.substr(dot + 1);
      if (el.name.ends_with("[x]")) {
        el.is_choice = true;
        el.name.resize(el.name.size() - 3);
      }
      el.min = static_cast<uint32_t>(Int(e, "mn", 0));
      std::string_view max = Str(e, "mx");
      if (max.empty()) {
        el.max = 1;
      } else if (max == "*") {
        el.max = kUnbounded;
      } else {
        el.max = static_cast<uint32_t>(std::strtoul(std::string(max).c_str(), nullptr, 10));
      }
      if (const json::Value* ts = e.Find("t")) {
        for (const json::Value& x : ts->items()) el.types.push_back(x.as_string());
      }
      if (const json::Value* tt = e.Find("tt")) {
        for (const json::Value& x : tt->items()) el.target_types.push_back(x.as_string());
      }
      if (const json::Value* b = e.Find("b")) {
        el.binding = ParseStrength(b->items()[0].as_string());
        if (b->items().size() > 1) el.value_set = b->items()[1].as_string();
      }
      if (const json::Value* cs = e.Find("c")) {
        for (const json::Value& c : cs->items()) {
          const json::Array& a = c.items();
          el.constraints.push_back(Constraint{a[0].as_string(), a[1].as_int64().value_or(1) != 0,
                                              a[2].as_string(), a[3].as_string()});
        }
      }
      el.is_modifier = Int(e, "m", 0) != 0;
      el.is_summary = Int(e, "s", 0) != 0;
      if (std::string_view cr = Str(e, "cr"); !cr.empty()) content_refs.emplace_back(&el, cr);
      if (dot == std::string::npos) {
        type.root = &el;
      } else {
        std::string_view parent_path = std::string_view(el.path).substr(0, dot);
        if (parent_path == type.name) {
          type.children.push_back(&el);
        } else {
          auto parent = s.element_by_path.find(parent_path);
          Require(parent != s.element_by_path.end(), el.path);
          parent->second->children.push_back(&el);
        }
      }
      s.element_by_path.emplace(el.path, &el);
    }
    s.type_by_name.emplace(type.name, &type);
  }
  // Pass 2: bases and content references.
  for (TypeDef& type : s.types) {
    if (!type.base.empty()) {
      auto it = s.type_by_name.find(type.base);
      if (it != s.type_by_name.end()) type.base_def = it->second;
    }
    type_list_.push_back(&type);
  }
  for (auto& [el, target] : content_refs) {
    auto it = s.element_by_path.find(target);
    Require(it != s.element_by_path.end(), target);
    el->children = it->second->children;
    el->types = it->second->types;
  }
  for (ElementDef& el : s.elements) {
    for (const std::string& t : el.types) {
      auto it = s.type_by_name.find(t);
      el.type_defs.push_back(it == s.type_by_name.end() ? nullptr : it->second);
    }
  }
  for (const json::Value& v : doc->Find("valueSets")->items()) {
    ValueSetExpansion& vs = s.value_sets.emplace_back();
    vs.url = Str(v, "u");
    vs.complete = Int(v, "i", 0) == 0;
    for (const json::Value& c : v.Find("c")->items()) {
      vs.codes.emplace_back(c.items()[0].as_string(), c.items()[1].as_string());
    }
    s.value_set_by_url.emplace(vs.url, &vs);
  }
  if (const json::Value* params = doc->Find("searchParams")) {
    for (const json::Value& p : params->items()) {
      SearchParamDef& sp = s.search_params.emplace_back();
      sp.url = Str(p, "u");
      sp.code = Str(p, "c");
      sp.type = Str(p, "t");
      sp.expression = Str(p, "e");
      for (const json::Value& b : p.Find("b")->items()) sp.bases.push_back(b.as_string());
      if (const json::Value* tt = p.Find("tt")) {
        for (const json::Value& t : tt->items()) sp.target_types.push_back(t.as_string());
      }
      if (const json::Value* comp = p.Find("comp")) {
        for (const json::Value& c : comp->items()) {
          sp.components.emplace_back(c.items()[0].as_string(), c.items()[1].as_string());
        }
      }
      for (const std::string& b : sp.bases) s.search_params_by_base[b].push_back(&sp);
    }
  }
  if (const json::Value* systems = doc->Find("codeSystems")) {
    for (const json::Value& c : systems->items()) {
      CodeSystemCodes& cs = s.code_systems.emplace_back();
      cs.url = Str(c, "u");
      for (const json::Value& code : c.Find("c")->items()) cs.codes.push_back(code.as_string());
      s.code_system_by_url.emplace(cs.url, &cs);
    }
  }
}

const Model& Model::R4() {
  static const Model* model = new Model();
  return *model;
}

const TypeDef* Model::FindType(std::string_view name) const {
  auto it = storage_->type_by_name.find(name);
  return it == storage_->type_by_name.end() ? nullptr : it->second;
}

const ElementDef* Model::FindElement(std::string_view path) const {
  auto it = storage_->element_by_path.find(path);
  return it == storage_->element_by_path.end() ? nullptr : it->second;
}

const ValueSetExpansion* Model::FindValueSet(std::string_view url) const {
  size_t bar = url.find('|');
  if (bar != std::string_view::npos) url = url.substr(0, bar);
  auto it = storage_->value_set_by_url.find(url);
  return it == storage_->value_set_by_url.end() ? nullptr : it->second;
}

std::vector<const SearchParamDef*> Model::SearchParamsOf(std::string_view type) const {
  std::vector<const SearchParamDef*> out;
  for (std::string_view base :
       {std::string_view("Resource"), std::string_view("DomainResource"), type}) {
    if (base != type && !IsA(type, base)) continue;
    auto it = storage_->search_params_by_base.find(base);
    if (it != storage_->search_params_by_base.end()) {
      out.insert(out.end(), it->second.begin(), it->second.end());
    }
  }
  return out;
}

const SearchParamDef* Model::FindSearchParam(std::string_view type, std::string_view code) const {
  for (const SearchParamDef* p : SearchParamsOf(type)) {
    if (p->code == code) return p;
  }
  return nullptr;
}

const CodeSystemCodes* Model::FindCodeSystem(std::string_view url) const {
  auto it = storage_->code_system_by_url.find(url);
  return it == storage_->code_system_by_url.end() ? nullptr : it->second;
}

bool CodeSystemCodes::Contains(std::string_view code) const {
  return std::binary_search(codes.begin(), codes.end(), code);
}

std::span<const ElementDef* const> Model::ChildrenOf(const ElementDef& element,
                                                     std::string_view type) const {
  if (!element.children.empty()) return element.children;
  const TypeDef* def = FindType(type);
  if (def == nullptr) return {};
  return def->children;
}

std::optional<Model::ChildMatch> Model::ResolveChild(std::span<const ElementDef* const> children,
                                                     std::string_view json_name) {
  for (const ElementDef* el : children) {
    if (!el->is_choice) {
      if (el->name == json_name) {
        if (el->types.empty()) return ChildMatch{el, std::string_view(), nullptr};
        return ChildMatch{el, el->types[0], el->type_defs[0]};
      }
      continue;
    }
    if (!json_name.starts_with(el->name) || json_name.size() == el->name.size()) continue;
    std::string_view suffix = json_name.substr(el->name.size());
    for (size_t i = 0; i < el->types.size(); ++i) {
      const std::string& t = el->types[i];
      if (t.size() == suffix.size() && suffix[0] == static_cast<char>(std::toupper(t[0])) &&
          std::string_view(t).substr(1) == suffix.substr(1)) {
        return ChildMatch{el, t, el->type_defs[i]};
      }
    }
  }
  return std::nullopt;
}

bool Model::IsA(std::string_view type, std::string_view base) const {
  for (const TypeDef* t = FindType(type); t != nullptr; t = t->base_def) {
    if (t->name == base) return true;
  }
  return type == base;
}

bool ValueSetExpansion::Contains(std::string_view system, std::string_view code) const {
  auto it = std::lower_bound(codes.begin(), codes.end(), code,
                             [](const std::pair<std::string, std::string>& e, std::string_view c) {
                               return e.second < c;
                             });
  for (; it != codes.end() && it->second == code; ++it) {
    if (system.empty() || it->first == system) return true;
  }
  return false;
}

bool ValueSetExpansion::ContainsCode(std::string_view code) const { return Contains({}, code); }

std::string CapitaliseType(std::string_view type) {
  std::string out(type);
  if (!out.empty()) out[0] = static_cast<char>(std::toupper(static_cast<unsigned char>(out[0])));
  return out;
}

}  // namespace fhirward::fhir
