// The HTTP side of [metrics] listen, between the daemon and the module
// vpmtun-metrics.so (metrics_http.cpp), which holds cpp-httplib.
//
// The module is loaded only when metrics are configured. Linked into vpmtun
// itself, cpp-httplib would come with libssl, libcrypto, zlib and brotli, and
// would set up OpenSSL in every vpmtun process: 4 ms more at each start of
// `vpmtun replay`, `check` or `exec`, which never serve HTTP.
#pragma once

#include <functional>
#include <string>

namespace tun {

// A running server; deleting it stops the server and waits for its thread.
class HttpMetrics {
 public:
  virtual ~HttpMetrics() = default;
};

// Called on a server thread for each GET /metrics: sets the body, returns
// the HTTP status (200, or 503 with a plain-text reason).
using ScrapeFn = std::function<int(std::string& body)>;

}  // namespace tun

// The module's entry point: serves http://host:port/metrics on a thread of
// its own, which blocks every signal (the daemon reads them from a signalfd).
// On failure returns nullptr and says why in *error.
extern "C" tun::HttpMetrics* vpmtun_metrics_serve(const char* host, int port,
                                                  const tun::ScrapeFn* scrape, std::string* error);
