// Server-rendered HTML for the authorization endpoint: login, TOTP, consent and error pages.
//
// Every Render* function is pure and returns a complete HTML5 document in UTF-8; serve it as
// `Content-Type: text/html; charset=utf-8` with `Content-Security-Policy:
// PageContentSecurityPolicy()`. The pages load nothing: no script, no external stylesheet, font
// or image, no link to another origin. Their only styling is one inline <style> block whose text is
// exactly kPageStyle, which the CSP allows by hash.
//
// Every caller-supplied value (including action paths and hidden-field names and values) goes
// through HtmlEscape, and every attribute value is double-quoted, so no input can open a tag or
// leave an attribute. Forms use method="post"; `action` should be a same-origin path such as
// "/authorize/login" (the CSP's form-action 'self' makes browsers refuse anything else). This
// module knows nothing about CSRF or pending requests: the caller passes those as hidden fields.
//
// Accessibility: <html lang="en">, a <title>, one <main> with one <h1>, a <label for> for every
// visible input, errors in an element with role="alert", scope checkboxes in a fieldset with a
// legend, autocomplete hints (username, current-password, one-time-code) and buttons with text.
#ifndef FHIRWARD_OAUTH_PAGES_H_
#define FHIRWARD_OAUTH_PAGES_H_

#include <string>
#include <string_view>
#include <vector>

namespace fhirward::oauth {

// An <input type="hidden" name=... value=...> inside the page's form.
struct HiddenField {
  std::string name;
  std::string value;
};

// Inputs: name="username" (id "username") and name="password" (id "password").
struct LoginPage {
  std::string action;  // e.g. "/authorize/login"
  std::vector<HiddenField> hidden;
  std::string client_name;  // the app asking; omitted from the page when empty
  std::string username;     // prefill after a failed attempt
  std::string error;        // shown with role="alert" when non-empty
};

// Input: name="totp" (id "totp"), inputmode="numeric", autocomplete="one-time-code".
struct TotpPage {
  std::string action;
  std::vector<HiddenField> hidden;
  std::string error;  // shown with role="alert" when non-empty
};

struct ScopeChoice {
  std::string scope;        // e.g. "patient/Observation.rs"
  std::string description;  // human text; DescribeScope(scope) when empty
  bool checked = true;
  // e.g. "openid": rendered checked and disabled (so never submitted by the browser) plus a
  // hidden input name="scope" value=scope that carries it; `checked` is then ignored.
  bool required = false;
};

// Scopes are checkboxes name="scope" value=scope (ids "scope-0", "scope-1", ...); the form has
// two submit buttons name="decision", value="deny" first (the implicit-submission default) and
// value="allow".
struct ConsentPage {
  std::string action;
  std::vector<HiddenField> hidden;
  std::string client_name;
  std::string user_display;     // who is logged in; omitted when empty
  std::string patient_display;  // patient in context; omitted when empty
  // No patient in context but patient scopes requested (a practitioner's
  // standalone launch): a text input name="patient" (id "patient") for the
  // patient's FHIR id. The Deny button skips its validation (formnovalidate).
  bool ask_patient = false;
  std::vector<ScopeChoice> scopes;
};

// No form. An empty title renders as "Something went wrong".
struct ErrorPage {
  std::string title;
  std::string message;
};

std::string RenderLoginPage(const LoginPage& p);
std::string RenderTotpPage(const TotpPage& p);
std::string RenderConsentPage(const ConsentPage& p);
std::string RenderErrorPage(const ErrorPage& p);

// Plain-text (not yet escaped) human description of a SMART App Launch scope, v1 or v2:
//   "openid" → "Know who you are", "fhirUser" → "Know which FHIR user record is yours",
//   "offline_access" → "Keep access while you are away (refresh tokens)",
//   "online_access" → "Keep access while you are signed in", "launch" → "Use the context of the
//   app launch", "launch/patient" → "Choose a patient", "launch/encounter" → "Choose an
//   encounter", "profile" → "Know your profile".
// Resource scopes <patient|user|system>/<Type|*>.<permissions>[?query] read as
//   "<Verbs> <Type records|all records> <context>[, limited to <query>]", e.g.
//   "patient/Observation.rs" → "Read and search Observation records for the selected patient",
//   "user/Observation.cruds" → "Create, read, update, delete and search Observation records you
//   have access to", "system/Patient.rs" → "... Patient records across the whole server",
//   "patient/Observation.rs?category=laboratory" → "... for the selected patient, limited to
//   category=laboratory" ('&' between parameters reads " and ").
// v1 permissions map as SMART v2 defines: read = rs, write = cud, * = cruds. v2 permissions must
// be a non-empty subsequence of "cruds" in that order. Anything else (unknown or malformed) is
// returned unchanged.
std::string DescribeScope(std::string_view scope);

// Text for HTML element content or a double-quoted attribute value: & < > " ' become &amp; &lt;
// &gt; &quot; &#39;. The result is always valid UTF-8: each invalid UTF-8 sequence, and each NUL,
// becomes U+FFFD.
std::string HtmlEscape(std::string_view text);

// "default-src 'none'; style-src 'sha256-<base64 SHA-256 of kPageStyle>'; form-action 'self';
// frame-ancestors 'none'; base-uri 'none'".
std::string PageContentSecurityPolicy();
// The same, with the origin of `redirect_uri` also allowed in form-action: a
// form whose submission ends in a redirect to the client (the consent page)
// needs it, because browsers apply form-action to the redirect target too.
// URIs whose origin cannot be written safely as a CSP source add nothing.
std::string PageContentSecurityPolicy(std::string_view redirect_uri);
// " scheme://host[:port]" (or " scheme:" for a private-use scheme), or "".
std::string FormActionSource(std::string_view redirect_uri);

// The exact text of every page's single <style> element.
extern const char kPageStyle[];

}  // namespace fhirward::oauth

#endif  // FHIRWARD_OAUTH_PAGES_H_
