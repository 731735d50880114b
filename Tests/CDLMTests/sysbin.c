/*
 * An ordinary libdlm program, compiled against Debian's libdlm.h and linked with the system's libdlm.so.3
 * (-L/usr/lib/<arch>-linux-gnu -ldlm): nothing in it knows swift-dlm. Run with LD_LIBRARY_PATH pointing at
 * .build/release, it must run on swift-dlm's library unchanged (argv[1]: that directory, to check that the
 * library really loaded from there).
 */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE
#endif
#include <dlfcn.h>
#include <errno.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/types.h>
#include <unistd.h>

#include <libdlm.h>

static pthread_mutex_t mu = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t cond = PTHREAD_COND_INITIALIZER;
static int asts, basts;

static void ast(void *arg)
{
	(void)arg;
	pthread_mutex_lock(&mu);
	asts++;
	pthread_cond_broadcast(&cond);
	pthread_mutex_unlock(&mu);
}

static void bast(void *arg)
{
	(void)arg;
	pthread_mutex_lock(&mu);
	basts++;
	pthread_cond_broadcast(&cond);
	pthread_mutex_unlock(&mu);
}

static int wait_for(int *counter, int n)
{
	struct timespec ts;
	int ok = 1;
	clock_gettime(CLOCK_REALTIME, &ts);
	ts.tv_sec += 10;
	pthread_mutex_lock(&mu);
	while (*counter < n && ok)
		ok = pthread_cond_timedwait(&cond, &mu, &ts) == 0;
	ok = *counter >= n;
	pthread_mutex_unlock(&mu);
	return ok;
}

static int failures;

static void check(int ok, const char *what)
{
	printf("%s - sysbin: %s\n", ok ? "ok" : "not ok", what);
	if (!ok)
		failures++;
}

int main(int argc, char **argv)
{
	Dl_info info;
	char name[64], real_dir[4096], real_lib[4096];
	dlm_lshandle_t a, b;
	struct dlm_lksb la, lb;
	char lvb[DLM_LVB_LEN];

	/* The library that answers dlm_ls_lock is the one in argv[1], not the system's. */
	memset(&info, 0, sizeof(info));
	if (argc < 2 || !dladdr((void *)dlm_ls_lock, &info) || !info.dli_fname || !realpath(argv[1], real_dir) ||
	    !realpath(info.dli_fname, real_lib)) {
		check(0, "dladdr finds the loaded libdlm");
		return 1;
	}
	check(strncmp(real_lib, real_dir, strlen(real_dir)) == 0, "libdlm.so.3 is loaded from .build/release");
	printf("# loaded %s\n", real_lib);

	snprintf(name, sizeof(name), "sysbin-%d", (int)getpid());
	a = dlm_create_lockspace(name, 0600);
	b = dlm_open_lockspace(name);
	check(a && b, "dlm_create_lockspace and dlm_open_lockspace");
	if (!a || !b)
		return 1;
	check(dlm_ls_pthread_init(a) == 0 && dlm_ls_pthread_init(b) == 0, "dlm_ls_pthread_init");

	memset(&la, 0, sizeof(la));
	memset(lvb, 0, sizeof(lvb));
	la.sb_lvbptr = lvb;
	check(dlm_ls_lock(a, LKM_EXMODE, &la, LKF_VALBLK, "unchanged", 9, 0, ast, NULL, bast, NULL) == 0 &&
		      wait_for(&asts, 1) && la.sb_status == 0,
	      "dlm_ls_lock EX, completion AST");
	memset(&lb, 0, sizeof(lb));
	check(dlm_ls_lock(b, LKM_PRMODE, &lb, 0, "unchanged", 9, 0, ast, NULL, NULL, NULL) == 0 && wait_for(&basts, 1),
	      "a blocked PR request: blocking AST");
	strcpy(lvb, "written by sysbin");
	check(dlm_ls_unlock(a, la.sb_lkid, LKF_VALBLK, &la, NULL) == 0 && wait_for(&asts, 3) &&
		      la.sb_status == EUNLOCK && lb.sb_status == 0,
	      "unlock with VALBLK: the waiter is granted");
	memset(&lb, 0, sizeof(lb));
	memset(lvb, 0, sizeof(lvb));
	lb.sb_lvbptr = lvb;
	check(dlm_ls_lock_wait(b, LKM_CRMODE, &lb, LKF_VALBLK, "unchanged", 9, 0, NULL, NULL, NULL) == 0 &&
		      lb.sb_status == 0 && strcmp(lvb, "written by sysbin") == 0,
	      "dlm_ls_lock_wait reads the value block");
	check(dlm_release_lockspace(name, a, 1) == 0, "dlm_release_lockspace");
	check(dlm_close_lockspace(b) == 0, "dlm_close_lockspace");
	return failures ? 1 : 0;
}
