/* tc egress programs for the roaming tests: IPv4 UDP datagrams from port
 * 51900 leave with source address 10.201.0.99. The IPv4 header checksum
 * is kept right in both; the UDP checksum is left as it was in
 * "tc/corrupt" (as a bit flip in flight would leave it) and updated in
 * "tc/roam" (a real move, as NAT makes it). */
#include <linux/bpf.h>
#include <linux/if_ether.h>
#include <linux/in.h>
#include <linux/ip.h>
#include <linux/pkt_cls.h>
#include <linux/udp.h>
#include <bpf/bpf_endian.h>
#include <bpf/bpf_helpers.h>

#define IP_OFF ETH_HLEN
#define SADDR_OFF (IP_OFF + __builtin_offsetof(struct iphdr, saddr))
#define IPCSUM_OFF (IP_OFF + __builtin_offsetof(struct iphdr, check))
#define UDPCSUM_OFF (IP_OFF + sizeof(struct iphdr) + __builtin_offsetof(struct udphdr, check))

static __always_inline int rewrite(struct __sk_buff *skb, int fix_udp)
{
    void *data = (void *)(long)skb->data, *end = (void *)(long)skb->data_end;
    struct ethhdr *eth = data;
    struct iphdr *ip = data + IP_OFF;
    struct udphdr *udp = data + IP_OFF + sizeof(*ip);
    __be32 from, to = bpf_htonl(0x0AC90063); /* 10.201.0.99 */

    if ((void *)(udp + 1) > end || eth->h_proto != bpf_htons(ETH_P_IP) || ip->ihl != 5 ||
        ip->protocol != IPPROTO_UDP || udp->source != bpf_htons(51900))
        return TC_ACT_OK;
    from = ip->saddr;
    if (fix_udp)
        bpf_l4_csum_replace(skb, UDPCSUM_OFF, from, to, BPF_F_PSEUDO_HDR | sizeof(to));
    bpf_l3_csum_replace(skb, IPCSUM_OFF, from, to, sizeof(to));
    bpf_skb_store_bytes(skb, SADDR_OFF, &to, sizeof(to), 0);
    return TC_ACT_OK;
}

SEC("tc/corrupt")
int corrupt(struct __sk_buff *skb)
{
    return rewrite(skb, 0);
}

SEC("tc/roam")
int roam(struct __sk_buff *skb)
{
    return rewrite(skb, 1);
}

char LICENSE[] SEC("license") = "Apache-2.0";
