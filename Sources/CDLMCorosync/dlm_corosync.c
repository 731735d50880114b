#include "dlm_corosync.h"

#include <corosync/cmap.h>
#include <corosync/corotypes.h>
#include <corosync/cpg.h>
#include <corosync/votequorum.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>

/* corosync's CS_OK is 1: the interface says 0. */
static int result(cs_error_t error) { return error == CS_OK ? 0 : (int)error; }

struct dlm_cs {
    cpg_handle_t cpg;
    votequorum_handle_t quorum;
    struct cpg_name group;
    struct dlm_cs_callbacks callbacks;
};

static void copy_members(const struct cpg_address *from, size_t count, struct dlm_cs_member *to)
{
    for (size_t i = 0; i < count; i++) {
        to[i].nodeid = from[i].nodeid;
        to[i].pid = from[i].pid;
        to[i].reason = from[i].reason;
    }
}

static void on_confchg(cpg_handle_t handle, const struct cpg_name *group, const struct cpg_address *members,
                       size_t count, const struct cpg_address *left, size_t left_count,
                       const struct cpg_address *joined, size_t joined_count)
{
    (void)group;
    (void)joined;
    (void)joined_count;
    struct dlm_cs *cs = NULL;
    if (cpg_context_get(handle, (void **)&cs) != CS_OK || cs == NULL) return;
    /* CPG groups hold at most CPG_MEMBERS_MAX (128) processes. */
    struct dlm_cs_member now[CPG_MEMBERS_MAX], gone[CPG_MEMBERS_MAX];
    if (count > CPG_MEMBERS_MAX) count = CPG_MEMBERS_MAX;
    if (left_count > CPG_MEMBERS_MAX) left_count = CPG_MEMBERS_MAX;
    copy_members(members, count, now);
    copy_members(left, left_count, gone);
    cs->callbacks.confchg(cs->callbacks.context, now, count, gone, left_count);
}

static void on_deliver(cpg_handle_t handle, const struct cpg_name *group, uint32_t nodeid, uint32_t pid,
                       void *message, size_t length)
{
    (void)group;
    struct dlm_cs *cs = NULL;
    if (cpg_context_get(handle, (void **)&cs) != CS_OK || cs == NULL) return;
    cs->callbacks.deliver(cs->callbacks.context, nodeid, pid, message, length);
}

static void on_quorum(votequorum_handle_t handle, uint64_t context, uint32_t quorate, uint32_t count,
                      votequorum_node_t nodes[])
{
    (void)context;
    struct dlm_cs *cs = NULL;
    if (votequorum_context_get(handle, (void **)&cs) != CS_OK || cs == NULL) return;
    uint32_t *members = calloc(count ? count : 1, sizeof *members);
    if (members == NULL) return;
    size_t member_count = 0;
    for (uint32_t i = 0; i < count; i++) {
        if (nodes[i].state == VOTEQUORUM_NODESTATE_MEMBER) members[member_count++] = nodes[i].nodeid;
    }
    cs->callbacks.quorum(cs->callbacks.context, quorate != 0, members, member_count);
    free(members);
}

int dlm_cs_open(const char *group, const struct dlm_cs_callbacks *callbacks, struct dlm_cs **out)
{
    size_t length = strlen(group);
    if (length == 0 || length > CPG_MAX_NAME_LENGTH) return result(CS_ERR_INVALID_PARAM);
    struct dlm_cs *cs = calloc(1, sizeof *cs);
    if (cs == NULL) return result(CS_ERR_NO_MEMORY);
    cs->callbacks = *callbacks;
    cs->group.length = (uint32_t)length;
    memcpy(cs->group.value, group, length);

    cpg_callbacks_t cpg_callbacks = {.cpg_deliver_fn = on_deliver, .cpg_confchg_fn = on_confchg};
    cs_error_t error = cpg_initialize(&cs->cpg, &cpg_callbacks);
    if (error != CS_OK) goto fail;
    cpg_context_set(cs->cpg, cs);
    votequorum_callbacks_t quorum_callbacks = {.votequorum_quorum_notify_fn = on_quorum};
    error = votequorum_initialize(&cs->quorum, &quorum_callbacks);
    if (error != CS_OK) goto fail_cpg;
    votequorum_context_set(cs->quorum, cs);
    error = votequorum_trackstart(cs->quorum, 0, CS_TRACK_CURRENT | CS_TRACK_CHANGES);
    if (error != CS_OK) goto fail_quorum;
    do {
        error = cpg_join(cs->cpg, &cs->group);
    } while (error == CS_ERR_TRY_AGAIN);
    if (error != CS_OK) goto fail_quorum;
    *out = cs;
    return 0;
fail_quorum:
    votequorum_finalize(cs->quorum);
fail_cpg:
    cpg_finalize(cs->cpg);
fail:
    free(cs);
    return result(error);
}

int dlm_cs_cpg_fd(struct dlm_cs *cs, int *fd) { return result(cpg_fd_get(cs->cpg, fd)); }
int dlm_cs_quorum_fd(struct dlm_cs *cs, int *fd) { return result(votequorum_fd_get(cs->quorum, fd)); }
int dlm_cs_dispatch_cpg(struct dlm_cs *cs) { return result(cpg_dispatch(cs->cpg, CS_DISPATCH_ALL)); }
int dlm_cs_dispatch_quorum(struct dlm_cs *cs) { return result(votequorum_dispatch(cs->quorum, CS_DISPATCH_ALL)); }

int dlm_cs_mcast(struct dlm_cs *cs, const void *message, size_t length)
{
    struct iovec iov = {.iov_base = (void *)message, .iov_len = length};
    return result(cpg_mcast_joined(cs->cpg, CPG_TYPE_AGREED, &iov, 1));
}

void dlm_cs_close(struct dlm_cs *cs)
{
    if (cs == NULL) return;
    cpg_leave(cs->cpg, &cs->group);
    cpg_finalize(cs->cpg);
    votequorum_trackstop(cs->quorum);
    votequorum_finalize(cs->quorum);
    free(cs);
}

struct dlm_cs_group {
    cpg_handle_t cpg;
    struct cpg_name name;
};

static void on_group_confchg(cpg_handle_t handle, const struct cpg_name *group, const struct cpg_address *members,
                             size_t count, const struct cpg_address *left, size_t left_count,
                             const struct cpg_address *joined, size_t joined_count)
{
    (void)handle, (void)group, (void)members, (void)count, (void)left, (void)left_count, (void)joined;
    (void)joined_count;
}

static void on_group_deliver(cpg_handle_t handle, const struct cpg_name *group, uint32_t nodeid, uint32_t pid,
                             void *message, size_t length)
{
    (void)handle, (void)group, (void)nodeid, (void)pid, (void)message, (void)length;
}

int dlm_cs_group_open(const void *name, size_t length, struct dlm_cs_group **out)
{
    if (length == 0 || length > CPG_MAX_NAME_LENGTH) return result(CS_ERR_INVALID_PARAM);
    struct dlm_cs_group *group = calloc(1, sizeof *group);
    if (group == NULL) return result(CS_ERR_NO_MEMORY);
    group->name.length = (uint32_t)length;
    memcpy(group->name.value, name, length);
    cpg_callbacks_t callbacks = {.cpg_deliver_fn = on_group_deliver, .cpg_confchg_fn = on_group_confchg};
    cs_error_t error = cpg_initialize(&group->cpg, &callbacks);
    if (error != CS_OK) {
        free(group);
        return result(error);
    }
    do {
        error = cpg_join(group->cpg, &group->name);
    } while (error == CS_ERR_TRY_AGAIN);
    if (error != CS_OK) {
        cpg_finalize(group->cpg);
        free(group);
        return result(error);
    }
    *out = group;
    return 0;
}

int dlm_cs_group_fd(struct dlm_cs_group *group, int *fd) { return result(cpg_fd_get(group->cpg, fd)); }
int dlm_cs_group_dispatch(struct dlm_cs_group *group) { return result(cpg_dispatch(group->cpg, CS_DISPATCH_ALL)); }

void dlm_cs_group_close(struct dlm_cs_group *group)
{
    if (group == NULL) return;
    cpg_leave(group->cpg, &group->name);
    cpg_finalize(group->cpg);
    free(group);
}

/* A nodelist.node.N.KEY entry: N, and the key after it; -1 if the key is of another shape. */
static long node_index(const char *key, const char **field)
{
    const char *prefix = "nodelist.node.";
    size_t length = strlen(prefix);
    if (strncmp(key, prefix, length) != 0) return -1;
    char *end = NULL;
    long index = strtol(key + length, &end, 10);
    if (end == key + length || *end != '.' || index < 0) return -1;
    *field = end + 1;
    return index;
}

int dlm_cs_read_nodelist(struct dlm_cs_node *nodes, size_t capacity, size_t *count, uint32_t *local_nodeid,
                         char *cluster_name, size_t cluster_name_capacity)
{
    cmap_handle_t cmap;
    cs_error_t error = cmap_initialize(&cmap);
    if (error != CS_OK) return result(error);
    cmap_iter_handle_t iter;
    error = cmap_iter_init(cmap, "nodelist.node.", &iter);
    if (error != CS_OK) goto done;
    /* Entries are indexed 0..capacity-1 by N; an N past it is an error. */
    size_t highest = 0;
    for (size_t i = 0; i < capacity; i++) {
        memset(&nodes[i], 0, sizeof nodes[i]);
        nodes[i].votes = 1;
    }
    char key[CMAP_KEYNAME_MAXLEN + 1];
    size_t value_length;
    cmap_value_types_t type;
    while ((error = cmap_iter_next(cmap, iter, key, &value_length, &type)) == CS_OK) {
        const char *field = NULL;
        long index = node_index(key, &field);
        if (index < 0) continue;
        if ((size_t)index >= capacity) {
            error = CS_ERR_NO_SPACE;
            break;
        }
        struct dlm_cs_node *node = &nodes[index];
        if ((size_t)index + 1 > highest) highest = (size_t)index + 1;
        if (strcmp(field, "nodeid") == 0) {
            cmap_get_uint32(cmap, key, &node->nodeid);
        } else if (strcmp(field, "quorum_votes") == 0) {
            cmap_get_uint32(cmap, key, &node->votes);
        } else if (strcmp(field, "ring0_addr") == 0 || strcmp(field, "name") == 0) {
            char *text = NULL;
            if (cmap_get_string(cmap, key, &text) == CS_OK && text != NULL) {
                char *to = field[0] == 'r' ? node->address : node->name;
                snprintf(to, 256, "%s", text);
                free(text);
            }
        }
    }
    cmap_iter_finalize(cmap, iter);
    if (error == CS_ERR_NO_SECTIONS || error == CS_OK) error = CS_OK;
    if (error != CS_OK) goto done;
    *count = highest;
    uint32_t position = 0;
    if (highest == 0 || cmap_get_uint32(cmap, "nodelist.local_node_pos", &position) != CS_OK ||
        position >= highest) {
        error = CS_ERR_NOT_EXIST;
        goto done;
    }
    *local_nodeid = nodes[position].nodeid;
    cluster_name[0] = 0;
    char *name = NULL;
    if (cmap_get_string(cmap, "totem.cluster_name", &name) == CS_OK && name != NULL) {
        snprintf(cluster_name, cluster_name_capacity, "%s", name);
        free(name);
    }
done:
    cmap_finalize(cmap);
    return result(error);
}

const char *dlm_cs_strerror(int error)
{
    return cs_strerror((cs_error_t)error);
}

int dlm_cs_eventfd(void)
{
    return eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
}
