/*
 * Many threads sharing one lockspace handle (one connection, one owner in dlmd):
 * - synchronous calls from 8 threads on 4 resources: never two holders at once;
 * - asynchronous requests from 8 threads, each waiting for its own ASTs;
 * - a hot resource taken by every thread asynchronously and released from inside the grant AST.
 * Threaded: the ASTs run on the library's thread. _lt: the main thread polls the fd and dispatches while the
 * workers run (and the synchronous calls read the connection themselves, one at a time).
 */
#include "harness.h"

#include <stdatomic.h>

#define THREADS 8
#define ITERATIONS 250
#define ASYNC_LOCKS 200
#define HOT_ROUNDS 150

static dlm_lshandle_t shared_ls;
static atomic_int holders[4];
static atomic_int violations, errors;
static int done_pipe[2];

static void *sync_worker(void *arg)
{
	int id = (int)(intptr_t)arg;
	for (int i = 0; i < ITERATIONS; i++) {
		char name[16];
		int res = (id + i) % 4;
		struct dlm_lksb lksb;
		memset(&lksb, 0, sizeof(lksb));
		snprintf(name, sizeof(name), "shared%d", res);
		if (dlm_ls_lock_wait(shared_ls, LKM_EXMODE, &lksb, 0, name, (unsigned)strlen(name), 0, NULL, NULL,
				     NULL) ||
		    lksb.sb_status) {
			atomic_fetch_add(&errors, 1);
			continue;
		}
		if (atomic_fetch_add(&holders[res], 1) != 0)
			atomic_fetch_add(&violations, 1);
		atomic_fetch_sub(&holders[res], 1);
		if (dlm_ls_unlock_wait(shared_ls, lksb.sb_lkid, 0, &lksb) || lksb.sb_status != EUNLOCK)
			atomic_fetch_add(&errors, 1);
	}
	return NULL;
}

/* Runs `worker` on THREADS threads; in the _lt flavour the main thread dispatches until they are done. */
static void run_workers(void *(*worker)(void *))
{
	pthread_t t[THREADS];
	CHECK(pipe(done_pipe) == 0);
	for (int i = 0; i < THREADS; i++)
		CHECK(pthread_create(&t[i], NULL, worker, (void *)(intptr_t)i) == 0);
#ifdef TEST_LT
	{
		int finished = 0;
		while (finished < THREADS) {
			struct pollfd p[2] = {{dlm_ls_get_fd(shared_ls), POLLIN, 0}, {done_pipe[0], POLLIN, 0}};
			if (poll(p, 2, -1) < 0)
				continue;
			if (p[0].revents)
				dlm_dispatch(p[0].fd);
			if (p[1].revents) {
				char c;
				if (read(done_pipe[0], &c, 1) == 1)
					finished++;
			}
		}
	}
#endif
	for (int i = 0; i < THREADS; i++)
		pthread_join(t[i], NULL);
	close(done_pipe[0]);
	close(done_pipe[1]);
}

static void worker_done(void)
{
	char c = 'd';
	if (write(done_pipe[1], &c, 1) != 1)
		atomic_fetch_add(&errors, 1);
}

static void *sync_worker_main(void *arg)
{
	sync_worker(arg);
	worker_done();
	return NULL;
}

static void test_threads_exclusion(void)
{
	char name[64];
	snprintf(name, sizeof(name), "threads-sync-%s-%d", FLAVOUR, (int)getpid());
	shared_ls = h_open(name);
	CHECK(shared_ls != NULL);
	atomic_store(&violations, 0);
	atomic_store(&errors, 0);
	run_workers(sync_worker_main);
	CHECK_EQ(atomic_load(&violations), 0);
	CHECK_EQ(atomic_load(&errors), 0);
	CHECK_OK(h_release(name, shared_ls, 0));
}

/* Per-thread completion counting for the asynchronous cases. */
struct worker {
	pthread_mutex_t mu;
	pthread_cond_t cond;
	int granted, unlocked, bad;
	struct dlm_lksb lksb[ASYNC_LOCKS];
	int id;
};

static struct worker workers[THREADS];

static void async_ast(void *arg)
{
	struct dlm_lksb *lksb = arg;
	struct worker *w = NULL;
	for (int i = 0; i < THREADS && !w; i++)
		if (lksb >= workers[i].lksb && lksb < workers[i].lksb + ASYNC_LOCKS)
			w = &workers[i];
	if (!w) {
		atomic_fetch_add(&errors, 1);
		return;
	}
	pthread_mutex_lock(&w->mu);
	if (lksb->sb_status == 0)
		w->granted++;
	else if (lksb->sb_status == EUNLOCK)
		w->unlocked++;
	else
		w->bad++;
	pthread_cond_broadcast(&w->cond);
	pthread_mutex_unlock(&w->mu);
}

static void worker_wait(struct worker *w, int *counter, int n)
{
	pthread_mutex_lock(&w->mu);
	while (*counter < n && w->bad == 0)
		pthread_cond_wait(&w->cond, &w->mu);
	pthread_mutex_unlock(&w->mu);
}

static void *async_worker(void *arg)
{
	struct worker *w = &workers[(int)(intptr_t)arg];
	for (int i = 0; i < ASYNC_LOCKS; i++) {
		char name[32];
		snprintf(name, sizeof(name), "t%d-%d", w->id, i);
		if (dlm_ls_lock(shared_ls, i % 2 ? LKM_EXMODE : LKM_PRMODE, &w->lksb[i], 0, name, (unsigned)strlen(name), 0,
				async_ast, &w->lksb[i], NULL, NULL))
			atomic_fetch_add(&errors, 1);
	}
	worker_wait(w, &w->granted, ASYNC_LOCKS);
	for (int i = 0; i < ASYNC_LOCKS; i++)
		if (dlm_ls_unlock(shared_ls, w->lksb[i].sb_lkid, 0, &w->lksb[i], &w->lksb[i]))
			atomic_fetch_add(&errors, 1);
	worker_wait(w, &w->unlocked, ASYNC_LOCKS);
	worker_done();
	return NULL;
}

static void test_threads_async(void)
{
	char name[64];
	snprintf(name, sizeof(name), "threads-async-%s-%d", FLAVOUR, (int)getpid());
	shared_ls = h_open(name);
	CHECK(shared_ls != NULL);
	atomic_store(&errors, 0);
	for (int i = 0; i < THREADS; i++) {
		memset(&workers[i], 0, sizeof(workers[i]));
		pthread_mutex_init(&workers[i].mu, NULL);
		pthread_cond_init(&workers[i].cond, NULL);
		workers[i].id = i;
	}
	run_workers(async_worker);
	for (int i = 0; i < THREADS; i++) {
		CHECK_EQ(workers[i].granted, ASYNC_LOCKS);
		CHECK_EQ(workers[i].unlocked, ASYNC_LOCKS);
		CHECK_EQ(workers[i].bad, 0);
	}
	CHECK_EQ(atomic_load(&errors), 0);
	CHECK_OK(h_release(name, shared_ls, 0));
}

/* The hot resource: granted in turn; each holder checks it is alone and unlocks from its grant AST. */
static atomic_int hot_holder;

static void hot_ast(void *arg)
{
	struct worker *w = arg;
	int status = w->lksb[0].sb_status;
	if (status == 0) {
		if (atomic_fetch_add(&hot_holder, 1) != 0)
			atomic_fetch_add(&violations, 1);
		atomic_fetch_sub(&hot_holder, 1);
		if (dlm_ls_unlock(shared_ls, w->lksb[0].sb_lkid, 0, &w->lksb[0], w))
			atomic_fetch_add(&errors, 1);
		return;
	}
	pthread_mutex_lock(&w->mu);
	if (status == EUNLOCK)
		w->unlocked++;
	else
		w->bad++;
	pthread_cond_broadcast(&w->cond);
	pthread_mutex_unlock(&w->mu);
}

static void *hot_worker(void *arg)
{
	struct worker *w = &workers[(int)(intptr_t)arg];
	for (int i = 0; i < HOT_ROUNDS; i++) {
		if (dlm_ls_lock(shared_ls, LKM_EXMODE, &w->lksb[0], 0, "hot", 3, 0, hot_ast, w, NULL, NULL)) {
			atomic_fetch_add(&errors, 1);
			break;
		}
		worker_wait(w, &w->unlocked, i + 1);
	}
	worker_done();
	return NULL;
}

static void test_threads_hot_resource(void)
{
	char name[64];
	snprintf(name, sizeof(name), "threads-hot-%s-%d", FLAVOUR, (int)getpid());
	shared_ls = h_open(name);
	CHECK(shared_ls != NULL);
	atomic_store(&errors, 0);
	atomic_store(&violations, 0);
	for (int i = 0; i < THREADS; i++) {
		memset(&workers[i], 0, sizeof(workers[i]));
		pthread_mutex_init(&workers[i].mu, NULL);
		pthread_cond_init(&workers[i].cond, NULL);
		workers[i].id = i;
	}
	run_workers(hot_worker);
	for (int i = 0; i < THREADS; i++) {
		CHECK_EQ(workers[i].unlocked, HOT_ROUNDS);
		CHECK_EQ(workers[i].bad, 0);
	}
	CHECK_EQ(atomic_load(&violations), 0);
	CHECK_EQ(atomic_load(&errors), 0);
	CHECK_OK(h_release(name, shared_ls, 0));
}

int main(void)
{
	snprintf(h_prefix, sizeof(h_prefix), "threads: ");
	RUN(test_threads_exclusion);
	RUN(test_threads_async);
	RUN(test_threads_hot_resource);
	return h_done();
}
