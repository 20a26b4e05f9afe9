/* XDP program of the data-plane end of the inner veth pair: every frame the
 * kernel routes into the tunnel goes to the AF_XDP socket of its RX queue,
 * or back to the kernel when the queue has no socket (counted). Nothing is
 * parsed here: the worker classifies what it receives.
 */
#include "steering.h"

DP_XDP_STEERING_MAPS(DP_XDP_INNER_COUNT)

SEC("xdp")
int dp_xdp_inner(struct xdp_md *ctx)
{
    return steer(ctx, DP_XDP_INNER_STEER, DP_XDP_INNER_STEER_NO_SOCKET);
}

char LICENSE[] SEC("license") = "Apache-2.0";
