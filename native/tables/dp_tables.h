/* dataplane per-packet tables: the anti-replay window of a receiving
 * keypair and the allowed-IPs longest-prefix-match table.
 *
 * This header is also the cffi cdef: keep it to plain declarations and
 * integer #defines (the build strips the include guard and #include lines).
 * It is self-contained: only <stdint.h> and <stddef.h> types.
 *
 * Error codes are returned negated: -DP_TABLES_EINVAL for a bad argument
 * (NULL pointer, unknown family, prefix length too long, DP_PEER_NONE as an
 * owner), -DP_TABLES_ENOMEM when an allocation failed (the table is then
 * unchanged), -DP_TABLES_ENOSPC when every reader slot is taken.
 */
#ifndef DP_TABLES_H
#define DP_TABLES_H

#include <stddef.h>
#include <stdint.h>

#define DP_TABLES_EINVAL 22
#define DP_TABLES_ENOMEM 12
#define DP_TABLES_ENOSPC 28

/* ---- Anti-replay window (RFC 6479, with WireGuard's parameters) ----
 *
 * A ring of DP_REPLAY_BITMAP_WORDS 64-bit words, one bit per counter. One
 * word is kept spare, so that clearing the word a new highest counter moves
 * into never forgets a counter still inside the window: a counter is
 * accepted when it is below DP_REPLAY_REJECT_AFTER_MESSAGES, was not accepted
 * before, and is at most DP_REPLAY_WINDOW below the highest counter accepted
 * so far (anything above the highest is new).
 *
 * No locking inside: each struct dp_replay has a single writer, the worker
 * that decrypts for that keypair. Callers that share one between threads
 * must serialise dp_replay_check themselves.
 */
#define DP_REPLAY_WORD_BITS 64
#define DP_REPLAY_BITMAP_BITS 8192
#define DP_REPLAY_BITMAP_WORDS 128
/* DP_REPLAY_BITMAP_BITS - DP_REPLAY_WORD_BITS */
#define DP_REPLAY_WINDOW 8128
/* WireGuard's REJECT_AFTER_MESSAGES, 2^64 - 2^13 - 1: counters at or above
 * it are never accepted (whitepaper section 6.1). */
#define DP_REPLAY_REJECT_AFTER_MESSAGES 0xffffffffffffdfff

struct dp_replay {
    uint64_t counter; /* highest accepted counter + 1; 0 before the first */
    uint64_t bitmap[DP_REPLAY_BITMAP_WORDS];
};

/* Forget everything: the next counter below the reject limit is accepted. */
void dp_replay_init(struct dp_replay *r);
/* 1 if counter is accepted (and now recorded as seen), 0 if it is a replay,
 * too old, at or above the reject limit, or r is NULL. O(1), except that a
 * jump forward clears the skipped words (at most DP_REPLAY_BITMAP_WORDS). */
int dp_replay_check(struct dp_replay *r, uint64_t counter);

/* ---- Allowed IPs: longest-prefix match from an address to a peer id ----
 *
 * One table holds IPv4 and IPv6 prefixes, each family in its own
 * path-compressed binary trie; lookup walks at most one node per prefix
 * length and never allocates. Addresses are in network byte order: 4 bytes
 * for DP_FAMILY_IPV4, 16 for DP_FAMILY_IPV6. Prefixes are stored with the
 * host bits cleared, so 10.1.2.3/8 and 10.0.0.0/8 are the same prefix.
 *
 * Concurrency: one writer and any number of readers.
 * - Writer calls (new, free, insert, remove, remove_peer, count, nodes,
 *   list_peer, reclaim) must be serialised by the caller, e.g. with one
 *   lock per table in the control plane. Lookups from the writer's thread
 *   are always safe.
 * - Readers (worker threads) call only dp_allowedips_lookup(_batch) and the
 *   dp_allowedips_reader_* calls, and take no lock. A lookup concurrent
 *   with a change sees the table either before or after each single-prefix
 *   change, never a broken trie: the writer builds new nodes fully and then
 *   publishes them with one release store. A remove_peer is a sequence of
 *   single-prefix removals; a concurrent lookup may see some of them done
 *   and others not.
 * - Memory of unlinked nodes is reclaimed by quiescent states (QSBR, the
 *   scheme of liburcu-qsbr, implemented here in a few lines): each reader
 *   thread registers a slot, and between bursts, when it holds no pointer
 *   into the table, calls dp_allowedips_reader_quiescent. A node unlinked by
 *   the writer is freed (by the writer's later calls, or by
 *   dp_allowedips_reclaim) only once every online reader has passed a
 *   quiescent state since. A reader that stops looking up for a while (a
 *   worker going to sleep in poll) goes offline so that it does not hold
 *   back reclamation. A registered reader that never reports a quiescent
 *   state keeps every later unlinked node alive (memory grows; nothing
 *   breaks). With no reader online, nodes are freed at once: a thread that
 *   looks up without an online slot is safe only while no writer call
 *   runs.
 * This scheme is home-made and is tested single-threaded plus a stress test
 * with Python threads (which run lookups in parallel, as cffi releases the
 * GIL); liburcu would be the drop-in if we ever need more.
 */
#define DP_FAMILY_IPV4 4
#define DP_FAMILY_IPV6 6
#define DP_PEER_NONE 0xffffffff
#define DP_ALLOWEDIPS_MAX_READERS 64

struct dp_allowedips;

/* One prefix as listed by dp_allowedips_list_peer. */
struct dp_allowedips_entry {
    uint8_t addr[16]; /* network byte order, host bits zero; IPv4 uses 4 */
    uint8_t family;   /* DP_FAMILY_IPV4 or DP_FAMILY_IPV6 */
    uint8_t cidr;
};

/* An empty table, or NULL if out of memory. The caller owns it and frees it
 * with dp_allowedips_free once no reader uses it any more. */
struct dp_allowedips *dp_allowedips_new(void);
void dp_allowedips_free(struct dp_allowedips *t);

/* Map prefix addr/cidr to peer_id; an existing identical prefix changes
 * owner (and moves to the end of the new owner's list, as in WireGuard).
 * cidr is 0..32 for IPv4 and 0..128 for IPv6. Returns 0 or -error. */
int dp_allowedips_insert(struct dp_allowedips *t, int family, const uint8_t *addr,
                         int cidr, uint32_t peer_id);
/* Remove exactly the prefix addr/cidr: 1 if it was there, 0 if not, or
 * -error. */
int dp_allowedips_remove(struct dp_allowedips *t, int family, const uint8_t *addr,
                         int cidr);
/* Remove every prefix of peer_id; returns how many, or -error. */
int64_t dp_allowedips_remove_peer(struct dp_allowedips *t, uint32_t peer_id);

/* The peer owning the longest prefix that contains addr, or DP_PEER_NONE
 * if none does (or t or addr is NULL, or family is unknown). Reads 4 or 16
 * bytes at addr. Reader-safe, lock-free, allocation-free. */
uint32_t dp_allowedips_lookup(const struct dp_allowedips *t, int family,
                              const uint8_t *addr);

/* The same for n addresses of one family: peers[i] receives the lookup of
 * addrs[i] (DP_PEER_NONE for a NULL addrs[i]). Returns 0, or -error (then
 * peers is untouched). Reader-safe like dp_allowedips_lookup. */
int dp_allowedips_lookup_batch(const struct dp_allowedips *t, int family,
                               const uint8_t *const *addrs, uint32_t *peers, size_t n);

/* Number of prefixes of one family, or of both with family 0; -error. */
int64_t dp_allowedips_count(const struct dp_allowedips *t, int family);
/* Trie nodes in use (prefixes plus the branch nodes where prefixes
 * diverge; never more than twice the prefixes), for memory metrics. */
int64_t dp_allowedips_nodes(const struct dp_allowedips *t);
/* Write up to max of peer_id's prefixes to out, in the order they were
 * (last) inserted; returns how many the peer has (which may be more than
 * max: call again with a bigger buffer), or -error. out may be NULL when
 * max is 0. */
int64_t dp_allowedips_list_peer(const struct dp_allowedips *t, uint32_t peer_id,
                                struct dp_allowedips_entry *out, size_t max);

/* Reader side of the reclamation scheme. register returns a slot (online
 * from now) or -error; the other calls take that slot and are no-ops for a
 * bad one. Each slot belongs to one thread. */
int dp_allowedips_reader_register(struct dp_allowedips *t);
void dp_allowedips_reader_unregister(struct dp_allowedips *t, int slot);
/* "I hold no pointer into the table now." Cheap: two loads, one store
 * (plus a fence if the slot was offline). */
void dp_allowedips_reader_quiescent(struct dp_allowedips *t, int slot);
void dp_allowedips_reader_offline(struct dp_allowedips *t, int slot);
void dp_allowedips_reader_online(struct dp_allowedips *t, int slot);

/* Writer: free the unlinked nodes every online reader is done with; returns
 * how many are still waiting. Insert and remove also do this. */
int64_t dp_allowedips_reclaim(struct dp_allowedips *t);

#endif
