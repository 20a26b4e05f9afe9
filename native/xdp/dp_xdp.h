/* Loader of the XDP programs in ebpf/ (wan.bpf.o, inner.bpf.o), through
 * libbpf: open an object file, write its settings, load it; attach it to an
 * interface with a bpf_link; point its XSKMAP at AF_XDP sockets; read its
 * counters; run it on a packet with BPF_PROG_TEST_RUN.
 *
 * Errors: functions return 0 (or a count) on success and a negative errno
 * on failure; dp_xdp_last_error() then says what failed, with which value,
 * and what to do (per thread, overwritten by the thread's next failure).
 *
 * Ownership: a struct dp_xdp owns its object, program, maps and link;
 * dp_xdp_close releases them all, detaching the program. Nothing is pinned:
 * the link lives in this process's file table (close-on-exec), so when the
 * process exits, however it exits, the kernel detaches the program and the
 * interface forwards normally again.
 *
 * Never half-attached: a dp_xdp_attach that fails leaves the interface
 * without our program (a stale one of ours it found may have been removed).
 *
 * Threads: no locking inside; one thread at a time per struct dp_xdp.
 * cdef-clean: plain declarations and integer #defines only.
 */
#ifndef DP_XDP_H
#define DP_XDP_H

#include <stdint.h>

struct dp_xdp;

/* Longest message of dp_xdp_last_error, with its terminating NUL. */
#define DP_XDP_ERROR_MAX 1024

/* struct dp_xdp_config flags */
#define DP_XDP_RATELIMIT 1 /* rate-limit handshake messages per source (IPv4 address, IPv6 /64) */

/* dp_xdp_attach flags. ALLOW_GENERIC: accept generic (skb) mode when the
 * driver has no native XDP. */
#define DP_XDP_ATTACH_ALLOW_GENERIC 1

/* dp_xdp_attach_mode */
#define DP_XDP_MODE_NONE 0
#define DP_XDP_MODE_NATIVE 1
#define DP_XDP_MODE_GENERIC 2

/* Verdicts of dp_xdp_test_run: the kernel's XDP actions. */
#define DP_XDP_ABORTED 0
#define DP_XDP_DROP 1
#define DP_XDP_PASS 2
#define DP_XDP_TX 3
#define DP_XDP_REDIRECT 4

/* Settings of the WAN program, fixed at load time (read-only data). */
struct dp_xdp_config {
    uint16_t listen_port;     /* UDP destination port steered to AF_XDP, 1..65535 */
    uint16_t flags;           /* DP_XDP_RATELIMIT */
    uint32_t handshake_rate;  /* with DP_XDP_RATELIMIT: messages per second per source, 1..1e9 */
    uint32_t handshake_burst; /* with DP_XDP_RATELIMIT: messages back to back per source, >= 1 */
};

/* Why the calling thread's last failed call failed ("" before any). */
const char *dp_xdp_last_error(void);

/* Opens the BPF object file at path and loads its one XDP program
 * (dp_xdp_wan, dp_xdp_inner, or the bench's dp_xdp_forward) into the
 * kernel. The WAN program needs a config; the others take none (NULL). On success *out
 * holds a new struct dp_xdp, owned by the caller (dp_xdp_close). */
int dp_xdp_open(const char *path, const struct dp_xdp_config *config, struct dp_xdp **out);
/* Detaches (if attached) and releases everything. NULL is a no-op. */
void dp_xdp_close(struct dp_xdp *x);

/* The program's name (DP_XDP_*_PROG_NAME of ebpf/dp_xdp_kern_user.h),
 * valid until dp_xdp_close. */
const char *dp_xdp_name(const struct dp_xdp *x);
/* The kernel's id of the loaded program (as `ip link` and bpftool show it). */
uint32_t dp_xdp_prog_id(const struct dp_xdp *x);

/* Removes XDP programs of ours (by name) that a process left attached to
 * ifindex without a bpf_link (netlink attachment, which outlives its
 * process). Returns how many it removed (0 if none), or -EBUSY when the
 * interface has a program that is not ours, or ours held by a live link. */
int dp_xdp_remove_stale(int ifindex);
/* Attaches to ifindex with a bpf_link owned by this process, in native
 * (driver) mode; with DP_XDP_ATTACH_ALLOW_GENERIC also in generic mode
 * when the driver has no native XDP. Removes stale programs of ours first
 * (dp_xdp_remove_stale). -EBUSY if already attached (detach first) or the
 * interface has another program. */
int dp_xdp_attach(struct dp_xdp *x, int ifindex, uint32_t flags);
/* Detaches from the interface (destroys the link). 0 if not attached. */
int dp_xdp_detach(struct dp_xdp *x);
/* The interface attached to, or 0. */
int dp_xdp_ifindex(const struct dp_xdp *x);
/* 1 while the program's link still holds it on the interface, 0 when
 * the link was detached from outside (bpftool link detach, the interface
 * gone) or there is none, -errno when the kernel cannot say. */
int dp_xdp_link_alive(const struct dp_xdp *x);
/* DP_XDP_MODE_* of the current attachment. */
int dp_xdp_attach_mode(const struct dp_xdp *x);

/* Frames of RX queue `queue` go to AF_XDP socket xsk_fd (the map takes its
 * own reference to the socket). -EINVAL when queue >= dp_xdp_max_queues,
 * -EOPNOTSUPP or -ENOTSOCK when xsk_fd is not an AF_XDP socket. */
int dp_xdp_set_xsk(struct dp_xdp *x, uint32_t queue, int xsk_fd);
/* WAN program: rest (non-zero) or apply (0, the state at load) the
 * handshake rate limit; the control plane rests it while it is not under
 * load. -EINVAL for a program without a rate limit. */
int dp_xdp_set_ratelimit_rest(struct dp_xdp *x, int rest);
/* WAN program: the interface's AmneziaWG profile (as struct dp_wire of
 * native/wg/dp_wg_messages.h), and the signature packets (I1..I5) it
 * counts apart from junk by their length and up to 8 leading fixed
 * bytes. Takes effect for the next frame; all zeros is plain WireGuard.
 * -EINVAL for a program without it or a range that runs backwards. */
#define DP_XDP_WIRE_MAX_PADDING 65507
struct dp_xdp_wire_config {
    uint32_t padding[4];
    uint32_t header_min[4];
    uint32_t header_max[4];
    uint32_t obfuscated;
    uint32_t accept_plain;
    uint32_t n_signatures;          /* 0..5 */
    uint32_t sig_len[5];
    uint32_t sig_prefix_len[5];     /* 0..8 */
    uint8_t sig_prefix[5][8];
};
int dp_xdp_set_wire(struct dp_xdp *x, const struct dp_xdp_wire_config *w);
/* WAN program: this host's addresses (family 4 with the address in
 * addr[0..3], or 6), the only destinations it steers datagrams to the
 * listen port for; the map then holds exactly these (n <=
 * DP_XDP_MAX_LOCAL_ADDRS, -E2BIG past it; -EINVAL for another family). */
#define DP_XDP_MAX_LOCAL_ADDRS_API 1024 /* DP_XDP_MAX_LOCAL_ADDRS */
struct dp_xdp_local_addr {
    uint32_t family;
    uint8_t addr[16];
};
int dp_xdp_set_local(struct dp_xdp *x, const struct dp_xdp_local_addr *addrs, uint32_t n);
/* Frames of the queue go to the kernel again. 0 also if none was set. */
int dp_xdp_clear_xsk(struct dp_xdp *x, uint32_t queue);
/* Entries of the XSKMAP (RX queues that can be served). */
uint32_t dp_xdp_max_queues(const struct dp_xdp *x);
/* The XSKMAP's fd, for libxdp's xsk_socket__update_xskmap; owned by x. */
int dp_xdp_xsk_map_fd(const struct dp_xdp *x);

/* Counters: their number, each one's name (a static string, e.g.
 * "drop_trunc_udp"; NULL when i is out of range), and their values summed
 * over CPUs: writes min(n, count) values and returns count. */
uint32_t dp_xdp_counter_count(const struct dp_xdp *x);
const char *dp_xdp_counter_name(const struct dp_xdp *x, uint32_t i);
int dp_xdp_counters(const struct dp_xdp *x, uint64_t *values, uint32_t n);

/* Runs the program on one frame (BPF_PROG_TEST_RUN; in_len >= 14, at most
 * about 3500 without multi-buffer support), `repeat` times in a row (0 is
 * once). *verdict gets the last run's XDP action; the frame as the program
 * left it goes to out (up to out_cap bytes; out may be NULL), its length to
 * *out_len. Test runs see no AF_XDP socket: a steered frame comes back as
 * DP_XDP_PASS, counted as steered and as having had no socket. */
int dp_xdp_test_run(struct dp_xdp *x, const uint8_t *in, uint32_t in_len, uint8_t *out,
                    uint32_t out_cap, uint32_t *out_len, uint32_t repeat, uint32_t *verdict);

#endif
