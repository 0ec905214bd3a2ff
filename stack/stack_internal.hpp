// Shared between the stack's own files: counters the C port layer updates.
#pragma once

#include <cstdint>

namespace stack {

uint64_t& lwip_assert_count();

}  // namespace stack
