// fhirpath_conformance CASES.json [--verbose] [--only NAME]
//
// Runs the official FHIRPath test suite, converted to JSON by tools/fhirpath-cases.mjs (format in
// docs/conformance.md), against fhirward's FHIRPath engine. Prints one line per failing case and
// a last line "fhirpath conformance: P passed, F failed, S skipped of N (X.X%)". Exits 0 whatever
// the pass rate (scripts/conformance decides the threshold); 2 when CASES.json cannot be read.
//
// Rules of the comparison:
//   - `invalid` cases pass when the expression fails to parse or fails at evaluation, whatever
//     kind ("syntax", "semantic", "execution") the suite names: semantic checks that need static
//     typing run at evaluation here.
//   - mode "strict" runs the case with Environment::strict.
//   - `predicate: true` compares exists() of the result with the expected boolean.
//   - Outputs compare in order (any order when `ordered` is false) by type and text. Result items
//     render as the suite writes them: System values by their lower-case type name, nodes by
//     their FHIR type; dates and times with '@' ("@T" for times); quantities as "4 'mg'".
//   - A case whose input file is missing is skipped.
#include <cstdio>
#include <fstream>
#include <map>
#include <memory>
#include <sstream>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "fhir/fhirpath.h"
#include "json/value.h"

namespace fp = fhirward::fhir::fhirpath;
using fhirward::json::Value;

namespace {

std::optional<std::string> ReadFile(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) return std::nullopt;
  std::ostringstream s;
  s << in.rdbuf();
  return s.str();
}

std::string Str(const Value& obj, std::string_view key) {
  const Value* v = obj.Find(key);
  return v && v->is_string() ? v->as_string() : std::string();
}

struct Rendered {
  std::string type;
  std::string value;
};

std::string TemporalText(const fp::Temporal& t) {
  return t.kind == fp::Temporal::Kind::kTime ? "@T" + t.ToString() : "@" + t.ToString();
}

Rendered Render(const fp::Item& item) {
  using K = fp::Item::Kind;
  switch (item.kind()) {
    case K::kBoolean:
      return {"boolean", item.boolean() ? "true" : "false"};
    case K::kInteger:
      return {"integer", std::to_string(item.integer())};
    case K::kDecimal:
      return {"decimal", item.decimal().ToString()};
    case K::kString:
      return {"string", std::string(item.string())};
    case K::kDate:
      return {"date", TemporalText(item.temporal())};
    case K::kDateTime:
      return {"dateTime", TemporalText(item.temporal())};
    case K::kTime:
      return {"time", TemporalText(item.temporal())};
    case K::kQuantity:
      return {"Quantity", item.quantity().ToString()};
    case K::kTypeInfo:
      return {"TypeInfo",
              std::string(item.type_info().ns) + "." + std::string(item.type_info().name)};
    case K::kNode:
      break;
  }
  const fp::Item::Node& n = item.node();
  std::string type(item.type_name());
  if (n.value == nullptr) return {type, "(no value)"};
  const Value& v = *n.value;
  if (v.is_string()) {
    std::string_view s = v.as_string();
    if (type == "date" || type == "dateTime" || type == "instant")
      return {type, "@" + v.as_string()};
    if (type == "time") return {type, "@T" + v.as_string()};
    return {type, std::string(s)};
  }
  if (v.is_number()) return {type, v.number_text()};
  if (v.is_bool()) return {type, v.as_bool() ? "true" : "false"};
  return {type, fhirward::json::Write(v)};
}

// Dates compare as values written the same way ("+00:00" and "Z" alike).
std::string NormalizeValue(const std::string& type, const std::string& value) {
  if (value.empty() || value[0] != '@') return value;
  std::string_view text = std::string_view(value).substr(1);
  std::optional<fp::Temporal> t;
  if (!text.empty() && text[0] == 'T') {
    t = fp::Temporal::ParseTime(text.substr(1));
  } else if (text.find('T') != std::string_view::npos || type == "dateTime") {
    std::string_view dt = text;
    if (!dt.empty() && dt.back() == 'T') dt.remove_suffix(1);
    t = fp::Temporal::ParseDateTime(dt);
  } else {
    t = fp::Temporal::ParseDate(text);
  }
  return t ? TemporalText(*t) : value;
}

bool Matches(const Rendered& got, const Value& expected) {
  std::string type = Str(expected, "type");
  std::string value = Str(expected, "value");
  if (!type.empty() && type != got.type) return false;
  return NormalizeValue(type, value) == NormalizeValue(got.type, got.value);
}

std::string OneLine(std::string s) {
  for (char& c : s) {
    if (c == '\n' || c == '\r' || c == '\t') c = ' ';
  }
  return s;
}

std::string Describe(const std::vector<Rendered>& items) {
  std::string out = "[";
  for (size_t i = 0; i < items.size(); ++i) {
    if (i) out += ", ";
    out += items[i].type + " " + items[i].value;
  }
  return out + "]";
}

std::string DescribeExpected(const Value& outputs) {
  std::string out = "[";
  for (size_t i = 0; i < outputs.items().size(); ++i) {
    if (i) out += ", ";
    std::string type = Str(outputs.items()[i], "type");
    out += (type.empty() ? "?" : type) + " " + Str(outputs.items()[i], "value");
  }
  return out + "]";
}

}  // namespace

int main(int argc, char** argv) {
  if (argc < 2) {
    std::fprintf(stderr, "usage: %s CASES.json [--verbose] [--only NAME]\n", argv[0]);
    return 2;
  }
  std::string cases_path = argv[1];
  bool verbose = false;
  std::string only;
  for (int i = 2; i < argc; ++i) {
    std::string a = argv[i];
    if (a == "--verbose") verbose = true;
    if (a == "--only" && i + 1 < argc) only = argv[++i];
  }
  auto text = ReadFile(cases_path);
  if (!text) {
    std::fprintf(stderr, "cannot read %s\n", cases_path.c_str());
    return 2;
  }
  fhirward::json::Limits limits;
  limits.max_total_bytes = 256 * 1024 * 1024;
  auto doc = fhirward::json::Parse(*text, limits);
  if (!doc.ok() || doc->Find("cases") == nullptr || !doc->Find("cases")->is_array()) {
    std::fprintf(stderr, "%s is not a cases file\n", cases_path.c_str());
    return 2;
  }
  std::string dir = ".";
  if (size_t slash = cases_path.rfind('/'); slash != std::string::npos) {
    dir = cases_path.substr(0, slash);
  }

  std::map<std::string, std::unique_ptr<Value>> inputs;  // nullptr: unreadable
  auto input_for = [&](const std::string& name) -> const Value* {
    auto it = inputs.find(name);
    if (it == inputs.end()) {
      std::unique_ptr<Value> v;
      if (auto t = ReadFile(dir + "/" + name)) {
        auto parsed = fhirward::json::Parse(*t);
        if (parsed.ok()) v = std::make_unique<Value>(std::move(*parsed));
      }
      it = inputs.emplace(name, std::move(v)).first;
    }
    return it->second.get();
  };

  int passed = 0, failed = 0, skipped = 0, total = 0;
  for (const Value& c : doc->Find("cases")->items()) {
    std::string group = Str(c, "group"), name = Str(c, "name"), expr = Str(c, "expression");
    if (!only.empty() && name != only) continue;
    ++total;
    std::string label = group + "/" + name;
    std::string input_name = Str(c, "input");
    std::string invalid = Str(c, "invalid");
    const Value* predicate = c.Find("predicate");
    bool is_predicate = predicate && predicate->is_bool() && predicate->as_bool();
    const Value* ordered_v = c.Find("ordered");
    bool ordered = !(ordered_v && ordered_v->is_bool() && !ordered_v->as_bool());
    const Value* outputs = c.Find("outputs");
    static const Value kNoOutputs = Value::MakeArray();
    if (outputs == nullptr || !outputs->is_array()) outputs = &kNoOutputs;

    auto fail = [&](const std::string& expected, const std::string& got) {
      ++failed;
      std::printf("FAIL %s: %s — expected %s, got %s\n", label.c_str(), OneLine(expr).c_str(),
                  expected.c_str(), got.c_str());
    };

    const Value* input = nullptr;
    if (!input_name.empty()) {
      input = input_for(input_name);
      if (input == nullptr) {
        ++skipped;
        std::printf("SKIP %s: input %s not found\n", label.c_str(), input_name.c_str());
        continue;
      }
    }
    fp::Environment env;
    fp::Collection focus;
    if (input != nullptr) {
      env = fp::Environment::ForResource(*input);
      focus.push_back(fp::Item::Resource(*input));
    }
    env.strict = Str(c, "mode") == "strict";

    auto parsed = fp::Expression::Parse(expr);
    if (!parsed.ok()) {
      if (!invalid.empty()) {
        ++passed;
        if (verbose)
          std::printf("PASS %s (parse error: %s)\n", label.c_str(),
                      std::string(parsed.status().message()).c_str());
      } else {
        fail(DescribeExpected(*outputs), "parse error: " + std::string(parsed.status().message()));
      }
      continue;
    }
    auto result = fp::Evaluate(*parsed, focus, env);
    if (!result.ok()) {
      if (!invalid.empty()) {
        ++passed;
        if (verbose)
          std::printf("PASS %s (error: %s)\n", label.c_str(),
                      std::string(result.status().message()).c_str());
      } else {
        fail(DescribeExpected(*outputs), "error: " + std::string(result.status().message()));
      }
      continue;
    }
    std::vector<Rendered> got;
    if (is_predicate) {
      got.push_back({"boolean", result->empty() ? "false" : "true"});
    } else {
      for (const fp::Item& item : *result) got.push_back(Render(item));
    }
    if (!invalid.empty()) {
      fail("an error (" + invalid + ")", Describe(got));
      continue;
    }
    const auto& expected = outputs->items();
    bool ok = expected.size() == got.size();
    if (ok && ordered) {
      for (size_t i = 0; ok && i < got.size(); ++i) ok = Matches(got[i], expected[i]);
    } else if (ok) {
      std::vector<bool> used(got.size(), false);
      for (const Value& e : expected) {
        bool found = false;
        for (size_t i = 0; i < got.size() && !found; ++i) {
          if (!used[i] && Matches(got[i], e)) used[i] = found = true;
        }
        ok = ok && found;
      }
    }
    if (ok) {
      ++passed;
      if (verbose) std::printf("PASS %s\n", label.c_str());
    } else {
      fail(DescribeExpected(*outputs), Describe(got));
    }
  }
  double pct = total ? 100.0 * passed / total : 0.0;
  std::printf("fhirpath conformance: %d passed, %d failed, %d skipped of %d (%.1f%%)\n", passed,
              failed, skipped, total, pct);
  return 0;
}
