// Safety and conformance checks for FHIR R4 narrative XHTML (Narrative.div).
//
// https://hl7.org/fhir/R4/narrative.html: the div is an XHTML fragment in the
// XHTML namespace limited to basic formatting elements, <a>, images and inline
// style, with no active content (scripts, forms, frames, objects, event
// handlers, base/link/xlink). The element and attribute lists below follow the
// FHIR validator (org.hl7.fhir.validation XhtmlValidator); the URL and style
// rules add what a browser rendering the div as HTML needs to stay inert.
//
// CheckNarrativeXhtml never throws and runs in time linear in the input with
// nesting bounded by kMaxXhtmlDepth; it does not build a tree. It returns every
// finding up to kMaxXhtmlIssues (the check stops there); an empty result means
// the div is acceptable. After some well-formedness errors (an unterminated
// tag, comment or CDATA section, a DOCTYPE, a '<' not starting markup) the rest
// of the input cannot be read reliably and the check stops with what it found.
// Pure function: thread-safe.
#ifndef FHIRWARD_FHIR_XHTML_H_
#define FHIRWARD_FHIR_XHTML_H_

#include <cstddef>
#include <string>
#include <string_view>
#include <vector>

namespace fhirward::fhir {

// Stable rule ids carried in XhtmlIssue::rule.
namespace xhtml_rule {
// Not well-formed XML: bad tag syntax, unquoted or duplicate attributes,
// mismatched or unclosed tags, invalid UTF-8, characters XML forbids.
inline constexpr std::string_view kNotWellFormed = "xhtml-not-well-formed";
// Not exactly one root <div xmlns="http://www.w3.org/1999/xhtml">, or content outside it.
inline constexpr std::string_view kRoot = "xhtml-root";
// An xmlns declaration naming a namespace other than XHTML inside the div.
inline constexpr std::string_view kNamespace = "xhtml-namespace";
inline constexpr std::string_view kElement = "xhtml-element";             // element not allowed
inline constexpr std::string_view kAttribute = "xhtml-attribute";         // attribute not allowed
inline constexpr std::string_view kEventHandler = "xhtml-event-handler";  // on* attribute
// A URL attribute (href, src, ...) with an active scheme: javascript, vbscript,
// data (except an inline PNG/GIF/JPEG/WebP image in img src), file, blob, ...
inline constexpr std::string_view kUrlScheme = "xhtml-url-scheme";
inline constexpr std::string_view kStyle = "xhtml-style";  // active content in a style attribute
// An entity other than the five XML ones (HTML names such as &nbsp; are undefined
// in XML), or a character reference to a character XML forbids or to a control.
inline constexpr std::string_view kEntity = "xhtml-entity";
inline constexpr std::string_view kDoctype = "xhtml-doctype";
inline constexpr std::string_view kProcessingInstruction = "xhtml-processing-instruction";
// CDATA sections: an HTML parser reads "<![CDATA[" as a bogus comment that ends at
// the first '>', so markup an XML parser sees as text would become live.
inline constexpr std::string_view kCdata = "xhtml-cdata";
// Comments an HTML parser closes early ("<!-->", "<!--->"), exposing their content.
inline constexpr std::string_view kComment = "xhtml-comment";
inline constexpr std::string_view kTooDeep = "xhtml-too-deep";  // nesting beyond kMaxXhtmlDepth
}  // namespace xhtml_rule

struct XhtmlIssue {
  std::string rule;     // one of the xhtml_rule ids
  std::string message;  // names the element/attribute; ends with "at byte <offset>"
  size_t offset = 0;    // byte offset into the div text
};

inline constexpr size_t kMaxXhtmlIssues = 100;
inline constexpr size_t kMaxXhtmlDepth = 256;

// All findings for the XHTML text of a Narrative.div (the JSON string value,
// already unescaped), in document order.
std::vector<XhtmlIssue> CheckNarrativeXhtml(std::string_view div);

// txt-2, "The narrative SHALL have some non-whitespace content": true when the
// div has text other than XML whitespace outside markup, or an <img> with a
// src. Meaningful only for a div CheckNarrativeXhtml accepts.
bool NarrativeHasContent(std::string_view div);

}  // namespace fhirward::fhir

#endif  // FHIRWARD_FHIR_XHTML_H_
