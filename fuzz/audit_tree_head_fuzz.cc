// Outside input to the audit module: tree heads held by auditors
// (`audit verify --head`) and stored records read back (AuditRecord::FromJson).
// Property: a head that parses was signed by the key (nothing forged verifies).
#include <cstddef>
#include <cstdint>
#include <string>

#include "audit/audit_log.h"
#include "jose/jws.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  static const fhirward::jose::SigningKey* key = [] {
    auto k = fhirward::jose::SigningKey::Generate(fhirward::jose::Algorithm::kES256, "fuzz");
    return new fhirward::jose::SigningKey(std::move(*k));
  }();
  std::string text(reinterpret_cast<const char*>(data), size);
  auto head = fhirward::audit::ParseTreeHead(text, key->public_key());
  if (head.ok() && head->jws != text) __builtin_trap();
  auto rec = fhirward::audit::AuditRecord::FromJson(text);
  if (rec.ok()) {
    // Whatever reads back serialises and reads back the same.
    auto again = fhirward::audit::AuditRecord::FromJson(rec->ToJson());
    if (!again.ok() || again->ToJson() != rec->ToJson()) __builtin_trap();
  }
  return 0;
}
