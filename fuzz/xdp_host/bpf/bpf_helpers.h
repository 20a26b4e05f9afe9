/* Stands in for libbpf's <bpf/bpf_helpers.h> when an XDP program is built
 * for the host (fuzz/wan_xdp.c, with -DDP_XDP_HOST and this directory
 * first on the include path): map definitions become plain globals whose
 * addresses name them, the helpers become functions the harness defines,
 * and struct xdp_md holds real pointers (the kernel's has 32-bit fields
 * the verifier rewrites). */
#ifndef DP_XDP_HOST_BPF_HELPERS_H
#define DP_XDP_HOST_BPF_HELPERS_H

#include <stdint.h>
#include <linux/bpf.h>

#ifndef NULL
#define NULL ((void *)0)
#endif
#define SEC(name)
#define __uint(name, val) int(*name)[val]
#define __type(name, val) __typeof__(val) *name
#ifndef __always_inline
#define __always_inline inline __attribute__((always_inline))
#endif

struct dp_host_xdp_md {
    uintptr_t data;
    uintptr_t data_end;
    uintptr_t data_meta;
    uint32_t ingress_ifindex;
    uint32_t rx_queue_index;
    uint32_t egress_ifindex;
};
#define xdp_md dp_host_xdp_md

void *bpf_map_lookup_elem(void *map, const void *key);
long bpf_map_update_elem(void *map, const void *key, const void *value, uint64_t flags);
uint64_t bpf_ktime_get_ns(void);
long bpf_xdp_load_bytes(struct xdp_md *ctx, uint32_t offset, void *buf, uint32_t len);
long bpf_redirect_map(void *map, uint64_t key, uint64_t flags);

#endif
