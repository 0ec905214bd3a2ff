// The metrics server's own thread asks the event loop for each scrape:
// scraped from another thread while Daemon::run() serves, under any
// sanitizer (tools/test builds it with ThreadSanitizer too).
#include <httplib.h>
#include <pthread.h>
#include <signal.h>

#include <catch2/catch.hpp>
#include <thread>

#include "packets.hpp"
#include "tun/daemon.hpp"
#include "tun/device.hpp"

using namespace testpkt;

TEST_CASE("metrics are scraped from other threads while the event loop runs") {
  auto cfg = config(R"(
[vpm]
control_socket = ""
[[app]]
name = "blue"
aid = 101
listen = ["192.0.2.10:9000"]
clients = ["198.51.100.0/24"]
serve = "echo"
)");
  tun::FakeDevice device;
  tun::Daemon daemon(cfg, device, {});
  uint16_t port = 0;
  for (uint16_t p = 39464; p < 39564 && !port; ++p) {
    try {
      daemon.serve_metrics(vpm::Endpoint{addr("127.0.0.1"), p});
      port = p;
    } catch (const std::runtime_error&) {  // in use: the next one
    }
  }
  REQUIRE(port != 0);
  pthread_t loop = pthread_self();
  int good = 0;
  std::thread scraper([&] {
    std::vector<std::thread> clients;
    for (int t = 0; t < 4; ++t)
      clients.emplace_back([&, t] {
        httplib::Client c("127.0.0.1", port);
        for (int i = 0; i < 10; ++i) {
          auto res = c.Get("/metrics");
          if (res && res->status == 200 &&
              res->body.find("vpmtun_engine_translated_total") != std::string::npos)
            __atomic_add_fetch(&good, 1, __ATOMIC_RELAXED);
        }
        (void)t;
      });
    for (auto& c : clients) c.join();
    pthread_kill(loop, SIGTERM);  // run() reads it from its signalfd
  });
  int code = daemon.run();
  scraper.join();
  CHECK(code == 0);
  CHECK(good == 40);
}
