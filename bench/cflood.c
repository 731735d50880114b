/*
 * cflood: a flood of asynchronous locks through libdlm, in the style of the upstream dlm_tests `flood`:
 * `outstanding` requests are kept in flight; each lock is released from its completion AST, and the unlock's
 * AST issues the next lock, until `count` locks have been taken and released. Every lock is EX on a resource
 * of its own slot, so nothing waits for anything but dlmd.
 *
 * Linked with -ldlm, the ASTs run on the library's thread (dlm_ls_pthread_init) and main waits; linked with
 * -ldlm_lt (built with -DFLOOD_LT), main polls the fd and calls dlm_dispatch.
 *
 * Prints one JSON object: locks per second (lock + unlock = one lock) and ops per second (requests:
 * 2 per lock), the median of --runs timed runs after one warm-up run.
 *
 * usage: cflood [-n locks] [-o outstanding] [-r runs] [-l lockspace] [-p placement]
 * (-p only labels the output: bench/cflood.sh pins the processes with taskset and says how.)
 */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE
#endif
#include <errno.h>
#include <poll.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/types.h>
#include <time.h>
#include <unistd.h>

#include <libdlm.h>

#ifdef FLOOD_LT
#define FLAVOUR "lt"
#else
#define FLAVOUR "threaded"
#endif

struct slot {
	struct dlm_lksb lksb;
	char name[32];
	unsigned namelen;
};

static dlm_lshandle_t ls;
static struct slot *slots;
static long target;
static atomic_long issued, completed, errors;
static int idle_slots, outstanding;
static pthread_mutex_t mu = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t cond = PTHREAD_COND_INITIALIZER;

static void lock_ast(void *arg);

/* Starts the next lock on `s`, or retires the slot. Runs in an AST (or on main when priming). */
static void next(struct slot *s)
{
	if (atomic_fetch_add(&issued, 1) >= target) {
		pthread_mutex_lock(&mu);
		idle_slots++;
		pthread_cond_signal(&cond);
		pthread_mutex_unlock(&mu);
		return;
	}
	if (dlm_ls_lock(ls, LKM_EXMODE, &s->lksb, 0, s->name, s->namelen, 0, lock_ast, s, NULL, NULL)) {
		atomic_fetch_add(&errors, 1);
		next(s);
	}
}

static void lock_ast(void *arg)
{
	struct slot *s = arg;
	switch (s->lksb.sb_status) {
	case 0:
		if (dlm_ls_unlock(ls, s->lksb.sb_lkid, 0, &s->lksb, s)) {
			atomic_fetch_add(&errors, 1);
			next(s);
		}
		break;
	case EUNLOCK:
		atomic_fetch_add(&completed, 1);
		next(s);
		break;
	default:
		atomic_fetch_add(&errors, 1);
		next(s);
	}
}

static double now(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

/* One flood of `count` locks; returns the seconds it took. */
static double flood(long count)
{
	double start;
	target = count;
	atomic_store(&issued, 0);
	atomic_store(&completed, 0);
	atomic_store(&errors, 0);
	idle_slots = 0;
	start = now();
#ifdef FLOOD_LT
	for (int i = 0; i < outstanding; i++)
		next(&slots[i]);
	while (idle_slots < outstanding) {
		struct pollfd p = {dlm_ls_get_fd(ls), POLLIN, 0};
		if (poll(&p, 1, -1) < 0 && errno != EINTR)
			break;
		if (dlm_dispatch(p.fd) != 0) {
			perror("dlm_dispatch");
			exit(1);
		}
	}
#else
	/* The ASTs run on the library's thread, already while main primes the slots. */
	for (int i = 0; i < outstanding; i++)
		next(&slots[i]);
	pthread_mutex_lock(&mu);
	while (idle_slots < outstanding)
		pthread_cond_wait(&cond, &mu);
	pthread_mutex_unlock(&mu);
#endif
	return now() - start;
}

static int by_value(const void *a, const void *b)
{
	double x = *(const double *)a, y = *(const double *)b;
	return x < y ? -1 : x > y;
}

int main(int argc, char **argv)
{
	long count = 200000;
	int runs = 5, opt;
	const char *name = "cflood";
	const char *placement = "unpinned";
	double rates[64], seconds[64];
	outstanding = 64;
	while ((opt = getopt(argc, argv, "n:o:r:l:p:")) != -1) {
		switch (opt) {
		case 'n':
			count = atol(optarg);
			break;
		case 'o':
			outstanding = atoi(optarg);
			break;
		case 'r':
			runs = atoi(optarg);
			break;
		case 'l':
			name = optarg;
			break;
		case 'p':
			placement = optarg;
			break;
		default:
			fprintf(stderr, "usage: %s [-n locks] [-o outstanding] [-r runs] [-l lockspace] [-p placement]\n",
				argv[0]);
			return 2;
		}
	}
	if (count < 1 || outstanding < 1 || runs < 1 || runs > 64) {
		fprintf(stderr, "cflood: bad arguments\n");
		return 2;
	}
	ls = dlm_create_lockspace(name, 0600);
	if (!ls) {
		perror("dlm_create_lockspace");
		return 1;
	}
#ifndef FLOOD_LT
	if (dlm_ls_pthread_init(ls)) {
		perror("dlm_ls_pthread_init");
		return 1;
	}
#endif
	slots = calloc((size_t)outstanding, sizeof(*slots));
	for (int i = 0; i < outstanding; i++)
		slots[i].namelen = (unsigned)snprintf(slots[i].name, sizeof(slots[i].name), "flood-%d", i);

	flood(count / 10 > 1000 ? count / 10 : 1000); /* warm-up */
	for (int r = 0; r < runs; r++) {
		seconds[r] = flood(count);
		if (atomic_load(&errors) || atomic_load(&completed) != count) {
			fprintf(stderr, "cflood: %ld errors, %ld of %ld locks completed\n", atomic_load(&errors),
				atomic_load(&completed), count);
			return 1;
		}
		rates[r] = (double)count / seconds[r];
	}
	printf("{\"benchmark\":\"cflood\",\"library\":\"%s\",\"placement\":\"%s\",\"locks\":%ld,\"outstanding\":%d,"
	       "\"runs_ops_per_sec\":[",
	       FLAVOUR, placement, count, outstanding);
	for (int r = 0; r < runs; r++)
		printf("%s%.0f", r ? "," : "", rates[r] * 2);
	qsort(rates, (size_t)runs, sizeof(double), by_value);
	printf("],\"locks_per_sec\":%.0f,\"ops_per_sec\":%.0f}\n", rates[runs / 2], rates[runs / 2] * 2);
	dlm_release_lockspace(name, ls, 1);
	free(slots);
	return 0;
}
