// Shared between the stack's own files: counters the C port layer updates.
#pragma once

#include <cstdint>
#include <functional>

#include "lwip/ip_addr.h"

namespace stack {

uint64_t& lwip_assert_count();

// What lwIP's TCP_ISN hook answers; the Stack sets it.
using IsnSource = std::function<uint32_t(const ip_addr_t* local, uint16_t local_port,
                                         const ip_addr_t* remote, uint16_t remote_port)>;
IsnSource& tcp_isn_source();

}  // namespace stack
