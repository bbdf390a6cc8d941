// fhirward command line: serve, token mint, audit verify, validate, version.
#include <cstdio>
#include <iostream>
#include <string>

#include "CLI/CLI.hpp"
#include "common/error.h"
#include "server/app.h"

namespace {

int Fail(const absl::Status& s) {
  std::fprintf(stderr, "fhirward: %s\n", std::string(s.message()).c_str());
  return 1;
}

}  // namespace

int main(int argc, char** argv) {
  using namespace fhirward;
  CLI::App app{"fhirward: a FHIR R4 server with built-in security controls"};
  app.require_subcommand(1);

  server::ServeArgs serve;
  CLI::App* serve_cmd = app.add_subcommand("serve", "Serve the FHIR API over HTTPS");
  serve_cmd->add_option("--data-dir", serve.data_dir, "Data directory (created on first start)")
      ->required();
  serve_cmd->add_option("--listen", serve.listen, "HOST:PORT to listen on (PORT 0 picks one)");
  serve_cmd->add_option("--config", serve.config_file, "TOML configuration file")
      ->check(CLI::ExistingFile);

  CLI::App* token_cmd = app.add_subcommand("token", "Access tokens");
  token_cmd->require_subcommand(1);
  server::MintArgs mint;
  CLI::App* mint_cmd = token_cmd->add_subcommand(
      "mint", "Print an access token signed by this instance's issuer key");
  mint_cmd->add_option("--data-dir", mint.data_dir, "Data directory")->required();
  mint_cmd->add_option("--sub", mint.subject, "Subject (user or client id)")->required();
  mint_cmd->add_option("--scope", mint.scope, "Space-separated SMART scopes")->required();
  mint_cmd->add_option("--ttl", mint.ttl_seconds, "Lifetime in seconds (default 3600, max 86400)");
  mint_cmd->add_option("--patient", mint.patient, "Patient in launch context");
  mint_cmd->add_option("--client-id", mint.client_id, "client_id claim (default fhirward-cli)");

  CLI::App* audit_cmd = app.add_subcommand("audit", "Audit trail");
  audit_cmd->require_subcommand(1);
  std::string audit_dir;
  CLI::App* verify_cmd = audit_cmd->add_subcommand("verify", "Verify the audit hash chain");
  verify_cmd->add_option("--data-dir", audit_dir, "Data directory")->required();

  server::ValidateArgs validate;
  CLI::App* validate_cmd = app.add_subcommand(
      "validate", "Validate FHIR R4 JSON resources (exit 1 when any has errors)");
  validate_cmd->add_option("files", validate.files, "Resource files (- for standard input)")
      ->required();
  validate_cmd
      ->add_option("--config", validate.config_file,
                   "TOML configuration file (its [validation] section applies)")
      ->check(CLI::ExistingFile);
  validate_cmd->add_flag("--outcome", validate.outcome_json,
                         "Print each file's OperationOutcome as JSON");

  app.add_subcommand("version", "Print the version");

  CLI11_PARSE(app, argc, argv);

  if (serve_cmd->parsed()) {
    absl::Status s = server::Serve(serve);
    return s.ok() ? 0 : Fail(s);
  }
  if (mint_cmd->parsed()) {
    auto token = server::MintToken(mint);
    if (!token.ok()) return Fail(token.status());
    std::printf("%s\n", token->c_str());
    return 0;
  }
  if (verify_cmd->parsed()) {
    auto result = server::VerifyAudit(audit_dir);
    if (!result.ok()) return Fail(result.status());
    if (result->ok) {
      std::printf("%s\n", result->summary.c_str());
      return 0;
    }
    std::printf("%s (first bad record: seq %lld)\n", result->summary.c_str(),
                static_cast<long long>(result->first_bad_seq));
    return 2;
  }
  if (validate_cmd->parsed()) {
    auto failed = server::ValidateFiles(validate, std::cout);
    if (!failed.ok()) return Fail(failed.status());
    return *failed == 0 ? 0 : 1;
  }
  if (app.got_subcommand("version")) {
    std::printf("fhirward %s\n", FHIRWARD_VERSION);
    return 0;
  }
  return 0;
}
