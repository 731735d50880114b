/* corosync 3's CPG, votequorum and cmap for dlmd's corosync provider (GroupNode/CorosyncLink.swift), behind a
 * small interface that needs none of corosync's headers: one connection per dlmd, whose callbacks arrive from
 * dlm_cs_dispatch_* on the thread that calls them. Every function returns 0 for success (corosync's own CS_OK
 * is 1) or corosync's cs_error_t. */
#ifndef DLM_COROSYNC_H
#define DLM_COROSYNC_H

#include <stddef.h>
#include <stdint.h>

struct dlm_cs;

/* A process in a CPG group, and why it left (CPG_REASON_*: 1 join, 2 leave, 3 node down, 4 node up, 5 process
 * down, 6 removed). */
struct dlm_cs_member {
    uint32_t nodeid;
    uint32_t pid;
    uint32_t reason;
};

struct dlm_cs_callbacks {
    void *context;
    /* The group's members after a change, and those that left. */
    void (*confchg)(void *context, const struct dlm_cs_member *members, size_t count,
                    const struct dlm_cs_member *left, size_t left_count);
    /* A message multicast to the group, in the group's total order (self-delivery included). */
    void (*deliver)(void *context, uint32_t nodeid, uint32_t pid, const void *message, size_t length);
    /* votequorum's quorate flag and the nodes it counts as members: at once after dlm_cs_open, then at every
     * change. */
    void (*quorum)(void *context, int quorate, const uint32_t *members, size_t count);
};

/* Connects to CPG and votequorum and joins the CPG group `group`. */
int dlm_cs_open(const char *group, const struct dlm_cs_callbacks *callbacks, struct dlm_cs **out);
/* The descriptors to poll; dispatch when readable (CS_DISPATCH_ALL). */
int dlm_cs_cpg_fd(struct dlm_cs *cs, int *fd);
int dlm_cs_quorum_fd(struct dlm_cs *cs, int *fd);
int dlm_cs_dispatch_cpg(struct dlm_cs *cs);
int dlm_cs_dispatch_quorum(struct dlm_cs *cs);
/* Multicasts to the group (CPG_TYPE_AGREED). CS_ERR_TRY_AGAIN (6) when corosync's queue is full: try later. */
int dlm_cs_mcast(struct dlm_cs *cs, const void *message, size_t length);
/* Leaves the group and closes both connections. */
void dlm_cs_close(struct dlm_cs *cs);
/* A CPG group joined on a connection of its own, which sends nothing: a lockspace's group (docs/GROUPS.md, "The
 * corosync provider"). Its events are read by dlm_cs_group_dispatch and dropped. `name` is `length` bytes, at most
 * 128 (CPG_MAX_NAME_LENGTH). */
struct dlm_cs_group;
int dlm_cs_group_open(const void *name, size_t length, struct dlm_cs_group **out);
int dlm_cs_group_fd(struct dlm_cs_group *group, int *fd);
int dlm_cs_group_dispatch(struct dlm_cs_group *group);
/* Leaves the group and closes its connection. */
void dlm_cs_group_close(struct dlm_cs_group *group);

/* A node of corosync's nodelist (cmap nodelist.node.N). */
struct dlm_cs_node {
    uint32_t nodeid;
    uint32_t votes;
    char address[256]; /* ring0_addr */
    char name[256];    /* name, or empty */
};

/* Reads the nodelist, this node's id (nodelist.local_node_pos) and the cluster's name (totem.cluster_name, or
 * empty) from cmap. Fails with CS_ERR_NOT_EXIST (12) when the nodelist is empty or this node is not in it, and
 * CS_ERR_NO_SPACE (15) past `capacity` nodes. */
int dlm_cs_read_nodelist(struct dlm_cs_node *nodes, size_t capacity, size_t *count, uint32_t *local_nodeid,
                         char *cluster_name, size_t cluster_name_capacity);

/* A non-blocking eventfd, with which another thread wakes the one that polls (-1 and errno on failure). */
int dlm_cs_eventfd(void);

/* corosync's text for a cs_error_t. */
const char *dlm_cs_strerror(int error);

#endif
