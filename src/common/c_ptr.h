// unique_ptr for objects of C libraries (OpenSSL, ...) freed by a function:
//   using X509Ptr = CPtr<X509, X509_free>;
#ifndef FHIRWARD_COMMON_C_PTR_H_
#define FHIRWARD_COMMON_C_PTR_H_

#include <memory>

namespace fhirward {

template <typename T, void (*Free)(T*)>
struct CFree {
  void operator()(T* p) const { Free(p); }
};

template <typename T, void (*Free)(T*)>
using CPtr = std::unique_ptr<T, CFree<T, Free>>;

}  // namespace fhirward

#endif  // FHIRWARD_COMMON_C_PTR_H_
