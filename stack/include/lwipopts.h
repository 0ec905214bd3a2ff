/* lwIP configuration for vpmtun's embedded stack.
 *
 * One single-threaded event loop drives lwIP (NO_SYS = 1, raw API only): the
 * daemon feeds it packets read from the TUN (after port translation) and
 * calls its timers from a timerfd. There is no link layer: every virtual
 * address is its own point-to-point netif, so no ARP, no neighbour discovery,
 * no MLD, no DHCP or autoconfiguration. Sizes assume a large TUN MTU (65520
 * by default): segments up to 64 KiB and a window scaled to several MiB, so a
 * single stream is limited neither by 1460-byte segments nor by a 64 KiB
 * window. */
#ifndef VPMTUN_LWIPOPTS_H
#define VPMTUN_LWIPOPTS_H

#define NO_SYS 1
#define SYS_LIGHTWEIGHT_PROT 0
#define LWIP_SOCKET 0
#define LWIP_NETCONN 0
#define LWIP_TIMERS 1

/* Protocols. */
#define LWIP_IPV4 1
#define LWIP_IPV6 1
#define LWIP_TCP 1
#define LWIP_UDP 1
#define LWIP_ICMP 1
#define LWIP_RAW 0
#define LWIP_ARP 0
#define LWIP_ETHERNET 0
#define LWIP_DHCP 0
#define LWIP_AUTOIP 0
#define LWIP_IGMP 0
#define LWIP_DNS 0
#define LWIP_IPV6_MLD 0
#define LWIP_IPV6_AUTOCONFIG 0
#define LWIP_IPV6_DHCP6 0
#define LWIP_IPV6_SEND_ROUTER_SOLICIT 0
#define LWIP_IPV6_DUP_DETECT_ATTEMPTS 0
#define LWIP_IPV6_NUM_ADDRESSES 1
#define LWIP_ND6_ALLOW_RA_UPDATES 0
#define IP_REASSEMBLY 1
#define IP_FRAG 1
#define LWIP_IPV6_REASS 1
#define LWIP_IPV6_FRAG 1
#define IPV6_FRAG_COPYHEADER 1 /* 64-bit pointers do not fit in the fragment header */
#define LWIP_SINGLE_NETIF 0

/* Memory: the C library's allocator for both heap and pools, so memory
 * follows load, through a counting wrapper (stack/stack_memory.cpp) that
 * refuses allocations past [vpm] stack_memory_mb: lwIP then drops what it
 * cannot store and TCP sends it again. Under pressure the out-of-order
 * queue of each connection shrinks (TCP_OOSEQ_*_LIMIT below) and the
 * endpoints queue less to send per connection. */
#define MEM_LIBC_MALLOC 1
#define MEMP_MEM_MALLOC 1
#define mem_clib_malloc vpmtun_mem_malloc
#define mem_clib_free vpmtun_mem_free
#define mem_clib_calloc vpmtun_mem_calloc
#define MEM_ALIGNMENT 8
#define MEMP_NUM_TCP_PCB 65535
#define MEMP_NUM_UDP_PCB 4096
#define MEMP_NUM_TCP_SEG 65535
#define PBUF_POOL_SIZE 4096
#define PBUF_POOL_BUFSIZE 2048

/* TCP sized for a large MTU. lwIP 2.1 refuses (an init.c sanity check
 * about the socket API's low-water mark) a TCP_MSS whose 4 segments
 * overflow 16 bits, so 16000 is what we announce and accept; with TUN
 * offloads the stack raises each accepted pcb's MSS to 65000 at run time
 * (Stack::send_large_segments), which the 16-bit segment arithmetic holds.
 * The window is 4 MiB, advertised with scale 7, and the send buffer the
 * same. */
#define TCP_MSS 16000
#define LWIP_WND_SCALE 1
#define TCP_RCV_SCALE 7
#define TCP_WND (4 * 1024 * 1024)
#define TCP_SND_BUF (4 * 1024 * 1024)
#define TCP_SND_QUEUELEN ((4 * TCP_SND_BUF) / TCP_MSS + 16)
#define TCP_SNDLOWAT 1024 /* only the socket API uses it; must stay below 0xFFFF - 4 * MSS */
#define TCP_OVERSIZE TCP_MSS
#define TCP_QUEUE_OOSEQ 1
#define TCP_OOSEQ_BYTES_LIMIT(pcb) vpmtun_ooseq_bytes_limit()
#define TCP_OOSEQ_PBUFS_LIMIT(pcb) vpmtun_ooseq_pbufs_limit()
/* Out-of-order segments that continue each other are queued as one, up to
 * 64 KiB (stack/patches/0004-tcp-ooseq-merge.patch). */
#define TCP_OOSEQ_MERGE 1
/* Tell senders which segments arrived past a loss (RFC 2018), so they
 * resend only the holes. */
#define LWIP_TCP_SACK_OUT 1
/* No backlog per listener: a listener that a flood filled would drop the
 * SYN of a handshake that a cookie has just proved. The stack bounds the
 * handshakes lwIP holds itself (kMaxHalfOpen in stack.cpp). */
#define TCP_LISTEN_BACKLOG 0
/* lwIP's TCP timers tick every 50 ms (the daemon polls as often): delayed
 * ACKs wait at most that long, and retransmission timeouts are counted in
 * 100 ms ticks instead of the default 500, which on a lossy path is the
 * difference between a stall and a hiccup. */
#define TCP_TMR_INTERVAL 50
/* TIME_WAIT lasts 2 * TCP_MSL: 20 s instead of 120, as each TIME_WAIT pcb
 * is memory the slow timer visits (segments find theirs through an index,
 * stack/pcb_index.cpp); the stack also lets a newer SYN reuse a TIME_WAIT
 * 4-tuple and keeps at most 1024 of them (handshake.cpp). */
#define TCP_MSL 10000UL
/* One pointer per pcb for us: its predecessor on the list the index keeps
 * (stack/pcb_index.cpp). */
#define LWIP_TCP_PCB_NUM_EXT_ARGS 1
/* SO_REUSEADDR for the endpoints' listeners (and the connections they
 * accept): a reload may bind a p2 again while connections of its last
 * endpoint are still in TIME_WAIT (or closing); lwIP refuses that without it. */
#define SO_REUSE 1
#define LWIP_TCP_KEEPALIVE 1

/* Checksums: computed and verified in software (the engine keeps them valid). */
#define CHECKSUM_GEN_IP 1
#define CHECKSUM_GEN_TCP 1
#define CHECKSUM_GEN_UDP 1
#define CHECKSUM_CHECK_IP 1
#define CHECKSUM_CHECK_TCP 1
#define CHECKSUM_CHECK_UDP 1
#define LWIP_CHECKSUM_ON_COPY 1
/* Per-netif checksum checks: Stack::input skips TCP/UDP checks for packets
 * the kernel vouches for (TUN offloads). */
#define LWIP_CHECKSUM_CTRL_PER_NETIF 1

#define LWIP_NETIF_STATUS_CALLBACK 0
#define LWIP_NETIF_LINK_CALLBACK 0
#define LWIP_NETIF_LOOPBACK 0
#define LWIP_HAVE_LOOPIF 0
#define LWIP_STATS 0
#define LWIP_DEBUG 0

/* Initial sequence numbers: RFC 6528, or a SYN cookie (vpmtun_hooks.h). */
#define LWIP_HOOK_FILENAME "vpmtun_hooks.h"
#define LWIP_HOOK_TCP_ISN vpmtun_tcp_isn
#define LWIP_HOOK_TCP_ACTIVE_ADDED vpmtun_tcp_active_added
#define LWIP_HOOK_TCP_ACTIVE_UNLINK vpmtun_tcp_active_unlink
#define LWIP_HOOK_TCP_ACTIVE_FIND vpmtun_tcp_active_find
#define LWIP_HOOK_TCP_TW_ADDED vpmtun_tcp_tw_added
#define LWIP_HOOK_TCP_TW_UNLINK vpmtun_tcp_tw_unlink
#define LWIP_HOOK_TCP_TW_FIND vpmtun_tcp_tw_find

/* Random numbers for ports come from the port file; memory accounting from
 * stack/stack_memory.cpp. */
#include <stddef.h>
#ifdef __cplusplus
extern "C" {
#endif
unsigned int vpmtun_lwip_rand(void);
void* vpmtun_mem_malloc(size_t size);
void* vpmtun_mem_calloc(size_t count, size_t size);
void vpmtun_mem_free(void* p);
unsigned int vpmtun_ooseq_bytes_limit(void);
unsigned short vpmtun_ooseq_pbufs_limit(void);
#ifdef __cplusplus
}
#endif
#define LWIP_RAND() vpmtun_lwip_rand()

#endif
