/* What every XDP program here has: xsks, the AF_XDP socket of each RX
 * queue (the loader fills it), and counters, per-CPU, with count() and
 * steer(). A program says DP_XDP_STEERING_MAPS(number of its counters)
 * once, at file scope; the loader finds both maps by these names.
 */
#ifndef DP_XDP_STEERING_H
#define DP_XDP_STEERING_H

#include <linux/bpf.h>
#include <bpf/bpf_helpers.h>

#include "dp_xdp_kern_user.h"

#define DP_XDP_STEERING_MAPS(n_counters)                         \
    struct {                                                     \
        __uint(type, BPF_MAP_TYPE_XSKMAP);                       \
        __uint(max_entries, DP_XDP_MAX_QUEUES);                  \
        __type(key, __u32);                                      \
        __type(value, __u32);                                    \
    } xsks SEC(".maps");                                         \
                                                                 \
    struct {                                                     \
        __uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);                 \
        __uint(max_entries, n_counters);                         \
        __type(key, __u32);                                      \
        __type(value, __u64);                                    \
    } counters SEC(".maps");                                     \
                                                                 \
    static __always_inline void count(__u32 index)              \
    {                                                            \
        __u64 *value = bpf_map_lookup_elem(&counters, &index);   \
                                                                 \
        if (value)                                               \
            *value += 1;                                         \
    }                                                            \
                                                                 \
    /* To the AF_XDP socket of this RX queue, counted, or to the  \
     * kernel when the queue has none (also what                  \
     * BPF_PROG_TEST_RUN sees: it never has a socket). */         \
    static __always_inline int steer(const struct xdp_md *ctx,   \
                                     __u32 counter,              \
                                     __u32 no_socket)            \
    {                                                            \
        int action;                                              \
                                                                 \
        count(counter);                                          \
        action = bpf_redirect_map(&xsks, ctx->rx_queue_index,    \
                                  XDP_PASS);                     \
        if (action != XDP_REDIRECT)                              \
            count(no_socket);                                    \
        return action;                                           \
    }

#endif
