// SecretBytes: key material and other secrets.
//
// Move-only; wiped (OPENSSL_cleanse) on destruction; prints as "<redacted>".
// The bytes are reachable only through the explicit, searchable accessor
// `UnsafeView()`: grep for it to find every place a secret is used.
#ifndef FHIRWARD_COMMON_SECRET_BYTES_H_
#define FHIRWARD_COMMON_SECRET_BYTES_H_

#include <cstddef>
#include <ostream>
#include <string>
#include <string_view>

namespace fhirward {

class SecretBytes {
 public:
  SecretBytes() = default;
  explicit SecretBytes(std::string_view bytes) : data_(bytes) {}
  explicit SecretBytes(size_t n) : data_(n, '\0') {}
  ~SecretBytes() { Wipe(); }
  SecretBytes(SecretBytes&& o) noexcept : data_(std::move(o.data_)) { o.Wipe(); }
  SecretBytes& operator=(SecretBytes&& o) noexcept {
    if (this != &o) {
      Wipe();
      data_ = std::move(o.data_);
      o.Wipe();
    }
    return *this;
  }
  SecretBytes(const SecretBytes&) = delete;
  SecretBytes& operator=(const SecretBytes&) = delete;

  // A deliberate copy; named so that it shows up in review.
  SecretBytes Clone() const { return SecretBytes(std::string_view(data_)); }

  size_t size() const { return data_.size(); }
  bool empty() const { return data_.empty(); }
  std::string_view UnsafeView() const { return data_; }
  char* UnsafeMutableData() { return data_.data(); }

 private:
  void Wipe();
  std::string data_;
};

// `n` fresh random bytes from the CSPRNG, generated in place (never in an
// unwiped temporary): use for keys.
SecretBytes RandomSecret(size_t n);

inline std::ostream& operator<<(std::ostream& os, const SecretBytes&) { return os << "<redacted>"; }

}  // namespace fhirward

#endif  // FHIRWARD_COMMON_SECRET_BYTES_H_
