#include "server/config.h"

#include <fstream>

#include "common/error.h"
#include "crypto/test_util.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace fhirward::server {
namespace {

using ::testing::HasSubstr;

class ConfigTest : public ::testing::Test {
 protected:
  absl::StatusOr<Config> Load(const std::string& toml) {
    std::string path = dir_.File("c.toml");
    std::ofstream(path) << toml;
    return LoadConfig(path, Config{});
  }
  testing_util::TempDir dir_;
};

TEST_F(ConfigTest, DefaultsAreValidAndSecure) {
  Config c;
  EXPECT_TRUE(Validate(c).ok());
  EXPECT_EQ(c.tls_min_version, "1.3");
  EXPECT_FALSE(c.plain_http);
  EXPECT_GT(c.hsts_max_age, 31536000 - 1);
}

TEST_F(ConfigTest, ReadsEverySection) {
  auto c = Load(R"(
listen = "127.0.0.1:9443"
base_url = "https://fhir.example.org"
[tls]
min_version = "1.2"
[http]
max_body_bytes = 65536
[json]
max_depth = 20
[fhir]
update_create = false
require_if_match = true
history_max_count = 100
[auth]
jwks_refresh_seconds = 60
[[auth.issuers]]
issuer = "https://idp.example.org"
jwks_url = "https://idp.example.org/jwks"
algorithms = ["RS256"]
[store]
cache_bytes = 0
read_connections = 2
[rate_limit]
per_second = 5.5
burst = 10
[log]
level = "warn"
)");
  ASSERT_TRUE(c.ok()) << c.status();
  EXPECT_EQ(c->listen, "127.0.0.1:9443");
  EXPECT_EQ(c->tls_min_version, "1.2");
  EXPECT_EQ(c->max_body_bytes, 65536u);
  EXPECT_EQ(c->json_limits.max_depth, 20u);
  EXPECT_FALSE(c->update_create);
  EXPECT_TRUE(c->require_if_match);
  ASSERT_EQ(c->issuers.size(), 1u);
  EXPECT_EQ(c->issuers[0].algorithms, std::vector<std::string>{"RS256"});
  EXPECT_EQ(c->store_cache_bytes, 0u);
  EXPECT_EQ(c->store_read_connections, 2);
  EXPECT_DOUBLE_EQ(c->rate_per_second, 5.5);
  EXPECT_EQ(c->log_level, "warn");
}

TEST_F(ConfigTest, UnknownKeysAndBadValuesNameTheKey) {
  auto typo = Load("[tls]\nmin_verison = \"1.2\"\n");
  ASSERT_FALSE(typo.ok());
  EXPECT_THAT(typo.status().message(), HasSubstr("tls.min_verison"));
  EXPECT_THAT(Load("[tls]\nmin_version = \"1.1\"\n").status().message(),
              HasSubstr("tls.min_version"));
  EXPECT_THAT(Load("[http]\nmax_body_bytes = -5\n").status().message(),
              HasSubstr("http.max_body_bytes"));
  EXPECT_THAT(Load("[fhir]\nupdate_create = \"yes\"\n").status().message(),
              HasSubstr("fhir.update_create"));
  EXPECT_THAT(
      Load("[[auth.issuers]]\nissuer = \"x\"\njwks_url = \"http://plain\"\n").status().message(),
      HasSubstr("jwks_url"));
  EXPECT_THAT(Load("[[auth.issuers]]\nissuer = \"x\"\n").status().message(),
              HasSubstr("exactly one"));
  EXPECT_THAT(Load("listen = \"nohost\"\n").status().message(), HasSubstr("listen"));
  EXPECT_THAT(Load("tenant = \"a b\"\n").status().message(), HasSubstr("tenant"));
  EXPECT_THAT(Load("[log]\nlevel = \"verbose\"\n").status().message(), HasSubstr("log.level"));
  auto syntax = Load("[http\n");
  ASSERT_FALSE(syntax.ok());
  EXPECT_THAT(syntax.status().message(), HasSubstr("line 1"));
}

TEST_F(ConfigTest, AuditAlertRulesAndWebhookSinks) {
  auto c = Load(R"([[audit.alert]]
name = "mass"
kind = "mass_access"
patients = 50
window_seconds = 600
[[audit.alert]]
name = "odd"
kind = "anomaly"
alpha = 0.25
z = 3
[[audit.sink]]
name = "pager"
type = "webhook"
url = "https://pager.example/hook"
secret_file = "/etc/fhirward/hook.secret"
)");
  ASSERT_TRUE(c.ok()) << c.status();
  ASSERT_EQ(c->audit_alerts.size(), 2u);
  EXPECT_EQ(c->audit_alerts[0].by, "principal");
  EXPECT_EQ(c->audit_alerts[0].patients, 50);
  EXPECT_EQ(c->audit_alerts[0].window_seconds, 600);
  EXPECT_DOUBLE_EQ(c->audit_alerts[1].alpha, 0.25);
  EXPECT_DOUBLE_EQ(c->audit_alerts[1].z, 3.0);
  ASSERT_EQ(c->audit_sinks.size(), 1u);
  EXPECT_EQ(c->audit_sinks[0].url, "https://pager.example/hook");
  EXPECT_EQ(c->audit_sinks[0].secret_file, "/etc/fhirward/hook.secret");
  EXPECT_THAT(Load("[[audit.alert]]\nname = \"x\"\nkind = \"break_glass\"\n"
                   "[[audit.alert]]\nname = \"x\"\nkind = \"break_glass\"\n")
                  .status()
                  .message(),
              HasSubstr("defined twice"));
  EXPECT_THAT(Load("[[audit.alert]]\nname = \"x\"\nkind = \"denial_spike\"\nthreshold = 5\n"
                   "by = \"planet\"\n")
                  .status()
                  .message(),
              HasSubstr("by must be one of all, principal, client, address"));
  EXPECT_THAT(Load("[[audit.alert]]\nname = \"x\"\nkind = \"anomaly\"\nalpha = \"high\"\n")
                  .status()
                  .message(),
              HasSubstr("audit.alert.alpha"));
  EXPECT_THAT(Load("[audit]\nalert = 3\n").status().message(), HasSubstr("[[audit.alert]]"));
  // A page may not carry more patients than its audit record can name.
  EXPECT_THAT(Load("[search]\nmax_count = 1500\nmax_window = 10000\n").status().message(),
              HasSubstr("search.max_count + search.max_included must be at most 2000"));
  EXPECT_TRUE(Load("[search]\nmax_count = 1000\nmax_included = 1000\n").ok());
  EXPECT_THAT(Load("[fhir]\nhistory_max_count = 5000\n").status().message(),
              HasSubstr("fhir.history_max_count"));
}

TEST(ParseListenTest, Forms) {
  std::string host;
  uint16_t port = 1;
  ASSERT_TRUE(ParseListen("127.0.0.1:0", &host, &port).ok());
  EXPECT_EQ(host, "127.0.0.1");
  EXPECT_EQ(port, 0);
  ASSERT_TRUE(ParseListen("[::1]:8443", &host, &port).ok());
  EXPECT_EQ(host, "::1");
  EXPECT_EQ(port, 8443);
  EXPECT_FALSE(ParseListen("127.0.0.1:70000", &host, &port).ok());
  EXPECT_FALSE(ParseListen("127.0.0.1", &host, &port).ok());
}

}  // namespace
}  // namespace fhirward::server
