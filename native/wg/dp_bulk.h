/* The control-plane API's bulk path in C: POST /v1/bulk bodies (NDJSON,
 * one operation a line) parsed and checked here, and the peers and
 * sessions of a checked batch installed in one call.
 *
 * The parser is strict and conservative: it accepts only lines whose
 * meaning it is sure of (no string escapes, no duplicate or unknown fields,
 * integers in range, keys and prefixes and endpoints that are valid) and
 * produces exactly what the Python model (dataplane.api.model) would. For
 * anything else it declines the whole body, and Python parses it, with
 * its precise error messages. Declining is never an error by itself.
 *
 * Keys in a parsed batch are secrets: the batch lives in locked memory
 * that is not dumped, and dp_bulk_free wipes it.
 *
 * cdef-clean: plain declarations and integer #defines only.
 */
#ifndef DP_BULK_H
#define DP_BULK_H

#include <stddef.h>
#include <stdint.h>

struct dp_device;

#define DP_BULK_PUT_PEER 1
#define DP_BULK_DELETE_PEER 2
#define DP_BULK_PUT_SESSION 3
#define DP_BULK_DELETE_SESSION 4

/* dp_bulk_op.flags */
#define DP_BULK_HAS_GENERATION 1
#define DP_BULK_HAS_PSK 2          /* a non-zero preshared key */
#define DP_BULK_REPLACE 4
#define DP_BULK_HAS_SESSION 8      /* put_peer with a session; always for put_session */
#define DP_BULK_ACTIVATE_NOW 16
#define DP_BULK_SESSION_HAS_GENERATION 32

#define DP_BULK_PREFIXES_MAX 1024 /* per peer, as model.ALLOWED_IPS_MAX */
#define DP_BULK_LIFETIME_MAX 180  /* seconds, REJECT_AFTER_TIME */
#define DP_BULK_DIGEST_BYTES 16

/* An allowed IP: version 4 or 6, the network address with host bits
 * cleared (4 or 16 bytes used), the prefix length. */
struct dp_bulk_prefix {
    uint8_t version;
    uint8_t cidr;
    uint8_t reserved[2];
    uint8_t addr[16];
};

struct dp_bulk_op {
    uint32_t line;         /* 1-based, counting empty lines */
    uint32_t op;           /* DP_BULK_PUT_PEER .. */
    uint32_t flags;
    uint32_t keepalive;    /* persistent_keepalive, 0..65535 */
    uint32_t first_prefix; /* into dp_bulk.prefixes */
    uint32_t n_prefixes;   /* after removing repeats, first kept */
    uint64_t generation;   /* peer's (or the session's for put_session/delete_*) */
    uint64_t session_generation;
    uint32_t receiver_index;
    uint32_t sender_index;
    uint32_t lifetime;     /* seconds, 1..DP_BULK_LIFETIME_MAX */
    uint8_t endpoint_family; /* 0 (none), 4 or 6 */
    uint8_t reserved;
    uint16_t endpoint_port;
    uint8_t endpoint_addr[16];
    uint8_t public_key[32];
    uint8_t preshared_key[32];
    uint8_t send_key[32];
    uint8_t recv_key[32];
    /* keyed BLAKE2s of the peer's settings and of the session's keys
     * (dataplane/api/bulk.py computes the same for the model's path) */
    uint8_t settings_digest[16];
    uint8_t session_digest[16];
};

struct dp_bulk {
    struct dp_bulk_op *ops;
    uint32_t n_ops;
    uint32_t n_prefixes;
    struct dp_bulk_prefix *prefixes;
    size_t bytes;          /* mapped for ops and prefixes */
    uint32_t declined_line; /* where the parser gave up (0: it did not) */
    uint32_t declined_why;  /* DP_BULK_DECLINED_* */
};

#define DP_BULK_DECLINED_SYNTAX 1   /* not JSON this parser reads (escapes, floats, ...) */
#define DP_BULK_DECLINED_FIELD 2    /* unknown, repeated, missing or null field */
#define DP_BULK_DECLINED_VALUE 3    /* a value out of range or not valid */
#define DP_BULK_DECLINED_EMPTY 4    /* no operations */
#define DP_BULK_DECLINED_MEMORY 5

/* Parse an NDJSON body into *out (zeroed first). digest_key (32 bytes)
 * keys the digests; low_order holds n_low_order 32-byte public keys to
 * refuse (each is also refused with bit 255 set). 0: parsed; 1: declined
 * (out->declined_line/why say where; nothing to free); -ENOMEM. */
int dp_bulk_parse(const uint8_t *body, size_t len, const uint8_t *digest_key,
                  const uint8_t *low_order, size_t n_low_order, struct dp_bulk *out);
/* Wipe and unmap a parsed batch; safe on a zeroed or freed one. */
void dp_bulk_free(struct dp_bulk *b);

/* What dp_device_bulk_apply does for one operation of a checked batch. */
#define DP_BULK_DO_CREATE 1    /* add the peer (peer_ids[i] is free) */
#define DP_BULK_DO_SETTINGS 2  /* endpoint and allowed IPs (a new peer's) */
#define DP_BULK_DO_SESSION 4   /* claim receiver_index and install the session */

/* Apply the operations of a checked batch to the device, in order:
 * actions[i] (DP_BULK_DO_*) on peer peer_ids[i]; sessions are created
 * now_ns - (REJECT_AFTER_TIME - lifetime). Stops at the first failure and
 * returns how many operations were done whole, with *err set to the
 * failure (-errno); the caller undoes those (for a created peer,
 * dp_device_peer_remove; for a session on an existing peer, its keypairs
 * are dropped). A failed operation leaves nothing of itself behind. */
uint32_t dp_device_bulk_apply(struct dp_device *d, const struct dp_bulk *b,
                              const uint32_t *peer_ids, const uint8_t *actions,
                              uint64_t now_ns, int *err);

#endif
