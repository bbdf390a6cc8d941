// fhirward command line: serve, token mint, users, clients, launch, keys, audit verify, alerts
// test, validate, policy check|test, breakglass list|review, version.
#include <cstdio>
#include <iostream>
#include <string>
#include <vector>

#include "CLI/CLI.hpp"
#include "common/error.h"
#include "policy/policy_set.h"
#include "policy/scenario.h"
#include "server/admin.h"
#include "server/app.h"
#include "server/backup.h"
#include "server/key_admin.h"

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
  mint_cmd->add_option("--roles", mint.roles, "roles claim: policy roles (comma separated)")
      ->delimiter(',');
  mint_cmd->add_option("--fhir-user", mint.fhir_user, "fhirUser claim, e.g. Practitioner/pr1");
  mint_cmd
      ->add_option("--purpose", mint.purpose_of_use,
                   "purpose_of_use claim: HL7 v3 PurposeOfUse codes (comma separated)")
      ->delimiter(',');

  CLI::App* audit_cmd = app.add_subcommand("audit", "Audit trail");
  audit_cmd->require_subcommand(1);
  std::string audit_dir;
  std::vector<std::string> held_heads;
  CLI::App* verify_cmd = audit_cmd->add_subcommand(
      "verify",
      "Verify the audit trail: hash chain, anchor, Merkle tree and every signed tree head");
  verify_cmd->add_option("--data-dir", audit_dir, "Data directory")->required();
  verify_cmd->add_option("--head", held_heads,
                         "A tree head kept elsewhere (file: compact JWS or $tree-head JSON); "
                         "the records must still match it (repeatable)");

  CLI::App* alerts_cmd = app.add_subcommand("alerts", "Security alert rules");
  alerts_cmd->require_subcommand(1);
  server::AlertsTestArgs alerts_test;
  CLI::App* alerts_test_cmd = alerts_cmd->add_subcommand(
      "test",
      "Fire one synthetic alert per [[audit.alert]] rule and confirm each reached every "
      "[[audit.sink]] (the server must be running)");
  alerts_test_cmd->add_option("--data-dir", alerts_test.data_dir, "Data directory")->required();
  alerts_test_cmd
      ->add_option("--config", alerts_test.config_file, "The server's TOML configuration")
      ->required()
      ->check(CLI::ExistingFile);
  alerts_test_cmd->add_option("--timeout", alerts_test.timeout_seconds,
                              "Seconds to wait for delivery (default 30)");

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

  // --- users, clients, launch contexts, signing keys (the authorization server)
  CLI::App* users_cmd = app.add_subcommand("users", "Users of the login page");
  users_cmd->require_subcommand(1);
  server::UserArgs user;
  bool password_stdin = false;
  CLI::App* users_add =
      users_cmd->add_subcommand("add", "Add a user (prints a generated password)");
  CLI::App* users_reset =
      users_cmd->add_subcommand("reset-password", "Set a new password and clear a lockout");
  for (CLI::App* c : {users_add, users_reset}) {
    c->add_option("--data-dir", user.data_dir, "Data directory")->required();
    c->add_option("--username", user.username, "User name")->required();
    c->add_flag("--password-stdin", password_stdin,
                "Read the password from standard input instead of generating one");
    c->add_option("--config", user.config_file,
                  "The server's TOML configuration: hash with its [oauth] argon2 parameters")
        ->check(CLI::ExistingFile);
  }
  users_add
      ->add_option("--fhir-user", user.fhir_user,
                   "FHIR resource of the user: Practitioner/ID, Patient/ID, RelatedPerson/ID")
      ->required();
  users_add->add_option("--roles", user.roles, "Roles (comma separated)");
  users_add->add_flag("--totp", user.totp, "Enrol a TOTP second factor (prints its otpauth URI)");
  std::string users_dir, users_name;
  CLI::App* users_list = users_cmd->add_subcommand("list", "List users (never secrets)");
  users_list->add_option("--data-dir", users_dir, "Data directory")->required();
  CLI::App* users_disable = users_cmd->add_subcommand("disable", "Disable a user");
  CLI::App* users_enable = users_cmd->add_subcommand("enable", "Enable a user again");
  for (CLI::App* c : {users_disable, users_enable}) {
    c->add_option("--data-dir", users_dir, "Data directory")->required();
    c->add_option("--username", users_name, "User name")->required();
  }

  CLI::App* clients_cmd = app.add_subcommand("clients", "OAuth clients (SMART apps, services)");
  clients_cmd->require_subcommand(1);
  server::ClientArgs client;
  CLI::App* clients_add = clients_cmd->add_subcommand("add", "Register a client");
  clients_add->add_option("--data-dir", client.data_dir, "Data directory")->required();
  clients_add->add_option("--client-id", client.client_id, "Client id")->required();
  clients_add->add_option("--name", client.name, "Name shown on the consent page");
  clients_add->add_option("--auth", client.auth,
                          "none (public) | client_secret_basic | private_key_jwt | "
                          "tls_client_auth");
  clients_add->add_option("--redirect-uri", client.redirect_uris, "Redirect URI (repeatable)");
  clients_add->add_option("--scope", client.scope, "Scopes the client may be granted")->required();
  clients_add->add_option("--grant-type", client.grant_types,
                          "authorization_code | refresh_token | client_credentials (repeatable)");
  clients_add->add_option("--jwks-file", client.jwks_file, "private_key_jwt: public JWKS file");
  clients_add->add_option("--jwks-uri", client.jwks_uri, "private_key_jwt: JWKS URL (https)");
  clients_add->add_option("--tls-subject", client.tls_subject,
                          "tls_client_auth: certificate subject (RFC 2253)");
  clients_add->add_flag("--no-rotate-refresh", client.no_rotate_refresh,
                        "Keep refresh tokens across uses (default: rotate on every use)");
  clients_add->add_option("--sender-constraint", client.sender_constraint,
                          "dpop | mtls: every token must be bound");
  clients_add->add_option("--id-token-alg", client.id_token_alg, "RS256 (default) or ES256");
  clients_add->add_option("--secret-days", client.secret_days,
                          "Client secret lifetime in days (0: no expiry)");
  std::string clients_dir, clients_name;
  CLI::App* clients_list = clients_cmd->add_subcommand("list", "List clients (never secrets)");
  clients_list->add_option("--data-dir", clients_dir, "Data directory")->required();
  CLI::App* clients_disable = clients_cmd->add_subcommand("disable", "Disable a client");
  CLI::App* clients_enable = clients_cmd->add_subcommand("enable", "Enable a client again");
  for (CLI::App* c : {clients_disable, clients_enable}) {
    c->add_option("--data-dir", clients_dir, "Data directory")->required();
    c->add_option("--client-id", clients_name, "Client id")->required();
  }
  CLI::App* clients_rotate = clients_cmd->add_subcommand(
      "rotate-secret", "New client secret; the old one keeps working for --grace seconds");
  clients_rotate->add_option("--data-dir", client.data_dir, "Data directory")->required();
  clients_rotate->add_option("--client-id", client.client_id, "Client id")->required();
  clients_rotate->add_option("--grace", client.grace_seconds, "Seconds (default 86400)");
  clients_rotate->add_option("--secret-days", client.secret_days, "New secret lifetime in days");

  CLI::App* launch_cmd = app.add_subcommand("launch", "EHR launch contexts");
  launch_cmd->require_subcommand(1);
  server::LaunchArgs launch;
  CLI::App* launch_create =
      launch_cmd->add_subcommand("create", "Create a launch context; prints the launch id");
  launch_create->add_option("--data-dir", launch.data_dir, "Data directory")->required();
  launch_create->add_option("--patient", launch.patient, "Patient id")->required();
  launch_create->add_option("--encounter", launch.encounter, "Encounter id");
  launch_create->add_option("--client-id", launch.client_id, "Only this app may use the launch");
  launch_create->add_option("--ttl", launch.ttl_seconds, "Lifetime in seconds (default 3600)");

  CLI::App* keys_cmd =
      app.add_subcommand("keys", "Token-signing keys, and the encryption key hierarchy");
  keys_cmd->require_subcommand(1);
  server::RotateArgs rotate;
  CLI::App* keys_rotate = keys_cmd->add_subcommand(
      "rotate-signing", "New signing key: published at once, signs after --activate-in");
  keys_rotate->add_option("--data-dir", rotate.data_dir, "Data directory")->required();
  keys_rotate->add_option("--alg", rotate.alg, "ES256 (access and ID tokens) or RS256 (ID tokens)");
  keys_rotate->add_option("--activate-in", rotate.activate_in,
                          "Seconds between publication and first use (default 300)");
  std::string keys_dir;
  CLI::App* keys_list = keys_cmd->add_subcommand("list", "List signing keys and their state");
  keys_list->add_option("--data-dir", keys_dir, "Data directory")->required();
  CLI::App* keys_status =
      keys_cmd->add_subcommand("status", "KMS, KEK versions, tenant and data keys (no secrets)");
  keys_status->add_option("--data-dir", keys_dir, "Data directory")->required();
  // Key administration: a key-admin user, password (then TOTP code) on standard input.
  server::KeyAdminArgs key_admin;
  auto admin_options = [&](CLI::App* c) {
    c->add_option("--data-dir", key_admin.data_dir, "Data directory")->required();
    c->add_option("--admin", key_admin.admin,
                  "User with the key-admin role (password, then TOTP code, on standard input)")
        ->required();
  };
  CLI::App* keys_rotate_kek = keys_cmd->add_subcommand(
      "rotate-kek", "New key-encryption key version in the KMS (then run keys rewrap)");
  admin_options(keys_rotate_kek);
  std::string rotate_tenant = "default";
  CLI::App* keys_rotate_tenant = keys_cmd->add_subcommand(
      "rotate-tenant", "New tenant key version: new data keys at once (then run keys rewrap)");
  admin_options(keys_rotate_tenant);
  keys_rotate_tenant->add_option("--tenant", rotate_tenant, "Tenant (default: default)");
  server::RewrapArgs rewrap;
  bool rewrap_quiet = false;
  CLI::App* keys_rewrap = keys_cmd->add_subcommand(
      "rewrap", "Move keys and records forward to the current key versions (resumable)");
  admin_options(keys_rewrap);
  keys_rewrap->add_option("--batch", rewrap.batch, "Records per transaction (default 500)");
  keys_rewrap->add_option("--rate", rewrap.rate,
                          "At most this many records per second (0: no limit)");
  keys_rewrap->add_flag("--quiet", rewrap_quiet, "No progress bar");

  server::EraseArgs erase;
  CLI::App* erase_cmd = app.add_subcommand(
      "erase", "Crypto-shred a patient: destroy their data keys and remove their records");
  admin_options(erase_cmd);
  erase_cmd->add_option("target", erase.target, "patient/ID")->required();
  erase_cmd->add_option("--reason", erase.reason, "Why (recorded in the audit trail)")->required();
  erase_cmd->add_option("--tenant", erase.tenant, "Tenant (default: default)");

  server::BackupArgs backup;
  CLI::App* backup_cmd = app.add_subcommand(
      "backup", "Encrypted online backup with a signed manifest (no keys in it)");
  backup_cmd->add_option("--data-dir", backup.data_dir, "Data directory")->required();
  backup_cmd->add_option("--to", backup.to, "A new directory for the backup")->required();
  server::RestoreArgs restore;
  CLI::App* restore_cmd =
      app.add_subcommand("restore", "Verify a backup and restore it into a new data directory");
  restore_cmd
      ->add_option("--data-dir", restore.data_dir,
                   "The live instance whose KMS, key vault and key the backup needs")
      ->required();
  restore_cmd->add_option("--from", restore.from, "Backup directory")->required();
  restore_cmd->add_option("--to", restore.to, "A new data directory")->required();
  restore_cmd->add_flag("--verify", restore.verify,
                        "Check the audit chain and open a sample of records");
  restore_cmd->add_option("--sample", restore.sample, "Records opened by --verify (default 1000)");
  restore_cmd
      ->add_option("--admin", restore.admin,
                   "User with the key-admin role (password, then TOTP code, on standard input)")
      ->required();

  CLI::App* tenant_cmd = app.add_subcommand("tenant", "Tenants");
  tenant_cmd->require_subcommand(1);
  std::string decommission_tenant, decommission_confirm;
  CLI::App* tenant_decommission = tenant_cmd->add_subcommand(
      "decommission", "Destroy every key of a tenant: its data can never be decrypted again");
  admin_options(tenant_decommission);
  tenant_decommission->add_option("tenant", decommission_tenant, "Tenant")->required();
  tenant_decommission->add_option("--confirm", decommission_confirm, "The tenant's name again")
      ->required();

  CLI::App* policy_cmd = app.add_subcommand("policy", "Authorization policy files");
  policy_cmd->require_subcommand(1);
  std::vector<std::string> policy_check_files;
  CLI::App* policy_check =
      policy_cmd->add_subcommand("check", "Check policy files (exit 1 when any has errors)");
  policy_check->add_option("files", policy_check_files, "Policy files (TOML)")->required();

  std::string policy_test_file;
  std::vector<std::string> policy_test_scenarios;
  CLI::App* policy_test = policy_cmd->add_subcommand(
      "test", "Run scenario files against a policy (exit 1 on any failure or error)");
  policy_test->add_option("policy", policy_test_file, "Policy file (TOML)")->required();
  policy_test->add_option("scenarios", policy_test_scenarios, "Scenario files (TOML)")->required();

  CLI::App* bg_cmd = app.add_subcommand("breakglass", "Break-glass episodes and their review");
  bg_cmd->require_subcommand(1);
  std::string bg_dir;
  bool bg_all = false;
  CLI::App* bg_list = bg_cmd->add_subcommand("list", "Episodes awaiting review (--all: every one)");
  bg_list->add_option("--data-dir", bg_dir, "Data directory")->required();
  bg_list->add_flag("--all", bg_all, "Include reviewed episodes");
  server::BreakGlassReviewArgs review;
  CLI::App* bg_review = bg_cmd->add_subcommand(
      "review", "Close an episode: an auditor's verdict (password on standard input)");
  bg_review->add_option("--data-dir", review.data_dir, "Data directory")->required();
  bg_review->add_option("id", review.id, "Episode id (from breakglass list)")->required();
  bg_review->add_option("--reviewer", review.reviewer, "User name of the auditor")->required();
  bg_review->add_option("--outcome", review.outcome, "justified | unjustified")->required();
  bg_review->add_option("--note", review.note, "The review's finding")->required();

  app.add_subcommand("version", "Print the version");

  CLI11_PARSE(app, argc, argv);

  auto done = [](const absl::Status& s) { return s.ok() ? 0 : Fail(s); };
  if (password_stdin) {
    std::getline(std::cin, user.password);
    while (!user.password.empty() &&
           (user.password.back() == '\n' || user.password.back() == '\r')) {
      user.password.pop_back();
    }
    if (user.password.empty()) {
      return Fail(Error(ErrorCode::kInvalidParameter, "empty password on standard input"));
    }
  }
  if (users_add->parsed()) return done(server::UsersAdd(user, std::cout));
  if (users_reset->parsed()) return done(server::UsersResetPassword(user, std::cout));
  if (users_list->parsed()) return done(server::UsersList(users_dir, std::cout));
  if (users_disable->parsed())
    return done(server::UsersDisable(users_dir, users_name, true, std::cout));
  if (users_enable->parsed())
    return done(server::UsersDisable(users_dir, users_name, false, std::cout));
  if (clients_add->parsed()) return done(server::ClientsAdd(client, std::cout));
  if (clients_list->parsed()) return done(server::ClientsList(clients_dir, std::cout));
  if (clients_disable->parsed()) {
    return done(server::ClientsDisable(clients_dir, clients_name, true, std::cout));
  }
  if (clients_enable->parsed()) {
    return done(server::ClientsDisable(clients_dir, clients_name, false, std::cout));
  }
  if (clients_rotate->parsed()) return done(server::ClientsRotateSecret(client, std::cout));
  if (launch_create->parsed()) return done(server::LaunchCreate(launch, std::cout));
  if (keys_rotate->parsed()) return done(server::KeysRotateSigning(rotate, std::cout));
  if (keys_list->parsed()) return done(server::KeysList(keys_dir, std::cout));
  if (keys_status->parsed()) return done(server::KeysStatus(keys_dir, std::cout));
  if (backup_cmd->parsed()) return done(server::Backup(backup, std::cout));
  if (restore_cmd->parsed()) {
    std::getline(std::cin, restore.password);
    std::getline(std::cin, restore.totp);
    for (std::string* l : {&restore.password, &restore.totp}) {
      while (!l->empty() && (l->back() == '\n' || l->back() == '\r')) l->pop_back();
    }
    return done(server::Restore(restore, std::cout));
  }
  if (keys_rotate_kek->parsed() || keys_rotate_tenant->parsed() || keys_rewrap->parsed() ||
      erase_cmd->parsed() || tenant_decommission->parsed()) {
    auto line = [] {
      std::string l;
      std::getline(std::cin, l);
      while (!l.empty() && (l.back() == '\n' || l.back() == '\r')) l.pop_back();
      return l;
    };
    key_admin.password = line();
    key_admin.totp = line();
    if (keys_rotate_kek->parsed()) return done(server::KeysRotateKek(key_admin, std::cout));
    if (keys_rotate_tenant->parsed()) {
      return done(server::KeysRotateTenant(key_admin, rotate_tenant, std::cout));
    }
    if (keys_rewrap->parsed()) {
      rewrap.admin = key_admin;
      rewrap.progress = !rewrap_quiet;
      return done(server::KeysRewrap(rewrap, std::cout, std::cerr));
    }
    if (erase_cmd->parsed()) {
      erase.admin = key_admin;
      return done(server::ErasePatient(erase, std::cout));
    }
    return done(server::TenantDecommission(key_admin, decommission_tenant, decommission_confirm,
                                           std::cout));
  }
  if (bg_list->parsed()) return done(server::BreakGlassList(bg_dir, bg_all, std::cout));
  if (bg_review->parsed()) {
    // The auditor proves who they are with their login password (and, when
    // enrolled, a TOTP code on the next line).
    std::getline(std::cin, review.password);
    std::getline(std::cin, review.totp);
    for (std::string* l : {&review.password, &review.totp}) {
      while (!l->empty() && (l->back() == '\n' || l->back() == '\r')) l->pop_back();
    }
    return done(server::BreakGlassReview(review, std::cout));
  }
  if (policy_test->parsed()) {
    policy::ScenarioRun run = policy::RunScenarios(policy_test_file, policy_test_scenarios);
    policy::PrintReport(run, std::cout);
    return run.errors.empty() && run.failed() == 0 && run.passed() > 0 ? 0 : 1;
  }

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
  if (alerts_test_cmd->parsed()) return done(server::AlertsTest(alerts_test, std::cout));
  if (verify_cmd->parsed()) {
    auto result = server::VerifyAudit(audit_dir, held_heads);
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
  if (policy_check->parsed()) {
    int status = 0;
    for (const std::string& file : policy_check_files) {
      policy::PolicyLoad l = policy::LoadPolicyFile(file);
      for (const policy::PolicyError& e : l.errors) {
        std::fprintf(stderr, "%s\n", e.ToString().c_str());
      }
      if (!l.policy) {
        status = 1;
        continue;
      }
      std::printf("%s: ok (%s, %zu roles, %zu rules, %zu relationship sources)\n", file.c_str(),
                  l.policy->IdVersion().c_str(), l.policy->roles.size(), l.policy->rules.size(),
                  l.policy->relationships.size());
    }
    return status;
  }
  if (app.got_subcommand("version")) {
    std::printf("fhirward %s\n", FHIRWARD_VERSION);
    return 0;
  }
  return 0;
}
