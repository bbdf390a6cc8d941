#include "crypto/pki.h"

#include <arpa/inet.h>
#include <openssl/bio.h>
#include <openssl/bn.h>
#include <openssl/err.h>
#include <openssl/evp.h>
#include <openssl/pem.h>
#include <openssl/x509.h>
#include <openssl/x509v3.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cctype>
#include <cerrno>
#include <cstring>
#include <memory>
#include <optional>
#include <string_view>

#include "common/c_ptr.h"
#include "common/clock.h"
#include "common/error.h"
#include "crypto/secure_file.h"

namespace fhirward::crypto {
namespace {

using X509Ptr = CPtr<X509, X509_free>;
using PkeyPtr = CPtr<EVP_PKEY, EVP_PKEY_free>;
using NamePtr = CPtr<X509_NAME, X509_NAME_free>;
using BnPtr = CPtr<BIGNUM, BN_free>;
using ExtPtr = CPtr<X509_EXTENSION, X509_EXTENSION_free>;
using GenNamesPtr = CPtr<GENERAL_NAMES, GENERAL_NAMES_free>;
using GenNamePtr = CPtr<GENERAL_NAME, GENERAL_NAME_free>;
void FreeBio(BIO* b) { BIO_free_all(b); }
using BioPtr = CPtr<BIO, FreeBio>;

constexpr int kCaDays = 3650;            // 10 years
constexpr int kLeafDays = 397;           // CA/Browser Forum maximum
constexpr long kBackdateSeconds = 3600;  // tolerate small clock skew between hosts

absl::Status SslError(std::string_view what) {
  unsigned long e = ERR_get_error();
  std::string detail(what);
  if (e != 0) {
    char buf[256];
    ERR_error_string_n(e, buf, sizeof buf);
    detail += ": ";
    detail += buf;
  }
  ERR_clear_error();
  return Error(ErrorCode::kInternal, detail);
}

bool Exists(const std::string& path) {
  struct stat st;
  return ::stat(path.c_str(), &st) == 0;
}

// Never prompt on a terminal for a passphrase: encrypted keys are refused.
int NoPassphrase(char*, int, int, void*) { return -1; }

absl::StatusOr<PkeyPtr> NewP256Key() {
  PkeyPtr key(EVP_PKEY_Q_keygen(nullptr, nullptr, "EC", "P-256"));
  if (!key) return SslError("P-256 key generation failed");
  return key;
}

absl::StatusOr<std::string> BioContents(BIO* bio) {
  char* data = nullptr;
  long len = BIO_get_mem_data(bio, &data);
  if (len < 0 || (len > 0 && data == nullptr)) return SslError("cannot read memory BIO");
  return std::string(data, static_cast<size_t>(len));
}

absl::StatusOr<SecretBytes> KeyPem(EVP_PKEY* key) {
  // Secure-heap BIO: the buffer is wiped when freed.
  BioPtr bio(BIO_new(BIO_s_secmem()));
  if (!bio ||
      PEM_write_bio_PKCS8PrivateKey(bio.get(), key, nullptr, nullptr, 0, nullptr, nullptr) != 1) {
    return SslError("cannot encode private key");
  }
  char* data = nullptr;
  long len = BIO_get_mem_data(bio.get(), &data);
  if (len <= 0 || data == nullptr) return SslError("cannot encode private key");
  return SecretBytes(std::string_view(data, static_cast<size_t>(len)));
}

absl::StatusOr<std::string> CertPem(X509* cert) {
  BioPtr bio(BIO_new(BIO_s_mem()));
  if (!bio || PEM_write_bio_X509(bio.get(), cert) != 1) return SslError("cannot encode cert");
  return BioContents(bio.get());
}

absl::StatusOr<X509Ptr> LoadCert(const std::string& path) {
  BioPtr bio(BIO_new_file(path.c_str(), "r"));
  if (!bio) return SslError("cannot open " + path);
  X509Ptr cert(PEM_read_bio_X509(bio.get(), nullptr, NoPassphrase, nullptr));
  if (!cert) return SslError("cannot parse certificate " + path);
  return cert;
}

absl::StatusOr<PkeyPtr> LoadKey(const std::string& path) {
  absl::StatusOr<SecretBytes> pem = ReadPrivateFile(path, 64 * 1024);
  if (!pem.ok()) return pem.status();
  BioPtr bio(BIO_new_mem_buf(pem->UnsafeView().data(), static_cast<int>(pem->size())));
  if (!bio) return SslError("BIO_new_mem_buf failed");
  PkeyPtr key(PEM_read_bio_PrivateKey(bio.get(), nullptr, NoPassphrase, nullptr));
  if (!key) return SslError("cannot parse private key " + path);
  return key;
}

// Lower-case DNS name (optionally "*." wildcard), LDH labels of 1..63 bytes.
std::optional<std::string> NormalizeDnsName(std::string_view host) {
  if (host.empty() || host.size() > 253) return std::nullopt;
  std::string out;
  out.reserve(host.size());
  size_t label = 0;
  for (size_t i = 0; i < host.size(); ++i) {
    char c = host[i];
    if (c == '*' && i == 0 && host.size() > 2 && host[1] == '.') {
      out += c;
      label = 1;
      continue;
    }
    if (c == '.') {
      if (label == 0) return std::nullopt;
      label = 0;
      out += c;
      continue;
    }
    if (!(std::isalnum(static_cast<unsigned char>(c)) || c == '-')) return std::nullopt;
    if (++label > 63) return std::nullopt;
    out += static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
  }
  if (label == 0) return std::nullopt;  // trailing dot
  return out;
}

// Parses `host` as an IPv4/IPv6 address; returns its network-order bytes.
std::optional<std::string> ParseIp(const std::string& host) {
  unsigned char buf[16];
  if (inet_pton(AF_INET, host.c_str(), buf) == 1) return std::string(buf, buf + 4);
  if (inet_pton(AF_INET6, host.c_str(), buf) == 1) return std::string(buf, buf + 16);
  return std::nullopt;
}

absl::StatusOr<GenNamesPtr> SubjectAltNames(const std::vector<std::string>& extra_hosts) {
  std::vector<std::string> hosts = {"localhost", "127.0.0.1", "::1"};
  hosts.insert(hosts.end(), extra_hosts.begin(), extra_hosts.end());
  GenNamesPtr names(sk_GENERAL_NAME_new_null());
  if (!names) return SslError("sk_GENERAL_NAME_new_null failed");
  std::vector<std::pair<int, std::string>> seen;
  for (const std::string& host : hosts) {
    int type;
    std::string value;
    if (std::optional<std::string> ip = ParseIp(host)) {
      type = GEN_IPADD;
      value = std::move(*ip);
    } else if (std::optional<std::string> dns = NormalizeDnsName(host)) {
      type = GEN_DNS;
      value = std::move(*dns);
    } else {
      return Error(ErrorCode::kInternal,
                   "not an IP address or DNS name for the server certificate: " + host);
    }
    bool dup = false;
    for (const auto& s : seen) dup = dup || (s.first == type && s.second == value);
    if (dup) continue;
    seen.emplace_back(type, value);

    GenNamePtr gen(GENERAL_NAME_new());
    ASN1_STRING* str = type == GEN_IPADD ? ASN1_OCTET_STRING_new() : ASN1_IA5STRING_new();
    if (!gen || str == nullptr ||
        ASN1_STRING_set(str, value.data(), static_cast<int>(value.size())) != 1) {
      ASN1_STRING_free(str);
      return SslError("cannot build subjectAltName");
    }
    GENERAL_NAME_set0_value(gen.get(), type, str);
    if (sk_GENERAL_NAME_push(names.get(), gen.get()) <= 0) {
      return SslError("cannot build subjectAltName");
    }
    gen.release();
  }
  return names;
}

struct CertSpec {
  std::string common_name;
  std::string organization = "fhirward development";
  EVP_PKEY* subject_key = nullptr;
  X509* issuer = nullptr;  // null: self-signed
  EVP_PKEY* issuer_key = nullptr;
  int days = kLeafDays;
  std::vector<std::pair<int, std::string>> extensions;  // NID, v3 config value
  GENERAL_NAMES* san = nullptr;
};

absl::Status SetRandomSerial(X509* cert) {
  // 16 random bytes, positive and without a leading zero byte (RFC 5280 §4.1.2.2).
  std::string bytes = RandomBytes(16);
  bytes[0] = static_cast<char>((static_cast<unsigned char>(bytes[0]) & 0x7f) | 0x40);
  BnPtr bn(BN_bin2bn(reinterpret_cast<const unsigned char*>(bytes.data()),
                     static_cast<int>(bytes.size()), nullptr));
  if (!bn || BN_to_ASN1_INTEGER(bn.get(), X509_get_serialNumber(cert)) == nullptr) {
    return SslError("cannot set serial number");
  }
  return absl::OkStatus();
}

absl::StatusOr<X509Ptr> MakeCert(const CertSpec& spec) {
  X509Ptr cert(X509_new());
  if (!cert || X509_set_version(cert.get(), X509_VERSION_3) != 1) return SslError("X509_new");
  if (absl::Status s = SetRandomSerial(cert.get()); !s.ok()) return s;
  if (X509_gmtime_adj(X509_getm_notBefore(cert.get()), -kBackdateSeconds) == nullptr ||
      X509_time_adj_ex(X509_getm_notAfter(cert.get()), spec.days, 0, nullptr) == nullptr) {
    return SslError("cannot set validity");
  }
  NamePtr name(X509_NAME_new());
  auto add_entry = [&](const char* field, const std::string& value) {
    return X509_NAME_add_entry_by_txt(name.get(), field, MBSTRING_UTF8,
                                      reinterpret_cast<const unsigned char*>(value.data()),
                                      static_cast<int>(value.size()), -1, 0) == 1;
  };
  if (!name || !add_entry("O", spec.organization) || !add_entry("CN", spec.common_name)) {
    return SslError("cannot build subject name");
  }
  X509* issuer = spec.issuer != nullptr ? spec.issuer : cert.get();
  if (X509_set_subject_name(cert.get(), name.get()) != 1 ||
      X509_set_issuer_name(cert.get(), spec.issuer != nullptr ? X509_get_subject_name(spec.issuer)
                                                              : name.get()) != 1 ||
      X509_set_pubkey(cert.get(), spec.subject_key) != 1) {
    return SslError("cannot set names or key");
  }
  for (const auto& [nid, value] : spec.extensions) {
    X509V3_CTX ctx;
    X509V3_set_ctx_nodb(&ctx);
    X509V3_set_ctx(&ctx, issuer, cert.get(), nullptr, nullptr, 0);
    ExtPtr ext(X509V3_EXT_nconf_nid(nullptr, &ctx, nid, value.c_str()));
    if (!ext || X509_add_ext(cert.get(), ext.get(), -1) != 1) {
      return SslError(std::string("cannot add extension ") + OBJ_nid2sn(nid));
    }
  }
  if (spec.san != nullptr &&
      X509_add1_ext_i2d(cert.get(), NID_subject_alt_name, spec.san, 0, X509V3_ADD_DEFAULT) != 1) {
    return SslError("cannot add subjectAltName");
  }
  if (X509_sign(cert.get(), spec.issuer_key, EVP_sha256()) <= 0) {
    return SslError("cannot sign certificate");
  }
  return cert;
}

struct Leaf {
  PkeyPtr key;
  X509Ptr cert;
};

absl::StatusOr<Leaf> IssueLeaf(X509* ca, EVP_PKEY* ca_key, const std::string& common_name,
                               const char* eku, GENERAL_NAMES* san) {
  absl::StatusOr<PkeyPtr> key = NewP256Key();
  if (!key.ok()) return key.status();
  CertSpec spec;
  spec.common_name = common_name;
  spec.subject_key = key->get();
  spec.issuer = ca;
  spec.issuer_key = ca_key;
  spec.days = kLeafDays;
  spec.extensions = {{NID_basic_constraints, "critical,CA:FALSE"},
                     {NID_key_usage, "critical,digitalSignature"},
                     {NID_ext_key_usage, eku},
                     {NID_subject_key_identifier, "hash"},
                     {NID_authority_key_identifier, "keyid:always"}};
  spec.san = san;
  absl::StatusOr<X509Ptr> cert = MakeCert(spec);
  if (!cert.ok()) return cert.status();
  return Leaf{std::move(*key), std::move(*cert)};
}

struct ServerFiles {
  SecretBytes key_pem;
  std::string chain_pem;  // leaf, then CA
};

// Issues a server key and certificate under `ca`, in memory.
absl::StatusOr<ServerFiles> IssueServer(X509* ca, EVP_PKEY* ca_key,
                                        const std::vector<std::string>& extra_hosts) {
  absl::StatusOr<GenNamesPtr> san = SubjectAltNames(extra_hosts);
  if (!san.ok()) return san.status();
  absl::StatusOr<Leaf> leaf = IssueLeaf(ca, ca_key, "localhost", "serverAuth", san->get());
  if (!leaf.ok()) return leaf.status();
  absl::StatusOr<SecretBytes> key_pem = KeyPem(leaf->key.get());
  absl::StatusOr<std::string> leaf_pem = CertPem(leaf->cert.get());
  absl::StatusOr<std::string> ca_pem = CertPem(ca);
  if (!key_pem.ok()) return key_pem.status();
  if (!leaf_pem.ok()) return leaf_pem.status();
  if (!ca_pem.ok()) return ca_pem.status();
  return ServerFiles{std::move(*key_pem), *leaf_pem + *ca_pem};
}

absl::Status WriteServerFiles(const DevPkiPaths& paths, const ServerFiles& files) {
  if (absl::Status s = ReplaceFile(paths.server_key, files.key_pem.UnsafeView(), 0600); !s.ok()) {
    return s;
  }
  return ReplaceFile(paths.server_cert, files.chain_pem, 0644);
}

}  // namespace

DevPkiPaths DevPkiIn(const std::string& dir) {
  std::string base = dir;
  while (base.size() > 1 && base.back() == '/') base.pop_back();
  if (base.empty()) base = ".";
  base += '/';
  return DevPkiPaths{base + "ca.pem", base + "ca.key", base + "server.pem", base + "server.key"};
}

absl::Status EnsureDevPki(const std::string& dir, const std::vector<std::string>& extra_hosts) {
  const DevPkiPaths paths = DevPkiIn(dir);
  if (Exists(paths.ca_cert)) {
    if (Exists(paths.server_cert) && Exists(paths.server_key)) return absl::OkStatus();
    // The CA stays; a deleted server certificate is re-issued under it (e.g. to
    // add hosts), so clients that trust ca.pem keep working.
    absl::StatusOr<X509Ptr> ca = LoadCert(paths.ca_cert);
    if (!ca.ok()) return ca.status();
    absl::StatusOr<PkeyPtr> ca_key = LoadKey(paths.ca_key);
    if (!ca_key.ok()) return ca_key.status();
    if (X509_check_private_key(ca->get(), ca_key->get()) != 1) {
      return SslError(paths.ca_key + " does not match " + paths.ca_cert);
    }
    absl::StatusOr<ServerFiles> server = IssueServer(ca->get(), ca_key->get(), extra_hosts);
    if (!server.ok()) return server.status();
    return WriteServerFiles(paths, *server);
  }

  absl::StatusOr<PkeyPtr> ca_key = NewP256Key();
  if (!ca_key.ok()) return ca_key.status();
  CertSpec spec;
  spec.common_name = "fhirward development CA (not for production)";
  spec.subject_key = ca_key->get();
  spec.issuer_key = ca_key->get();
  spec.days = kCaDays;
  spec.extensions = {{NID_basic_constraints, "critical,CA:TRUE,pathlen:0"},
                     {NID_key_usage, "critical,keyCertSign,cRLSign"},
                     {NID_subject_key_identifier, "hash"}};
  absl::StatusOr<X509Ptr> ca = MakeCert(spec);
  if (!ca.ok()) return ca.status();
  absl::StatusOr<SecretBytes> ca_key_pem = KeyPem(ca_key->get());
  if (!ca_key_pem.ok()) return ca_key_pem.status();
  absl::StatusOr<std::string> ca_pem = CertPem(ca->get());
  if (!ca_pem.ok()) return ca_pem.status();
  absl::StatusOr<ServerFiles> server = IssueServer(ca->get(), ca_key->get(), extra_hosts);
  if (!server.ok()) return server.status();

  // Everything is built before anything is written; ca.pem goes last, so its
  // presence means the set is complete.
  if (absl::Status s = MakePrivateDirs(dir); !s.ok()) return s;
  if (absl::Status s = ReplaceFile(paths.ca_key, ca_key_pem->UnsafeView(), 0600); !s.ok()) {
    return s;
  }
  if (absl::Status s = WriteServerFiles(paths, *server); !s.ok()) return s;
  return ReplaceFile(paths.ca_cert, *ca_pem, 0644);
}

absl::Status IssueDevClientCert(const std::string& dir, const std::string& common_name,
                                const std::string& out_prefix) {
  if (common_name.empty() || common_name.size() > 64) {
    return Error(ErrorCode::kInternal, "client common name must be 1..64 bytes");
  }
  for (unsigned char c : common_name) {
    if (c < 0x20 || c == 0x7f) {
      return Error(ErrorCode::kInternal, "client common name has control characters");
    }
  }
  if (out_prefix.empty()) return Error(ErrorCode::kInternal, "empty output prefix");
  const DevPkiPaths paths = DevPkiIn(dir);
  absl::StatusOr<X509Ptr> ca = LoadCert(paths.ca_cert);
  if (!ca.ok()) return ca.status();
  absl::StatusOr<PkeyPtr> ca_key = LoadKey(paths.ca_key);
  if (!ca_key.ok()) return ca_key.status();
  if (X509_check_private_key(ca->get(), ca_key->get()) != 1) {
    return SslError(paths.ca_key + " does not match " + paths.ca_cert);
  }
  absl::StatusOr<Leaf> leaf =
      IssueLeaf(ca->get(), ca_key->get(), common_name, "clientAuth", nullptr);
  if (!leaf.ok()) return leaf.status();
  absl::StatusOr<SecretBytes> key_pem = KeyPem(leaf->key.get());
  if (!key_pem.ok()) return key_pem.status();
  absl::StatusOr<std::string> cert_pem = CertPem(leaf->cert.get());
  if (!cert_pem.ok()) return cert_pem.status();
  const std::string key_path = out_prefix + ".key";
  const std::string cert_path = out_prefix + ".pem";
  if (Exists(cert_path)) return Error(ErrorCode::kInternal, cert_path + " already exists");
  if (absl::Status s = WriteNewFile(key_path, key_pem->UnsafeView(), 0600); !s.ok()) return s;
  if (absl::Status s = WriteNewFile(cert_path, *cert_pem, 0644); !s.ok()) {
    ::unlink(key_path.c_str());
    return s;
  }
  return absl::OkStatus();
}

}  // namespace fhirward::crypto
