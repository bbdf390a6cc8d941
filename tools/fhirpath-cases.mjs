// Turns the official FHIRPath test suite (tests-fhir-r4.xml from HL7/FHIRPath or
// FHIR/fhir-test-cases) into a JSON case list for the C++ conformance runner
// (build/conformance/fhirpath_conformance), and puts its input resources next to it as JSON:
// JSON inputs are copied as they are, XML inputs are converted with fhir-xml2json.mjs.
//
// usage: node tools/fhirpath-cases.mjs SUITE.xml INPUT_DIR OUT_DIR
// writes OUT_DIR/cases.json and OUT_DIR/<input>.json; prints a one-line summary on stderr.
//
// cases.json: {"suite": "<file name>", "cases": [{"group", "name", "expression", "input",
//   "mode", "invalid", "predicate", "ordered", "outputs": [{"type", "value"}], ...}]}
//   input: converted file name (in OUT_DIR) or null; mode/invalid: the attribute (on <test>,
//   else on <expression>) or null; predicate: true/false/null; ordered: false only for
//   ordered="false"; outputs in document order, type null when absent, value = text content.
//   Other attributes of <test> (description, version, checkOrderedFunctions, ...) are kept as
//   extra string fields. Tests inside XML comments are not tests.
import { copyFileSync, existsSync, mkdirSync, readFileSync, realpathSync, writeFileSync } from 'node:fs';
import { pathToFileURL } from 'node:url';
import { basename, join } from 'node:path';
import { parseXml, textContent, xmlToFhirJson } from './fhir-xml2json.mjs';

const CORE_FIELDS = ['name', 'inputfile', 'mode', 'predicate', 'ordered', 'invalid'];

export function parseSuite(xmlText, suiteName) {
  const root = parseXml(xmlText);
  const cases = [];
  const problems = [];
  const originalInputs = new Map();   // converted name -> name in the suite
  const walk = (el, group) => {
    for (const c of el.children) {
      if (c.type !== 'element') continue;
      if (c.local === 'group') walk(c, attr(c, 'name') ?? group);
      else if (c.local === 'test') {
        cases.push(toCase(c, group, problems));
        const f = attr(c, 'inputfile');
        if (f) {
          const prev = originalInputs.get(cases.at(-1).input);
          if (prev && prev !== f) problems.push(`inputs ${prev} and ${f} both map to ${cases.at(-1).input}`);
          originalInputs.set(cases.at(-1).input, f);
        }
      }
      else if (c.local === 'modeTest') problems.push(`<modeTest ${attr(c, 'name')}> (mode ${attr(c, 'mode')}) is not a test of the default mode: left out`);
      else if (c.local === 'notes') continue;
      else walk(c, group);
    }
  };
  walk(root, null);
  return { suite: suiteName, cases, problems, originalInputs };
}

const attr = (el, name) => {
  const a = el.attrs.find((x) => x.name === name);
  return a ? a.value : null;
};

function toCase(t, group, problems) {
  const name = attr(t, 'name');
  const exprs = t.children.filter((c) => c.type === 'element' && c.local === 'expression');
  if (exprs.length !== 1) problems.push(`${name}: ${exprs.length} <expression> elements`);
  const expr = exprs[0];
  const predicate = attr(t, 'predicate');
  const invalid = attr(t, 'invalid') ?? (expr ? attr(expr, 'invalid') : null);
  const mode = attr(t, 'mode') ?? (expr ? attr(expr, 'mode') : null);
  const inputfile = attr(t, 'inputfile');
  const c = {
    group,
    name,
    expression: expr ? textContent(expr) : null,
    input: inputfile ? inputfile.replace(/\.xml$/, '.json') : null,
    mode,
    invalid,
    predicate: predicate === null ? null : predicate === 'true',
    ordered: attr(t, 'ordered') !== 'false',
    outputs: t.children
      .filter((o) => o.type === 'element' && o.local === 'output')
      .map((o) => ({ type: attr(o, 'type'), value: textContent(o) })),
  };
  for (const a of t.attrs) {
    if (!CORE_FIELDS.includes(a.name) && !a.name.startsWith('xmlns')) c[a.name] = a.value;
  }
  if (predicate !== null && predicate !== 'true' && predicate !== 'false') problems.push(`${name}: predicate="${predicate}"`);
  return c;
}

function main(argv) {
  if (argv.length !== 3) {
    process.stderr.write('usage: node tools/fhirpath-cases.mjs SUITE.xml INPUT_DIR OUT_DIR\n');
    return 2;
  }
  const [suitePath, inputDir, outDir] = argv;
  const suite = parseSuite(readFileSync(suitePath, 'utf8'), basename(suitePath));
  for (const p of suite.problems) process.stderr.write(`fhirpath-cases: warning: ${p}\n`);
  mkdirSync(outDir, { recursive: true });

  // each input once: XML inputs are converted, JSON inputs copied as they are
  let failed = 0;
  for (const [jsonName, original] of suite.originalInputs) {
    try {
      const src = join(inputDir, original);
      if (!existsSync(src)) throw new Error(`input ${original} not found in ${inputDir}`);
      if (original.endsWith('.xml')) {
        const warnings = [];
        writeFileSync(join(outDir, jsonName), xmlToFhirJson(readFileSync(src, 'utf8'), { warn: (m) => warnings.push(m) }));
        for (const w of warnings) process.stderr.write(`fhirpath-cases: ${original}: warning: ${w}\n`);
      } else {
        copyFileSync(src, join(outDir, jsonName));
      }
    } catch (e) {
      failed++;
      process.stderr.write(`fhirpath-cases: ${original}: ${e.message}\n`);
    }
  }
  const { problems, originalInputs, ...out } = suite;
  writeFileSync(join(outDir, 'cases.json'), JSON.stringify(out, null, 1) + '\n');
  process.stderr.write(`fhirpath-cases: ${suite.cases.length} cases, ${suite.originalInputs.size} inputs (${failed} failed) -> ${outDir}\n`);
  return failed ? 1 : 0;
}

export { main };

const isMain = (() => {
  try { return process.argv[1] && import.meta.url === pathToFileURL(realpathSync(process.argv[1])).href; } catch { return false; }
})();
if (isMain) {
  try {
    process.exitCode = main(process.argv.slice(2));
  } catch (e) {
    process.stderr.write(`fhirpath-cases: ${e.message}\n`);
    process.exitCode = 1;
  }
}
