// id -> row map of the LSH tables, so that remove() needs only ids. Header-only: insert
// and remove call it per id.
#pragma once
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <new>

#include "hashlab/common.h"

namespace hashlab {
namespace tbl {

// Open-addressing map from id (>= 0) to a row index; linear probing with
// backward-shift deletion, load factor <= 1/2.
class IdMap {
 public:
  IdMap() = default;
  IdMap(const IdMap&) = delete;
  IdMap& operator=(const IdMap&) = delete;
  ~IdMap() { std::free(slots_); }
  int64_t size() const { return count_; }
  int64_t nbytes() const { return slots_ ? (int64_t)(mask_ + 1) * (int64_t)sizeof(Slot) : 0; }

  int32_t find(int32_t id) const {
    if (!slots_) return -1;
    for (uint64_t i = fmix32((uint32_t)id) & mask_;; i = (i + 1) & mask_) {
      if (slots_[i].id == id) return slots_[i].row;
      if (slots_[i].id < 0) return -1;
    }
  }
  void reserve(int64_t n) {
    uint64_t want = 16;
    while ((int64_t)want < 2 * n) want <<= 1;
    if (!slots_ || want > mask_ + 1) rehash(want);
  }
  // id must be absent and reserve(size() + 1) done.
  void put(int32_t id, int32_t row) {
    uint64_t i = fmix32((uint32_t)id) & mask_;
    while (slots_[i].id >= 0) i = (i + 1) & mask_;
    slots_[i] = {id, row};
    ++count_;
  }
  // Removes id; returns its row or -1 when absent.
  int32_t erase(int32_t id) {
    if (!slots_) return -1;
    uint64_t i = fmix32((uint32_t)id) & mask_;
    while (slots_[i].id != id) {
      if (slots_[i].id < 0) return -1;
      i = (i + 1) & mask_;
    }
    int32_t row = slots_[i].row;
    // backward shift: move later members of the probe run into the hole
    uint64_t hole = i;
    for (uint64_t j = (i + 1) & mask_; slots_[j].id >= 0; j = (j + 1) & mask_) {
      uint64_t home = fmix32((uint32_t)slots_[j].id) & mask_;
      // j can fill the hole unless its home lies cyclically in (hole, j]
      bool stays = hole <= j ? (home > hole && home <= j) : (home > hole || home <= j);
      if (!stays) {
        slots_[hole] = slots_[j];
        hole = j;
      }
    }
    slots_[hole] = {-1, -1};
    --count_;
    return row;
  }
  void clear() {
    std::free(slots_);
    slots_ = nullptr;
    mask_ = 0;
    count_ = 0;
  }

 private:
  struct Slot {
    int32_t id;
    int32_t row;
  };
  void rehash(uint64_t cap) {
    Slot* fresh = static_cast<Slot*>(std::malloc(cap * sizeof(Slot)));
    if (!fresh) throw std::bad_alloc();
    std::memset(fresh, 0xFF, cap * sizeof(Slot));  // id = row = -1
    Slot* old = slots_;
    uint64_t old_cap = old ? mask_ + 1 : 0;
    slots_ = fresh;
    mask_ = cap - 1;
    count_ = 0;
    for (uint64_t i = 0; i < old_cap; ++i)
      if (old[i].id >= 0) put(old[i].id, old[i].row);
    std::free(old);
  }
  Slot* slots_ = nullptr;
  uint64_t mask_ = 0;
  int64_t count_ = 0;
};

}  // namespace tbl
}  // namespace hashlab
