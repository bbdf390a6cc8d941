// What an authorization decision costs (policy::PolicyEngine), on one thread, with Google
// Benchmark. Each case is the request step (Authorize) and, for reads, the per-resource step
// (AuthorizeResource) the server runs on the stored resource:
//
//   scopes_read             the built-in SMART-scopes engine (what servers without a policy
//                           file run): user/*.rs read of an Observation
//   app_read                policies/default.toml, token without roles (smart-app role)
//   clinician_read          policies/default.toml, clinician related to N patients through a
//                           care team (N = 50), the patient has one Consent (a label-specific
//                           deny), the resource carries one security label
//   clinician_search/N      the request step of a narrowed Observation search by that
//                           clinician: N related patients, each patient's consents looked at to
//                           narrow the confinement (one in ten has a Consent)
//   researcher_mask_patient ApplyMasks of the researcher's masked elements on a Patient with
//                           identifiers, name, telecom, address (the output obligation)
//
// Facts (relationships, consents) come from memory, as the server's StorePolicyFacts serves
// them from its cache (policy.cache_seconds): a cache miss adds one store search.
//
// usage: policy_bench [--benchmark_min_time=1] [other Google Benchmark flags]; `make bench-policy`
// runs it pinned to one core with the shipped policies/default.toml.
#include <benchmark/benchmark.h>

#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <memory>
#include <string>
#include <vector>

#include "json/value.h"
#include "policy/obligations.h"
#include "policy/policy.h"
#include "policy/policy_set.h"
#include "policy/scenario.h"

namespace fw = fhirward;
namespace policy = fhirward::policy;

namespace {

std::string g_policy_file = FHIRWARD_SOURCE_DIR "/policies/default.toml";

std::shared_ptr<const policy::PolicySet> DefaultPolicy() {
  static const std::shared_ptr<const policy::PolicySet> p = [] {
    policy::PolicyLoad l = policy::LoadPolicyFile(g_policy_file);
    for (const auto& e : l.errors) std::fprintf(stderr, "%s\n", e.ToString().c_str());
    if (!l.policy) std::exit(1);
    return l.policy;
  }();
  return p;
}

constexpr int64_t kNow = 1772445600;  // 2026-03-02T10:00:00Z, a Monday

fw::json::Value Json(std::string_view text) {
  auto v = fw::json::Parse(text, {});
  if (!v.ok()) std::exit(1);
  return *std::move(v);
}

const char* kConsent = R"({"resourceType": "Consent", "id": "c-psy", "status": "active",
 "scope": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/consentscope", "code": "patient-privacy"}]},
 "patient": {"reference": "Patient/p0"},
 "provision": {"type": "permit", "provision": [{
   "type": "deny",
   "actor": [{"reference": {"reference": "Practitioner/pr1"}}],
   "securityLabel": [{"system": "http://terminology.hl7.org/CodeSystem/v3-ActCode", "code": "PSY"}]}]}})";

// In-memory facts: `related` patients p0..pN-1; every tenth patient has the consent.
class BenchFacts final : public policy::PolicyFacts {
 public:
  explicit BenchFacts(int related) : consent_(Json(kConsent)) {
    for (int i = 0; i < related; ++i) patients_.push_back("p" + std::to_string(i));
  }
  absl::StatusOr<std::vector<std::string>> RelatedPatients(const policy::RelationshipSource& source,
                                                           const std::string&) override {
    if (source.id != "care-team") return std::vector<std::string>();
    return patients_;
  }
  absl::StatusOr<std::vector<fw::json::Value>> Consents(const std::string& patient) override {
    if (patient.size() > 1 && (std::stoi(patient.substr(1)) % 10) == 0) {
      return std::vector<fw::json::Value>{consent_};
    }
    return std::vector<fw::json::Value>();
  }
  absl::StatusOr<std::vector<std::string>> ConsentPatients() override {
    std::vector<std::string> out;
    for (size_t i = 0; i < patients_.size(); i += 10) out.push_back(patients_[i]);
    std::sort(out.begin(), out.end());
    return out;
  }
  absl::StatusOr<std::optional<policy::BreakGlassEpisode>> ActiveBreakGlass(const std::string&,
                                                                            const std::string&,
                                                                            const std::string&,
                                                                            int64_t) override {
    return std::optional<policy::BreakGlassEpisode>();
  }
  absl::StatusOr<policy::BreakGlassEpisode> OpenBreakGlass(policy::BreakGlassEpisode e) override {
    return e;
  }

 private:
  std::vector<std::string> patients_;
  fw::json::Value consent_;
};

policy::Principal Principal(std::string scopes, std::vector<std::string> roles,
                            std::string fhir_user) {
  policy::Principal p;
  p.subject = "bench-user";
  p.client_id = "bench-client";
  p.scope_text = scopes;
  p.scopes = policy::ParseScopes(scopes);
  p.has_roles_claim = !roles.empty();
  p.roles = std::move(roles);
  p.fhir_user = std::move(fhir_user);
  p.purpose_of_use = {"TREAT"};
  return p;
}

policy::Environment Env() {
  policy::Environment env;
  env.now = kNow;
  env.client_address = "10.1.2.3";
  return env;
}

void RunRead(benchmark::State& state, const policy::PolicyEngine& engine,
             const policy::Principal& p) {
  policy::AccessRequest req{policy::Interaction::kRead, "Observation", "o1"};
  const policy::Environment env = Env();
  const std::vector<std::string> patients = {"p0"};
  const std::vector<std::string> labels = {"N"};
  policy::ResourceFacts r;
  r.type = "Observation";
  r.patients = &patients;
  r.in_compartment_definition = true;
  r.labels = &labels;
  for (auto _ : state) {
    policy::Decision d = engine.Authorize(p, req, env);
    policy::Decision rd = engine.AuthorizeResource(p, d, req.interaction, r, env);
    if (!rd.allow) state.SkipWithError(("denied: " + rd.Summary()).c_str());
    benchmark::DoNotOptimize(rd);
  }
}

void BM_ScopesRead(benchmark::State& state) {
  auto engine = policy::NewScopePolicyEngine();
  RunRead(state, *engine, Principal("user/*.rs", {}, ""));
}
BENCHMARK(BM_ScopesRead)->Name("scopes_read");

void BM_AppRead(benchmark::State& state) {
  BenchFacts facts(50);
  auto engine = policy::NewPolicyEngine(DefaultPolicy(), nullptr, &facts);
  RunRead(state, *engine, Principal("user/*.rs", {}, ""));
}
BENCHMARK(BM_AppRead)->Name("app_read");

void BM_ClinicianRead(benchmark::State& state) {
  BenchFacts facts(50);
  auto engine = policy::NewPolicyEngine(DefaultPolicy(), nullptr, &facts);
  RunRead(state, *engine, Principal("user/*.cruds", {"clinician"}, "Practitioner/pr1"));
}
BENCHMARK(BM_ClinicianRead)->Name("clinician_read");

void BM_ClinicianSearch(benchmark::State& state) {
  BenchFacts facts(static_cast<int>(state.range(0)));
  auto engine = policy::NewPolicyEngine(DefaultPolicy(), nullptr, &facts);
  const policy::Principal p = Principal("user/*.cruds", {"clinician"}, "Practitioner/pr1");
  policy::AccessRequest req{policy::Interaction::kSearch, "Observation", ""};
  const policy::Environment env = Env();
  for (auto _ : state) {
    policy::Decision d = engine->Authorize(p, req, env);
    if (!d.allow || !d.obligations.patients ||
        d.obligations.patients->size() != static_cast<size_t>(state.range(0))) {
      state.SkipWithError(("unexpected: " + d.Summary()).c_str());
    }
    benchmark::DoNotOptimize(d);
  }
}
BENCHMARK(BM_ClinicianSearch)->Name("clinician_search")->Arg(10)->Arg(100)->Arg(1000);

void BM_ResearcherMaskPatient(benchmark::State& state) {
  const policy::Role* role = DefaultPolicy()->FindRole("researcher");
  if (role == nullptr) {
    state.SkipWithError("no researcher role");
    return;
  }
  const fw::json::Value patient = Json(R"({"resourceType": "Patient", "id": "p0",
    "meta": {"versionId": "3", "lastUpdated": "2026-03-01T09:00:00Z"},
    "identifier": [{"system": "urn:oid:1.2.36.146.595.217.0.1", "value": "12345"},
                   {"system": "http://hl7.org/fhir/sid/us-ssn", "value": "000-00-0000"}],
    "active": true,
    "name": [{"use": "official", "family": "Demo-Kalo", "given": ["Ana", "Lu"]}],
    "telecom": [{"system": "phone", "value": "555-0100", "use": "home"},
                {"system": "email", "value": "ana@example.org"}],
    "gender": "female", "birthDate": "1974-12-25",
    "address": [{"line": ["1 Main St"], "city": "Springfield", "postalCode": "00000"}]})");
  for (auto _ : state) {
    fw::json::Value copy = patient;
    int masked = policy::ApplyMasks(copy, role->masked);
    if (masked == 0) state.SkipWithError("nothing masked");
    benchmark::DoNotOptimize(copy);
  }
}
BENCHMARK(BM_ResearcherMaskPatient)->Name("researcher_mask_patient");

}  // namespace

int main(int argc, char** argv) {
  if (const char* f = std::getenv("FHIRWARD_POLICY_FILE")) g_policy_file = f;
  benchmark::Initialize(&argc, argv);
  if (benchmark::ReportUnrecognizedArguments(argc, argv)) return 1;
  DefaultPolicy();
  benchmark::RunSpecifiedBenchmarks();
  benchmark::Shutdown();
  return 0;
}
