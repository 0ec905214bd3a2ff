// The epoll set an event loop waits on, and the watches of stack::IoLoop.
//
// Each watch carries a generation beside its fd, so an event that was
// already collected for a closed fd is not delivered to whatever reuses the
// number later in the same batch. The loop's own fds (add_own) carry
// generation 0 and stay open while it runs; the loop handles them itself.
#pragma once

#include <sys/epoll.h>

#include <cstdint>
#include <functional>
#include <map>

#include "stack/stack.hpp"

namespace tun {

class EventLoop : public stack::IoLoop {
 public:
  // Throws std::runtime_error when epoll cannot be had.
  EventLoop();
  ~EventLoop() override;
  EventLoop(const EventLoop&) = delete;
  EventLoop& operator=(const EventLoop&) = delete;

  void watch(int fd, uint32_t epoll_events, std::function<void(uint32_t)> ready) override;
  void unwatch(int fd) override;
  void closing(int fd) override;

  // Reports `fd` readable to wait(), for the loop to handle.
  void add_own(int fd);
  // epoll_wait; < 0 with errno on failure.
  int wait(epoll_event* events, int max, int timeout_ms);
  static int fd_of(const epoll_event& e) { return static_cast<int>(e.data.u64 & 0xffffffff); }
  // Runs the watch an event is for. True when the event was a watch's
  // (stale ones included), false when it is one of the loop's own fds.
  bool deliver(const epoll_event& e);

 private:
  struct Watch {
    uint64_t generation = 0;
    uint32_t events = 0;  // as epoll has them, so an unchanged watch costs no system call
    std::function<void(uint32_t)> ready;
  };
  int epoll_fd_ = -1;
  std::map<int, Watch> watched_;
  uint64_t generation_ = 0;
};

}  // namespace tun
