#include "oauth/pages.h"

#include <algorithm>
#include <cctype>
#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

#include "common/encoding.h"
#include "common/str_cat.h"
#include "crypto/aead.h"

namespace fhirward::oauth {

// Kept free of "</", url(), @import and any scheme: it is hashed into the CSP and must load
// nothing.
const char kPageStyle[] =
    "*{box-sizing:border-box}"
    "body{margin:0;padding:1rem;background:#f3f4f6;color:#111827;"
    "font:16px/1.5 system-ui,-apple-system,\"Segoe UI\",Roboto,\"Helvetica Neue\",Arial,"
    "sans-serif}"
    "main{max-width:28rem;margin:8vh auto;padding:2rem;background:#fff;border-radius:.75rem;"
    "box-shadow:0 1px 3px rgba(0,0,0,.2)}"
    "h1{margin:0 0 1rem;font-size:1.5rem;line-height:1.25}"
    "p{margin:0 0 1rem}"
    "label{display:block;margin:1rem 0 .25rem;font-weight:600}"
    "input[type=text],input[type=password]{width:100%;padding:.5rem .75rem;font:inherit;"
    "color:inherit;background:#fff;border:1px solid #6b7280;border-radius:.375rem}"
    "fieldset{margin:0 0 1rem;padding:.5rem 1rem;border:1px solid #d1d5db;border-radius:.5rem}"
    "legend{padding:0 .25rem;font-weight:600}"
    ".scope{display:flex;gap:.5rem;align-items:flex-start;margin:.5rem 0}"
    ".scope input{margin:.3rem 0 0;flex:none}"
    ".scope label{margin:0;font-weight:400}"
    "code{display:block;font-size:.8rem;color:#4b5563;overflow-wrap:anywhere}"
    ".muted{color:#4b5563}"
    ".error{padding:.5rem .75rem;color:#991b1b;background:#fef2f2;border:1px solid #fca5a5;"
    "border-radius:.375rem}"
    ".actions{display:flex;gap:.75rem;justify-content:flex-end;margin-top:1.5rem}"
    "button{padding:.5rem 1.25rem;font:inherit;font-weight:600;color:#1d4ed8;background:#fff;"
    "border:1px solid #1d4ed8;border-radius:.375rem;cursor:pointer}"
    "button.primary{color:#fff;background:#1d4ed8}"
    "form>button{width:100%;margin-top:1.5rem}"
    ":focus-visible{outline:3px solid #2563eb;outline-offset:2px}";

namespace {

constexpr std::string_view kReplacement = "\xEF\xBF\xBD";  // U+FFFD

// Length of the valid UTF-8 sequence starting at text[i], or 0 if the bytes there are not one;
// `*bad` is then how many bytes form the maximal ill-formed subpart (at least 1) to replace.
size_t Utf8SequenceLength(std::string_view text, size_t i, size_t* bad) {
  auto byte = [&](size_t k) { return static_cast<uint8_t>(text[k]); };
  uint8_t lead = byte(i);
  size_t len = 0;
  uint8_t lo = 0x80, hi = 0xBF;  // range of the second byte
  if (lead >= 0xC2 && lead <= 0xDF) {
    len = 2;
  } else if (lead >= 0xE0 && lead <= 0xEF) {
    len = 3;
    if (lead == 0xE0) lo = 0xA0;  // no overlongs
    if (lead == 0xED) hi = 0x9F;  // no surrogates
  } else if (lead >= 0xF0 && lead <= 0xF4) {
    len = 4;
    if (lead == 0xF0) lo = 0x90;  // no overlongs
    if (lead == 0xF4) hi = 0x8F;  // nothing above U+10FFFF
  } else {
    *bad = 1;
    return 0;
  }
  for (size_t k = 1; k < len; ++k) {
    uint8_t min = k == 1 ? lo : 0x80, max = k == 1 ? hi : 0xBF;
    if (i + k >= text.size() || byte(i + k) < min || byte(i + k) > max) {
      *bad = k;
      return 0;
    }
  }
  return len;
}

void AppendEscaped(std::string& out, std::string_view text) {
  for (size_t i = 0; i < text.size();) {
    char c = text[i];
    if (static_cast<uint8_t>(c) >= 0x80) {
      size_t bad = 0;
      size_t len = Utf8SequenceLength(text, i, &bad);
      if (len == 0) {
        out.append(kReplacement);
        i += bad;
      } else {
        out.append(text.substr(i, len));
        i += len;
      }
      continue;
    }
    switch (c) {
      case '&':
        out.append("&amp;");
        break;
      case '<':
        out.append("&lt;");
        break;
      case '>':
        out.append("&gt;");
        break;
      case '"':
        out.append("&quot;");
        break;
      case '\'':
        out.append("&#39;");
        break;
      case '\0':
        out.append(kReplacement);
        break;
      default:
        out.push_back(c);
    }
    ++i;
  }
}

std::string BeginPage(std::string_view title) {
  std::string out =
      "<!DOCTYPE html>\n"
      "<html lang=\"en\">\n"
      "<head>\n"
      "<meta charset=\"utf-8\">\n"
      "<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\n"
      "<meta name=\"referrer\" content=\"no-referrer\">\n"
      "<meta name=\"robots\" content=\"noindex, nofollow\">\n"
      "<title>";
  AppendEscaped(out, title);
  out.append("</title>\n<style>");
  out.append(kPageStyle);
  out.append("</style>\n</head>\n<body>\n<main>\n");
  return out;
}

void EndPage(std::string& out) { out.append("</main>\n</body>\n</html>\n"); }

void AppendError(std::string& out, std::string_view error) {
  if (error.empty()) return;
  out.append("<p class=\"error\" role=\"alert\">");
  AppendEscaped(out, error);
  out.append("</p>\n");
}

void BeginForm(std::string& out, std::string_view action, const std::vector<HiddenField>& hidden) {
  out.append("<form method=\"post\" action=\"");
  AppendEscaped(out, action);
  out.append("\">\n");
  for (const HiddenField& field : hidden) {
    out.append("<input type=\"hidden\" name=\"");
    AppendEscaped(out, field.name);
    out.append("\" value=\"");
    AppendEscaped(out, field.value);
    out.append("\">\n");
  }
}

// "Read", "Read and search", "Create, read and search", ...
std::string JoinVerbs(const std::vector<std::string_view>& verbs) {
  std::string out;
  for (size_t i = 0; i < verbs.size(); ++i) {
    if (i > 0) out.append(i + 1 == verbs.size() ? " and " : ", ");
    out.append(verbs[i]);
  }
  if (!out.empty()) out[0] = static_cast<char>(out[0] - 'a' + 'A');
  return out;
}

bool IsResourceType(std::string_view s) {
  if (s == "*") return true;
  if (s.empty() || s[0] < 'A' || s[0] > 'Z') return false;
  for (char c : s) {
    if (!((c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z'))) return false;
  }
  return true;
}

// SMART v2 permission letters, in their mandatory order, and what each one lets the app do.
constexpr std::string_view kPermissionLetters = "cruds";
constexpr std::string_view kPermissionVerbs[] = {"create", "read", "update", "delete", "search"};

// Maps v1 ("read", "write", "*") or v2 ("cruds" subsequence) permissions to v2 letters; empty if
// malformed.
std::string_view NormalizePermissions(std::string_view permissions) {
  if (permissions == "read") return "rs";
  if (permissions == "write") return "cud";
  if (permissions == "*") return "cruds";
  size_t next = 0;  // the next letter must come from kPermissionLetters[next..]
  for (char c : permissions) {
    size_t pos = kPermissionLetters.find(c, next);
    if (pos == std::string_view::npos) return {};
    next = pos + 1;
  }
  return permissions;
}

std::string DescribeResourceScope(std::string_view scope) {
  std::string_view base = scope, query;
  if (size_t q = scope.find('?'); q != std::string_view::npos) {
    base = scope.substr(0, q);
    query = scope.substr(q + 1);
    if (query.empty()) return {};
  }
  size_t slash = base.find('/');
  if (slash == std::string_view::npos) return {};
  std::string_view context = base.substr(0, slash);
  std::string_view rest = base.substr(slash + 1);
  size_t dot = rest.find('.');
  if (dot == std::string_view::npos) return {};
  std::string_view type = rest.substr(0, dot);
  std::string_view letters = NormalizePermissions(rest.substr(dot + 1));
  if (!IsResourceType(type) || letters.empty()) return {};

  std::string_view where;
  if (context == "patient") {
    where = "for the selected patient";
  } else if (context == "user") {
    where = "you have access to";
  } else if (context == "system") {
    where = "across the whole server";
  } else {
    return {};
  }
  std::vector<std::string_view> verbs;
  for (char c : letters) verbs.push_back(kPermissionVerbs[kPermissionLetters.find(c)]);
  std::string out =
      Cat(JoinVerbs(verbs), " ", type == "*" ? std::string_view("all") : type, " records ", where);
  if (!query.empty()) {
    out.append(", limited to ");
    for (char c : query) {
      if (c == '&') {
        out.append(" and ");
      } else {
        out.push_back(c);
      }
    }
  }
  return out;
}

}  // namespace

std::string HtmlEscape(std::string_view text) {
  std::string out;
  out.reserve(text.size());
  AppendEscaped(out, text);
  return out;
}

std::string PageContentSecurityPolicy() { return PageContentSecurityPolicy({}); }

std::string PageContentSecurityPolicy(std::string_view redirect_uri) {
  static const std::string* const kStyle =
      new std::string(Cat("'sha256-", Base64Encode(crypto::Sha256(kPageStyle)), "'"));
  return Cat("default-src 'none'; style-src ", *kStyle, "; form-action 'self'",
             FormActionSource(redirect_uri), "; frame-ancestors 'none'; base-uri 'none'");
}

std::string FormActionSource(std::string_view uri) {
  if (uri.empty()) return {};
  size_t colon = uri.find(':');
  if (colon == std::string_view::npos || colon == 0) return {};
  std::string_view scheme = uri.substr(0, colon);
  for (char c : scheme) {
    if (!std::isalnum(static_cast<unsigned char>(c)) && c != '+' && c != '-' && c != '.') return {};
  }
  auto authority_ok = [](std::string_view a) {
    return !a.empty() && std::all_of(a.begin(), a.end(), [](char c) {
      return std::isalnum(static_cast<unsigned char>(c)) || c == '.' || c == '-' || c == ':' ||
             c == '[' || c == ']';
    });
  };
  if (uri.substr(colon, 3) == "://") {
    std::string_view rest = uri.substr(colon + 3);
    std::string_view authority = rest.substr(0, rest.find_first_of("/?#"));
    if (!authority_ok(authority)) return {};
    return Cat(" ", scheme, "://", authority);
  }
  // A private-use scheme (RFC 8252 §7.1), e.g. com.example.app:/callback.
  return Cat(" ", scheme, ":");
}

std::string DescribeScope(std::string_view scope) {
  struct Known {
    std::string_view scope;
    std::string_view description;
  };
  static constexpr Known kKnown[] = {
      {"openid", "Know who you are"},
      {"fhirUser", "Know which FHIR user record is yours"},
      {"profile", "Know your profile"},
      {"offline_access", "Keep access while you are away (refresh tokens)"},
      {"online_access", "Keep access while you are signed in"},
      {"launch", "Use the context of the app launch"},
      {"launch/patient", "Choose a patient"},
      {"launch/encounter", "Choose an encounter"},
  };
  for (const Known& known : kKnown) {
    if (scope == known.scope) return std::string(known.description);
  }
  std::string description = DescribeResourceScope(scope);
  if (description.empty()) return std::string(scope);
  return description;
}

std::string RenderLoginPage(const LoginPage& p) {
  std::string out = BeginPage("Sign in");
  out.append("<h1>Sign in</h1>\n");
  if (!p.client_name.empty()) {
    out.append("<p>to continue to <strong>");
    AppendEscaped(out, p.client_name);
    out.append("</strong></p>\n");
  }
  AppendError(out, p.error);
  BeginForm(out, p.action, p.hidden);
  // Focus goes to the first field the user still has to fill in.
  bool prefilled = !p.username.empty();
  out.append(
      "<label for=\"username\">Username</label>\n"
      "<input type=\"text\" id=\"username\" name=\"username\" autocomplete=\"username\" "
      "autocapitalize=\"none\" spellcheck=\"false\" required");
  if (prefilled) {
    out.append(" value=\"");
    AppendEscaped(out, p.username);
    out.append("\"");
  } else {
    out.append(" autofocus");
  }
  out.append(
      ">\n"
      "<label for=\"password\">Password</label>\n"
      "<input type=\"password\" id=\"password\" name=\"password\" "
      "autocomplete=\"current-password\" required");
  if (prefilled) out.append(" autofocus");
  out.append(
      ">\n"
      "<button type=\"submit\" class=\"primary\">Sign in</button>\n"
      "</form>\n");
  EndPage(out);
  return out;
}

std::string RenderTotpPage(const TotpPage& p) {
  std::string out = BeginPage("Two-step verification");
  out.append(
      "<h1>Two-step verification</h1>\n"
      "<p>Enter the code shown in your authenticator app.</p>\n");
  AppendError(out, p.error);
  BeginForm(out, p.action, p.hidden);
  out.append(
      "<label for=\"totp\">Verification code</label>\n"
      "<input type=\"text\" id=\"totp\" name=\"totp\" inputmode=\"numeric\" "
      "autocomplete=\"one-time-code\" spellcheck=\"false\" required autofocus>\n"
      "<button type=\"submit\" class=\"primary\">Verify</button>\n"
      "</form>\n");
  EndPage(out);
  return out;
}

std::string RenderConsentPage(const ConsentPage& p) {
  std::string out = BeginPage("Allow access");
  out.append("<h1>Allow access</h1>\n<p><strong>");
  AppendEscaped(out, p.client_name.empty() ? std::string_view("An application") : p.client_name);
  out.append("</strong> is asking to access your data.</p>\n");
  if (!p.user_display.empty()) {
    out.append("<p class=\"muted\">Signed in as <strong>");
    AppendEscaped(out, p.user_display);
    out.append("</strong></p>\n");
  }
  if (!p.patient_display.empty()) {
    out.append("<p>Patient: <strong>");
    AppendEscaped(out, p.patient_display);
    out.append("</strong></p>\n");
  }
  BeginForm(out, p.action, p.hidden);
  if (p.ask_patient) {
    out.append(
        "<p><label for=\"patient\">Patient (FHIR id)</label>\n"
        "<input type=\"text\" id=\"patient\" name=\"patient\" required maxlength=\"64\" "
        "pattern=\"[A-Za-z0-9.\\-]{1,64}\" autocomplete=\"off\" spellcheck=\"false\"></p>\n");
  }
  out.append("<fieldset>\n<legend>Permissions requested</legend>\n");
  if (p.scopes.empty()) out.append("<p>No specific permissions.</p>\n");
  for (size_t i = 0; i < p.scopes.size(); ++i) {
    const ScopeChoice& choice = p.scopes[i];
    std::string id = Cat("scope-", i);
    out.append("<div class=\"scope\">\n");
    if (choice.required) {
      // Disabled controls are not submitted; the hidden input carries the scope instead.
      out.append("<input type=\"hidden\" name=\"scope\" value=\"");
      AppendEscaped(out, choice.scope);
      out.append("\">\n");
    }
    out.append(Cat("<input type=\"checkbox\" id=\"", id, "\""));
    if (!choice.required) out.append(" name=\"scope\"");
    out.append(" value=\"");
    AppendEscaped(out, choice.scope);
    out.append("\"");
    if (choice.required) {
      out.append(" checked disabled");
    } else if (choice.checked) {
      out.append(" checked");
    }
    out.append(Cat(">\n<label for=\"", id, "\">"));
    AppendEscaped(out,
                  choice.description.empty() ? DescribeScope(choice.scope) : choice.description);
    if (choice.required) out.append(" (required)");
    out.append("<code>");
    AppendEscaped(out, choice.scope);
    out.append("</code></label>\n</div>\n");
  }
  out.append(
      "</fieldset>\n"
      "<div class=\"actions\">\n"
      "<button type=\"submit\" name=\"decision\" value=\"deny\" formnovalidate>Deny</button>\n"
      "<button type=\"submit\" name=\"decision\" value=\"allow\" class=\"primary\">Allow</button>\n"
      "</div>\n"
      "</form>\n");
  EndPage(out);
  return out;
}

std::string RenderErrorPage(const ErrorPage& p) {
  std::string_view title = p.title.empty() ? std::string_view("Something went wrong") : p.title;
  std::string out = BeginPage(title);
  out.append("<h1>");
  AppendEscaped(out, title);
  out.append("</h1>\n");
  if (!p.message.empty()) {
    out.append("<p>");
    AppendEscaped(out, p.message);
    out.append("</p>\n");
  }
  EndPage(out);
  return out;
}

}  // namespace fhirward::oauth
