#include "oauth/key_ring.h"

#include <fcntl.h>
#include <stdlib.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include <filesystem>
#include <fstream>
#include <set>
#include <sstream>
#include <string>

#include "common/error.h"
#include "crypto/test_util.h"
#include "gtest/gtest.h"
#include "jose/jws.h"
#include "json/value.h"

namespace fhirward::oauth {
namespace {

constexpr int64_t kNow = 1'700'000'000;
constexpr int64_t kOverlap = 3900;  // 1 h + 5 min

using KeysTempDir = testing_util::TempDir;

std::set<std::string> Kids(const jose::KeySet& set) {
  std::set<std::string> out;
  for (const auto& k : set.keys()) out.insert(k.kid());
  return out;
}

std::string ActiveKid(const SigningKeyRing& ring, jose::Algorithm alg, int64_t now) {
  auto k = ring.Active(alg, now);
  return k ? k->kid() : std::string("<none>");
}

bool Exists(const std::string& path) {
  struct stat st;
  return stat(path.c_str(), &st) == 0;
}

void WriteFile(const std::string& path, const std::string& text) {
  std::ofstream out(path, std::ios::binary | std::ios::trunc);
  out << text;
}

// Gives `path` a distinct modification time (the ring detects changes by mtime).
void Touch(const std::string& path, int64_t seconds_ahead) {
  struct timespec times[2];
  clock_gettime(CLOCK_REALTIME, &times[0]);
  times[0].tv_sec += seconds_ahead;
  times[1] = times[0];
  ASSERT_EQ(utimensat(AT_FDCWD, path.c_str(), times, 0), 0);
}

std::string ReadFile(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  std::stringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

// A token signed by the ring's active key verifies with the published set.
void ExpectSignsAndVerifies(const SigningKeyRing& ring, jose::Algorithm alg, int64_t now) {
  auto key = ring.Active(alg, now);
  ASSERT_NE(key, nullptr);
  json::Value claims = json::Value::MakeObject();
  claims.Set("iss", json::Value::String("https://fhir"));
  claims.Set("aud", json::Value::String("https://fhir"));
  claims.Set("sub", json::Value::String("u"));
  claims.Set("iat", json::Value::Int(now));
  claims.Set("exp", json::Value::Int(now + 60));
  auto token = jose::SignCompact(*key, claims, "JWT");
  ASSERT_TRUE(token.ok()) << token.status();
  jose::JwtExpectations e;
  e.issuer = "https://fhir";
  e.audience = {"https://fhir"};
  e.now = now;
  auto v = jose::VerifyJwt(*token, ring.Published(now), e);
  EXPECT_TRUE(v.ok()) << v.status();
}

TEST(KeyRingTest, OpenCreatesEs256AndRs256) {
  KeysTempDir dir;
  auto ring = SigningKeyRing::Open(dir.path(), "legacy", kNow);
  ASSERT_TRUE(ring.ok()) << ring.status();
  auto keys = (*ring)->Keys();
  ASSERT_EQ(keys.size(), 2u);
  int es = 0, rs = 0;
  for (const KeyInfo& k : keys) {
    EXPECT_NE(k.kid, "legacy") << "no legacy key here";
    EXPECT_EQ(k.activate_at, 0);
    EXPECT_EQ(k.retire_at, 0);
    EXPECT_EQ(k.file.find('/'), std::string::npos);
    EXPECT_TRUE(Exists(dir.File(k.file))) << k.file;
    struct stat st;
    ASSERT_EQ(stat(dir.File(k.file).c_str(), &st), 0);
    EXPECT_EQ(st.st_mode & 077, 0u) << "private keys are 0600";
    es += k.alg == jose::Algorithm::kES256;
    rs += k.alg == jose::Algorithm::kRS256;
  }
  EXPECT_EQ(es, 1);
  EXPECT_EQ(rs, 1);
  EXPECT_TRUE(Exists(dir.File("signing.json")));
  EXPECT_EQ((*ring)->Published(kNow).keys().size(), 2u);
  ExpectSignsAndVerifies(**ring, jose::Algorithm::kES256, kNow);
  ExpectSignsAndVerifies(**ring, jose::Algorithm::kRS256, kNow);

  // Opening again reads the same keys (no new ones).
  auto again = SigningKeyRing::Open(dir.path(), "legacy", kNow + 10);
  ASSERT_TRUE(again.ok()) << again.status();
  auto keys2 = (*again)->Keys();
  ASSERT_EQ(keys2.size(), 2u);
  std::set<std::string> a, b;
  for (const auto& k : keys) a.insert(k.kid);
  for (const auto& k : keys2) b.insert(k.kid);
  EXPECT_EQ(a, b);
}

TEST(KeyRingTest, OpenMigratesLegacyEs256KeyWithGivenKid) {
  KeysTempDir dir;
  auto legacy = jose::SigningKey::Generate(jose::Algorithm::kES256, "whatever");
  ASSERT_TRUE(legacy.ok());
  ASSERT_TRUE(legacy->SavePem(dir.File("signing-es256.pem")).ok());
  auto ring = SigningKeyRing::Open(dir.path(), "legacy-kid-1", kNow);
  ASSERT_TRUE(ring.ok()) << ring.status();
  bool found = false;
  for (const KeyInfo& k : (*ring)->Keys()) {
    if (k.alg != jose::Algorithm::kES256) continue;
    EXPECT_EQ(k.kid, "legacy-kid-1");
    EXPECT_EQ(k.file, "signing-es256.pem");
    EXPECT_EQ(k.activate_at, 0);
    found = true;
  }
  EXPECT_TRUE(found);
  EXPECT_EQ((*ring)->Keys().size(), 2u) << "the legacy ES256 key and a new RS256 key";
  auto active = (*ring)->Active(jose::Algorithm::kES256, kNow);
  ASSERT_NE(active, nullptr);
  EXPECT_EQ(active->kid(), "legacy-kid-1");
  // The migrated key is the legacy key material: same public point, new kid.
  jose::KeySet published = (*ring)->Published(kNow);
  const jose::PublicKey* pub = published.Find("legacy-kid-1");
  ASSERT_NE(pub, nullptr);
  json::Value got = pub->ToJwk();
  json::Value want = legacy->public_key().ToJwk();
  ASSERT_NE(got.Find("x"), nullptr);
  EXPECT_EQ(*got.Find("x"), *want.Find("x"));
  EXPECT_EQ(*got.Find("y"), *want.Find("y"));
  ExpectSignsAndVerifies(**ring, jose::Algorithm::kES256, kNow);
  ExpectSignsAndVerifies(**ring, jose::Algorithm::kRS256, kNow);
}

TEST(KeyRingTest, RotatePublishesAtOnceActivatesLaterAndRetiresTheOldKey) {
  KeysTempDir dir;
  auto ring_or = SigningKeyRing::Open(dir.path(), "legacy", kNow);
  ASSERT_TRUE(ring_or.ok()) << ring_or.status();
  SigningKeyRing& first = **ring_or;
  const std::string old_kid = ActiveKid(first, jose::Algorithm::kES256, kNow);
  const std::string rsa_kid = ActiveKid(first, jose::Algorithm::kRS256, kNow);
  std::string old_file;
  for (const auto& k : first.Keys()) {
    if (k.kid == old_kid) old_file = k.file;
  }

  auto fresh = SigningKeyRing::Rotate(dir.path(), jose::Algorithm::kES256, kNow, 100, kOverlap);
  ASSERT_TRUE(fresh.ok()) << fresh.status();
  EXPECT_EQ(fresh->activate_at, kNow + 100);
  EXPECT_EQ(fresh->retire_at, 0);
  EXPECT_EQ(fresh->alg, jose::Algorithm::kES256);
  EXPECT_NE(fresh->kid, old_kid);
  // A ring loaded after the rotation.
  auto reloaded = SigningKeyRing::Open(dir.path(), "legacy", kNow);
  ASSERT_TRUE(reloaded.ok()) << reloaded.status();
  SigningKeyRing& ring = **reloaded;

  // Published at once, not signing yet.
  EXPECT_EQ(Kids(ring.Published(kNow)), (std::set<std::string>{old_kid, fresh->kid, rsa_kid}));
  EXPECT_EQ(ActiveKid(ring, jose::Algorithm::kES256, kNow), old_kid);
  EXPECT_EQ(ActiveKid(ring, jose::Algorithm::kES256, kNow + 99), old_kid);
  // Signing from activate_at.
  EXPECT_EQ(ActiveKid(ring, jose::Algorithm::kES256, kNow + 100), fresh->kid);
  EXPECT_EQ(ActiveKid(ring, jose::Algorithm::kRS256, kNow + 100), rsa_kid) << "other alg kept";
  // The old key stays published until retire_at = activation + overlap.
  const int64_t retire = kNow + 100 + kOverlap;
  for (const auto& k : ring.Keys()) {
    if (k.kid == old_kid) EXPECT_EQ(k.retire_at, retire);
    if (k.kid == rsa_kid) EXPECT_EQ(k.retire_at, 0);
  }
  EXPECT_EQ(Kids(ring.Published(retire - 1)),
            (std::set<std::string>{old_kid, fresh->kid, rsa_kid}));
  EXPECT_EQ(Kids(ring.Published(retire)), (std::set<std::string>{fresh->kid, rsa_kid}));
  EXPECT_EQ(ActiveKid(ring, jose::Algorithm::kES256, retire), fresh->kid);
  ExpectSignsAndVerifies(ring, jose::Algorithm::kES256, retire);

  // The next rotation after retire_at deletes the retired key's file and entry.
  ASSERT_TRUE(Exists(dir.File(old_file)));
  auto third = SigningKeyRing::Rotate(dir.path(), jose::Algorithm::kES256, retire + 1, 0, kOverlap);
  ASSERT_TRUE(third.ok()) << third.status();
  EXPECT_FALSE(Exists(dir.File(old_file)));
  auto last = SigningKeyRing::Open(dir.path(), "legacy", retire + 1);
  ASSERT_TRUE(last.ok()) << last.status();
  std::set<std::string> kids;
  for (const auto& k : (*last)->Keys()) kids.insert(k.kid);
  EXPECT_EQ(kids, (std::set<std::string>{fresh->kid, third->kid, rsa_kid}));
  // activate_in 0: signs at once.
  EXPECT_EQ(ActiveKid(**last, jose::Algorithm::kES256, retire + 1), third->kid);
}

TEST(KeyRingTest, ReloadIfChangedPicksUpARotationByAnotherProcess) {
  KeysTempDir dir;
  auto server_or = SigningKeyRing::Open(dir.path(), "legacy", kNow);
  ASSERT_TRUE(server_or.ok()) << server_or.status();
  SigningKeyRing& server = **server_or;
  // Nothing changed yet.
  auto unchanged = server.ReloadIfChanged(kNow);
  ASSERT_TRUE(unchanged.ok());
  EXPECT_FALSE(*unchanged);

  // The CLI: its own ring object on the same directory, then a rotation.
  auto cli = SigningKeyRing::Open(dir.path(), "legacy", kNow);
  ASSERT_TRUE(cli.ok()) << cli.status();
  EXPECT_EQ((*cli)->Keys().size(), 2u);
  auto fresh = SigningKeyRing::Rotate(dir.path(), jose::Algorithm::kRS256, kNow, 300, kOverlap);
  ASSERT_TRUE(fresh.ok()) << fresh.status();

  EXPECT_FALSE(Kids(server.Published(kNow)).count(fresh->kid)) << "not before the reload";
  auto changed = server.ReloadIfChanged(kNow);
  ASSERT_TRUE(changed.ok()) << changed.status();
  EXPECT_TRUE(*changed);
  EXPECT_TRUE(Kids(server.Published(kNow)).count(fresh->kid));
  EXPECT_EQ(server.Keys().size(), 3u);
  auto again = server.ReloadIfChanged(kNow);
  ASSERT_TRUE(again.ok());
  EXPECT_FALSE(*again) << "only once per change";
  EXPECT_EQ(ActiveKid(server, jose::Algorithm::kRS256, kNow + 300), fresh->kid);
}

// Regression: ReloadIfChanged() once compared the manifest's mtime alone.
// Linux file timestamps come from a coarse clock (one jiffy, 1-10 ms), so a
// manifest written within the same tick as the one last loaded has the same
// st_mtim; the inode (the manifest is replaced by rename) tells them apart.
TEST(KeyRingTest, ReloadIfChangedSeesAWriteInTheSameTimestampTick) {
  for (int i = 0; i < 20; ++i) {
    KeysTempDir dir;
    auto ring = SigningKeyRing::Open(dir.path(), "legacy", kNow);
    ASSERT_TRUE(ring.ok()) << ring.status();
    auto fresh = SigningKeyRing::Rotate(dir.path(), jose::Algorithm::kES256, kNow, 0, kOverlap);
    ASSERT_TRUE(fresh.ok()) << fresh.status();
    auto changed = (*ring)->ReloadIfChanged(kNow);
    ASSERT_TRUE(changed.ok()) << changed.status();
    EXPECT_TRUE(*changed) << "attempt " << i;
    EXPECT_EQ(ActiveKid(**ring, jose::Algorithm::kES256, kNow), fresh->kid) << "attempt " << i;
  }
}

TEST(KeyRingTest, RefusesManifestWithAPathInFile) {
  KeysTempDir dir;
  auto key = jose::SigningKey::Generate(jose::Algorithm::kES256, "k1");
  ASSERT_TRUE(key.ok());
  ASSERT_TRUE(key->SavePem(dir.File("inner.pem")).ok());
  for (const char* file : {"../inner.pem", "/etc/passwd", "sub/inner.pem"}) {
    WriteFile(dir.File("signing.json"),
              std::string(R"({"keys":[{"kid":"k1","alg":"ES256","file":")") + file +
                  R"(","activate_at":0,"retire_at":0}]})");
    auto ring = SigningKeyRing::Open(dir.path(), "legacy", kNow);
    EXPECT_FALSE(ring.ok()) << file;
  }
  // The same entry with a plain file name is fine (RS256 gets added).
  WriteFile(
      dir.File("signing.json"),
      R"({"keys":[{"kid":"k1","alg":"ES256","file":"inner.pem","activate_at":0,"retire_at":0}]})");
  auto ok = SigningKeyRing::Open(dir.path(), "legacy", kNow);
  ASSERT_TRUE(ok.ok()) << ok.status();
  EXPECT_EQ(ActiveKid(**ok, jose::Algorithm::kES256, kNow), "k1");
}

TEST(KeyRingTest, RefusesGarbageManifests) {
  for (
      const char* text :
      {"not json at all", "{}", R"({"keys":{}})", R"({"keys":[{"kid":"a"}]})",
       R"({"keys":[{"kid":"a","alg":"HS256","file":"x.pem","activate_at":0,"retire_at":0}]})",
       R"({"keys":[{"kid":"a","alg":"ES256","file":"x.pem","activate_at":"0","retire_at":0}]})",
       R"({"keys":[{"kid":"a","alg":"ES256","file":"missing.pem","activate_at":0,"retire_at":0}]})"}) {
    KeysTempDir dir;
    WriteFile(dir.File("signing.json"), text);
    auto ring = SigningKeyRing::Open(dir.path(), "legacy", kNow);
    EXPECT_FALSE(ring.ok()) << text;
    // Rotation refuses to build on it too.
    auto rot = SigningKeyRing::Rotate(dir.path(), jose::Algorithm::kES256, kNow, 0, kOverlap);
    if (std::string(text).find("missing.pem") == std::string::npos) {
      EXPECT_FALSE(rot.ok()) << text;
    }
  }
}

TEST(KeyRingTest, AFailedReloadKeepsTheLoadedKeys) {
  KeysTempDir dir;
  auto ring_or = SigningKeyRing::Open(dir.path(), "legacy", kNow);
  ASSERT_TRUE(ring_or.ok());
  SigningKeyRing& ring = **ring_or;
  const std::string es = ActiveKid(ring, jose::Algorithm::kES256, kNow);
  const std::string good = ReadFile(dir.File("signing.json"));
  // Replace atomically with garbage (a different mtime).
  WriteFile(dir.File("signing.json.tmp"), "garbage");
  ASSERT_EQ(rename(dir.File("signing.json.tmp").c_str(), dir.File("signing.json").c_str()), 0);
  Touch(dir.File("signing.json"), 10);
  auto r = ring.ReloadIfChanged(kNow);
  EXPECT_FALSE(r.ok());
  EXPECT_EQ(ActiveKid(ring, jose::Algorithm::kES256, kNow), es);
  EXPECT_EQ(ring.Published(kNow).keys().size(), 2u);
  // A later good manifest is picked up.
  WriteFile(dir.File("signing.json.tmp"), good);
  ASSERT_EQ(rename(dir.File("signing.json.tmp").c_str(), dir.File("signing.json").c_str()), 0);
  Touch(dir.File("signing.json"), 20);
  auto r2 = ring.ReloadIfChanged(kNow);
  ASSERT_TRUE(r2.ok()) << r2.status();
  EXPECT_EQ(ActiveKid(ring, jose::Algorithm::kES256, kNow), es);
}

}  // namespace
}  // namespace fhirward::oauth
