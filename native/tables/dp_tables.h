/* dataplane per-packet tables: the anti-replay window of a receiving
 * keypair, the receiver index table and the allowed-IPs longest-prefix-match
 * table.
 *
 * This header is also the cffi cdef: keep it to plain declarations and
 * integer #defines (the build strips the include guard and #include lines).
 * It is self-contained: only <stdint.h> and <stddef.h> types.
 *
 * Error codes are returned negated: -DP_TABLES_EINVAL for a bad argument
 * (NULL pointer, unknown family, prefix length too long, DP_PEER_NONE as an
 * owner), -DP_TABLES_ENOMEM when an allocation failed (the table is then
 * unchanged), -DP_TABLES_ENOSPC when every reader slot is taken (or the
 * receiver index table is full), -DP_TABLES_EEXIST and -DP_TABLES_ENOENT
 * for an index that is there already or is not. They are errno values.
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
 * A ring of 64-bit words, one bit per counter; its size in bits is chosen
 * per window (a power of two, DP_REPLAY_BITS_MIN .. DP_REPLAY_BITS_MAX;
 * the Linux kernel and wireguard-go use 8192, our default). One word is
 * kept spare, so that clearing the word a new highest counter moves into
 * never forgets a counter still inside the window: a counter is accepted
 * when it is below DP_REPLAY_REJECT_AFTER_MESSAGES, was not accepted
 * before, and is at most `bits - 64` (the window) below the highest counter
 * accepted so far (anything above the highest is new). A smaller ring
 * costs less memory per keypair (bits / 8 bytes) and tolerates less
 * reordering.
 *
 * struct dp_replay ends in a flexible array: allocate dp_replay_size(bits)
 * bytes (8-byte aligned) and dp_replay_init them.
 *
 * No locking inside: each struct dp_replay has a single writer, the worker
 * that decrypts for that keypair. Callers that share one between threads
 * must serialise dp_replay_check themselves.
 */
#define DP_REPLAY_WORD_BITS 64
#define DP_REPLAY_BITS_MIN 1024
#define DP_REPLAY_BITS_MAX 8192
#define DP_REPLAY_BITS_DEFAULT 8192
/* WireGuard's REJECT_AFTER_MESSAGES, 2^64 - 2^13 - 1: counters at or above
 * it are never accepted (whitepaper section 6.1), whatever the window. */
#define DP_REPLAY_REJECT_AFTER_MESSAGES 0xffffffffffffdfff

struct dp_replay {
    uint64_t counter; /* highest accepted counter + 1; 0 before the first */
    uint32_t words;   /* ring length: bits / 64 */
    uint32_t reserved;
    uint64_t bitmap[];
};

/* Bytes of a window of `bits` (a power of two in DP_REPLAY_BITS_MIN ..
 * DP_REPLAY_BITS_MAX), or 0 if bits is not one. */
size_t dp_replay_size(uint32_t bits);
/* How far below the highest accepted counter a counter may still be
 * accepted: bits - 64; 0 for bad bits. */
uint64_t dp_replay_window(uint32_t bits);
/* Size r for `bits` and forget everything: the next counter below the
 * reject limit is accepted. 0, or -DP_TABLES_EINVAL for bad bits or NULL. */
int dp_replay_init(struct dp_replay *r, uint32_t bits);
/* Forget everything, keeping the size. */
void dp_replay_reset(struct dp_replay *r);
/* 1 if counter is accepted (and now recorded as seen), 0 if it is a replay,
 * too old, at or above the reject limit, or r is NULL. O(1), except that a
 * jump forward clears the skipped words (at most the ring's length). */
int dp_replay_check(struct dp_replay *r, uint64_t counter);

/* ---- Receiver index table: a 32-bit index to a 32-bit value ----
 *
 * WireGuard's receiver indices are chosen by whoever runs the handshake:
 * us (at random), or a control plane that pushes sessions with indices of
 * its own. Any index but 0 can be stored. Open addressing with linear
 * probing in a power-of-two array of 64-bit entries (index and value in
 * one word, so a reader never sees one without the other); removal leaves
 * a tombstone.
 *
 * Bounds: at most half of the entries are in use (-DP_TABLES_ENOSPC
 * beyond), no stored index is more than DP_INDEX_PROBE_LIMIT entries from
 * its home, and a lookup stops after the longest probe any insert into
 * the current array needed (so a miss costs as much as the worst hit,
 * never a walk over a long run of tombstones). When tombstones and entries
 * together pass 5/8 of the array, or an insert would go past the probe
 * limit, the writer rebuilds the array without tombstones under a fresh
 * hash seed and publishes it with one release store.
 *
 * Concurrency: one writer (calls other than lookup are serialised by the
 * caller) and lock-free readers (lookup). A lookup concurrent with a change
 * sees the table before or after it. A replaced array is freed once the
 * readers are done with it: the caller's reclamation scheme says when,
 * through struct dp_index_reclaim (retire returns an epoch for the array
 * just replaced; passed says whether every reader has gone through a
 * quiescent state since that epoch). Without it, replaced arrays are freed
 * at once, which is safe only when no lookup runs concurrently.
 */
#define DP_INDEX_LOG2_MIN 4
#define DP_INDEX_LOG2_MAX 24
#define DP_INDEX_PROBE_LIMIT 128
/* Values are 1 .. DP_INDEX_VALUE_MAX; lookup returns 0 for "absent". */
#define DP_INDEX_VALUE_MAX 0xfffffffe
#define DP_TABLES_EEXIST 17
#define DP_TABLES_ENOENT 2

struct dp_index_table;

struct dp_index_reclaim {
    uint64_t (*retire)(void *ctx);
    int (*passed)(void *ctx, uint64_t epoch);
    void *ctx;
};

/* An empty table of 2^log2 entries (DP_INDEX_LOG2_MIN .. DP_INDEX_LOG2_MAX)
 * holding up to half as many indices; NULL if log2 is out of range or out
 * of memory. reclaim may be NULL (see above); it is copied. */
struct dp_index_table *dp_index_table_new(uint32_t log2, const struct dp_index_reclaim *reclaim);
/* Free it and every replaced array, once no reader uses it any more. */
void dp_index_table_free(struct dp_index_table *t);

/* Store index -> value. 0, -DP_TABLES_EINVAL (index 0, value 0 or above
 * DP_INDEX_VALUE_MAX), -DP_TABLES_EEXIST (the index is there already),
 * -DP_TABLES_ENOSPC (half full, or no place within the probe limit even
 * after a rebuild), -DP_TABLES_ENOMEM (a rebuild could not allocate). */
int dp_index_table_insert(struct dp_index_table *t, uint32_t index, uint32_t value);
/* Change the value of a stored index if it is `expected` (0: any value).
 * 0 or -DP_TABLES_ENOENT. */
int dp_index_table_replace(struct dp_index_table *t, uint32_t index, uint32_t expected,
                           uint32_t value);
/* Remove index if its value is `expected` (0: any). 0 or -DP_TABLES_ENOENT. */
int dp_index_table_remove(struct dp_index_table *t, uint32_t index, uint32_t expected);
/* The value stored for index, or 0. Reader-safe, lock-free, at most
 * DP_INDEX_PROBE_LIMIT + 1 entries read. */
uint32_t dp_index_table_lookup(const struct dp_index_table *t, uint32_t index);

/* Free replaced arrays the readers are done with; returns how many wait. */
int dp_index_table_reclaim(struct dp_index_table *t);

struct dp_index_table_stats {
    uint32_t used;       /* indices stored */
    uint32_t capacity;   /* indices it can hold: half the entries */
    uint32_t entries;    /* the array's length */
    uint32_t tombstones;
    uint32_t max_probe;  /* longest probe of the current array: what a miss costs */
    uint32_t rebuilds;   /* since the table was made */
    uint64_t bytes;      /* the table, its array and arrays awaiting reclamation */
};
void dp_index_table_stats(const struct dp_index_table *t, struct dp_index_table_stats *out);

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
/* Bytes the table allocated: nodes (also those awaiting reclamation), the
 * per-peer index and the table itself. */
int64_t dp_allowedips_bytes(const struct dp_allowedips *t);
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
