#include "fhir/xhtml.h"

#include <string>
#include <string_view>
#include <vector>

#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace fhirward::fhir {
namespace {

using ::testing::Contains;
using ::testing::ElementsAre;
using ::testing::HasSubstr;
using ::testing::IsEmpty;
using ::testing::Not;

constexpr std::string_view kOpen = "<div xmlns=\"http://www.w3.org/1999/xhtml\">";

// `body` inside a correct root div.
std::string Div(std::string_view body) { return std::string(kOpen) + std::string(body) + "</div>"; }

std::vector<std::string> Rules(std::string_view div) {
  std::vector<std::string> rules;
  for (const XhtmlIssue& issue : CheckNarrativeXhtml(div)) rules.push_back(issue.rule);
  return rules;
}

std::string Messages(std::string_view div) {
  std::string all;
  for (const XhtmlIssue& issue : CheckNarrativeXhtml(div)) {
    all += issue.rule + ": " + issue.message + "\n";
  }
  return all;
}

// ---------------------------------------------------------------- accepted

TEST(XhtmlTest, AcceptsMinimalNarratives) {
  EXPECT_THAT(Rules(Div("")), IsEmpty());
  EXPECT_THAT(Rules(Div("Hello")), IsEmpty());
  EXPECT_THAT(Rules("<div xmlns=\"http://www.w3.org/1999/xhtml\"/>"), IsEmpty());
  EXPECT_THAT(Rules("<div xmlns='http://www.w3.org/1999/xhtml'>x</div>"), IsEmpty());
  EXPECT_THAT(Rules("  \n<div xmlns=\"http://www.w3.org/1999/xhtml\" >x</div >\n "), IsEmpty());
  EXPECT_THAT(Rules("<!-- before --><div xmlns=\"http://www.w3.org/1999/xhtml\">x</div>"),
              IsEmpty());
}

TEST(XhtmlTest, AcceptsEveryAllowedElement) {
  const std::string div = Div(
      "<p>a <b>b</b> <i>i</i> <em>e</em> <strong>s</strong> <small>s</small> <big>b</big> "
      "<tt>t</tt> <dfn>d</dfn> <q cite=\"http://x.org\">q</q> <var>v</var> <abbr "
      "title=\"t\">a</abbr> "
      "<acronym title=\"t\">a</acronym> <cite>c</cite> <code>c</code> <samp>s</samp> <kbd>k</kbd> "
      "<bdo dir=\"rtl\">b</bdo> <sub>1</sub><sup>2</sup> <span class=\"c\">s</span><br/></p>"
      "<h1>1</h1><h2>2</h2><h3>3</h3><h4>4</h4><h5>5</h5><h6>6</h6><hr/><address>a</address>"
      "<blockquote cite=\"#x\">q</blockquote><pre xml:space=\"preserve\">p</pre>"
      "<ul><li>a</li></ul><ol start-not-used=\"\"><li>b</li></ol>"
      "<dl><dt>t</dt><dd>d</dd></dl>"
      "<table border=\"1\" cellpadding=\"0\" cellspacing=\"0\" summary=\"s\"><caption>c</caption>"
      "<colgroup span=\"2\"><col span=\"1\"/></colgroup><thead><tr><th scope=\"col\">h</th></tr>"
      "</thead><tfoot><tr><td>f</td></tr></tfoot><tbody><tr><td colspan=\"2\" rowspan=\"1\" "
      "valign=\"top\" align=\"left\" nowrap=\"nowrap\">d</td></tr></tbody></table>"
      "<img src=\"image.png\" alt=\"a\" width=\"1\" height=\"1\" usemap=\"#m\"/>"
      "<map name=\"m\"><area shape=\"rect\" coords=\"0,0,1,1\" href=\"#top\" alt=\"a\"/></map>"
      "<a name=\"top\">anchor</a><div lang=\"en\" xml:lang=\"en\" id=\"i\" dir=\"ltr\">d</div>");
  // "start-not-used" is the one deliberate outsider.
  EXPECT_THAT(Rules(div), ElementsAre("xhtml-attribute")) << Messages(div);
}

TEST(XhtmlTest, AcceptsReferencesAndComments) {
  EXPECT_THAT(Rules(Div("&lt;&gt;&amp;&quot;&apos; &#160;&#xA0;&#x1F600; caf\xc3\xa9")), IsEmpty());
  EXPECT_THAT(Rules(Div("<!-- a comment - with a dash -->x<!---->")), IsEmpty());
  EXPECT_THAT(Rules(Div("<a title=\"a &amp; b &#x22;q&#x22;\" href=\"a?x=1&amp;y=2\">x</a>")),
              IsEmpty());
}

TEST(XhtmlTest, AcceptsNestedXhtmlNamespaceAndPrefixDeclarations) {
  EXPECT_THAT(Rules(Div("<p xmlns=\"http://www.w3.org/1999/xhtml\">x</p>")), IsEmpty());
  EXPECT_THAT(Rules("<div xmlns=\"http://www.w3.org/1999/xhtml\" "
                    "xmlns:xlink=\"http://www.w3.org/1999/xlink\">x</div>"),
              IsEmpty());
}

TEST(XhtmlTest, AcceptsSafeUrls) {
  for (std::string_view href :
       {"http://hl7.org/fhir", "https://example.org/a?b=c#d", "HTTPS://EXAMPLE.ORG",
        "mailto:fhir@lists.hl7.org", "tel:+15555550100", "urn:oid:1.2.3", "#fragment",
        "Patient/123", "patient.html#x", "//example.org/x", "?q=1", "a:b/c/../d:e"}) {
    const std::string div = Div("<a href=\"" + std::string(href) + "\">x</a>");
    // "a:b/..." has the (passive) scheme "a".
    EXPECT_THAT(Rules(div), IsEmpty()) << href << "\n" << Messages(div);
  }
}

TEST(XhtmlTest, AcceptsInlineRasterImages) {
  for (std::string_view src :
       {"data:image/png;base64,iVBORw0KGgo=", "data: image/png;base64,iVBORw0KGgo=",
        "DATA:IMAGE/GIF;BASE64,R0lGODlh", "data:image/jpeg;base64,/9j/4AAQ",
        "data:image/webp;base64,UklGRg==", " data:image/png;base64,iVBO Rw0K\nGgo="}) {
    const std::string div = Div("<img src=\"" + std::string(src) + "\" alt=\"x\"/>");
    EXPECT_THAT(Rules(div), IsEmpty()) << src << "\n" << Messages(div);
  }
}

TEST(XhtmlTest, AcceptsOrdinaryStyles) {
  // As in the official examples, including a data: background image.
  const std::string div = Div(
      "<td style=\"vertical-align: top; text-align : left; background-color: white; border: 0px "
      "#F0F0F0 solid; padding:0px 4px 0px 4px; white-space: nowrap; background-image: "
      "url(data: image/png;base64,iVBORw0KGgoAAAANSUhEUgAAAyAAAAACCAYAAACg/LjIAAAAI=)\">x</td>");
  EXPECT_THAT(Rules(Div("<table><tr>" + div + "</tr></table>")), IsEmpty());
  EXPECT_THAT(Rules(Div("<span style=\"color: red; font-family: 'Times New Roman'\">x</span>")),
              IsEmpty());
}

// ---------------------------------------------------------------- root

TEST(XhtmlTest, RootMustBeXhtmlDiv) {
  EXPECT_THAT(Rules(""), ElementsAre("xhtml-root"));
  EXPECT_THAT(Rules("   "), ElementsAre("xhtml-root"));
  EXPECT_THAT(Rules("just text"), ElementsAre("xhtml-root", "xhtml-root"));
  EXPECT_THAT(Rules("<div>x</div>"), ElementsAre("xhtml-root"));
  EXPECT_THAT(Rules("<div xmlns=\"http://www.w3.org/1999/xhtml/\">x</div>"),
              ElementsAre("xhtml-root"));
  EXPECT_THAT(Rules("<div xmlns=\"\">x</div>"), ElementsAre("xhtml-root"));
  EXPECT_THAT(Rules("<p xmlns=\"http://www.w3.org/1999/xhtml\">x</p>"), ElementsAre("xhtml-root"));
  EXPECT_THAT(Rules("<DIV xmlns=\"http://www.w3.org/1999/xhtml\">x</DIV>"),
              ElementsAre("xhtml-root", "xhtml-element"));
  // A prefixed root: namespace-correct XML, but not the unprefixed div FHIR requires.
  EXPECT_THAT(Rules("<h:div xmlns:h=\"http://www.w3.org/1999/xhtml\">x</h:div>"),
              ElementsAre("xhtml-root", "xhtml-element", "xhtml-root"));
}

TEST(XhtmlTest, OnlyOneRootAndNothingOutsideIt) {
  EXPECT_THAT(Rules(Div("a") + Div("b")), ElementsAre("xhtml-root"));
  EXPECT_THAT(Rules("text" + Div("a")), ElementsAre("xhtml-root"));
  EXPECT_THAT(Rules(Div("a") + "text"), ElementsAre("xhtml-root"));
  EXPECT_THAT(Rules(Div("a") + "&amp;"), ElementsAre("xhtml-root"));
  EXPECT_THAT(Rules(Div("a") + "<script>alert(1)</script>"),
              ElementsAre("xhtml-root", "xhtml-element"));
}

// ---------------------------------------------------------------- well-formedness

TEST(XhtmlTest, UnclosedAndMismatchedTags) {
  EXPECT_THAT(Rules(std::string(kOpen) + "<p>x"),
              ElementsAre("xhtml-not-well-formed", "xhtml-not-well-formed"));
  EXPECT_THAT(Rules(Div("<p>x")), ElementsAre("xhtml-not-well-formed"));
  EXPECT_THAT(Messages(Div("<p>x")), HasSubstr("<p> is not closed before </div>"));
  EXPECT_THAT(Rules(Div("<b><i>x</b></i>")),
              ElementsAre("xhtml-not-well-formed", "xhtml-not-well-formed"));
  EXPECT_THAT(Rules(Div("x</p>")), ElementsAre("xhtml-not-well-formed"));
  EXPECT_THAT(Rules(Div("<br>")), ElementsAre("xhtml-not-well-formed"));
  EXPECT_THAT(Rules(Div("<p>x</P>")),
              ElementsAre("xhtml-not-well-formed", "xhtml-not-well-formed"));
  EXPECT_THAT(Rules(Div("<p>x</p foo=\"1\">")), ElementsAre("xhtml-not-well-formed"));
  EXPECT_THAT(Rules(Div("<p>x</ p>")), ElementsAre("xhtml-not-well-formed"));
}

TEST(XhtmlTest, UnterminatedConstructsStopTheCheck) {
  EXPECT_THAT(Rules(std::string(kOpen) + "<p class=\"x"), Contains("xhtml-not-well-formed"));
  EXPECT_THAT(Rules(std::string(kOpen) + "<p"), Contains("xhtml-not-well-formed"));
  EXPECT_THAT(Rules(std::string(kOpen) + "<!-- x"), ElementsAre("xhtml-not-well-formed"));
  EXPECT_THAT(Rules(std::string(kOpen) + "<?pi x"),
              ElementsAre("xhtml-processing-instruction", "xhtml-not-well-formed"));
  EXPECT_THAT(Rules(std::string(kOpen) + "</div"), ElementsAre("xhtml-not-well-formed"));
  EXPECT_THAT(Rules(std::string(kOpen) + "</"), ElementsAre("xhtml-not-well-formed"));
}

TEST(XhtmlTest, AttributeSyntax) {
  EXPECT_THAT(Rules(Div("<p class=x>y</p>")), ElementsAre("xhtml-not-well-formed"));
  EXPECT_THAT(Rules(Div("<td nowrap>y</td>")), Contains("xhtml-not-well-formed"));
  EXPECT_THAT(Rules(Div("<p class=\"a\" class=\"b\">y</p>")), ElementsAre("xhtml-not-well-formed"));
  EXPECT_THAT(Messages(Div("<p class=\"a\" class=\"b\">y</p>")),
              HasSubstr("duplicate attribute class on <p>"));
  EXPECT_THAT(Rules(Div("<p class=\"a\"id=\"b\">y</p>")), ElementsAre("xhtml-not-well-formed"));
  EXPECT_THAT(Rules(Div("<p title=\"a<b\">y</p>")), ElementsAre("xhtml-not-well-formed"));
  EXPECT_THAT(Rules(Div("<p \"x\">y</p>")), ElementsAre("xhtml-not-well-formed"));
  EXPECT_THAT(Rules(Div("<p class = \"a\" >y</p >")), IsEmpty());
}

TEST(XhtmlTest, CharactersXmlForbids) {
  EXPECT_THAT(Rules(Div("a\x01z")), ElementsAre("xhtml-not-well-formed"));
  EXPECT_THAT(Rules(Div(std::string("a\0b", 3))), ElementsAre("xhtml-not-well-formed"));
  EXPECT_THAT(Rules(Div("a\xffz")), ElementsAre("xhtml-not-well-formed"));
  EXPECT_THAT(Rules(Div("a\xc0\xafz")), Contains("xhtml-not-well-formed"));         // overlong
  EXPECT_THAT(Rules(Div("a\xed\xa0\x80z")), Contains("xhtml-not-well-formed"));     // surrogate
  EXPECT_THAT(Rules(Div("a\xef\xbf\xbez")), ElementsAre("xhtml-not-well-formed"));  // U+FFFE
  EXPECT_THAT(Rules(Div("a]]>b")), ElementsAre("xhtml-not-well-formed"));
  EXPECT_THAT(Rules(Div("1 < 2")), ElementsAre("xhtml-not-well-formed"));
  EXPECT_THAT(Rules(Div("a & b")), ElementsAre("xhtml-not-well-formed"));
  EXPECT_THAT(Rules(Div("AT&T;")), ElementsAre("xhtml-entity"));
}

// ---------------------------------------------------------------- elements

TEST(XhtmlTest, RefusesActiveAndStructuralElements) {
  for (std::string_view name :
       {"script",  "style",   "iframe",   "frame",    "frameset", "object", "embed",  "applet",
        "form",    "input",   "button",   "textarea", "select",   "option", "base",   "link",
        "meta",    "head",    "body",     "html",     "title",    "svg",    "math",   "font",
        "center",  "marquee", "noscript", "template", "video",    "audio",  "source", "param",
        "isindex", "xml",     "blink",    "u",        "s",        "strike"}) {
    const std::string tag(name);
    const std::string div = Div("<" + tag + ">x</" + tag + ">");
    EXPECT_THAT(Rules(div), ElementsAre("xhtml-element")) << name;
  }
}

TEST(XhtmlTest, ScriptVariants) {
  EXPECT_THAT(Rules(Div("<script>alert(1)</script>")), ElementsAre("xhtml-element"));
  EXPECT_THAT(Rules(Div("<script src=\"https://evil.example/x.js\"/>")),
              ElementsAre("xhtml-element", "xhtml-attribute"));
  EXPECT_THAT(Messages(Div("<SCRIPT>alert(1)</SCRIPT>")), HasSubstr("<SCRIPT> is not allowed"));
  EXPECT_THAT(Messages(Div("<P>x</P>")), HasSubstr("lower case"));
  EXPECT_THAT(Rules(Div("<ScRiPt>alert(1)</ScRiPt>")), ElementsAre("xhtml-element"));
  EXPECT_THAT(Rules(Div("<html:script xmlns:html=\"http://www.w3.org/1999/xhtml\">x"
                        "</html:script>")),
              ElementsAre("xhtml-element"));
}

TEST(XhtmlTest, SvgAndMathAreRefusedWithTheirHandlers) {
  EXPECT_THAT(Rules(Div("<svg onload=\"alert(1)\"/>")),
              ElementsAre("xhtml-element", "xhtml-event-handler"));
  EXPECT_THAT(
      Rules(Div("<svg xmlns=\"http://www.w3.org/2000/svg\"><a xlink:href=\"javascript:"
                "alert(1)\">x</a></svg>")),
      ElementsAre("xhtml-element", "xhtml-namespace", "xhtml-attribute", "xhtml-url-scheme"));
  EXPECT_THAT(Rules(Div("<math><mi xlink:href=\"javascript:alert(1)\">x</mi></math>")),
              ElementsAre("xhtml-element", "xhtml-element", "xhtml-attribute", "xhtml-url-scheme"));
}

TEST(XhtmlTest, InnerNamespaceMustBeXhtml) {
  EXPECT_THAT(Rules(Div("<p xmlns=\"http://www.w3.org/2000/svg\">x</p>")),
              ElementsAre("xhtml-namespace"));
  EXPECT_THAT(Rules(Div("<p xmlns=\"\">x</p>")), ElementsAre("xhtml-namespace"));
}

// ---------------------------------------------------------------- attributes

TEST(XhtmlTest, EventHandlersInAnyCase) {
  EXPECT_THAT(Rules(Div("<p onclick=\"alert(1)\">x</p>")), ElementsAre("xhtml-event-handler"));
  EXPECT_THAT(Rules(Div("<p ONMOUSEOVER=\"alert(1)\">x</p>")), ElementsAre("xhtml-event-handler"));
  EXPECT_THAT(Rules(Div("<img src=\"x\" onerror=\"alert(1)\"/>")),
              ElementsAre("xhtml-event-handler"));
  EXPECT_THAT(Rules(Div("<a href=\"#\" onFocus=\"alert(1)\" autofocus=\"\">x</a>")),
              ElementsAre("xhtml-event-handler", "xhtml-attribute"));
  EXPECT_THAT(Rules(Div("<p x:onclick=\"alert(1)\">x</p>")), ElementsAre("xhtml-event-handler"));
}

TEST(XhtmlTest, HtmlStyleXssPayloadStillReportsTheHandler) {
  // Unquoted values are not XML, but the attribute is still read and checked.
  EXPECT_THAT(Rules(Div("<img src=x onerror=alert(1)>")),
              ElementsAre("xhtml-not-well-formed", "xhtml-not-well-formed", "xhtml-event-handler",
                          "xhtml-not-well-formed"));
  // An unterminated tag stops the check but its attributes are still judged.
  EXPECT_THAT(Rules(std::string(kOpen) + "<img src=\"x\" onerror=\"alert(1)\""),
              ElementsAre("xhtml-not-well-formed", "xhtml-event-handler"));
}

TEST(XhtmlTest, AttributesOutsideTheAllowedSets) {
  EXPECT_THAT(Rules(Div("<a href=\"#\" target=\"_blank\">x</a>")), ElementsAre("xhtml-attribute"));
  EXPECT_THAT(Rules(Div("<a src=\"x.png\">x</a>")), ElementsAre("xhtml-attribute"));
  EXPECT_THAT(Rules(Div("<div href=\"#\">x</div>")), ElementsAre("xhtml-attribute"));
  EXPECT_THAT(Rules(Div("<img srcset=\"a.png 1x\"/>")), ElementsAre("xhtml-attribute"));
  EXPECT_THAT(Rules(Div("<p xlink:title=\"x\">x</p>")), ElementsAre("xhtml-attribute"));
  EXPECT_THAT(Rules(Div("<p CLASS=\"x\">x</p>")), ElementsAre("xhtml-attribute"));
  EXPECT_THAT(Rules(Div("<table background=\"javascript:alert(1)\"><tr><td>x</td></tr></table>")),
              ElementsAre("xhtml-attribute", "xhtml-url-scheme"));
  EXPECT_THAT(Messages(Div("<a href=\"#\" target=\"_blank\">x</a>")),
              HasSubstr("attribute target on <a> is not allowed at byte 54"));
}

// ---------------------------------------------------------------- URLs

TEST(XhtmlTest, DangerousSchemes) {
  for (std::string_view href : {
           "javascript:alert(1)",
           "JaVaScRiPt:alert(1)",
           " javascript:alert(1)",
           "\tjavascript:alert(1)",
           "\njavascript:alert(1)",
           "&#x20;javascript:alert(1)",
           "jav&#x09;ascript:alert(1)",
           "jav&#9;ascript:alert(1)",
           "java&#x0A;script:alert(1)",
           "java&#13;script:alert(1)",
           "jav\tascript:alert(1)",
           "&#106;avascript:alert(1)",
           "&#x6A;&#x61;vascript:alert(1)",
           "&#0000106avascript:alert(1)",  // HTML decodes it without ';' too
           "java script:alert(1)",
           "vbscript:msgbox(1)",
           "VBScript:msgbox(1)",
           "livescript:x",
           "data:text/html;base64,PHNjcmlwdD5hbGVydCgxKTwvc2NyaXB0Pg==",
           "data:text/html,<script>alert(1)</script>",
           "data:image/png;base64,iVBORw0KGgo=",  // an image, but as a link target
           "file:///etc/passwd",
           "FILE://server/share",
           "chrome://settings",
           "blob:https://example.org/1",
       }) {
    const std::string div = Div("<a href=\"" + std::string(href) + "\">x</a>");
    EXPECT_THAT(Rules(div), Contains("xhtml-url-scheme")) << href << "\n" << Messages(div);
  }
}

TEST(XhtmlTest, PassiveSchemesAreOrdinaryLinks) {
  for (std::string_view href :
       {"ftp://example.org/x", "doi:10.1000/182", "urn:oid:1.2.3", "news:comp.lang.c",
        "https://example.org/a?b=c#d", "mailto:a@example.org", "tel:+15550100", "../relative",
        "#fragment"}) {
    const std::string div = Div("<a href=\"" + std::string(href) + "\">x</a>");
    EXPECT_THAT(Rules(div), IsEmpty()) << href << "\n" << Messages(div);
  }
}

TEST(XhtmlTest, NarrativeContent) {
  EXPECT_TRUE(NarrativeHasContent(Div("<p>x</p>")));
  EXPECT_TRUE(NarrativeHasContent(Div("<img src=\"data:image/png;base64,iVBORw0KGgo=\"/>")));
  EXPECT_FALSE(NarrativeHasContent(Div("")));
  EXPECT_FALSE(NarrativeHasContent(Div(" \n\t<p> </p><br/>")));
  EXPECT_FALSE(NarrativeHasContent(Div("<!-- only a comment -->")));
  EXPECT_FALSE(NarrativeHasContent(Div("<img alt=\"no source\"/>")));
}

TEST(XhtmlTest, ObfuscationsAlsoReportTheirXmlErrors) {
  // The URL finding is placed at the attribute, the reference error inside its value.
  EXPECT_THAT(Rules(Div("<a href=\"javascript&colon;alert(1)\">x</a>")),
              ElementsAre("xhtml-url-scheme", "xhtml-entity"));
  EXPECT_THAT(Rules(Div("<a href=\"&#1;javascript:alert(1)\">x</a>")),
              ElementsAre("xhtml-url-scheme", "xhtml-entity"));
  EXPECT_THAT(Rules(Div("<a href=\"java&Tab;script:alert(1)\">x</a>")),
              ElementsAre("xhtml-url-scheme", "xhtml-entity"));
  EXPECT_THAT(Rules(Div("<a href=javascript:alert(1)>x</a>")),
              ElementsAre("xhtml-url-scheme", "xhtml-not-well-formed"));
}

TEST(XhtmlTest, DangerousImageSources) {
  for (std::string_view src : {
           "javascript:alert(1)",
           "data:image/svg+xml;base64,PHN2ZyBvbmxvYWQ9YWxlcnQoMSk+",
           "data:image/svg+xml,<svg onload=alert(1)>",
           "data:image/png,notbase64",
           "data:image/png;base64,",
           "data:image/png;base64,<>",
           "data:text/html;base64,AAAA",
           "data:image/pngx;base64,AAAA",
       }) {
    const std::string div = Div("<img src=\"" + std::string(src) + "\"/>");
    EXPECT_THAT(Rules(div), Contains("xhtml-url-scheme")) << src << "\n" << Messages(div);
  }
  EXPECT_THAT(Rules(Div("<img src=\"x.png\" longdesc=\"javascript:alert(1)\"/>")),
              ElementsAre("xhtml-url-scheme"));
  EXPECT_THAT(Rules(Div("<blockquote cite=\"vbscript:x\">q</blockquote>")),
              ElementsAre("xhtml-url-scheme"));
  EXPECT_THAT(Rules(Div("<map name=\"m\"><area href=\"javascript:x\"/></map>")),
              ElementsAre("xhtml-url-scheme"));
}

// ---------------------------------------------------------------- style

TEST(XhtmlTest, DangerousStyles) {
  for (std::string_view style : {
           "width: expression(alert(1))",
           "width: EXPRESSION (alert(1))",
           "width: expr/**/ession(alert(1))",
           "width: \\65 xpression(alert(1))",
           "width: \\000065xpression(alert(1))",
           "width: e\\x\\pre\\s\\sion(alert(1))",
           "width: &#x65;xpression(alert(1))",
           "background: url(javascript:alert(1))",
           "background: url('JavaScript:alert(1)')",
           "background: url(&quot;vbscript:x&quot;)",
           "background: url(java\\73 cript:alert(1))",
           "-moz-binding: url(http://evil.example/x.xml#xss)",
           "behavior: url(x.htc)",
           "BEHAVIOR : url(x.htc)",
           "@import 'http://evil.example/x.css'",
           "@\\69mport 'x.css'",
       }) {
    const std::string div = Div("<p style=\"" + std::string(style) + "\">x</p>");
    EXPECT_THAT(Rules(div), ElementsAre("xhtml-style")) << style << "\n" << Messages(div);
  }
}

// ---------------------------------------------------------------- entities

TEST(XhtmlTest, EntitiesAndCharacterReferences) {
  EXPECT_THAT(Rules(Div("a&nbsp;b")), ElementsAre("xhtml-entity"));
  EXPECT_THAT(Messages(Div("a&nbsp;b")), HasSubstr("&#160;"));
  EXPECT_THAT(Rules(Div("&copy; &reg;")), ElementsAre("xhtml-entity", "xhtml-entity"));
  EXPECT_THAT(Rules(Div("&AMP;")), ElementsAre("xhtml-entity"));  // names are case-sensitive
  EXPECT_THAT(Rules(Div("&#0;")), ElementsAre("xhtml-entity"));
  EXPECT_THAT(Rules(Div("&#x8;")), ElementsAre("xhtml-entity"));
  EXPECT_THAT(Rules(Div("&#x7F;")), ElementsAre("xhtml-entity"));
  EXPECT_THAT(Rules(Div("&#x85;")), ElementsAre("xhtml-entity"));
  EXPECT_THAT(Rules(Div("&#xD800;")), ElementsAre("xhtml-entity"));
  EXPECT_THAT(Rules(Div("&#xFFFE;")), ElementsAre("xhtml-entity"));
  EXPECT_THAT(Rules(Div("&#x110000;")), ElementsAre("xhtml-entity"));
  EXPECT_THAT(Rules(Div("&#99999999999999999999999999;")), ElementsAre("xhtml-entity"));
  EXPECT_THAT(Rules(Div("&#x10FFFF;&#9;&#10;&#13;")), IsEmpty());
  EXPECT_THAT(Rules(Div("&#;")), ElementsAre("xhtml-not-well-formed"));
  EXPECT_THAT(Rules(Div("&#x;")), ElementsAre("xhtml-not-well-formed"));
  EXPECT_THAT(Rules(Div("&#65")), ElementsAre("xhtml-not-well-formed"));
  EXPECT_THAT(Rules(Div("&#X41;")), ElementsAre("xhtml-not-well-formed"));  // 'x' is lower case
  EXPECT_THAT(Rules(Div("&amp")), ElementsAre("xhtml-not-well-formed"));
}

// ---------------------------------------------------------------- other constructs

TEST(XhtmlTest, DoctypeProcessingInstructionsAndCdata) {
  EXPECT_THAT(Rules("<!DOCTYPE div [<!ENTITY x \"y\">]>" + Div("&x;")),
              ElementsAre("xhtml-doctype"));
  EXPECT_THAT(Rules("<!doctype html>" + Div("x")), ElementsAre("xhtml-doctype"));
  EXPECT_THAT(Rules("<?xml version=\"1.0\"?>" + Div("x")),
              ElementsAre("xhtml-processing-instruction"));
  EXPECT_THAT(Rules(Div("<?php echo 1; ?>")), ElementsAre("xhtml-processing-instruction"));
  EXPECT_THAT(Rules(Div("<![CDATA[ 1 < 2 ]]>")), ElementsAre("xhtml-cdata"));
  // Mutation XSS: an HTML parser ends the CDATA "comment" at the first '>'.
  EXPECT_THAT(Rules(Div("<![CDATA[><img src=x onerror=alert(1)>]]>")), ElementsAre("xhtml-cdata"));
  EXPECT_THAT(Rules(Div("<!ELEMENT x ANY>")), ElementsAre("xhtml-not-well-formed"));
}

TEST(XhtmlTest, CommentsAnHtmlParserWouldEndEarly) {
  EXPECT_THAT(Rules(Div("<!--><img src=x onerror=alert(1)>-->")), ElementsAre("xhtml-comment"));
  EXPECT_THAT(Rules(Div("<!---><img src=x onerror=alert(1)>-->")), ElementsAre("xhtml-comment"));
  EXPECT_THAT(Rules(Div("<!-- a -- b -->")), ElementsAre("xhtml-not-well-formed"));
  EXPECT_THAT(Rules(Div("<!-- a --->")), ElementsAre("xhtml-not-well-formed"));
}

// ---------------------------------------------------------------- limits

TEST(XhtmlTest, NestingDepthIsBounded) {
  auto nested = [](size_t depth) {
    std::string s(kOpen);
    for (size_t i = 1; i < depth; ++i) s += "<span>";
    for (size_t i = 1; i < depth; ++i) s += "</span>";
    return s + "</div>";
  };
  EXPECT_THAT(Rules(nested(kMaxXhtmlDepth)), IsEmpty());
  EXPECT_THAT(Rules(nested(kMaxXhtmlDepth + 1)), ElementsAre("xhtml-too-deep"));
  // Far deeper than any recursive parser would survive: one finding, no crash.
  EXPECT_THAT(Rules(nested(200000)), ElementsAre("xhtml-too-deep"));
}

TEST(XhtmlTest, FindingsAreCappedAndInDocumentOrder) {
  std::string body;
  for (int i = 0; i < 1000; ++i) body += "<script>x</script>";
  const auto issues = CheckNarrativeXhtml(Div(body));
  ASSERT_EQ(issues.size(), kMaxXhtmlIssues);
  for (size_t i = 1; i < issues.size(); ++i) EXPECT_LE(issues[i - 1].offset, issues[i].offset);

  // Character errors come from a separate pass; they are still merged in order.
  const auto mixed = CheckNarrativeXhtml(Div("<script>\x01</script>"));
  ASSERT_EQ(mixed.size(), 2u);
  EXPECT_EQ(mixed[0].rule, "xhtml-element");
  EXPECT_EQ(mixed[1].rule, "xhtml-not-well-formed");
}

TEST(XhtmlTest, LargeInputsStayLinear) {
  std::string body;
  while (body.size() < (1u << 20)) body += "<p class=\"c\"><b>bold</b> &amp; text</p>";
  EXPECT_THAT(Rules(Div(body)), IsEmpty());

  std::string attrs = "<p";
  for (int i = 0; i < 50000; ++i) attrs += " a" + std::to_string(i % 1000) + "=\"\"";
  const auto issues = CheckNarrativeXhtml(Div(attrs + ">x</p>"));
  EXPECT_EQ(issues.size(), kMaxXhtmlIssues);

  EXPECT_THAT(Rules(Div(std::string(1 << 20, '<'))), Contains("xhtml-not-well-formed"));
  EXPECT_THAT(Rules(std::string(kOpen) + "<!--" + std::string(1 << 20, '-')),
              Contains("xhtml-not-well-formed"));
}

TEST(XhtmlTest, MessagesNameTheOffset) {
  const auto issues = CheckNarrativeXhtml(Div("ab<script>x</script>"));
  ASSERT_EQ(issues.size(), 1u);
  EXPECT_EQ(issues[0].rule, xhtml_rule::kElement);
  EXPECT_EQ(issues[0].offset, kOpen.size() + 2);
  EXPECT_THAT(issues[0].message, HasSubstr("<script>"));
  EXPECT_THAT(issues[0].message, HasSubstr("at byte " + std::to_string(kOpen.size() + 2)));
  // Hostile names are quoted safely and cut short.
  const auto weird = CheckNarrativeXhtml(Div("<p\xc3\xa9" + std::string(100, 'x') + "/>"));
  ASSERT_EQ(weird.size(), 1u);
  EXPECT_THAT(weird[0].message, HasSubstr("<p\\xc3\\xa9xxx"));
  EXPECT_THAT(weird[0].message, HasSubstr("..."));
  EXPECT_THAT(weird[0].message, Not(HasSubstr(std::string(60, 'x'))));
}

}  // namespace
}  // namespace fhirward::fhir
