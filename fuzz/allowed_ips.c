/* libFuzzer harness for the allowed-IPs trie (native/tables/allowedips.c)
 * against a reference model: a plain list of (family, masked prefix,
 * length, owner), where a lookup is the owner of the longest prefix that
 * contains the address, and the counts and a peer's listing follow from
 * the list.
 *
 * Input: 20-byte operations: kind, family bit, prefix length, peer (0..7),
 * then 16 bytes of address. Kinds: insert, remove one prefix, remove a
 * peer's prefixes, and lookups (of the operation's address, and of
 * addresses just inside and outside each prefix touched). Addresses come
 * from a few shared stems so that prefixes nest and diverge. After each
 * operation the counts are checked, and at the end every model prefix's
 * own address and one peer's listing. Any difference aborts. */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "dp_tables.h"

#define MAX_PREFIXES 512

struct prefix {
    int family;
    uint8_t addr[16];
    int cidr;
    uint32_t peer;
};

static struct prefix model[MAX_PREFIXES];
static int nmodel;

static void mask(uint8_t *a, int bytes, int cidr)
{
    for (int i = 0; i < bytes; i++) {
        int keep = cidr - 8 * i;

        a[i] &= keep >= 8 ? 0xff : keep <= 0 ? 0 : (uint8_t)(0xff << (8 - keep));
    }
}

static int contains(const struct prefix *p, int family, const uint8_t *addr)
{
    uint8_t a[16];
    int bytes = family == DP_FAMILY_IPV4 ? 4 : 16;

    if (p->family != family)
        return 0;
    memcpy(a, addr, bytes);
    mask(a, bytes, p->cidr);
    return memcmp(a, p->addr, bytes) == 0;
}

static uint32_t model_lookup(int family, const uint8_t *addr)
{
    int best = -1;

    for (int i = 0; i < nmodel; i++)
        if (contains(&model[i], family, addr) && (best < 0 || model[i].cidr > model[best].cidr))
            best = i;
    return best < 0 ? DP_PEER_NONE : model[best].peer;
}

static int model_find(int family, const uint8_t *addr, int cidr)
{
    for (int i = 0; i < nmodel; i++)
        if (model[i].family == family && model[i].cidr == cidr &&
            !memcmp(model[i].addr, addr, family == DP_FAMILY_IPV4 ? 4 : 16))
            return i;
    return -1;
}

static int64_t model_count(int family)
{
    int64_t n = 0;

    for (int i = 0; i < nmodel; i++)
        n += family == 0 || model[i].family == family;
    return n;
}

static void check_lookup(struct dp_allowedips *t, int family, const uint8_t *addr)
{
    if (dp_allowedips_lookup(t, family, addr) != model_lookup(family, addr))
        abort();
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    static const uint8_t stems[4][16] = {
        {10, 0, 0, 0}, {10, 0, 128, 0}, {0x20, 0x01, 0x0d, 0xb8}, {0xfd, 0, 0x02, 0x02}};
    struct dp_allowedips *t = dp_allowedips_new();

    if (!t)
        abort();
    nmodel = 0;
    for (size_t off = 0; off + 20 <= size; off += 20) {
        const uint8_t *op = data + off;
        int family = op[1] & 1 ? DP_FAMILY_IPV6 : DP_FAMILY_IPV4;
        int bits = family == DP_FAMILY_IPV4 ? 32 : 128, bytes = bits / 8;
        int cidr = op[2] % (bits + 2); /* bits + 1: refused */
        uint32_t peer = op[3] & 7;
        uint8_t addr[16], masked[16];
        int at, rc;

        /* a stem, with the operation's bytes over its tail */
        memcpy(addr, stems[op[1] >> 1 & 3], 16);
        for (int i = 0; i < bytes; i++)
            addr[i] ^= (uint8_t)(op[4 + i] & (i < 2 ? 0 : 0xff));
        memcpy(masked, addr, 16);
        mask(masked, bytes, cidr);
        switch (op[0] & 3) {
        case 0: /* insert */
            rc = dp_allowedips_insert(t, family, addr, cidr, peer);
            if (cidr > bits) {
                if (rc != -DP_TABLES_EINVAL)
                    abort();
                break;
            }
            if (rc != 0)
                abort();
            at = model_find(family, masked, cidr);
            if (at >= 0) {
                model[at].peer = peer;
            } else if (nmodel < MAX_PREFIXES) {
                model[nmodel] = (struct prefix){family, {0}, cidr, peer};
                memcpy(model[nmodel].addr, masked, bytes);
                nmodel++;
            } else { /* the model is full: take it back out of the trie */
                if (dp_allowedips_remove(t, family, addr, cidr) != 1)
                    abort();
            }
            break;
        case 1: /* remove one prefix */
            rc = dp_allowedips_remove(t, family, addr, cidr);
            if (cidr > bits) {
                if (rc != -DP_TABLES_EINVAL)
                    abort();
                break;
            }
            at = model_find(family, masked, cidr);
            if (rc != (at >= 0))
                abort();
            if (at >= 0)
                model[at] = model[--nmodel];
            break;
        case 2: { /* remove a peer */
            int64_t gone = 0;

            for (int i = 0; i < nmodel;)
                if (model[i].peer == peer) {
                    model[i] = model[--nmodel];
                    gone++;
                } else {
                    i++;
                }
            if (dp_allowedips_remove_peer(t, peer) != gone)
                abort();
            break;
        }
        default: /* lookups: the address, and either side of its prefix */
            check_lookup(t, family, addr);
            if (cidr > 0 && cidr <= bits) {
                uint8_t edge[16];

                memcpy(edge, masked, 16);
                edge[(cidr - 1) / 8] ^= (uint8_t)(0x80 >> ((cidr - 1) % 8)); /* just outside */
                check_lookup(t, family, edge);
                memcpy(edge, masked, 16);
                for (int i = cidr; i < bits; i++) /* the prefix's last address */
                    edge[i / 8] |= (uint8_t)(0x80 >> (i % 8));
                check_lookup(t, family, edge);
            }
        }
        if (dp_allowedips_count(t, DP_FAMILY_IPV4) != model_count(DP_FAMILY_IPV4) ||
            dp_allowedips_count(t, DP_FAMILY_IPV6) != model_count(DP_FAMILY_IPV6) ||
            dp_allowedips_count(t, 0) != model_count(0) ||
            dp_allowedips_nodes(t) > 2 * model_count(0))
            abort();
    }
    for (int i = 0; i < nmodel; i++) {
        check_lookup(t, model[i].family, model[i].addr);
    }
    {
        struct dp_allowedips_entry listed[MAX_PREFIXES];
        int64_t n = dp_allowedips_list_peer(t, 3, listed, MAX_PREFIXES), want = 0;

        for (int i = 0; i < nmodel; i++)
            want += model[i].peer == 3;
        if (n != want)
            abort();
        for (int64_t k = 0; k < n; k++) {
            int at = model_find(listed[k].family, listed[k].addr, listed[k].cidr);

            if (at < 0 || model[at].peer != 3)
                abort();
        }
    }
    dp_allowedips_free(t);
    return 0;
}
