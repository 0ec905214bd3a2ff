// The platform functions lwIP needs under NO_SYS: a clock, random numbers,
// and an assertion handler that logs and counts instead of aborting.
#include <spdlog/spdlog.h>

#include <chrono>
#include <random>

#include "lwip/arch.h"
#include "stack_internal.hpp"

namespace stack {

uint64_t& lwip_assert_count() {
  static uint64_t count = 0;
  return count;
}

IsnSource& tcp_isn_source() {
  static IsnSource source;
  return source;
}

}  // namespace stack

extern "C" {

u32_t sys_now(void) {
  using namespace std::chrono;
  return static_cast<u32_t>(
      duration_cast<milliseconds>(steady_clock::now().time_since_epoch()).count());
}

unsigned int vpmtun_lwip_rand(void) {
  static std::mt19937 rng{std::random_device{}()};
  return static_cast<unsigned int>(rng());
}

u32_t vpmtun_tcp_isn(const ip_addr_t* local_ip, u16_t local_port, const ip_addr_t* remote_ip,
                     u16_t remote_port) {
  auto& source = stack::tcp_isn_source();
  return source ? source(local_ip, local_port, remote_ip, remote_port) : vpmtun_lwip_rand();
}

void vpmtun_lwip_assert(const char* message, const char* file, int line) {
  ++stack::lwip_assert_count();
  spdlog::error("lwIP assertion at {}:{}: {}", file, line, message);
}

void vpmtun_lwip_diag(const char* message) { spdlog::debug("lwIP: {}", message); }
}
