// lwIP's memory, counted and bounded (see stack_memory.hpp).
#include "stack/stack_memory.hpp"

#include <malloc.h>

#include <algorithm>
#include <cstdlib>

#include "lwip/opt.h"

namespace stack {

namespace {
constexpr size_t kPressedQueue = 64 * 1024;
}

StackMemory& stack_memory() {
  static StackMemory m;
  return m;
}

size_t send_allowance(size_t queued, size_t room) {
  if (!stack_memory().pressed()) return room;
  return std::min(room, kPressedQueue - std::min(kPressedQueue, queued));
}

}  // namespace stack

extern "C" {

void* vpmtun_mem_malloc(size_t size) {
  auto& m = stack::stack_memory();
  if (m.limit && m.in_use + size > m.limit) {
    ++m.refused;
    return nullptr;
  }
  void* p = std::malloc(size);
  if (p) m.in_use += malloc_usable_size(p);
  return p;
}

void* vpmtun_mem_calloc(size_t count, size_t size) {
  auto& m = stack::stack_memory();
  if (m.limit && size && (count > m.limit / size || m.in_use + count * size > m.limit)) {
    ++m.refused;
    return nullptr;
  }
  void* p = std::calloc(count, size);
  if (p) m.in_use += malloc_usable_size(p);
  return p;
}

void vpmtun_mem_free(void* p) {
  if (!p) return;
  stack::stack_memory().in_use -= malloc_usable_size(p);
  std::free(p);
}

unsigned int vpmtun_ooseq_bytes_limit(void) {
  auto& m = stack::stack_memory();
  return m.hard_pressed() ? 0 : m.pressed() ? 64 * 1024 : TCP_WND;
}

unsigned short vpmtun_ooseq_pbufs_limit(void) {
  auto& m = stack::stack_memory();
  return m.hard_pressed() ? 0 : m.pressed() ? 16 : 0xffff;
}
}
