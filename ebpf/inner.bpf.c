/* XDP program of the data-plane end of the inner veth pair: every frame the
 * kernel routes into the tunnel goes to the AF_XDP socket of its RX queue,
 * or back to the kernel when the queue has no socket (counted). Nothing is
 * parsed here: the worker classifies what it receives.
 */
#include <linux/bpf.h>
#include <bpf/bpf_helpers.h>

#include "dp_xdp_kern_user.h"

struct {
    __uint(type, BPF_MAP_TYPE_XSKMAP);
    __uint(max_entries, DP_XDP_MAX_QUEUES);
    __type(key, __u32);
    __type(value, __u32);
} xsks SEC(".maps");

struct {
    __uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
    __uint(max_entries, DP_XDP_INNER_COUNT);
    __type(key, __u32);
    __type(value, __u64);
} counters SEC(".maps");

static __always_inline void count(__u32 index)
{
    __u64 *value = bpf_map_lookup_elem(&counters, &index);

    if (value)
        *value += 1;
}

SEC("xdp")
int dp_xdp_inner(struct xdp_md *ctx)
{
    int action;

    count(DP_XDP_INNER_STEER);
    action = bpf_redirect_map(&xsks, ctx->rx_queue_index, XDP_PASS);
    if (action != XDP_REDIRECT)
        count(DP_XDP_INNER_STEER_NO_SOCKET);
    return action;
}

char LICENSE[] SEC("license") = "Apache-2.0";
