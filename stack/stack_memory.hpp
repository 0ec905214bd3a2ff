// What lwIP has allocated, and the limit it may not pass ([vpm] stack_memory_mb).
//
// Theory of operation. lwIP allocates everything (pcbs, segments, pbufs)
// through mem_clib_malloc, which lwipopts.h points at a counting wrapper.
// Past the limit an allocation fails: lwIP drops the packet it could not
// store (TCP resends it) or refuses a write (the endpoint tries again when
// data is acknowledged). Before that, pressure grows with use:
//   below 1/2 of the limit  nothing is restricted;
//   from 1/2                each connection's out-of-order queue holds at
//                           most 64 KiB (16 pbufs), and endpoints queue at
//                           most 64 KiB to send per connection;
//   from 3/4                out-of-order data is not kept at all.
// So a client that sends out of order, or never reads, can fill its own
// window but cannot take the memory of the others. One thread only.
#pragma once

#include <cstddef>
#include <cstdint>

namespace stack {

struct StackMemory {
  size_t in_use = 0;     // bytes, as the allocator counts them
  size_t limit = 0;      // 0: none
  uint64_t refused = 0;  // allocations refused at the limit
  bool pressed() const { return limit && in_use > limit / 2; }
  bool hard_pressed() const { return limit && in_use > limit / 4 * 3; }
};

StackMemory& stack_memory();

// Bytes an endpoint may still queue to send on a connection that has
// `queued` bytes queued and `room` free in lwIP's send buffer.
size_t send_allowance(size_t queued, size_t room);

}  // namespace stack
