/* libFuzzer harness for the receiver index table (native/tables/indextable.c)
 * against a reference model written from its contract in dp_tables.h: a
 * plain array of (index, value) pairs, where insert refuses index 0 and
 * values 0 or above DP_INDEX_VALUE_MAX (EINVAL), a stored index (EEXIST)
 * and a table holding half its entries (ENOSPC); replace and remove act
 * only on a stored index whose value is `expected` (0: any), else ENOENT;
 * lookup is the stored value or 0.
 *
 * Checked after every operation, besides each return value: the lookup of
 * the operation's index, of a few stored and recently removed indices
 * (every stored index after a rebuild or a bulk operation, and at the end);
 * the stats: used is the model's count, capacity and entries the size,
 * entries plus tombstones at most 5/8 of the array, the longest probe at
 * most DP_INDEX_PROBE_LIMIT and growing only until a rebuild, a removal
 * leaving one tombstone, a rebuild leaving none, bytes the table plus one
 * array per replaced array not yet reclaimed. An allocation the harness
 * fails makes insert return ENOMEM with the table unchanged (its indices,
 * count, tombstones, longest probe and rebuilds). The reclaim hooks: retire is called once per rebuild; passed
 * is asked only about epochs retire handed out whose array still waits,
 * and once it says yes that array is freed (bytes) and never asked about
 * again; reclaim returns how many still wait; free frees the rest (leaks
 * are LeakSanitizer's). From inside the hooks, which run in the middle of
 * an insert or a reclaim, lookups play the concurrent reader: every index
 * reads as before or after the change in flight. The hooks are passed in a
 * struct that is overwritten after dp_index_table_new (it must be copied).
 *
 * Test scaffolding: the table seeds each array's hash from getrandom and
 * allocates arrays with aligned_alloc. The harness defines both (the
 * executable's definitions win over libc's) so that the seeds follow from
 * the input (a finding reproduces) and so that it can fail an allocation.
 * Knowing the seed, it inverts the table's hash (murmur3's finaliser,
 * copied from indextable.c) to make indices that share a home entry: two
 * pools of 128, one homed in the last four entries (runs wrap around to
 * entry 0), one anywhere. If the hash changes, the pools stop colliding
 * and the harness still checks everything, less sharply.
 *
 * Input: 4 header bytes, then 12-byte operations.
 *  header[0]: bits 0-2 the size, 2^(4 + n % 6) entries (16 .. 512); bit 3
 *    reclaim hooks (else NULL: replaced arrays are freed at once); bit 4
 *    every array gets the same seed (only up to 256 entries: there a run
 *    can never reach the probe limit, so ENOSPC means full whatever the
 *    seeds; with 512 entries the pools can build runs past the limit, and
 *    distinct seeds make the rebuild that follows succeed); bit 5 the first
 *    dp_index_table_new fails its allocation (must return NULL); bits 6-7
 *    where the epochs start.
 *  header[1]: the pools' home entries.  header[2..3]: the seeds.
 *  operation: kind, index source, value source, expected source, then two
 *    little-endian u32s (ix, vx) those draw from. Kinds (low 4 bits):
 *    insert, replace, remove, lookup, bulk insert of up to 64 pool indices,
 *    bulk remove of up to 64 stored ones, reclaim, readers passing a
 *    quiescent state, a full lookup sweep; bit 4 fails the next allocation.
 *    Indices: a pool index, a stored one, a recently removed one, 0 .. 15,
 *    near 2^32, or ix itself. Values: small, the edges (0, 1, the maximum
 *    and one above), vx, or the stored value (+1). Expected: 0, right,
 *    wrong, or vx.
 * Any difference aborts. */
#define _GNU_SOURCE
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>
#include <sys/syscall.h>
#include <unistd.h>

#include "dp_tables.h"

#define HEADER_BYTES 4
#define OP_BYTES 12
#define MAX_OPS 2048
#define BULK_MAX 64
#define LOG2_SIZES 6 /* DP_INDEX_LOG2_MIN .. + 5: 16 .. 512 entries */
#define LOG2_TOP (DP_INDEX_LOG2_MIN + LOG2_SIZES - 1)
#define LOG2_NO_PROBE_LIMIT 8 /* a run is at most 128 stored indices long */
#define MAX_STORED (1u << (LOG2_TOP - 1))
#define POOL_HALF 128
#define RECENT 8
#define SPOT_CHECKS 4
#define MAX_EPOCHS (MAX_OPS * BULK_MAX + 16) /* at most one rebuild per insert */

/* ---- scaffolding: seeds and allocation failures ---- */

static struct {
    int active;        /* seeds come from the input (inside one input's run) */
    uint64_t seed_state;
    int same_seed;
    uint32_t last_seed; /* the seed of the array made last: the current one */
    int fail_next_alloc;
    unsigned allocs_failed;
} env;

static uint32_t next_seed(void)
{
    uint64_t z = env.seed_state;

    if (!env.same_seed)
        env.seed_state += 0x9e3779b97f4a7c15ULL;
    z = (z ^ z >> 30) * 0xbf58476d1ce4e5b9ULL; /* splitmix64 */
    z = (z ^ z >> 27) * 0x94d049bb133111ebULL;
    return (uint32_t)(z ^ z >> 31);
}

ssize_t getrandom(void *buf, size_t len, unsigned int flags)
{
    uint32_t seed;

    if (!env.active)
        return syscall(SYS_getrandom, buf, len, flags);
    seed = next_seed();
    for (size_t i = 0; i < len; i += sizeof(seed))
        memcpy((uint8_t *)buf + i, &seed, len - i < sizeof(seed) ? len - i : sizeof(seed));
    env.last_seed = seed;
    return (ssize_t)len;
}

void *aligned_alloc(size_t align, size_t size)
{
    void *p;

    if (env.fail_next_alloc) {
        env.fail_next_alloc = 0;
        env.allocs_failed++;
        return NULL;
    }
    if (align < sizeof(void *))
        align = sizeof(void *);
    return posix_memalign(&p, align, size) ? NULL : p;
}

/* ---- the table's hash, and its inverse to aim indices at one entry ---- */

static uint32_t fmix(uint32_t h)
{
    h ^= h >> 16;
    h *= 0x85ebca6bu;
    h ^= h >> 13;
    h *= 0xc2b2ae35u;
    h ^= h >> 16;
    return h;
}

static uint32_t inverse_odd(uint32_t a) /* Newton: each step doubles the bits right */
{
    uint32_t x = a;

    for (int i = 0; i < 5; i++)
        x *= 2 - a * x;
    return x;
}

static uint32_t unfmix(uint32_t h)
{
    h ^= h >> 16;
    h *= inverse_odd(0xc2b2ae35u);
    h ^= h >> 13 ^ h >> 26;
    h *= inverse_odd(0x85ebca6bu);
    h ^= h >> 16;
    return h;
}

/* ---- the reference model ---- */

static struct {
    uint32_t log2, entries, capacity, bucket[2];
    uint32_t n, index[MAX_STORED], value[MAX_STORED];
    uint32_t recent[RECENT], recent_at, spot_at;
} m;

static int model_find(uint32_t index)
{
    for (uint32_t p = 0; p < m.n; p++)
        if (m.index[p] == index)
            return (int)p;
    return -1;
}

static uint32_t model_lookup(uint32_t index)
{
    int p = model_find(index);

    return p < 0 ? 0 : m.value[p];
}

/* Pool index `sel` (0 .. 255): its home under the current seed is one of
 * the two pool entries. */
static uint32_t pool_index(uint32_t sel)
{
    uint32_t h = m.bucket[sel & 1] | ((sel >> 1 & (POOL_HALF - 1)) + 1) << m.log2;

    return unfmix(h) ^ env.last_seed;
}

/* ---- the reclamation scheme the hooks stand for ---- */

static struct {
    int on;
    uint64_t base;       /* epoch of the first retired array */
    uint32_t retired;    /* arrays handed to retire: epochs base .. base + retired - 1 */
    uint32_t quiesced;   /* epochs below base + quiesced have passed */
    uint32_t waiting;    /* retired arrays not yet reported passed */
    uint32_t low;        /* no array below it waits */
    uint8_t waits[MAX_EPOCHS];
} rec;

static struct dp_index_table *table;
/* The change in flight, for lookups from inside the hooks. */
static struct {
    int on;
    uint32_t index, value; /* value 0: a removal */
} flight;

static void check_reader(void)
{
    for (uint32_t p = 0; p < m.n; p++) {
        uint32_t got = dp_index_table_lookup(table, m.index[p]);

        if (got != m.value[p] && !(flight.on && m.index[p] == flight.index && got == flight.value))
            abort();
    }
    if (flight.on && model_find(flight.index) < 0) {
        uint32_t got = dp_index_table_lookup(table, flight.index);

        if (got != 0 && got != flight.value)
            abort();
    }
}

static uint64_t hook_retire(void *ctx)
{
    if (ctx != &rec || !rec.on || rec.retired >= MAX_EPOCHS)
        abort();
    check_reader();
    rec.waits[rec.retired] = 1;
    rec.waiting++;
    return rec.base + rec.retired++;
}

static int hook_passed(void *ctx, uint64_t epoch)
{
    uint64_t k = epoch - rec.base;

    if (ctx != &rec || !rec.on || k >= rec.retired || !rec.waits[k])
        abort();
    check_reader();
    if (k >= rec.quiesced)
        return 0;
    rec.waits[k] = 0;
    rec.waiting--;
    return 1;
}

static uint64_t hook_wrong(void *ctx)
{
    (void)ctx;
    abort();
}

static int hook_wrong_passed(void *ctx, uint64_t epoch)
{
    (void)ctx;
    (void)epoch;
    abort();
}

/* ---- stats ---- */

enum change {
    SAME,      /* lookups, refused calls, replace, reclaim: no structural change */
    REFUSED,   /* an insert refused (it may have rebuilt before finding no room) */
    INSERTED,
    REMOVED,
    UNCHANGED, /* an insert that ran out of memory: everything as it was */
};

static struct dp_index_table_stats before;
static uint64_t bytes_empty, bytes_array; /* bytes_array: learnt from the first wait */

/* Checks the stats after a change; returns whether the array was rebuilt
 * (then the caller looks every index up). */
static int check_stats(enum change change)
{
    struct dp_index_table_stats st;
    int rebuilt;

    memset(&st, 0xa5, sizeof(st));
    dp_index_table_stats(table, &st);
    if (change == UNCHANGED && (st.used != before.used || st.tombstones != before.tombstones ||
                                st.max_probe != before.max_probe ||
                                st.rebuilds != before.rebuilds))
        abort();
    if (st.used != m.n || st.capacity != m.capacity || st.entries != m.entries ||
        (uint64_t)(st.used + st.tombstones) * 8 > (uint64_t)st.entries * 5 ||
        st.max_probe > DP_INDEX_PROBE_LIMIT || st.max_probe >= st.entries ||
        st.rebuilds < before.rebuilds || st.rebuilds != (rec.on ? rec.retired : st.rebuilds) ||
        (!rec.on && rec.retired))
        abort();
    rebuilt = st.rebuilds != before.rebuilds;
    if (!rebuilt && st.max_probe < before.max_probe)
        abort();
    switch (change) {
    case UNCHANGED: /* checked above; bytes below (it may have reclaimed) */
        break;
    case SAME:
        if (rebuilt || st.tombstones != before.tombstones || st.max_probe != before.max_probe)
            abort();
        break;
    case REFUSED:
        if (rebuilt ? st.tombstones != 0 : st.tombstones != before.tombstones)
            abort();
        break;
    case INSERTED:
        if (rebuilt ? st.tombstones != 0
                    : st.tombstones != before.tombstones && st.tombstones + 1 != before.tombstones)
            abort();
        break;
    case REMOVED:
        if (rebuilt || st.tombstones != before.tombstones + 1)
            abort();
        break;
    }
    if (rec.waiting && !bytes_array) {
        if ((st.bytes - bytes_empty) % rec.waiting)
            abort();
        bytes_array = (st.bytes - bytes_empty) / rec.waiting;
        if (bytes_array < (uint64_t)m.entries * 8 || bytes_array >= bytes_empty)
            abort();
    }
    if (st.bytes != bytes_empty + rec.waiting * bytes_array)
        abort();
    before = st;
    return rebuilt;
}

/* ---- operations ---- */

static void check_lookup(uint32_t index)
{
    if (dp_index_table_lookup(table, index) != model_lookup(index))
        abort();
}

static void sweep(void)
{
    for (uint32_t p = 0; p < m.n; p++)
        if (dp_index_table_lookup(table, m.index[p]) != m.value[p])
            abort();
    for (uint32_t k = 0; k < RECENT; k++)
        check_lookup(m.recent[k]);
}

static void spot_check(uint32_t index)
{
    check_lookup(index);
    for (uint32_t k = 0; k < SPOT_CHECKS && m.n; k++)
        check_lookup(m.index[m.spot_at++ % m.n]);
    check_lookup(m.recent[m.spot_at % RECENT]);
}

static int do_insert(uint32_t index, uint32_t value, int fail)
{
    unsigned failed = env.allocs_failed;
    int rc, want;

    flight.on = 1, flight.index = index, flight.value = value;
    env.fail_next_alloc = fail;
    rc = dp_index_table_insert(table, index, value);
    env.fail_next_alloc = 0;
    flight.on = 0;
    if (env.allocs_failed != failed) {
        if (rc != -DP_TABLES_ENOMEM)
            abort();
        check_stats(UNCHANGED);
        return 1; /* and every index looked up */
    }
    if (index == 0 || value == 0 || value > DP_INDEX_VALUE_MAX)
        want = -DP_TABLES_EINVAL;
    else if (model_find(index) >= 0)
        want = -DP_TABLES_EEXIST;
    else if (m.n >= m.capacity)
        want = -DP_TABLES_ENOSPC;
    else
        want = 0;
    if (rc != want)
        abort();
    if (rc)
        return check_stats(REFUSED);
    m.index[m.n] = index;
    m.value[m.n++] = value;
    return check_stats(INSERTED);
}

static int do_replace(uint32_t index, uint32_t expected, uint32_t value)
{
    int p = model_find(index), rc;

    flight.on = 1, flight.index = index, flight.value = value;
    rc = dp_index_table_replace(table, index, expected, value);
    flight.on = 0;
    if (value == 0 || value > DP_INDEX_VALUE_MAX) {
        if (rc != -DP_TABLES_EINVAL)
            abort();
    } else if (p >= 0 && (expected == 0 || expected == m.value[p])) {
        if (rc != 0)
            abort();
        m.value[p] = value;
    } else if (rc != -DP_TABLES_ENOENT) {
        abort();
    }
    return check_stats(SAME);
}

static int do_remove(uint32_t index, uint32_t expected)
{
    int p = model_find(index), rc;

    flight.on = 1, flight.index = index, flight.value = 0;
    rc = dp_index_table_remove(table, index, expected);
    flight.on = 0;
    if (p < 0 || (expected && expected != m.value[p])) {
        if (rc != -DP_TABLES_ENOENT)
            abort();
        return check_stats(SAME);
    }
    if (rc != 0)
        abort();
    m.index[p] = m.index[--m.n];
    m.value[p] = m.value[m.n];
    m.recent[m.recent_at++ % RECENT] = index;
    return check_stats(REMOVED);
}

static void do_reclaim(void)
{
    int rc = dp_index_table_reclaim(table);

    while (rec.low < rec.quiesced && !rec.waits[rec.low])
        rec.low++;
    /* every array whose epoch has passed is freed; the rest wait */
    if (rc != (int)rec.waiting || rec.low < rec.quiesced)
        abort();
    check_stats(SAME);
}

static uint32_t pick_index(uint8_t how, uint32_t ix)
{
    switch (how & 7) {
    case 0:
    case 1:
    case 2: /* sharing a home entry with other pool indices */
        return pool_index(ix & 0xff);
    case 3: /* stored */
        return m.n ? m.index[ix % m.n] : pool_index(ix & 0xff);
    case 4: /* removed lately (0 before any removal) */
        return m.recent[ix % RECENT];
    case 5: /* 0 .. 15 */
        return ix & 15;
    case 6: /* the top of the range */
        return UINT32_MAX - (ix & 3);
    default:
        return ix;
    }
}

static uint32_t pick_value(uint8_t how, uint32_t vx, uint32_t index)
{
    static const uint32_t edges[4] = {0, 1, DP_INDEX_VALUE_MAX, DP_INDEX_VALUE_MAX + 1u};
    int p;

    switch (how & 3) {
    case 0:
        return 1 + (vx & 7);
    case 1:
        return edges[vx & 3];
    case 2:
        return vx;
    default: /* the stored value, or one more */
        p = model_find(index);
        return (p < 0 ? 1 : m.value[p]) + (vx & 1);
    }
}

static uint32_t pick_expected(uint8_t how, uint32_t vx, uint32_t index)
{
    uint32_t current = model_lookup(index);

    switch (how & 3) {
    case 0:
        return 0; /* any value */
    case 1:
        return current ? current : 1 + (vx & 7);
    case 2:
        return current + 1 + (vx & 3); /* wrong (0 only past the top: any) */
    default:
        return vx;
    }
}

static void once(void)
{
    static int done;
    struct dp_index_table_stats st = {0};

    if (done)
        return;
    done = 1;
    for (uint32_t h = 0; h < 1000; h++)
        if (fmix(unfmix(h * 0x9e3779b9u)) != h * 0x9e3779b9u)
            abort();
    if (dp_index_table_new(DP_INDEX_LOG2_MIN - 1, NULL) || dp_index_table_new(DP_INDEX_LOG2_MAX + 1, NULL) ||
        dp_index_table_insert(NULL, 1, 1) != -DP_TABLES_EINVAL ||
        dp_index_table_remove(NULL, 1, 0) != -DP_TABLES_EINVAL ||
        dp_index_table_replace(NULL, 1, 0, 1) != -DP_TABLES_EINVAL ||
        dp_index_table_lookup(NULL, 1) != 0 || dp_index_table_reclaim(NULL) != 0)
        abort();
    dp_index_table_stats(NULL, &st);
    dp_index_table_free(NULL);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    struct dp_index_reclaim hooks = {hook_retire, hook_passed, &rec};
    size_t ops;

    once();
    if (size < HEADER_BYTES)
        return 0;
    memset(&m, 0, sizeof(m));
    memset(rec.waits, 0, rec.retired);
    rec.on = data[0] >> 3 & 1;
    rec.base = (uint64_t)(data[0] >> 6) << 62 | (data[0] >> 6) * 7u;
    rec.retired = rec.quiesced = rec.waiting = rec.low = 0;
    m.log2 = DP_INDEX_LOG2_MIN + (data[0] & 7) % LOG2_SIZES;
    m.entries = 1u << m.log2;
    m.capacity = m.entries / 2;
    m.bucket[0] = m.entries - 1 - (data[1] & 3);
    m.bucket[1] = (uint32_t)(data[1] >> 2) & (m.entries - 1);
    env.active = 1;
    env.seed_state = (uint64_t)data[2] << 8 | data[3];
    env.same_seed = data[0] >> 4 & 1 && m.log2 <= LOG2_NO_PROBE_LIMIT;
    env.allocs_failed = 0;
    if (data[0] & 0x20) {
        env.fail_next_alloc = 1;
        if (dp_index_table_new(m.log2, rec.on ? &hooks : NULL) || env.allocs_failed != 1)
            abort();
    }
    table = dp_index_table_new(m.log2, rec.on ? &hooks : NULL);
    hooks = (struct dp_index_reclaim){hook_wrong, hook_wrong_passed, NULL};
    if (!table)
        abort();
    memset(&before, 0, sizeof(before));
    dp_index_table_stats(table, &before);
    bytes_empty = before.bytes;
    bytes_array = 0;
    if (before.used || before.tombstones || before.rebuilds || before.max_probe ||
        before.entries != m.entries || before.capacity != m.capacity ||
        bytes_empty < (uint64_t)m.entries * 8)
        abort();

    ops = (size - HEADER_BYTES) / OP_BYTES;
    if (ops > MAX_OPS)
        ops = MAX_OPS;
    for (size_t i = 0; i < ops; i++) {
        const uint8_t *op = data + HEADER_BYTES + OP_BYTES * i;
        int fail = op[0] >> 4 & 1, rebuilt = 0;
        uint32_t ix, vx, index, n;

        memcpy(&ix, op + 4, 4);
        memcpy(&vx, op + 8, 4);
        index = pick_index(op[1], ix);
        switch (op[0] & 15) {
        case 0:
        case 1:
        case 2:
            rebuilt = do_insert(index, pick_value(op[2], vx, index), fail);
            break;
        case 3:
        case 4:
            rebuilt = do_replace(index, pick_expected(op[3], vx, index),
                                 pick_value(op[2], vx, index));
            break;
        case 5:
        case 6:
        case 7:
            rebuilt = do_remove(index, pick_expected(op[3], vx, index));
            break;
        case 8:
        case 9:
            check_lookup(index);
            check_stats(SAME);
            break;
        case 10: /* bulk insert: consecutive pool indices */
            n = 1 + (vx & (BULK_MAX - 1));
            for (uint32_t k = 0; k < n; k++)
                do_insert(pool_index((ix + k) & 0xff), 1 + ((vx >> 8) + k) % 0xffff, fail && !k);
            rebuilt = 1;
            break;
        case 11: /* bulk remove: stored indices, with the right value or any */
            n = 1 + (vx & (BULK_MAX - 1));
            for (uint32_t k = 0; k < n && m.n; k++) {
                uint32_t p = (ix + k) % m.n;

                do_remove(m.index[p], op[3] & 1 ? m.value[p] : 0);
            }
            rebuilt = 1;
            break;
        case 12:
            do_reclaim();
            break;
        case 13: /* the readers pass a quiescent state: the oldest epoch, or all */
            rec.quiesced = vx & 1 ? rec.retired : rec.quiesced + (rec.quiesced < rec.retired);
            break;
        case 14:
            rec.quiesced = rec.retired;
            do_reclaim();
            break;
        default:
            rebuilt = 1;
        }
        if (rebuilt)
            sweep();
        else
            spot_check(index);
    }
    sweep();
    check_stats(SAME);
    dp_index_table_free(table);
    table = NULL;
    env.active = 0;
    return 0;
}
