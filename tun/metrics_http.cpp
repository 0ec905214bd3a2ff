// The module vpmtun-metrics.so: the metrics HTTP server (metrics_http.hpp).
#include "tun/metrics_http.hpp"

#include <httplib.h>
#include <pthread.h>
#include <signal.h>

#include <exception>
#include <memory>
#include <thread>

namespace {

class Server final : public tun::HttpMetrics {
 public:
  ~Server() override {
    http.stop();
    if (thread.joinable()) thread.join();
  }

  httplib::Server http;
  std::thread thread;
};

}  // namespace

extern "C" __attribute__((visibility("default"))) tun::HttpMetrics* vpmtun_metrics_serve(
    const char* host, int port, const tun::ScrapeFn* scrape, std::string* error) try {
  auto s = std::make_unique<Server>();
  s->http.Get("/metrics", [scrape = *scrape](const httplib::Request&, httplib::Response& res) {
    std::string body;
    res.status = scrape(body);
    res.set_content(body,
                    res.status == 200 ? "text/plain; version=0.0.4; charset=utf-8" : "text/plain");
  });
  s->http.Get("/", [](const httplib::Request&, httplib::Response& res) {
    res.set_content("vpmtun: metrics are at /metrics\n", "text/plain");
  });
  if (!s->http.bind_to_port(host, port)) {
    *error = "cannot listen there (address in use, or not local?)";
    return nullptr;
  }
  sigset_t all, old;
  sigfillset(&all);
  pthread_sigmask(SIG_BLOCK, &all, &old);
  Server* raw = s.get();
  s->thread = std::thread([raw] { raw->http.listen_after_bind(); });
  pthread_sigmask(SIG_SETMASK, &old, nullptr);
  return s.release();
} catch (const std::exception& e) {
  *error = e.what();
  return nullptr;
}
