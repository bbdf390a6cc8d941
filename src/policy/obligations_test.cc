#include "policy/obligations.h"

#include <algorithm>
#include <string>
#include <string_view>
#include <vector>

#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "json/patch.h"
#include "json/value.h"

namespace fhirward::policy {
namespace {

using json::Value;
using ::testing::ElementsAre;

// "$M" in test JSON stands for the masked placeholder, "$R" for the REDACTED
// meta.security coding.
constexpr std::string_view kMasked =
    R"({"extension":[{"url":"http://hl7.org/fhir/StructureDefinition/data-absent-reason",)"
    R"("valueCode":"masked"}]})";
constexpr std::string_view kRedactedLabel =
    R"({"system":"http://terminology.hl7.org/CodeSystem/v3-ObservationValue","code":"REDACTED"})";

std::string Expand(std::string_view text) {
  std::string out;
  for (size_t i = 0; i < text.size(); ++i) {
    if (text[i] == '$' && i + 1 < text.size() && (text[i + 1] == 'M' || text[i + 1] == 'R')) {
      out += text[i + 1] == 'M' ? kMasked : kRedactedLabel;
      ++i;
    } else {
      out += text[i];
    }
  }
  return out;
}

Value J(std::string_view text) {
  auto v = json::Parse(Expand(text));
  EXPECT_TRUE(v.ok()) << v.status() << " in " << text;
  return v.ok() ? *v : Value();
}

::testing::AssertionResult JsonIs(const Value& actual, std::string_view expected) {
  if (json::JsonEquals(actual, J(expected))) return ::testing::AssertionSuccess();
  return ::testing::AssertionFailure()
         << "got " << json::Write(actual) << "\nwant " << Expand(expected);
}

// ---------------------------------------------------------------------------
// ApplyMasks
// ---------------------------------------------------------------------------

TEST(ApplyMasks, ComplexElement) {
  Value r = J(R"({"resourceType":"Observation","id":"o1","code":{"text":"HIV test"}})");
  EXPECT_EQ(ApplyMasks(r, {"Observation.code"}), 1);
  EXPECT_TRUE(JsonIs(r, R"({"resourceType":"Observation","id":"o1","code":$M,
                            "meta":{"security":[$R]}})"));
}

TEST(ApplyMasks, ArrayBecomesOnePlaceholderItem) {
  Value r = J(R"({"resourceType":"Patient","telecom":[{"system":"phone","value":"555"},
                                                      {"system":"email","value":"a@b"}]})");
  EXPECT_EQ(ApplyMasks(r, {"Patient.telecom"}), 1);
  EXPECT_TRUE(JsonIs(r, R"({"resourceType":"Patient","telecom":[$M],"meta":{"security":[$R]}})"));
}

TEST(ApplyMasks, PrimitiveBecomesExtensionOnlyInPlace) {
  Value r = J(R"({"resourceType":"Patient","birthDate":"1970-01-01","active":true})");
  EXPECT_EQ(ApplyMasks(r, {"Patient.birthDate"}), 1);
  // The placeholder takes the primitive's place; the value itself is gone.
  EXPECT_EQ(json::Write(r), Expand(R"({"resourceType":"Patient","_birthDate":$M,"active":true,)"
                                   R"("meta":{"security":[$R]}})"));
}

TEST(ApplyMasks, PrimitiveWithExtensionLosesBoth) {
  Value r = J(R"({"resourceType":"Patient","birthDate":"1970-01-01",
                  "_birthDate":{"id":"b","extension":[{"url":"http://x/time","valueTime":"10:00:00"}]}})");
  EXPECT_EQ(ApplyMasks(r, {"Patient.birthDate"}), 1);
  EXPECT_TRUE(JsonIs(r, R"({"resourceType":"Patient","_birthDate":$M,"meta":{"security":[$R]}})"));

  // Only the extension half present.
  Value ext_only = J(R"({"resourceType":"Patient",
                         "_birthDate":{"extension":[{"url":"http://x/y","valueString":"s"}]}})");
  EXPECT_EQ(ApplyMasks(ext_only, {"Patient.birthDate"}), 1);
  EXPECT_TRUE(
      JsonIs(ext_only, R"({"resourceType":"Patient","_birthDate":$M,"meta":{"security":[$R]}})"));
}

TEST(ApplyMasks, PrimitiveArrayInEachItemOfAnArray) {
  Value r = J(R"({"resourceType":"Patient","name":[
      {"family":"Doe","given":["Jane","Q"],"_given":[null,{"extension":[{"url":"http://x","valueString":"s"}]}]},
      {"family":"Roe","given":["Richard"]},
      {"family":"Noe"}]})");
  EXPECT_EQ(ApplyMasks(r, {"Patient.name.given"}), 2);
  EXPECT_TRUE(JsonIs(r, R"({"resourceType":"Patient","name":[
      {"family":"Doe","given":[null],"_given":[$M]},
      {"family":"Roe","given":[null],"_given":[$M]},
      {"family":"Noe"}],"meta":{"security":[$R]}})"));
}

TEST(ApplyMasks, ChoiceComplexKeepsItsKey) {
  Value r = J(R"({"resourceType":"Observation","status":"final",
                  "valueQuantity":{"value":7.2,"unit":"mmol/L"}})");
  EXPECT_EQ(ApplyMasks(r, {"Observation.value[x]"}), 1);
  EXPECT_TRUE(JsonIs(r, R"({"resourceType":"Observation","status":"final","valueQuantity":$M,
                            "meta":{"security":[$R]}})"));
}

TEST(ApplyMasks, ChoicePrimitiveBecomesUnderscoreKey) {
  Value s = J(R"({"resourceType":"Observation","valueString":"positive",
                  "_valueString":{"extension":[{"url":"http://x","valueString":"y"}]}})");
  EXPECT_EQ(ApplyMasks(s, {"Observation.value[x]"}), 1);
  EXPECT_TRUE(JsonIs(s, R"({"resourceType":"Observation","_valueString":$M,
                            "meta":{"security":[$R]}})"));

  Value b = J(R"({"resourceType":"Observation","valueBoolean":false})");
  EXPECT_EQ(ApplyMasks(b, {"Observation.value[x]"}), 1);
  EXPECT_TRUE(
      JsonIs(b, R"({"resourceType":"Observation","_valueBoolean":$M,"meta":{"security":[$R]}})"));

  Value dt = J(R"({"resourceType":"Observation","valueDateTime":"2026-01-01"})");
  EXPECT_EQ(ApplyMasks(dt, {"Observation.value[x]"}), 1);
  EXPECT_TRUE(JsonIs(dt, R"({"resourceType":"Observation","_valueDateTime":$M,
                             "meta":{"security":[$R]}})"));
}

TEST(ApplyMasks, ChoiceMatchesOnlyTypeSuffixes) {
  // "value" itself and "valuex" (lower-case after the name) are not value[x].
  Value r = J(R"({"resourceType":"Observation","value":1,"valuex":2,"status":"final"})");
  EXPECT_EQ(ApplyMasks(r, {"Observation.value[x]"}), 0);
  EXPECT_TRUE(JsonIs(r, R"({"resourceType":"Observation","value":1,"valuex":2,"status":"final"})"));
}

TEST(ApplyMasks, NestedPathsThroughArrays) {
  Value r = J(R"({"resourceType":"Patient","contact":[
      {"name":{"family":"A"},"telecom":[{"value":"1"}]},
      {"name":{"family":"B"}},
      {"telecom":[{"value":"3"},{"value":"4"}]}]})");
  EXPECT_EQ(ApplyMasks(r, {"Patient.contact.telecom"}), 2);
  EXPECT_TRUE(JsonIs(r, R"({"resourceType":"Patient","contact":[
      {"name":{"family":"A"},"telecom":[$M]},
      {"name":{"family":"B"}},
      {"telecom":[$M]}],"meta":{"security":[$R]}})"));

  Value obs = J(R"({"resourceType":"Observation","component":[
      {"code":{"text":"sys"},"valueQuantity":{"value":120}},
      {"code":{"text":"note"},"valueString":"x"}]})");
  EXPECT_EQ(ApplyMasks(obs, {"Observation.component.value[x]"}), 2);
  EXPECT_TRUE(JsonIs(obs, R"({"resourceType":"Observation","component":[
      {"code":{"text":"sys"},"valueQuantity":$M},
      {"code":{"text":"note"},"_valueString":$M}],"meta":{"security":[$R]}})"));
}

TEST(ApplyMasks, PathsThroughAPrimitivesExtensions) {
  Value r = J(R"({"resourceType":"Patient","birthDate":"1970",
                  "_birthDate":{"extension":[{"url":"http://x","valueString":"s"}]}})");
  EXPECT_EQ(ApplyMasks(r, {"Patient.birthDate.extension"}), 1);
  EXPECT_TRUE(JsonIs(r, R"({"resourceType":"Patient","birthDate":"1970",
                            "_birthDate":{"extension":[$M]},"meta":{"security":[$R]}})"));
}

TEST(ApplyMasks, OtherResourceTypesAndMalformedPathsAreIgnored) {
  const std::string text =
      R"({"resourceType":"Patient","birthDate":"1970","telecom":[{"value":"1"}]})";
  Value r = J(text);
  EXPECT_EQ(
      ApplyMasks(r, {"Observation.birthDate", "patient.telecom", "Patient", "Patient..telecom", "",
                     ".telecom", "Patient.telecom.", "Patient.[x]", "Patient._birthDate"}),
      0);
  EXPECT_TRUE(JsonIs(r, text));

  Value no_type = J(R"({"birthDate":"1970"})");
  EXPECT_EQ(ApplyMasks(no_type, {".birthDate", "Patient.birthDate"}), 0);
  EXPECT_TRUE(JsonIs(no_type, R"({"birthDate":"1970"})"));

  Value not_object = J(R"(["Patient"])");
  EXPECT_EQ(ApplyMasks(not_object, {"Patient.birthDate"}), 0);
}

TEST(ApplyMasks, AbsentElementsAreANoOp) {
  const std::string text = R"({"resourceType":"Patient","id":"p","contact":[{"name":{"text":"x"}}],
                               "birthDate":null,"telecom":[]})";
  Value r = J(text);
  EXPECT_EQ(ApplyMasks(r, {"Patient.address", "Patient.contact.telecom", "Patient.birthDate",
                           "Patient.telecom", "Patient.deceased[x]"}),
            0);
  EXPECT_TRUE(JsonIs(r, text));  // in particular no REDACTED label
}

TEST(ApplyMasks, RedactedLabelAddedOnce) {
  Value r = J(R"({"resourceType":"Patient","meta":{"versionId":"3",
                  "security":[{"system":"http://terminology.hl7.org/CodeSystem/v3-Confidentiality","code":"R"}]},
                  "birthDate":"1970","gender":"female"})");
  EXPECT_EQ(ApplyMasks(r, {"Patient.birthDate"}), 1);
  EXPECT_EQ(ApplyMasks(r, {"Patient.gender"}), 1);
  EXPECT_TRUE(JsonIs(r, R"({"resourceType":"Patient","meta":{"versionId":"3",
      "security":[{"system":"http://terminology.hl7.org/CodeSystem/v3-Confidentiality","code":"R"},$R]},
      "_birthDate":$M,"_gender":$M})"));
  EXPECT_EQ(SecurityLabels(r), (std::vector<std::string>{"R", "REDACTED"}));

  // Already labelled REDACTED by someone else: not added again.
  Value pre = J(R"({"resourceType":"Patient","meta":{"security":[$R]},"gender":"male"})");
  EXPECT_EQ(ApplyMasks(pre, {"Patient.gender"}), 1);
  EXPECT_EQ(SecurityLabels(pre), (std::vector<std::string>{"REDACTED"}));
}

TEST(ApplyMasks, CountsEveryMaskedElement) {
  Value r = J(R"({"resourceType":"Patient","birthDate":"1970","telecom":[{"value":"1"}],
                  "address":[{"city":"X"}],"contact":[{"telecom":[{"value":"2"}]},{"telecom":[{"value":"3"}]}]})");
  EXPECT_EQ(ApplyMasks(r, {"Patient.birthDate", "Patient.telecom", "Patient.gender",
                           "Patient.contact.telecom", "Patient.address"}),
            5);
  EXPECT_EQ(SecurityLabels(r), (std::vector<std::string>{"REDACTED"}));
}

TEST(ApplyMasks, MaskingTwiceChangesNothingMore) {
  Value r = J(R"({"resourceType":"Observation","valueString":"x","code":{"text":"t"},
                  "component":[{"valueQuantity":{"value":1}}],"note":[{"text":"n"}]})");
  const std::vector<std::string> paths = {"Observation.value[x]", "Observation.code",
                                          "Observation.component.value[x]", "Observation.note"};
  EXPECT_EQ(ApplyMasks(r, paths), 4);
  const Value once = r;
  EXPECT_EQ(ApplyMasks(r, paths), 4);
  EXPECT_EQ(r, once);
}

// ---------------------------------------------------------------------------
// KeepStored
// ---------------------------------------------------------------------------

TEST(KeepStored, RestoresMaskedValuesAndKeepsOtherChanges) {
  const Value stored = J(R"({"resourceType":"Patient","id":"p","meta":{"versionId":"2"},
      "birthDate":"1970-01-01","telecom":[{"value":"555"}],"name":[{"family":"Doe"}]})");
  Value incoming = stored;
  ASSERT_EQ(ApplyMasks(incoming, {"Patient.birthDate", "Patient.telecom"}), 2);
  // The client edits what it can see and sends the placeholders back.
  incoming.Find("name")->items()[0].Set("family", Value::String("Roe"));

  KeepStored(incoming, &stored, {"Patient.birthDate", "Patient.telecom"});
  EXPECT_TRUE(JsonIs(incoming, R"({"resourceType":"Patient","id":"p","meta":{"versionId":"2"},
      "birthDate":"1970-01-01","telecom":[{"value":"555"}],"name":[{"family":"Roe"}]})"));
}

TEST(KeepStored, RemovesValuesTheStoredVersionLacks) {
  const Value stored = J(R"({"resourceType":"Patient","id":"p","gender":"female"})");
  Value incoming = J(R"({"resourceType":"Patient","id":"p","gender":"female",
      "birthDate":"1980","_birthDate":{"id":"x"},"telecom":[{"value":"1"}]})");
  KeepStored(incoming, &stored, {"Patient.birthDate", "Patient.telecom"});
  EXPECT_TRUE(JsonIs(incoming, R"({"resourceType":"Patient","id":"p","gender":"female"})"));

  Value created = J(R"({"resourceType":"Patient","birthDate":"1980","gender":"male"})");
  KeepStored(created, nullptr, {"Patient.birthDate"});
  EXPECT_TRUE(JsonIs(created, R"({"resourceType":"Patient","gender":"male"})"));
}

TEST(KeepStored, ChoiceElementsTakeTheStoredType) {
  const Value stored =
      J(R"({"resourceType":"Observation","valueQuantity":{"value":1},"status":"final"})");
  Value incoming = J(R"({"resourceType":"Observation","valueString":"forged","status":"amended"})");
  KeepStored(incoming, &stored, {"Observation.value[x]"});
  EXPECT_TRUE(JsonIs(incoming, R"({"resourceType":"Observation","status":"amended",
                                   "valueQuantity":{"value":1}})"));
}

TEST(KeepStored, NestedElementsAlignByPosition) {
  const Value stored = J(R"({"resourceType":"Patient","contact":[
      {"name":{"text":"A"},"telecom":[{"value":"1"}]},{"name":{"text":"B"}}]})");
  Value incoming = J(R"({"resourceType":"Patient","contact":[
      {"name":{"text":"A2"},"telecom":[$M]},
      {"name":{"text":"B"},"telecom":[{"value":"forged"}]},
      {"name":{"text":"C"},"telecom":[{"value":"new"}]}]})");
  KeepStored(incoming, &stored, {"Patient.contact.telecom"});
  EXPECT_TRUE(JsonIs(incoming, R"({"resourceType":"Patient","contact":[
      {"name":{"text":"A2"},"telecom":[{"value":"1"}]},
      {"name":{"text":"B"}},
      {"name":{"text":"C"}}]})"));
}

TEST(KeepStored, DropsAnEchoedRedactedLabel) {
  const Value stored = J(R"({"resourceType":"Patient","gender":"male"})");
  Value incoming = J(R"({"resourceType":"Patient","_gender":$M,"meta":{"security":[$R]}})");
  KeepStored(incoming, &stored, {"Patient.gender"});
  EXPECT_TRUE(JsonIs(incoming, R"({"resourceType":"Patient","gender":"male"})"));

  Value other = J(R"({"resourceType":"Patient","meta":{"versionId":"1","security":[$R,
      {"system":"http://terminology.hl7.org/CodeSystem/v3-Confidentiality","code":"R"}]}})");
  KeepStored(other, &stored, {});
  EXPECT_TRUE(JsonIs(other, R"({"resourceType":"Patient","meta":{"versionId":"1","security":[
      {"system":"http://terminology.hl7.org/CodeSystem/v3-Confidentiality","code":"R"}]}})"));

  // A label the stored version really carries stays.
  const Value labelled = J(R"({"resourceType":"Patient","meta":{"security":[$R]}})");
  Value same = labelled;
  KeepStored(same, &labelled, {"Patient.gender"});
  EXPECT_EQ(SecurityLabels(same), (std::vector<std::string>{"REDACTED"}));
}

TEST(KeepStored, StoredVersionOfAnotherTypeCountsAsNone) {
  const Value stored = J(R"({"resourceType":"Observation","birthDate":"1970"})");
  Value incoming = J(R"({"resourceType":"Patient","birthDate":"1980"})");
  KeepStored(incoming, &stored, {"Patient.birthDate"});
  EXPECT_TRUE(JsonIs(incoming, R"({"resourceType":"Patient"})"));
}

// ---------------------------------------------------------------------------
// ChangedPath
// ---------------------------------------------------------------------------

TEST(ChangedPath, FirstPathThatDiffers) {
  const Value stored =
      J(R"({"resourceType":"Observation","status":"final","code":{"text":"a","id":"1"},
                             "subject":{"reference":"Patient/1"}})");
  const std::vector<std::string> paths = {"Observation.code", "Observation.subject",
                                          "Observation.status"};
  Value same = J(R"({"resourceType":"Observation","subject":{"reference":"Patient/1"},
                     "code":{"id":"1","text":"a"},"status":"final","note":[{"text":"new"}]})");
  EXPECT_EQ(ChangedPath(same, &stored, paths), std::nullopt);

  Value changed = same;
  changed.Set("status", Value::String("amended"));
  changed.Set("subject", Value::MakeObject({{"reference", Value::String("Patient/2")}}));
  EXPECT_EQ(ChangedPath(changed, &stored, paths), "Observation.subject");
}

TEST(ChangedPath, AddedAndRemovedValuesAreChanges) {
  const Value stored = J(R"({"resourceType":"Patient","gender":"male"})");
  EXPECT_EQ(ChangedPath(J(R"({"resourceType":"Patient"})"), &stored, {"Patient.gender"}),
            "Patient.gender");
  EXPECT_EQ(ChangedPath(J(R"({"resourceType":"Patient","gender":"male","birthDate":"1970"})"),
                        &stored, {"Patient.birthDate"}),
            "Patient.birthDate");
  // Absent in both: unchanged.
  EXPECT_EQ(ChangedPath(J(R"({"resourceType":"Patient","gender":"male"})"), &stored,
                        {"Patient.birthDate"}),
            std::nullopt);
  // An extension added to a primitive is a change of that element.
  EXPECT_EQ(ChangedPath(J(R"({"resourceType":"Patient","gender":"male","_gender":{"id":"x"}})"),
                        &stored, {"Patient.gender"}),
            "Patient.gender");
}

TEST(ChangedPath, WithoutAStoredVersionAnyValueIsAChange) {
  const Value incoming = J(R"({"resourceType":"Patient","gender":"male"})");
  EXPECT_EQ(ChangedPath(incoming, nullptr, {"Patient.birthDate", "Patient.gender"}),
            "Patient.gender");
  EXPECT_EQ(ChangedPath(incoming, nullptr, {"Patient.birthDate", "Observation.gender"}),
            std::nullopt);
}

TEST(ChangedPath, NestedValuesCompareInPlace) {
  const Value stored = J(R"({"resourceType":"Patient","contact":[
      {"name":{"text":"A"},"telecom":[{"value":"1"}]},{"name":{"text":"B"}}]})");
  // Other parts of the contacts may change, and contacts may be added.
  EXPECT_EQ(ChangedPath(J(R"({"resourceType":"Patient","contact":[
      {"name":{"text":"A2"},"telecom":[{"value":"1"}]},{"name":{"text":"B"}},{"name":{"text":"C"}}]})"),
                        &stored, {"Patient.contact.telecom"}),
            std::nullopt);
  // The same telecom moved to another contact is a change.
  EXPECT_EQ(ChangedPath(J(R"({"resourceType":"Patient","contact":[
      {"name":{"text":"A"}},{"name":{"text":"B"},"telecom":[{"value":"1"}]}]})"),
                        &stored, {"Patient.contact.telecom"}),
            "Patient.contact.telecom");
  // Numbers compare as JSON numbers.
  const Value q = J(R"({"resourceType":"Observation","valueQuantity":{"value":1.0}})");
  EXPECT_EQ(ChangedPath(J(R"({"resourceType":"Observation","valueQuantity":{"value":1}})"), &q,
                        {"Observation.value[x]"}),
            std::nullopt);
  EXPECT_EQ(ChangedPath(J(R"({"resourceType":"Observation","valueString":"1"})"), &q,
                        {"Observation.value[x]"}),
            "Observation.value[x]");
}

// ---------------------------------------------------------------------------
// SecurityLabels
// ---------------------------------------------------------------------------

TEST(SecurityLabels, CodesOfAnySystem) {
  EXPECT_EQ(SecurityLabels(J(R"({"resourceType":"Observation","meta":{"security":[
                {"system":"http://terminology.hl7.org/CodeSystem/v3-ActCode","code":"PSY"},
                {"system":"http://terminology.hl7.org/CodeSystem/v3-Confidentiality","code":"R"},
                {"code":"LOCAL"},{"system":"x"},{"code":7},"junk"]}})")),
            (std::vector<std::string>{"PSY", "R", "LOCAL"}));
  EXPECT_TRUE(SecurityLabels(J(R"({"resourceType":"Observation"})")).empty());
  EXPECT_TRUE(
      SecurityLabels(J(R"({"resourceType":"Observation","meta":{"security":{}}})")).empty());
  EXPECT_TRUE(SecurityLabels(J(R"({"resourceType":"Observation","meta":"x"})")).empty());
  EXPECT_TRUE(SecurityLabels(J(R"([1])")).empty());
}

// ---------------------------------------------------------------------------
// EvaluateConsents
// ---------------------------------------------------------------------------

constexpr int64_t kNow = 1773576000;  // 2026-03-15T12:00:00Z
using Kind = ConsentVerdict::Kind;

// A privacy consent with `provision` (JSON text; empty: none).
Value Consent(
    std::string_view provision, std::string_view id = "c1", std::string_view status = "active",
    std::string_view scope_code = "patient-privacy",
    std::string_view scope_system = "http://terminology.hl7.org/CodeSystem/consentscope") {
  std::string text = R"({"resourceType":"Consent","id":")" + std::string(id) + R"(","status":")" +
                     std::string(status) + R"(","scope":{"coding":[{"system":")" +
                     std::string(scope_system) + R"(","code":")" + std::string(scope_code) +
                     R"("}]},"patient":{"reference":"Patient/pt1"})";
  if (!provision.empty()) text += R"(,"provision":)" + std::string(provision);
  text += "}";
  return J(text);
}

ConsentRequest Request(std::vector<std::string> actors = {"Practitioner/p1", "Organization/o1"}) {
  ConsentRequest r;
  r.actors = std::move(actors);
  r.purposes = {"TREAT"};
  r.now = kNow;
  r.resource_type = "Observation";
  return r;
}

Kind KindOf(std::string_view provision, const ConsentRequest& request = Request()) {
  return EvaluateConsents({Consent(provision)}, request).kind;
}

constexpr std::string_view kDenyP1 =
    R"({"type":"permit","provision":[{"type":"deny","actor":[
        {"role":{"coding":[{"system":"http://terminology.hl7.org/CodeSystem/v3-ParticipationType","code":"PRCP"}]},
         "reference":{"reference":"Practitioner/p1"}}]}]})";

TEST(Consents, NoConsentIsNone) {
  const ConsentVerdict v = EvaluateConsents({}, Request());
  EXPECT_EQ(v.kind, Kind::kNone);
  EXPECT_TRUE(v.consent_id.empty());
}

TEST(Consents, InactiveOtherScopeAndOtherResourcesAreIgnored) {
  const std::string_view deny = R"({"type":"deny"})";
  for (std::string_view status :
       {"inactive", "draft", "proposed", "rejected", "entered-in-error"}) {
    EXPECT_EQ(EvaluateConsents({Consent(deny, "c", status)}, Request()).kind, Kind::kNone)
        << status;
  }
  EXPECT_EQ(EvaluateConsents({Consent(deny, "c", "active", "research")}, Request()).kind,
            Kind::kNone);
  EXPECT_EQ(EvaluateConsents({Consent(deny, "c", "active", "adr")}, Request()).kind, Kind::kNone);
  EXPECT_EQ(
      EvaluateConsents({Consent(deny, "c", "active", "patient-privacy", "http://other")}, Request())
          .kind,
      Kind::kNone);
  Value no_scope = Consent(deny);
  no_scope.Erase("scope");
  Value other_type = Consent(deny);
  other_type.Set("resourceType", Value::String("Contract"));
  Value no_status = Consent(deny);
  no_status.Set("status", Value::Bool(true));
  EXPECT_EQ(
      EvaluateConsents({no_scope, other_type, no_status, Value::String("x"), Value()}, Request())
          .kind,
      Kind::kNone);
}

TEST(Consents, BaseDeny) {
  const ConsentVerdict v = EvaluateConsents({Consent(R"({"type":"deny"})", "c9")}, Request());
  EXPECT_EQ(v.kind, Kind::kDeny);
  EXPECT_EQ(v.consent_id, "c9");
  EXPECT_EQ(v.reason, "base provision denied");
}

TEST(Consents, BasePermitAndAbsentType) {
  const ConsentVerdict v = EvaluateConsents({Consent(R"({"type":"permit"})")}, Request());
  EXPECT_EQ(v.kind, Kind::kPermit);
  EXPECT_EQ(v.consent_id, "c1");
  EXPECT_EQ(v.reason, "base provision permitted");
  EXPECT_EQ(KindOf(R"({})"), Kind::kPermit);
  EXPECT_EQ(KindOf(""), Kind::kPermit);  // no provision at all
}

TEST(Consents, BasePermitWithNestedDenyForAnActor) {
  const ConsentVerdict p1 = EvaluateConsents({Consent(kDenyP1)}, Request());
  EXPECT_EQ(p1.kind, Kind::kDeny);
  EXPECT_EQ(p1.reason, "provision actor Practitioner/p1 denied");
  const ConsentVerdict p2 = EvaluateConsents({Consent(kDenyP1)}, Request({"Practitioner/p2"}));
  EXPECT_EQ(p2.kind, Kind::kPermit);
  EXPECT_EQ(p2.reason, "base provision permitted");
  // Any of the accessor's references counts.
  EXPECT_EQ(KindOf(kDenyP1, Request({"Practitioner/p2", "PractitionerRole/r1", "Practitioner/p1"})),
            Kind::kDeny);
}

TEST(Consents, AbsoluteActorReferencesMatchOnTypeAndId) {
  const std::string_view org = R"({"provision":[{"type":"deny","actor":[
      {"reference":{"reference":"https://ehr.example.org/fhir/Organization/o1"}}]}]})";
  EXPECT_EQ(KindOf(org), Kind::kDeny);
  EXPECT_EQ(KindOf(org, Request({"Practitioner/p1", "Organization/o10"})), Kind::kPermit);
  EXPECT_EQ(KindOf(org, Request({"Practitioner/p1", "Practitioner/o1"})), Kind::kPermit);
  const std::string_view versioned = R"({"provision":[{"type":"deny","actor":[
      {"reference":{"reference":"http://x/fhir/Practitioner/p1/_history/3"}}]}]})";
  EXPECT_EQ(KindOf(versioned), Kind::kDeny);
  EXPECT_EQ(KindOf(versioned, Request({"Practitioner/p2"})), Kind::kPermit);
}

TEST(Consents, Purpose) {
  const std::string_view research = R"({"type":"permit","provision":[{"type":"deny","purpose":[
      {"system":"http://terminology.hl7.org/CodeSystem/v3-ActReason","code":"HRESCH"}]}]})";
  ConsentRequest r = Request();
  EXPECT_EQ(KindOf(research, r), Kind::kPermit);
  r.purposes = {"TREAT", "HRESCH"};
  const ConsentVerdict v = EvaluateConsents({Consent(research)}, r);
  EXPECT_EQ(v.kind, Kind::kDeny);
  EXPECT_EQ(v.reason, "provision purpose HRESCH denied");
}

TEST(Consents, ClassIsTheResourceType) {
  const std::string_view obs = R"({"type":"permit","provision":[{"type":"deny","class":[
      {"system":"http://hl7.org/fhir/resource-types","code":"Observation"},
      {"system":"http://hl7.org/fhir/resource-types","code":"DiagnosticReport"}]}]})";
  ConsentRequest r = Request();
  EXPECT_EQ(KindOf(obs, r), Kind::kDeny);
  r.resource_type = "DiagnosticReport";
  EXPECT_EQ(KindOf(obs, r), Kind::kDeny);
  r.resource_type = "Patient";
  EXPECT_EQ(KindOf(obs, r), Kind::kPermit);
}

TEST(Consents, SecurityLabel) {
  const std::string_view psy = R"({"type":"permit","provision":[{"type":"deny","securityLabel":[
      {"system":"http://terminology.hl7.org/CodeSystem/v3-ActCode","code":"PSY"}]}]})";
  ConsentRequest r = Request();
  EXPECT_EQ(KindOf(psy, r), Kind::kPermit);
  r.labels = {"N", "PSY"};
  EXPECT_EQ(KindOf(psy, r), Kind::kDeny);
  r.labels = {"N"};
  EXPECT_EQ(KindOf(psy, r), Kind::kPermit);
}

TEST(Consents, ActionAccessOrUse) {
  const std::string access = R"({"type":"permit","provision":[{"type":"deny","action":[
      {"coding":[{"system":"http://terminology.hl7.org/CodeSystem/consentaction","code":"access"}]}]}]})";
  EXPECT_EQ(KindOf(access), Kind::kDeny);
  const std::string collect = R"({"type":"permit","provision":[{"type":"deny","action":[
      {"coding":[{"system":"http://terminology.hl7.org/CodeSystem/consentaction","code":"collect"}]},
      {"coding":[{"system":"http://other","code":"access"}]}]}]})";
  EXPECT_EQ(KindOf(collect), Kind::kPermit);
}

TEST(Consents, ConsentPeriod) {
  auto with_period = [](std::string_view period) {
    return KindOf(R"({"type":"deny","period":)" + std::string(period) + "}");
  };
  EXPECT_EQ(with_period(R"({"start":"2026-01-01","end":"2026-12-31"})"), Kind::kDeny);
  EXPECT_EQ(with_period(R"({"start":"2025-01-01","end":"2026-03-14"})"), Kind::kNone);
  EXPECT_EQ(with_period(R"({"start":"2026-03-16"})"), Kind::kNone);
  EXPECT_EQ(with_period(R"({})"), Kind::kDeny);
  // Partial dates: a start is the beginning, an end the end, of what it names.
  EXPECT_EQ(with_period(R"({"start":"2026","end":"2026"})"), Kind::kDeny);
  EXPECT_EQ(with_period(R"({"start":"2027"})"), Kind::kNone);
  EXPECT_EQ(with_period(R"({"end":"2025"})"), Kind::kNone);
  EXPECT_EQ(with_period(R"({"start":"2026-03","end":"2026-03"})"), Kind::kDeny);
  EXPECT_EQ(with_period(R"({"end":"2026-02"})"), Kind::kNone);
  EXPECT_EQ(with_period(R"({"start":"2026-04"})"), Kind::kNone);
  EXPECT_EQ(with_period(R"({"start":"2026-03-15","end":"2026-03-15"})"), Kind::kDeny);
  // Times and offsets: 13:00+02:00 is 11:00Z, before now (12:00Z).
  EXPECT_EQ(with_period(R"({"start":"2026-03-15T13:00:00+02:00"})"), Kind::kDeny);
  EXPECT_EQ(with_period(R"({"start":"2026-03-15T13:00:00Z"})"), Kind::kNone);
  EXPECT_EQ(with_period(R"({"end":"2026-03-15T11:59:59.999Z"})"), Kind::kNone);
  EXPECT_EQ(with_period(R"({"end":"2026-03-15T12:00:00Z"})"), Kind::kDeny);
  EXPECT_EQ(with_period(R"({"end":"2026-03-15T07:30:00-04:00"})"), Kind::kNone);
  EXPECT_EQ(with_period(R"({"end":"2026-03-15T07:30:00-05:00"})"), Kind::kDeny);
  EXPECT_EQ(with_period(R"({"end":"2026-03-15T08:00:00.5-04:00"})"), Kind::kDeny);
}

TEST(Consents, NestedPeriod) {
  const std::string_view p = R"({"type":"permit","provision":[
      {"type":"deny","period":{"start":"2026-03-01","end":"2026-03-31"}},
      {"type":"deny","period":{"start":"2027-01","end":"2027-02"},"purpose":[{"code":"TREAT"}]}]})";
  ConsentRequest r = Request();
  EXPECT_EQ(KindOf(p, r), Kind::kDeny);
  r.now = kNow + 31 * 86400;  // 2026-04-15
  EXPECT_EQ(KindOf(p, r), Kind::kPermit);
  r.now = 1801440000;  // 2027-02-01
  EXPECT_EQ(KindOf(p, r), Kind::kDeny);
}

TEST(Consents, DeeperProvisionsOverrideTheirParents) {
  // Deny all, except p1; but not even p1 for PSY-labelled data.
  const std::string_view p = R"({"type":"deny","provision":[{"type":"permit",
      "actor":[{"reference":{"reference":"Practitioner/p1"}}],
      "provision":[{"type":"deny","securityLabel":[{"code":"PSY"}]}]}]})";
  ConsentRequest r = Request();
  const ConsentVerdict permitted = EvaluateConsents({Consent(p)}, r);
  EXPECT_EQ(permitted.kind, Kind::kPermit);
  EXPECT_EQ(permitted.reason, "provision actor Practitioner/p1 permitted");
  r.labels = {"PSY"};
  const ConsentVerdict psy = EvaluateConsents({Consent(p)}, r);
  EXPECT_EQ(psy.kind, Kind::kDeny);
  EXPECT_EQ(psy.reason, "provision securityLabel PSY denied");
  EXPECT_EQ(KindOf(p, Request({"Practitioner/p2"})), Kind::kDeny);
}

TEST(Consents, MatchingSiblingDenyWinsOverPermit) {
  const std::string_view p = R"({"type":"deny","provision":[
      {"type":"permit","purpose":[{"code":"TREAT"}]},
      {"type":"deny","class":[{"code":"Observation"}]},
      {"type":"permit","actor":[{"reference":{"reference":"Practitioner/p1"}}]}]})";
  EXPECT_EQ(KindOf(p), Kind::kDeny);
  ConsentRequest r = Request();
  r.resource_type = "Condition";
  EXPECT_EQ(KindOf(p, r), Kind::kPermit);
}

TEST(Consents, AllStatedCriteriaMustMatch) {
  const std::string_view p = R"({"type":"permit","provision":[{"type":"deny",
      "actor":[{"reference":{"reference":"Practitioner/p1"}}],"purpose":[{"code":"HRESCH"}]}]})";
  EXPECT_EQ(KindOf(p), Kind::kPermit);  // actor matches, purpose does not
  ConsentRequest r = Request();
  r.purposes = {"HRESCH"};
  EXPECT_EQ(KindOf(p, r), Kind::kDeny);
}

TEST(Consents, DenyWinsAcrossConsents) {
  const Value permit = Consent(R"({"type":"permit"})", "a");
  const Value deny = Consent(R"({"type":"deny"})", "b");
  const Value other_permit = Consent(R"({"type":"permit"})", "c");
  for (const auto& list : {std::vector<Value>{permit, deny}, std::vector<Value>{deny, permit}}) {
    const ConsentVerdict v = EvaluateConsents(list, Request());
    EXPECT_EQ(v.kind, Kind::kDeny);
    EXPECT_EQ(v.consent_id, "b");
  }
  const ConsentVerdict both = EvaluateConsents({permit, other_permit}, Request());
  EXPECT_EQ(both.kind, Kind::kPermit);
  EXPECT_EQ(both.consent_id, "a");
  // An inactive deny does not count.
  EXPECT_EQ(
      EvaluateConsents({permit, Consent(R"({"type":"deny"})", "d", "inactive")}, Request()).kind,
      Kind::kPermit);
}

TEST(Consents, MalformedDenyProvisionsFailClosed) {
  // A deny whose criteria cannot be read is taken to match.
  EXPECT_EQ(KindOf(R"({"type":"permit","provision":[{"type":"deny","actor":"Practitioner/p9"}]})"),
            Kind::kDeny);
  EXPECT_EQ(KindOf(R"({"type":"permit","provision":[{"type":"deny","actor":[{"role":{}}]}]})"),
            Kind::kDeny);
  EXPECT_EQ(
      KindOf(R"({"type":"permit","provision":[{"type":"deny","period":{"start":"yesterday"}}]})"),
      Kind::kDeny);
  EXPECT_EQ(KindOf(R"({"type":"permit","provision":[{"type":"deny","purpose":[]}]})"), Kind::kDeny);
  EXPECT_EQ(
      KindOf(R"({"type":"permit","provision":[{"type":"deny","securityLabel":[{"code":1}]}]})"),
      Kind::kDeny);
  // Criteria this evaluator does not understand are unreadable too.
  EXPECT_EQ(KindOf(R"({"type":"permit","provision":[{"type":"deny",
                       "data":[{"meaning":"instance","reference":{"reference":"Observation/x"}}]}]})"),
            Kind::kDeny);
  // ...unless another criterion clearly does not match.
  EXPECT_EQ(KindOf(R"({"type":"permit","provision":[{"type":"deny","actor":7,
                       "class":[{"code":"Patient"}]}]})"),
            Kind::kPermit);
  // A base deny with an unreadable period still applies.
  EXPECT_EQ(KindOf(R"({"type":"deny","period":{"start":"2026-13-01"}})"), Kind::kDeny);
  EXPECT_EQ(KindOf(R"({"type":"deny","period":"always"})"), Kind::kDeny);
  // Unknown or missing nested types, and unreadable provisions, deny.
  EXPECT_EQ(KindOf(R"({"type":"permit","provision":[{"type":"maybe"}]})"), Kind::kDeny);
  EXPECT_EQ(KindOf(R"({"type":"permit","provision":[{"actor":[
                       {"reference":{"reference":"Practitioner/p1"}}]}]})"),
            Kind::kDeny);
  EXPECT_EQ(KindOf(R"({"type":"permit","provision":[42]})"), Kind::kDeny);
  EXPECT_EQ(KindOf(R"({"type":"permit","provision":"deny"})"), Kind::kDeny);
  EXPECT_EQ(KindOf(R"("deny")"), Kind::kDeny);
  EXPECT_EQ(KindOf(R"({"type":7})"), Kind::kDeny);
  // A nested provision given as one object instead of an array still counts.
  EXPECT_EQ(
      KindOf(R"({"type":"permit","provision":{"type":"deny","class":[{"code":"Observation"}]}})"),
      Kind::kDeny);
}

TEST(Consents, MalformedPermitProvisionsDoNotPermit) {
  // Base deny; a permit whose criteria cannot be read does not override it.
  EXPECT_EQ(KindOf(R"({"type":"deny","provision":[{"type":"permit","actor":{"reference":"x"}}]})"),
            Kind::kDeny);
  EXPECT_EQ(KindOf(R"({"type":"deny","provision":[{"type":"permit",
                       "period":{"end":"2026-03-15T25:00:00Z"}}]})"),
            Kind::kDeny);
  EXPECT_EQ(KindOf(R"({"type":"deny","provision":[{"type":"permit",
                       "actor":[{"reference":{"reference":"Practitioner/p1"}}],
                       "modifierExtension":[{"url":"http://x","valueBoolean":true}]}]})"),
            Kind::kDeny);
  // A base permit with an unreadable period does not permit (but its denies
  // still count).
  EXPECT_EQ(KindOf(R"({"type":"permit","period":{"start":20260101}})"), Kind::kNone);
  EXPECT_EQ(KindOf(R"({"type":"permit","period":{"start":20260101},"provision":[
                       {"type":"deny","class":[{"code":"Observation"}]}]})"),
            Kind::kDeny);
  // A permit under a deny whose match is unknown does not count either.
  EXPECT_EQ(KindOf(R"({"type":"deny","provision":[{"type":"deny","actor":"x","provision":[
                       {"type":"permit","class":[{"code":"Observation"}]}]}]})"),
            Kind::kDeny);
}

TEST(Consents, DeepNestingDoesNotCrash) {
  std::string p = R"({"type":"deny"})";
  for (int i = 0; i < 40; ++i) p = R"({"type":"permit","provision":[)" + p + "]}";
  json::Limits limits;
  limits.max_depth = 256;
  auto parsed = json::Parse(p, limits);
  ASSERT_TRUE(parsed.ok());
  Value consent = Consent("{}");
  consent.Set("provision", *parsed);
  const ConsentVerdict v = EvaluateConsents({consent}, Request());
  EXPECT_EQ(v.kind, Kind::kDeny);
}

TEST(ConsentLabels, NamesEveryLabelCriterionAtAnyDepthSortedOnce) {
  EXPECT_TRUE(ConsentLabels(Consent("")).empty());
  EXPECT_TRUE(ConsentLabels(Consent(kDenyP1)).empty());
  const Value c = Consent(R"({"type":"permit","securityLabel":[{"code":"R"}],"provision":[
      {"type":"deny","securityLabel":[{"code":"PSY"},{"code":"ETH"},{"system":"x"}],
       "provision":{"type":"permit","securityLabel":[{"code":"PSY"},{"code":"HIV"}]}}]})");
  EXPECT_THAT(ConsentLabels(c), ElementsAre("ETH", "HIV", "PSY", "R"));
}

// Search narrowing relies on it: a label the consent does not name never
// changes its verdict; a named one may.
TEST(ConsentLabels, UnnamedLabelsNeverChangeTheVerdict) {
  const std::vector<std::string_view> provisions = {
      kDenyP1,
      R"({"type":"permit","provision":[{"type":"deny","securityLabel":[{"code":"PSY"}]}]})",
      R"({"type":"deny","provision":[{"type":"permit","securityLabel":[{"code":"N"}],
          "provision":[{"type":"deny","securityLabel":[{"code":"PSY"}]}]}]})",
      R"({"type":"permit","provision":[{"type":"deny","data":[{"meaning":"instance",
          "reference":{"reference":"Observation/o9"}}]}]})",
  };
  for (std::string_view text : provisions) {
    const Value c = Consent(text);
    const auto named = ConsentLabels(c);
    for (const std::vector<std::string>& base :
         std::vector<std::vector<std::string>>{{}, {"PSY"}, {"N"}, {"N", "PSY"}}) {
      ConsentRequest r = Request();
      r.labels = base;
      const Kind before = EvaluateConsents({c}, r).kind;
      for (const char* other : {"R", "V", "HIV", "ZZ"}) {
        if (std::find(named.begin(), named.end(), other) != named.end()) continue;
        ConsentRequest more = r;
        more.labels.push_back(other);
        EXPECT_EQ(EvaluateConsents({c}, more).kind, before) << text << " + " << other;
      }
    }
  }
  // The named label decides.
  ConsentRequest psy = Request();
  psy.labels = {"PSY"};
  EXPECT_EQ(KindOf(provisions[1], psy), Kind::kDeny);
  EXPECT_EQ(KindOf(provisions[1]), Kind::kPermit);
}

}  // namespace
}  // namespace fhirward::policy
