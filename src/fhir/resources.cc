#include "fhir/resources.h"

#include <algorithm>
#include <initializer_list>

namespace fhirward::fhir {
namespace {

struct CompartmentRule {
  std::string_view type;
  std::initializer_list<std::string_view> paths;
};

#include "fhir/r4_tables.inc"

// Walks a dotted element path, flattening arrays, and collects Reference.reference strings.
void CollectReferences(const json::Value& node, std::string_view path,
                       std::vector<std::string_view>& out) {
  if (node.is_array()) {
    for (const auto& item : node.items()) CollectReferences(item, path, out);
    return;
  }
  if (!node.is_object()) return;
  if (path.empty()) {
    if (auto ref = node.GetString("reference")) out.push_back(*ref);
    return;
  }
  size_t dot = path.find('.');
  std::string_view head = path.substr(0, dot);
  std::string_view rest = dot == std::string_view::npos ? std::string_view() : path.substr(dot + 1);
  if (const json::Value* child = node.Find(head)) CollectReferences(*child, rest, out);
}

// "Patient/1", ".../Patient/1", "Patient/1/_history/2" → "1"; anything else → "".
std::string_view PatientIdOf(std::string_view ref) {
  size_t hist = ref.find("/_history/");
  if (hist != std::string_view::npos) ref = ref.substr(0, hist);
  size_t pos = ref.rfind("Patient/");
  if (pos == std::string_view::npos) return {};
  if (pos != 0 && ref[pos - 1] != '/') return {};
  std::string_view id = ref.substr(pos + 8);
  return IsValidId(id) ? id : std::string_view();
}

}  // namespace

std::span<const std::string_view> ResourceTypes() { return kGeneratedResourceTypes; }

bool IsResourceType(std::string_view type) {
  return std::binary_search(std::begin(kGeneratedResourceTypes), std::end(kGeneratedResourceTypes),
                            type);
}

bool IsValidId(std::string_view id) {
  if (id.empty() || id.size() > 64) return false;
  for (char c : id) {
    bool ok = (c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') ||
              c == '-' || c == '.';
    if (!ok) return false;
  }
  return true;
}

bool InPatientCompartmentDefinition(std::string_view type) {
  for (const auto& rule : kGeneratedPatientCompartment) {
    if (rule.type == type) return true;
  }
  return false;
}

std::vector<std::string> PatientCompartmentsOf(std::string_view type, const json::Value& resource) {
  std::vector<std::string> ids;
  auto add = [&](std::string_view id) {
    if (!id.empty() && std::find(ids.begin(), ids.end(), id) == ids.end()) ids.emplace_back(id);
  };
  if (type == "Patient") {
    if (auto id = resource.GetString("id"); id && IsValidId(*id)) add(*id);
  }
  for (const auto& rule : kGeneratedPatientCompartment) {
    if (rule.type != type) continue;
    std::vector<std::string_view> refs;
    for (std::string_view path : rule.paths) CollectReferences(resource, path, refs);
    for (std::string_view ref : refs) add(PatientIdOf(ref));
  }
  return ids;
}

}  // namespace fhirward::fhir
