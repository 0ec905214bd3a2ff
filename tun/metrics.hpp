// [metrics] listen: the Prometheus text exposition over HTTP (cpp-httplib,
// in the module vpmtun-metrics.so: metrics_http.hpp).
//
// The HTTP server runs on its own threads, but the counters belong to the
// event loop: each scrape posts a request through an eventfd that the loop
// watches, the loop renders the body, and the server thread waits for it
// (5 s at most, then 503). So a scrape is a consistent snapshot and the
// data path never takes a lock.
#pragma once

#include <functional>
#include <memory>
#include <string>

#include "stack/stack.hpp"
#include "vpm/address.hpp"

namespace tun {

// Loads the module unless it is; throws std::runtime_error saying where it
// should be when it cannot (`vpmtun check` calls it for [metrics] listen).
void load_metrics_module();

class MetricsServer {
 public:
  // Throws std::runtime_error when it cannot listen on `listen`.
  MetricsServer(const vpm::Endpoint& listen, stack::IoLoop& io,
                std::function<std::string()> render);
  ~MetricsServer();
  MetricsServer(const MetricsServer&) = delete;
  MetricsServer& operator=(const MetricsServer&) = delete;

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

}  // namespace tun
