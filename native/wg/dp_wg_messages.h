/* The WireGuard wire format and protocol limits (WireGuard whitepaper,
 * sections 5.4 and 6). Every size and limit of the protocol lives here;
 * Python reads them through cffi and never re-types them.
 * cdef-clean: plain declarations and integer #defines only. */
#ifndef DP_WG_MESSAGES_H
#define DP_WG_MESSAGES_H

#include <stdint.h>

/* Message types: the first byte, followed by three zero bytes, read as a
 * little-endian 32-bit word. */
#define DP_WG_MSG_INITIATION 1
#define DP_WG_MSG_RESPONSE 2
#define DP_WG_MSG_COOKIE_REPLY 3
#define DP_WG_MSG_DATA 4

#define DP_WG_KEY_LEN 32
#define DP_WG_HASH_LEN 32
#define DP_WG_MAC_LEN 16
#define DP_WG_TAG_LEN 16
#define DP_WG_TIMESTAMP_LEN 12
#define DP_WG_COOKIE_LEN 16
#define DP_WG_COOKIE_NONCE_LEN 24

#define DP_WG_INITIATION_LEN 148
#define DP_WG_RESPONSE_LEN 92
#define DP_WG_COOKIE_REPLY_LEN 64
#define DP_WG_DATA_HEADER_LEN 16
/* A data message carries at least the tag (an empty keepalive). */
#define DP_WG_DATA_MIN_LEN 32
/* Plaintext is zero-padded to a multiple of this. */
#define DP_WG_PADDING 16

/* Limits (whitepaper section 6.1). Times in seconds. */
#define DP_WG_REKEY_AFTER_MESSAGES 0x1000000000000000
#define DP_WG_REJECT_AFTER_MESSAGES 0xffffffffffffdfff
#define DP_WG_REKEY_AFTER_TIME 120
#define DP_WG_REJECT_AFTER_TIME 180
#define DP_WG_REKEY_ATTEMPT_TIME 90
#define DP_WG_REKEY_TIMEOUT 5
#define DP_WG_KEEPALIVE_TIMEOUT 10
#define DP_WG_COOKIE_SECRET_MAX_AGE 120
/* Handshake initiations accepted per second from one source, and burst. */
#define DP_WG_INITIATIONS_PER_SECOND 20
#define DP_WG_INITIATIONS_BURST 5

struct dp_wg_initiation {
    uint32_t type;
    uint32_t sender_index;
    uint8_t unencrypted_ephemeral[32];
    uint8_t encrypted_static[48];    /* 32 + tag */
    uint8_t encrypted_timestamp[28]; /* 12 + tag */
    uint8_t mac1[16];
    uint8_t mac2[16];
};

struct dp_wg_response {
    uint32_t type;
    uint32_t sender_index;
    uint32_t receiver_index;
    uint8_t unencrypted_ephemeral[32];
    uint8_t encrypted_nothing[16]; /* tag only */
    uint8_t mac1[16];
    uint8_t mac2[16];
};

struct dp_wg_cookie_reply {
    uint32_t type;
    uint32_t receiver_index;
    uint8_t nonce[24];
    uint8_t encrypted_cookie[32]; /* 16 + tag */
};

struct dp_wg_data_header {
    uint32_t type;
    uint32_t receiver_index;
    uint64_t counter; /* little-endian on the wire */
};

/* ---- AmneziaWG 2.0 wire profiles (dataplane/obfuscation.py explains
 * them). A profile puts padding[k] random bytes in front of message type
 * k+1 and draws its type field from header_min[k]..header_max[k]. A
 * receiver classifies a datagram by them: initiation when it is
 * DP_WG_INITIATION_LEN + padding[0] bytes and the header at padding[0]
 * falls in range 0, response and cookie reply alike, transport when it is
 * at least DP_WG_DATA_MIN_LEN + padding[3] bytes and the header at
 * padding[3] falls in range 3. Everything after that sees the standard
 * message at that offset. */
#define DP_WIRE_PLAIN 0      /* WireGuard's own: no padding, types 1..4 */
#define DP_WIRE_OBFUSCATED 1 /* the interface's AmneziaWG profile */
/* The largest UDP payload over IPv4: no padded message is longer. */
#define DP_WIRE_MAX_DATAGRAM 65507

struct dp_wire {
    uint32_t padding[4];    /* S1..S4 */
    uint32_t header_min[4]; /* H1..H4, both ends included */
    uint32_t header_max[4];
    uint8_t obfuscated;     /* 0: plain WireGuard only (the rest is ignored) */
    uint8_t accept_plain;   /* with obfuscated: plain WireGuard on the port too */
    uint8_t reserved[2];
};

#endif
