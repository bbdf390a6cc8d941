#include "crypto/pki.h"

#include <arpa/inet.h>
#include <openssl/err.h>
#include <openssl/pem.h>
#include <openssl/x509.h>
#include <openssl/x509_vfy.h>
#include <openssl/x509v3.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cstdlib>
#include <fstream>
#include <memory>
#include <sstream>

#include "crypto/test_util.h"
#include "gtest/gtest.h"

namespace fhirward::crypto {
namespace {

using testing_util::ModeOf;
using testing_util::TempDir;

std::string ReadAll(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  std::stringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

struct X509Free {
  void operator()(X509* x) const { X509_free(x); }
};
using X509Ptr = std::unique_ptr<X509, X509Free>;

std::vector<X509Ptr> ReadCerts(const std::string& path) {
  std::vector<X509Ptr> certs;
  BIO* bio = BIO_new_file(path.c_str(), "r");
  if (bio == nullptr) return certs;
  while (X509* x = PEM_read_bio_X509(bio, nullptr, nullptr, nullptr)) certs.emplace_back(x);
  ERR_clear_error();
  BIO_free(bio);
  return certs;
}

// Verifies `leaf` against `ca` as a TLS peer with the given purpose; `ip` or
// `host` (if non-empty) must match the SAN.
int Verify(X509* leaf, X509* ca, int purpose, const std::string& ip, const std::string& host) {
  X509_STORE* store = X509_STORE_new();
  X509_STORE_add_cert(store, ca);
  X509_STORE_CTX* ctx = X509_STORE_CTX_new();
  X509_STORE_CTX_init(ctx, store, leaf, nullptr);
  X509_STORE_CTX_set_purpose(ctx, purpose);
  X509_VERIFY_PARAM* param = X509_STORE_CTX_get0_param(ctx);
  if (!ip.empty()) X509_VERIFY_PARAM_set1_ip_asc(param, ip.c_str());
  if (!host.empty()) X509_VERIFY_PARAM_set1_host(param, host.c_str(), 0);
  int rc = X509_verify_cert(ctx);
  int err = X509_STORE_CTX_get_error(ctx);
  X509_STORE_CTX_free(ctx);
  X509_STORE_free(store);
  return rc == 1 ? X509_V_OK : (err == X509_V_OK ? -1 : err);
}

std::vector<std::string> SanEntries(X509* cert) {
  std::vector<std::string> out;
  auto* names =
      static_cast<GENERAL_NAMES*>(X509_get_ext_d2i(cert, NID_subject_alt_name, nullptr, nullptr));
  for (int i = 0; names != nullptr && i < sk_GENERAL_NAME_num(names); ++i) {
    const GENERAL_NAME* gen = sk_GENERAL_NAME_value(names, i);
    int type = 0;
    auto* str = static_cast<ASN1_STRING*>(GENERAL_NAME_get0_value(gen, &type));
    std::string raw(reinterpret_cast<const char*>(ASN1_STRING_get0_data(str)),
                    ASN1_STRING_length(str));
    if (type == GEN_DNS) {
      out.push_back("DNS:" + raw);
    } else if (type == GEN_IPADD) {
      char buf[INET6_ADDRSTRLEN];
      inet_ntop(raw.size() == 4 ? AF_INET : AF_INET6, raw.data(), buf, sizeof buf);
      out.push_back(std::string("IP:") + buf);
    }
  }
  GENERAL_NAMES_free(names);
  return out;
}

TEST(DevPki, CreatesFilesWithModesAndVerifies) {
  TempDir tmp;
  std::string dir = tmp.File("pki/nested");
  ASSERT_TRUE(EnsureDevPki(dir, {"fhir.example.test", "10.1.2.3"}).ok());
  DevPkiPaths p = DevPkiIn(dir);
  EXPECT_EQ(p.ca_cert, dir + "/ca.pem");
  EXPECT_EQ(ModeOf(dir), 0700u);
  EXPECT_EQ(ModeOf(p.ca_key), 0600u);
  EXPECT_EQ(ModeOf(p.server_key), 0600u);
  EXPECT_NE(ModeOf(p.ca_cert), 0xffffffffu);
  EXPECT_NE(ModeOf(p.server_cert), 0xffffffffu);
  EXPECT_NE(ReadAll(p.server_key).find("-----BEGIN PRIVATE KEY-----"), std::string::npos);
  EXPECT_NE(ReadAll(p.ca_key).find("-----BEGIN PRIVATE KEY-----"), std::string::npos);

  std::vector<X509Ptr> ca = ReadCerts(p.ca_cert);
  std::vector<X509Ptr> chain = ReadCerts(p.server_cert);
  ASSERT_EQ(ca.size(), 1u);
  ASSERT_EQ(chain.size(), 2u);  // leaf, then CA
  EXPECT_EQ(X509_cmp(chain[1].get(), ca[0].get()), 0);
  X509* leaf = chain[0].get();

  EXPECT_EQ(Verify(leaf, ca[0].get(), X509_PURPOSE_SSL_SERVER, "127.0.0.1", ""), X509_V_OK);
  EXPECT_EQ(Verify(leaf, ca[0].get(), X509_PURPOSE_SSL_SERVER, "::1", ""), X509_V_OK);
  EXPECT_EQ(Verify(leaf, ca[0].get(), X509_PURPOSE_SSL_SERVER, "10.1.2.3", ""), X509_V_OK);
  EXPECT_EQ(Verify(leaf, ca[0].get(), X509_PURPOSE_SSL_SERVER, "", "localhost"), X509_V_OK);
  EXPECT_EQ(Verify(leaf, ca[0].get(), X509_PURPOSE_SSL_SERVER, "", "fhir.example.test"), X509_V_OK);
  EXPECT_NE(Verify(leaf, ca[0].get(), X509_PURPOSE_SSL_SERVER, "", "evil.example"), X509_V_OK);
  EXPECT_NE(Verify(leaf, ca[0].get(), X509_PURPOSE_SSL_SERVER, "10.9.9.9", ""), X509_V_OK);
  // serverAuth only.
  EXPECT_NE(Verify(leaf, ca[0].get(), X509_PURPOSE_SSL_CLIENT, "", ""), X509_V_OK);

  std::vector<std::string> san = SanEntries(leaf);
  EXPECT_EQ(san, (std::vector<std::string>{"DNS:localhost", "IP:127.0.0.1", "IP:::1",
                                           "DNS:fhir.example.test", "IP:10.1.2.3"}));

  // CA: basicConstraints critical CA:TRUE, keyCertSign; leaf: not a CA.
  EXPECT_EQ(X509_check_ca(ca[0].get()), 1);
  EXPECT_EQ(X509_check_ca(leaf), 0);
  EXPECT_TRUE(X509_get_extension_flags(ca[0].get()) & EXFLAG_CA);
  EXPECT_TRUE(X509_get_key_usage(ca[0].get()) & KU_KEY_CERT_SIGN);
  EXPECT_TRUE(X509_get_key_usage(leaf) & KU_DIGITAL_SIGNATURE);
  EXPECT_FALSE(X509_get_key_usage(leaf) & KU_KEY_CERT_SIGN);
  EXPECT_TRUE(X509_get_extended_key_usage(leaf) & XKU_SSL_SERVER);
  int crit = -1;
  auto* bc = static_cast<BASIC_CONSTRAINTS*>(
      X509_get_ext_d2i(ca[0].get(), NID_basic_constraints, &crit, nullptr));
  ASSERT_NE(bc, nullptr);
  EXPECT_EQ(crit, 1);
  BASIC_CONSTRAINTS_free(bc);
  EXPECT_NE(X509_get0_subject_key_id(ca[0].get()), nullptr);
  EXPECT_NE(X509_get0_authority_key_id(leaf), nullptr);
  EXPECT_EQ(ASN1_OCTET_STRING_cmp(X509_get0_authority_key_id(leaf),
                                  X509_get0_subject_key_id(ca[0].get())),
            0);
  EXPECT_EQ(X509_get_signature_nid(leaf), NID_ecdsa_with_SHA256);

  // Validity: leaf 397 days (+1h backdating), CA about 10 years.
  int days = 0, secs = 0;
  ASSERT_EQ(ASN1_TIME_diff(&days, &secs, X509_get0_notBefore(leaf), X509_get0_notAfter(leaf)), 1);
  EXPECT_EQ(days, 397);
  ASSERT_EQ(ASN1_TIME_diff(&days, &secs, X509_get0_notBefore(ca[0].get()),
                           X509_get0_notAfter(ca[0].get())),
            1);
  EXPECT_EQ(days, 3650);

  // Serial: positive, 16 bytes.
  const ASN1_INTEGER* serial = X509_get0_serialNumber(leaf);
  EXPECT_EQ(ASN1_STRING_length(serial), 16);
  EXPECT_EQ(ASN1_STRING_type(serial), V_ASN1_INTEGER);
}

TEST(DevPki, SecondCallChangesNothing) {
  TempDir tmp;
  ASSERT_TRUE(EnsureDevPki(tmp.path()).ok());
  DevPkiPaths p = DevPkiIn(tmp.path());
  std::string ca = ReadAll(p.ca_cert), ca_key = ReadAll(p.ca_key);
  std::string server = ReadAll(p.server_cert), server_key = ReadAll(p.server_key);
  ASSERT_TRUE(EnsureDevPki(tmp.path(), {"other.example"}).ok());
  EXPECT_EQ(ReadAll(p.ca_cert), ca);
  EXPECT_EQ(ReadAll(p.ca_key), ca_key);
  EXPECT_EQ(ReadAll(p.server_cert), server);
  EXPECT_EQ(ReadAll(p.server_key), server_key);
}

TEST(DevPki, ReissuesDeletedServerCertUnderSameCa) {
  TempDir tmp;
  ASSERT_TRUE(EnsureDevPki(tmp.path()).ok());
  DevPkiPaths p = DevPkiIn(tmp.path());
  std::string ca = ReadAll(p.ca_cert);
  ASSERT_EQ(::unlink(p.server_cert.c_str()), 0);
  ASSERT_TRUE(EnsureDevPki(tmp.path(), {"added.example"}).ok());
  EXPECT_EQ(ReadAll(p.ca_cert), ca);
  std::vector<X509Ptr> cas = ReadCerts(p.ca_cert);
  std::vector<X509Ptr> chain = ReadCerts(p.server_cert);
  ASSERT_EQ(chain.size(), 2u);
  EXPECT_EQ(Verify(chain[0].get(), cas[0].get(), X509_PURPOSE_SSL_SERVER, "", "added.example"),
            X509_V_OK);
  EXPECT_EQ(ModeOf(p.server_key), 0600u);
}

TEST(DevPki, RejectsBadHost) {
  TempDir tmp;
  EXPECT_FALSE(EnsureDevPki(tmp.File("a"), {"bad,DNS:evil.example"}).ok());
  EXPECT_FALSE(EnsureDevPki(tmp.File("b"), {""}).ok());
  EXPECT_FALSE(EnsureDevPki(tmp.File("c"), {"a..b"}).ok());
  EXPECT_FALSE(EnsureDevPki(tmp.File("d"), {"trailing.dot."}).ok());
  // Nothing is written when the request is refused.
  EXPECT_EQ(ModeOf(tmp.File("a")), 0xffffffffu);
  // A wildcard name is accepted.
  EXPECT_TRUE(EnsureDevPki(tmp.File("e"), {"*.dev.example"}).ok());
}

TEST(DevPki, OpensslCliVerifies) {
  if (std::system("openssl version >/dev/null 2>&1") != 0) GTEST_SKIP() << "no openssl CLI";
  TempDir tmp;
  ASSERT_TRUE(EnsureDevPki(tmp.path()).ok());
  DevPkiPaths p = DevPkiIn(tmp.path());
  std::string cmd = "openssl verify -purpose sslserver -CAfile '" + p.ca_cert + "' '" +
                    p.server_cert + "' >/dev/null 2>&1";
  EXPECT_EQ(std::system(cmd.c_str()), 0);
}

TEST(DevPki, IssuesClientCert) {
  TempDir tmp;
  ASSERT_TRUE(EnsureDevPki(tmp.path()).ok());
  std::string prefix = tmp.File("alice");
  ASSERT_TRUE(IssueDevClientCert(tmp.path(), "alice", prefix).ok());
  EXPECT_EQ(ModeOf(prefix + ".key"), 0600u);
  std::vector<X509Ptr> cas = ReadCerts(DevPkiIn(tmp.path()).ca_cert);
  std::vector<X509Ptr> client = ReadCerts(prefix + ".pem");
  ASSERT_EQ(client.size(), 1u);
  EXPECT_EQ(Verify(client[0].get(), cas[0].get(), X509_PURPOSE_SSL_CLIENT, "", ""), X509_V_OK);
  EXPECT_NE(Verify(client[0].get(), cas[0].get(), X509_PURPOSE_SSL_SERVER, "", ""), X509_V_OK);
  char cn[128] = {};
  X509_NAME_get_text_by_NID(X509_get_subject_name(client[0].get()), NID_commonName, cn, sizeof cn);
  EXPECT_STREQ(cn, "alice");
  // Does not overwrite an existing key.
  EXPECT_FALSE(IssueDevClientCert(tmp.path(), "alice", prefix).ok());
  // No CA: fails.
  TempDir empty;
  EXPECT_FALSE(IssueDevClientCert(empty.path(), "bob", empty.File("bob")).ok());
}

TEST(DevPki, ClientCertRefusesWorldReadableCaKey) {
  TempDir tmp;
  ASSERT_TRUE(EnsureDevPki(tmp.path()).ok());
  ASSERT_EQ(::chmod(DevPkiIn(tmp.path()).ca_key.c_str(), 0644), 0);
  EXPECT_FALSE(IssueDevClientCert(tmp.path(), "alice", tmp.File("alice")).ok());
}

}  // namespace
}  // namespace fhirward::crypto
