// libFuzzer target for consents and element masking (policy/obligations.h).
//
// The input is read as JSON with small limits. When it is an object:
//  - EvaluateConsents takes it as a patient's Consent for a few requests,
//    alone and beside an active permitting consent; it must not crash, a
//    kNone verdict carries no consent id or reason, a permit or deny a reason,
//    and beside the permitting consent the verdict is a deny exactly when the
//    input alone denies (deny wins), a permit otherwise; adding a label that
//    ConsentLabels does not name to a request never changes the verdict.
//  - ApplyMasks masks it at a few paths under its own resourceType (once
//    without "<type>.meta" among them, once with it). The result must re-read
//    to an equal value and carry the REDACTED label when anything was masked;
//    masking it again must change nothing (without the meta path); KeepStored
//    with the original as the stored version must undo the masking (ChangedPath
//    sees no change at the paths, and the whole resource equals the original
//    when the meta path was masked too or the original had no meta), and
//    KeepStored without a stored version must leave nothing at the paths.
#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <string>
#include <string_view>
#include <vector>

#include "json/patch.h"
#include "json/value.h"
#include "policy/obligations.h"

namespace {

using fhirward::json::JsonEquals;
using fhirward::json::Limits;
using fhirward::json::Parse;
using fhirward::json::Value;
using fhirward::json::Write;
using fhirward::policy::ApplyMasks;
using fhirward::policy::ChangedPath;
using fhirward::policy::ConsentLabels;
using fhirward::policy::ConsentRequest;
using fhirward::policy::ConsentVerdict;
using fhirward::policy::EvaluateConsents;
using fhirward::policy::KeepStored;
using fhirward::policy::SecurityLabels;

[[noreturn]] void Die(const char* what) {
  std::fprintf(stderr, "policy_consent_fuzz: %s\n", what);
  std::abort();
}

Value PermittingConsent() {
  auto v =
      Parse(R"({"resourceType":"Consent","id":"fuzz-permit","status":"active",)"
            R"("scope":{"coding":[{"system":"http://terminology.hl7.org/CodeSystem/consentscope",)"
            R"("code":"patient-privacy"}]},"provision":{"type":"permit"}})");
  if (!v.ok()) Die("permitting consent does not parse");
  return *v;
}

void CheckConsents(const Value& consent) {
  static const Value permitting = PermittingConsent();
  std::vector<ConsentRequest> requests(3);
  requests[0].actors = {"Practitioner/p1", "Organization/o1"};
  requests[0].purposes = {"TREAT"};
  requests[0].now = 1773576000;  // 2026-03-15T12:00:00Z
  requests[0].resource_type = "Observation";
  requests[1].actors = {"https://ehr.example.org/fhir/Practitioner/p2"};
  requests[1].purposes = {"HRESCH", "ETREAT"};
  requests[1].now = 0;
  requests[1].resource_type = "Patient";
  requests[1].labels = {"PSY", "R"};
  requests[2].now = -62135596800;  // 0001-01-01
  for (const ConsentRequest& request : requests) {
    const ConsentVerdict alone = EvaluateConsents({consent}, request);
    if (alone.kind == ConsentVerdict::Kind::kNone) {
      if (!alone.consent_id.empty() || !alone.reason.empty()) Die("kNone verdict with details");
    } else if (alone.reason.empty()) {
      Die("verdict without a reason");
    }
    const ConsentVerdict both = EvaluateConsents({permitting, consent}, request);
    const bool deny = alone.kind == ConsentVerdict::Kind::kDeny;
    if (both.kind != (deny ? ConsentVerdict::Kind::kDeny : ConsentVerdict::Kind::kPermit)) {
      Die("deny does not win over permit");
    }
    if (deny && both.consent_id != alone.consent_id) Die("deny from another consent");
    if (!deny && both.consent_id != "fuzz-permit") Die("permit from the wrong consent");
    // Search narrowing relies on it: labels the consent does not name never
    // change its verdict.
    const std::vector<std::string> named = ConsentLabels(consent);
    for (const char* other : {"ZZ-UNNAMED", "PSY", "R", ""}) {
      if (std::find(named.begin(), named.end(), other) != named.end()) continue;
      ConsentRequest more = request;
      more.labels.push_back(other);
      if (EvaluateConsents({consent}, more).kind != alone.kind) {
        Die("a label the consent does not name changed its verdict");
      }
    }
  }
}

void CheckMasks(const Value& original, const std::vector<std::string>& paths, bool full_restore,
                bool idempotent) {
  Value masked = original;
  const int count = ApplyMasks(masked, paths);
  if (count < 0) Die("negative mask count");
  if (count == 0 && !(masked == original)) Die("nothing masked but the resource changed");
  if (count > 0) {
    bool redacted = false;
    for (const std::string& label : SecurityLabels(masked))
      redacted = redacted || label == "REDACTED";
    if (!redacted) Die("masked resource without a REDACTED label");
  }
  auto again = Parse(Write(masked));
  if (!again.ok() || !(*again == masked)) Die("masked resource does not re-read equal");

  if (idempotent) {
    Value twice = masked;
    ApplyMasks(twice, paths);
    if (!(twice == masked)) Die("masking is not idempotent");
  }

  Value restored = masked;
  KeepStored(restored, &original, paths);
  if (ChangedPath(restored, &original, paths)) Die("KeepStored left a change at a path");
  if (full_restore && !JsonEquals(restored, original)) Die("KeepStored did not undo the masking");

  // Without a stored version nothing at the paths survives.
  Value created = masked;
  KeepStored(created, nullptr, paths);
  if (ChangedPath(created, nullptr, paths)) Die("KeepStored without stored left a value");
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  Limits limits;
  limits.max_depth = 24;
  limits.max_string_bytes = 256;
  limits.max_array_items = 32;
  limits.max_object_members = 32;
  limits.max_total_bytes = 1 << 14;
  auto parsed = Parse(std::string_view(reinterpret_cast<const char*>(data), size), limits);
  if (!parsed.ok() || !parsed->is_object()) return 0;
  const Value& resource = *parsed;

  CheckConsents(resource);

  const std::string type(resource.GetString("resourceType").value_or("Consent"));
  std::vector<std::string> paths;
  for (const char* element : {".provision.actor", ".provision.provision.period", ".value[x]",
                              ".component.value[x]", ".name.given", ".birthDate.extension",
                              ".birthDate", ".contact.telecom", ".extension", ".scope"}) {
    paths.push_back(type + element);
  }
  CheckMasks(resource, paths, resource.Find("meta") == nullptr, true);
  // Masking meta itself is not idempotent on a malformed (non-object) meta: the
  // label then goes to a new "meta" beside the masked "_meta".
  paths.push_back(type + ".meta");
  CheckMasks(resource, paths, true, false);
  return 0;
}
