/* Compiler and platform glue for lwIP on Linux (NO_SYS). An lwIP assertion
 * must not take the daemon down silently: it is logged and counted by
 * vpmtun_lwip_assert (stack/lwip_port.cpp), and lwIP carries on from it the
 * way its own non-asserting builds do. */
#ifndef VPMTUN_ARCH_CC_H
#define VPMTUN_ARCH_CC_H

#include <stdint.h>
#include <stdlib.h>

#define LWIP_NO_STDINT_H 0
#define LWIP_NO_INTTYPES_H 0
#define LWIP_NO_LIMITS_H 0
#define LWIP_NO_CTYPE_H 0
#define LWIP_TIMEVAL_PRIVATE 0
#define BYTE_ORDER LITTLE_ENDIAN

#ifdef __cplusplus
extern "C" {
#endif
void vpmtun_lwip_assert(const char* message, const char* file, int line);
void vpmtun_lwip_diag(const char* message);
#ifdef __cplusplus
}
#endif

#define LWIP_PLATFORM_ASSERT(x) vpmtun_lwip_assert((x), __FILE__, __LINE__)
#define LWIP_PLATFORM_DIAG(x) \
  do {                        \
  } while (0)

#endif
