// Validation throughput beside plain JSON parse throughput of the same bytes
// (issue 3: validation may cost at most 3x the parse), on one core.
//
// usage: validate_bench DIR [SECONDS]  (DIR: FHIR JSON resources, e.g. the 711
// official R4 examples). Every file is read into memory first; then, for at
// least SECONDS each (default 5), round after round over all files:
//   parse     json::Parse
//   structure json::Parse + Validator::Validate without the FHIRPath invariants
//   validate  json::Parse + Validator::Validate (invariants and bindings on)
// Prints MB/s, resources/s and the ratio validate/parse per phase, and the
// cost of validation alone (validate - parse).
#include <algorithm>
#include <chrono>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <sstream>
#include <string>
#include <vector>

#include "fhir/validator.h"
#include "json/value.h"

namespace fs = std::filesystem;
using Clock = std::chrono::steady_clock;

int main(int argc, char** argv) {
  if (argc < 2) {
    std::fprintf(stderr, "usage: validate_bench DIR [SECONDS]\n");
    return 2;
  }
  double seconds = argc > 2 ? std::atof(argv[2]) : 5.0;
  std::vector<std::string> docs;
  size_t bytes = 0;
  std::vector<fs::path> files;
  for (const auto& e : fs::directory_iterator(argv[1])) {
    if (e.path().extension() == ".json") files.push_back(e.path());
  }
  std::sort(files.begin(), files.end());
  for (const fs::path& f : files) {
    std::ifstream in(f, std::ios::binary);
    std::stringstream ss;
    ss << in.rdbuf();
    docs.push_back(ss.str());
    bytes += docs.back().size();
  }
  if (docs.empty()) {
    std::fprintf(stderr, "validate_bench: no .json files in %s\n", argv[1]);
    return 2;
  }
  fhirward::fhir::Validator validator;
  fhirward::fhir::ValidatorOptions structural_options;
  structural_options.check_invariants = false;
  fhirward::fhir::Validator structural(structural_options);
  size_t errors = 0;
  // Warm-up: model, compiled invariants, caches.
  for (const std::string& d : docs) {
    auto v = fhirward::json::Parse(d, fhirward::json::Limits{.max_total_bytes = 64 << 20});
    if (v.ok()) errors += validator.Validate(*v).errors;
  }
  auto run = [&](const fhirward::fhir::Validator* validator_ptr) {
    size_t rounds = 0;
    size_t sink = 0;
    auto start = Clock::now();
    double elapsed = 0;
    do {
      for (const std::string& d : docs) {
        auto v = fhirward::json::Parse(d, fhirward::json::Limits{.max_total_bytes = 64 << 20});
        if (!v.ok()) continue;
        const fhirward::fhir::Validator* val = validator_ptr;
        sink += v->is_object();
        if (val != nullptr) sink += val->Validate(*v).issues.size();
      }
      ++rounds;
      elapsed = std::chrono::duration<double>(Clock::now() - start).count();
    } while (elapsed < seconds);
    if (sink == 42) std::printf(" ");
    return std::make_pair(rounds, elapsed);
  };
  auto [pr, pt] = run(nullptr);
  auto [sr, st] = run(&structural);
  auto [vr, vt] = run(&validator);
  double mb = static_cast<double>(bytes) / (1024.0 * 1024.0);
  double parse_per_round = pt / pr;
  double validate_per_round = vt / vr;
  std::printf("corpus          %zu resources, %.2f MiB, %zu errors in total\n", docs.size(), mb,
              errors);
  std::printf("parse           %8.1f MiB/s %10.0f resources/s\n", mb / parse_per_round,
              docs.size() / parse_per_round);
  double structural_per_round = st / sr;
  std::printf("parse+structure %8.1f MiB/s %10.0f resources/s  (no invariants: %.2fx the parse)\n",
              mb / structural_per_round, docs.size() / structural_per_round,
              (structural_per_round - parse_per_round) / parse_per_round);
  std::printf("parse+validate  %8.1f MiB/s %10.0f resources/s\n", mb / validate_per_round,
              docs.size() / validate_per_round);
  std::printf("validate alone  %8.1f MiB/s  (%.2fx the parse)\n",
              mb / (validate_per_round - parse_per_round),
              (validate_per_round - parse_per_round) / parse_per_round);
  std::printf("ratio (parse+validate)/parse: %.2f\n", validate_per_round / parse_per_round);
  return 0;
}
