#include "oauth/key_ring.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cstdio>
#include <fstream>
#include <sstream>

#include "common/clock.h"
#include "common/encoding.h"
#include "common/error.h"
#include "json/value.h"

namespace fhirward::oauth {
namespace {

constexpr const char* kManifest = "/signing.json";

bool Exists(const std::string& path) {
  struct stat st;
  return stat(path.c_str(), &st) == 0;
}

// What identifies one version of the manifest: it is replaced by rename, so
// the inode changes with every write even when two writes fall into the same
// (coarse) timestamp tick.
std::string FileVersion(const std::string& path) {
  struct stat st;
  if (stat(path.c_str(), &st) != 0) return {};
  return std::to_string(st.st_ino) + ":" + std::to_string(st.st_size) + ":" +
         std::to_string(st.st_mtim.tv_sec) + "." + std::to_string(st.st_mtim.tv_nsec) + ":" +
         std::to_string(st.st_ctim.tv_sec) + "." + std::to_string(st.st_ctim.tv_nsec);
}

std::string FileName(jose::Algorithm alg, const std::string& kid) {
  std::string name(jose::AlgorithmName(alg));
  for (char& c : name) c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
  return "signing-" + name + "-" + kid + ".pem";
}

absl::StatusOr<std::vector<KeyInfo>> ReadManifest(const std::string& dir) {
  std::ifstream in(dir + kManifest, std::ios::binary);
  if (!in) return Error(ErrorCode::kInternal, "cannot read " + dir + kManifest);
  std::stringstream ss;
  ss << in.rdbuf();
  auto doc = json::Parse(ss.str());
  const json::Value* keys = doc.ok() ? doc->Find("keys") : nullptr;
  if (!keys || !keys->is_array()) {
    return Error(ErrorCode::kInternal, dir + kManifest + " is not a key manifest");
  }
  std::vector<KeyInfo> out;
  for (const json::Value& k : keys->items()) {
    KeyInfo info;
    auto kid = k.GetString("kid");
    auto alg = k.GetString("alg");
    auto file = k.GetString("file");
    const json::Value* act = k.Find("activate_at");
    const json::Value* ret = k.Find("retire_at");
    if (!kid || !alg || !file || !act || !act->as_int64() || !ret || !ret->as_int64() ||
        !jose::AlgorithmFromName(*alg) || file->find('/') != std::string_view::npos) {
      return Error(ErrorCode::kInternal, dir + kManifest + ": malformed key entry");
    }
    info.kid = std::string(*kid);
    info.alg = *jose::AlgorithmFromName(*alg);
    info.file = std::string(*file);
    info.activate_at = *act->as_int64();
    info.retire_at = *ret->as_int64();
    out.push_back(std::move(info));
  }
  return out;
}

absl::Status WriteManifest(const std::string& dir, const std::vector<KeyInfo>& keys) {
  json::Value arr = json::Value::MakeArray();
  for (const KeyInfo& k : keys) {
    json::Value o = json::Value::MakeObject();
    o.Set("kid", json::Value::String(k.kid));
    o.Set("alg", json::Value::String(std::string(jose::AlgorithmName(k.alg))));
    o.Set("file", json::Value::String(k.file));
    o.Set("activate_at", json::Value::Int(k.activate_at));
    o.Set("retire_at", json::Value::Int(k.retire_at));
    arr.Push(std::move(o));
  }
  json::Value doc = json::Value::MakeObject();
  doc.Set("keys", std::move(arr));
  std::string text = json::Write(doc, {.pretty = true}) + "\n";
  std::string tmp = dir + kManifest + ".tmp." + HexEncode(RandomBytes(4));
  int fd = open(tmp.c_str(), O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0600);
  if (fd < 0) return Error(ErrorCode::kInternal, "cannot create " + tmp);
  bool ok = write(fd, text.data(), text.size()) == static_cast<ssize_t>(text.size());
  ok = ok && fsync(fd) == 0;
  close(fd);
  if (!ok || rename(tmp.c_str(), (dir + kManifest).c_str()) != 0) {
    unlink(tmp.c_str());
    return Error(ErrorCode::kInternal, "cannot write " + dir + kManifest);
  }
  return absl::OkStatus();
}

absl::StatusOr<KeyInfo> NewKey(const std::string& dir, jose::Algorithm alg, int64_t activate_at) {
  KeyInfo info;
  info.kid = HexEncode(RandomBytes(8));
  info.alg = alg;
  info.file = FileName(alg, info.kid);
  info.activate_at = activate_at;
  auto key = jose::SigningKey::Generate(alg, info.kid);
  if (!key.ok()) return key.status();
  if (auto s = key->SavePem(dir + "/" + info.file); !s.ok()) return s;
  return info;
}

}  // namespace

absl::StatusOr<std::unique_ptr<SigningKeyRing>> SigningKeyRing::Open(const std::string& keys_dir,
                                                                     const std::string& legacy_kid,
                                                                     int64_t now) {
  if (!Exists(keys_dir + kManifest)) {
    std::vector<KeyInfo> keys;
    if (Exists(keys_dir + "/signing-es256.pem")) {
      keys.push_back({legacy_kid, jose::Algorithm::kES256, "signing-es256.pem", 0, 0});
    } else {
      auto es = NewKey(keys_dir, jose::Algorithm::kES256, 0);
      if (!es.ok()) return es.status();
      keys.push_back(*es);
    }
    if (auto s = WriteManifest(keys_dir, keys); !s.ok()) return s;
  }
  auto manifest = ReadManifest(keys_dir);
  if (!manifest.ok()) return manifest.status();
  bool has_rsa = false;
  for (const KeyInfo& k : *manifest) has_rsa = has_rsa || k.alg == jose::Algorithm::kRS256;
  if (!has_rsa) {
    auto rs = NewKey(keys_dir, jose::Algorithm::kRS256, 0);
    if (!rs.ok()) return rs.status();
    manifest->push_back(*rs);
    if (auto s = WriteManifest(keys_dir, *manifest); !s.ok()) return s;
  }
  std::unique_ptr<SigningKeyRing> ring(new SigningKeyRing(keys_dir));
  if (auto s = ring->Load(); !s.ok()) return s;
  return ring;
}

absl::Status SigningKeyRing::Load() {
  std::string version = FileVersion(dir_ + kManifest);
  auto manifest = ReadManifest(dir_);
  if (!manifest.ok()) return manifest.status();
  std::vector<Entry> entries;
  for (const KeyInfo& k : *manifest) {
    auto key = jose::SigningKey::LoadPem(dir_ + "/" + k.file, k.alg, k.kid);
    if (!key.ok()) return key.status();
    entries.push_back({k, std::make_shared<const jose::SigningKey>(std::move(*key))});
  }
  std::lock_guard<std::mutex> lock(mu_);
  entries_ = std::move(entries);
  version_ = std::move(version);
  return absl::OkStatus();
}

absl::StatusOr<bool> SigningKeyRing::ReloadIfChanged(int64_t now) {
  std::string version = FileVersion(dir_ + kManifest);
  {
    std::lock_guard<std::mutex> lock(mu_);
    if (version == version_) return false;
  }
  if (auto s = Load(); !s.ok()) return s;
  return true;
}

absl::StatusOr<KeyInfo> SigningKeyRing::Rotate(const std::string& keys_dir, jose::Algorithm alg,
                                               int64_t now, int64_t activate_in, int64_t overlap) {
  auto manifest = ReadManifest(keys_dir);
  if (!manifest.ok()) return manifest.status();
  auto fresh = NewKey(keys_dir, alg, now + std::max<int64_t>(0, activate_in));
  if (!fresh.ok()) return fresh.status();
  std::vector<KeyInfo> kept;
  for (KeyInfo k : *manifest) {
    if (k.retire_at != 0 && k.retire_at <= now) {
      unlink((keys_dir + "/" + k.file).c_str());  // its last token has expired
      continue;
    }
    if (k.alg == alg && k.retire_at == 0) k.retire_at = fresh->activate_at + overlap;
    kept.push_back(std::move(k));
  }
  kept.push_back(*fresh);
  if (auto s = WriteManifest(keys_dir, kept); !s.ok()) return s;
  return *fresh;
}

std::shared_ptr<const jose::SigningKey> SigningKeyRing::Active(jose::Algorithm alg,
                                                               int64_t now) const {
  std::lock_guard<std::mutex> lock(mu_);
  const Entry* best = nullptr;
  for (const Entry& e : entries_) {
    if (e.info.alg != alg || e.info.activate_at > now) continue;
    if (e.info.retire_at != 0 && e.info.retire_at <= now) continue;
    if (!best || e.info.activate_at >= best->info.activate_at) best = &e;
  }
  return best ? best->key : nullptr;
}

jose::KeySet SigningKeyRing::Published(int64_t now) const {
  std::lock_guard<std::mutex> lock(mu_);
  jose::KeySet set;
  for (const Entry& e : entries_) {
    if (e.info.retire_at != 0 && e.info.retire_at <= now) continue;
    set.Add(e.key->public_key());
  }
  return set;
}

std::vector<KeyInfo> SigningKeyRing::Keys() const {
  std::lock_guard<std::mutex> lock(mu_);
  std::vector<KeyInfo> out;
  for (const Entry& e : entries_) out.push_back(e.info);
  return out;
}

}  // namespace fhirward::oauth
