/* TUN offloads: the virtio-net header in front of every TUN packet, TCP
 * segmentation of the super-packets the kernel hands over (TSO), and the
 * Internet checksum they need. */
#ifndef DP_OFFLOAD_H
#define DP_OFFLOAD_H

#include <stddef.h>
#include <stdint.h>

#define VNET_HDR_LEN 10
#define VNET_F_NEEDS_CSUM 1
#define VNET_F_DATA_VALID 2
#define VNET_GSO_NONE 0
#define VNET_GSO_TCPV4 1
#define VNET_GSO_TCPV6 4
#define VNET_GSO_ECN 0x80
/* The largest packet the kernel writes into a TUN with TSO: 64 KiB. */
#define TUN_SUPER_MAX 65535

struct vnet_hdr {
    uint8_t flags;
    uint8_t gso_type;
    uint16_t hdr_len;
    uint16_t gso_size;
    uint16_t csum_start;
    uint16_t csum_offset;
};

/* One's complement sum of len bytes at p, added to sum (not folded). */
uint64_t dp_csum_add(uint64_t sum, const uint8_t *p, size_t len);
/* Fold to 16 bits and complement: the value to store. */
uint16_t dp_csum_fold(uint64_t sum);

/* Complete a packet the kernel left with a partial checksum
 * (VNET_F_NEEDS_CSUM); 0, or -1 when the offsets are out of bounds. */
int dp_offload_finish_csum(const struct vnet_hdr *vh, uint8_t *pkt, size_t len);

/* Segment a TSO super-packet: segment `first` onwards, at most max
 * segments, each written to out[i] (room for mtu bytes) with its length in
 * out_len[i]. Returns how many were written (0 when `first` is past the
 * end), or -1 for a packet that is not a well-formed TCP super-packet or
 * whose segments would not fit the mtu. *total gets the segment count. */
int dp_tso_segment(const struct vnet_hdr *vh, const uint8_t *pkt, size_t len, uint32_t mtu,
                   uint32_t first, uint8_t **out, uint32_t *out_len, uint32_t max,
                   uint32_t *total);

#endif

/* TCP receive coalescing for TUN writes (GRO): consecutive in-order
 * segments of one flow become one super-packet written with a GSO
 * virtio-net header, so the kernel's TCP stack handles one packet instead
 * of dozens. */
struct gro_pkt {
    uint8_t *data;  /* the IP packet; VNET_HDR_LEN bytes before it are free */
    uint32_t len;
};

/* Writes pkts[0..n) to the TUN fd (which has IFF_VNET_HDR), coalescing
 * what can be (groups are built in scratch: VNET_HDR_LEN + 64 KiB);
 * returns how many packets failed to write. */
uint32_t dp_gro_write(int tun_fd, struct gro_pkt *pkts, uint32_t n, uint8_t *scratch);
