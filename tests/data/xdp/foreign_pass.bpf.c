/* An XDP program that is not ours (its name is none of the loader's), for
 * the test that the loader leaves other people's programs alone. */
#include <linux/bpf.h>
#include <bpf/bpf_helpers.h>

SEC("xdp")
int foreign_pass(struct xdp_md *ctx)
{
    return XDP_PASS;
}

char LICENSE[] SEC("license") = "Apache-2.0";
