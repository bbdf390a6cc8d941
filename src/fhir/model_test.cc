#include "fhir/model.h"

#include <gtest/gtest.h>

#include "fhir/resources.h"

namespace fhirward::fhir {
namespace {

const Model& M() { return Model::R4(); }

TEST(ModelTest, EveryResourceTypeIsAConcreteResource) {
  for (std::string_view name : ResourceTypes()) {
    const TypeDef* t = M().FindType(name);
    ASSERT_NE(t, nullptr) << name;
    EXPECT_EQ(t->kind, TypeKind::kResource) << name;
    EXPECT_FALSE(t->is_abstract) << name;
    EXPECT_TRUE(M().IsA(name, "Resource")) << name;
    ASSERT_NE(t->root, nullptr) << name;
  }
  EXPECT_TRUE(M().FindType("DomainResource")->is_abstract);
  EXPECT_EQ(M().FindType("NotAType"), nullptr);
}

TEST(ModelTest, PatientElementsHaveSpecCardinalityAndTypes) {
  const ElementDef* gender = M().FindElement("Patient.gender");
  ASSERT_NE(gender, nullptr);
  EXPECT_EQ(gender->min, 0u);
  EXPECT_EQ(gender->max, 1u);
  ASSERT_EQ(gender->types.size(), 1u);
  EXPECT_EQ(gender->types[0], "code");
  EXPECT_EQ(gender->binding, BindingStrength::kRequired);
  EXPECT_EQ(gender->value_set, "http://hl7.org/fhir/ValueSet/administrative-gender");

  const ElementDef* name = M().FindElement("Patient.name");
  ASSERT_NE(name, nullptr);
  EXPECT_EQ(name->max, kUnbounded);
  EXPECT_TRUE(name->is_array());

  const ElementDef* link_other = M().FindElement("Patient.link.other");
  ASSERT_NE(link_other, nullptr);
  EXPECT_EQ(link_other->min, 1u);
  EXPECT_EQ(link_other->target_types, (std::vector<std::string>{"Patient", "RelatedPerson"}));
}

TEST(ModelTest, ResolvesChoiceMembers) {
  const TypeDef* obs = M().FindType("Observation");
  auto q = Model::ResolveChild(obs->children, "valueQuantity");
  ASSERT_TRUE(q.has_value());
  EXPECT_EQ(q->element->path, "Observation.value[x]");
  EXPECT_EQ(q->type, "Quantity");
  auto dt = Model::ResolveChild(obs->children, "effectiveDateTime");
  ASSERT_TRUE(dt.has_value());
  EXPECT_EQ(dt->type, "dateTime");
  EXPECT_FALSE(Model::ResolveChild(obs->children, "valueFoo").has_value());
  EXPECT_FALSE(Model::ResolveChild(obs->children, "value").has_value());
  EXPECT_FALSE(Model::ResolveChild(obs->children, "valuequantity").has_value());
  auto status = Model::ResolveChild(obs->children, "status");
  ASSERT_TRUE(status.has_value());
  EXPECT_EQ(status->type, "code");
}

TEST(ModelTest, InheritedAndInlineChildren) {
  const TypeDef* patient = M().FindType("Patient");
  EXPECT_TRUE(Model::ResolveChild(patient->children, "id").has_value());
  EXPECT_TRUE(Model::ResolveChild(patient->children, "meta").has_value());
  EXPECT_TRUE(Model::ResolveChild(patient->children, "contained").has_value());
  EXPECT_TRUE(Model::ResolveChild(patient->children, "modifierExtension").has_value());
  const ElementDef* contact = M().FindElement("Patient.contact");
  auto kids = M().ChildrenOf(*contact, "BackboneElement");
  EXPECT_TRUE(Model::ResolveChild(kids, "relationship").has_value());
  EXPECT_FALSE(Model::ResolveChild(kids, "birthDate").has_value());
  // A complex type's children come from the type.
  const ElementDef* human = M().FindElement("Patient.name");
  auto name_kids = M().ChildrenOf(*human, "HumanName");
  EXPECT_TRUE(Model::ResolveChild(name_kids, "family").has_value());
}

TEST(ModelTest, ContentReferenceReusesTheTargetChildren) {
  const ElementDef* nested = M().FindElement("Questionnaire.item.item");
  ASSERT_NE(nested, nullptr);
  auto kids = M().ChildrenOf(*nested, nested->types.empty() ? "" : nested->types[0]);
  EXPECT_TRUE(Model::ResolveChild(kids, "linkId").has_value());
  EXPECT_TRUE(Model::ResolveChild(kids, "item").has_value());
}

TEST(ModelTest, PrimitivesCarryTheSpecificationRegex) {
  const TypeDef* date = M().FindType("date");
  ASSERT_NE(date, nullptr);
  EXPECT_EQ(date->kind, TypeKind::kPrimitive);
  EXPECT_FALSE(date->regex.empty());
  EXPECT_TRUE(M().IsA("code", "string"));
  EXPECT_TRUE(M().IsA("Age", "Quantity"));
  EXPECT_FALSE(M().IsA("Quantity", "Age"));
  const ElementDef* value = M().FindElement("date.value");
  ASSERT_NE(value, nullptr);
  EXPECT_EQ(value->types[0], "System.Date");
}

TEST(ModelTest, ConstraintsComeFromTheSnapshot) {
  const TypeDef* patient = M().FindType("Patient");
  std::vector<std::string> keys;
  for (const Constraint& c : patient->root->constraints) keys.push_back(c.key);
  EXPECT_NE(std::find(keys.begin(), keys.end(), "dom-2"), keys.end());
  EXPECT_NE(std::find(keys.begin(), keys.end(), "dom-6"), keys.end());
  for (const Constraint& c : patient->root->constraints) {
    EXPECT_FALSE(c.expression.empty()) << c.key;
    if (c.key == "dom-6") {
      EXPECT_FALSE(c.error);
    }
    if (c.key == "dom-2") {
      EXPECT_TRUE(c.error);
    }
  }
}

TEST(ModelTest, RequiredValueSetsAreExpanded) {
  const ValueSetExpansion* gender =
      M().FindValueSet("http://hl7.org/fhir/ValueSet/administrative-gender|4.0.1");
  ASSERT_NE(gender, nullptr);
  EXPECT_TRUE(gender->complete);
  EXPECT_TRUE(gender->ContainsCode("female"));
  EXPECT_TRUE(gender->Contains("http://hl7.org/fhir/administrative-gender", "unknown"));
  EXPECT_FALSE(gender->ContainsCode("Female"));
  EXPECT_FALSE(gender->Contains("http://other", "female"));
  const ValueSetExpansion* mime = M().FindValueSet("http://hl7.org/fhir/ValueSet/mimetypes");
  ASSERT_NE(mime, nullptr);
  EXPECT_FALSE(mime->complete);  // BCP-13 is not enumerable
}

TEST(ModelTest, CompleteCodeSystemsAreKnown) {
  const CodeSystemCodes* cs =
      M().FindCodeSystem("http://terminology.hl7.org/CodeSystem/observation-category");
  ASSERT_NE(cs, nullptr);
  EXPECT_TRUE(cs->Contains("laboratory"));
  EXPECT_FALSE(cs->Contains("labs"));
  EXPECT_EQ(M().FindCodeSystem("http://loinc.org"), nullptr);  // external: not held
  EXPECT_EQ(M().FindType("SubscriptionStatus"), nullptr);      // R4B, not R4
}

TEST(ModelTest, CapitaliseType) {
  EXPECT_EQ(CapitaliseType("dateTime"), "DateTime");
  EXPECT_EQ(CapitaliseType("Quantity"), "Quantity");
  EXPECT_EQ(CapitaliseType(""), "");
}

}  // namespace
}  // namespace fhirward::fhir
