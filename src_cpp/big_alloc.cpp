#include "big_alloc.h"

#include <sys/mman.h>

#include <new>

namespace hashlab {

void* big_alloc(size_t bytes, bool huge) {
  if (bytes == 0) return nullptr;
  void* p = nullptr;
  if (bytes >= HUGE_PAGE) {
    if (posix_memalign(&p, HUGE_PAGE, bytes) != 0) throw std::bad_alloc();
#ifdef MADV_HUGEPAGE
    if (huge) madvise(p, bytes / HUGE_PAGE * HUGE_PAGE, MADV_HUGEPAGE);
#endif
  } else {
    p = std::malloc(bytes);
    if (!p) throw std::bad_alloc();
  }
  return p;
}

}  // namespace hashlab
