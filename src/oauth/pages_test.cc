#include "oauth/pages.h"

#include <string>
#include <string_view>
#include <vector>

#include "common/encoding.h"
#include "crypto/aead.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace fhirward::oauth {
namespace {

using ::testing::HasSubstr;
using ::testing::Not;

size_t Count(std::string_view haystack, std::string_view needle) {
  size_t n = 0;
  for (size_t pos = haystack.find(needle); pos != std::string_view::npos;
       pos = haystack.find(needle, pos + needle.size())) {
    ++n;
  }
  return n;
}

// Every "<input ...>" tag in the page, as its text between "<input" and ">".
std::vector<std::string> InputTags(std::string_view page) {
  std::vector<std::string> tags;
  for (size_t pos = page.find("<input "); pos != std::string_view::npos;
       pos = page.find("<input ", pos + 1)) {
    size_t end = page.find('>', pos);
    tags.emplace_back(page.substr(pos, end - pos + 1));
  }
  return tags;
}

// The double-quoted value of attribute `name` in `tag`, or "" if absent.
std::string Attr(std::string_view tag, std::string_view name) {
  std::string key = std::string(" ") + std::string(name) + "=\"";
  size_t pos = tag.find(key);
  if (pos == std::string_view::npos) return "";
  pos += key.size();
  return std::string(tag.substr(pos, tag.find('"', pos) - pos));
}

bool HasFlag(std::string_view tag, std::string_view flag) {
  std::string with_space = std::string(" ") + std::string(flag);
  size_t pos = tag.find(with_space);
  if (pos == std::string_view::npos) return false;
  char next = tag[pos + with_space.size()];
  return next == ' ' || next == '>';
}

LoginPage BenignLogin() {
  return LoginPage{.action = "/authorize/login",
                   .hidden = {{"csrf", "tok123"}, {"request_id", "req-1"}},
                   .client_name = "Growth Chart",
                   .username = "alice",
                   .error = "Wrong username or password."};
}

TotpPage BenignTotp() {
  return TotpPage{.action = "/authorize/totp",
                  .hidden = {{"csrf", "tok123"}, {"request_id", "req-1"}},
                  .error = "That code did not work."};
}

ConsentPage BenignConsent() {
  return ConsentPage{.action = "/authorize/consent",
                     .hidden = {{"csrf", "tok123"}, {"request_id", "req-1"}},
                     .client_name = "Growth Chart",
                     .user_display = "Alice Smith",
                     .patient_display = "Bobby Smith (born 2019-03-01)",
                     .scopes = {{.scope = "openid", .required = true},
                                {.scope = "patient/Observation.rs",
                                 .description = "Read and search your observations"},
                                {.scope = "offline_access", .checked = false}}};
}

std::vector<std::string> BenignPages() {
  return {RenderLoginPage(BenignLogin()), RenderLoginPage(LoginPage{.action = "/a"}),
          RenderTotpPage(BenignTotp()), RenderConsentPage(BenignConsent()),
          RenderErrorPage({.title = "Invalid request", .message = "The redirect_uri is unknown."})};
}

TEST(PagesTest, HtmlEscapeReplacesEveryMarkupCharacter) {
  EXPECT_EQ(HtmlEscape(R"(<a href="x">Tom & Jerry's</a>)"),
            "&lt;a href=&quot;x&quot;&gt;Tom &amp; Jerry&#39;s&lt;/a&gt;");
  EXPECT_EQ(HtmlEscape("&amp;"), "&amp;amp;");
  EXPECT_EQ(HtmlEscape(""), "");
  EXPECT_EQ(HtmlEscape("Zoë 患者 \xF0\x9F\x98\x80"), "Zoë 患者 \xF0\x9F\x98\x80");
}

TEST(PagesTest, HtmlEscapeAlwaysProducesValidUtf8) {
  const std::string r = "\xEF\xBF\xBD";  // U+FFFD
  EXPECT_EQ(HtmlEscape(std::string_view("a\0b", 3)), "a" + r + "b");
  EXPECT_EQ(HtmlEscape("\xFF<"), r + "&lt;");
  EXPECT_EQ(HtmlEscape("\xC0\xBC"), r + r);          // overlong '<'
  EXPECT_EQ(HtmlEscape("\xED\xA0\x80"), r + r + r);  // surrogate U+D800
  EXPECT_EQ(HtmlEscape("\xE2\x82"), r);              // truncated "€": one maximal subpart
  EXPECT_EQ(HtmlEscape("\xE2\x82<"), r + "&lt;");
  EXPECT_EQ(HtmlEscape("\xF4\x90\x80\x80"), r + r + r + r);  // above U+10FFFF
}

TEST(PagesTest, ScriptInClientNameAppearsOnlyEscaped) {
  const std::string evil = "<script>alert(1)</script>";
  LoginPage login = BenignLogin();
  login.client_name = evil;
  ConsentPage consent = BenignConsent();
  consent.client_name = evil;
  for (const std::string& page : {RenderLoginPage(login), RenderConsentPage(consent)}) {
    EXPECT_THAT(page, Not(HasSubstr("<script")));
    EXPECT_THAT(page, Not(HasSubstr("</script")));
    EXPECT_THAT(page, HasSubstr("&lt;script&gt;alert(1)&lt;/script&gt;"));
  }
}

TEST(PagesTest, QuoteInHiddenValueCannotLeaveTheAttribute) {
  LoginPage login = BenignLogin();
  login.hidden = {{"csrf", "x\" autofocus onfocus=\"alert(1)"}, {"a'b", "c'd"}};
  std::string page = RenderLoginPage(login);
  EXPECT_THAT(page, HasSubstr("<input type=\"hidden\" name=\"csrf\" "
                              "value=\"x&quot; autofocus onfocus=&quot;alert(1)\">"));
  EXPECT_THAT(page, HasSubstr("<input type=\"hidden\" name=\"a&#39;b\" value=\"c&#39;d\">"));
  EXPECT_THAT(page, Not(HasSubstr("onfocus=\"")));
}

// Each dynamic field gets its own marker, so a field that skipped escaping is pinpointed.
std::string Marker(int i) { return "<b id=m" + std::to_string(i) + ">\"'&"; }
std::string Escaped(int i) { return "&lt;b id=m" + std::to_string(i) + "&gt;&quot;&#39;&amp;"; }

void ExpectAllMarkersEscaped(const std::string& page, int first, int last) {
  EXPECT_THAT(page, Not(HasSubstr("<b "))) << page;
  for (int i = first; i <= last; ++i) {
    EXPECT_THAT(page, HasSubstr(Escaped(i))) << "field " << i << "\n" << page;
  }
}

TEST(PagesTest, EveryDynamicFieldIsEscaped) {
  ExpectAllMarkersEscaped(RenderLoginPage({.action = Marker(1),
                                           .hidden = {{Marker(2), Marker(3)}},
                                           .client_name = Marker(4),
                                           .username = Marker(5),
                                           .error = Marker(6)}),
                          1, 6);
  ExpectAllMarkersEscaped(
      RenderTotpPage({.action = Marker(1), .hidden = {{Marker(2), Marker(3)}}, .error = Marker(4)}),
      1, 4);
  ExpectAllMarkersEscaped(
      RenderConsentPage({.action = Marker(1),
                         .hidden = {{Marker(2), Marker(3)}},
                         .client_name = Marker(4),
                         .user_display = Marker(5),
                         .patient_display = Marker(6),
                         .scopes = {{.scope = Marker(7), .description = Marker(8)},
                                    {.scope = Marker(9), .required = true},  // described as itself
                                    {.scope = Marker(10), .description = Marker(11)}}}),
      1, 11);
  ExpectAllMarkersEscaped(RenderErrorPage({.title = Marker(1), .message = Marker(2)}), 1, 2);
}

TEST(PagesTest, NoScriptsNoExternalResources) {
  for (const std::string& page : BenignPages()) {
    EXPECT_THAT(page, Not(HasSubstr("<script")));
    EXPECT_THAT(page, Not(HasSubstr("http")));
    EXPECT_THAT(page, Not(HasSubstr("//")));
    EXPECT_THAT(page, Not(HasSubstr("src=")));
    EXPECT_THAT(page, Not(HasSubstr("href=")));
    EXPECT_THAT(page, Not(HasSubstr("<link")));
    EXPECT_THAT(page, Not(HasSubstr("url(")));
    EXPECT_THAT(page, Not(HasSubstr("@import")));
    EXPECT_THAT(page, Not(HasSubstr(" on")));  // no inline event handlers
    EXPECT_THAT(page, Not(HasSubstr("style=")));
    EXPECT_EQ(Count(page, "<style"), 1u);
  }
}

TEST(PagesTest, DocumentStructureIsAccessible) {
  for (const std::string& page : BenignPages()) {
    EXPECT_TRUE(page.starts_with("<!DOCTYPE html>\n<html lang=\"en\">")) << page;
    EXPECT_THAT(page, HasSubstr("<meta charset=\"utf-8\">"));
    EXPECT_EQ(Count(page, "<title>"), 1u);
    EXPECT_THAT(page, Not(HasSubstr("<title></title>")));
    EXPECT_EQ(Count(page, "<main>"), 1u);
    EXPECT_EQ(Count(page, "<h1>"), 1u);
    EXPECT_TRUE(page.ends_with("</html>\n"));
    EXPECT_EQ(Count(page, "<form"), Count(page, "</form>"));
  }
}

TEST(PagesTest, CspAllowsExactlyTheStyleByHash) {
  std::string csp = PageContentSecurityPolicy();
  std::string hash = Base64Encode(crypto::Sha256(kPageStyle));
  EXPECT_EQ(csp, "default-src 'none'; style-src 'sha256-" + hash +
                     "'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'");
  EXPECT_THAT(csp, HasSubstr("frame-ancestors 'none'"));
  EXPECT_EQ(hash.size(), 44u);
  for (const std::string& page : BenignPages()) {
    size_t open = page.find("<style>");
    ASSERT_NE(open, std::string::npos);
    open += 7;
    std::string style = page.substr(open, page.find("</style>", open) - open);
    EXPECT_EQ(style, kPageStyle);
    EXPECT_THAT(csp, HasSubstr("'sha256-" + Base64Encode(crypto::Sha256(style)) + "'"));
  }
  std::string_view style = kPageStyle;
  EXPECT_THAT(style, HasSubstr(":focus-visible{outline"));
  EXPECT_THAT(style, HasSubstr("system-ui"));
}

TEST(PagesTest, EveryVisibleInputHasALabel) {
  for (const std::string& page : BenignPages()) {
    for (const std::string& tag : InputTags(page)) {
      if (Attr(tag, "type") == "hidden") continue;
      std::string id = Attr(tag, "id");
      ASSERT_FALSE(id.empty()) << tag;
      EXPECT_EQ(Count(page, "id=\"" + id + "\""), 1u) << "duplicate id " << id;
      EXPECT_THAT(page, HasSubstr("<label for=\"" + id + "\">")) << tag;
    }
    EXPECT_THAT(page, Not(HasSubstr("<button type=\"submit\"></button>")));
  }
}

TEST(PagesTest, LoginPageFieldsAndAutocomplete) {
  std::string page = RenderLoginPage(BenignLogin());
  EXPECT_THAT(page, HasSubstr("<form method=\"post\" action=\"/authorize/login\">"));
  EXPECT_THAT(page, HasSubstr("<input type=\"hidden\" name=\"csrf\" value=\"tok123\">"));
  EXPECT_THAT(page, HasSubstr("<input type=\"hidden\" name=\"request_id\" value=\"req-1\">"));
  EXPECT_THAT(page, HasSubstr("<p class=\"error\" role=\"alert\">Wrong username or password.</p>"));
  EXPECT_THAT(page, HasSubstr("Growth Chart"));
  std::vector<std::string> tags = InputTags(page);
  ASSERT_EQ(tags.size(), 4u);
  EXPECT_EQ(Attr(tags[2], "name"), "username");
  EXPECT_EQ(Attr(tags[2], "autocomplete"), "username");
  EXPECT_EQ(Attr(tags[2], "value"), "alice");
  EXPECT_FALSE(HasFlag(tags[2], "autofocus"));
  EXPECT_EQ(Attr(tags[3], "name"), "password");
  EXPECT_EQ(Attr(tags[3], "type"), "password");
  EXPECT_EQ(Attr(tags[3], "autocomplete"), "current-password");
  EXPECT_EQ(Attr(tags[3], "value"), "");  // passwords are never echoed
  EXPECT_TRUE(HasFlag(tags[3], "autofocus"));
  EXPECT_THAT(page, HasSubstr(">Sign in</button>"));

  std::string fresh = RenderLoginPage({.action = "/authorize/login"});
  EXPECT_THAT(fresh, Not(HasSubstr("role=\"alert\"")));
  EXPECT_THAT(fresh, Not(HasSubstr("<strong>")));
  tags = InputTags(fresh);
  ASSERT_EQ(tags.size(), 2u);
  EXPECT_TRUE(HasFlag(tags[0], "autofocus"));
  EXPECT_FALSE(HasFlag(tags[1], "autofocus"));
}

TEST(PagesTest, TotpPageFields) {
  std::string page = RenderTotpPage(BenignTotp());
  EXPECT_THAT(page, HasSubstr("<form method=\"post\" action=\"/authorize/totp\">"));
  EXPECT_THAT(page, HasSubstr("role=\"alert\">That code did not work.</p>"));
  std::vector<std::string> tags = InputTags(page);
  ASSERT_EQ(tags.size(), 3u);
  EXPECT_EQ(Attr(tags[2], "name"), "totp");
  EXPECT_EQ(Attr(tags[2], "inputmode"), "numeric");
  EXPECT_EQ(Attr(tags[2], "autocomplete"), "one-time-code");
  EXPECT_THAT(RenderTotpPage({.action = "/t"}), Not(HasSubstr("role=\"alert\"")));
}

TEST(PagesTest, ConsentScopesCarryValueAndCheckedState) {
  std::string page = RenderConsentPage(BenignConsent());
  EXPECT_THAT(page, HasSubstr("<fieldset>\n<legend>Permissions requested</legend>"));
  EXPECT_THAT(page, HasSubstr("Alice Smith"));
  EXPECT_THAT(page, HasSubstr("Bobby Smith (born 2019-03-01)"));
  std::vector<std::string> checkboxes;
  for (const std::string& tag : InputTags(page)) {
    if (Attr(tag, "type") == "checkbox") checkboxes.push_back(tag);
  }
  ASSERT_EQ(checkboxes.size(), 3u);
  EXPECT_EQ(Attr(checkboxes[1], "name"), "scope");
  EXPECT_EQ(Attr(checkboxes[1], "value"), "patient/Observation.rs");
  EXPECT_TRUE(HasFlag(checkboxes[1], "checked"));
  EXPECT_FALSE(HasFlag(checkboxes[1], "disabled"));
  EXPECT_EQ(Attr(checkboxes[2], "name"), "scope");
  EXPECT_EQ(Attr(checkboxes[2], "value"), "offline_access");
  EXPECT_FALSE(HasFlag(checkboxes[2], "checked"));
  // Given descriptions win; missing ones come from DescribeScope.
  EXPECT_THAT(page, HasSubstr("Read and search your observations"));
  EXPECT_THAT(page, HasSubstr("Keep access while you are away (refresh tokens)"));
  EXPECT_THAT(
      page,
      HasSubstr("<button type=\"submit\" name=\"decision\" value=\"deny\" formnovalidate>Deny<"));
  EXPECT_THAT(page, HasSubstr("name=\"decision\" value=\"allow\" class=\"primary\">Allow<"));
}

TEST(PagesTest, RequiredScopeIsDisabledAndCarriedByHiddenInput) {
  std::string page = RenderConsentPage(BenignConsent());
  std::vector<std::string> tags = InputTags(page);
  std::string checkbox;
  int hidden_openid = 0;
  for (const std::string& tag : tags) {
    if (Attr(tag, "type") == "checkbox" && Attr(tag, "value") == "openid") checkbox = tag;
    if (Attr(tag, "type") == "hidden" && Attr(tag, "name") == "scope") {
      EXPECT_EQ(Attr(tag, "value"), "openid");
      ++hidden_openid;
    }
  }
  ASSERT_FALSE(checkbox.empty());
  EXPECT_TRUE(HasFlag(checkbox, "checked"));
  EXPECT_TRUE(HasFlag(checkbox, "disabled"));
  EXPECT_NE(Attr(checkbox, "name"), "scope");  // only the hidden input submits it
  EXPECT_EQ(hidden_openid, 1);
  EXPECT_THAT(page, HasSubstr("Know who you are (required)"));

  // `checked = false` cannot uncheck a required scope.
  ConsentPage consent = BenignConsent();
  consent.scopes = {{.scope = "openid", .checked = false, .required = true}};
  tags = InputTags(RenderConsentPage(consent));
  ASSERT_EQ(tags.size(), 4u);
  EXPECT_TRUE(HasFlag(tags[3], "checked"));
}

TEST(PagesTest, DescribeScopeKnownScopes) {
  EXPECT_EQ(DescribeScope("openid"), "Know who you are");
  EXPECT_EQ(DescribeScope("offline_access"), "Keep access while you are away (refresh tokens)");
  EXPECT_EQ(DescribeScope("launch/patient"), "Choose a patient");
  EXPECT_EQ(DescribeScope("fhirUser"), "Know which FHIR user record is yours");
}

TEST(PagesTest, DescribeScopeV1) {
  EXPECT_EQ(DescribeScope("patient/*.read"),
            "Read and search all records for the selected patient");
  EXPECT_EQ(DescribeScope("user/Patient.write"),
            "Create, update and delete Patient records you have access to");
  EXPECT_EQ(DescribeScope("patient/Observation.*"),
            "Create, read, update, delete and search Observation records for the selected patient");
}

TEST(PagesTest, DescribeScopeV2) {
  EXPECT_EQ(DescribeScope("patient/Observation.rs"),
            "Read and search Observation records for the selected patient");
  EXPECT_EQ(DescribeScope("user/Observation.cruds"),
            "Create, read, update, delete and search Observation records you have access to");
  EXPECT_EQ(DescribeScope("system/Patient.rs"),
            "Read and search Patient records across the whole server");
  EXPECT_EQ(DescribeScope("patient/Condition.r"),
            "Read Condition records for the selected patient");
  EXPECT_EQ(DescribeScope("user/*.cu"), "Create and update all records you have access to");
}

TEST(PagesTest, DescribeScopeWithQueryRestriction) {
  EXPECT_EQ(DescribeScope("patient/Observation.rs?category=laboratory"),
            "Read and search Observation records for the selected patient, limited to "
            "category=laboratory");
  EXPECT_EQ(DescribeScope("user/Observation.rs?category=vital-signs&status=final"),
            "Read and search Observation records you have access to, limited to "
            "category=vital-signs and status=final");
}

TEST(PagesTest, DescribeScopeUnknownOrMalformedIsVerbatim) {
  for (std::string_view scope :
       {"", "email", "launch/location", "patient/Observation.sr", "patient/Observation.rr",
        "patient/Observation.x", "patient/Observation.", "patient/observation.rs",
        "practitioner/Observation.rs", "patient/Observation", "patient/Obs.ervation.rs",
        "patient/Observation.rs?", "/Observation.rs"}) {
    EXPECT_EQ(DescribeScope(scope), scope);
  }
}

TEST(PagesTest, FormActionAllowsOnlyTheRedirectOrigin) {
  EXPECT_EQ(FormActionSource("https://app.example/cb?x=1"), " https://app.example");
  EXPECT_EQ(FormActionSource("http://127.0.0.1:8765/cb"), " http://127.0.0.1:8765");
  EXPECT_EQ(FormActionSource("http://[::1]:9/cb"), " http://[::1]:9");
  EXPECT_EQ(FormActionSource("com.example.app:/callback"), " com.example.app:");
  // Anything that could close the directive or add a source adds nothing.
  EXPECT_EQ(FormActionSource("https://a.example;script-src *"), "");
  EXPECT_EQ(FormActionSource("https://a.example 'unsafe-inline'/cb"), "");
  EXPECT_EQ(FormActionSource("https://user@a.example/cb"), "");
  EXPECT_EQ(FormActionSource("java script:x"), "");
  EXPECT_EQ(FormActionSource(""), "");
  const std::string csp = PageContentSecurityPolicy("https://app.example/cb");
  EXPECT_NE(csp.find("form-action 'self' https://app.example;"), std::string::npos) << csp;
  EXPECT_NE(csp.find("frame-ancestors 'none'"), std::string::npos);
  EXPECT_EQ(PageContentSecurityPolicy(), PageContentSecurityPolicy(""));
}

}  // namespace
}  // namespace fhirward::oauth
