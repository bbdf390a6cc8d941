#include "fhir/xhtml.h"

#include <algorithm>
#include <cstdint>
#include <initializer_list>
#include <optional>
#include <span>
#include <utility>

#include "common/str_cat.h"
#include "json/utf8.h"

namespace fhirward::fhir {
namespace {

constexpr std::string_view kXhtmlNamespace = "http://www.w3.org/1999/xhtml";

// FHIR validator XhtmlValidator.HTML_ELEMENTS (HTML 4.0 chapters 7-11 and 15
// without the deprecated and active parts, plus <a>, <img>, <map>, <area>).
constexpr std::string_view kElements[] = {
    "a",  "abbr",    "acronym", "address", "area",   "b",        "bdo", "big",   "blockquote",
    "br", "caption", "cite",    "code",    "col",    "colgroup", "dd",  "dfn",   "div",
    "dl", "dt",      "em",      "h1",      "h2",     "h3",       "h4",  "h5",    "h6",
    "hr", "i",       "img",     "kbd",     "li",     "map",      "ol",  "p",     "pre",
    "q",  "samp",    "small",   "span",    "strong", "sub",      "sup", "table", "tbody",
    "td", "tfoot",   "th",      "thead",   "tr",     "tt",       "ul",  "var"};

// XhtmlValidator.HTML_ATTRIBUTES: allowed on every element. "xml:space" draws only
// a hint from the validator; it is inert, so it is accepted here.
constexpr std::string_view kGlobalAttributes[] = {
    "title",    "style",   "class", "id",      "lang",    "xml:lang", "dir",     "accesskey",
    "tabindex", "span",    "width", "align",   "valign",  "char",     "charoff", "abbr",
    "axis",     "headers", "scope", "rowspan", "colspan", "xml:space"};

// XhtmlValidator.HTML_COMBO_LIST: "element.attribute" pairs.
// clang-format off
constexpr std::string_view kElementAttributes[] = {
    "a.href", "a.name", "a.charset", "a.type", "a.hreflang", "a.rel", "a.rev", "a.shape",
    "a.coords",
    "img.src", "img.border", "img.alt", "img.longdesc", "img.height", "img.width", "img.usemap",
    "img.ismap",
    "map.name",
    "area.shape", "area.coords", "area.href", "area.nohref", "area.alt",
    "table.summary", "table.width", "table.border", "table.frame", "table.rules",
    "table.cellspacing", "table.cellpadding",
    "blockquote.cite", "q.cite", "pre.space", "td.nowrap"};
// clang-format on

// Attributes whose value a browser may load or navigate to. Most are not allowed
// at all; their scheme is checked anyway so the report says why they are dangerous.
constexpr std::string_view kUrlAttributes[] = {
    "href",       "src",      "cite",    "longdesc", "usemap", "action",   "formaction",
    "background", "poster",   "dynsrc",  "lowsrc",   "data",   "codebase", "classid",
    "profile",    "manifest", "archive", "icon",     "base"};

// Schemes a browser resolves to script, local content or an opaque document
// (the narrative rules forbid active content; other schemes, e.g. ftp, doi or
// urn, are plain links).
constexpr std::string_view kActiveSchemes[] = {
    "javascript", "vbscript", "livescript", "mocha",  "data",        "blob",
    "filesystem", "file",     "jar",        "mhtml",  "view-source", "ms-its",
    "res",        "wyciwyg",  "about",      "chrome", "resource",    "x-javascript"};

// Inline images that cannot carry script (SVG can, so it is absent).
constexpr std::string_view kInlineImageTypes[] = {"image/png", "image/gif", "image/jpeg",
                                                  "image/webp"};

// Searched for in a style attribute after CSS comments and escapes are removed,
// whitespace dropped and letters lower-cased.
constexpr std::string_view kStyleNeedles[] = {
    "expression(",  "javascript:", "vbscript:", "livescript:",
    "-moz-binding", "behavior:",   "@import"};

// Named references an HTML parser would decode and that can hide a URL scheme
// ("javascript&colon;"). They are errors in XML anyway; the URL check sees them
// decoded so it reports what a browser would do.
constexpr std::pair<std::string_view, char> kHtmlNamedCharacters[] = {
    {"colon", ':'}, {"Tab", '\t'},  {"NewLine", '\n'}, {"lpar", '('}, {"rpar", ')'},
    {"sol", '/'},   {"bsol", '\\'}, {"period", '.'},   {"semi", ';'}, {"num", '#'}};

bool Contains(std::span<const std::string_view> list, std::string_view s) {
  return std::find(list.begin(), list.end(), s) != list.end();
}

char Lower(char c) { return (c >= 'A' && c <= 'Z') ? static_cast<char>(c - 'A' + 'a') : c; }

bool StartsWithIgnoreCase(std::string_view s, std::string_view prefix) {
  if (s.size() < prefix.size()) return false;
  for (size_t i = 0; i < prefix.size(); ++i) {
    if (Lower(s[i]) != Lower(prefix[i])) return false;
  }
  return true;
}

std::string ToLower(std::string_view s) {
  std::string out(s);
  for (char& c : out) c = Lower(c);
  return out;
}

bool IsXmlSpace(char c) { return c == ' ' || c == '\t' || c == '\n' || c == '\r'; }
bool IsAsciiAlpha(char c) { return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z'); }
bool IsDigit(char c) { return c >= '0' && c <= '9'; }
bool IsHexDigit(char c) { return IsDigit(c) || (c >= 'a' && c <= 'f') || (c >= 'A' && c <= 'F'); }
int HexValue(char c) {
  if (IsDigit(c)) return c - '0';
  return Lower(c) - 'a' + 10;
}

// XML 1.0 names, simplified: ASCII name characters exactly, any non-ASCII byte
// accepted (no allowed name contains one, so such names fail the lists anyway).
bool IsNameStart(char c) {
  return IsAsciiAlpha(c) || c == '_' || c == ':' || static_cast<unsigned char>(c) >= 0x80;
}
bool IsNameChar(char c) { return IsNameStart(c) || IsDigit(c) || c == '-' || c == '.'; }

// XML 1.0 §2.2 Char.
bool IsXmlChar(uint32_t cp) {
  return cp == 0x9 || cp == 0xA || cp == 0xD || (cp >= 0x20 && cp <= 0xD7FF) ||
         (cp >= 0xE000 && cp <= 0xFFFD) || (cp >= 0x10000 && cp <= 0x10FFFF);
}

// Decodes the UTF-8 sequence at s[i] (s[i] >= 0x80). Returns its length, or 0 when
// it is not well-formed (overlong, surrogate, above U+10FFFF, truncated).
size_t DecodeUtf8(std::string_view s, size_t i, uint32_t* cp) {
  const auto b = [&](size_t k) { return static_cast<unsigned char>(s[i + k]); };
  const size_t avail = s.size() - i;
  const unsigned char c = b(0);
  size_t len;
  uint32_t v;
  uint32_t min;
  if (c >= 0xC2 && c <= 0xDF) {
    len = 2, v = c & 0x1F, min = 0x80;
  } else if (c >= 0xE0 && c <= 0xEF) {
    len = 3, v = c & 0x0F, min = 0x800;
  } else if (c >= 0xF0 && c <= 0xF4) {
    len = 4, v = c & 0x07, min = 0x10000;
  } else {
    return 0;
  }
  if (avail < len) return 0;
  for (size_t k = 1; k < len; ++k) {
    if ((b(k) & 0xC0) != 0x80) return 0;
    v = (v << 6) | (b(k) & 0x3F);
  }
  if (v < min || v > 0x10FFFF || (v >= 0xD800 && v <= 0xDFFF)) return 0;
  *cp = v;
  return len;
}

// `s` for a message: at most 48 bytes, anything but printable ASCII as \xNN.
std::string Quote(std::string_view s) {
  constexpr size_t kMax = 48;
  std::string out;
  for (size_t i = 0; i < s.size() && i < kMax; ++i) {
    const auto c = static_cast<unsigned char>(s[i]);
    if (c >= 0x20 && c < 0x7F) {
      out.push_back(static_cast<char>(c));
    } else {
      constexpr char kHex[] = "0123456789abcdef";
      out += "\\x";
      out.push_back(kHex[c >> 4]);
      out.push_back(kHex[c & 0xF]);
    }
  }
  if (s.size() > kMax) out += "...";
  return out;
}

std::string CodePointText(uint32_t cp) {
  constexpr char kHex[] = "0123456789ABCDEF";
  std::string digits;
  do {
    digits.insert(digits.begin(), kHex[cp & 0xF]);
    cp >>= 4;
  } while (cp != 0);
  while (digits.size() < 4) digits.insert(digits.begin(), '0');
  return "U+" + digits;
}

// Why a URL attribute value is unsafe, or nullopt. `value` has its character
// references decoded. Browsers (WHATWG URL) strip leading/trailing C0 controls
// and spaces and remove tabs and newlines anywhere before reading the scheme.
std::optional<std::string> UnsafeUrl(std::string_view value, bool inline_image_ok) {
  std::string url;
  for (char c : value) {
    if (c != '\t' && c != '\n' && c != '\r') url.push_back(c);
  }
  const auto is_trimmed = [](char c) { return static_cast<unsigned char>(c) <= 0x20; };
  size_t b = 0;
  size_t e = url.size();
  while (b < e && is_trimmed(url[b])) ++b;
  while (e > b && is_trimmed(url[e - 1])) --e;
  const std::string_view u = std::string_view(url).substr(b, e - b);

  // The HL7 validator's URL check: not empty, and no characters a URL cannot
  // hold unescaped.
  if (u.empty()) return std::string("an empty URL is not allowed");
  for (char c : u) {
    if (c == ' ' || c == '"' || c == '<' || c == '>' || c == '\\' || c == '^' || c == '`' ||
        c == '{' || c == '|' || c == '}' || static_cast<unsigned char>(c) < 0x20) {
      if (StartsWithIgnoreCase(u, "data:")) break;  // base64 data URLs: checked below
      return Cat(
          {"the URL contains '", std::string_view(&c, 1), "', which must be percent-encoded"});
    }
  }

  // scheme = ALPHA *( ALPHA / DIGIT / "+" / "-" / "." ) ":"  (RFC 3986 §3.1)
  size_t i = 0;
  if (!u.empty() && IsAsciiAlpha(u[0])) {
    while (i < u.size() &&
           (IsAsciiAlpha(u[i]) || IsDigit(u[i]) || u[i] == '+' || u[i] == '-' || u[i] == '.')) {
      ++i;
    }
  }
  if (i > 0 && i < u.size() && u[i] == ':') {
    const std::string scheme = ToLower(u.substr(0, i));
    if (!Contains(kActiveSchemes, scheme)) return std::nullopt;
    if (scheme == "data" && inline_image_ok) {
      // data:[ ]image/png;base64,<base64>  (the official examples put a space after "data:")
      std::string_view rest = u.substr(i + 1);
      while (!rest.empty() && IsXmlSpace(rest.front())) rest.remove_prefix(1);
      for (std::string_view type : kInlineImageTypes) {
        if (!StartsWithIgnoreCase(rest, type)) continue;
        std::string_view data = rest.substr(type.size());
        if (!StartsWithIgnoreCase(data, ";base64,")) break;
        data.remove_prefix(8);
        // Base64: the alphabet, whole groups of four, '=' only at the end.
        size_t count = 0;
        bool padded = false;
        bool ok = true;
        for (char c : data) {
          if (IsXmlSpace(c)) continue;
          if (c == '=') {
            padded = true;
          } else if (padded || !(IsAsciiAlpha(c) || IsDigit(c) || c == '+' || c == '/')) {
            ok = false;
            break;
          }
          ++count;
        }
        ok = ok && count > 0 && count % 4 == 0;
        if (ok) return std::nullopt;
        break;
      }
      return "a data: URL is allowed only as a base64 PNG, GIF, JPEG or WebP image";
    }
    return Cat({"URL scheme '", Quote(scheme),
                ":' is not allowed in narrative: it can run script or open local or opaque "
                "content"});
  }
  // No scheme: a relative reference. Refuse anything that becomes a dangerous
  // scheme once all spaces and controls are dropped, whatever a parser does with them.
  std::string squashed;
  for (char c : u) {
    if (static_cast<unsigned char>(c) > 0x20) squashed.push_back(Lower(c));
    if (squashed.size() >= 16) break;
  }
  for (std::string_view bad : {"javascript:", "vbscript:", "livescript:", "data:", "file:"}) {
    if (squashed.starts_with(bad)) {
      return Cat({"URL hides the scheme '", bad, "' behind spaces or control characters"});
    }
  }
  return std::nullopt;
}

// Why a style attribute is unsafe, or nullopt. `css` has its XML character
// references decoded. CSS comments and escapes (CSS Syntax §4.3.7) are undone
// first: "expr/**/ession(" and "\65 xpression(" are both expression(.
std::optional<std::string> UnsafeStyle(std::string_view css) {
  std::string norm;
  size_t i = 0;
  const size_t n = css.size();
  while (i < n) {
    const char c = css[i];
    if (c == '/' && i + 1 < n && css[i + 1] == '*') {
      const size_t end = css.find("*/", i + 2);
      i = end == std::string_view::npos ? n : end + 2;
      continue;
    }
    if (c == '\\') {
      ++i;
      if (i >= n) break;
      if (IsHexDigit(css[i])) {
        uint32_t cp = 0;
        for (int k = 0; k < 6 && i < n && IsHexDigit(css[i]); ++k, ++i) {
          cp = cp * 16 + HexValue(css[i]);
        }
        if (i + 1 < n && css[i] == '\r' && css[i + 1] == '\n') {
          i += 2;
        } else if (i < n && (IsXmlSpace(css[i]) || css[i] == '\f')) {
          ++i;
        }
        if (cp > 0x20 && cp < 0x80) {
          norm.push_back(Lower(static_cast<char>(cp)));
        } else if (cp >= 0x80) {
          norm.push_back('?');  // non-ASCII: matches no needle
        }
        continue;
      }
      if (css[i] == '\n' || css[i] == '\r' || css[i] == '\f') {  // line continuation
        ++i;
        continue;
      }
      // "\x" is "x"; falls through to the plain-character handling below.
    }
    const char d = css[i];
    if (static_cast<unsigned char>(d) > 0x20) norm.push_back(Lower(d));
    ++i;
  }
  for (std::string_view needle : kStyleNeedles) {
    if (norm.find(needle) != std::string::npos) {
      return Cat({"style contains '", needle, "', which can run script or load code"});
    }
  }
  return std::nullopt;
}

class Checker {
 public:
  explicit Checker(std::string_view in) : in_(in) {}

  std::vector<XhtmlIssue> Run() {
    if (in_.empty()) {
      Report(xhtml_rule::kRoot, 0,
             "narrative div is empty; expected <div xmlns=\"http://www.w3.org/1999/xhtml\">");
      return std::move(issues_);
    }
    CheckCharacters();
    while (!stop_ && pos_ < in_.size()) {
      if (in_[pos_] == '<') {
        ParseMarkup();
      } else {
        ParseText();
      }
    }
    if (!stop_) {
      if (!root_seen_) {
        Report(xhtml_rule::kRoot, in_.size(),
               "no root element; expected <div xmlns=\"http://www.w3.org/1999/xhtml\">");
      }
      for (size_t k = stack_.size(); k-- > 0 && !stop_;) {
        Report(xhtml_rule::kNotWellFormed, stack_[k].offset,
               Cat({"element <", Quote(stack_[k].name), "> is never closed"}));
      }
    }
    // The character pre-pass reports first; present everything in document order.
    std::stable_sort(issues_.begin(), issues_.end(),
                     [](const XhtmlIssue& a, const XhtmlIssue& b) { return a.offset < b.offset; });
    return std::move(issues_);
  }

 private:
  struct OpenElement {
    std::string_view name;
    size_t offset;
  };
  struct Attribute {
    std::string_view name;
    size_t offset;
    std::string value;  // character and entity references decoded
  };

  // Records a finding; stops the check once kMaxXhtmlIssues are recorded.
  void Report(std::string_view rule, size_t offset, std::string message) {
    if (issues_.size() >= kMaxXhtmlIssues) return;
    message += " at byte " + std::to_string(offset);
    issues_.push_back(XhtmlIssue{std::string(rule), std::move(message), offset});
    if (issues_.size() >= kMaxXhtmlIssues) stop_ = true;
  }
  // A finding after which the rest of the input cannot be read reliably.
  void Fatal(std::string_view rule, size_t offset, std::string message) {
    Report(rule, offset, std::move(message));
    stop_ = true;
  }

  // Characters XML 1.0 forbids anywhere (§2.2) and malformed UTF-8. Every
  // structural character is ASCII, so the parser can then treat other bytes as opaque.
  void CheckCharacters() {
    for (size_t i = 0; i < in_.size() && !stop_;) {
      const auto c = static_cast<unsigned char>(in_[i]);
      if (c < 0x80) {
        if (c < 0x20 && !IsXmlSpace(static_cast<char>(c))) {
          Report(xhtml_rule::kNotWellFormed, i,
                 Cat({"control character ", CodePointText(c), " is not allowed in XML"}));
        }
        ++i;
        continue;
      }
      uint32_t cp = 0;
      const size_t len = DecodeUtf8(in_, i, &cp);
      if (len == 0) {
        Report(xhtml_rule::kNotWellFormed, i, "invalid UTF-8");
        ++i;
        continue;
      }
      if (!IsXmlChar(cp)) {
        Report(xhtml_rule::kNotWellFormed, i,
               Cat({"character ", CodePointText(cp), " is not allowed in XML"}));
      }
      i += len;
    }
  }

  size_t SkipSpace(size_t i) const {
    while (i < in_.size() && IsXmlSpace(in_[i])) ++i;
    return i;
  }
  size_t ScanName(size_t i) const {
    if (i >= in_.size() || !IsNameStart(in_[i])) return i;
    while (i < in_.size() && IsNameChar(in_[i])) ++i;
    return i;
  }

  // At in_[i] == '&': checks one reference and appends what it stands for to *out
  // (when given). Returns the index after it; a bare '&' counts as itself.
  size_t ParseReference(size_t i, std::string* out) {
    const size_t n = in_.size();
    if (i + 1 < n && in_[i + 1] == '#') {
      size_t k = i + 2;
      const bool hex = k < n && in_[k] == 'x';
      if (hex) ++k;
      const size_t digits = k;
      uint32_t cp = 0;
      bool overflow = false;
      while (k < n && (hex ? IsHexDigit(in_[k]) : IsDigit(in_[k]))) {
        if (!overflow) {
          cp = cp * (hex ? 16 : 10) + static_cast<uint32_t>(HexValue(in_[k]));
          if (cp > 0x10FFFF) overflow = true;
        }
        ++k;
      }
      if (k == digits) {
        Report(xhtml_rule::kNotWellFormed, i,
               "'&#' is not followed by digits (write a literal '&' as &amp;)");
        if (out) out->push_back('&');
        return i + 1;
      }
      const std::string_view ref = in_.substr(i, k - i);
      if (k < n && in_[k] == ';') {
        ++k;
      } else {
        Report(xhtml_rule::kNotWellFormed, i,
               Cat({"character reference '", Quote(ref), "' lacks its ';'"}));
      }
      if (overflow || !IsXmlChar(cp)) {
        Report(xhtml_rule::kEntity, i,
               Cat({"character reference '", Quote(ref), ";' names ",
                    overflow ? std::string("no Unicode character") : CodePointText(cp),
                    ", which XML does not allow"}));
      } else if (cp >= 0x7F && cp <= 0x9F) {
        Report(xhtml_rule::kEntity, i,
               Cat({"character reference '", Quote(ref), ";' names the control character ",
                    CodePointText(cp)}));
      }
      if (out) {
        // What an HTML parser would see: invalid code points become U+FFFD.
        json::internal::AppendUtf8(
            *out, overflow || (cp >= 0xD800 && cp <= 0xDFFF) || cp == 0 ? 0xFFFD : cp);
      }
      return k;
    }
    const size_t end = ScanName(i + 1);
    if (end == i + 1 || end >= n || in_[end] != ';') {
      Report(xhtml_rule::kNotWellFormed, i, "bare '&' (write a literal '&' as &amp;)");
      if (out) out->push_back('&');
      return i + 1;
    }
    const std::string_view name = in_.substr(i + 1, end - i - 1);
    static constexpr std::pair<std::string_view, char> kPredefined[] = {
        {"lt", '<'}, {"gt", '>'}, {"amp", '&'}, {"quot", '"'}, {"apos", '\''}};
    for (const auto& [entity, c] : kPredefined) {
      if (name == entity) {
        if (out) out->push_back(c);
        return end + 1;
      }
    }
    Report(xhtml_rule::kEntity, i,
           Cat({"entity '&", Quote(name),
                ";' is not defined in XML (only &lt; &gt; &amp; &quot; &apos;; HTML "
                "entities such as &nbsp; must be written as character references "
                "like &#160;)"}));
    if (out) {
      bool decoded = false;
      for (const auto& [entity, c] : kHtmlNamedCharacters) {
        if (name == entity) {
          out->push_back(c);
          decoded = true;
          break;
        }
      }
      if (!decoded) out->append(in_.substr(i, end + 1 - i));
    }
    return end + 1;
  }

  void ParseText() {
    bool outside_reported = false;
    const auto outside_root = [&](size_t at) {
      if (stack_.empty() && !outside_reported) {
        outside_reported = true;
        Report(xhtml_rule::kRoot, at,
               root_seen_ ? "text after the root element" : "text before the root element");
      }
    };
    while (pos_ < in_.size() && in_[pos_] != '<' && !stop_) {
      const char c = in_[pos_];
      if (c == '&') {
        outside_root(pos_);
        pos_ = ParseReference(pos_, nullptr);
        continue;
      }
      if (c == ']' && in_.substr(pos_, 3) == "]]>") {
        Report(xhtml_rule::kNotWellFormed, pos_, "']]>' is not allowed in text");
      }
      if (!IsXmlSpace(c)) outside_root(pos_);
      ++pos_;
    }
  }

  void ParseMarkup() {
    const std::string_view rest = in_.substr(pos_);
    if (rest.starts_with("<!--")) return ParseComment();
    if (rest.starts_with("<![CDATA[")) {
      Report(xhtml_rule::kCdata, pos_,
             "CDATA sections are not allowed (an HTML parser ends them at the first '>')");
      const size_t end = in_.find("]]>", pos_ + 9);
      if (end == std::string_view::npos) {
        return Fatal(xhtml_rule::kNotWellFormed, pos_, "unterminated CDATA section");
      }
      pos_ = end + 3;
      return;
    }
    if (StartsWithIgnoreCase(rest, "<!DOCTYPE")) {
      return Fatal(xhtml_rule::kDoctype, pos_, "DOCTYPE declarations are not allowed");
    }
    if (rest.starts_with("<!")) {
      return Fatal(xhtml_rule::kNotWellFormed, pos_,
                   "'<!' starts neither a comment nor a CDATA section");
    }
    if (rest.starts_with("<?")) {
      Report(xhtml_rule::kProcessingInstruction, pos_,
             "processing instructions (including <?xml ...?>) are not allowed");
      const size_t end = in_.find("?>", pos_ + 2);
      if (end == std::string_view::npos) {
        return Fatal(xhtml_rule::kNotWellFormed, pos_, "unterminated processing instruction");
      }
      pos_ = end + 2;
      return;
    }
    if (rest.starts_with("</")) return ParseEndTag();
    if (rest.size() > 1 && IsNameStart(rest[1])) return ParseStartTag();
    // Recoverable: a stray '<' in text. Browsers show it; XML forbids it.
    Report(xhtml_rule::kNotWellFormed, pos_, "'<' in text must be written &lt;");
    if (stack_.empty()) {
      Report(xhtml_rule::kRoot, pos_,
             root_seen_ ? "text after the root element" : "text before the root element");
    }
    ++pos_;
  }

  // XML 1.0 §2.5: "<!--" text without "--" "-->".
  void ParseComment() {
    const size_t start = pos_;
    const size_t body = pos_ + 4;
    const std::string_view content = in_.substr(body);
    if (content.starts_with(">") || content.starts_with("->")) {
      Report(xhtml_rule::kComment, start,
             "comment starting '<!-->' or '<!--->' ends early in an HTML parser, exposing its "
             "content as markup");
    }
    const size_t dashes = in_.find("--", body);
    if (dashes == std::string_view::npos) {
      return Fatal(xhtml_rule::kNotWellFormed, start, "unterminated comment");
    }
    if (dashes + 2 < in_.size() && in_[dashes + 2] == '>') {
      pos_ = dashes + 3;
      return;
    }
    Report(xhtml_rule::kNotWellFormed, dashes, "'--' is not allowed inside a comment");
    const size_t end = in_.find("-->", dashes);
    if (end == std::string_view::npos) {
      return Fatal(xhtml_rule::kNotWellFormed, start, "unterminated comment");
    }
    pos_ = end + 3;
  }

  void ParseEndTag() {
    const size_t start = pos_;
    const size_t name_end = ScanName(pos_ + 2);
    if (name_end == pos_ + 2) {
      return Fatal(xhtml_rule::kNotWellFormed, start, "'</' is not followed by an element name");
    }
    const std::string_view name = in_.substr(pos_ + 2, name_end - pos_ - 2);
    size_t i = SkipSpace(name_end);
    if (i >= in_.size() || in_[i] != '>') {
      const size_t gt = in_.find('>', i);
      if (gt == std::string_view::npos) {
        return Fatal(xhtml_rule::kNotWellFormed, start,
                     Cat({"unterminated end tag </", Quote(name), ">"}));
      }
      Report(xhtml_rule::kNotWellFormed, start,
             Cat({"end tag </", Quote(name), "> may contain only its name"}));
      i = gt;
    }
    pos_ = i + 1;

    // Close the matching open element; anything opened inside it and still
    // open is reported as unclosed. An end tag matching nothing is ignored.
    size_t match = stack_.size();
    while (match > 0 && stack_[match - 1].name != name) --match;
    if (match == 0) {
      Report(xhtml_rule::kNotWellFormed, start,
             Cat({"end tag </", Quote(name), "> has no matching start tag"}));
      return;
    }
    for (size_t k = stack_.size(); k > match; --k) {
      Report(xhtml_rule::kNotWellFormed, stack_[k - 1].offset,
             Cat({"element <", Quote(stack_[k - 1].name), "> is not closed before </", Quote(name),
                  ">"}));
    }
    stack_.resize(match - 1);
  }

  void ParseStartTag() {
    const size_t start = pos_;
    const size_t n = in_.size();
    const size_t name_end = ScanName(pos_ + 1);
    const std::string_view name = in_.substr(pos_ + 1, name_end - pos_ - 1);
    attributes_.clear();
    size_t i = name_end;
    bool self_closing = false;
    bool complete = false;
    while (!stop_) {
      const size_t before_space = i;
      i = SkipSpace(i);
      if (i >= n) break;
      const char c = in_[i];
      if (c == '>') {
        ++i;
        complete = true;
        break;
      }
      if (c == '/' && i + 1 < n && in_[i + 1] == '>') {
        i += 2;
        self_closing = true;
        complete = true;
        break;
      }
      if (!IsNameStart(c)) {
        Report(
            xhtml_rule::kNotWellFormed, i,
            Cat({"unexpected '", Quote(in_.substr(i, 1)), "' in start tag <", Quote(name), ">"}));
        while (i < n && !IsXmlSpace(in_[i]) && in_[i] != '>' && in_[i] != '/') ++i;
        if (i < n && in_[i] == '/' && (i + 1 >= n || in_[i + 1] != '>')) ++i;
        continue;
      }
      Attribute attr;
      attr.offset = i;
      const size_t attr_end = ScanName(i);
      attr.name = in_.substr(i, attr_end - i);
      if (i == before_space) {
        Report(xhtml_rule::kNotWellFormed, i,
               Cat({"attribute ", Quote(attr.name),
                    " must be separated from what precedes it by whitespace"}));
      }
      i = SkipSpace(attr_end);
      if (i >= n) break;
      if (in_[i] != '=') {
        Report(xhtml_rule::kNotWellFormed, attr.offset,
               Cat({"attribute ", Quote(attr.name), " on <", Quote(name),
                    "> has no value (XML needs name=\"value\")"}));
        attributes_.push_back(std::move(attr));
        continue;
      }
      i = SkipSpace(i + 1);
      if (i >= n) break;
      const char quote = in_[i];
      if (quote == '"' || quote == '\'') {
        ++i;
        while (i < n && in_[i] != quote) {
          if (in_[i] == '&') {
            i = ParseReference(i, &attr.value);
            continue;
          }
          if (in_[i] == '<') {
            Report(
                xhtml_rule::kNotWellFormed, i,
                Cat({"'<' in the value of attribute ", Quote(attr.name), " must be written &lt;"}));
          }
          attr.value.push_back(in_[i]);
          ++i;
        }
        if (i >= n) break;
        ++i;  // closing quote
      } else {
        // Recoverable: read the value the way an HTML parser would, so the
        // attribute is still checked (<img src=x onerror=alert(1)>).
        Report(xhtml_rule::kNotWellFormed, i,
               Cat({"value of attribute ", Quote(attr.name), " on <", Quote(name),
                    "> is not quoted"}));
        while (i < n && !IsXmlSpace(in_[i]) && in_[i] != '>') {
          if (in_[i] == '&') {
            i = ParseReference(i, &attr.value);
            continue;
          }
          attr.value.push_back(in_[i]);
          ++i;
        }
      }
      attributes_.push_back(std::move(attr));
    }
    pos_ = i;
    const bool broken = !complete && !stop_;
    if (broken) {
      Report(xhtml_rule::kNotWellFormed, start,
             Cat({"unterminated start tag <", Quote(name), ">"}));
    }
    // Checked even when the tag is broken, so the report says what it would do.
    CheckElement(name, start);
    if (broken) stop_ = true;
    if (stop_ || self_closing) return;
    if (stack_.size() >= kMaxXhtmlDepth) {
      return Fatal(xhtml_rule::kTooDeep, start,
                   "elements nest deeper than " + std::to_string(kMaxXhtmlDepth));
    }
    stack_.push_back(OpenElement{name, start});
  }

  // Element, attribute, URL and style rules for one start tag.
  void CheckElement(std::string_view name, size_t offset) {
    const bool root = stack_.empty() && !root_seen_;
    if (stack_.empty() && root_seen_) {
      Report(xhtml_rule::kRoot, offset,
             Cat({"element <", Quote(name),
                  "> after the root element (the narrative must be a single <div>)"}));
    }
    if (root) {
      root_seen_ = true;
      if (name != "div") {
        Report(xhtml_rule::kRoot, offset,
               Cat({"root element is <", Quote(name), ">; it must be <div>"}));
      }
    }
    // The HL7 validator (checkInnerNames): block elements cannot sit inside a
    // paragraph, at any depth (HTML would close the <p> there).
    if (name == "p" || name == "div" || name == "blockquote" || name == "table" || name == "ol" ||
        name == "ul") {
      for (const OpenElement& open : stack_) {
        if (open.name == "p") {
          Report(xhtml_rule::kElement, offset,
                 Cat({"element <", Quote(name), "> is not allowed inside <p>"}));
          break;
        }
      }
    }
    if (!Contains(kElements, name)) {
      std::string why;
      if (name.find(':') != std::string_view::npos) {
        why = " (elements must be unprefixed XHTML)";
      } else if (Contains(kElements, ToLower(name))) {
        why = " (XHTML element names are lower case)";
      } else {
        why = " (only basic formatting elements, <a> and <img> are allowed)";
      }
      Report(xhtml_rule::kElement, offset,
             Cat({"element <", Quote(name), "> is not allowed in narrative", why}));
    }

    // Duplicate attributes (XML 1.0 §3.1 "Unique Att Spec"): sort, compare neighbours.
    std::vector<std::pair<std::string_view, size_t>> names;
    names.reserve(attributes_.size());
    for (const Attribute& a : attributes_) names.emplace_back(a.name, a.offset);
    std::sort(names.begin(), names.end());
    for (size_t k = 1; k < names.size(); ++k) {
      if (names[k].first == names[k - 1].first) {
        Report(xhtml_rule::kNotWellFormed, std::max(names[k].second, names[k - 1].second),
               Cat({"duplicate attribute ", Quote(names[k].first), " on <", Quote(name), ">"}));
      }
    }

    bool has_xmlns = false;
    for (const Attribute& a : attributes_) {
      const std::string_view an = a.name;
      const size_t colon = an.find(':');
      const std::string_view local = colon == std::string_view::npos ? an : an.substr(colon + 1);
      const std::string where = Cat({"attribute ", Quote(an), " on <", Quote(name), ">"});
      if (an == "xmlns") {
        has_xmlns = true;
        if (a.value != kXhtmlNamespace) {
          Report(root ? xhtml_rule::kRoot : xhtml_rule::kNamespace, a.offset,
                 Cat({where, " declares namespace '", Quote(a.value), "'; it must be ",
                      kXhtmlNamespace}));
        }
      } else if (an.starts_with("xmlns:")) {
        // A prefix declaration is inert: any prefixed element or attribute using it
        // is refused below.
      } else if (StartsWithIgnoreCase(local, "on")) {
        Report(xhtml_rule::kEventHandler, a.offset,
               Cat({where, " is an event handler; narrative must not contain script"}));
      } else if (an.starts_with("xlink:")) {
        Report(xhtml_rule::kAttribute, a.offset, Cat({where, ": xlink is not allowed"}));
      } else if (!Contains(kGlobalAttributes, an) &&
                 !Contains(kElementAttributes, Cat({name, ".", an}))) {
        Report(xhtml_rule::kAttribute, a.offset, Cat({where, " is not allowed"}));
      }
      if (Contains(kUrlAttributes, ToLower(local))) {
        const bool image = name == "img" && an == "src";
        if (auto why = UnsafeUrl(a.value, image)) {
          Report(xhtml_rule::kUrlScheme, a.offset, Cat({where, ": ", *why}));
        }
      }
      if (ToLower(local) == "style") {
        if (auto why = UnsafeStyle(a.value)) {
          Report(xhtml_rule::kStyle, a.offset, Cat({where, ": ", *why}));
        }
      }
    }
    if (root && !has_xmlns) {
      Report(xhtml_rule::kRoot, offset,
             "root <div> must declare xmlns=\"http://www.w3.org/1999/xhtml\"");
    }
  }

  std::string_view in_;
  size_t pos_ = 0;
  bool stop_ = false;
  bool root_seen_ = false;  // the root start tag has been read
  std::vector<OpenElement> stack_;
  std::vector<Attribute> attributes_;  // of the start tag being read
  std::vector<XhtmlIssue> issues_;
};

}  // namespace

std::vector<XhtmlIssue> CheckNarrativeXhtml(std::string_view div) { return Checker(div).Run(); }

bool NarrativeHasContent(std::string_view div) {
  size_t i = 0;
  while (i < div.size()) {
    if (div[i] == '<') {
      // A comment's text is not content.
      if (div.substr(i).starts_with("<!--")) {
        size_t end = div.find("-->", i + 4);
        if (end == std::string_view::npos) return false;
        i = end + 3;
        continue;
      }
      size_t end = div.find('>', i);
      if (end == std::string_view::npos) return false;
      std::string_view tag = div.substr(i + 1, end - i - 1);
      if (tag.starts_with("img") && tag.size() > 3 && (IsXmlSpace(tag[3]) || tag[3] == '/') &&
          tag.find("src") != std::string_view::npos) {
        return true;
      }
      i = end + 1;
      continue;
    }
    if (!IsXmlSpace(div[i])) return true;
    ++i;
  }
  return false;
}

}  // namespace fhirward::fhir
