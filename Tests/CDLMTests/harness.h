/*
 * A small test harness for the C library's tests: cases print "ok - NAME" or "not ok - NAME: why" (the
 * runner counts them), and ASTs are awaited without sleeping, in either flavour:
 * - threaded (linked with -ldlm): every handle opened with h_open gets its AST thread (dlm_ls_pthread_init);
 *   ASTs signal a condition variable that h_wait waits on;
 * - TEST_LT (linked with -ldlm_lt): h_wait polls the fds of the open handles and calls dlm_dispatch.
 * h_wait gives up after 10 s so that a lost AST fails a case instead of hanging the run.
 */
#ifndef CDLM_TEST_HARNESS_H
#define CDLM_TEST_HARNESS_H

#ifndef _GNU_SOURCE
#define _GNU_SOURCE
#endif
#include <errno.h>
#include <poll.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/types.h>
#include <time.h>
#include <unistd.h>

#include <libdlm.h>

/* Each test program uses a part of the harness. */
#define H_UNUSED __attribute__((unused))

#ifdef TEST_LT
#define FLAVOUR "lt"
#else
#define FLAVOUR "threaded"
#endif

static H_UNUSED int h_case_failed;
static H_UNUSED int h_failures;
static char h_prefix[64];

static H_UNUSED void h_fail(const char *file, int line, const char *fmt, ...)
{
	va_list ap;
	if (!h_case_failed)
		printf("# ");
	else
		printf("#   and ");
	printf("%s:%d: ", file, line);
	va_start(ap, fmt);
	vprintf(fmt, ap);
	va_end(ap);
	printf("\n");
	fflush(stdout);
	h_case_failed = 1;
}

#define CHECK(cond)                                                                                  \
	do {                                                                                         \
		if (!(cond))                                                                         \
			h_fail(__FILE__, __LINE__, "%s (errno %d %s)", #cond, errno, strerror(errno)); \
	} while (0)

#define CHECK_EQ(a, b)                                                                                  \
	do {                                                                                            \
		long long _a = (long long)(a), _b = (long long)(b);                                     \
		if (_a != _b)                                                                           \
			h_fail(__FILE__, __LINE__, "%s == %s: %lld (0x%llx) != %lld (0x%llx)", #a, #b, _a, \
			       (unsigned long long)_a, _b, (unsigned long long)_b);                       \
	} while (0)

/* A call that must fail with -1 and errno `e`. */
#define CHECK_ERR(call, e)                                                                            \
	do {                                                                                          \
		errno = 0;                                                                            \
		int _r = (call);                                                                      \
		int _e = errno;                                                                       \
		if (_r != -1 || _e != (e))                                                            \
			h_fail(__FILE__, __LINE__, "%s: returned %d errno %d (%s), expected -1 errno %d (%s)", \
			       #call, _r, _e, strerror(_e), (e), strerror(e));                       \
	} while (0)

#define CHECK_OK(call)                                                                        \
	do {                                                                                  \
		errno = 0;                                                                    \
		int _r = (call);                                                              \
		if (_r != 0)                                                                  \
			h_fail(__FILE__, __LINE__, "%s: returned %d errno %d (%s)", #call, _r, errno, \
			       strerror(errno));                                              \
	} while (0)

static H_UNUSED void h_run(const char *name, void (*fn)(void))
{
	h_case_failed = 0;
	fn();
	const char *where = getenv("DLM_SOCKET_OTHER") ? ", holders on 2 nodes" : "";
	if (h_case_failed) {
		printf("not ok - %s%s [%s%s]\n", h_prefix, name, FLAVOUR, where);
		h_failures++;
	} else {
		printf("ok - %s%s [%s%s]\n", h_prefix, name, FLAVOUR, where);
	}
	fflush(stdout);
}

#define RUN(fn) h_run(#fn, fn)

/* MARK: waiting for ASTs */

static pthread_mutex_t h_mu = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t h_cond = PTHREAD_COND_INITIALIZER;

#define H_MAX_HANDLES 16
static H_UNUSED dlm_lshandle_t h_handles[H_MAX_HANDLES];

static H_UNUSED void h_track(dlm_lshandle_t ls)
{
	for (int i = 0; i < H_MAX_HANDLES; i++)
		if (!h_handles[i]) {
			h_handles[i] = ls;
			return;
		}
}

/* The handles h_open opened on the other node ($DLM_SOCKET_OTHER). */
static H_UNUSED dlm_lshandle_t h_others[H_MAX_HANDLES];

static H_UNUSED void h_untrack(dlm_lshandle_t ls)
{
	for (int i = 0; i < H_MAX_HANDLES; i++) {
		if (h_handles[i] == ls)
			h_handles[i] = NULL;
		if (h_others[i] == ls)
			h_others[i] = NULL;
	}
}

static int h_opens;

/* The node id to name, in dlm_ls_purge on `ls`, the node of $DLM_SOCKET (whose processes the cases spawn): 0 (this
 * node) unless `ls` is on the other node; then $DLM_SOCKET_NODE. */
static H_UNUSED int h_socket_node(dlm_lshandle_t ls)
{
	const char *node = getenv("DLM_SOCKET_NODE");
	for (int i = 0; i < H_MAX_HANDLES; i++)
		if (ls && h_others[i] == ls)
			return node ? atoi(node) : 0;
	return 0;
}

/* Creates (or opens) a lockspace and makes its ASTs run: its own thread, or h_wait's dispatching. With
 * $DLM_SOCKET_OTHER (the socket of another node of the same cluster), every second handle is opened on that node,
 * so that a case's two handles are holders on different nodes. */
static H_UNUSED dlm_lshandle_t h_open(const char *name)
{
	const char *other = getenv("DLM_SOCKET_OTHER");
	int on_other = other && other[0] && h_opens++ % 2 == 1;
	char *saved = NULL;
	if (on_other) {
		/* libdlm reads $DLM_SOCKET when it connects a handle. */
		const char *socket = getenv("DLM_SOCKET");
		saved = strdup(socket ? socket : "");
		setenv("DLM_SOCKET", other, 1);
	}
	dlm_lshandle_t ls = dlm_create_lockspace(name, 0600);
	if (on_other) {
		setenv("DLM_SOCKET", saved, 1);
		free(saved);
	}
	if (!ls)
		return NULL;
#ifndef TEST_LT
	if (dlm_ls_pthread_init(ls) != 0) {
		dlm_close_lockspace(ls);
		return NULL;
	}
#endif
	h_track(ls);
	for (int i = 0; on_other && i < H_MAX_HANDLES; i++)
		if (!h_others[i]) {
			h_others[i] = ls;
			break;
		}
	return ls;
}

static H_UNUSED void h_close(dlm_lshandle_t ls)
{
	h_untrack(ls);
	dlm_close_lockspace(ls);
}

static H_UNUSED int h_release(const char *name, dlm_lshandle_t ls, int force)
{
	h_untrack(ls);
	return dlm_release_lockspace(name, ls, force);
}

static H_UNUSED double h_now(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

/* Waits until pred(arg) holds (ASTs change what it looks at under h_mu); 0 after 10 s. */
static H_UNUSED int h_wait(int (*pred)(void *), void *arg)
{
	double deadline = h_now() + 10.0;
#ifdef TEST_LT
	for (;;) {
		struct pollfd fds[H_MAX_HANDLES];
		dlm_lshandle_t which[H_MAX_HANDLES];
		int n = 0, ok;
		double left;
		pthread_mutex_lock(&h_mu);
		ok = pred(arg);
		pthread_mutex_unlock(&h_mu);
		if (ok)
			return 1;
		left = deadline - h_now();
		if (left <= 0)
			return 0;
		for (int i = 0; i < H_MAX_HANDLES; i++)
			if (h_handles[i]) {
				fds[n].fd = dlm_ls_get_fd(h_handles[i]);
				fds[n].events = POLLIN;
				fds[n].revents = 0;
				which[n++] = h_handles[i];
			}
		if (poll(fds, (nfds_t)n, (int)(left * 1000) + 1) > 0)
			for (int i = 0; i < n; i++)
				if (fds[i].revents)
					dlm_dispatch(fds[i].fd);
		(void)which;
	}
#else
	struct timespec ts;
	int ok;
	clock_gettime(CLOCK_REALTIME, &ts);
	ts.tv_sec += 10;
	pthread_mutex_lock(&h_mu);
	while (!(ok = pred(arg)))
		if (pthread_cond_timedwait(&h_cond, &h_mu, &ts) == ETIMEDOUT) {
			ok = pred(arg);
			break;
		}
	pthread_mutex_unlock(&h_mu);
	(void)deadline;
	return ok;
#endif
}

/* MARK: an AST that records what it saw */

struct rec {
	struct dlm_lksb lksb;
	char lvb[DLM_LVB_LEN];
	int asts;	  /* completion ASTs run */
	int basts;	  /* blocking ASTs run */
	int bast_mode;	  /* the mode of the last one */
	int status;	  /* sb_status at the last AST */
	uint32_t lkid;	  /* sb_lkid at the last AST */
	int sb_flags;	  /* sb_flags at the last AST */
	void *last_arg;	  /* the argument of the last AST */
	/* What to do in the bast: unlock (1) or convert down to NL (2). */
	int on_bast;
	dlm_lshandle_t ls;
};

static H_UNUSED void rec_init(struct rec *r, dlm_lshandle_t ls)
{
	memset(r, 0, sizeof(*r));
	r->lksb.sb_lvbptr = r->lvb;
	r->ls = ls;
}

static H_UNUSED void rec_ast(void *arg)
{
	struct rec *r = arg;
	pthread_mutex_lock(&h_mu);
	r->asts++;
	r->status = r->lksb.sb_status;
	r->lkid = r->lksb.sb_lkid;
	r->sb_flags = (unsigned char)r->lksb.sb_flags;
	r->last_arg = arg;
	pthread_cond_broadcast(&h_cond);
	pthread_mutex_unlock(&h_mu);
}

/* A bast declared with the mode: libdlm's type has only the argument, this library passes both. */
static H_UNUSED void rec_bast_mode(void *arg, int mode)
{
	struct rec *r = arg;
	pthread_mutex_lock(&h_mu);
	r->basts++;
	r->bast_mode = mode;
	pthread_cond_broadcast(&h_cond);
	pthread_mutex_unlock(&h_mu);
	if (r->on_bast == 1)
		dlm_ls_unlock(r->ls, r->lksb.sb_lkid, 0, &r->lksb, r);
	else if (r->on_bast == 2)
		dlm_ls_lock(r->ls, LKM_NLMODE, &r->lksb, LKF_CONVERT, NULL, 0, 0, rec_ast, r,
			    (void (*)(void *))(void (*)(void))rec_bast_mode, NULL);
}

#define REC_BAST ((void (*)(void *))(void (*)(void))rec_bast_mode)

struct count_arg {
	struct rec *r;
	int n;
};

static H_UNUSED int pred_asts(void *arg)
{
	struct count_arg *c = arg;
	return c->r->asts >= c->n;
}

static H_UNUSED int pred_basts(void *arg)
{
	struct count_arg *c = arg;
	return c->r->basts >= c->n;
}

/* Waits until `r` has seen `n` completion ASTs. */
static H_UNUSED int wait_asts(struct rec *r, int n)
{
	struct count_arg c = {r, n};
	return h_wait(pred_asts, &c);
}

static H_UNUSED int wait_basts(struct rec *r, int n)
{
	struct count_arg c = {r, n};
	return h_wait(pred_basts, &c);
}

static H_UNUSED int h_done(void)
{
	printf("# %sfailed: %d\n", h_prefix, h_failures);
	return h_failures ? 1 : 0;
}

#endif
