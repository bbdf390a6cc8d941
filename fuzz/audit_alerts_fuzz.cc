// Outside input to the alert rules: audit records whose fields come from
// requests (subjects, addresses, client ids, times, decisions), one JSON
// record per line, evaluated by every kind of rule with small thresholds;
// the first line also as a webhook URL (CheckSinkConfig) and every line as a
// record time.
// Properties: no crash; alert records serialise and read back the same;
// alert records never raise alerts; a parsed time formats and parses back to
// the same instant.
#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>

#include "audit/alerts.h"
#include "audit/sink.h"
#include "common/clock.h"

namespace {

std::vector<fhirward::audit::AlertRule> Rules() {
  using fhirward::audit::AlertRule;
  std::vector<AlertRule> rules;
  AlertRule a{.name = "m", .kind = "mass_access", .patients = 3, .resources = 10};
  AlertRule b{.name = "f", .kind = "failed_login", .by = "address", .threshold = 2};
  AlertRule c{.name = "b", .kind = "break_glass"};
  AlertRule d{.name = "d", .kind = "denial_spike", .by = "principal", .threshold = 2};
  AlertRule e{.name = "a", .kind = "anomaly"};
  e.bucket_seconds = 1;
  e.warmup_buckets = 2;
  e.min_requests = 1;
  e.min_patients = 1;
  e.z = 0.5;
  for (AlertRule* r : {&a, &b, &c, &d, &e}) {
    if (!fhirward::audit::CheckAlertRule(*r).ok()) __builtin_trap();
    rules.push_back(*r);
  }
  return rules;
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  using namespace fhirward::audit;
  std::string_view text(reinterpret_cast<const char*>(data), size);
  AlertRules eval(Rules(), "fuzz");
  int64_t seq = 0;
  bool first = true;
  while (!text.empty()) {
    size_t nl = text.find('\n');
    std::string_view line = text.substr(0, nl);
    text = nl == std::string_view::npos ? std::string_view() : text.substr(nl + 1);
    if (first) {
      SinkConfig w{.name = "w", .type = "webhook", .url = std::string(line)};
      (void)CheckSinkConfig(w);
      first = false;
    }
    // FormatInstant (nanosecond time_point) is exact up to 2262.
    if (auto ms = RecordTimeMs(line); ms && *ms >= 0 && *ms < 9000000000000) {
      auto again = RecordTimeMs(fhirward::FormatInstant(
          std::chrono::system_clock::time_point(std::chrono::milliseconds(*ms))));
      if (!again || *again != *ms) __builtin_trap();
    }
    auto rec = AuditRecord::FromJson(line);
    if (!rec.ok()) continue;
    auto alerts = eval.Observe(++seq, *rec);
    if (!alerts.empty() && rec->action.rfind("alert.", 0) == 0) __builtin_trap();
    for (const AuditRecord& a : alerts) {
      auto back = AuditRecord::FromJson(a.ToJson());
      if (!back.ok() || back->ToJson() != a.ToJson()) __builtin_trap();
      if (a.action.rfind("alert.", 0) != 0) __builtin_trap();
    }
  }
  (void)eval.Advance(253402300799000);
  return 0;
}
