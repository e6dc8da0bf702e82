// Large uninitialised arrays, 2 MB aligned and optionally backed by transparent huge
// pages: the attention index reads its KV pages at random, a row at a time, and a huge
// page spares a TLB miss per row.
#pragma once
#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <memory>

namespace hashlab {

constexpr size_t HUGE_PAGE = size_t(2) << 20;

struct FreeDeleter {
  void operator()(void* p) const { std::free(p); }
};

// huge: ask for huge pages (only for memory that will be filled: a huge page is
// committed, and zeroed, as a whole on first touch). Only the whole 2 MB pages of the
// array are advised, so that the tail costs no more than its 4 KB pages. Free with
// std::free (FreeDeleter).
void* big_alloc(size_t bytes, bool huge = true);

// Uninitialised array (the builders zero what they use, in the thread that uses it).
template <typename T>
struct Buf {
  std::unique_ptr<T, FreeDeleter> p;
  int64_t n = 0, allocated = 0;
  void alloc(int64_t count, bool huge = true) {
    const size_t bytes = sizeof(T) * (size_t)count;
    p.reset(static_cast<T*>(big_alloc(bytes, huge)));
    n = count;
    allocated = (int64_t)((bytes + 4095) / 4096 * 4096);
  }
  T* data() { return p.get(); }
  const T* data() const { return p.get(); }
  int64_t bytes() const { return allocated; }  // in whole 4 KB pages
};

}  // namespace hashlab
