#include "crypto/pkcs11.h"

#include <dlfcn.h>
#include <p11-kit/pkcs11.h>

#include <algorithm>
#include <atomic>
#include <cstdlib>
#include <cstring>
#include <mutex>
#include <vector>

#include "common/clock.h"
#include "common/error.h"
#include "crypto/aead.h"
#include "crypto/secure_file.h"

namespace fhirward::crypto {
namespace {

std::string RvName(CK_RV rv) {
  switch (rv) {
    case CKR_OK:
      return "CKR_OK";
    case CKR_GENERAL_ERROR:
      return "CKR_GENERAL_ERROR";
    case CKR_ARGUMENTS_BAD:
      return "CKR_ARGUMENTS_BAD";
    case CKR_MECHANISM_INVALID:
      return "CKR_MECHANISM_INVALID";
    case CKR_MECHANISM_PARAM_INVALID:
      return "CKR_MECHANISM_PARAM_INVALID";
    case CKR_PIN_INCORRECT:
      return "CKR_PIN_INCORRECT";
    case CKR_PIN_LOCKED:
      return "CKR_PIN_LOCKED";
    case CKR_TOKEN_NOT_PRESENT:
      return "CKR_TOKEN_NOT_PRESENT";
    case CKR_SLOT_ID_INVALID:
      return "CKR_SLOT_ID_INVALID";
    case CKR_ENCRYPTED_DATA_INVALID:
      return "CKR_ENCRYPTED_DATA_INVALID";
    case CKR_ENCRYPTED_DATA_LEN_RANGE:
      return "CKR_ENCRYPTED_DATA_LEN_RANGE";
    case CKR_WRAPPED_KEY_INVALID:
      return "CKR_WRAPPED_KEY_INVALID";
    case CKR_KEY_HANDLE_INVALID:
      return "CKR_KEY_HANDLE_INVALID";
    case CKR_OBJECT_HANDLE_INVALID:
      return "CKR_OBJECT_HANDLE_INVALID";
    case CKR_SESSION_HANDLE_INVALID:
      return "CKR_SESSION_HANDLE_INVALID";
    case CKR_USER_NOT_LOGGED_IN:
      return "CKR_USER_NOT_LOGGED_IN";
    case CKR_DEVICE_ERROR:
      return "CKR_DEVICE_ERROR";
    default: {
      char buf[32];
      std::snprintf(buf, sizeof buf, "CKR_0x%lx", static_cast<unsigned long>(rv));
      return buf;
    }
  }
}

bool DeviceTrouble(CK_RV rv);

absl::Status Failed(std::string_view what, CK_RV rv) {
  return Error(DeviceTrouble(rv) ? ErrorCode::kUnavailable : ErrorCode::kInternal,
               std::string(what) + " failed: " + RvName(rv));
}

// The HSM (or our session with it) is gone, as opposed to a blob that does
// not authenticate: callers see kUnavailable, never "failed to unwrap".
bool DeviceTrouble(CK_RV rv) {
  switch (rv) {
    case CKR_SESSION_HANDLE_INVALID:
    case CKR_SESSION_CLOSED:
    case CKR_USER_NOT_LOGGED_IN:
    case CKR_DEVICE_ERROR:
    case CKR_DEVICE_MEMORY:
    case CKR_DEVICE_REMOVED:
    case CKR_TOKEN_NOT_PRESENT:
    case CKR_CRYPTOKI_NOT_INITIALIZED:
    case CKR_KEY_HANDLE_INVALID:
      return true;
    default:
      return false;
  }
}

absl::Status UnwrapFailed(std::string_view what, CK_RV rv) {
  if (DeviceTrouble(rv)) {
    return Error(ErrorCode::kUnavailable,
                 std::string(what) + ": HSM unavailable (" + RvName(rv) + ")");
  }
  return Error(ErrorCode::kDecryptionFailed, "data key failed to unwrap");
}

// The largest secret wrapped (tenant keys are 32 bytes, TOTP seeds 20, sealed
// break-glass justifications up to a few hundred).
constexpr size_t kMaxSecret = 4096;

// CKM_AES_GCM parameters: 96-bit IV, 128-bit tag, `ad` as AAD (both must outlive the call).
CK_GCM_PARAMS GcmParams(std::string& iv, std::string_view ad) {
  CK_GCM_PARAMS p{};
  p.pIv = reinterpret_cast<unsigned char*>(iv.data());
  p.ulIvLen = iv.size();
  p.ulIvBits = iv.size() * 8;
  p.pAAD = reinterpret_cast<unsigned char*>(const_cast<char*>(ad.data()));
  p.ulAADLen = ad.size();
  p.ulTagBits = kGcmTagBytes * 8;
  return p;
}

std::string PaddedLabel(std::string_view label) {
  std::string out(label.substr(0, 32));
  out.resize(32, ' ');
  return out;
}

// The loaded module: one per process and module path, never unloaded (some
// modules do not survive dlclose after C_Finalize).
struct Module {
  void* handle = nullptr;
  CK_FUNCTION_LIST* fn = nullptr;
};

absl::StatusOr<Module> LoadModule(const std::string& path) {
  static std::mutex mu;
  static std::vector<std::pair<std::string, Module>> loaded;
  std::lock_guard lk(mu);
  for (const auto& [p, m] : loaded) {
    if (p == path) return m;
  }
  Module m;
  m.handle = ::dlopen(path.c_str(), RTLD_NOW | RTLD_LOCAL);
  if (m.handle == nullptr) {
    const char* why = ::dlerror();
    return Error(ErrorCode::kInternal,
                 "cannot load PKCS#11 module " + path + ": " + (why ? why : "unknown error"));
  }
  auto get =
      reinterpret_cast<CK_RV (*)(CK_FUNCTION_LIST**)>(::dlsym(m.handle, "C_GetFunctionList"));
  if (get == nullptr) {
    return Error(ErrorCode::kInternal, path + " is not a PKCS#11 module (no C_GetFunctionList)");
  }
  if (CK_RV rv = get(&m.fn); rv != CKR_OK) return Failed("C_GetFunctionList", rv);
  CK_C_INITIALIZE_ARGS args{};
  args.flags = CKF_OS_LOCKING_OK;
  CK_RV rv = m.fn->C_Initialize(&args);
  if (rv != CKR_OK && rv != CKR_CRYPTOKI_ALREADY_INITIALIZED) return Failed("C_Initialize", rv);
  loaded.emplace_back(path, m);
  return m;
}

class Pkcs11Kms;

class Pkcs11Key final : public KeyEncryptionService {
 public:
  Pkcs11Key(std::shared_ptr<Pkcs11Kms> kms, CK_OBJECT_HANDLE handle, std::string label)
      : kms_(std::move(kms)), handle_(handle), label_(label), id_("pkcs11:" + label) {}
  const std::string& key_id() const override { return id_; }
  absl::StatusOr<std::string> Wrap(const SecretBytes& dek,
                                   std::string_view associated_data) const override;
  absl::StatusOr<SecretBytes> Unwrap(std::string_view wrapped,
                                     std::string_view associated_data) const override;

 private:
  // Runs `op` with the key's handle; when the session with the HSM is gone
  // (restart, failover), opens a new one, finds the key again and retries once.
  template <typename Op>
  auto WithSession(Op op) const -> decltype(op(CK_OBJECT_HANDLE{}));

  std::shared_ptr<Pkcs11Kms> kms_;
  mutable std::atomic<CK_OBJECT_HANDLE> handle_;
  std::string label_;
  std::string id_;
};

class Pkcs11Kms final : public std::enable_shared_from_this<Pkcs11Kms> {
 public:
  Pkcs11Kms(Pkcs11Options o, Module m) : options_(std::move(o)), m_(m) {}
  ~Pkcs11Kms() {
    if (session_ != CK_INVALID_HANDLE) {
      m_.fn->C_Logout(session_);
      m_.fn->C_CloseSession(session_);
    }
  }

  uint64_t generation() const { return generation_.load(); }

  // A new session after the old one failed with `seen` = generation() taken
  // before the failing call; a no-op when another thread already reconnected.
  absl::StatusOr<CK_OBJECT_HANDLE> Reconnect(uint64_t seen, const std::string& label) {
    {
      std::lock_guard rl(reconnect_mu_);
      if (generation_.load() == seen) {
        {
          std::lock_guard lk(mu_);
          if (session_ != CK_INVALID_HANDLE) m_.fn->C_CloseSession(session_);
          session_ = CK_INVALID_HANDLE;
        }
        if (auto st = Connect(); !st.ok()) return st;
        ++generation_;
      }
    }
    return FindLabel(label);
  }

  absl::Status Connect() {
    if (options_.mechanism != "aes-gcm" && options_.mechanism != "aes-key-wrap-pad") {
      return Error(ErrorCode::kInternal,
                   "kms mechanism must be aes-gcm or aes-key-wrap-pad, not " + options_.mechanism);
    }
    CK_SLOT_ID slot = 0;
    if (options_.slot) {
      slot = *options_.slot;
    } else {
      if (options_.token_label.empty()) {
        return Error(ErrorCode::kInternal, "kms: set token_label or slot");
      }
      CK_ULONG n = 0;
      if (CK_RV rv = m_.fn->C_GetSlotList(CK_TRUE, nullptr, &n); rv != CKR_OK) {
        return Failed("C_GetSlotList", rv);
      }
      std::vector<CK_SLOT_ID> slots(n);
      if (CK_RV rv = m_.fn->C_GetSlotList(CK_TRUE, slots.data(), &n); rv != CKR_OK) {
        return Failed("C_GetSlotList", rv);
      }
      slots.resize(n);
      bool found = false;
      std::string want = PaddedLabel(options_.token_label);
      for (CK_SLOT_ID s : slots) {
        CK_TOKEN_INFO info{};
        if (m_.fn->C_GetTokenInfo(s, &info) != CKR_OK) continue;
        if (std::memcmp(info.label, want.data(), 32) == 0) {
          slot = s;
          found = true;
          break;
        }
      }
      if (!found) {
        return Error(ErrorCode::kInternal, "no PKCS#11 token labelled '" + options_.token_label +
                                               "' in " + options_.module);
      }
    }
    CK_SESSION_HANDLE opened = CK_INVALID_HANDLE;
    CK_RV rv =
        m_.fn->C_OpenSession(slot, CKF_SERIAL_SESSION | CKF_RW_SESSION, nullptr, nullptr, &opened);
    if (rv != CKR_OK) return Failed("C_OpenSession", rv);
    {
      std::lock_guard lk(mu_);
      session_ = opened;
    }
    auto pin = ReadSecretSource(options_.pin_source);
    if (!pin.ok()) return pin.status();
    rv = m_.fn->C_Login(session_, CKU_USER,
                        reinterpret_cast<unsigned char*>(pin->UnsafeMutableData()), pin->size());
    if (rv != CKR_OK && rv != CKR_USER_ALREADY_LOGGED_IN) return Failed("C_Login", rv);
    return absl::OkStatus();
  }

  std::string Label(uint32_t version) const {
    return options_.key_label + "-v" + std::to_string(version);
  }

  std::string Describe() const {
    return "pkcs11 token '" +
           (options_.slot ? "slot " + std::to_string(*options_.slot) : options_.token_label) +
           "' (" + options_.module + ", " + options_.mechanism + ")";
  }

  absl::StatusOr<std::vector<std::pair<CK_OBJECT_HANDLE, std::string>>> Keys() {
    std::lock_guard lk(mu_);
    CK_OBJECT_CLASS cls = CKO_SECRET_KEY;
    CK_ATTRIBUTE tmpl[] = {{CKA_CLASS, &cls, sizeof cls}};
    if (CK_RV rv = m_.fn->C_FindObjectsInit(session_, tmpl, 1); rv != CKR_OK) {
      return Failed("C_FindObjectsInit", rv);
    }
    std::vector<CK_OBJECT_HANDLE> handles;
    while (true) {
      CK_OBJECT_HANDLE h[64];
      CK_ULONG n = 0;
      if (CK_RV rv = m_.fn->C_FindObjects(session_, h, 64, &n); rv != CKR_OK) {
        m_.fn->C_FindObjectsFinal(session_);
        return Failed("C_FindObjects", rv);
      }
      if (n == 0) break;
      handles.insert(handles.end(), h, h + n);
    }
    m_.fn->C_FindObjectsFinal(session_);
    std::vector<std::pair<CK_OBJECT_HANDLE, std::string>> out;
    for (CK_OBJECT_HANDLE h : handles) {
      char label[256];
      CK_ATTRIBUTE a = {CKA_LABEL, label, sizeof label};
      if (m_.fn->C_GetAttributeValue(session_, h, &a, 1) != CKR_OK) continue;
      out.emplace_back(h, std::string(label, a.ulValueLen));
    }
    return out;
  }

  absl::StatusOr<std::vector<uint32_t>> Versions() {
    auto keys = Keys();
    if (!keys.ok()) return keys.status();
    std::vector<uint32_t> out;
    std::string prefix = options_.key_label + "-v";
    for (const auto& [h, label] : *keys) {
      if (label.size() <= prefix.size() || label.compare(0, prefix.size(), prefix) != 0) continue;
      std::string digits = label.substr(prefix.size());
      if (digits.empty() || digits.size() > 9 ||
          !std::all_of(digits.begin(), digits.end(),
                       [](char ch) { return ch >= '0' && ch <= '9'; })) {
        continue;
      }
      uint32_t v = static_cast<uint32_t>(std::stoul(digits));
      if (v > 0) out.push_back(v);
    }
    std::sort(out.begin(), out.end());
    out.erase(std::unique(out.begin(), out.end()), out.end());
    return out;
  }

  absl::StatusOr<CK_OBJECT_HANDLE> Find(uint32_t version) { return FindLabel(Label(version)); }

  absl::StatusOr<CK_OBJECT_HANDLE> FindLabel(const std::string& label) {
    auto keys = Keys();
    if (!keys.ok()) return keys.status();
    std::vector<CK_OBJECT_HANDLE> found;
    for (const auto& [h, l] : *keys) {
      if (l == label) found.push_back(h);
    }
    if (found.empty()) return Error(ErrorCode::kNotFound, "no key labelled " + label);
    if (found.size() > 1) {
      return Error(ErrorCode::kInternal, "several keys labelled " + label + " on the token");
    }
    return found[0];
  }

  absl::Status Create(uint32_t version) {
    if (Find(version).ok()) {
      return Error(ErrorCode::kInternal, "a key labelled " + Label(version) + " exists");
    }
    std::lock_guard lk(mu_);
    std::string label = Label(version);
    CK_OBJECT_CLASS cls = CKO_SECRET_KEY;
    CK_KEY_TYPE kt = CKK_AES;
    CK_ULONG len = 32;
    CK_BBOOL t = CK_TRUE, f = CK_FALSE;
    CK_ATTRIBUTE tmpl[] = {
        {CKA_CLASS, &cls, sizeof cls},     {CKA_KEY_TYPE, &kt, sizeof kt},
        {CKA_VALUE_LEN, &len, sizeof len}, {CKA_TOKEN, &t, sizeof t},
        {CKA_PRIVATE, &t, sizeof t},       {CKA_SENSITIVE, &t, sizeof t},
        {CKA_EXTRACTABLE, &f, sizeof f},   {CKA_ENCRYPT, &t, sizeof t},
        {CKA_DECRYPT, &t, sizeof t},       {CKA_WRAP, &t, sizeof t},
        {CKA_UNWRAP, &t, sizeof t},        {CKA_LABEL, label.data(), label.size()},
    };
    CK_MECHANISM mech = {CKM_AES_KEY_GEN, nullptr, 0};
    CK_OBJECT_HANDLE h = CK_INVALID_HANDLE;
    CK_RV rv = m_.fn->C_GenerateKey(session_, &mech, tmpl, sizeof tmpl / sizeof tmpl[0], &h);
    if (rv != CKR_OK) return Failed("C_GenerateKey", rv);
    return absl::OkStatus();
  }

  absl::Status Destroy(uint32_t version) {
    auto h = Find(version);
    if (!h.ok()) return h.status();
    std::lock_guard lk(mu_);
    if (CK_RV rv = m_.fn->C_DestroyObject(session_, *h); rv != CKR_OK) {
      return Failed("C_DestroyObject", rv);
    }
    return absl::OkStatus();
  }

  absl::StatusOr<std::string> WrapGcm(CK_OBJECT_HANDLE key, const SecretBytes& dek,
                                      std::string_view ad) {
    std::string iv = RandomBytes(kGcmNonceBytes);
    CK_GCM_PARAMS params = GcmParams(iv, ad);
    CK_MECHANISM mech = {CKM_AES_GCM, &params, sizeof params};
    std::string out(dek.size() + kGcmTagBytes, '\0');
    CK_ULONG out_len = out.size();
    std::lock_guard lk(mu_);
    if (CK_RV rv = m_.fn->C_EncryptInit(session_, &mech, key); rv != CKR_OK) {
      return Failed("C_EncryptInit(CKM_AES_GCM)", rv);
    }
    CK_RV rv = m_.fn->C_Encrypt(
        session_, reinterpret_cast<unsigned char*>(const_cast<char*>(dek.UnsafeView().data())),
        dek.size(), reinterpret_cast<unsigned char*>(out.data()), &out_len);
    if (rv != CKR_OK) return Failed("C_Encrypt(CKM_AES_GCM)", rv);
    out.resize(out_len);
    return iv + out;
  }

  absl::StatusOr<SecretBytes> UnwrapGcm(CK_OBJECT_HANDLE key, std::string_view wrapped,
                                        std::string_view ad) {
    if (wrapped.size() < kGcmNonceBytes + kGcmTagBytes) {
      return Error(ErrorCode::kDecryptionFailed, "wrapped key too short");
    }
    std::string iv(wrapped.substr(0, kGcmNonceBytes));
    std::string body(wrapped.substr(kGcmNonceBytes));
    CK_GCM_PARAMS params = GcmParams(iv, ad);
    CK_MECHANISM mech = {CKM_AES_GCM, &params, sizeof params};
    SecretBytes out(body.size());
    CK_ULONG out_len = out.size();
    std::lock_guard lk(mu_);
    if (CK_RV rv = m_.fn->C_DecryptInit(session_, &mech, key); rv != CKR_OK) {
      return Failed("C_DecryptInit(CKM_AES_GCM)", rv);
    }
    CK_RV rv =
        m_.fn->C_Decrypt(session_, reinterpret_cast<unsigned char*>(body.data()), body.size(),
                         reinterpret_cast<unsigned char*>(out.UnsafeMutableData()), &out_len);
    // SoftHSM2 answers a failed tag check with CKR_GENERAL_ERROR: anything but
    // a device or session problem is a refusal to unwrap.
    if (rv != CKR_OK) return UnwrapFailed("C_Decrypt", rv);
    // Any secret up to kMaxSecret (tenant keys, TOTP seeds, sealed texts); the
    // caller checks the size it expects.
    if (out_len == 0 || out_len > body.size()) {
      return Error(ErrorCode::kDecryptionFailed, "unwrapped secret has the wrong size");
    }
    return SecretBytes(out.UnsafeView().substr(0, out_len));
  }

  // RFC 5649 key wrap of dek | SHA-256(ad), through a session object.
  absl::StatusOr<std::string> WrapKwp(CK_OBJECT_HANDLE key, const SecretBytes& dek,
                                      std::string_view ad) {
    // u16 length | secret | SHA-256(ad) | zeros to a multiple of 8: SoftHSM2
    // 2.6.1 hands back RFC 5649 padding on unwrap, so the length travels inside.
    size_t n = 2 + dek.size() + 32;
    SecretBytes joined((n + 7) / 8 * 8);
    char* p = joined.UnsafeMutableData();
    p[0] = static_cast<char>(dek.size() >> 8);
    p[1] = static_cast<char>(dek.size() & 0xff);
    std::memcpy(p + 2, dek.UnsafeView().data(), dek.size());
    const std::string digest = Sha256(ad);
    std::memcpy(p + 2 + dek.size(), digest.data(), digest.size());
    CK_OBJECT_CLASS cls = CKO_SECRET_KEY;
    CK_KEY_TYPE kt = CKK_GENERIC_SECRET;
    CK_BBOOL t = CK_TRUE, f = CK_FALSE;
    CK_ATTRIBUTE tmpl[] = {
        {CKA_CLASS, &cls, sizeof cls},   {CKA_KEY_TYPE, &kt, sizeof kt},
        {CKA_TOKEN, &f, sizeof f},       {CKA_SENSITIVE, &f, sizeof f},
        {CKA_EXTRACTABLE, &t, sizeof t}, {CKA_VALUE, joined.UnsafeMutableData(), joined.size()},
    };
    std::lock_guard lk(mu_);
    CK_OBJECT_HANDLE obj = CK_INVALID_HANDLE;
    CK_RV rv = m_.fn->C_CreateObject(session_, tmpl, sizeof tmpl / sizeof tmpl[0], &obj);
    if (rv != CKR_OK) return Failed("C_CreateObject", rv);
    CK_MECHANISM mech = {CKM_AES_KEY_WRAP_PAD, nullptr, 0};
    std::string out(joined.size() + 16, '\0');
    CK_ULONG out_len = out.size();
    rv = m_.fn->C_WrapKey(session_, &mech, key, obj, reinterpret_cast<unsigned char*>(out.data()),
                          &out_len);
    m_.fn->C_DestroyObject(session_, obj);
    if (rv != CKR_OK) return Failed("C_WrapKey(CKM_AES_KEY_WRAP_PAD)", rv);
    out.resize(out_len);
    return out;
  }

  absl::StatusOr<SecretBytes> UnwrapKwp(CK_OBJECT_HANDLE key, std::string_view wrapped,
                                        std::string_view ad) {
    CK_OBJECT_CLASS cls = CKO_SECRET_KEY;
    CK_KEY_TYPE kt = CKK_GENERIC_SECRET;
    CK_BBOOL t = CK_TRUE, f = CK_FALSE;
    CK_ATTRIBUTE tmpl[] = {
        {CKA_CLASS, &cls, sizeof cls}, {CKA_KEY_TYPE, &kt, sizeof kt},  {CKA_TOKEN, &f, sizeof f},
        {CKA_SENSITIVE, &f, sizeof f}, {CKA_EXTRACTABLE, &t, sizeof t},
    };
    std::string in(wrapped);
    CK_MECHANISM mech = {CKM_AES_KEY_WRAP_PAD, nullptr, 0};
    std::lock_guard lk(mu_);
    CK_OBJECT_HANDLE obj = CK_INVALID_HANDLE;
    CK_RV rv = m_.fn->C_UnwrapKey(session_, &mech, key, reinterpret_cast<unsigned char*>(in.data()),
                                  in.size(), tmpl, sizeof tmpl / sizeof tmpl[0], &obj);
    if (rv != CKR_OK) return UnwrapFailed("C_UnwrapKey", rv);
    SecretBytes value(kMaxSecret + 32 + 16);
    CK_ATTRIBUTE a = {CKA_VALUE, value.UnsafeMutableData(), value.size()};
    rv = m_.fn->C_GetAttributeValue(session_, obj, &a, 1);
    m_.fn->C_DestroyObject(session_, obj);
    if (rv != CKR_OK || a.ulValueLen < 2 + 32 || a.ulValueLen > value.size()) {
      return Error(ErrorCode::kDecryptionFailed, "data key failed to unwrap");
    }
    std::string_view v = value.UnsafeView().substr(0, a.ulValueLen);
    size_t len =
        (static_cast<size_t>(static_cast<uint8_t>(v[0])) << 8) | static_cast<uint8_t>(v[1]);
    if (len == 0 || 2 + len + 32 > v.size() ||
        !ConstantTimeEquals(v.substr(2 + len, 32), Sha256(ad)) ||
        v.substr(2 + len + 32).find_first_not_of('\0') != std::string_view::npos) {
      return Error(ErrorCode::kDecryptionFailed, "data key failed to unwrap");
    }
    return SecretBytes(v.substr(2, len));
  }

  const Pkcs11Options& options() const { return options_; }

 private:
  Pkcs11Options options_;
  Module m_;
  std::mutex mu_;
  std::mutex reconnect_mu_;
  std::atomic<uint64_t> generation_{0};
  CK_SESSION_HANDLE session_ = CK_INVALID_HANDLE;
};

template <typename Op>
auto Pkcs11Key::WithSession(Op op) const -> decltype(op(CK_OBJECT_HANDLE{})) {
  const uint64_t seen = kms_->generation();
  auto r = op(handle_.load());
  if (r.ok() || CodeOf(r.status()) != ErrorCode::kUnavailable) return r;
  auto h = kms_->Reconnect(seen, label_);
  if (!h.ok()) return r;  // the first error says what went wrong
  handle_.store(*h);
  return op(*h);
}

absl::StatusOr<std::string> Pkcs11Key::Wrap(const SecretBytes& dek,
                                            std::string_view associated_data) const {
  if (dek.empty() || dek.size() > kMaxSecret) {
    return Error(ErrorCode::kInternal,
                 "a wrapped secret is 1.." + std::to_string(kMaxSecret) + " bytes");
  }
  return WithSession([&](CK_OBJECT_HANDLE h) {
    return kms_->options().mechanism == "aes-gcm" ? kms_->WrapGcm(h, dek, associated_data)
                                                  : kms_->WrapKwp(h, dek, associated_data);
  });
}

absl::StatusOr<SecretBytes> Pkcs11Key::Unwrap(std::string_view wrapped,
                                              std::string_view associated_data) const {
  return WithSession([&](CK_OBJECT_HANDLE h) {
    return kms_->options().mechanism == "aes-gcm" ? kms_->UnwrapGcm(h, wrapped, associated_data)
                                                  : kms_->UnwrapKwp(h, wrapped, associated_data);
  });
}

class Pkcs11Service final : public KeyManagementService {
 public:
  explicit Pkcs11Service(std::shared_ptr<Pkcs11Kms> kms) : kms_(std::move(kms)) {}
  std::string Describe() const override { return kms_->Describe(); }
  absl::StatusOr<std::vector<uint32_t>> Versions() const override { return kms_->Versions(); }
  absl::StatusOr<std::unique_ptr<KeyEncryptionService>> OpenVersion(
      uint32_t version) const override {
    auto h = kms_->Find(version);
    if (!h.ok()) return h.status();
    return std::unique_ptr<KeyEncryptionService>(new Pkcs11Key(kms_, *h, kms_->Label(version)));
  }
  absl::Status CreateVersion(uint32_t version) override { return kms_->Create(version); }
  absl::Status DestroyVersion(uint32_t version) override { return kms_->Destroy(version); }

 private:
  std::shared_ptr<Pkcs11Kms> kms_;
};

}  // namespace

absl::StatusOr<SecretBytes> ReadSecretSource(const std::string& source) {
  if (source.rfind("env:", 0) == 0) {
    const char* v = std::getenv(source.c_str() + 4);
    if (v == nullptr || *v == '\0') {
      return Error(ErrorCode::kInternal,
                   "environment variable " + source.substr(4) + " is not set");
    }
    return SecretBytes(std::string_view(v));
  }
  if (source.rfind("file:", 0) == 0) {
    auto data = ReadPrivateFile(source.substr(5), 4096);
    if (!data.ok()) return data.status();
    std::string_view v = data->UnsafeView();
    while (!v.empty() && (v.back() == '\n' || v.back() == '\r')) v.remove_suffix(1);
    return SecretBytes(v);
  }
  return Error(ErrorCode::kInternal, "a secret source is env:NAME or file:PATH");
}

absl::StatusOr<std::unique_ptr<KeyManagementService>> OpenPkcs11Kms(const Pkcs11Options& options) {
  if (options.module.empty()) return Error(ErrorCode::kInternal, "kms: module is required");
  auto m = LoadModule(options.module);
  if (!m.ok()) return m.status();
  auto kms = std::make_shared<Pkcs11Kms>(options, *m);
  if (auto s = kms->Connect(); !s.ok()) return s;
  return std::unique_ptr<KeyManagementService>(new Pkcs11Service(std::move(kms)));
}

}  // namespace fhirward::crypto
