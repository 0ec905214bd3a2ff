// The metrics HTTP server and its hand-off to the event loop.
#include "tun/metrics.hpp"

#include <httplib.h>
#include <pthread.h>
#include <signal.h>
#include <sys/epoll.h>
#include <sys/eventfd.h>
#include <unistd.h>

#include <chrono>
#include <condition_variable>
#include <list>
#include <mutex>
#include <stdexcept>
#include <thread>

namespace tun {

struct MetricsServer::Impl {
  struct Scrape {
    bool done = false;
    std::string body;
  };

  stack::IoLoop& io;
  std::function<std::string()> render;
  httplib::Server server;
  std::thread thread;
  int wake = -1;  // eventfd: scrapes are waiting
  std::mutex mutex;
  std::condition_variable answered;
  std::list<Scrape*> pending;
  bool stopping = false;

  Impl(stack::IoLoop& loop, std::function<std::string()> r) : io(loop), render(std::move(r)) {}

  // On the event loop: answer every waiting scrape.
  void answer() {
    uint64_t n;
    while (::read(wake, &n, sizeof n) > 0) {
    }
    std::lock_guard lock(mutex);
    for (Scrape* s : pending) {
      s->body = render();
      s->done = true;
    }
    pending.clear();
    answered.notify_all();
  }

  // On a server thread.
  void scrape(httplib::Response& res) {
    Scrape s;
    std::unique_lock lock(mutex);
    pending.push_back(&s);
    uint64_t one = 1;
    if (::write(wake, &one, sizeof one) < 0) {
    }  // a full counter still wakes the loop
    if (!answered.wait_for(lock, std::chrono::seconds(5), [&] { return s.done || stopping; })) {
      pending.remove(&s);
      res.status = 503;
      res.set_content("the daemon did not answer in time\n", "text/plain");
      return;
    }
    if (!s.done) {
      pending.remove(&s);
      res.status = 503;
      res.set_content("the daemon is stopping\n", "text/plain");
      return;
    }
    res.set_content(s.body, "text/plain; version=0.0.4; charset=utf-8");
  }
};

MetricsServer::MetricsServer(const vpm::Endpoint& listen, stack::IoLoop& io,
                             std::function<std::string()> render)
    : impl_(std::make_unique<Impl>(io, std::move(render))) {
  Impl& m = *impl_;
  m.server.Get("/metrics",
               [&m](const httplib::Request&, httplib::Response& res) { m.scrape(res); });
  m.server.Get("/", [](const httplib::Request&, httplib::Response& res) {
    res.set_content("vpmtun: metrics are at /metrics\n", "text/plain");
  });
  if (!m.server.bind_to_port(listen.addr.str(), listen.port))
    throw std::runtime_error("[metrics] listen = \"" + listen.str() +
                             "\": cannot listen there (address in use, or not local?)");
  m.wake = ::eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
  if (m.wake < 0) throw std::runtime_error("metrics: eventfd failed");
  io.watch(m.wake, EPOLLIN, [&m](uint32_t) { m.answer(); });
  // The server's threads must not take SIGTERM and friends: the event loop
  // reads them from a signalfd, which works only while every thread blocks them.
  sigset_t all, old;
  sigfillset(&all);
  pthread_sigmask(SIG_BLOCK, &all, &old);
  m.thread = std::thread([&m] { m.server.listen_after_bind(); });
  pthread_sigmask(SIG_SETMASK, &old, nullptr);
}

MetricsServer::~MetricsServer() {
  Impl& m = *impl_;
  {
    std::lock_guard lock(m.mutex);
    m.stopping = true;
    m.answered.notify_all();
  }
  m.server.stop();
  m.thread.join();
  m.io.unwatch(m.wake);
  ::close(m.wake);
}

}  // namespace tun
