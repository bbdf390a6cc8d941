#include "fhir/profiles.h"

#include <algorithm>
#include <deque>
#include <filesystem>
#include <fstream>
#include <set>
#include <sstream>
#include <unordered_map>

#include "common/error.h"
#include "common/str_cat.h"
#include "fhir/model.h"
#include "fhir/validator_internal.h"

namespace fhirward::fhir {
namespace {

namespace fs = std::filesystem;

struct Discriminator {
  std::string type;  // value | pattern | type | profile | exists
  std::string path;
};

struct PNode {
  std::string id;
  std::string path;
  std::string name;        // last path segment: "identifier", "value[x]"
  std::string slice_name;  // for a slice
  uint32_t min = 0;
  uint32_t max = kUnbounded;
  std::vector<std::string> type_codes;
  std::vector<std::string> type_profiles;
  std::optional<json::Value> fixed;
  std::optional<json::Value> pattern;
  BindingStrength binding = BindingStrength::kNone;
  std::string value_set;
  bool sliced = false;
  std::vector<Discriminator> discriminators;
  bool closed = false;
  std::vector<const PNode*> children;
  std::vector<const PNode*> slices;
  bool is_choice() const { return name.ends_with("[x]"); }
  std::string_view base_name() const {
    return is_choice() ? std::string_view(name).substr(0, name.size() - 3) : std::string_view(name);
  }
};

struct Profile {
  std::string url;
  std::string version;
  std::string type;
  std::deque<PNode> nodes;
  const PNode* root = nullptr;
};

struct CodeSet {
  std::vector<std::pair<std::string, std::string>> codes;  // (system, code)
  bool Contains(std::string_view system, std::string_view code) const {
    for (const auto& [s, c] : codes) {
      if (c == code && (system.empty() || s == system)) return true;
    }
    return false;
  }
};

std::string StripVersion(std::string_view url) { return std::string(url.substr(0, url.find('|'))); }

// The member of `obj` whose name starts with `prefix` followed by an upper-case
// letter ("fixedUri" for "fixed"), if any.
const json::Value* PrefixedMember(const json::Value& obj, std::string_view prefix) {
  for (const json::Member& m : obj.members()) {
    if (m.first.size() > prefix.size() && m.first.starts_with(prefix) &&
        m.first[prefix.size()] >= 'A' && m.first[prefix.size()] <= 'Z') {
      return &m.second;
    }
  }
  return nullptr;
}

// FHIR pattern semantics: every member of `pattern` is present in `value`
// with a matching value; arrays match when each pattern item matches some item.
bool MatchesPattern(const json::Value& value, const json::Value& pattern) {
  if (pattern.is_object()) {
    if (!value.is_object()) return false;
    for (const json::Member& m : pattern.members()) {
      const json::Value* v = value.Find(m.first);
      if (v == nullptr || !MatchesPattern(*v, m.second)) return false;
    }
    return true;
  }
  if (pattern.is_array()) {
    if (!value.is_array()) return false;
    for (const json::Value& p : pattern.items()) {
      bool any = false;
      for (const json::Value& v : value.items()) any = any || MatchesPattern(v, p);
      if (!any) return false;
    }
    return true;
  }
  return value == pattern;
}

std::string Short(const json::Value& v) {
  std::string s = json::Write(v);
  if (s.size() > 60) s = s.substr(0, 60) + "...";
  return s;
}

// A value found in an instance, with its FHIRPath location.
struct Found {
  const json::Value* value;
  std::string expr;
  std::string json_name;
};

}  // namespace

struct ProfileSet::Impl {
  std::unordered_map<std::string, std::shared_ptr<const Profile>> profiles;  // url, url|version
  std::unordered_map<std::string, CodeSet> value_sets;
  std::unordered_map<std::string, CodeSet> code_systems;
  size_t count = 0;

  absl::Status AddStructureDefinition(const json::Value& sd, const std::string& origin);
  void AddTerminology(const json::Value& r);
  void ExpandValueSets(const std::vector<json::Value>& value_sets_json);

  const Profile* Find(std::string_view url) const {
    auto it = profiles.find(std::string(url));
    if (it == profiles.end()) it = profiles.find(StripVersion(url));
    return it == profiles.end() ? nullptr : it->second.get();
  }
};

namespace {

absl::Status Malformed(const std::string& origin, std::string_view what) {
  return Error(ErrorCode::kInvalidRequest, Cat(origin, ": ", what));
}

}  // namespace

absl::Status ProfileSet::Impl::AddStructureDefinition(const json::Value& sd,
                                                      const std::string& origin) {
  auto url = sd.GetString("url");
  auto type = sd.GetString("type");
  const json::Value* snapshot = sd.Find("snapshot");
  if (!url || !type || snapshot == nullptr || !snapshot->is_object()) {
    return Malformed(origin, "a StructureDefinition needs url, type and a snapshot");
  }
  const json::Value* elements = snapshot->Find("element");
  if (elements == nullptr || !elements->is_array() || elements->items().empty()) {
    return Malformed(origin, "snapshot.element is missing or empty");
  }
  auto profile = std::make_shared<Profile>();
  profile->url = std::string(*url);
  profile->version = std::string(sd.GetString("version").value_or(""));
  profile->type = std::string(*type);
  std::unordered_map<std::string, PNode*> by_id;
  for (const json::Value& e : elements->items()) {
    auto path = e.GetString("path");
    if (!path) return Malformed(origin, "an element has no path");
    PNode& n = profile->nodes.emplace_back();
    n.path = std::string(*path);
    n.id = std::string(e.GetString("id").value_or(*path));
    n.name = n.path.substr(n.path.rfind('.') == std::string::npos ? 0 : n.path.rfind('.') + 1);
    n.slice_name = std::string(e.GetString("sliceName").value_or(""));
    if (const json::Value* min = e.Find("min"); min != nullptr && min->is_number()) {
      n.min = static_cast<uint32_t>(min->as_int64().value_or(0));
    }
    if (auto max = e.GetString("max")) {
      n.max =
          *max == "*" ? kUnbounded : static_cast<uint32_t>(std::atoi(std::string(*max).c_str()));
    }
    if (const json::Value* types = e.Find("type"); types != nullptr && types->is_array()) {
      for (const json::Value& t : types->items()) {
        if (auto code = t.GetString("code")) n.type_codes.emplace_back(*code);
        if (const json::Value* ps = t.Find("profile"); ps != nullptr && ps->is_array()) {
          for (const json::Value& p : ps->items()) {
            if (p.is_string()) n.type_profiles.push_back(p.as_string());
          }
        }
      }
    }
    if (const json::Value* f = PrefixedMember(e, "fixed")) n.fixed = *f;
    if (const json::Value* p = PrefixedMember(e, "pattern")) n.pattern = *p;
    if (const json::Value* b = e.Find("binding"); b != nullptr && b->is_object()) {
      auto strength = b->GetString("strength");
      if (strength == "required") n.binding = BindingStrength::kRequired;
      if (strength == "extensible") n.binding = BindingStrength::kExtensible;
      n.value_set = StripVersion(b->GetString("valueSet").value_or(""));
    }
    if (const json::Value* s = e.Find("slicing"); s != nullptr && s->is_object()) {
      n.sliced = true;
      n.closed = s->GetString("rules") == "closed";
      if (const json::Value* ds = s->Find("discriminator"); ds != nullptr && ds->is_array()) {
        for (const json::Value& d : ds->items()) {
          n.discriminators.push_back(Discriminator{std::string(d.GetString("type").value_or("")),
                                                   std::string(d.GetString("path").value_or(""))});
        }
      }
    }
    // Attach to the parent by id: "A.b:s.c" → parent "A.b:s"; a slice
    // "A.b:s" → the sliced element "A.b".
    size_t dot = n.id.rfind('.');
    std::string last = dot == std::string::npos ? n.id : n.id.substr(dot + 1);
    size_t colon = last.find(':');
    if (dot == std::string::npos && colon == std::string::npos) {
      if (profile->root != nullptr) return Malformed(origin, "two root elements");
      profile->root = &n;
    } else if (colon != std::string::npos) {
      if (n.slice_name.empty()) n.slice_name = last.substr(colon + 1);
      std::string sliced_id =
          (dot == std::string::npos ? "" : n.id.substr(0, dot + 1)) + last.substr(0, colon);
      auto it = by_id.find(sliced_id);
      // Re-slices ("b:s/t") attach to their slice when it exists.
      if (last.find('/') != std::string::npos) {
        it = by_id.find(n.id.substr(0, n.id.rfind('/')));
      }
      if (it == by_id.end()) return Malformed(origin, Cat("no sliced element for ", n.id));
      it->second->slices.push_back(&n);
    } else {
      auto it = by_id.find(n.id.substr(0, dot));
      if (it == by_id.end()) return Malformed(origin, Cat("no parent for ", n.id));
      it->second->children.push_back(&n);
    }
    by_id[n.id] = &n;
  }
  if (profile->root == nullptr) return Malformed(origin, "no root element");
  ++count;
  if (!profile->version.empty()) profiles[profile->url + "|" + profile->version] = profile;
  profiles[profile->url] = std::move(profile);
  return absl::OkStatus();
}

void ProfileSet::Impl::AddTerminology(const json::Value& r) {
  auto url = r.GetString("url");
  if (!url) return;
  if (r.GetString("resourceType") == "CodeSystem") {
    CodeSet set;
    std::vector<const json::Value*> stack;
    if (const json::Value* c = r.Find("concept"); c != nullptr && c->is_array()) stack.push_back(c);
    while (!stack.empty()) {
      const json::Value* list = stack.back();
      stack.pop_back();
      for (const json::Value& c : list->items()) {
        if (auto code = c.GetString("code")) set.codes.emplace_back(std::string(*url), *code);
        if (const json::Value* k = c.Find("concept"); k != nullptr && k->is_array()) {
          stack.push_back(k);
        }
      }
    }
    if (r.GetString("content") == "complete" || r.GetString("content") == std::nullopt) {
      code_systems[std::string(*url)] = std::move(set);
    }
  }
}

// Value sets of the packages: enumerated concepts, and whole code systems
// defined in the packages or enumerable from the core model. A value set that
// needs anything else (filters, external systems) is not expanded, and codes
// bound to it are then not checked.
void ProfileSet::Impl::ExpandValueSets(const std::vector<json::Value>& sets) {
  for (const json::Value& vs : sets) {
    auto url = vs.GetString("url");
    const json::Value* compose = vs.Find("compose");
    if (!url || compose == nullptr || !compose->is_object()) continue;
    CodeSet set;
    bool complete = true;
    if (const json::Value* inc = compose->Find("include"); inc != nullptr && inc->is_array()) {
      for (const json::Value& i : inc->items()) {
        auto system = i.GetString("system");
        if (!system || i.Find("filter") != nullptr || i.Find("valueSet") != nullptr) {
          complete = false;
          continue;
        }
        if (const json::Value* cs = i.Find("concept"); cs != nullptr && cs->is_array()) {
          for (const json::Value& c : cs->items()) {
            if (auto code = c.GetString("code"))
              set.codes.emplace_back(std::string(*system), *code);
          }
          continue;
        }
        auto whole = code_systems.find(std::string(*system));
        if (whole == code_systems.end()) {
          complete = false;
          continue;
        }
        set.codes.insert(set.codes.end(), whole->second.codes.begin(), whole->second.codes.end());
      }
    }
    if (compose->Find("exclude") != nullptr) complete = false;
    if (complete) value_sets[std::string(*url)] = std::move(set);
  }
}

namespace {

// One validation of one resource against one profile.
class ProfileRun {
 public:
  ProfileRun(const ProfileSet::Impl& set, const Profile& profile, IssueSink& sink)
      : set_(set), profile_(profile), sink_(sink) {}

  void Run(const json::Value& resource, const std::string& expr) {
    if (resource.GetString("resourceType") != profile_.type) {
      Report(IssueSeverity::kError, "structure", expr, "profile-type",
             Cat("the profile applies to ", profile_.type, " resources"));
      return;
    }
    CheckValue(*profile_.root, resource, expr);
  }

 private:
  void Report(IssueSeverity severity, std::string_view code, std::string expr,
              std::string_view rule, std::string message) {
    sink_.Report(severity, code, std::move(expr), Cat("profile ", profile_.url, ": ", message),
                 rule);
  }

  // The instance values of profile element `node` inside object `obj`.
  std::vector<Found> Gather(const PNode& node, const json::Value& obj, const std::string& expr) {
    std::vector<Found> out;
    if (!obj.is_object()) return out;
    auto add = [&](const std::string& name, const json::Value& v) {
      if (v.is_array()) {
        for (size_t i = 0; i < v.items().size(); ++i) {
          if (!v.items()[i].is_null()) {
            out.push_back(Found{&v.items()[i], Cat(expr, ".", name, "[", i, "]"), name});
          }
        }
      } else if (!v.is_null()) {
        out.push_back(Found{&v, Cat(expr, ".", name), name});
      }
    };
    if (!node.is_choice()) {
      if (const json::Value* v = obj.Find(node.name)) {
        add(node.name, *v);
      } else if (const json::Value* ext = obj.Find("_" + node.name)) {
        add(node.name, *ext);  // a primitive present only through its extensions
      }
      return out;
    }
    std::string_view base = node.base_name();
    for (const json::Member& m : obj.members()) {
      if (m.first.size() > base.size() && m.first.starts_with(base) &&
          m.first[base.size()] >= 'A' && m.first[base.size()] <= 'Z') {
        add(m.first, m.second);
      }
    }
    return out;
  }

  void CheckChildren(const PNode& node, const json::Value& obj, const std::string& expr) {
    for (const PNode* child : node.children) {
      std::vector<Found> items = Gather(*child, obj, expr);
      CheckElement(*child, items, expr);
    }
  }

  void CheckElement(const PNode& node, const std::vector<Found>& items,
                    const std::string& parent_expr) {
    std::string where = Cat(parent_expr, ".", node.base_name(),
                            node.slice_name.empty() ? "" : ":" + node.slice_name);
    if (items.size() < node.min) {
      Report(IssueSeverity::kError, "required", where, "profile-cardinality",
             Cat("'", node.base_name(), node.slice_name.empty() ? "" : ":", node.slice_name,
                 "' needs at least ", node.min, ", found ", items.size()));
    }
    if (node.max != kUnbounded && items.size() > node.max) {
      Report(IssueSeverity::kError, "structure", where, "profile-cardinality",
             Cat("'", node.base_name(), node.slice_name.empty() ? "" : ":", node.slice_name,
                 "' allows at most ", node.max, ", found ", items.size()));
    }
    for (const Found& f : items) {
      if (node.is_choice() && !node.type_codes.empty()) {
        std::string_view type = std::string_view(f.json_name).substr(node.base_name().size());
        bool allowed = false;
        for (const std::string& t : node.type_codes) {
          allowed = allowed || CapitaliseType(t) == type;
        }
        if (!allowed) {
          Report(IssueSeverity::kError, "structure", f.expr, "profile-type",
                 Cat("the type ", type, " is not allowed here"));
          continue;
        }
      }
      CheckValue(node, *f.value, f.expr);
    }
    if (!node.slices.empty()) CheckSlices(node, items, parent_expr);
  }

  void CheckValue(const PNode& node, const json::Value& value, const std::string& expr) {
    if (node.fixed && !(value == *node.fixed)) {
      Report(IssueSeverity::kError, "value", expr, "profile-fixed",
             Cat("the value must be exactly ", Short(*node.fixed)));
    }
    if (node.pattern && !MatchesPattern(value, *node.pattern)) {
      Report(IssueSeverity::kError, "value", expr, "profile-pattern",
             Cat("the value must match the pattern ", Short(*node.pattern)));
    }
    if (node.binding == BindingStrength::kRequired && !node.value_set.empty()) {
      CheckBinding(node, value, expr);
    }
    if (value.is_object()) CheckChildren(node, value, expr);
  }

  void CheckBinding(const PNode& node, const json::Value& value, const std::string& expr) {
    const CodeSet* local = nullptr;
    const ValueSetExpansion* core = nullptr;
    if (auto it = set_.value_sets.find(node.value_set); it != set_.value_sets.end()) {
      local = &it->second;
    } else if (const ValueSetExpansion* vs = Model::R4().FindValueSet(node.value_set);
               vs != nullptr && vs->complete) {
      core = vs;
    } else {
      return;  // not expandable here: not checked (documented)
    }
    auto contains = [&](std::string_view system, std::string_view code) {
      return local != nullptr ? local->Contains(system, code) : core->Contains(system, code);
    };
    std::vector<std::pair<std::string_view, std::string_view>> codes;
    if (value.is_string()) {
      codes.emplace_back("", value.as_string());
    } else if (value.is_object()) {
      if (auto code = value.GetString("code")) {
        codes.emplace_back(value.GetString("system").value_or(""), *code);
      }
      if (const json::Value* cs = value.Find("coding"); cs != nullptr && cs->is_array()) {
        for (const json::Value& c : cs->items()) {
          if (auto code = c.GetString("code")) {
            codes.emplace_back(c.GetString("system").value_or(""), *code);
          }
        }
      }
    }
    for (const auto& [system, code] : codes) {
      if (contains(system, code)) return;
    }
    Report(IssueSeverity::kError, "code-invalid", expr, "profile-binding",
           codes.empty() ? Cat("a code from ", node.value_set, " is required")
                         : Cat("no code is in the required value set ", node.value_set));
  }

  // The value a slice fixes at discriminator `path`, from its own
  // fixed/pattern or its descendants'.
  std::optional<std::pair<json::Value, bool>> SliceValue(const PNode& slice,
                                                         std::string_view path) {
    const PNode* node = &slice;
    std::vector<std::string_view> segs;
    if (path != "$this") {
      size_t start = 0;
      while (start <= path.size()) {
        size_t dot = path.find('.', start);
        if (dot == std::string_view::npos) dot = path.size();
        segs.push_back(path.substr(start, dot - start));
        start = dot + 1;
      }
    }
    size_t i = 0;
    for (; i < segs.size(); ++i) {
      if (node->fixed || node->pattern) break;
      const PNode* next = nullptr;
      for (const PNode* c : node->children) {
        if (c->base_name() == segs[i] || c->name == segs[i]) next = c;
      }
      if (next == nullptr) break;
      node = next;
    }
    const json::Value* v = node->fixed ? &*node->fixed : node->pattern ? &*node->pattern : nullptr;
    bool is_pattern = !node->fixed && node->pattern;
    if (v == nullptr) {
      // Extensions are sliced by url; the slice names the extension by profile.
      if (path == "url" && !slice.type_profiles.empty() && i == 0) {
        return std::make_pair(json::Value::String(slice.type_profiles[0]), false);
      }
      return std::nullopt;
    }
    for (; i < segs.size(); ++i) {
      if (!v->is_object()) return std::nullopt;
      v = v->Find(segs[i]);
      if (v == nullptr) return std::nullopt;
    }
    return std::make_pair(*v, is_pattern);
  }

  static void Values(const json::Value& v, std::string_view path,
                     std::vector<const json::Value*>& out) {
    if (v.is_array()) {
      for (const json::Value& item : v.items()) Values(item, path, out);
      return;
    }
    if (path.empty() || path == "$this") {
      out.push_back(&v);
      return;
    }
    if (!v.is_object()) return;
    size_t dot = path.find('.');
    std::string_view head = path.substr(0, dot);
    std::string_view rest =
        dot == std::string_view::npos ? std::string_view() : path.substr(dot + 1);
    if (const json::Value* c = v.Find(head)) Values(*c, rest, out);
  }

  void CheckSlices(const PNode& node, const std::vector<Found>& items,
                   const std::string& parent_expr) {
    bool supported = !node.discriminators.empty() || node.is_choice();
    for (const Discriminator& d : node.discriminators) {
      bool simple = d.path.find('(') == std::string::npos;
      if ((d.type != "value" && d.type != "pattern") || !simple) supported = false;
    }
    if (!supported) {
      Report(IssueSeverity::kWarning, "not-supported", Cat(parent_expr, ".", node.base_name()),
             "profile-slicing",
             Cat("slicing of ", node.path,
                 " uses a discriminator this validator does not evaluate; its slices "
                 "were not checked"));
      return;
    }
    std::vector<std::vector<Found>> per_slice(node.slices.size());
    for (const Found& f : items) {
      bool matched = false;
      for (size_t s = 0; s < node.slices.size() && !matched; ++s) {
        const PNode& slice = *node.slices[s];
        if (node.discriminators.empty()) {  // type slices of a choice: valueQuantity
          matched = f.json_name == slice.slice_name;
        } else {
          matched = true;
          for (const Discriminator& d : node.discriminators) {
            auto expected = SliceValue(slice, d.path);
            if (!expected) {
              matched = false;
              break;
            }
            std::vector<const json::Value*> actual;
            Values(*f.value, d.path, actual);
            bool any = false;
            for (const json::Value* a : actual) {
              any = any ||
                    (expected->second || d.type == "pattern" ? MatchesPattern(*a, expected->first)
                                                             : *a == expected->first);
            }
            if (!any) matched = false;
          }
        }
        if (matched) per_slice[s].push_back(f);
      }
      if (!matched && node.closed) {
        Report(IssueSeverity::kError, "structure", f.expr, "profile-slice",
               Cat("matches none of the slices of ", node.path, ", and the slicing is closed"));
      }
    }
    for (size_t s = 0; s < node.slices.size(); ++s) {
      CheckElement(*node.slices[s], per_slice[s], parent_expr);
    }
  }

  const ProfileSet::Impl& set_;
  const Profile& profile_;
  IssueSink& sink_;
};

}  // namespace

ProfileSet::ProfileSet() : impl_(std::make_unique<Impl>()) {}
ProfileSet::~ProfileSet() = default;

size_t ProfileSet::profile_count() const { return impl_->count; }

bool ProfileSet::Has(std::string_view url) const { return impl_->Find(url) != nullptr; }

bool ProfileSet::Validate(std::string_view url, const json::Value& resource,
                          const std::string& expr, IssueSink& sink) const {
  const Profile* p = impl_->Find(url);
  if (p == nullptr) return false;
  ProfileRun(*impl_, *p, sink).Run(resource, expr);
  return true;
}

absl::StatusOr<std::unique_ptr<ProfileSet>> ProfileSet::FromResources(
    const std::vector<json::Value>& resources) {
  std::vector<std::string> origins;
  for (size_t n = 1; n <= resources.size(); ++n) origins.push_back(Cat("resource ", n));
  return Build(resources, origins);
}

// `origins[i]` names resources[i] in error messages (its file, or its position).
absl::StatusOr<std::unique_ptr<ProfileSet>> ProfileSet::Build(
    const std::vector<json::Value>& resources, const std::vector<std::string>& origins) {
  std::unique_ptr<ProfileSet> set(new ProfileSet());
  std::vector<json::Value> value_sets;
  for (const json::Value& r : resources) {
    auto rt = r.GetString("resourceType");
    if (rt == "CodeSystem") set->impl_->AddTerminology(r);
    if (rt == "ValueSet") value_sets.push_back(r);
  }
  set->impl_->ExpandValueSets(value_sets);
  for (size_t n = 0; n < resources.size(); ++n) {
    const json::Value& r = resources[n];
    if (r.GetString("resourceType") != "StructureDefinition") continue;
    if (r.GetString("derivation") != "constraint") continue;  // base types are in the model
    if (auto s = set->impl_->AddStructureDefinition(r, origins[n]); !s.ok()) return s;
  }
  return set;
}

absl::StatusOr<std::unique_ptr<ProfileSet>> ProfileSet::Load(const std::vector<std::string>& dirs) {
  std::vector<json::Value> resources;
  std::vector<std::string> origins;
  json::Limits limits;
  limits.max_total_bytes = 64 * 1024 * 1024;
  for (const std::string& dir : dirs) {
    std::error_code ec;
    if (!fs::is_directory(dir, ec)) {
      return Error(ErrorCode::kInvalidRequest, Cat(dir, ": not a directory"));
    }
    std::vector<fs::path> files;
    for (const fs::path& d : {fs::path(dir), fs::path(dir) / "package"}) {
      if (!fs::is_directory(d, ec)) continue;
      for (const auto& e : fs::directory_iterator(d, ec)) {
        if (e.is_regular_file() && e.path().extension() == ".json" &&
            e.path().filename() != "package.json" && e.path().filename() != ".index.json") {
          files.push_back(e.path());
        }
      }
    }
    std::sort(files.begin(), files.end());
    for (const fs::path& f : files) {
      std::ifstream in(f, std::ios::binary);
      std::stringstream ss;
      ss << in.rdbuf();
      auto v = json::Parse(ss.str(), limits);
      if (!v.ok()) {
        return Error(ErrorCode::kInvalidRequest,
                     Cat(f.string(), ": ", std::string(v.status().message())));
      }
      auto rt = v->GetString("resourceType");
      if (rt == "StructureDefinition" || rt == "ValueSet" || rt == "CodeSystem") {
        resources.push_back(std::move(*v));
        origins.push_back(f.string());
      }
    }
  }
  return Build(resources, origins);
}

}  // namespace fhirward::fhir
