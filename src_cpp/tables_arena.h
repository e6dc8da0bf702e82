// The dynamic layout's bucket header and per-table block allocator (layout: tables_impl.h).
// Header-only: insert and query call these per id.
#pragma once
#include <algorithm>
#include <cstdint>
#include <cstdlib>
#include <new>
#include <stdexcept>
#include <utility>
#include <vector>

namespace hashlab {
namespace tbl {

struct Bucket {
  uint32_t off;   // arena offset of the block (valid when cls > 0)
  uint16_t size;  // ids stored
  uint16_t cls;   // size class of the block, 0 = none
};
static_assert(sizeof(Bucket) == 8, "bucket header must stay 8 bytes");

// Per-table block allocator. An offset is page << 22 | word index in the page.
class Arena {
 public:
  static constexpr int kPageShift = 18;  // at most 256K words (1 MiB) per page
  static constexpr uint32_t kMaxPages = 1u << (32 - kPageShift);  // 16 GiB per table

  Arena() = default;
  Arena(const Arena&) = delete;
  Arena& operator=(const Arena&) = delete;
  Arena(Arena&& o) noexcept { *this = std::move(o); }
  Arena& operator=(Arena&& o) noexcept {
    std::swap(pages_, o.pages_);
    std::swap(page_words_, o.page_words_);
    std::swap(used_, o.used_);
    std::swap(free_, o.free_);
    std::swap(bytes_, o.bytes_);
    return *this;
  }
  ~Arena() { release(); }

  int32_t* ptr(uint32_t off) const { return pages_[off >> kPageShift] + (off & ((1u << kPageShift) - 1)); }

  // A block of `words` words (<= 2^kPageShift) for class cls.
  uint32_t alloc(int cls, uint32_t words) {
    if ((int)free_.size() > cls && !free_[cls].empty()) {
      uint32_t off = free_[cls].back();
      free_[cls].pop_back();
      return off;
    }
    if (pages_.empty() || used_ + words > page_words_.back()) new_page(words);
    uint32_t off = ((uint32_t)(pages_.size() - 1) << kPageShift) | used_;
    used_ += words;
    return off;
  }
  void free(int cls, uint32_t off) {
    if ((int)free_.size() <= cls) free_.resize(cls + 1);
    free_[cls].push_back(off);
  }
  void release() {
    for (int32_t* p : pages_) std::free(p);
    pages_.clear();
    page_words_.clear();
    std::vector<std::vector<uint32_t>>().swap(free_);
    used_ = 0;
    bytes_ = 0;
  }
  int64_t nbytes() const {
    int64_t b = bytes_ + (int64_t)(pages_.capacity() * sizeof(int32_t*) + page_words_.capacity() * 4);
    for (const auto& f : free_) b += (int64_t)(f.capacity() * 4);
    return b;
  }

 private:
  void new_page(uint32_t words) {
    if (pages_.size() >= kMaxPages) throw std::length_error("LSH table arena: more than 16 GiB in one table");
    // pages double from 4K words (16 KiB) to 2^kPageShift words; always room for the block
    uint32_t size = pages_.empty() ? (1u << 12) : std::min(page_words_.back() * 2, 1u << kPageShift);
    size = std::max(size, words);
    int32_t* p = static_cast<int32_t*>(std::malloc((size_t)size * sizeof(int32_t)));
    if (!p) throw std::bad_alloc();
    pages_.push_back(p);
    page_words_.push_back(size);
    used_ = 0;
    bytes_ += (int64_t)size * 4;
  }
  std::vector<int32_t*> pages_;
  std::vector<uint32_t> page_words_;
  uint32_t used_ = 0;  // words used in the last page
  std::vector<std::vector<uint32_t>> free_;
  int64_t bytes_ = 0;
};

}  // namespace tbl
}  // namespace hashlab
