// The metrics server's hand-off to the event loop; the HTTP server itself is
// in the module vpmtun-metrics.so (metrics_http.hpp), loaded from here.
#include "tun/metrics.hpp"

#include <sys/epoll.h>
#include <sys/eventfd.h>
#include <unistd.h>

#include <chrono>
#include <condition_variable>
#include <list>
#include <mutex>
#include <stdexcept>

#include "tun/metrics_http.hpp"
#include "tun/own_library.hpp"
#include "vpm/lazy_library.hpp"

namespace tun {

namespace {

decltype(&vpmtun_metrics_serve) serve_function() {
  static vpm::LazyLibrary module(own_library("vpmtun-metrics.so", VPMTUN_METRICS_MODULE_BUILT),
                                 "[metrics] listen");
  static auto* serve = module.function<decltype(vpmtun_metrics_serve)>("vpmtun_metrics_serve");
  return serve;
}

}  // namespace

void load_metrics_module() { serve_function(); }

struct MetricsServer::Impl {
  struct Scrape {
    bool done = false;
    std::string body;
  };

  stack::IoLoop& io;
  std::function<std::string()> render;
  std::unique_ptr<HttpMetrics> http;
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
  int scrape(std::string& body) {
    Scrape s;
    std::unique_lock lock(mutex);
    pending.push_back(&s);
    uint64_t one = 1;
    if (::write(wake, &one, sizeof one) < 0) {
    }  // a full counter still wakes the loop
    if (!answered.wait_for(lock, std::chrono::seconds(5), [&] { return s.done || stopping; })) {
      pending.remove(&s);
      body = "the daemon did not answer in time\n";
      return 503;
    }
    if (!s.done) {
      pending.remove(&s);
      body = "the daemon is stopping\n";
      return 503;
    }
    body = std::move(s.body);
    return 200;
  }
};

MetricsServer::MetricsServer(const vpm::Endpoint& listen, stack::IoLoop& io,
                             std::function<std::string()> render)
    : impl_(std::make_unique<Impl>(io, std::move(render))) {
  Impl& m = *impl_;
  auto* serve = serve_function();
  m.wake = ::eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
  if (m.wake < 0) throw std::runtime_error("metrics: eventfd failed");
  ScrapeFn scrape = [&m](std::string& body) { return m.scrape(body); };
  std::string error;
  m.http.reset(serve(listen.addr.str().c_str(), listen.port, &scrape, &error));
  if (!m.http) {
    ::close(m.wake);
    throw std::runtime_error("[metrics] listen = \"" + listen.str() + "\": " + error);
  }
  io.watch(m.wake, EPOLLIN, [&m](uint32_t) { m.answer(); });
}

MetricsServer::~MetricsServer() {
  Impl& m = *impl_;
  {
    std::lock_guard lock(m.mutex);
    m.stopping = true;
    m.answered.notify_all();
  }
  m.http.reset();
  m.io.unwatch(m.wake);
  ::close(m.wake);
}

}  // namespace tun
