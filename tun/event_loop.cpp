// The epoll set and its watches.
#include "tun/event_loop.hpp"

#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <stdexcept>
#include <string>

namespace tun {

EventLoop::EventLoop() : epoll_fd_(epoll_create1(EPOLL_CLOEXEC)) {
  if (epoll_fd_ < 0) throw std::runtime_error(std::string("epoll: ") + std::strerror(errno));
}

EventLoop::~EventLoop() { ::close(epoll_fd_); }

void EventLoop::watch(int fd, uint32_t epoll_events, std::function<void(uint32_t)> ready) {
  auto [it, fresh] = watched_.try_emplace(fd);
  if (fresh) it->second.generation = ++generation_;
  it->second.ready = std::move(ready);
  if (!fresh && it->second.events == epoll_events) return;
  it->second.events = epoll_events;
  epoll_event e{};
  e.events = epoll_events;
  e.data.u64 = it->second.generation << 32 | static_cast<uint32_t>(fd);
  epoll_ctl(epoll_fd_, fresh ? EPOLL_CTL_ADD : EPOLL_CTL_MOD, fd, &e);
}

void EventLoop::unwatch(int fd) {
  if (watched_.erase(fd)) epoll_ctl(epoll_fd_, EPOLL_CTL_DEL, fd, nullptr);
}

void EventLoop::closing(int fd) { watched_.erase(fd); }

void EventLoop::add_own(int fd) {
  epoll_event e{};
  e.events = EPOLLIN;
  e.data.u64 = static_cast<uint32_t>(fd);
  epoll_ctl(epoll_fd_, EPOLL_CTL_ADD, fd, &e);
}

int EventLoop::wait(epoll_event* events, int max, int timeout_ms) {
  return epoll_wait(epoll_fd_, events, max, timeout_ms);
}

bool EventLoop::deliver(const epoll_event& e) {
  uint64_t generation = e.data.u64 >> 32;
  if (generation == 0) return false;
  auto w = watched_.find(fd_of(e));
  if (w == watched_.end() || w->second.generation != generation) return true;  // closed since
  auto ready = w->second.ready;  // the callback may unwatch (and erase) itself
  ready(e.events);
  return true;
}

}  // namespace tun
