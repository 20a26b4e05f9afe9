/* Loader of the XDP programs in ebpf/ through libbpf (see dp_xdp.h). */
#include <errno.h>
#include <net/if.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <bpf/bpf.h>
#include <bpf/btf.h>
#include <bpf/libbpf.h>
#include <linux/bpf.h>
#include <linux/if_link.h>

#include "dp_xdp.h"
#include "ebpf/dp_xdp_kern_user.h"
#include "native/wg/dp_wg_messages.h"

/* One wire format: the BPF side cannot include dp_wg_messages.h, so its
 * copies are checked here. */
_Static_assert(DP_XDP_WG_INITIATION == DP_WG_MSG_INITIATION, "message type");
_Static_assert(DP_XDP_WG_RESPONSE == DP_WG_MSG_RESPONSE, "message type");
_Static_assert(DP_XDP_WG_COOKIE_REPLY == DP_WG_MSG_COOKIE_REPLY, "message type");
_Static_assert(DP_XDP_WG_DATA == DP_WG_MSG_DATA, "message type");
_Static_assert(DP_XDP_WG_INITIATION_LEN == DP_WG_INITIATION_LEN, "message size");
_Static_assert(DP_XDP_WG_RESPONSE_LEN == DP_WG_RESPONSE_LEN, "message size");
_Static_assert(DP_XDP_WG_COOKIE_REPLY_LEN == DP_WG_COOKIE_REPLY_LEN, "message size");
_Static_assert(DP_XDP_WG_DATA_MIN_LEN == DP_WG_DATA_MIN_LEN, "message size");
_Static_assert(DP_XDP_RATELIMIT == DP_XDP_SETTINGS_RATELIMIT, "settings flag");
_Static_assert(DP_XDP_WIRE_MAX_DATAGRAM == DP_WIRE_MAX_DATAGRAM, "wire limit");
_Static_assert(DP_XDP_WIRE_MAX_PADDING == DP_WIRE_MAX_DATAGRAM, "wire limit");
_Static_assert(DP_XDP_MAX_SIGNATURES == 5 && DP_XDP_SIG_PREFIX == 8, "signature shapes");
_Static_assert(DP_XDP_ABORTED == XDP_ABORTED && DP_XDP_DROP == XDP_DROP &&
                   DP_XDP_PASS == XDP_PASS && DP_XDP_TX == XDP_TX &&
                   DP_XDP_REDIRECT == XDP_REDIRECT,
               "XDP actions");

#define NSEC_PER_SEC 1000000000ull
/* The verifier's log of a failed load; the kernel keeps its tail. */
#define VERIFIER_LOG_SIZE (256 * 1024)
/* Lines of that tail quoted in the error message. */
#define VERIFIER_LOG_LINES 4

static const char *const wan_counter_names[DP_XDP_WAN_COUNT] = {
    [DP_XDP_WAN_PASS_NOT_IP] = "pass_not_ip",
    [DP_XDP_WAN_PASS_NOT_UDP] = "pass_not_udp",
    [DP_XDP_WAN_PASS_OTHER_PORT] = "pass_other_port",
    [DP_XDP_WAN_PASS_FRAGMENT] = "pass_fragment",
    [DP_XDP_WAN_PASS_EXT_LIMIT] = "pass_ext_limit",
    [DP_XDP_WAN_STEER_INITIATION] = "steer_initiation",
    [DP_XDP_WAN_STEER_RESPONSE] = "steer_response",
    [DP_XDP_WAN_STEER_COOKIE_REPLY] = "steer_cookie_reply",
    [DP_XDP_WAN_STEER_DATA] = "steer_data",
    [DP_XDP_WAN_STEER_NO_SOCKET] = "steer_no_socket",
    [DP_XDP_WAN_DROP_TRUNC_ETH] = "drop_trunc_eth",
    [DP_XDP_WAN_DROP_TRUNC_IPV4] = "drop_trunc_ipv4",
    [DP_XDP_WAN_DROP_TRUNC_IPV6] = "drop_trunc_ipv6",
    [DP_XDP_WAN_DROP_TRUNC_UDP] = "drop_trunc_udp",
    [DP_XDP_WAN_DROP_TRUNC_WG] = "drop_trunc_wg",
    [DP_XDP_WAN_DROP_BAD_IP_HEADER] = "drop_bad_ip_header",
    [DP_XDP_WAN_DROP_BAD_IP_LEN] = "drop_bad_ip_len",
    [DP_XDP_WAN_DROP_BAD_UDP_LEN] = "drop_bad_udp_len",
    [DP_XDP_WAN_PASS_FIRST_FRAGMENT] = "pass_first_fragment",
    [DP_XDP_WAN_DROP_WG_BAD_TYPE] = "drop_wg_bad_type",
    [DP_XDP_WAN_DROP_WG_BAD_SIZE] = "drop_wg_bad_size",
    [DP_XDP_WAN_DROP_RATELIMITED] = "drop_ratelimited",
    [DP_XDP_WAN_DROP_JUNK] = "drop_junk",
    [DP_XDP_WAN_DROP_SIGNATURE] = "drop_signature",
    [DP_XDP_WAN_STEER_OBFUSCATED] = "steer_obfuscated",
    [DP_XDP_WAN_PASS_NOT_LOCAL] = "pass_not_local",
};

static const char *const inner_counter_names[DP_XDP_INNER_COUNT] = {
    [DP_XDP_INNER_STEER] = "steer",
    [DP_XDP_INNER_STEER_NO_SOCKET] = "steer_no_socket",
};

static const char *const forward_counter_names[DP_XDP_FORWARD_COUNT] = {
    [DP_XDP_FORWARD_STEER] = "steer",
    [DP_XDP_FORWARD_STEER_NO_SOCKET] = "steer_no_socket",
    [DP_XDP_FORWARD_PASS] = "pass",
};

/* What the loader knows about each of our programs. */
struct program_kind {
    const char *name;
    const char *const *counter_names;
    uint32_t counter_count;
    int has_settings;
};

static const struct program_kind kinds[] = {
    {DP_XDP_WAN_PROG_NAME, wan_counter_names, DP_XDP_WAN_COUNT, 1},
    {DP_XDP_INNER_PROG_NAME, inner_counter_names, DP_XDP_INNER_COUNT, 0},
    {DP_XDP_FORWARD_PROG_NAME, forward_counter_names, DP_XDP_FORWARD_COUNT, 0},
};

struct dp_xdp {
    struct bpf_object *obj;
    struct bpf_program *prog;
    const struct program_kind *kind;
    uint32_t prog_id;
    int prog_fd;
    int xsks_fd;
    uint32_t max_queues;
    int counters_fd;
    int ncpus;
    uint64_t *percpu; /* ncpus values: scratch space for one counter */
    struct bpf_link *link;
    int ifindex;
    int mode;
};

/* ---------------------------------------------------------------- errors */

static __thread char last_error[DP_XDP_ERROR_MAX];

const char *dp_xdp_last_error(void)
{
    return last_error;
}

/* Records "<what>: <reason>" and returns -err (err > 0). libbpf's own
 * codes (bad ELF, ...) are reported as EINVAL with libbpf's reason. */
__attribute__((format(printf, 2, 3))) static int fail(int err, const char *fmt, ...)
{
    char reason[128];
    va_list ap;
    int n;

    if (err <= 0)
        err = EINVAL;
    if (err >= __LIBBPF_ERRNO__START) {
        libbpf_strerror(err, reason, sizeof(reason));
        err = EINVAL;
    } else {
        snprintf(reason, sizeof(reason), "%s", strerror(err));
    }
    va_start(ap, fmt);
    n = vsnprintf(last_error, sizeof(last_error), fmt, ap);
    va_end(ap);
    if (n >= 0 && (size_t)n < sizeof(last_error))
        snprintf(last_error + n, sizeof(last_error) - n, ": %s", reason);
    return -err;
}

/* The interface's name for messages ("ifindex N" when it has none). */
struct ifname_buf {
    char s[IF_NAMESIZE + 16];
};

static const char *ifname(int ifindex, struct ifname_buf *buf)
{
    char name[IF_NAMESIZE];

    if (if_indextoname((unsigned int)ifindex, name))
        snprintf(buf->s, sizeof(buf->s), "%s", name);
    else
        snprintf(buf->s, sizeof(buf->s), "ifindex %d", ifindex);
    return buf->s;
}

/* The last `lines` non-empty lines of a verifier log, joined by " | ". */
static void log_tail(const char *log, int lines, char *out, size_t out_size)
{
    const char *start = log + strlen(log);
    int seen = 0;

    while (start > log && (start[-1] == '\n' || start[-1] == ' '))
        start--;
    for (const char *p = start; p > log; p--) {
        if (p[-1] == '\n' && ++seen == lines) {
            log = p;
            break;
        }
    }
    size_t n = 0;
    for (const char *p = log; p < start && n + 4 < out_size; p++) {
        if (*p == '\n') {
            memcpy(out + n, " | ", 3);
            n += 3;
        } else {
            out[n++] = *p;
        }
    }
    out[n] = '\0';
}

/* ------------------------------------------------------------ open/load */

static int find_map(struct dp_xdp *x, const char *name, enum bpf_map_type type,
                    uint32_t value_size, struct bpf_map **out, const char *path)
{
    struct bpf_map *map = bpf_object__find_map_by_name(x->obj, name);

    if (!map)
        return fail(EINVAL, "%s: program %s has no map named '%s': rebuild it from ebpf/", path,
                    x->kind->name, name);
    if (bpf_map__type(map) != type || bpf_map__value_size(map) != value_size)
        return fail(EINVAL,
                    "%s: map '%s' has type %d and %u-byte values, not type %d and %u-byte "
                    "values: the object and this loader come from different builds",
                    path, name, (int)bpf_map__type(map), bpf_map__value_size(map), (int)type,
                    value_size);
    *out = map;
    return 0;
}

/* Writes settings into the .rodata variable DP_XDP_SETTINGS_VAR, found
 * through the object's BTF. Before load only: the kernel freezes it. */
static int write_settings(struct dp_xdp *x, const struct dp_xdp_settings *settings,
                          const char *path)
{
    struct btf *btf = bpf_object__btf(x->obj);
    struct bpf_map *map, *rodata = NULL;
    const struct btf_var_secinfo *vars;
    const struct btf_type *sec;
    const void *initial;
    size_t size;
    int id, i, n;
    char *copy;

    if (!btf)
        return fail(EINVAL, "%s has no BTF: build it with clang -g (ebpf/build.py)", path);
    id = btf__find_by_name_kind(btf, ".rodata", BTF_KIND_DATASEC);
    bpf_object__for_each_map(map, x->obj) {
        const char *name = bpf_map__name(map);
        size_t len = strlen(name);

        if (bpf_map__is_internal(map) && len >= 7 && strcmp(name + len - 7, ".rodata") == 0)
            rodata = map;
    }
    if (id < 0 || !rodata)
        return fail(EINVAL, "%s: program %s has no read-only data (.rodata) for its settings",
                    path, x->kind->name);

    sec = btf__type_by_id(btf, id);
    vars = btf_var_secinfos(sec);
    n = btf_vlen(sec);
    for (i = 0; i < n; i++) {
        const struct btf_type *var = btf__type_by_id(btf, vars[i].type);

        if (strcmp(btf__name_by_offset(btf, var->name_off), DP_XDP_SETTINGS_VAR) == 0)
            break;
    }
    if (i == n)
        return fail(EINVAL, "%s: program %s has no variable '%s' in .rodata", path,
                    x->kind->name, DP_XDP_SETTINGS_VAR);
    if (vars[i].size != sizeof(*settings))
        return fail(EINVAL,
                    "%s: '%s' is %u bytes, this loader's struct dp_xdp_settings %zu: the "
                    "object and this loader come from different builds",
                    path, DP_XDP_SETTINGS_VAR, vars[i].size, sizeof(*settings));

    initial = bpf_map__initial_value(rodata, &size);
    if (!initial || vars[i].offset + sizeof(*settings) > size)
        return fail(EINVAL, "%s: .rodata is %zu bytes, too short for '%s' at offset %u", path,
                    size, DP_XDP_SETTINGS_VAR, vars[i].offset);
    copy = malloc(size);
    if (!copy)
        return fail(ENOMEM, "copying %zu bytes of .rodata", size);
    memcpy(copy, initial, size);
    memcpy(copy + vars[i].offset, settings, sizeof(*settings));
    i = bpf_map__set_initial_value(rodata, copy, size);
    free(copy);
    if (i < 0)
        return fail(-i, "%s: setting the initial value of .rodata", path);
    return 0;
}

static int settings_from_config(const struct dp_xdp_config *config,
                                struct dp_xdp_settings *settings)
{
    memset(settings, 0, sizeof(*settings));
    if (config->listen_port == 0)
        return fail(EINVAL, "listen port 0: the WAN program needs the UDP port to steer "
                            "(1..65535)");
    if (config->flags & ~DP_XDP_RATELIMIT)
        return fail(EINVAL, "unknown flags 0x%x (known: DP_XDP_RATELIMIT = 0x%x)",
                    config->flags & ~DP_XDP_RATELIMIT, DP_XDP_RATELIMIT);
    settings->listen_port = config->listen_port;
    settings->flags = config->flags;
    if (config->flags & DP_XDP_RATELIMIT) {
        if (config->handshake_rate == 0 || config->handshake_rate > NSEC_PER_SEC)
            return fail(EINVAL, "handshake rate %u per second: must be 1..%llu",
                        config->handshake_rate, NSEC_PER_SEC);
        if (config->handshake_burst == 0)
            return fail(EINVAL, "handshake burst 0: must be at least 1");
        settings->handshake_rate = config->handshake_rate;
        settings->handshake_burst = config->handshake_burst;
        settings->handshake_interval_ns = NSEC_PER_SEC / config->handshake_rate;
        settings->handshake_tolerance_ns =
            (uint64_t)(config->handshake_burst - 1) * settings->handshake_interval_ns;
    }
    return 0;
}

/* Finds our one XDP program in the object and what kind it is. */
static int find_program(struct dp_xdp *x, const char *path)
{
    struct bpf_program *prog;
    const char *name;
    size_t i;

    prog = bpf_object__next_program(x->obj, NULL);
    if (!prog || bpf_object__next_program(x->obj, prog))
        return fail(EINVAL, "%s: expected exactly one program (%s or %s)", path,
                    DP_XDP_WAN_PROG_NAME, DP_XDP_INNER_PROG_NAME);
    name = bpf_program__name(prog);
    for (i = 0; i < sizeof(kinds) / sizeof(kinds[0]); i++) {
        if (strcmp(name, kinds[i].name) == 0) {
            x->prog = prog;
            x->kind = &kinds[i];
            return 0;
        }
    }
    return fail(EINVAL, "%s: program '%s' is none of ours (%s, %s)", path, name,
                DP_XDP_WAN_PROG_NAME, DP_XDP_INNER_PROG_NAME);
}

static int load(struct dp_xdp *x, const char *path)
{
    char *log = calloc(1, VERIFIER_LOG_SIZE);
    char tail[DP_XDP_ERROR_MAX / 2];
    int rc;

    if (!log)
        return fail(ENOMEM, "allocating the verifier log");
    /* Log level 0: libbpf asks for the verifier's log only when a load fails. */
    rc = bpf_program__set_log_buf(x->prog, log, VERIFIER_LOG_SIZE);
    if (rc == 0)
        rc = bpf_object__load(x->obj);
    if (rc < 0) {
        log_tail(log, VERIFIER_LOG_LINES, tail, sizeof(tail));
        if (rc == -EPERM)
            rc = fail(EPERM, "loading %s from %s needs CAP_BPF and CAP_NET_ADMIN (root)",
                      x->kind->name, path);
        else
            rc = fail(-rc, "loading %s from %s into the kernel failed%s%s", x->kind->name, path,
                      tail[0] ? "; verifier: " : "", tail);
    }
    bpf_program__set_log_buf(x->prog, NULL, 0);
    free(log);
    return rc;
}

static int prog_id_of_fd(int fd, uint32_t *id, char *name, size_t name_size)
{
    struct bpf_prog_info info;
    uint32_t len = sizeof(info);
    int rc;

    memset(&info, 0, sizeof(info));
    rc = bpf_obj_get_info_by_fd(fd, &info, &len);
    if (rc < 0)
        return rc;
    *id = info.id;
    if (name)
        snprintf(name, name_size, "%s", info.name);
    return 0;
}

int dp_xdp_open(const char *path, const struct dp_xdp_config *config, struct dp_xdp **out)
{
    struct dp_xdp_settings settings;
    struct bpf_map *xsks, *counters;
    struct dp_xdp *x;
    int rc;

    if (!out)
        return fail(EINVAL, "dp_xdp_open: out is NULL");
    *out = NULL;
    if (!path)
        return fail(EINVAL, "dp_xdp_open: path is NULL");
    if (access(path, R_OK) != 0)
        return fail(errno, "BPF object %s cannot be read (build it with python ebpf/build.py)",
                    path);
    x = calloc(1, sizeof(*x));
    if (!x)
        return fail(ENOMEM, "allocating struct dp_xdp");
    x->prog_fd = x->xsks_fd = x->counters_fd = -1;

    x->obj = bpf_object__open_file(path, NULL);
    if (!x->obj) {
        rc = fail(errno, "opening BPF object %s (is it a clang -target bpf object?)", path);
        goto err;
    }
    rc = find_program(x, path);
    if (rc < 0)
        goto err;
    if (x->kind->has_settings) {
        if (!config) {
            rc = fail(EINVAL, "%s: program %s needs settings (listen port)", path,
                      x->kind->name);
            goto err;
        }
        rc = settings_from_config(config, &settings);
        if (rc == 0)
            rc = write_settings(x, &settings, path);
    } else if (config) {
        rc = fail(EINVAL, "%s: program %s takes no settings: pass no config", path,
                  x->kind->name);
    }
    if (rc < 0)
        goto err;
    rc = find_map(x, "xsks", BPF_MAP_TYPE_XSKMAP, sizeof(uint32_t), &xsks, path);
    if (rc == 0)
        rc = find_map(x, "counters", BPF_MAP_TYPE_PERCPU_ARRAY, sizeof(uint64_t), &counters,
                      path);
    if (rc == 0 && bpf_map__max_entries(counters) != x->kind->counter_count)
        rc = fail(EINVAL,
                  "%s: map 'counters' has %u entries, this loader knows %u counters of %s: the "
                  "object and this loader come from different builds",
                  path, bpf_map__max_entries(counters), x->kind->counter_count, x->kind->name);
    if (rc < 0)
        goto err;

    rc = load(x, path);
    if (rc < 0)
        goto err;
    x->prog_fd = bpf_program__fd(x->prog);
    x->xsks_fd = bpf_map__fd(xsks);
    x->max_queues = bpf_map__max_entries(xsks);
    x->counters_fd = bpf_map__fd(counters);
    rc = prog_id_of_fd(x->prog_fd, &x->prog_id, NULL, 0);
    if (rc < 0) {
        rc = fail(-rc, "reading the id of the loaded program %s", x->kind->name);
        goto err;
    }
    rc = libbpf_num_possible_cpus();
    if (rc < 0) {
        rc = fail(-rc, "counting possible CPUs (/sys/devices/system/cpu/possible)");
        goto err;
    }
    x->ncpus = rc;
    x->percpu = calloc((size_t)x->ncpus, sizeof(uint64_t));
    if (!x->percpu) {
        rc = fail(ENOMEM, "allocating counters for %d CPUs", x->ncpus);
        goto err;
    }
    *out = x;
    return 0;
err:
    dp_xdp_close(x);
    return rc;
}

void dp_xdp_close(struct dp_xdp *x)
{
    if (!x)
        return;
    dp_xdp_detach(x);
    bpf_object__close(x->obj);
    free(x->percpu);
    free(x);
}

const char *dp_xdp_name(const struct dp_xdp *x)
{
    return x->kind->name;
}

uint32_t dp_xdp_prog_id(const struct dp_xdp *x)
{
    return x->prog_id;
}

/* ---------------------------------------------------------- attachment */

static int is_ours(const char *name)
{
    size_t i;

    for (i = 0; i < sizeof(kinds) / sizeof(kinds[0]); i++)
        if (strcmp(name, kinds[i].name) == 0)
            return 1;
    return 0;
}

int dp_xdp_remove_stale(int ifindex)
{
    LIBBPF_OPTS(bpf_xdp_query_opts, query);
    struct ifname_buf ifb;
    const char *dev = ifname(ifindex, &ifb);
    struct {
        uint32_t id;
        uint32_t mode_flag;
        const char *mode;
    } slots[3];
    char name[BPF_OBJ_NAME_LEN];
    int removed = 0, rc, fd, i;
    uint32_t id;

    rc = bpf_xdp_query(ifindex, 0, &query);
    if (rc < 0)
        return fail(-rc, "querying the XDP programs of %s", dev);
    slots[0].id = query.drv_prog_id;
    slots[0].mode_flag = XDP_FLAGS_DRV_MODE;
    slots[0].mode = "native";
    slots[1].id = query.skb_prog_id;
    slots[1].mode_flag = XDP_FLAGS_SKB_MODE;
    slots[1].mode = "generic";
    slots[2].id = query.hw_prog_id;
    slots[2].mode_flag = XDP_FLAGS_HW_MODE;
    slots[2].mode = "offload";

    for (i = 0; i < 3; i++) {
        if (!slots[i].id)
            continue;
        fd = bpf_prog_get_fd_by_id(slots[i].id);
        if (fd < 0)
            return fail(-fd, "%s: opening its XDP program id %u (%s mode)", dev, slots[i].id,
                        slots[i].mode);
        rc = prog_id_of_fd(fd, &id, name, sizeof(name));
        if (rc < 0) {
            close(fd);
            return fail(-rc, "%s: reading XDP program id %u", dev, slots[i].id);
        }
        if (!is_ours(name)) {
            close(fd);
            return fail(EBUSY,
                        "%s already has XDP program '%s' (id %u, %s mode), which is not ours: "
                        "remove it (ip link set dev %s xdp off) or choose another interface",
                        dev, name, id, slots[i].mode, dev);
        }
        /* Only this very program: if another replaced it meanwhile, the
         * kernel refuses (XDP_FLAGS_REPLACE with the expected fd). */
        LIBBPF_OPTS(bpf_xdp_attach_opts, detach, .old_prog_fd = fd);
        rc = bpf_xdp_detach(ifindex, slots[i].mode_flag | XDP_FLAGS_REPLACE, &detach);
        close(fd);
        if (rc == -EBUSY)
            return fail(EBUSY,
                        "%s already has our XDP program '%s' (id %u, %s mode) attached through "
                        "a bpf_link that a live process holds (another dataplane daemon on %s?) "
                        "or that is pinned in bpffs: stop that process or unpin the link",
                        dev, name, id, slots[i].mode, dev);
        if (rc < 0)
            return fail(-rc, "%s: removing our stale XDP program '%s' (id %u, %s mode)", dev,
                        name, id, slots[i].mode);
        removed++;
    }
    return removed;
}

int dp_xdp_attach(struct dp_xdp *x, int ifindex, uint32_t flags)
{
    LIBBPF_OPTS(bpf_xdp_query_opts, query);
    struct ifname_buf ifb;
    const char *dev;
    struct bpf_link *link;
    int rc;

    if (ifindex <= 0)
        return fail(EINVAL, "attaching %s: ifindex %d is not an interface", x->kind->name, ifindex);
    dev = ifname(ifindex, &ifb);
    if (flags & ~DP_XDP_ATTACH_ALLOW_GENERIC)
        return fail(EINVAL, "attaching %s to %s: unknown flags 0x%x", x->kind->name, dev,
                    flags & ~DP_XDP_ATTACH_ALLOW_GENERIC);
    if (x->link) {
        struct ifname_buf cur;

        return fail(EBUSY, "%s is already attached to %s: detach it first", x->kind->name,
                    ifname(x->ifindex, &cur));
    }
    rc = dp_xdp_remove_stale(ifindex);
    if (rc < 0)
        return rc;

    link = bpf_program__attach_xdp(x->prog, ifindex);
    if (!link) {
        rc = errno;
        if (rc == EBUSY || rc == EEXIST)
            return fail(rc, "attaching %s to %s: another XDP program got there first",
                        x->kind->name, dev);
        return fail(rc, "attaching %s to %s with a bpf_link", x->kind->name, dev);
    }

    /* The kernel picks native mode when the driver has it, generic
     * otherwise; check which one it picked. */
    rc = bpf_xdp_query(ifindex, 0, &query);
    if (rc < 0) {
        bpf_link__destroy(link);
        return fail(-rc, "attached %s to %s but could not query its mode; detached again",
                    x->kind->name, dev);
    }
    if (query.drv_prog_id == x->prog_id) {
        x->mode = DP_XDP_MODE_NATIVE;
    } else if (query.skb_prog_id == x->prog_id && (flags & DP_XDP_ATTACH_ALLOW_GENERIC)) {
        x->mode = DP_XDP_MODE_GENERIC;
    } else {
        bpf_link__destroy(link);
        if (query.skb_prog_id == x->prog_id)
            return fail(EOPNOTSUPP,
                        "%s has no native (driver) XDP: %s would run in generic mode, which was "
                        "not allowed; detached again",
                        dev, x->kind->name);
        return fail(EIO, "attached %s (id %u) to %s, but the interface reports programs %u "
                    "(native) and %u (generic); detached again",
                    x->kind->name, x->prog_id, dev, query.drv_prog_id, query.skb_prog_id);
    }
    x->link = link;
    x->ifindex = ifindex;
    return 0;
}

int dp_xdp_detach(struct dp_xdp *x)
{
    struct ifname_buf ifb;
    int ifindex = x->ifindex;
    int rc;

    if (!x->link)
        return 0;
    /* BPF_LINK_DETACH takes the program off the interface even if some
     * other process inherited a copy of the link's fd. */
    rc = bpf_link__detach(x->link);
    bpf_link__destroy(x->link);
    x->link = NULL;
    x->ifindex = 0;
    x->mode = DP_XDP_MODE_NONE;
    /* ENOLINK: the interface went away, and the program with it. */
    if (rc < 0 && rc != -ENOLINK)
        return fail(-rc, "detaching %s from %s (its link is closed anyway)", x->kind->name,
                    ifname(ifindex, &ifb));
    return 0;
}

int dp_xdp_ifindex(const struct dp_xdp *x)
{
    return x->link ? x->ifindex : 0;
}

int dp_xdp_link_alive(const struct dp_xdp *x)
{
    struct bpf_link_info info;
    __u32 len = sizeof(info);
    int rc;

    if (!x->link)
        return 0;
    memset(&info, 0, sizeof(info));
    rc = bpf_obj_get_info_by_fd(bpf_link__fd(x->link), &info, &len);
    if (rc < 0)
        return rc;
    return info.type == BPF_LINK_TYPE_XDP && info.xdp.ifindex != 0;
}

int dp_xdp_attach_mode(const struct dp_xdp *x)
{
    return x->mode;
}

/* --------------------------------------------------------------- XSKMAP */

int dp_xdp_set_xsk(struct dp_xdp *x, uint32_t queue, int xsk_fd)
{
    int rc;

    if (queue >= x->max_queues)
        return fail(EINVAL,
                    "RX queue %u: the XSKMAP of %s holds queues 0..%u (build the programs "
                    "with -DDP_XDP_MAX_QUEUES=N for more)",
                    queue, x->kind->name, x->max_queues - 1);
    if (xsk_fd < 0)
        return fail(EBADF, "RX queue %u: socket fd %d", queue, xsk_fd);
    rc = bpf_map_update_elem(x->xsks_fd, &queue, &xsk_fd, BPF_ANY);
    if (rc == -EOPNOTSUPP || rc == -ENOTSOCK)
        return fail(-rc, "RX queue %u: fd %d is not an AF_XDP socket", queue, xsk_fd);
    if (rc < 0)
        return fail(-rc, "RX queue %u: putting socket fd %d in the XSKMAP of %s", queue, xsk_fd,
                    x->kind->name);
    return 0;
}

int dp_xdp_set_ratelimit_rest(struct dp_xdp *x, int rest)
{
    struct bpf_map *map = bpf_object__find_map_by_name(x->obj, "ratelimit_rest");
    uint32_t key = 0, value = rest != 0;
    int rc;

    if (!map || bpf_map__fd(map) < 0)
        return fail(EINVAL, "%s has no handshake rate limit", x->kind->name);
    rc = bpf_map_update_elem(bpf_map__fd(map), &key, &value, BPF_ANY);
    if (rc < 0)
        return fail(-rc, "%s: setting the rate limit's state", x->kind->name);
    return 0;
}

static bool local_listed(const struct dp_xdp_local_key *k, const struct dp_xdp_local_addr *addrs,
                         uint32_t n)
{
    for (uint32_t i = 0; i < n; i++)
        if (addrs[i].family == k->family &&
            !memcmp(addrs[i].addr, k->addr, k->family == 4 ? 4 : sizeof(k->addr)))
            return true;
    return false;
}

_Static_assert(DP_XDP_MAX_LOCAL_ADDRS_API == DP_XDP_MAX_LOCAL_ADDRS, "one size of the local map");

int dp_xdp_set_local(struct dp_xdp *x, const struct dp_xdp_local_addr *addrs, uint32_t n)
{
    struct bpf_map *map = bpf_object__find_map_by_name(x->obj, DP_XDP_LOCAL_MAP);
    struct dp_xdp_local_key key, next, *gone;
    uint32_t ngone = 0, cap = DP_XDP_MAX_LOCAL_ADDRS;
    uint8_t one = 1;
    int fd, rc;

    if (!map || (fd = bpf_map__fd(map)) < 0)
        return fail(EINVAL, "%s has no address map", x->kind->name);
    if (n && !addrs)
        return fail(EINVAL, "no addresses given");
    if (n > DP_XDP_MAX_LOCAL_ADDRS)
        return fail(E2BIG, "%u addresses; the map holds %u", n, DP_XDP_MAX_LOCAL_ADDRS);
    for (uint32_t i = 0; i < n; i++)
        if (addrs[i].family != 4 && addrs[i].family != 6)
            return fail(EINVAL, "address %u: family %u is neither 4 nor 6", i, addrs[i].family);
    /* The ones that stay are never missing: new ones first, then the
     * ones no longer listed go. */
    for (uint32_t i = 0; i < n; i++) {
        memset(&key, 0, sizeof(key));
        key.family = addrs[i].family;
        memcpy(key.addr, addrs[i].addr, addrs[i].family == 4 ? 4 : 16);
        rc = bpf_map_update_elem(fd, &key, &one, BPF_ANY);
        if (rc < 0)
            return fail(-rc, "%s: writing a local address", x->kind->name);
    }
    gone = calloc(cap, sizeof(*gone));
    if (!gone)
        return fail(ENOMEM, "listing the local addresses");
    for (rc = bpf_map_get_next_key(fd, NULL, &next); rc == 0 && ngone < cap;
         rc = bpf_map_get_next_key(fd, &key, &next)) {
        if (!local_listed(&next, addrs, n))
            gone[ngone++] = next;
        key = next;
    }
    for (uint32_t i = 0; i < ngone; i++)
        bpf_map_delete_elem(fd, &gone[i]);
    free(gone);
    return 0;
}

int dp_xdp_set_wire(struct dp_xdp *x, const struct dp_xdp_wire_config *w)
{
    struct bpf_map *map = bpf_object__find_map_by_name(x->obj, DP_XDP_WIRE_MAP);
    struct dp_xdp_wire v;
    uint32_t key = 0;
    int rc;

    if (!map || bpf_map__fd(map) < 0)
        return fail(EINVAL, "%s has no wire profile", x->kind->name);
    if (!w)
        return fail(EINVAL, "no wire profile given");
    memset(&v, 0, sizeof(v));
    if (w->obfuscated) {
        if (w->n_signatures > DP_XDP_MAX_SIGNATURES)
            return fail(EINVAL, "%u signature packets; at most %u", w->n_signatures,
                        DP_XDP_MAX_SIGNATURES);
        for (int k = 0; k < 4; k++) {
            if (w->header_min[k] > w->header_max[k])
                return fail(EINVAL, "H%d: %u-%u runs backwards", k + 1, w->header_min[k],
                            w->header_max[k]);
            if (w->padding[k] > DP_XDP_WIRE_MAX_PADDING)
                return fail(EINVAL, "S%d: %u bytes of padding, more than %u", k + 1,
                            w->padding[k], DP_XDP_WIRE_MAX_PADDING);
            v.padding[k] = w->padding[k];
            v.header_min[k] = w->header_min[k];
            v.header_max[k] = w->header_max[k];
        }
        v.obfuscated = 1;
        v.accept_plain = w->accept_plain ? 1 : 0;
        v.n_signatures = (uint8_t)w->n_signatures;
        for (uint32_t i = 0; i < w->n_signatures; i++) {
            v.sig_len[i] = w->sig_len[i];
            v.sig_prefix_len[i] = w->sig_prefix_len[i] > DP_XDP_SIG_PREFIX
                                      ? DP_XDP_SIG_PREFIX : w->sig_prefix_len[i];
            memcpy(v.sig_prefix[i], w->sig_prefix[i], DP_XDP_SIG_PREFIX);
        }
    }
    rc = bpf_map_update_elem(bpf_map__fd(map), &key, &v, BPF_ANY);
    if (rc < 0)
        return fail(-rc, "%s: writing the wire profile", x->kind->name);
    return 0;
}

int dp_xdp_clear_xsk(struct dp_xdp *x, uint32_t queue)
{
    int rc;

    if (queue >= x->max_queues)
        return fail(EINVAL, "RX queue %u: the XSKMAP of %s holds queues 0..%u", queue,
                    x->kind->name, x->max_queues - 1);
    rc = bpf_map_delete_elem(x->xsks_fd, &queue);
    if (rc < 0 && rc != -ENOENT)
        return fail(-rc, "RX queue %u: removing its socket from the XSKMAP of %s", queue,
                    x->kind->name);
    return 0;
}

uint32_t dp_xdp_max_queues(const struct dp_xdp *x)
{
    return x->max_queues;
}

int dp_xdp_xsk_map_fd(const struct dp_xdp *x)
{
    return x->xsks_fd;
}

/* ------------------------------------------------------------- counters */

uint32_t dp_xdp_counter_count(const struct dp_xdp *x)
{
    return x->kind->counter_count;
}

const char *dp_xdp_counter_name(const struct dp_xdp *x, uint32_t i)
{
    return i < x->kind->counter_count ? x->kind->counter_names[i] : NULL;
}

int dp_xdp_counters(const struct dp_xdp *x, uint64_t *values, uint32_t n)
{
    uint32_t i, count = x->kind->counter_count;
    int cpu, rc;

    if (n && !values)
        return fail(EINVAL, "dp_xdp_counters: values is NULL");
    for (i = 0; i < n && i < count; i++) {
        rc = bpf_map_lookup_elem(x->counters_fd, &i, x->percpu);
        if (rc < 0)
            return fail(-rc, "reading counter %u (%s) of %s", i, x->kind->counter_names[i],
                        x->kind->name);
        values[i] = 0;
        for (cpu = 0; cpu < x->ncpus; cpu++)
            values[i] += x->percpu[cpu];
    }
    return (int)count;
}

/* ------------------------------------------------------------- test run */

int dp_xdp_test_run(struct dp_xdp *x, const uint8_t *in, uint32_t in_len, uint8_t *out,
                    uint32_t out_cap, uint32_t *out_len, uint32_t repeat, uint32_t *verdict)
{
    LIBBPF_OPTS(bpf_test_run_opts, run, .data_in = in, .data_size_in = in_len, .data_out = out,
                .data_size_out = out ? out_cap : 0, .repeat = (int)repeat);
    int rc;

    if (!in || !verdict || (out && !out_len))
        return fail(EINVAL, "dp_xdp_test_run: in, verdict (and out_len with out) are required");
    if (repeat > (uint32_t)0x7fffffff)
        return fail(EINVAL, "dp_xdp_test_run: repeat %u is too large", repeat);
    rc = bpf_prog_test_run_opts(x->prog_fd, &run);
    if (rc == -ENOSPC)
        return fail(ENOSPC, "test run of %s: the output frame is larger than out_cap %u",
                    x->kind->name, out_cap);
    if (rc == -EINVAL && in_len < 14)
        return fail(EINVAL, "test run of %s: a %u-byte frame is shorter than an Ethernet "
                    "header, which BPF_PROG_TEST_RUN requires", x->kind->name, in_len);
    if (rc < 0)
        return fail(-rc, "test run of %s on a %u-byte frame (BPF_PROG_TEST_RUN)", x->kind->name,
                    in_len);
    *verdict = run.retval;
    if (out_len)
        *out_len = out ? run.data_size_out : 0;
    return 0;
}
