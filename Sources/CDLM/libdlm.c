/*
 * libdlm for swift-dlm: every function of Debian's libdlm.h, over the client protocol of
 * Protocol/CLIENT.md instead of the kernel's misc devices. Plain C11 and pthreads; no Swift runtime.
 *
 * Built twice from this file: libdlm.so.3 (DLM_THREADED=1: dlm_pthread_init starts a thread per lockspace
 * handle that runs the ASTs) and libdlm_lt.so.3 (DLM_THREADED=0: no library threads, the caller polls
 * dlm_get_fd() / dlm_ls_get_fd() and calls dlm_dispatch()). docs/LIBDLM.md describes the differences from
 * the upstream library.
 *
 * Shape:
 * - A lockspace handle owns one connection to dlmd (one owner there). Requests are pipelined: the caller
 *   appends a frame to the handle's output buffer and registers it in a FIFO of requests in flight, whose
 *   replies arrive in the same order (CLIENT.md §6).
 * - Lock ids (sb_lkid) are the library's own, known before the request leaves, so dlm_ls_lock returns at
 *   once with sb_lkid set; the daemon's lock id is learnt from the reply. Conversions and unlocks are checked
 *   against the library's copy of each lock's state (ENOENT, EBUSY, EINVAL) before they are sent.
 * - One thread at a time reads the socket (the "reader"): the AST thread, or a caller of dlm_dispatch or of
 *   a synchronous call. It turns frames into state changes and queued callbacks, then runs the callbacks in
 *   order outside the lock. Requests made from inside those callbacks are sent in one write at the end.
 * - A synchronous (_wait) call is woken through the same callback queue, so it sees the ASTs that came
 *   before its completion run first, as with the kernel device.
 */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE
#endif
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <sys/socket.h>
#include <sys/types.h>
#include <sys/un.h>
#include <unistd.h>

#ifndef _REENTRANT
#define _REENTRANT 1 /* declare the threaded API of libdlm.h */
#endif
#pragma GCC visibility push(default)
#include <libdlm.h>
#pragma GCC visibility pop

#include "wire.h"

#ifndef DLM_THREADED
#define DLM_THREADED 1
#endif

#define DEFAULT_SOCKET "/run/dlm/dlmd.sock"
#define DEFAULT_LOCKSPACE "default"
#define HANDLE_MAGIC 0x646c6d68u /* "dlmh" */
#define MODE_NONE DLMW_MODE_NONE
/* What dlm_library_version reports: the kernel interface (linux/dlm_device.h) this library stands in for. */
#define LIB_MAJOR 6
#define LIB_MINOR 0
#define LIB_PATCH 2

/* The flags a lock or conversion request may carry (REFERENCE.md §3), and an unlock. */
#define REQUEST_FLAGS                                                                                      \
	(LKF_NOQUEUE | LKF_CONVERT | LKF_VALBLK | LKF_QUECVT | LKF_IVVALBLK | LKF_CONVDEADLK | LKF_PERSISTENT | \
	 LKF_NODLCKWT | LKF_NODLCKBLK | LKF_EXPEDITE | LKF_NOQUEUEBAST | LKF_HEADQUE | LKF_NOORDER | LKF_ORPHAN |  \
	 LKF_ALTPR | LKF_ALTCW | LKF_TIMEOUT)
#define UNLOCK_FLAGS (LKF_CANCEL | LKF_VALBLK | LKF_IVVALBLK | LKF_FORCEUNLOCK)

typedef void (*ast_fn)(void *);
typedef void (*bast_mode_fn)(void *, int);

/* MARK: data */

/* A caller waiting in a synchronous call (lives on its stack). */
struct syncw {
	bool done;
	bool queued;		/* a CB_WAKE for it sits in the callback queue */
	int err;		/* an ERROR reply (positive errno), or 0 */
	struct dlm_lksb *lksb;	/* where a lock operation's completion is written */
	int status;		/* that completion's status */
	uint32_t value;		/* OK: the lock; LOCKSPACE: the lockspace id; PURGED: the count */
	uint8_t lvb_length;	/* LOCKSPACE */
	uint8_t created;	/* LOCKSPACE */
	char *json;		/* QUERY_REPLY, malloc'd, NUL-terminated */
	size_t json_len;
};

enum { OP_NONE, OP_LOCK, OP_CONVERT };

/* The library's copy of one lock. */
struct lk {
	uint32_t lkid;	  /* ours, as the application sees it */
	uint32_t srvid;	  /* dlmd's, 0 until the reply to LOCK arrives */
	uint32_t parent;  /* our id of the parent lock, 0 for none */
	uint32_t children;
	uint8_t granted;  /* the mode held, MODE_NONE while a new request waits */
	uint8_t main;	  /* OP_LOCK / OP_CONVERT pending, or OP_NONE */
	bool persistent;
	bool silent;	  /* purged: its completions run no callback */
	bool unlocking;	  /* an UNLOCK (plain, CANCEL or FORCEUNLOCK) is pending */
	bool deferred;	  /* ... and waits for srvid before it can be sent */
	uint32_t main_flags;
	uint32_t unlock_flags;
	uint8_t unlock_lvb_len;
	uint8_t unlock_lvb[DLM_LVB_LEN];
	/* Where the pending request's completion goes (libdlm: castaddr, castparam, bastaddr, user_lksb). */
	ast_fn ast;
	void *astarg;
	ast_fn bast;
	void *bastarg;
	struct dlm_lksb *lksb;
	struct syncw *main_w;
	/* Where the pending unlock's completion goes. */
	struct dlm_lksb *ulksb;
	void *uastarg;
	struct syncw *unlock_w;
};

/* A request in flight, waiting for its reply. */
struct req {
	uint32_t tag;
	uint8_t type;
	uint32_t flags;
	uint32_t lkid;
	struct syncw *w; /* woken by the reply itself (not by a later completion) */
};

enum { CB_AST, CB_BAST, CB_WAKE };

/* A callback to run, in order, outside the handle's mutex. */
struct cb {
	uint8_t kind;
	uint8_t sb_flags;
	bool set_lksb;
	bool has_lvb;
	int status;
	int mode;
	uint32_t lkid;
	struct dlm_lksb *lksb;
	ast_fn fn;
	void *arg;
	struct syncw *w;
	uint8_t lvb[DLM_LVB_LEN];
};

/* A map from non-zero lock ids to locks: open addressing, backward-shift deletion. */
struct idmap {
	uint32_t *keys;
	struct lk **vals;
	uint32_t mask;
	uint32_t count;
};

struct buf {
	uint8_t *p;
	size_t len, cap;
};

/* A lockspace handle (dlm_lshandle_t): one connection to dlmd. */
struct dlm_ls {
	uint32_t magic;
	atomic_int refs;
	pthread_mutex_t mu; /* everything below, except where noted */
	pthread_cond_t cond;
	pthread_mutex_t wmu; /* the socket's sending side and `wbuf` */
	int fd;
	int wake_fd; /* eventfd that stops the AST thread; -1 until it starts */
	char name[DLM_LOCKSPACE_LEN + 1];
	uint32_t ls_id;
	uint8_t lvb_len; /* the lockspace's value block length */
	uint32_t node_id;
	bool dead;
	int dead_err;
	bool closing;
	struct buf out;	 /* frames not yet sent */
	struct buf wbuf; /* frames being sent (under wmu) */
	struct buf in;	 /* bytes read, not yet decoded (reader only) */
	bool reading;
	pthread_t reader;
	int waiters; /* threads in pthread_cond_wait on `cond` */
	bool has_thread;
	pthread_t thread;
	bool stop;
	struct req *reqs;
	size_t req_head, req_count, req_cap;
	uint32_t next_tag;
	uint64_t submitted, replied;
	struct idmap by_lkid, by_srvid;
	uint32_t next_lkid;
	struct cb *cbs;
	size_t cb_head, cb_count, cb_cap;
	struct dlm_ls *next_handle; /* the registry (under registry_mu) */
};

static pthread_mutex_t registry_mu = PTHREAD_MUTEX_INITIALIZER;
static struct dlm_ls *registry;
static pthread_mutex_t default_mu = PTHREAD_MUTEX_INITIALIZER;
static struct dlm_ls *default_ls;
/* The handle whose callbacks this thread is running: its requests wait for the end of the batch. */
static _Thread_local struct dlm_ls *tls_corked;

/* MARK: small helpers */

static int set_errno(int err)
{
	errno = err;
	return -1;
}

static uint32_t hash32(uint32_t k)
{
	k *= 0x9E3779B1u;
	return k ^ (k >> 15);
}

static struct lk *idmap_get(const struct idmap *m, uint32_t key)
{
	uint32_t i;
	if (!m->keys || key == 0)
		return NULL;
	for (i = hash32(key) & m->mask; m->keys[i]; i = (i + 1) & m->mask)
		if (m->keys[i] == key)
			return m->vals[i];
	return NULL;
}

static int idmap_put(struct idmap *m, uint32_t key, struct lk *val);

static int idmap_grow(struct idmap *m)
{
	uint32_t cap = m->keys ? (m->mask + 1) * 2 : 64;
	struct idmap n = {calloc(cap, sizeof(uint32_t)), calloc(cap, sizeof(struct lk *)), cap - 1, 0};
	if (!n.keys || !n.vals) {
		free(n.keys);
		free(n.vals);
		return -ENOMEM;
	}
	if (m->keys) {
		for (uint32_t i = 0; i <= m->mask; i++)
			if (m->keys[i])
				idmap_put(&n, m->keys[i], m->vals[i]);
		free(m->keys);
		free(m->vals);
	}
	*m = n;
	return 0;
}

static int idmap_put(struct idmap *m, uint32_t key, struct lk *val)
{
	uint32_t i;
	if (!m->keys || (m->count + 1) * 4 > (m->mask + 1) * 3) {
		int err = idmap_grow(m);
		if (err)
			return err;
	}
	for (i = hash32(key) & m->mask; m->keys[i]; i = (i + 1) & m->mask)
		if (m->keys[i] == key) {
			m->vals[i] = val;
			return 0;
		}
	m->keys[i] = key;
	m->vals[i] = val;
	m->count++;
	return 0;
}

static void idmap_del(struct idmap *m, uint32_t key)
{
	uint32_t i, j;
	if (!m->keys || key == 0)
		return;
	for (i = hash32(key) & m->mask; m->keys[i] != key; i = (i + 1) & m->mask)
		if (!m->keys[i])
			return;
	for (j = i;;) {
		uint32_t h;
		j = (j + 1) & m->mask;
		if (!m->keys[j])
			break;
		h = hash32(m->keys[j]) & m->mask;
		/* Move the entry at j back to i unless its home lies cyclically in (i, j]. */
		if ((i <= j) ? (h <= i || h > j) : (h <= i && h > j)) {
			m->keys[i] = m->keys[j];
			m->vals[i] = m->vals[j];
			i = j;
		}
	}
	m->keys[i] = 0;
	m->vals[i] = NULL;
	m->count--;
}

static void idmap_free(struct idmap *m)
{
	free(m->keys);
	free(m->vals);
	memset(m, 0, sizeof(*m));
}

static int buf_reserve(struct buf *b, size_t more)
{
	size_t cap;
	uint8_t *p;
	if (b->cap - b->len >= more)
		return 0;
	cap = b->cap ? b->cap : 4096;
	while (cap - b->len < more)
		cap *= 2;
	p = realloc(b->p, cap);
	if (!p)
		return -ENOMEM;
	b->p = p;
	b->cap = cap;
	return 0;
}

static bool valid_handle(const struct dlm_ls *ls)
{
	return ls && ls->magic == HANDLE_MAGIC;
}

/* The error of a dead connection, as an errno. */
static int dead_errno(const struct dlm_ls *ls)
{
	return ls->dead_err ? ls->dead_err : ENOTCONN;
}

/* A status received from dlmd, as an errno value for the caller. */
static int status_errno(int32_t status)
{
	return status > 0 && status < 4096 ? status : EPROTO;
}

/* MARK: lifetime */

static void ls_destroy(struct dlm_ls *ls)
{
	for (uint32_t i = 0; ls->by_lkid.keys && i <= ls->by_lkid.mask; i++)
		if (ls->by_lkid.keys[i])
			free(ls->by_lkid.vals[i]);
	idmap_free(&ls->by_lkid);
	idmap_free(&ls->by_srvid);
	if (ls->fd >= 0)
		close(ls->fd);
	if (ls->wake_fd >= 0)
		close(ls->wake_fd);
	free(ls->out.p);
	free(ls->wbuf.p);
	free(ls->in.p);
	free(ls->reqs);
	free(ls->cbs);
	pthread_mutex_destroy(&ls->mu);
	pthread_mutex_destroy(&ls->wmu);
	pthread_cond_destroy(&ls->cond);
	ls->magic = 0;
	free(ls);
}

static void ls_ref(struct dlm_ls *ls)
{
	atomic_fetch_add(&ls->refs, 1);
}

static void ls_unref(struct dlm_ls *ls)
{
	if (atomic_fetch_sub(&ls->refs, 1) == 1)
		ls_destroy(ls);
}

/* The connection is unusable: every waiter returns, nothing more is read. Called with mu held. */
static void ls_die(struct dlm_ls *ls, int err)
{
	if (ls->dead)
		return;
	ls->dead = true;
	ls->dead_err = err;
	shutdown(ls->fd, SHUT_RDWR);
	/* No reply will come: forget the waiters that only a reply would wake. */
	for (size_t i = 0; i < ls->req_count; i++)
		ls->reqs[(ls->req_head + i) % ls->req_cap].w = NULL;
	for (uint32_t i = 0; ls->by_lkid.keys && i <= ls->by_lkid.mask; i++) {
		struct lk *lk = ls->by_lkid.keys[i] ? ls->by_lkid.vals[i] : NULL;
		if (lk) {
			lk->main_w = NULL;
			lk->unlock_w = NULL;
		}
	}
	pthread_cond_broadcast(&ls->cond);
}

/* MARK: sending */

/* Encodes a request into the output buffer and registers it as in flight. Called with mu held; the caller
 * sends it with ls_flush (or leaves it for the end of the callback batch). */
static int ls_submit(struct dlm_ls *ls, struct dlmw_msg *m, uint32_t lkid, struct syncw *w)
{
	size_t size;
	struct req *r;
	if (ls->dead)
		return -dead_errno(ls);
	if (ls->req_count == ls->req_cap) {
		size_t cap = ls->req_cap ? ls->req_cap * 2 : 64;
		struct req *n = malloc(cap * sizeof(*n));
		if (!n)
			return -ENOMEM;
		for (size_t i = 0; i < ls->req_count; i++)
			n[i] = ls->reqs[(ls->req_head + i) % ls->req_cap];
		free(ls->reqs);
		ls->reqs = n;
		ls->req_cap = cap;
		ls->req_head = 0;
	}
	if (++ls->next_tag == 0)
		ls->next_tag = 1;
	m->tag = ls->next_tag;
	size = dlmw_encoded_size(m);
	if (size == 0 || size > DLMW_MAX_CLIENT_BYTES)
		return -EINVAL;
	if (buf_reserve(&ls->out, size))
		return -ENOMEM;
	dlmw_encode(m, ls->out.p + ls->out.len);
	ls->out.len += size;
	r = &ls->reqs[(ls->req_head + ls->req_count) % ls->req_cap];
	r->tag = m->tag;
	r->type = m->type;
	r->lkid = lkid;
	r->w = w;
	r->flags = m->type == DLMW_LOCK ? m->u.lock.flags : m->type == DLMW_UNLOCK ? m->u.unlock.flags : 0;
	ls->req_count++;
	ls->submitted++;
	return 0;
}

static int send_all(int fd, const uint8_t *p, size_t len)
{
	while (len > 0) {
		ssize_t n = send(fd, p, len, MSG_NOSIGNAL);
		if (n < 0) {
			if (errno == EINTR)
				continue;
			return -errno;
		}
		p += n;
		len -= (size_t)n;
	}
	return 0;
}

/* Sends whatever the output buffer holds. Called without mu. */
static void ls_flush(struct dlm_ls *ls)
{
	struct buf tmp;
	int err;
	pthread_mutex_lock(&ls->wmu);
	pthread_mutex_lock(&ls->mu);
	if (ls->out.len == 0 || ls->dead) {
		pthread_mutex_unlock(&ls->mu);
		pthread_mutex_unlock(&ls->wmu);
		return;
	}
	tmp = ls->wbuf;
	ls->wbuf = ls->out;
	ls->out = tmp;
	ls->out.len = 0;
	pthread_mutex_unlock(&ls->mu);
	err = send_all(ls->fd, ls->wbuf.p, ls->wbuf.len);
	ls->wbuf.len = 0;
	pthread_mutex_unlock(&ls->wmu);
	if (err) {
		pthread_mutex_lock(&ls->mu);
		ls_die(ls, ENOTCONN);
		pthread_mutex_unlock(&ls->mu);
	}
}

/* After a submit: releases mu and sends now, unless this thread is running this handle's callbacks (then
 * the batch goes out in one write when they are done). */
static void ls_unlock_kick(struct dlm_ls *ls)
{
	bool now = tls_corked != ls || ls->out.len > 65536;
	pthread_mutex_unlock(&ls->mu);
	if (now)
		ls_flush(ls);
}

/* MARK: callbacks */

static struct cb *cb_push(struct dlm_ls *ls)
{
	struct cb *c;
	if (ls->cb_count == ls->cb_cap) {
		size_t cap = ls->cb_cap ? ls->cb_cap * 2 : 64;
		struct cb *n = malloc(cap * sizeof(*n));
		if (!n)
			return NULL;
		for (size_t i = 0; i < ls->cb_count; i++)
			n[i] = ls->cbs[(ls->cb_head + i) % ls->cb_cap];
		free(ls->cbs);
		ls->cbs = n;
		ls->cb_cap = cap;
		ls->cb_head = 0;
	}
	c = &ls->cbs[(ls->cb_head + ls->cb_count) % ls->cb_cap];
	memset(c, 0, sizeof(*c));
	ls->cb_count++;
	return c;
}

static void fill_lvb(struct cb *c, const struct dlmw_msg *m)
{
	size_t n = m->u.completion.lvb_len;
	if (n == 0)
		return;
	if (n > DLM_LVB_LEN)
		n = DLM_LVB_LEN;
	memcpy(c->lvb, m->u.completion.lvb, n);
	c->has_lvb = true;
}

/* Queues the end of one operation: a wake-up for a synchronous caller, or the AST (fn may be NULL: then
 * only the lksb is written). */
static void queue_completion(struct dlm_ls *ls, struct syncw *w, struct dlm_lksb *lksb, ast_fn fn, void *arg,
			     uint32_t lkid, int status, uint8_t sb_flags, const struct dlmw_msg *lvb_from)
{
	struct cb *c = cb_push(ls);
	if (!c) {
		ls_die(ls, ENOMEM);
		return;
	}
	c->kind = w ? CB_WAKE : CB_AST;
	c->w = w;
	if (w) {
		w->queued = true;
		lksb = w->lksb;
	}
	c->lksb = lksb;
	c->set_lksb = lksb != NULL;
	c->fn = fn;
	c->arg = arg;
	c->lkid = lkid;
	c->status = status;
	c->sb_flags = sb_flags;
	if (lvb_from)
		fill_lvb(c, lvb_from);
}

static void write_lksb(const struct cb *c)
{
	struct dlm_lksb *lksb = c->lksb;
	if (!c->set_lksb || !lksb)
		return;
	lksb->sb_status = c->status;
	lksb->sb_lkid = c->lkid;
	lksb->sb_flags = (char)c->sb_flags;
	if (c->has_lvb && lksb->sb_lvbptr)
		memcpy(lksb->sb_lvbptr, c->lvb, DLM_LVB_LEN);
}

/* Runs the queued callbacks in order, outside mu. Requests they make are sent together at the end. */
static void ls_drain(struct dlm_ls *ls)
{
	struct dlm_ls *outer = tls_corked;
	tls_corked = ls;
	for (;;) {
		struct cb c;
		pthread_mutex_lock(&ls->mu);
		if (ls->cb_count == 0) {
			pthread_mutex_unlock(&ls->mu);
			break;
		}
		c = ls->cbs[ls->cb_head];
		ls->cb_head = (ls->cb_head + 1) % ls->cb_cap;
		ls->cb_count--;
		if (c.kind == CB_WAKE) {
			write_lksb(&c);
			c.w->status = c.status;
			c.w->queued = false;
			c.w->done = true;
			pthread_cond_broadcast(&ls->cond);
			pthread_mutex_unlock(&ls->mu);
			continue;
		}
		if (ls->closing) {
			pthread_mutex_unlock(&ls->mu);
			continue;
		}
		pthread_mutex_unlock(&ls->mu);
		if (c.kind == CB_AST) {
			write_lksb(&c);
			if (c.fn)
				c.fn(c.arg);
		} else {
			/* libdlm's bast takes the argument only; the mode comes second for those who want it (the
			 * calling conventions of Linux' ABIs ignore an argument the callee does not declare). */
			bast_mode_fn fn = (bast_mode_fn)(void (*)(void))c.fn;
			fn(c.arg, c.mode);
		}
	}
	tls_corked = outer;
	ls_flush(ls);
}

/* MARK: receiving */

static void remove_lock(struct dlm_ls *ls, struct lk *lk)
{
	if (lk->parent) {
		struct lk *parent = idmap_get(&ls->by_lkid, lk->parent);
		if (parent && parent->children)
			parent->children--;
	}
	idmap_del(&ls->by_lkid, lk->lkid);
	if (lk->srvid && idmap_get(&ls->by_srvid, lk->srvid) == lk)
		idmap_del(&ls->by_srvid, lk->srvid);
	free(lk);
}

static void wake_err(struct dlm_ls *ls, struct syncw *w, int err)
{
	if (!w)
		return;
	w->err = err;
	w->done = true;
	pthread_cond_broadcast(&ls->cond);
}

/* Sends the pending unlock of `lk`. On failure (positive errno returned) the unlock is dropped. */
static int send_unlock(struct dlm_ls *ls, struct lk *lk)
{
	struct dlmw_msg m;
	int err;
	memset(&m, 0, sizeof(m));
	m.type = DLMW_UNLOCK;
	m.u.unlock.lock = lk->srvid;
	m.u.unlock.flags = lk->unlock_flags;
	m.u.unlock.lvb = lk->unlock_lvb;
	m.u.unlock.lvb_len = lk->unlock_lvb_len;
	err = ls_submit(ls, &m, lk->lkid, NULL);
	if (err) {
		lk->unlocking = false;
		wake_err(ls, lk->unlock_w, -err);
		lk->unlock_w = NULL;
	}
	return -err;
}

/* A cancel or forced unlock asked for before the daemon's lock id was known: send it, or drop it when
 * there is nothing left to cancel. */
static void run_deferred(struct dlm_ls *ls, struct lk *lk)
{
	if (!lk->deferred)
		return;
	lk->deferred = false;
	if ((lk->unlock_flags & LKF_CANCEL) && lk->main == OP_NONE) {
		lk->unlocking = false;
		wake_err(ls, lk->unlock_w, EBUSY);
		lk->unlock_w = NULL;
		return;
	}
	send_unlock(ls, lk);
}

/* A lock operation ended (CLIENT.md §6): a request or conversion (any status but EUNLOCK and ECANCEL), or
 * an unlock or cancel, which also ends a pending request or conversion. */
static void on_completion(struct dlm_ls *ls, struct lk *lk, const struct dlmw_msg *m)
{
	int status = m->u.completion.status;
	uint8_t mode = m->u.completion.mode;
	uint8_t sb_flags = m->u.completion.sb_flags & (DLM_SBF_DEMOTED | DLM_SBF_VALNOTVALID | DLM_SBF_ALTMODE);
	bool gone = mode == MODE_NONE;

	if (status == EUNLOCK || status == ECANCEL) {
		struct syncw *main_w = lk->main != OP_NONE ? lk->main_w : NULL;
		lk->main = OP_NONE;
		lk->main_w = NULL;
		if (lk->unlocking && !lk->deferred) {
			struct dlm_lksb *lksb = lk->ulksb ? lk->ulksb : lk->lksb;
			void *arg = lk->uastarg ? lk->uastarg : lk->astarg;
			if (lk->unlock_w || !lk->silent)
				queue_completion(ls, lk->unlock_w, lksb, lk->ast, arg, lk->lkid, status, 0, NULL);
			lk->lksb = lksb;
			lk->astarg = arg;
			lk->unlocking = false;
			lk->unlock_w = NULL;
		} else if (!main_w && !lk->silent) {
			/* An unlock nobody here asked for: a sub-lock of a force-unlocked parent. */
			queue_completion(ls, NULL, lk->lksb, lk->ast, lk->astarg, lk->lkid, status, 0, NULL);
		}
		/* A synchronous request or conversion ended by a cancel or forced unlock: woken after the
		 * canceller's lksb is written, so that both are when the waiter returns. */
		if (main_w)
			queue_completion(ls, main_w, NULL, NULL, NULL, lk->lkid, status, 0, NULL);
		if (!gone)
			lk->granted = mode;
	} else {
		if (lk->main == OP_NONE)
			return; /* nothing pending: not ours to end */
		if (lk->main_w || !lk->silent)
			queue_completion(ls, lk->main_w, lk->lksb, lk->ast, lk->astarg, lk->lkid, status, sb_flags,
					 (lk->main_flags & LKF_VALBLK) ? m : NULL);
		lk->main = OP_NONE;
		lk->main_w = NULL;
		if (!gone)
			lk->granted = mode;
	}
	if (gone) {
		if (lk->unlocking) {
			/* A cancel or forced unlock still waiting to be sent finds nothing. */
			wake_err(ls, lk->unlock_w, lk->deferred ? EBUSY : ENOENT);
		}
		remove_lock(ls, lk);
		return;
	}
	run_deferred(ls, lk);
}

static void set_srvid(struct dlm_ls *ls, struct lk *lk, uint32_t srvid)
{
	if (lk->srvid || srvid == 0 || idmap_get(&ls->by_srvid, srvid)) {
		ls_die(ls, EPROTO);
		return;
	}
	lk->srvid = srvid;
	if (idmap_put(&ls->by_srvid, srvid, lk))
		ls_die(ls, ENOMEM);
}

/* The reply to the request at the head of the FIFO. */
static void on_reply(struct dlm_ls *ls, const struct dlmw_msg *m)
{
	struct req r;
	struct lk *lk;
	if (ls->req_count == 0 || ls->reqs[ls->req_head].tag != m->tag) {
		ls_die(ls, EPROTO);
		return;
	}
	r = ls->reqs[ls->req_head];
	ls->req_head = (ls->req_head + 1) % ls->req_cap;
	ls->req_count--;
	ls->replied++;
	lk = r.lkid ? idmap_get(&ls->by_lkid, r.lkid) : NULL;

	switch (r.type) {
	case DLMW_LOCK:
		if (!lk) {
			/* The lock went (a purge): nothing to tell. */
			return;
		}
		if (m->type == DLMW_ERROR) {
			int err = status_errno(m->u.error.status);
			if (r.w)
				wake_err(ls, r.w, err);
			else if (lk->main_w)
				wake_err(ls, lk->main_w, err);
			else if (!lk->silent)
				queue_completion(ls, NULL, lk->lksb, lk->ast, lk->astarg, lk->lkid, err, 0, NULL);
			lk->main_w = NULL;
			if (lk->unlocking)
				wake_err(ls, lk->unlock_w, ENOENT);
			remove_lock(ls, lk);
			return;
		}
		if (m->type == DLMW_OK) {
			set_srvid(ls, lk, m->u.ok.lock);
			wake_err(ls, r.w, ls->dead ? dead_errno(ls) : 0);
			run_deferred(ls, lk);
			return;
		}
		if (m->type == DLMW_COMPLETION) {
			set_srvid(ls, lk, m->u.completion.lock);
			wake_err(ls, r.w, ls->dead ? dead_errno(ls) : 0);
			if (!ls->dead)
				on_completion(ls, lk, m);
			return;
		}
		break;
	case DLMW_CONVERT:
		if (!lk)
			return;
		if (m->type == DLMW_ERROR) {
			int err = status_errno(m->u.error.status);
			if (lk->main_w)
				wake_err(ls, lk->main_w, err);
			else if (!lk->silent)
				queue_completion(ls, NULL, lk->lksb, lk->ast, lk->astarg, lk->lkid, err, 0, NULL);
			lk->main = OP_NONE;
			lk->main_w = NULL;
			return;
		}
		if (m->type == DLMW_OK)
			return;
		if (m->type == DLMW_COMPLETION) {
			if (m->u.completion.lock != lk->srvid)
				break;
			on_completion(ls, lk, m);
			return;
		}
		break;
	case DLMW_UNLOCK:
		if (!lk)
			return;
		if (m->type == DLMW_ERROR) {
			int err = status_errno(m->u.error.status);
			struct syncw *w = lk->unlock_w;
			lk->unlocking = false;
			lk->unlock_w = NULL;
			if (w)
				wake_err(ls, w, err);
			else if (!((r.flags & LKF_CANCEL) && err == EBUSY) && !lk->silent)
				queue_completion(ls, NULL, lk->ulksb ? lk->ulksb : lk->lksb, lk->ast,
						 lk->uastarg ? lk->uastarg : lk->astarg, lk->lkid, err, 0, NULL);
			return;
		}
		if (m->type == DLMW_COMPLETION) {
			if (m->u.completion.lock != lk->srvid)
				break;
			on_completion(ls, lk, m);
			return;
		}
		break;
	case DLMW_LOCKSPACE_OPEN:
		if (m->type == DLMW_LOCKSPACE) {
			if (r.w) {
				r.w->value = m->u.lockspace.lockspace;
				r.w->lvb_length = m->u.lockspace.lvb_length;
				r.w->created = m->u.lockspace.created;
			}
			wake_err(ls, r.w, 0);
			return;
		}
		if (m->type == DLMW_ERROR) {
			wake_err(ls, r.w, status_errno(m->u.error.status));
			return;
		}
		break;
	case DLMW_QUERY:
		if (m->type == DLMW_QUERY_REPLY) {
			if (r.w) {
				r.w->json = malloc((size_t)m->u.query_reply.json_len + 1);
				if (!r.w->json) {
					wake_err(ls, r.w, ENOMEM);
					return;
				}
				memcpy(r.w->json, m->u.query_reply.json, m->u.query_reply.json_len);
				r.w->json[m->u.query_reply.json_len] = 0;
				r.w->json_len = m->u.query_reply.json_len;
			}
			wake_err(ls, r.w, 0);
			return;
		}
		if (m->type == DLMW_ERROR) {
			wake_err(ls, r.w, status_errno(m->u.error.status));
			return;
		}
		break;
	case DLMW_PING:
		if (m->type == DLMW_PONG) {
			wake_err(ls, r.w, 0);
			return;
		}
		break;
	case DLMW_PURGE:
		if (m->type == DLMW_PURGED) {
			if (r.w)
				r.w->value = m->u.purged.count;
			wake_err(ls, r.w, 0);
			return;
		}
		if (m->type == DLMW_ERROR) {
			wake_err(ls, r.w, status_errno(m->u.error.status));
			return;
		}
		break;
	default: /* LOCKSPACE_RELEASE, DEADLOCK_CANCEL, BYE */
		if (m->type == DLMW_OK) {
			if (r.w)
				r.w->value = m->u.ok.lock;
			wake_err(ls, r.w, 0);
			return;
		}
		if (m->type == DLMW_ERROR) {
			wake_err(ls, r.w, status_errno(m->u.error.status));
			return;
		}
		break;
	}
	/* A reply of the wrong kind. */
	ls_die(ls, EPROTO);
}

/* One decoded frame from dlmd. Called with mu held. */
static void on_frame(struct dlm_ls *ls, const struct dlmw_msg *m)
{
	struct lk *lk;
	switch (m->type) {
	case DLMW_COMPLETION:
		if (m->tag) {
			on_reply(ls, m);
			return;
		}
		lk = idmap_get(&ls->by_srvid, m->u.completion.lock);
		if (lk)
			on_completion(ls, lk, m);
		return;
	case DLMW_BLOCKING:
		lk = idmap_get(&ls->by_srvid, m->u.blocking.lock);
		if (lk && lk->bast && !lk->silent && lk->granted != MODE_NONE) {
			struct cb *c = cb_push(ls);
			if (!c) {
				ls_die(ls, ENOMEM);
				return;
			}
			c->kind = CB_BAST;
			c->fn = lk->bast;
			c->arg = lk->bastarg;
			c->mode = m->u.blocking.mode;
			c->lkid = lk->lkid;
		}
		return;
	case DLMW_ERROR:
		if (m->tag == 0) {
			/* dlmd refused a frame of ours and closes the connection. */
			ls_die(ls, status_errno(m->u.error.status));
			return;
		}
		on_reply(ls, m);
		return;
	case DLMW_OK:
	case DLMW_LOCKSPACE:
	case DLMW_PURGED:
	case DLMW_PONG:
	case DLMW_QUERY_REPLY:
		if (m->tag == 0)
			break;
		on_reply(ls, m);
		return;
	case DLMW_GOODBYE:
		ls_die(ls, ESHUTDOWN);
		return;
	default:
		break;
	}
	ls_die(ls, EPROTO);
}

/* Decodes and handles every whole frame in the input buffer. Called with mu held, by the reader. */
static void process_input(struct dlm_ls *ls)
{
	size_t pos = 0;
	while (!ls->dead) {
		size_t frame_len;
		struct dlmw_msg m;
		int r = dlmw_split(ls->in.p + pos, ls->in.len - pos, DLMW_MAX_SERVER_FRAME, &frame_len);
		if (r < 0) {
			ls_die(ls, -r);
			break;
		}
		if (r == 0)
			break;
		if (dlmw_decode(DLMW_FROM_SERVER, ls->in.p + pos, frame_len, &m)) {
			ls_die(ls, EPROTO);
			break;
		}
		on_frame(ls, &m);
		pos += frame_len;
	}
	if (pos > 0) {
		memmove(ls->in.p, ls->in.p + pos, ls->in.len - pos);
		ls->in.len -= pos;
	}
}

/*
 * One round of the reader: send what waits, read what has arrived (waiting for it if `block`, or for the
 * stop signal of the AST thread if `wake`), handle it, run the callbacks. Called by the thread that holds the reader role, without mu. Returns the number of
 * bytes read, or -1 when the connection is dead.
 */
static ssize_t read_round(struct dlm_ls *ls, bool block, bool wake)
{
	ssize_t got = 0;
	bool dead;
	ls_flush(ls);
	pthread_mutex_lock(&ls->mu);
	dead = ls->dead;
	pthread_mutex_unlock(&ls->mu);
	if (!dead) {
		size_t want = 65536;
		ssize_t n;
		if (block) {
			struct pollfd p[2] = {{ls->fd, POLLIN, 0}, {ls->wake_fd, POLLIN, 0}};
			int np = wake && ls->wake_fd >= 0 ? 2 : 1;
			while (poll(p, (nfds_t)np, -1) < 0 && errno == EINTR)
				;
		}
		/* Room for the frame being received, however long. */
		if (ls->in.len >= 4) {
			size_t length = (size_t)ls->in.p[0] << 24 | (size_t)ls->in.p[1] << 16 |
					(size_t)ls->in.p[2] << 8 | ls->in.p[3];
			if (length <= DLMW_MAX_SERVER_FRAME && length + 4 > ls->in.len + want)
				want = length + 4 - ls->in.len;
		}
		if (buf_reserve(&ls->in, want)) {
			pthread_mutex_lock(&ls->mu);
			ls_die(ls, ENOMEM);
			pthread_mutex_unlock(&ls->mu);
		} else {
			do
				n = recv(ls->fd, ls->in.p + ls->in.len, ls->in.cap - ls->in.len, MSG_DONTWAIT);
			while (n < 0 && errno == EINTR);
			pthread_mutex_lock(&ls->mu);
			if (n > 0) {
				ls->in.len += (size_t)n;
				got = n;
				process_input(ls);
				/* Waiters may wait for a state (every reply in, a lock id known) rather than a wake-up. */
				if (ls->waiters)
					pthread_cond_broadcast(&ls->cond);
			} else if (n == 0) {
				ls_die(ls, ls->in.len ? EPROTO : ENOTCONN);
			} else if (errno != EAGAIN && errno != EWOULDBLOCK) {
				ls_die(ls, ENOTCONN);
			}
			pthread_mutex_unlock(&ls->mu);
		}
	}
	ls_drain(ls);
	pthread_mutex_lock(&ls->mu);
	dead = ls->dead && ls->cb_count == 0;
	pthread_mutex_unlock(&ls->mu);
	return dead ? -1 : got;
}

/*
 * Waits, with mu held, until `done(ls, arg)`: reads the socket itself when no one else does (or when this
 * thread is the reader, from inside a callback), else waits for the reader. Returns 0, or -errno when the
 * connection died first.
 */
static int wait_until(struct dlm_ls *ls, bool (*done)(struct dlm_ls *, void *), void *arg)
{
	pthread_t self = pthread_self();
	while (!done(ls, arg)) {
		if (ls->dead && ls->cb_count == 0)
			return -dead_errno(ls);
		if (!ls->reading || pthread_equal(ls->reader, self)) {
			bool nested = ls->reading;
			ls->reading = true;
			ls->reader = self;
			pthread_mutex_unlock(&ls->mu);
			read_round(ls, true, false);
			pthread_mutex_lock(&ls->mu);
			if (!nested) {
				ls->reading = false;
				pthread_cond_broadcast(&ls->cond);
			}
		} else {
			ls->waiters++;
			pthread_cond_wait(&ls->cond, &ls->mu);
			ls->waiters--;
		}
	}
	return 0;
}

static bool syncw_done(struct dlm_ls *ls, void *arg)
{
	struct syncw *w = arg;
	(void)ls;
	return w->done;
}

/* Waits for `w` (mu held). A wake-up already queued still comes on a dead connection: the queue is drained
 * before wait_until gives up. */
static int wait_syncw(struct dlm_ls *ls, struct syncw *w)
{
	int err;
	ls_ref(ls);
	err = wait_until(ls, syncw_done, w);
	ls_unref(ls);
	if (err)
		return err;
	return w->err ? -w->err : 0;
}

/* Submits a request and waits for its reply (or completion, for lock requests with a waiter). */
static int submit_wait(struct dlm_ls *ls, struct dlmw_msg *m, struct syncw *w)
{
	int err;
	pthread_mutex_lock(&ls->mu);
	err = ls_submit(ls, m, 0, w);
	pthread_mutex_unlock(&ls->mu);
	if (err)
		return err;
	ls_flush(ls);
	pthread_mutex_lock(&ls->mu);
	err = wait_syncw(ls, w);
	pthread_mutex_unlock(&ls->mu);
	return err;
}

/* MARK: connecting */

static void client_name(char *out, size_t size)
{
	const char *prog = program_invocation_short_name;
	size_t n = 0;
	n = (size_t)snprintf(out, size, "libdlm:");
	for (; prog && *prog && n + 1 < size; prog++)
		out[n++] = (*prog >= 0x20 && *prog < 0x7f) ? *prog : '?';
	out[n] = 0;
}

/* Reads until one whole frame is in ls->in (before the reader machinery runs: HELLO). */
static int read_frame_blocking(struct dlm_ls *ls, struct dlmw_msg *m, size_t *frame_len)
{
	for (;;) {
		int r = dlmw_split(ls->in.p, ls->in.len, DLMW_MAX_SERVER_FRAME, frame_len);
		ssize_t n;
		if (r < 0)
			return r;
		if (r == 1)
			return dlmw_decode(DLMW_FROM_SERVER, ls->in.p, *frame_len, m);
		if (buf_reserve(&ls->in, 4096))
			return -ENOMEM;
		n = recv(ls->fd, ls->in.p + ls->in.len, ls->in.cap - ls->in.len, 0);
		if (n < 0 && errno == EINTR)
			continue;
		if (n <= 0)
			return n == 0 ? -ECONNRESET : -errno;
		ls->in.len += (size_t)n;
	}
}

/* Connects to dlmd and says HELLO. Returns a handle without a lockspace, or NULL with errno. */
static struct dlm_ls *ls_connect(void)
{
	const char *path = getenv("DLM_SOCKET");
	struct sockaddr_un addr;
	struct dlm_ls *ls;
	struct dlmw_msg m;
	char name[80];
	uint8_t hello[128];
	size_t size, frame_len;
	int err;

	if (!path || !*path)
		path = DEFAULT_SOCKET;
	if (strlen(path) >= sizeof(addr.sun_path)) {
		errno = ENAMETOOLONG;
		return NULL;
	}
	ls = calloc(1, sizeof(*ls));
	if (!ls)
		return NULL;
	ls->magic = HANDLE_MAGIC;
	atomic_init(&ls->refs, 1);
	ls->wake_fd = -1;
	pthread_mutex_init(&ls->mu, NULL);
	pthread_mutex_init(&ls->wmu, NULL);
	pthread_cond_init(&ls->cond, NULL);
	ls->fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
	if (ls->fd < 0)
		goto fail;
	memset(&addr, 0, sizeof(addr));
	addr.sun_family = AF_UNIX;
	memcpy(addr.sun_path, path, strlen(path));
	while (connect(ls->fd, (struct sockaddr *)&addr, sizeof(addr)) < 0)
		if (errno != EINTR)
			goto fail;

	client_name(name, sizeof(name));
	memset(&m, 0, sizeof(m));
	m.type = DLMW_HELLO;
	m.u.hello.magic = DLMW_MAGIC;
	m.u.hello.min_version = DLMW_VERSION;
	m.u.hello.max_version = DLMW_VERSION;
	m.u.hello.pid = (uint32_t)getpid();
	m.u.hello.name = (const uint8_t *)name;
	m.u.hello.name_len = (uint16_t)strlen(name);
	size = dlmw_encode(&m, hello);
	err = send_all(ls->fd, hello, size);
	if (!err || err == -EPIPE || err == -ECONNRESET) {
		/* dlmd may refuse the connection before it reads HELLO (too many connections): its ERROR says why. */
		int sent = err;
		err = read_frame_blocking(ls, &m, &frame_len);
		if (!err && m.type == DLMW_ERROR)
			err = -status_errno(m.u.error.status);
		else if (!err && sent)
			err = sent;
		else if (!err && (m.type != DLMW_HELLO_REPLY || m.u.hello_reply.version != DLMW_VERSION))
			err = -EPROTO;
	}
	if (err) {
		errno = -err;
		goto fail;
	}
	ls->node_id = m.u.hello_reply.node_id;
	memmove(ls->in.p, ls->in.p + frame_len, ls->in.len - frame_len);
	ls->in.len -= frame_len;
	return ls;
fail:
	err = errno;
	ls_destroy(ls);
	errno = err;
	return NULL;
}

static void registry_add(struct dlm_ls *ls)
{
	pthread_mutex_lock(&registry_mu);
	ls->next_handle = registry;
	registry = ls;
	pthread_mutex_unlock(&registry_mu);
}

static void registry_remove(struct dlm_ls *ls)
{
	pthread_mutex_lock(&registry_mu);
	for (struct dlm_ls **p = &registry; *p; p = &(*p)->next_handle)
		if (*p == ls) {
			*p = ls->next_handle;
			break;
		}
	pthread_mutex_unlock(&registry_mu);
}

static int check_ls_name(const char *name)
{
	size_t len;
	if (!name)
		return EINVAL;
	len = strlen(name);
	if (len == 0 || len > DLM_LOCKSPACE_LEN)
		return EINVAL;
	return 0;
}

/* Opens (creating it if `create`) the lockspace `name` on a connection of its own. */
/* Opens a lockspace, creating it (with permission bits `mode`, for this process's uid and gid) if `create`. */
static struct dlm_ls *ls_open(const char *name, bool create, bool exclusive, mode_t mode)
{
	struct dlm_ls *ls;
	struct dlmw_msg m;
	struct syncw w;
	int err = check_ls_name(name);
	if (err) {
		errno = err;
		return NULL;
	}
	ls = ls_connect();
	if (!ls)
		return NULL;
	memset(&m, 0, sizeof(m));
	memset(&w, 0, sizeof(w));
	m.type = DLMW_LOCKSPACE_OPEN;
	m.u.ls_open.flags = create ? 1 : 0;
	m.u.ls_open.lvb_length = 0;
	m.u.ls_open.mode = (uint16_t)(mode & 0777);
	m.u.ls_open.name = (const uint8_t *)name;
	m.u.ls_open.name_len = (uint8_t)strlen(name);
	err = submit_wait(ls, &m, &w);
	if (!err && exclusive && !w.created)
		err = -EEXIST;
	if (err) {
		ls_destroy(ls);
		errno = -err;
		return NULL;
	}
	ls->ls_id = w.value;
	ls->lvb_len = w.lvb_length;
	snprintf(ls->name, sizeof(ls->name), "%s", name);
	registry_add(ls);
	return ls;
}

/* MARK: the AST thread */

#if DLM_THREADED
static void *ast_thread(void *arg)
{
	struct dlm_ls *ls = arg;
	pthread_t self = pthread_self();
	pthread_mutex_lock(&ls->mu);
	while (ls->reading && !ls->stop)
		pthread_cond_wait(&ls->cond, &ls->mu);
	if (!ls->stop) {
		ls->reading = true;
		ls->reader = self;
		while (!ls->stop && !(ls->dead && ls->cb_count == 0)) {
			pthread_mutex_unlock(&ls->mu);
			read_round(ls, true, true);
			pthread_mutex_lock(&ls->mu);
		}
		ls->reading = false;
		pthread_cond_broadcast(&ls->cond);
	}
	pthread_mutex_unlock(&ls->mu);
	ls_unref(ls);
	return NULL;
}

static int start_thread(struct dlm_ls *ls)
{
	int err;
	pthread_mutex_lock(&ls->mu);
	if (ls->has_thread) {
		pthread_mutex_unlock(&ls->mu);
		return EEXIST;
	}
	if (ls->wake_fd < 0)
		ls->wake_fd = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
	if (ls->wake_fd < 0) {
		err = errno;
		pthread_mutex_unlock(&ls->mu);
		return err;
	}
	ls_ref(ls);
	err = pthread_create(&ls->thread, NULL, ast_thread, ls);
	if (err) {
		pthread_mutex_unlock(&ls->mu);
		ls_unref(ls);
		return err;
	}
	ls->has_thread = true;
	pthread_mutex_unlock(&ls->mu);
	return 0;
}
#endif

/* Stops the AST thread, if there is one (from inside an AST, it finishes after that AST returns). */
static void stop_thread(struct dlm_ls *ls)
{
	bool join;
	pthread_mutex_lock(&ls->mu);
	join = ls->has_thread;
	ls->stop = true;
	ls->has_thread = false;
	pthread_cond_broadcast(&ls->cond);
	pthread_mutex_unlock(&ls->mu);
	if (!join)
		return;
	if (ls->wake_fd >= 0) {
		uint64_t one = 1;
		ssize_t n = write(ls->wake_fd, &one, sizeof(one));
		(void)n;
	}
	if (pthread_equal(ls->thread, pthread_self()))
		pthread_detach(ls->thread);
	else
		pthread_join(ls->thread, NULL);
}

/* Closes a handle: no more ASTs; dlmd releases its locks (persistent ones become orphans). */
static void ls_close(struct dlm_ls *ls)
{
	registry_remove(ls);
	pthread_mutex_lock(&ls->mu);
	ls->closing = true;
	ls_die(ls, ENOTCONN);
	pthread_mutex_unlock(&ls->mu);
	stop_thread(ls);
	ls_unref(ls);
}

/* MARK: locks */

static struct lk *new_lock(struct dlm_ls *ls)
{
	struct lk *lk = calloc(1, sizeof(*lk));
	if (!lk)
		return NULL;
	do {
		if (++ls->next_lkid == 0)
			ls->next_lkid = 1;
	} while (idmap_get(&ls->by_lkid, ls->next_lkid));
	lk->lkid = ls->next_lkid;
	lk->granted = MODE_NONE;
	if (idmap_put(&ls->by_lkid, lk->lkid, lk)) {
		free(lk);
		return NULL;
	}
	return lk;
}

/* The bytes of a value block to send: the first DLM_LVB_LEN bytes, at most the lockspace's length. */
static uint8_t lvb_send_len(const struct dlm_ls *ls)
{
	return ls->lvb_len < DLM_LVB_LEN ? ls->lvb_len : DLM_LVB_LEN;
}

/* The result of a synchronous lock call once its completion is in the lksb. The threaded library returns
 * 0 and leaves the status in the lksb; libdlm_lt also fails with errno = status (as upstream). */
static int sync_result(const struct dlm_lksb *lksb)
{
#if DLM_THREADED
	(void)lksb;
	return 0;
#else
	if (lksb->sb_status != 0 && lksb->sb_status != EUNLOCK)
		return set_errno(lksb->sb_status);
	return 0;
#endif
}

/* The flag checks of a request (Linux set_lock_args / dlmd's Validation.swift) that need no lock state. */
static int check_request_flags(uint32_t mode, uint32_t flags, uint32_t parent, const uint64_t *timeout)
{
	if (mode > LKM_EXMODE)
		return EINVAL;
	if (flags & ~(uint32_t)(REQUEST_FLAGS | LKF_WAIT))
		return EINVAL;
	if (flags & LKF_CONVERT) {
		if (flags & (LKF_EXPEDITE | LKF_ORPHAN))
			return EINVAL;
		if ((flags & LKF_CONVDEADLK) && (flags & LKF_NOQUEUE))
			return EINVAL;
	} else {
		if (flags & (LKF_QUECVT | LKF_CONVDEADLK))
			return EINVAL;
		if ((flags & LKF_EXPEDITE) && ((flags & LKF_NOQUEUE) || mode != LKM_NLMODE))
			return EINVAL;
		if ((flags & LKF_ORPHAN) && parent)
			return EINVAL;
	}
	if ((flags & LKF_TIMEOUT) && (!timeout || *timeout == 0))
		return EINVAL;
	return 0;
}

static bool allows_queued_conversion(uint8_t from, uint32_t to)
{
	if ((from == LKM_PRMODE && to == LKM_CWMODE) || (from == LKM_CWMODE && to == LKM_PRMODE))
		return true;
	return to > from;
}

static uint64_t timeout_ns(uint32_t flags, const uint64_t *timeout)
{
	/* libdlm's timeout is in centiseconds. */
	if (!(flags & LKF_TIMEOUT))
		return 0;
	if (*timeout > UINT64_MAX / 10000000u)
		return UINT64_MAX;
	return *timeout * 10000000u;
}

/*
 * Every lock request and conversion: dlm_ls_lock, dlm_ls_lockx, dlm_ls_lock_wait and the default-lockspace
 * forms. `wait`: return after the completion (the _wait forms).
 */
static int ls_lock(struct dlm_ls *ls, uint32_t mode, struct dlm_lksb *lksb, uint32_t flags, const void *name,
		   unsigned int namelen, uint32_t parent, ast_fn ast, void *astarg, ast_fn bast, const uint64_t *xid,
		   const uint64_t *timeout, bool wait)
{
	struct dlmw_msg m;
	struct syncw w, reply_w;
	struct lk *lk;
	int err;

	if (!valid_handle(ls))
		return set_errno(ls ? EINVAL : ENOTCONN);
	if (!lksb)
		return set_errno(EINVAL);
	if (flags & LKF_WAIT)
		wait = true;
	flags &= ~(uint32_t)LKF_WAIT;
	err = check_request_flags(mode, flags, parent, timeout);
	if (err)
		return set_errno(err);
	if ((flags & LKF_VALBLK) && !lksb->sb_lvbptr)
		return set_errno(EINVAL);
	if (!(flags & LKF_CONVERT) && (!name || namelen == 0 || namelen > DLM_RESNAME_MAXLEN))
		return set_errno(EINVAL);

	memset(&m, 0, sizeof(m));
	memset(&w, 0, sizeof(w));
	memset(&reply_w, 0, sizeof(reply_w));
	w.lksb = lksb;
	pthread_mutex_lock(&ls->mu);
	if (ls->dead || ls->closing) {
		err = ls->closing ? ENOTCONN : dead_errno(ls);
		goto out_err;
	}
	if (flags & LKF_CONVERT) {
		uint8_t lvb[DLM_LVB_LEN];
		lk = idmap_get(&ls->by_lkid, lksb->sb_lkid);
		if (!lk || lk->silent) {
			err = ENOENT;
			goto out_err;
		}
		if (lk->main != OP_NONE || lk->unlocking || lk->granted == MODE_NONE) {
			err = EBUSY;
			goto out_err;
		}
		if ((flags & LKF_QUECVT) && !allows_queued_conversion(lk->granted, mode)) {
			err = EINVAL;
			goto out_err;
		}
		m.type = DLMW_CONVERT;
		m.u.convert.lock = lk->srvid;
		m.u.convert.flags = flags;
		m.u.convert.mode = (uint8_t)mode;
		m.u.convert.priority = 255;
		m.u.convert.timeout_ns = timeout_ns(flags, timeout);
		if ((flags & LKF_VALBLK) && lk->granted >= LKM_PWMODE) {
			m.u.convert.lvb_len = lvb_send_len(ls);
			memcpy(lvb, lksb->sb_lvbptr, m.u.convert.lvb_len);
			m.u.convert.lvb = lvb;
		}
		lksb->sb_status = EINPROG;
		err = -ls_submit(ls, &m, lk->lkid, NULL);
		if (err)
			goto out_err;
		/* libdlm: a conversion replaces the callbacks and the lksb; the AST argument only if given. */
		lk->ast = ast;
		if (astarg)
			lk->astarg = astarg;
		lk->bast = bast;
		lk->bastarg = astarg;
		lk->lksb = lksb;
		lk->main = OP_CONVERT;
		lk->main_flags = flags;
		lk->main_w = wait ? &w : NULL;
		if (flags & LKF_PERSISTENT)
			lk->persistent = true;
	} else {
		struct lk *parent_lk = NULL;
		if (parent) {
			parent_lk = idmap_get(&ls->by_lkid, parent);
			if (!parent_lk || parent_lk->silent) {
				err = ENOENT;
				goto out_err;
			}
			if (parent_lk->granted == MODE_NONE || !parent_lk->srvid) {
				err = EINVAL;
				goto out_err;
			}
		}
		lk = new_lock(ls);
		if (!lk) {
			err = ENOMEM;
			goto out_err;
		}
		m.type = DLMW_LOCK;
		m.u.lock.lockspace = ls->ls_id;
		m.u.lock.flags = flags;
		m.u.lock.mode = (uint8_t)mode;
		m.u.lock.options = DLMW_OPT_BLOCKING;
		m.u.lock.parent = parent_lk ? parent_lk->srvid : 0;
		m.u.lock.timeout_ns = timeout_ns(flags, timeout);
		m.u.lock.xid = xid ? *xid : 0;
		m.u.lock.name = name;
		m.u.lock.name_len = (uint8_t)namelen;
		lksb->sb_status = EINPROG;
		lksb->sb_lkid = lk->lkid;
		/* ORPHAN's synchronous errors (ENOENT, EAGAIN) come back as the call's own, as with the kernel. */
		err = -ls_submit(ls, &m, lk->lkid, (flags & LKF_ORPHAN) && !wait ? &reply_w : NULL);
		if (err) {
			remove_lock(ls, lk);
			goto out_err;
		}
		lk->ast = ast;
		lk->astarg = astarg;
		lk->bast = bast;
		lk->bastarg = astarg;
		lk->lksb = lksb;
		lk->main = OP_LOCK;
		lk->main_flags = flags;
		lk->main_w = wait ? &w : NULL;
		lk->persistent = (flags & LKF_PERSISTENT) != 0;
		if (parent_lk) {
			lk->parent = parent_lk->lkid;
			parent_lk->children++;
		}
	}
	if (!wait && !(flags & LKF_ORPHAN)) {
		ls_unlock_kick(ls);
		return 0;
	}
	pthread_mutex_unlock(&ls->mu);
	ls_flush(ls);
	pthread_mutex_lock(&ls->mu);
	err = -wait_syncw(ls, wait ? &w : &reply_w);
	pthread_mutex_unlock(&ls->mu);
	if (err)
		return set_errno(err);
	return wait ? sync_result(lksb) : 0;
out_err:
	pthread_mutex_unlock(&ls->mu);
	return set_errno(err);
}

/* Every unlock and cancel: dlm_ls_unlock, dlm_ls_unlock_wait and the default-lockspace forms. */
static int ls_unlock(struct dlm_ls *ls, uint32_t lkid, uint32_t flags, struct dlm_lksb *lksb, void *astarg,
		     bool wait)
{
	struct syncw w;
	struct lk *lk;
	struct dlm_lksb *target;
	int err;

	if (!valid_handle(ls))
		return set_errno(ls ? EINVAL : ENOTCONN);
	if (flags & LKF_WAIT)
		wait = true;
	flags &= ~(uint32_t)LKF_WAIT;
	if (!lkid || (flags & ~(uint32_t)UNLOCK_FLAGS) ||
	    ((flags & LKF_CANCEL) && (flags & LKF_FORCEUNLOCK)))
		return set_errno(EINVAL);
	memset(&w, 0, sizeof(w));
	pthread_mutex_lock(&ls->mu);
	if (ls->dead || ls->closing) {
		err = ls->closing ? ENOTCONN : dead_errno(ls);
		goto out_err;
	}
	lk = idmap_get(&ls->by_lkid, lkid);
	if (!lk || lk->silent) {
		err = ENOENT;
		goto out_err;
	}
	if (flags & LKF_CANCEL) {
		if (lk->main == OP_NONE || lk->unlocking) {
			/* Nothing to cancel: libdlm returns 0 and no AST comes. */
			pthread_mutex_unlock(&ls->mu);
			return wait ? set_errno(EBUSY) : 0;
		}
	} else if (lk->unlocking || (!(flags & LKF_FORCEUNLOCK) && (lk->main != OP_NONE || lk->children))) {
		err = EBUSY;
		goto out_err;
	}
	target = lksb ? lksb : lk->lksb;
	lk->unlock_flags = flags;
	lk->unlock_lvb_len = 0;
	if ((flags & LKF_VALBLK) && !(flags & (LKF_IVVALBLK | LKF_CANCEL)) && lk->granted != MODE_NONE &&
	    lk->granted >= LKM_PWMODE) {
		if (!target || !target->sb_lvbptr) {
			err = EINVAL;
			goto out_err;
		}
		lk->unlock_lvb_len = lvb_send_len(ls);
		memcpy(lk->unlock_lvb, target->sb_lvbptr, lk->unlock_lvb_len);
	}
	w.lksb = target;
	if (target)
		target->sb_status = EINPROG;
	lk->unlocking = true;
	lk->ulksb = target;
	lk->uastarg = astarg;
	lk->unlock_w = wait ? &w : NULL;
	if (lk->srvid) {
		err = send_unlock(ls, lk);
		if (err)
			goto out_err;
	} else {
		lk->deferred = true;
	}
	if (!wait) {
		ls_unlock_kick(ls);
		return 0;
	}
	pthread_mutex_unlock(&ls->mu);
	ls_flush(ls);
	pthread_mutex_lock(&ls->mu);
	err = -wait_syncw(ls, &w);
	pthread_mutex_unlock(&ls->mu);
	if (err)
		return set_errno(err);
	return sync_result(target);
out_err:
	pthread_mutex_unlock(&ls->mu);
	return set_errno(err);
}

static struct dlm_ls *open_default(void)
{
	struct dlm_ls *ls;
	pthread_mutex_lock(&default_mu);
	if (!default_ls)
		default_ls = ls_open(DEFAULT_LOCKSPACE, true, false, 0600);
	ls = default_ls;
	pthread_mutex_unlock(&default_mu);
	return ls;
}

static struct dlm_ls *get_default(void)
{
	struct dlm_ls *ls;
	pthread_mutex_lock(&default_mu);
	ls = default_ls;
	pthread_mutex_unlock(&default_mu);
	return ls;
}

/* MARK: the API: locks */

int dlm_ls_lock(dlm_lshandle_t lockspace, uint32_t mode, struct dlm_lksb *lksb, uint32_t flags, const void *name,
		unsigned int namelen, uint32_t parent, void (*astaddr)(void *astarg), void *astarg,
		void (*bastaddr)(void *astarg), void *range)
{
	if (range)
		return set_errno(ENOSYS);
	return ls_lock(lockspace, mode, lksb, flags, name, namelen, parent, astaddr, astarg, bastaddr, NULL, NULL,
		       false);
}

int dlm_ls_lockx(dlm_lshandle_t lockspace, uint32_t mode, struct dlm_lksb *lksb, uint32_t flags, const void *name,
		 unsigned int namelen, uint32_t parent, void (*astaddr)(void *astarg), void *astarg,
		 void (*bastaddr)(void *astarg), uint64_t *xid, uint64_t *timeout)
{
	return ls_lock(lockspace, mode, lksb, flags, name, namelen, parent, astaddr, astarg, bastaddr, xid, timeout,
		       false);
}

int dlm_ls_lock_wait(dlm_lshandle_t lockspace, uint32_t mode, struct dlm_lksb *lksb, uint32_t flags,
		     const void *name, unsigned int namelen, uint32_t parent, void *bastarg,
		     void (*bastaddr)(void *bastarg), void *range)
{
	if (range)
		return set_errno(ENOSYS);
	return ls_lock(lockspace, mode, lksb, flags, name, namelen, parent, NULL, bastarg, bastaddr, NULL, NULL,
		       true);
}

int dlm_ls_unlock(dlm_lshandle_t lockspace, uint32_t lkid, uint32_t flags, struct dlm_lksb *lksb, void *astarg)
{
	return ls_unlock(lockspace, lkid, flags, lksb, astarg, false);
}

int dlm_ls_unlock_wait(dlm_lshandle_t lockspace, uint32_t lkid, uint32_t flags, struct dlm_lksb *lksb)
{
	return ls_unlock(lockspace, lkid, flags, lksb, NULL, true);
}

int dlm_lock(uint32_t mode, struct dlm_lksb *lksb, uint32_t flags, const void *name, unsigned int namelen,
	     uint32_t parent, void (*astaddr)(void *astarg), void *astarg, void (*bastaddr)(void *astarg),
	     void *range)
{
	struct dlm_ls *ls = open_default();
	if (!ls)
		return -1;
	return dlm_ls_lock(ls, mode, lksb, flags, name, namelen, parent, astaddr, astarg, bastaddr, range);
}

int dlm_lock_wait(uint32_t mode, struct dlm_lksb *lksb, uint32_t flags, const void *name, unsigned int namelen,
		  uint32_t parent, void *bastarg, void (*bastaddr)(void *bastarg), void *range)
{
	struct dlm_ls *ls = open_default();
	if (!ls)
		return -1;
	return dlm_ls_lock_wait(ls, mode, lksb, flags, name, namelen, parent, bastarg, bastaddr, range);
}

int dlm_unlock(uint32_t lkid, uint32_t flags, struct dlm_lksb *lksb, void *astarg)
{
	return dlm_ls_unlock(get_default(), lkid, flags, lksb, astarg);
}

int dlm_unlock_wait(uint32_t lkid, uint32_t flags, struct dlm_lksb *lksb)
{
	return dlm_ls_unlock_wait(get_default(), lkid, flags, lksb);
}

static bool srvid_known(struct dlm_ls *ls, void *arg)
{
	struct lk *lk = idmap_get(&ls->by_lkid, *(uint32_t *)arg);
	return !lk || lk->srvid != 0;
}

int dlm_ls_deadlock_cancel(dlm_lshandle_t lockspace, uint32_t lkid, uint32_t flags)
{
	struct dlm_ls *ls = lockspace;
	struct dlmw_msg m;
	struct syncw w;
	struct lk *lk;
	int err;
	(void)flags;
	if (!valid_handle(ls))
		return set_errno(ls ? EINVAL : ENOTCONN);
	if (!lkid)
		return set_errno(EINVAL);
	memset(&m, 0, sizeof(m));
	memset(&w, 0, sizeof(w));
	pthread_mutex_lock(&ls->mu);
	/* A request just made may not have its reply yet: its daemon lock id is needed. */
	ls_ref(ls);
	err = -wait_until(ls, srvid_known, &lkid);
	ls_unref(ls);
	lk = idmap_get(&ls->by_lkid, lkid);
	if (!err && (!lk || lk->silent))
		err = ENOENT;
	if (!err) {
		m.type = DLMW_DEADLOCK_CANCEL;
		m.u.deadlock_cancel.lock = lk->srvid;
		err = -ls_submit(ls, &m, 0, &w);
	}
	pthread_mutex_unlock(&ls->mu);
	if (err)
		return set_errno(err);
	ls_flush(ls);
	pthread_mutex_lock(&ls->mu);
	err = -wait_syncw(ls, &w);
	pthread_mutex_unlock(&ls->mu);
	return err ? set_errno(err) : 0;
}

/* MARK: purge */

static bool all_replied(struct dlm_ls *ls, void *arg)
{
	return ls->replied >= *(uint64_t *)arg;
}

/* Unlocks every lock of this handle without callbacks (the kernel's purge of the caller's own locks). */
static int purge_own(struct dlm_ls *ls)
{
	uint64_t mark;
	int err;
	pthread_mutex_lock(&ls->mu);
	ls_ref(ls);
	/* First every request in flight gets its reply, so that every lock has the daemon's id. */
	mark = ls->submitted;
	err = -wait_until(ls, all_replied, &mark);
	for (uint32_t i = 0; !err && ls->by_lkid.keys && i <= ls->by_lkid.mask; i++) {
		struct lk *lk = ls->by_lkid.keys[i] ? ls->by_lkid.vals[i] : NULL;
		if (!lk || lk->silent)
			continue;
		lk->silent = true;
		if (lk->unlocking || lk->parent)
			continue; /* an unlock is on its way; a sub-lock goes with its parent */
		lk->unlock_flags = LKF_FORCEUNLOCK;
		lk->unlock_lvb_len = 0;
		lk->unlocking = true;
		lk->ulksb = NULL;
		lk->uastarg = NULL;
		lk->unlock_w = NULL;
		if (lk->srvid)
			send_unlock(ls, lk);
	}
	mark = ls->submitted;
	pthread_mutex_unlock(&ls->mu);
	ls_flush(ls);
	pthread_mutex_lock(&ls->mu);
	if (!err)
		err = -wait_until(ls, all_replied, &mark);
	ls_unref(ls);
	pthread_mutex_unlock(&ls->mu);
	return err;
}

/*
 * Removes the orphans that process `pid` of node `node_id` (0: dlmd's own node) left in the lockspace, with their
 * sub-locks, on the masters of every node: dlmd records each orphan's pid and node (CLIENT.md §7, PURGE). Orphans
 * of other processes stay.
 */
static int purge_orphans(struct dlm_ls *ls, uint32_t node_id, uint32_t pid)
{
	struct dlmw_msg m;
	struct syncw w;
	memset(&m, 0, sizeof(m));
	memset(&w, 0, sizeof(w));
	m.type = DLMW_PURGE;
	m.u.purge.lockspace = ls->ls_id;
	m.u.purge.node_id = node_id;
	m.u.purge.pid = pid;
	return submit_wait(ls, &m, &w);
}

int dlm_ls_purge(dlm_lshandle_t lockspace, int nodeid, int pid)
{
	struct dlm_ls *ls = lockspace;
	int err;
	if (!valid_handle(ls))
		return set_errno(ls ? EINVAL : ENOTCONN);
	/* The orphans of another node's process are on the masters of their resources, on any node: dlmd finds them. */
	if (pid == getpid() && (nodeid == 0 || (uint32_t)nodeid == ls->node_id))
		err = purge_own(ls);
	else
		err = purge_orphans(ls, (uint32_t)nodeid, (uint32_t)pid);
	return err ? set_errno(-err) : 0;
}

/* MARK: the API: file descriptors and dispatch */

int dlm_ls_get_fd(dlm_lshandle_t lockspace)
{
	struct dlm_ls *ls = lockspace;
	if (!valid_handle(ls))
		return set_errno(EINVAL);
	return ls->fd;
}

int dlm_get_fd(void)
{
	struct dlm_ls *ls = open_default();
	if (!ls)
		return -1;
	return ls->fd;
}

int dlm_dispatch(int fd)
{
	struct dlm_ls *ls;
	pthread_t self = pthread_self();
	bool nested;
	int err = 0;

	pthread_mutex_lock(&registry_mu);
	for (ls = registry; ls && ls->fd != fd; ls = ls->next_handle)
		;
	if (ls)
		ls_ref(ls);
	pthread_mutex_unlock(&registry_mu);
	if (!ls)
		return set_errno(EBADF);
	pthread_mutex_lock(&ls->mu);
	if (ls->reading && !pthread_equal(ls->reader, self)) {
		/* The AST thread (or a synchronous call) reads this connection. */
		pthread_mutex_unlock(&ls->mu);
		ls_unref(ls);
		return 0;
	}
	nested = ls->reading;
	ls->reading = true;
	ls->reader = self;
	pthread_mutex_unlock(&ls->mu);
	for (;;) {
		ssize_t n = read_round(ls, false, false);
		if (n < 0) {
			pthread_mutex_lock(&ls->mu);
			err = dead_errno(ls);
			pthread_mutex_unlock(&ls->mu);
			break;
		}
		if (n == 0)
			break;
	}
	pthread_mutex_lock(&ls->mu);
	if (!nested) {
		ls->reading = false;
		pthread_cond_broadcast(&ls->cond);
	}
	pthread_mutex_unlock(&ls->mu);
	ls_unref(ls);
	return err ? set_errno(err) : 0;
}

/* MARK: the API: lockspaces */

dlm_lshandle_t dlm_create_lockspace(const char *name, mode_t mode)
{
	return ls_open(name, true, false, mode);
}

dlm_lshandle_t dlm_new_lockspace(const char *name, mode_t mode, uint32_t flags)
{
	return ls_open(name, true, (flags & DLM_LSFL_NEWEXCL) != 0, mode);
}

dlm_lshandle_t dlm_open_lockspace(const char *name)
{
	return ls_open(name, false, false, 0);
}

int dlm_close_lockspace(dlm_lshandle_t lockspace)
{
	struct dlm_ls *ls = lockspace;
	if (!valid_handle(ls))
		return set_errno(EINVAL);
	pthread_mutex_lock(&default_mu);
	if (default_ls == ls)
		default_ls = NULL;
	pthread_mutex_unlock(&default_mu);
	ls_close(ls);
	return 0;
}

/*
 * Releases the lockspace and closes the handle. Like libdlm, which closes the handle first, our own locks go
 * first: with force 0 the release then fails with EBUSY while other locks (or our persistent ones, which
 * would be orphans) remain; with any other force every lock in the lockspace is dropped.
 */
int dlm_release_lockspace(const char *name, dlm_lshandle_t lockspace, int force)
{
	struct dlm_ls *ls = lockspace;
	struct dlmw_msg m;
	struct syncw w;
	uint64_t mark;
	int err;
	if (!valid_handle(ls))
		return set_errno(EINVAL);
	if (name && check_ls_name(name) == 0 && strcmp(name, ls->name) != 0)
		return set_errno(EINVAL);
	pthread_mutex_lock(&default_mu);
	if (default_ls == ls)
		default_ls = NULL;
	pthread_mutex_unlock(&default_mu);
	registry_remove(ls);
	stop_thread(ls);
	pthread_mutex_lock(&ls->mu);
	ls->closing = true; /* no more ASTs; the application's calls fail with ENOTCONN */
	ls_ref(ls);
	mark = ls->submitted;
	err = -wait_until(ls, all_replied, &mark);
	for (uint32_t i = 0; !err && !force && ls->by_lkid.keys && i <= ls->by_lkid.mask; i++) {
		struct lk *lk = ls->by_lkid.keys[i] ? ls->by_lkid.vals[i] : NULL;
		if (!lk || lk->unlocking || lk->parent || (lk->persistent && lk->granted != MODE_NONE))
			continue;
		lk->silent = true;
		lk->unlock_flags = LKF_FORCEUNLOCK;
		lk->unlock_lvb_len = 0;
		lk->unlocking = true;
		lk->ulksb = NULL;
		lk->uastarg = NULL;
		lk->unlock_w = NULL;
		if (lk->srvid)
			send_unlock(ls, lk);
	}
	memset(&m, 0, sizeof(m));
	memset(&w, 0, sizeof(w));
	m.type = DLMW_LOCKSPACE_RELEASE;
	m.u.ls_release.lockspace = ls->ls_id;
	m.u.ls_release.force = force ? 1 : 0;
	if (!err)
		err = -ls_submit(ls, &m, 0, &w);
	pthread_mutex_unlock(&ls->mu);
	if (!err) {
		ls_flush(ls);
		pthread_mutex_lock(&ls->mu);
		err = -wait_syncw(ls, &w);
		pthread_mutex_unlock(&ls->mu);
	}
	ls_unref(ls);
	ls_close(ls);
	return err ? set_errno(err) : 0;
}

/* MARK: the API: threads */

#if DLM_THREADED
int dlm_ls_pthread_init(dlm_lshandle_t lockspace)
{
	struct dlm_ls *ls = lockspace;
	int err;
	if (!valid_handle(ls))
		return set_errno(EINVAL);
	err = start_thread(ls);
	return err ? set_errno(err) : 0;
}

int dlm_pthread_init(void)
{
	struct dlm_ls *ls = open_default();
	if (!ls)
		return -1;
	return dlm_ls_pthread_init(ls);
}

int dlm_pthread_cleanup(void)
{
	struct dlm_ls *ls;
	pthread_mutex_lock(&default_mu);
	ls = default_ls;
	default_ls = NULL;
	pthread_mutex_unlock(&default_mu);
	if (ls)
		ls_close(ls);
	return 0;
}

/* The simple synchronous API, on the default lockspace. */
int lock_resource(const char *resource, int mode, int flags, int *lockid)
{
	struct dlm_lksb lksb;
	struct dlm_ls *ls = get_default();
	if (!ls) {
		if (dlm_pthread_init() && errno != EEXIST)
			return -1;
		ls = get_default();
	}
	if (!lockid || !resource)
		return set_errno(EINVAL);
	memset(&lksb, 0, sizeof(lksb));
	if (flags & LKF_CONVERT)
		lksb.sb_lkid = (uint32_t)*lockid;
	if (ls_lock(ls, (uint32_t)mode, &lksb, (uint32_t)flags, resource, (unsigned)strlen(resource), 0, NULL, NULL,
		    NULL, NULL, NULL, true))
		return -1;
	*lockid = (int)lksb.sb_lkid;
	errno = lksb.sb_status;
	return lksb.sb_status ? -1 : 0;
}

int unlock_resource(int lockid)
{
	struct dlm_lksb lksb;
	struct dlm_ls *ls = get_default();
	if (!ls)
		return set_errno(ENOTCONN);
	memset(&lksb, 0, sizeof(lksb));
	if (ls_unlock(ls, (uint32_t)lockid, 0, &lksb, NULL, true))
		return -1;
	errno = lksb.sb_status;
	return lksb.sb_status == EUNLOCK ? 0 : -1;
}
#endif

/* MARK: the API: versions */

int dlm_kernel_version(uint32_t *maj, uint32_t *min, uint32_t *patch)
{
	/* No kernel: dlmd stands in for it. Reachable, it offers the interface of this library. */
	struct dlm_ls *ls = ls_connect();
	if (!ls)
		return -1;
	ls_destroy(ls);
	if (!maj || !min || !patch)
		return set_errno(EINVAL);
	*maj = LIB_MAJOR;
	*min = LIB_MINOR;
	*patch = LIB_PATCH;
	return 0;
}

void dlm_library_version(uint32_t *maj, uint32_t *min, uint32_t *patch)
{
	if (maj)
		*maj = LIB_MAJOR;
	if (min)
		*min = LIB_MINOR;
	if (patch)
		*patch = LIB_PATCH;
}
