/* lwIP hooks of vpmtun's embedded stack (LWIP_HOOK_FILENAME). */
#ifndef VPMTUN_HOOKS_H
#define VPMTUN_HOOKS_H

#include "lwip/arch.h"
#include "lwip/ip_addr.h"

#ifdef __cplusplus
extern "C" {
#endif
/* Initial sequence numbers (LWIP_HOOK_TCP_ISN): RFC 6528, or the SYN
 * cookie a handshake completed with (stack/stack.cpp). */
u32_t vpmtun_tcp_isn(const ip_addr_t* local_ip, u16_t local_port, const ip_addr_t* remote_ip,
                     u16_t remote_port);

/* The index of active TCP pcbs (stack/pcb_index.cpp; lwIP patched by
 * stack/patches/0001-tcp-active-pcb-index.patch): O(1) lookup of a
 * segment's pcb and O(1) unlinking, where lwIP walks its list. */
struct tcp_pcb;
void vpmtun_tcp_active_added(struct tcp_pcb* pcb);
void vpmtun_tcp_active_unlink(struct tcp_pcb* pcb);
struct tcp_pcb* vpmtun_tcp_active_find(const ip_addr_t* remote_ip, u16_t remote_port,
                                       const ip_addr_t* local_ip, u16_t local_port);
/* The same for TIME-WAIT pcbs (0002-tcp-time-wait-index.patch), and how
 * many there are. */
void vpmtun_tcp_tw_added(struct tcp_pcb* pcb);
void vpmtun_tcp_tw_unlink(struct tcp_pcb* pcb);
struct tcp_pcb* vpmtun_tcp_tw_find(const ip_addr_t* remote_ip, u16_t remote_port,
                                   const ip_addr_t* local_ip, u16_t local_port);
size_t vpmtun_tcp_tw_count(void);
#ifdef __cplusplus
}
#endif

#endif
