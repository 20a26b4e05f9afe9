/* Allowed IPs: longest-prefix match from an inner address to a peer id.
 *
 * Each family is a path-compressed binary trie. A node is either a prefix
 * (peer != DP_PEER_NONE) with zero, one or two children, or a branch node
 * (peer == DP_PEER_NONE) with exactly two children, made where two prefixes
 * diverge. Every node's key has the bits beyond its cidr cleared, and every
 * node below it shares its first cidr bits, so a lookup checks one node per
 * level and picks the child by the query's bit at that node's cidr.
 *
 * One writer, lock-free readers (see dp_tables.h): the writer never changes
 * a published node's key or cidr; it publishes with release stores, readers
 * follow pointers with acquire loads, and unlinked nodes wait in a limbo
 * list until every online reader has passed a quiescent state (QSBR).
 */
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>

#include "dp_tables.h"

#define CACHE_LINE 64

struct node {
    /* What lookups read. Only peer and child change after publication. */
    struct node *_Atomic child[2];
    uint64_t key[2]; /* the address as two big-endian-read words, host bits 0 */
    _Atomic uint32_t peer;
    uint8_t cidr;
    uint8_t family; /* DP_FAMILY_IPV4 or DP_FAMILY_IPV6 */
    /* Writer only. */
    struct node *parent;
    union {
        struct {
            struct node *prev, *next;
        } owned; /* the peer's list of prefixes, while peer != DP_PEER_NONE */
        struct {
            struct node *next;
            uint64_t epoch;
        } retired; /* the limbo list, once unlinked */
    };
};

/* Writer-side index from a peer id to its prefixes, so that removing or
 * listing a peer touches only its own nodes. Open addressing with linear
 * probing; peer_id == DP_PEER_NONE marks an empty slot. */
struct owner {
    uint32_t peer_id;
    uint32_t count;
    struct node *head, *tail;
};

struct owner_map {
    struct owner *slots;
    size_t cap; /* 0 or a power of two */
    size_t used;
};

struct reader_slot {
    /* 0: offline. Otherwise the epoch this reader saw at its last quiescent
     * state (or when it came online). */
    _Alignas(CACHE_LINE) _Atomic uint64_t seen;
    atomic_int claimed;
};

struct dp_allowedips {
    struct reader_slot readers[DP_ALLOWEDIPS_MAX_READERS];
    _Alignas(CACHE_LINE) _Atomic uint64_t epoch; /* starts at 1, only grows */
    struct node *_Atomic root[2]; /* [0] IPv4, [1] IPv6 */
    int64_t count[2];
    int64_t nodes;
    struct owner_map owners;
    struct node *limbo_head, *limbo_tail;
    int64_t limbo_len;
    int retired_this_call;
};

/* ---- keys ---- */

static int family_bits(int family, int *index)
{
    if (family == DP_FAMILY_IPV4) {
        *index = 0;
        return 32;
    }
    if (family == DP_FAMILY_IPV6) {
        *index = 1;
        return 128;
    }
    return -1;
}

static inline uint64_t load_be64(const uint8_t *p)
{
    uint64_t v = 0;
    for (int i = 0; i < 8; i++)
        v = v << 8 | p[i];
    return v;
}

static inline void store_be64(uint8_t *p, uint64_t v)
{
    for (int i = 7; i >= 0; i--, v >>= 8)
        p[i] = (uint8_t)v;
}

static inline void key_from_addr(uint64_t key[2], int bits, const uint8_t *addr)
{
    if (bits == 32) {
        key[0] = (uint64_t)addr[0] << 56 | (uint64_t)addr[1] << 48 |
                 (uint64_t)addr[2] << 40 | (uint64_t)addr[3] << 32;
        key[1] = 0;
    } else {
        key[0] = load_be64(addr);
        key[1] = load_be64(addr + 8);
    }
}

/* Clear the bits at positions >= cidr (position 0 is the first bit on the
 * wire). */
static void key_mask(uint64_t key[2], unsigned cidr)
{
    for (unsigned w = 0; w < 2; w++) {
        unsigned keep = cidr > 64 * w ? cidr - 64 * w : 0;
        if (keep == 0)
            key[w] = 0;
        else if (keep < 64)
            key[w] &= ~(uint64_t)0 << (64 - keep);
    }
}

/* How many leading bits a and b share (128 if equal). */
static inline unsigned common_bits(const uint64_t a[2], const uint64_t b[2])
{
    uint64_t x = a[0] ^ b[0];
    if (x)
        return (unsigned)__builtin_clzll(x);
    x = a[1] ^ b[1];
    return x ? 64 + (unsigned)__builtin_clzll(x) : 128;
}

static inline unsigned bit_at(const uint64_t key[2], unsigned pos)
{
    return (unsigned)(key[pos >> 6] >> (63 - (pos & 63))) & 1;
}

/* The node n holds key's prefix: key agrees with n on n's first cidr bits. */
static inline int node_covers(const struct node *n, const uint64_t key[2])
{
    return common_bits(n->key, key) >= n->cidr;
}

/* ---- atomics: readers acquire, the writer publishes with release ---- */

static inline struct node *reader_load(struct node *_Atomic const *link)
{
    return atomic_load_explicit(link, memory_order_acquire);
}

/* The writer is the only one storing these, so it may read them relaxed. */
static inline struct node *writer_load(struct node *_Atomic const *link)
{
    return atomic_load_explicit(link, memory_order_relaxed);
}

static inline void publish(struct node *_Atomic *link, struct node *n)
{
    atomic_store_explicit(link, n, memory_order_release);
}

static inline uint32_t node_peer(const struct node *n)
{
    return atomic_load_explicit(&n->peer, memory_order_relaxed);
}

/* The link (in the parent, or the root) that points at n. */
static struct node *_Atomic *link_to(struct dp_allowedips *t, int f, struct node *n)
{
    struct node *p = n->parent;
    if (!p)
        return &t->root[f];
    return &p->child[writer_load(&p->child[1]) == n];
}

/* ---- owner map ---- */

static inline size_t owner_home(uint32_t id, size_t cap)
{
    id ^= id >> 16;
    id *= 0x7feb352du;
    id ^= id >> 15;
    id *= 0x846ca68bu;
    id ^= id >> 16;
    return id & (cap - 1);
}

static struct owner *owner_find(const struct owner_map *m, uint32_t id)
{
    if (!m->cap)
        return NULL;
    for (size_t i = owner_home(id, m->cap);; i = (i + 1) & (m->cap - 1)) {
        if (m->slots[i].peer_id == id)
            return &m->slots[i];
        if (m->slots[i].peer_id == DP_PEER_NONE)
            return NULL;
    }
}

static struct owner *owner_place(struct owner *slots, size_t cap, uint32_t id)
{
    size_t i = owner_home(id, cap);
    while (slots[i].peer_id != DP_PEER_NONE)
        i = (i + 1) & (cap - 1);
    slots[i].peer_id = id;
    return &slots[i];
}

/* The entry of id, created empty if missing; NULL if out of memory. May
 * move every entry: do not hold another struct owner * across it. */
static struct owner *owner_get(struct owner_map *m, uint32_t id)
{
    struct owner *o = owner_find(m, id);
    if (o)
        return o;
    if ((m->used + 1) * 2 > m->cap) {
        size_t cap = m->cap ? m->cap * 2 : 16;
        struct owner *slots = malloc(cap * sizeof(*slots));
        if (!slots)
            return NULL;
        for (size_t i = 0; i < cap; i++)
            slots[i] = (struct owner){.peer_id = DP_PEER_NONE};
        for (size_t i = 0; i < m->cap; i++)
            if (m->slots[i].peer_id != DP_PEER_NONE)
                *owner_place(slots, cap, m->slots[i].peer_id) = m->slots[i];
        free(m->slots);
        m->slots = slots;
        m->cap = cap;
    }
    m->used++;
    o = owner_place(m->slots, m->cap, id);
    *o = (struct owner){.peer_id = id};
    return o;
}

/* Remove an entry, shifting later entries of its probe run back so that
 * lookups need no tombstones. */
static void owner_drop(struct owner_map *m, struct owner *o)
{
    size_t mask = m->cap - 1;
    size_t hole = (size_t)(o - m->slots);
    m->used--;
    for (;;) {
        m->slots[hole].peer_id = DP_PEER_NONE;
        size_t j = hole;
        for (;;) {
            j = (j + 1) & mask;
            if (m->slots[j].peer_id == DP_PEER_NONE)
                return;
            size_t home = owner_home(m->slots[j].peer_id, m->cap);
            /* j may fill the hole unless its home lies cyclically in
             * (hole, j]. */
            int home_after_hole = hole <= j ? (home > hole && home <= j)
                                            : (home > hole || home <= j);
            if (!home_after_hole) {
                m->slots[hole] = m->slots[j];
                hole = j;
                break;
            }
        }
    }
}

static void owner_append(struct owner *o, struct node *n)
{
    n->owned.next = NULL;
    n->owned.prev = o->tail;
    if (o->tail)
        o->tail->owned.next = n;
    else
        o->head = n;
    o->tail = n;
    o->count++;
}

static void owner_unlink(struct owner *o, struct node *n)
{
    if (n->owned.prev)
        n->owned.prev->owned.next = n->owned.next;
    else
        o->head = n->owned.next;
    if (n->owned.next)
        n->owned.next->owned.prev = n->owned.prev;
    else
        o->tail = n->owned.prev;
    o->count--;
}

/* ---- reclamation ---- */

static void node_destroy(struct node *n)
{
    /* Poison first, so that a reader wrongly still holding n fails loudly
     * (non-canonical pointers) rather than quietly; volatile so that the
     * stores survive the free. */
    volatile uint8_t *p = (volatile uint8_t *)n;
    for (size_t i = 0; i < sizeof(*n); i++)
        p[i] = 0x5a;
    free(n);
}

static void retire(struct dp_allowedips *t, struct node *n)
{
    n->retired.next = NULL;
    n->retired.epoch = atomic_load_explicit(&t->epoch, memory_order_relaxed);
    if (t->limbo_tail)
        t->limbo_tail->retired.next = n;
    else
        t->limbo_head = n;
    t->limbo_tail = n;
    t->limbo_len++;
    t->nodes--;
    t->retired_this_call = 1;
}

int64_t dp_allowedips_reclaim(struct dp_allowedips *t)
{
    if (!t)
        return -DP_TABLES_EINVAL;
    if (!t->limbo_head)
        return 0;
    /* Pairs with the fence in reader_online: either that reader sees our
     * unlinks, or we see it online. */
    atomic_thread_fence(memory_order_seq_cst);
    uint64_t oldest = UINT64_MAX;
    for (int i = 0; i < DP_ALLOWEDIPS_MAX_READERS; i++) {
        uint64_t seen = atomic_load_explicit(&t->readers[i].seen, memory_order_acquire);
        if (seen && seen < oldest)
            oldest = seen;
    }
    /* A node retired at epoch E is unreachable for a reader that has seen
     * an epoch after E. Epochs along the limbo list only grow. */
    while (t->limbo_head && t->limbo_head->retired.epoch < oldest) {
        struct node *n = t->limbo_head;
        t->limbo_head = n->retired.next;
        node_destroy(n);
        t->limbo_len--;
    }
    if (!t->limbo_head)
        t->limbo_tail = NULL;
    return t->limbo_len;
}

/* End of every writer call that may have unlinked nodes. */
static void writer_done(struct dp_allowedips *t)
{
    if (t->retired_this_call) {
        t->retired_this_call = 0;
        atomic_fetch_add_explicit(&t->epoch, 1, memory_order_seq_cst);
    }
    dp_allowedips_reclaim(t);
}

static struct reader_slot *reader_slot(struct dp_allowedips *t, int slot)
{
    if (!t || slot < 0 || slot >= DP_ALLOWEDIPS_MAX_READERS)
        return NULL;
    return &t->readers[slot];
}

void dp_allowedips_reader_online(struct dp_allowedips *t, int slot)
{
    struct reader_slot *r = reader_slot(t, slot);
    if (!r)
        return;
    atomic_store_explicit(&r->seen, atomic_load_explicit(&t->epoch, memory_order_acquire),
                          memory_order_seq_cst);
    atomic_thread_fence(memory_order_seq_cst);
}

void dp_allowedips_reader_offline(struct dp_allowedips *t, int slot)
{
    struct reader_slot *r = reader_slot(t, slot);
    if (r)
        atomic_store_explicit(&r->seen, 0, memory_order_release);
}

void dp_allowedips_reader_quiescent(struct dp_allowedips *t, int slot)
{
    struct reader_slot *r = reader_slot(t, slot);
    if (!r)
        return;
    if (!atomic_load_explicit(&r->seen, memory_order_relaxed)) {
        dp_allowedips_reader_online(t, slot); /* was offline: needs the fence */
        return;
    }
    /* Reading the epoch with acquire orders our next lookups after every
     * unlink the writer made before bumping it; the release store orders our
     * past lookups before the writer's frees. */
    atomic_store_explicit(&r->seen, atomic_load_explicit(&t->epoch, memory_order_acquire),
                          memory_order_release);
}

int dp_allowedips_reader_register(struct dp_allowedips *t)
{
    if (!t)
        return -DP_TABLES_EINVAL;
    for (int i = 0; i < DP_ALLOWEDIPS_MAX_READERS; i++) {
        int expected = 0;
        if (atomic_compare_exchange_strong(&t->readers[i].claimed, &expected, 1)) {
            dp_allowedips_reader_online(t, i);
            return i;
        }
    }
    return -DP_TABLES_ENOSPC;
}

void dp_allowedips_reader_unregister(struct dp_allowedips *t, int slot)
{
    struct reader_slot *r = reader_slot(t, slot);
    if (!r)
        return;
    atomic_store_explicit(&r->seen, 0, memory_order_release);
    atomic_store_explicit(&r->claimed, 0, memory_order_release);
}

/* ---- table ---- */

struct dp_allowedips *dp_allowedips_new(void)
{
    struct dp_allowedips *t = aligned_alloc(_Alignof(struct dp_allowedips), sizeof(*t));
    if (!t)
        return NULL;
    memset(t, 0, sizeof(*t));
    atomic_init(&t->epoch, 1);
    for (int i = 0; i < DP_ALLOWEDIPS_MAX_READERS; i++) {
        atomic_init(&t->readers[i].seen, 0);
        atomic_init(&t->readers[i].claimed, 0);
    }
    atomic_init(&t->root[0], NULL);
    atomic_init(&t->root[1], NULL);
    return t;
}

static void free_subtree(struct node *n)
{
    if (!n)
        return;
    free_subtree(writer_load(&n->child[0]));
    free_subtree(writer_load(&n->child[1]));
    free(n);
}

void dp_allowedips_free(struct dp_allowedips *t)
{
    if (!t)
        return;
    free_subtree(writer_load(&t->root[0]));
    free_subtree(writer_load(&t->root[1]));
    while (t->limbo_head) {
        struct node *n = t->limbo_head;
        t->limbo_head = n->retired.next;
        free(n);
    }
    free(t->owners.slots);
    free(t);
}

static struct node *node_new(const uint64_t key[2], unsigned cidr, int family, uint32_t peer)
{
    struct node *n = malloc(sizeof(*n));
    if (!n)
        return NULL;
    memset(n, 0, sizeof(*n));
    atomic_init(&n->child[0], NULL);
    atomic_init(&n->child[1], NULL);
    n->key[0] = key[0];
    n->key[1] = key[1];
    key_mask(n->key, cidr);
    atomic_init(&n->peer, peer);
    n->cidr = (uint8_t)cidr;
    n->family = (uint8_t)family;
    return n;
}

/* Validate and canonicalise the arguments every prefix call takes. */
static int prefix_args(const struct dp_allowedips *t, int family, const uint8_t *addr,
                       int cidr, int *f, uint64_t key[2])
{
    if (!t || !addr)
        return -DP_TABLES_EINVAL;
    int bits = family_bits(family, f);
    if (bits < 0 || cidr < 0 || cidr > bits)
        return -DP_TABLES_EINVAL;
    key_from_addr(key, bits, addr);
    key_mask(key, (unsigned)cidr);
    return 0;
}

/* Give prefix node n (new, or already in the trie) to peer. Fails only if
 * the owner map cannot grow, and then changes nothing. */
static int set_owner(struct dp_allowedips *t, int f, struct node *n, uint32_t peer, int is_new)
{
    struct owner *to = owner_get(&t->owners, peer);
    if (!to)
        return -DP_TABLES_ENOMEM;
    uint32_t old = is_new ? DP_PEER_NONE : node_peer(n);
    if (old == DP_PEER_NONE) {
        t->count[f]++;
        owner_append(to, n);
    } else {
        /* Also for the same owner: the prefix moves to the end of the list,
         * as in WireGuard. */
        struct owner *from = owner_find(&t->owners, old);
        owner_unlink(from, n);
        owner_append(to, n);
        if (from->count == 0)
            owner_drop(&t->owners, from); /* moves entries: `to` is stale now */
    }
    atomic_store_explicit(&n->peer, peer, memory_order_relaxed);
    return 0;
}

int dp_allowedips_insert(struct dp_allowedips *t, int family, const uint8_t *addr,
                         int cidr, uint32_t peer_id)
{
    int f;
    uint64_t key[2];
    int err = prefix_args(t, family, addr, cidr, &f, key);
    if (err)
        return err;
    if (peer_id == DP_PEER_NONE)
        return -DP_TABLES_EINVAL;
    unsigned len = (unsigned)cidr;

    /* Walk down while the node is a prefix of ours (shorter or equal). */
    struct node *_Atomic *link = &t->root[f];
    struct node *parent = NULL;
    struct node *n = writer_load(link);
    while (n && n->cidr <= len && node_covers(n, key)) {
        if (n->cidr == len)
            return set_owner(t, f, n, peer_id, 0);
        parent = n;
        link = &n->child[bit_at(key, n->cidr)];
        n = writer_load(link);
    }

    /* n (if any) is not a prefix of ours. Either ours is a prefix of n
     * (they share len bits and n->cidr > len), or they diverge at bit
     * split, below both lengths, where a branch node goes. */
    unsigned split = n ? common_bits(n->key, key) : len;
    int diverge = split < len;
    struct node *fresh = node_new(key, len, family, peer_id);
    struct node *branch = NULL;
    if (fresh && diverge)
        branch = node_new(key, split, family, DP_PEER_NONE);
    if (!fresh || (diverge && !branch) ||
        set_owner(t, f, fresh, peer_id, 1) < 0) {
        free(fresh);
        free(branch);
        return -DP_TABLES_ENOMEM;
    }

    /* Build the new piece completely, then publish it with one store. */
    struct node *top = fresh;
    if (branch) {
        atomic_store_explicit(&branch->child[bit_at(key, split)], fresh, memory_order_relaxed);
        atomic_store_explicit(&branch->child[bit_at(n->key, split)], n, memory_order_relaxed);
        fresh->parent = branch;
        n->parent = branch;
        top = branch;
    } else if (n) {
        atomic_store_explicit(&fresh->child[bit_at(n->key, len)], n, memory_order_relaxed);
        n->parent = fresh;
    }
    top->parent = parent;
    publish(link, top);
    t->nodes += branch ? 2 : 1;
    writer_done(t);
    return 0;
}

/* Take away n's prefix (its owner list entry is already gone) and drop the
 * nodes that become useless. */
static void unlink_prefix(struct dp_allowedips *t, int f, struct node *n)
{
    atomic_store_explicit(&n->peer, DP_PEER_NONE, memory_order_relaxed);
    t->count[f]--;
    struct node *c0 = writer_load(&n->child[0]);
    struct node *c1 = writer_load(&n->child[1]);
    if (c0 && c1)
        return; /* still needed as a branch node */

    struct node *only = c0 ? c0 : c1;
    struct node *parent = n->parent;
    if (only)
        only->parent = parent;
    publish(link_to(t, f, n), only);
    retire(t, n);

    /* A branch node left with one child is spliced out too. */
    if (!only && parent && node_peer(parent) == DP_PEER_NONE) {
        struct node *other = writer_load(&parent->child[0]);
        if (!other)
            other = writer_load(&parent->child[1]);
        other->parent = parent->parent;
        publish(link_to(t, f, parent), other);
        retire(t, parent);
    }
}

static void remove_node(struct dp_allowedips *t, int f, struct node *n)
{
    struct owner *o = owner_find(&t->owners, node_peer(n));
    owner_unlink(o, n);
    if (o->count == 0)
        owner_drop(&t->owners, o);
    unlink_prefix(t, f, n);
}

int dp_allowedips_remove(struct dp_allowedips *t, int family, const uint8_t *addr, int cidr)
{
    int f;
    uint64_t key[2];
    int err = prefix_args(t, family, addr, cidr, &f, key);
    if (err)
        return err;
    unsigned len = (unsigned)cidr;
    struct node *n = writer_load(&t->root[f]);
    while (n && n->cidr < len && node_covers(n, key))
        n = writer_load(&n->child[bit_at(key, n->cidr)]);
    if (!n || n->cidr != len || !node_covers(n, key) || node_peer(n) == DP_PEER_NONE)
        return 0;
    remove_node(t, f, n);
    writer_done(t);
    return 1;
}

int64_t dp_allowedips_remove_peer(struct dp_allowedips *t, uint32_t peer_id)
{
    if (!t || peer_id == DP_PEER_NONE)
        return -DP_TABLES_EINVAL;
    struct owner *o = owner_find(&t->owners, peer_id);
    if (!o)
        return 0;
    struct node *n = o->head;
    int64_t removed = o->count;
    owner_drop(&t->owners, o);
    while (n) {
        struct node *next = n->owned.next;
        unlink_prefix(t, n->family == DP_FAMILY_IPV4 ? 0 : 1, n);
        n = next;
    }
    writer_done(t);
    return removed;
}

static inline uint32_t trie_lookup(const struct dp_allowedips *t, int f, int bits,
                                   const uint8_t *addr)
{
    uint64_t key[2];
    key_from_addr(key, bits, addr);

    uint32_t found = DP_PEER_NONE;
    const struct node *n = reader_load(&t->root[f]);
    while (n && node_covers(n, key)) {
        uint32_t peer = node_peer(n);
        if (peer != DP_PEER_NONE)
            found = peer;
        if (n->cidr == bits)
            break;
        n = reader_load(&n->child[bit_at(key, n->cidr)]);
    }
    return found;
}

uint32_t dp_allowedips_lookup(const struct dp_allowedips *t, int family, const uint8_t *addr)
{
    int f;
    int bits = family_bits(family, &f);
    if (__builtin_expect(!t || !addr || bits < 0, 0))
        return DP_PEER_NONE;
    return trie_lookup(t, f, bits, addr);
}

/* Up to BATCH_LANES lookups in lockstep, one trie level per round: the
 * node loads of different lanes do not depend on each other, so their
 * cache misses overlap instead of queueing one after another. */
#define BATCH_LANES 8

static void lookup_lanes(const struct dp_allowedips *t, int f, int bits,
                         const uint8_t *const *addrs, uint32_t *peers, size_t lanes)
{
    uint64_t key[BATCH_LANES][2];
    const struct node *at[BATCH_LANES];
    uint32_t found[BATCH_LANES];
    const struct node *root = reader_load(&t->root[f]);

    for (size_t l = 0; l < lanes; l++) {
        found[l] = DP_PEER_NONE;
        at[l] = addrs[l] ? root : NULL;
        if (addrs[l])
            key_from_addr(key[l], bits, addrs[l]);
    }
    for (int busy = 1; busy;) {
        busy = 0;
        for (size_t l = 0; l < lanes; l++) {
            const struct node *n = at[l];
            if (!n)
                continue;
            if (!node_covers(n, key[l])) {
                at[l] = NULL;
                continue;
            }
            uint32_t peer = node_peer(n);
            if (peer != DP_PEER_NONE)
                found[l] = peer;
            if (n->cidr == bits) {
                at[l] = NULL;
                continue;
            }
            at[l] = reader_load(&n->child[bit_at(key[l], n->cidr)]);
            if (at[l]) {
                __builtin_prefetch(at[l]);
                busy = 1;
            }
        }
    }
    for (size_t l = 0; l < lanes; l++)
        peers[l] = found[l];
}

int dp_allowedips_lookup_batch(const struct dp_allowedips *t, int family,
                               const uint8_t *const *addrs, uint32_t *peers, size_t n)
{
    int f;
    int bits = family_bits(family, &f);
    if (!t || bits < 0 || (n && (!addrs || !peers)))
        return -DP_TABLES_EINVAL;
    for (size_t i = 0; i < n; i += BATCH_LANES)
        lookup_lanes(t, f, bits, addrs + i, peers + i,
                     n - i < BATCH_LANES ? n - i : BATCH_LANES);
    return 0;
}

int64_t dp_allowedips_count(const struct dp_allowedips *t, int family)
{
    int f;
    if (!t)
        return -DP_TABLES_EINVAL;
    if (family == 0)
        return t->count[0] + t->count[1];
    if (family_bits(family, &f) < 0)
        return -DP_TABLES_EINVAL;
    return t->count[f];
}

int64_t dp_allowedips_nodes(const struct dp_allowedips *t)
{
    return t ? t->nodes : -DP_TABLES_EINVAL;
}

int64_t dp_allowedips_bytes(const struct dp_allowedips *t)
{
    if (!t)
        return -DP_TABLES_EINVAL;
    return (int64_t)sizeof(*t) + (t->nodes + t->limbo_len) * (int64_t)sizeof(struct node) +
           (int64_t)(t->owners.cap * sizeof(struct owner));
}

int64_t dp_allowedips_list_peer(const struct dp_allowedips *t, uint32_t peer_id,
                                struct dp_allowedips_entry *out, size_t max)
{
    if (!t || (!out && max))
        return -DP_TABLES_EINVAL;
    const struct owner *o = owner_find(&t->owners, peer_id);
    if (!o)
        return 0;
    size_t i = 0;
    for (const struct node *n = o->head; n && i < max; n = n->owned.next, i++) {
        struct dp_allowedips_entry *e = &out[i];
        memset(e, 0, sizeof(*e));
        uint8_t wide[16];
        store_be64(wide, n->key[0]);
        store_be64(wide + 8, n->key[1]);
        memcpy(e->addr, wide, n->family == DP_FAMILY_IPV4 ? 4 : 16);
        e->family = n->family;
        e->cidr = n->cidr;
    }
    return o->count;
}
