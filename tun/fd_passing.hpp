// Datagrams with descriptors attached (SCM_RIGHTS) on a Unix socket: the
// library socket's framing, shared by the daemon and libvpmtun-app.so
// (header-only and libc-only, since the library links nothing of tun/).
#pragma once

#include <sys/socket.h>
#include <unistd.h>

#include <cstdint>
#include <cstring>
#include <span>
#include <vector>

namespace tun {

// Sends `bytes` as one datagram, with `fd` attached unless it is -1.
// True when all of it was sent.
inline bool send_with_fd(int sock, std::span<const uint8_t> bytes, int fd, int flags) {
  iovec iov{const_cast<uint8_t*>(bytes.data()), bytes.size()};
  msghdr msg{};
  msg.msg_iov = &iov;
  msg.msg_iovlen = 1;
  alignas(cmsghdr) char control[CMSG_SPACE(sizeof(int))];
  if (fd >= 0) {
    msg.msg_control = control;
    msg.msg_controllen = sizeof control;
    cmsghdr* c = CMSG_FIRSTHDR(&msg);
    c->cmsg_level = SOL_SOCKET;
    c->cmsg_type = SCM_RIGHTS;
    c->cmsg_len = CMSG_LEN(sizeof(int));
    std::memcpy(CMSG_DATA(c), &fd, sizeof(int));
  }
  return ::sendmsg(sock, &msg, flags | MSG_NOSIGNAL) == static_cast<ssize_t>(bytes.size());
}

// Receives one datagram into `buf` and appends the descriptors it carried
// (at most four; close-on-exec) to `fds`, which the caller then owns.
// Returns recvmsg's result; *cut is set when the datagram or its
// descriptors did not fit.
inline ssize_t recv_with_fds(int sock, std::span<uint8_t> buf, std::vector<int>& fds, int flags,
                             bool* cut) {
  iovec iov{buf.data(), buf.size()};
  alignas(cmsghdr) char control[CMSG_SPACE(sizeof(int) * 4)];
  msghdr msg{};
  msg.msg_iov = &iov;
  msg.msg_iovlen = 1;
  msg.msg_control = control;
  msg.msg_controllen = sizeof control;
  ssize_t n = ::recvmsg(sock, &msg, flags | MSG_CMSG_CLOEXEC);
  if (n < 0) return n;
  for (cmsghdr* c = CMSG_FIRSTHDR(&msg); c; c = CMSG_NXTHDR(&msg, c)) {
    if (c->cmsg_level != SOL_SOCKET || c->cmsg_type != SCM_RIGHTS) continue;
    size_t count = (c->cmsg_len - CMSG_LEN(0)) / sizeof(int);
    for (size_t i = 0; i < count; ++i) {
      int passed;
      std::memcpy(&passed, CMSG_DATA(c) + i * sizeof(int), sizeof passed);
      fds.push_back(passed);
    }
  }
  *cut = msg.msg_flags & (MSG_TRUNC | MSG_CTRUNC);
  return n;
}

}  // namespace tun
