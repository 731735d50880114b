/*
 * Cases that need real processes: persistent locks that outlive their process as orphans and are adopted
 * (or purged) by another one, and a deadlock across two processes and two resources that dlmd breaks by
 * refusing exactly one request with EDEADLK (dlmd runs with --deadlock-wait 0.2).
 *
 * The children fork before they open anything and talk to the parent through pipes; nothing sleeps: the
 * parent learns that a child's exit has been handled by dlmd from the grant of a lock the child held.
 */
#include "harness.h"

#include <signal.h>
#include <sys/wait.h>

static char ls_name[64];

static const char *fresh(const char *what)
{
	snprintf(ls_name, sizeof(ls_name), "%s-%s-%d", what, FLAVOUR, (int)getpid());
	return ls_name;
}

static void put(int fd, char c)
{
	while (write(fd, &c, 1) < 0 && errno == EINTR)
		;
}

static char get(int fd)
{
	char c = 0;
	ssize_t n;
	while ((n = read(fd, &c, 1)) < 0 && errno == EINTR)
		;
	return n == 1 ? c : 0;
}

/* The status of a synchronous lock call in either flavour (libdlm_lt fails with the status as errno). */
static int wait_status(int rc, const struct dlm_lksb *lksb)
{
	if (rc == 0)
		return lksb->sb_status;
	return errno == EAGAIN || errno == EDEADLK || errno == ETIMEDOUT || errno == ECANCEL ? errno : -errno;
}

/*
 * A child that takes its locks, says 'r', waits for 'g' and exits without unlocking anything: `gate` (EX,
 * not persistent) goes with it, the names in `persistent` stay as orphans.
 */
static pid_t spawn_holder(const char *name, const char **persistent, int count, uid_t uid, int *to_child,
			  int *from_child)
{
	int down[2], up[2];
	pid_t pid;
	if (pipe(down) || pipe(up))
		return -1;
	pid = fork();
	if (pid == 0) {
		dlm_lshandle_t ls;
		struct dlm_lksb lksb;
		char lvb[DLM_LVB_LEN];
		int ok = 1;
		close(down[1]);
		close(up[0]);
		/* As another user (uid and gid `uid`), in a lockspace every user may use. */
		ok = uid == 0 || (setgid(uid) == 0 && setuid(uid) == 0);
		ls = ok ? dlm_create_lockspace(name, uid == 0 ? 0600 : 0666) : NULL;
		ok = ls != NULL;
		for (int i = 0; ok && i < count; i++) {
			memset(&lksb, 0, sizeof(lksb));
			memset(lvb, 0, sizeof(lvb));
			snprintf(lvb, sizeof(lvb), "left by %d", (int)getpid());
			lksb.sb_lvbptr = lvb;
			/* PW, then down to PR writing the value block; persistent all along. */
			ok = dlm_ls_lock_wait(ls, LKM_PWMODE, &lksb, LKF_PERSISTENT, persistent[i],
					      (unsigned)strlen(persistent[i]), 0, NULL, NULL, NULL) == 0 &&
			     lksb.sb_status == 0 &&
			     dlm_ls_lock_wait(ls, LKM_PRMODE, &lksb, LKF_CONVERT | LKF_VALBLK | LKF_PERSISTENT, NULL, 0, 0,
					      NULL, NULL, NULL) == 0 &&
			     lksb.sb_status == 0;
		}
		memset(&lksb, 0, sizeof(lksb));
		ok = ok && dlm_ls_lock_wait(ls, LKM_EXMODE, &lksb, 0, "gate", 4, 0, NULL, NULL, NULL) == 0 &&
		     lksb.sb_status == 0;
		put(up[1], ok ? 'r' : 'x');
		get(down[0]);
		_exit(0); /* no unlock, no close: as if it crashed */
	}
	close(down[0]);
	close(up[1]);
	*to_child = down[1];
	*from_child = up[0];
	return pid;
}

/* Waits until dlmd has handled the exit of a holder spawned by spawn_holder: its gate comes to us. */
static void reap_holder(dlm_lshandle_t ls, pid_t pid, int to_child, int from_child)
{
	struct rec gate;
	int status;
	rec_init(&gate, ls);
	CHECK_OK(dlm_ls_lock(ls, LKM_EXMODE, &gate.lksb, 0, "gate", 4, 0, rec_ast, &gate, NULL, NULL));
	put(to_child, 'g');
	CHECK(waitpid(pid, &status, 0) == pid && WIFEXITED(status) && WEXITSTATUS(status) == 0);
	CHECK(wait_asts(&gate, 1));
	CHECK_EQ(gate.status, 0);
	CHECK_OK(dlm_ls_unlock_wait(ls, gate.lksb.sb_lkid, 0, &gate.lksb));
	close(to_child);
	close(from_child);
}

/* A holder of uid `uid` (0: ours) took persistent PR of "job" in lockspace `name` and died: our handle on the
 * lockspace once dlmd has made the lock an orphan, and the holder's pid in `pid`. */
static dlm_lshandle_t orphaned_job(const char *name, uid_t uid, pid_t *pid)
{
	const char *held[] = {"job"};
	int to_child, from_child;
	dlm_lshandle_t ls;
	*pid = spawn_holder(name, held, 1, uid, &to_child, &from_child);
	CHECK(*pid > 0);
	CHECK_EQ(get(from_child), 'r');
	ls = h_open(name);
	CHECK(ls != NULL);
	reap_holder(ls, *pid, to_child, from_child);
	return ls;
}

static void test_orphan_adoption(void)
{
	const char *name = fresh("orphan");
	pid_t pid;
	dlm_lshandle_t ls = orphaned_job(name, 0, &pid);
	struct rec r;
	struct dlm_lksb lksb;

	/* The orphan still holds PR: EX is refused, PR is not. */
	memset(&lksb, 0, sizeof(lksb));
	CHECK_EQ(wait_status(dlm_ls_lock_wait(ls, LKM_EXMODE, &lksb, LKF_NOQUEUE, "job", 3, 0, NULL, NULL, NULL),
			     &lksb),
		 EAGAIN);
	/* ORPHAN of another mode: EAGAIN; on a resource without orphans: ENOENT; both synchronous. */
	rec_init(&r, ls);
	CHECK_ERR(dlm_ls_lock(ls, LKM_EXMODE, &r.lksb, LKF_ORPHAN | LKF_PERSISTENT, "job", 3, 0, rec_ast, &r, NULL,
			      NULL),
		  EAGAIN);
	CHECK_ERR(dlm_ls_lock(ls, LKM_PRMODE, &r.lksb, LKF_ORPHAN | LKF_PERSISTENT, "nothing", 7, 0, rec_ast, &r, NULL,
			      NULL),
		  ENOENT);
	CHECK_EQ(r.asts, 0);
	/* Adoption: same name and mode, value block as the orphan left it. */
	CHECK_OK(dlm_ls_lock(ls, LKM_PRMODE, &r.lksb, LKF_ORPHAN | LKF_PERSISTENT | LKF_VALBLK, "job", 3, 0, rec_ast,
			     &r, NULL, NULL));
	CHECK(wait_asts(&r, 1));
	CHECK_EQ(r.status, 0);
	CHECK(strncmp(r.lvb, "left by ", 8) == 0 && atoi(r.lvb + 8) == (int)pid);
	CHECK_EQ(r.sb_flags & DLM_SBF_VALNOTVALID, 0);
	/* Adopted means ours: a second adoption finds nothing, our unlock frees the resource. */
	CHECK_ERR(dlm_ls_lock_wait(ls, LKM_PRMODE, &lksb, LKF_ORPHAN, "job", 3, 0, NULL, NULL, NULL), ENOENT);
	CHECK_OK(dlm_ls_unlock_wait(ls, r.lksb.sb_lkid, 0, &r.lksb));
	CHECK_EQ(r.lksb.sb_status, EUNLOCK);
	CHECK_EQ(wait_status(dlm_ls_lock_wait(ls, LKM_EXMODE, &lksb, LKF_NOQUEUE, "job", 3, 0, NULL, NULL, NULL),
			     &lksb),
		 0);
	CHECK_OK(h_release(name, ls, 1));
}

/*
 * An orphan is its user's: a holder of uid 1000 dies leaving a persistent PR; a process of uid 1001 may neither
 * adopt it nor purge it (EPERM both, and it still holds), root adopts it. Needs root (setuid).
 */
static void test_orphan_user(void)
{
	const char *name = fresh("orphan-user");
	int status;
	pid_t pid, other;
	dlm_lshandle_t ls = orphaned_job(name, 1000, &pid);
	struct dlm_lksb lksb;

	other = fork();
	if (other == 0) {
		/* Exit status: bit 0 adoption not refused with EPERM, bit 1 purge not refused with EPERM. */
		dlm_lshandle_t mine;
		int code = 0;
		if (setgid(1001) != 0 || setuid(1001) != 0)
			_exit(8);
		mine = dlm_open_lockspace(name);
		if (mine == NULL)
			_exit(9);
		memset(&lksb, 0, sizeof(lksb));
		errno = 0;
		if (dlm_ls_lock_wait(mine, LKM_PRMODE, &lksb, LKF_ORPHAN | LKF_PERSISTENT, "job", 3, 0, NULL, NULL, NULL) !=
			    -1 ||
		    errno != EPERM)
			code |= 1;
		errno = 0;
		if (dlm_ls_purge(mine, 0, (int)pid) != -1 || errno != EPERM)
			code |= 2;
		_exit(code);
	}
	CHECK(other > 0);
	CHECK(waitpid(other, &status, 0) == other && WIFEXITED(status));
	CHECK_EQ(WEXITSTATUS(status), 0);
	/* Still there: EX is refused. Root adopts it. */
	memset(&lksb, 0, sizeof(lksb));
	CHECK_EQ(wait_status(dlm_ls_lock_wait(ls, LKM_EXMODE, &lksb, LKF_NOQUEUE, "job", 3, 0, NULL, NULL, NULL),
			     &lksb),
		 EAGAIN);
	memset(&lksb, 0, sizeof(lksb));
	CHECK_EQ(wait_status(dlm_ls_lock_wait(ls, LKM_PRMODE, &lksb, LKF_ORPHAN | LKF_PERSISTENT, "job", 3, 0, NULL,
					      NULL, NULL),
			     &lksb),
		 0);
	CHECK_OK(dlm_ls_unlock_wait(ls, lksb.sb_lkid, 0, &lksb));
	CHECK_OK(h_release(name, ls, 1));
}

/* Whether `res` is free: an EX NOQUEUE is granted (and then released), or refused with EAGAIN (-1 otherwise). */
static int is_free(dlm_lshandle_t ls, const char *res)
{
	struct dlm_lksb lksb;
	int status;
	memset(&lksb, 0, sizeof(lksb));
	status = wait_status(dlm_ls_lock_wait(ls, LKM_EXMODE, &lksb, LKF_NOQUEUE, res, (unsigned)strlen(res), 0, NULL,
					      NULL, NULL),
			     &lksb);
	if (status == 0)
		return dlm_ls_unlock_wait(ls, lksb.sb_lkid, 0, &lksb) == 0 ? 1 : -1;
	return status == EAGAIN ? 0 : -1;
}

/*
 * Two processes die leaving orphans in one lockspace: dlm_ls_purge of the first removes its orphans only;
 * the second's stay (still conflicting, still adoptable) until a purge names it.
 */
static void test_orphan_purge(void)
{
	const char *name = fresh("purge");
	const char *held_a[] = {"a1", "a2"};
	const char *held_b[] = {"b1", "b2"};
	int to_a, from_a, to_b, from_b;
	pid_t a, b;
	dlm_lshandle_t ls;
	struct rec r;

	a = spawn_holder(name, held_a, 2, 0, &to_a, &from_a);
	CHECK(a > 0);
	CHECK_EQ(get(from_a), 'r');
	ls = h_open(name);
	CHECK(ls != NULL);
	reap_holder(ls, a, to_a, from_a);
	b = spawn_holder(name, held_b, 2, 0, &to_b, &from_b);
	CHECK(b > 0);
	CHECK_EQ(get(from_b), 'r');
	reap_holder(ls, b, to_b, from_b);
	for (int i = 0; i < 2; i++) {
		CHECK_EQ(is_free(ls, held_a[i]), 0);
		CHECK_EQ(is_free(ls, held_b[i]), 0);
	}

	/* Another node's process: nothing to do here. */
	CHECK_OK(dlm_ls_purge(ls, 0x7fff0000, (int)a));
	CHECK_EQ(is_free(ls, "a1"), 0);
	/* The first process's orphans go, the second's stay. */
	CHECK_OK(dlm_ls_purge(ls, h_socket_node(ls), (int)a));
	for (int i = 0; i < 2; i++) {
		CHECK_EQ(is_free(ls, held_a[i]), 1);
		CHECK_EQ(is_free(ls, held_b[i]), 0);
	}
	/* A purge that finds nothing is no error and removes nothing. */
	CHECK_OK(dlm_ls_purge(ls, h_socket_node(ls), (int)a));
	CHECK_EQ(is_free(ls, "b1"), 0);
	/* b1 is still the second process's orphan: adopted with its value block. */
	rec_init(&r, ls);
	CHECK_OK(dlm_ls_lock(ls, LKM_PRMODE, &r.lksb, LKF_ORPHAN | LKF_PERSISTENT | LKF_VALBLK, "b1", 2, 0, rec_ast,
			     &r, NULL, NULL));
	CHECK(wait_asts(&r, 1));
	CHECK_EQ(r.status, 0);
	CHECK(strncmp(r.lvb, "left by ", 8) == 0 && atoi(r.lvb + 8) == (int)b);
	/* Purging the second process takes its last orphan, not the lock we adopted from it. */
	CHECK_OK(dlm_ls_purge(ls, h_socket_node(ls), (int)b));
	CHECK_EQ(is_free(ls, "b2"), 1);
	CHECK_EQ(is_free(ls, "b1"), 0);
	CHECK_OK(dlm_ls_unlock_wait(ls, r.lksb.sb_lkid, 0, &r.lksb));
	CHECK_EQ(is_free(ls, "b1"), 1);
	CHECK_OK(h_release(name, ls, 1));
}

/*
 * One side of the deadlock: holds `first`, says 'h', waits for 'g', asks for `second`. Reports the status
 * of that request; the victim (EDEADLK) lets go of `first` so that the other one gets through.
 */
static pid_t spawn_deadlocker(const char *name, const char *first, const char *second, int *to_child, int *from_child)
{
	int down[2], up[2];
	pid_t pid;
	if (pipe(down) || pipe(up))
		return -1;
	pid = fork();
	if (pid == 0) {
		dlm_lshandle_t ls;
		struct dlm_lksb held, wanted;
		int status;
		close(down[1]);
		close(up[0]);
		ls = dlm_create_lockspace(name, 0600);
		memset(&held, 0, sizeof(held));
		memset(&wanted, 0, sizeof(wanted));
		if (!ls || dlm_ls_lock_wait(ls, LKM_EXMODE, &held, 0, first, 2, 0, NULL, NULL, NULL) || held.sb_status) {
			put(up[1], 'x');
			_exit(1);
		}
		put(up[1], 'h');
		get(down[0]);
		status = wait_status(dlm_ls_lock_wait(ls, LKM_EXMODE, &wanted, 0, second, 2, 0, NULL, NULL, NULL),
				     &wanted);
		if (status == EDEADLK)
			dlm_ls_unlock_wait(ls, held.sb_lkid, 0, &held);
		put(up[1], status == 0 ? 'G' : status == EDEADLK ? 'D' : '?');
		get(down[0]);
		dlm_close_lockspace(ls);
		_exit(0);
	}
	close(down[0]);
	close(up[1]);
	*to_child = down[1];
	*from_child = up[0];
	return pid;
}

static void test_two_process_deadlock(void)
{
	const char *name = fresh("deadlock");
	int to_a, from_a, to_b, from_b, status;
	pid_t a = spawn_deadlocker(name, "r1", "r2", &to_a, &from_a);
	pid_t b = spawn_deadlocker(name, "r2", "r1", &to_b, &from_b);
	char ra, rb;
	double start;
	CHECK(a > 0 && b > 0);
	CHECK_EQ(get(from_a), 'h');
	CHECK_EQ(get(from_b), 'h');
	start = h_now();
	put(to_a, 'g');
	put(to_b, 'g');
	ra = get(from_a);
	rb = get(from_b);
	/* Exactly one victim; the other is granted once the victim lets go. */
	CHECK((ra == 'D' && rb == 'G') || (ra == 'G' && rb == 'D'));
	if (!((ra == 'D' && rb == 'G') || (ra == 'G' && rb == 'D')))
		printf("# results: %c %c\n", ra, rb);
	/* Found by the search after --deadlock-wait, not by a timeout. */
	CHECK(h_now() - start < 5.0);
	put(to_a, 'e');
	put(to_b, 'e');
	CHECK(waitpid(a, &status, 0) == a && WIFEXITED(status) && WEXITSTATUS(status) == 0);
	CHECK(waitpid(b, &status, 0) == b && WIFEXITED(status) && WEXITSTATUS(status) == 0);
	close(to_a);
	close(to_b);
	close(from_a);
	close(from_b);
}

struct pair {
	struct rec *a, *b;
};

static int pred_either(void *arg)
{
	struct pair *p = arg;
	return p->a->asts + p->b->asts >= 1;
}

/* Two transactions (dlm_ls_lockx's xid) in one process deadlock each other: the search sees them apart. */
static void test_transaction_deadlock(void)
{
	const char *name = fresh("xid");
	dlm_lshandle_t ls = h_open(name);
	struct rec a1, b1, a2, b2;
	uint64_t xa = 1001, xb = 1002;
	struct pair pair = {&a2, &b2};
	CHECK(ls != NULL);
	rec_init(&a1, ls);
	rec_init(&b1, ls);
	rec_init(&a2, ls);
	rec_init(&b2, ls);
	CHECK_OK(dlm_ls_lockx(ls, LKM_EXMODE, &a1.lksb, 0, "t1", 2, 0, rec_ast, &a1, NULL, &xa, NULL));
	CHECK_OK(dlm_ls_lockx(ls, LKM_EXMODE, &b1.lksb, 0, "t2", 2, 0, rec_ast, &b1, NULL, &xb, NULL));
	CHECK(wait_asts(&a1, 1) && wait_asts(&b1, 1));
	CHECK_OK(dlm_ls_lockx(ls, LKM_EXMODE, &a2.lksb, 0, "t2", 2, 0, rec_ast, &a2, NULL, &xa, NULL));
	CHECK_OK(dlm_ls_lockx(ls, LKM_EXMODE, &b2.lksb, 0, "t1", 2, 0, rec_ast, &b2, NULL, &xb, NULL));
	/* One of the two waiting requests is the victim. */
	CHECK(h_wait(pred_either, &pair));
	CHECK(a2.asts + b2.asts == 1);
	if (a2.asts) {
		CHECK_EQ(a2.status, EDEADLK);
		CHECK_OK(dlm_ls_unlock_wait(ls, a1.lksb.sb_lkid, 0, &a1.lksb));
		CHECK(wait_asts(&b2, 1));
		CHECK_EQ(b2.status, 0);
	} else if (b2.asts) {
		CHECK_EQ(b2.status, EDEADLK);
		CHECK_OK(dlm_ls_unlock_wait(ls, b1.lksb.sb_lkid, 0, &b1.lksb));
		CHECK(wait_asts(&a2, 1));
		CHECK_EQ(a2.status, 0);
	}
	CHECK_OK(h_release(name, ls, 1));
}

int main(void)
{
	snprintf(h_prefix, sizeof(h_prefix), "processes: ");
	signal(SIGPIPE, SIG_IGN);
	RUN(test_orphan_adoption);
	RUN(test_orphan_purge);
	if (geteuid() == 0)
		RUN(test_orphan_user);
	else
		printf("# test_orphan_user skipped: it runs processes as other users (setuid), which needs root\n");
	RUN(test_two_process_deadlock);
	RUN(test_transaction_deadlock);
	return h_done();
}
