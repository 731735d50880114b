/*
 * The libdlm API against a real dlmd ($DLM_SOCKET), compiled twice: linked with -ldlm (ASTs on the library's
 * threads) and with -DTEST_LT -ldlm_lt (ASTs from dlm_dispatch). Two handles on one lockspace are two owners
 * in dlmd, which is how a case plays two processes.
 */
#include "harness.h"

#include <sys/wait.h>

static char ls_name[64];

/* Returns once dlmd has handled every request made on `ls` so far (replies come in order). */
static void h_sync(dlm_lshandle_t ls)
{
	struct dlm_lksb lksb;
	memset(&lksb, 0, sizeof(lksb));
	CHECK_OK(dlm_ls_lock_wait(ls, LKM_NLMODE, &lksb, 0, "sync-point", 10, 0, NULL, NULL, NULL));
	CHECK_OK(dlm_ls_unlock_wait(ls, lksb.sb_lkid, 0, &lksb));
}

/* A lockspace name of its own for each case, so that cases never meet. */
static const char *fresh(const char *what)
{
	snprintf(ls_name, sizeof(ls_name), "%s-%s-%d", what, FLAVOUR, (int)getpid());
	return ls_name;
}

static void test_lockspaces(void)
{
	const char *name = fresh("ls");
	dlm_lshandle_t a, b, c;
	struct dlm_lksb lksb;

	errno = 0;
	CHECK(dlm_open_lockspace(name) == NULL && errno == ENOENT);
	a = dlm_create_lockspace(name, 0600);
	CHECK(a != NULL);
	b = dlm_open_lockspace(name);
	CHECK(b != NULL);
	errno = 0;
	CHECK(dlm_new_lockspace(name, 0600, DLM_LSFL_NEWEXCL) == NULL && errno == EEXIST);
	c = dlm_new_lockspace(name, 0600, 0);
	CHECK(c != NULL);
	CHECK(dlm_ls_get_fd(a) >= 0 && dlm_ls_get_fd(a) != dlm_ls_get_fd(b));
	CHECK_OK(dlm_close_lockspace(c));

	/* b holds a lock: a release without force fails (and closes a); with force it drops b's lock. */
	memset(&lksb, 0, sizeof(lksb));
	CHECK_OK(dlm_ls_lock_wait(b, LKM_EXMODE, &lksb, 0, "held", 4, 0, NULL, NULL, NULL));
	CHECK_EQ(lksb.sb_status, 0);
	CHECK_ERR(dlm_release_lockspace(name, a, 0), EBUSY);
	a = dlm_open_lockspace(name);
	CHECK(a != NULL);
	CHECK_OK(dlm_release_lockspace(name, a, 1));
	errno = 0;
	CHECK(dlm_open_lockspace(name) == NULL && errno == ENOENT);
	dlm_close_lockspace(b);

	/* Our own locks go first, as when libdlm closes the device: then an empty lockspace is released. */
	a = dlm_create_lockspace(name, 0600);
	CHECK(a != NULL);
	memset(&lksb, 0, sizeof(lksb));
	CHECK_OK(dlm_ls_lock_wait(a, LKM_PRMODE, &lksb, 0, "mine", 4, 0, NULL, NULL, NULL));
	CHECK_OK(dlm_release_lockspace(name, a, 0));
	errno = 0;
	CHECK(dlm_open_lockspace(name) == NULL && errno == ENOENT);

	/* Names: 1 to 64 bytes. */
	errno = 0;
	CHECK(dlm_create_lockspace("", 0600) == NULL && errno == EINVAL);
	errno = 0;
	CHECK(dlm_create_lockspace("0123456789012345678901234567890123456789012345678901234567890123456789", 0600) ==
		      NULL &&
	      errno == EINVAL);
	CHECK_ERR(dlm_dispatch(-5), EBADF);
}

static void test_versions(void)
{
	uint32_t maj = 0, min = 0, patch = 0;
	const char *saved = getenv("DLM_SOCKET");
	char copy[256];
	dlm_library_version(&maj, &min, &patch);
	CHECK(maj == 6 && min == 0 && patch == 2);
	maj = 0;
	CHECK_OK(dlm_kernel_version(&maj, &min, &patch));
	CHECK_EQ(maj, 6);
	/* No daemon there: no kernel either. */
	snprintf(copy, sizeof(copy), "%s", saved ? saved : "");
	setenv("DLM_SOCKET", "/nonexistent/dlmd.sock", 1);
	CHECK(dlm_kernel_version(&maj, &min, &patch) == -1 && errno == ENOENT);
	errno = 0;
	CHECK(dlm_create_lockspace("nowhere", 0600) == NULL && errno == ENOENT);
	setenv("DLM_SOCKET", copy, 1);
}

static void test_sync_lock_unlock(void)
{
	const char *name = fresh("sync");
	dlm_lshandle_t ls = h_open(name);
	struct dlm_lksb lksb, lksb2;
	CHECK(ls != NULL);
	memset(&lksb, 0, sizeof(lksb));
	CHECK_OK(dlm_ls_lock_wait(ls, LKM_EXMODE, &lksb, 0, "r", 1, 0, NULL, NULL, NULL));
	CHECK_EQ(lksb.sb_status, 0);
	CHECK(lksb.sb_lkid != 0);
	/* A conversion of the same lock, then the unlock. */
	CHECK_OK(dlm_ls_lock_wait(ls, LKM_NLMODE, &lksb, LKF_CONVERT, NULL, 0, 0, NULL, NULL, NULL));
	CHECK_EQ(lksb.sb_status, 0);
	CHECK_OK(dlm_ls_lock_wait(ls, LKM_PRMODE, &lksb, LKF_CONVERT, NULL, 0, 0, NULL, NULL, NULL));
	CHECK_EQ(lksb.sb_status, 0);
	memset(&lksb2, 0, sizeof(lksb2));
	CHECK_OK(dlm_ls_unlock_wait(ls, lksb.sb_lkid, 0, &lksb2));
	CHECK_EQ(lksb2.sb_status, EUNLOCK);
	CHECK_EQ(lksb2.sb_lkid, lksb.sb_lkid);
	/* The lock is gone. */
	CHECK_ERR(dlm_ls_unlock_wait(ls, lksb.sb_lkid, 0, &lksb2), ENOENT);
	CHECK_OK(h_release(name, ls, 0));
}

static void test_async_ast(void)
{
	const char *name = fresh("async");
	dlm_lshandle_t ls = h_open(name);
	struct rec r, other;
	CHECK(ls != NULL);
	rec_init(&r, ls);
	rec_init(&other, ls);
	CHECK_OK(dlm_ls_lock(ls, LKM_PRMODE, &r.lksb, 0, "res", 3, 0, rec_ast, &r, NULL, NULL));
	/* The lock id is known at once; the status stays EINPROG until the AST. */
	CHECK(r.lksb.sb_lkid != 0);
	CHECK(wait_asts(&r, 1));
	CHECK_EQ(r.status, 0);
	CHECK_EQ(r.lkid, r.lksb.sb_lkid);
	CHECK(r.last_arg == &r);
	/* Conversion up, asynchronously. */
	CHECK_OK(dlm_ls_lock(ls, LKM_EXMODE, &r.lksb, LKF_CONVERT, NULL, 0, 0, rec_ast, &r, NULL, NULL));
	CHECK(wait_asts(&r, 2));
	CHECK_EQ(r.status, 0);
	/* The unlock's AST gets the unlock's argument (libdlm replaces castparam). */
	CHECK_OK(dlm_ls_unlock(ls, r.lksb.sb_lkid, 0, &other.lksb, &other));
	CHECK(wait_asts(&other, 1));
	CHECK_EQ(other.status, EUNLOCK);
	CHECK_EQ(other.lkid, r.lksb.sb_lkid);
	CHECK_EQ(r.asts, 2);
	/* The _wait forms from an AST-driven lockspace. */
	CHECK_OK(dlm_ls_lock_wait(ls, LKM_CWMODE, &r.lksb, 0, "res2", 4, 0, NULL, NULL, NULL));
	CHECK_EQ(r.lksb.sb_status, 0);
	CHECK_OK(dlm_ls_unlock_wait(ls, r.lksb.sb_lkid, 0, &r.lksb));
	CHECK_EQ(r.lksb.sb_status, EUNLOCK);
	CHECK_OK(h_release(name, ls, 0));
}

static void test_bast(void)
{
	const char *name = fresh("bast");
	dlm_lshandle_t a = h_open(name), b = h_open(name);
	struct rec ra, rb;
	CHECK(a && b);
	rec_init(&ra, a);
	rec_init(&rb, b);
	CHECK_OK(dlm_ls_lock(a, LKM_EXMODE, &ra.lksb, 0, "res", 3, 0, rec_ast, &ra, REC_BAST, NULL));
	CHECK(wait_asts(&ra, 1));
	CHECK_EQ(ra.status, 0);
	/* b's PR request blocks: a's bast is told PR, and a converts down to NL from inside its bast. */
	ra.on_bast = 2;
	CHECK_OK(dlm_ls_lock(b, LKM_PRMODE, &rb.lksb, 0, "res", 3, 0, rec_ast, &rb, REC_BAST, NULL));
	CHECK(wait_basts(&ra, 1));
	CHECK_EQ(ra.bast_mode, LKM_PRMODE);
	CHECK(wait_asts(&rb, 1));
	CHECK_EQ(rb.status, 0);
	CHECK(wait_asts(&ra, 2));
	CHECK_EQ(ra.status, 0);
	/* Now a wants EX back: b, holding PR, is told EX and unlocks from its bast. */
	rb.on_bast = 1;
	CHECK_OK(dlm_ls_lock(a, LKM_EXMODE, &ra.lksb, LKF_CONVERT, NULL, 0, 0, rec_ast, &ra, REC_BAST, NULL));
	CHECK(wait_basts(&rb, 1));
	CHECK_EQ(rb.bast_mode, LKM_EXMODE);
	CHECK(wait_asts(&rb, 2));
	CHECK_EQ(rb.status, EUNLOCK);
	CHECK(wait_asts(&ra, 3));
	CHECK_EQ(ra.status, 0);
	CHECK_EQ(ra.basts, 1);
	/* A lock taken with dlm_ls_lock_wait has its bast too. */
	rec_init(&rb, b);
	CHECK_OK(dlm_ls_lock(b, LKM_NLMODE, &rb.lksb, 0, "res", 3, 0, rec_ast, &rb, NULL, NULL));
	CHECK(wait_asts(&rb, 1));
	CHECK_OK(dlm_ls_unlock_wait(a, ra.lksb.sb_lkid, 0, &ra.lksb));
	rec_init(&ra, a);
	CHECK_OK(dlm_ls_lock_wait(a, LKM_PRMODE, &ra.lksb, 0, "sync", 4, 0, &ra, REC_BAST, NULL));
	CHECK_OK(dlm_ls_lock(b, LKM_EXMODE, &rb.lksb, 0, "sync", 4, 0, rec_ast, &rb, NULL, NULL));
	CHECK(wait_basts(&ra, 1));
	CHECK_EQ(ra.bast_mode, LKM_EXMODE);
	h_close(a);
	CHECK(wait_asts(&rb, 2));
	CHECK_EQ(rb.status, 0);
	CHECK_OK(h_release(name, b, 1));
}

static void test_noqueue(void)
{
	const char *name = fresh("noqueue");
	dlm_lshandle_t a = h_open(name), b = h_open(name);
	struct rec ra, rb;
	struct dlm_lksb lksb;
	CHECK(a && b);
	rec_init(&ra, a);
	rec_init(&rb, b);
	CHECK_OK(dlm_ls_lock_wait(a, LKM_EXMODE, &ra.lksb, 0, "res", 3, 0, NULL, NULL, NULL));
	CHECK_OK(dlm_ls_lock(b, LKM_PRMODE, &rb.lksb, LKF_NOQUEUE, "res", 3, 0, rec_ast, &rb, NULL, NULL));
	CHECK(wait_asts(&rb, 1));
	CHECK_EQ(rb.status, EAGAIN);
	/* The refused request's lock is gone. */
	CHECK_ERR(dlm_ls_unlock(b, rb.lksb.sb_lkid, 0, &rb.lksb, &rb), ENOENT);
	memset(&lksb, 0, sizeof(lksb));
#ifdef TEST_LT
	/* libdlm_lt's synchronous calls fail with the status as errno. */
	CHECK_ERR(dlm_ls_lock_wait(b, LKM_PRMODE, &lksb, LKF_NOQUEUE, "res", 3, 0, NULL, NULL, NULL), EAGAIN);
#else
	/* The threaded library returns 0 and leaves the status in the lksb. */
	CHECK_OK(dlm_ls_lock_wait(b, LKM_PRMODE, &lksb, LKF_NOQUEUE, "res", 3, 0, NULL, NULL, NULL));
#endif
	CHECK_EQ(lksb.sb_status, EAGAIN);
	/* NOQUEUEBAST: the holder hears of the refused request. */
	rec_init(&ra, a);
	CHECK_OK(dlm_ls_lock(a, LKM_EXMODE, &ra.lksb, 0, "res2", 4, 0, rec_ast, &ra, REC_BAST, NULL));
	CHECK(wait_asts(&ra, 1));
	rec_init(&rb, b);
	CHECK_OK(dlm_ls_lock(b, LKM_CRMODE, &rb.lksb, LKF_NOQUEUE | LKF_NOQUEUEBAST, "res2", 4, 0, rec_ast, &rb, NULL,
			     NULL));
	CHECK(wait_asts(&rb, 1));
	CHECK_EQ(rb.status, EAGAIN);
	CHECK(wait_basts(&ra, 1));
	CHECK_EQ(ra.bast_mode, LKM_CRMODE);
	CHECK_OK(h_release(name, a, 1));
	h_close(b);
}

static void test_lvb(void)
{
	const char *name = fresh("lvb");
	dlm_lshandle_t a = h_open(name), b = h_open(name), c = h_open(name);
	struct rec ra, rb, rc;
	char nl_lvb[DLM_LVB_LEN];
	struct dlm_lksb nl;
	CHECK(a && b && c);
	rec_init(&ra, a);
	rec_init(&rb, b);
	rec_init(&rc, c);
	/* An NL lock keeps the resource, and with it the value block, alive. */
	memset(&nl, 0, sizeof(nl));
	nl.sb_lvbptr = nl_lvb;
	CHECK_OK(dlm_ls_lock_wait(c, LKM_NLMODE, &nl, LKF_VALBLK, "val", 3, 0, NULL, NULL, NULL));

	/* Write with VALBLK when converting down from PW. */
	CHECK_OK(dlm_ls_lock_wait(a, LKM_PWMODE, &ra.lksb, LKF_VALBLK, "val", 3, 0, NULL, NULL, NULL));
	CHECK_EQ(ra.lksb.sb_status, 0);
	CHECK_EQ(ra.lksb.sb_flags & DLM_SBF_VALNOTVALID, 0);
	memset(ra.lvb, 0, sizeof(ra.lvb));
	snprintf(ra.lvb, sizeof(ra.lvb), "generation %d", 1);
	CHECK_OK(dlm_ls_lock_wait(a, LKM_NLMODE, &ra.lksb, LKF_CONVERT | LKF_VALBLK, NULL, 0, 0, NULL, NULL, NULL));
	/* Read it with a new grant, asynchronously. */
	memset(rb.lvb, 'x', sizeof(rb.lvb));
	CHECK_OK(dlm_ls_lock(b, LKM_PRMODE, &rb.lksb, LKF_VALBLK, "val", 3, 0, rec_ast, &rb, NULL, NULL));
	CHECK(wait_asts(&rb, 1));
	CHECK_EQ(rb.status, 0);
	CHECK(strcmp(rb.lvb, "generation 1") == 0);
	CHECK_EQ(rb.sb_flags & DLM_SBF_VALNOTVALID, 0);
	/* Without VALBLK nothing is read. */
	CHECK_OK(dlm_ls_unlock_wait(b, rb.lksb.sb_lkid, 0, &rb.lksb));
	memset(rb.lvb, 'x', sizeof(rb.lvb));
	CHECK_OK(dlm_ls_lock_wait(b, LKM_PRMODE, &rb.lksb, 0, "val", 3, 0, NULL, NULL, NULL));
	CHECK_EQ(rb.lvb[0], 'x');
	CHECK_OK(dlm_ls_unlock_wait(b, rb.lksb.sb_lkid, 0, &rb.lksb));

	/* Write on unlock from EX. */
	CHECK_OK(dlm_ls_lock_wait(a, LKM_EXMODE, &ra.lksb, LKF_CONVERT | LKF_VALBLK, NULL, 0, 0, NULL, NULL, NULL));
	CHECK(strcmp(ra.lvb, "generation 1") == 0);
	snprintf(ra.lvb, sizeof(ra.lvb), "generation %d", 2);
	CHECK_OK(dlm_ls_unlock_wait(a, ra.lksb.sb_lkid, LKF_VALBLK, &ra.lksb));
	CHECK_EQ(ra.lksb.sb_status, EUNLOCK);
	CHECK_OK(dlm_ls_lock_wait(b, LKM_CRMODE, &rb.lksb, LKF_VALBLK, "val", 3, 0, NULL, NULL, NULL));
	CHECK(strcmp(rb.lvb, "generation 2") == 0);
	/* An up-conversion reads too. */
	CHECK_OK(dlm_ls_lock_wait(c, LKM_PRMODE, &nl, LKF_CONVERT | LKF_VALBLK, NULL, 0, 0, NULL, NULL, NULL));
	CHECK(strcmp(nl_lvb, "generation 2") == 0);
	CHECK_OK(dlm_ls_lock_wait(c, LKM_NLMODE, &nl, LKF_CONVERT, NULL, 0, 0, NULL, NULL, NULL));
	CHECK_OK(dlm_ls_unlock_wait(b, rb.lksb.sb_lkid, 0, &rb.lksb));

	/* A PW holder that goes away without writing leaves the value block invalid: VALNOTVALID. */
	CHECK_OK(dlm_ls_lock_wait(a, LKM_PWMODE, &ra.lksb, LKF_VALBLK, "val", 3, 0, NULL, NULL, NULL));
	h_close(a);
	CHECK_OK(dlm_ls_lock_wait(b, LKM_PRMODE, &rb.lksb, LKF_VALBLK, "val", 3, 0, NULL, NULL, NULL));
	CHECK_EQ(rb.lksb.sb_status, 0);
	CHECK(rb.lksb.sb_flags & DLM_SBF_VALNOTVALID);
	CHECK_OK(dlm_ls_unlock_wait(b, rb.lksb.sb_lkid, 0, &rb.lksb));
	/* A new write makes it valid again; IVVALBLK invalidates it. */
	CHECK_OK(dlm_ls_lock_wait(b, LKM_EXMODE, &rb.lksb, LKF_VALBLK, "val", 3, 0, NULL, NULL, NULL));
	CHECK(rb.lksb.sb_flags & DLM_SBF_VALNOTVALID);
	snprintf(rb.lvb, sizeof(rb.lvb), "generation %d", 3);
	CHECK_OK(dlm_ls_lock_wait(b, LKM_PRMODE, &rb.lksb, LKF_CONVERT | LKF_VALBLK, NULL, 0, 0, NULL, NULL, NULL));
	CHECK_OK(dlm_ls_lock_wait(b, LKM_EXMODE, &rb.lksb, LKF_CONVERT | LKF_VALBLK, NULL, 0, 0, NULL, NULL, NULL));
	CHECK_EQ(rb.lksb.sb_flags & DLM_SBF_VALNOTVALID, 0);
	CHECK(strcmp(rb.lvb, "generation 3") == 0);
	CHECK_OK(dlm_ls_unlock_wait(b, rb.lksb.sb_lkid, LKF_VALBLK | LKF_IVVALBLK, &rb.lksb));
	CHECK_OK(dlm_ls_lock_wait(b, LKM_PRMODE, &rb.lksb, LKF_VALBLK, "val", 3, 0, NULL, NULL, NULL));
	CHECK(rb.lksb.sb_flags & DLM_SBF_VALNOTVALID);
	CHECK_OK(h_release(name, b, 1));
	h_close(c);
}

static void test_conversions(void)
{
	const char *name = fresh("convert");
	dlm_lshandle_t a = h_open(name), b = h_open(name);
	struct rec ra, rb;
	CHECK(a && b);
	rec_init(&ra, a);
	rec_init(&rb, b);

	/* QUECVT: legal for an up-conversion only (PR <-> CW counts as one). */
	CHECK_OK(dlm_ls_lock_wait(a, LKM_PRMODE, &ra.lksb, 0, "q", 1, 0, NULL, NULL, NULL));
	CHECK_ERR(dlm_ls_lock(a, LKM_NLMODE, &ra.lksb, LKF_CONVERT | LKF_QUECVT, NULL, 0, 0, rec_ast, &ra, NULL, NULL),
		  EINVAL);
	CHECK_OK(dlm_ls_lock_wait(a, LKM_CWMODE, &ra.lksb, LKF_CONVERT | LKF_QUECVT, NULL, 0, 0, NULL, NULL, NULL));
	CHECK_EQ(ra.lksb.sb_status, 0);
	CHECK_OK(dlm_ls_lock_wait(a, LKM_EXMODE, &ra.lksb, LKF_CONVERT | LKF_QUECVT, NULL, 0, 0, NULL, NULL, NULL));
	CHECK_EQ(ra.lksb.sb_status, 0);
	CHECK_OK(dlm_ls_unlock_wait(a, ra.lksb.sb_lkid, 0, &ra.lksb));

	/* A conversion deadlock: both hold PR and want EX. Without CONVDEADLK the second gets EDEADLK. */
	rec_init(&ra, a);
	rec_init(&rb, b);
	CHECK_OK(dlm_ls_lock_wait(a, LKM_PRMODE, &ra.lksb, 0, "cd", 2, 0, NULL, NULL, NULL));
	CHECK_OK(dlm_ls_lock_wait(b, LKM_PRMODE, &rb.lksb, 0, "cd", 2, 0, NULL, NULL, NULL));
	CHECK_OK(dlm_ls_lock(a, LKM_EXMODE, &ra.lksb, LKF_CONVERT, NULL, 0, 0, rec_ast, &ra, NULL, NULL));
	h_sync(a);
	CHECK_OK(dlm_ls_lock(b, LKM_EXMODE, &rb.lksb, LKF_CONVERT, NULL, 0, 0, rec_ast, &rb, NULL, NULL));
	CHECK(wait_asts(&rb, 1));
	CHECK_EQ(rb.status, EDEADLK);
	/* b still holds PR: a waits until b unlocks. */
	CHECK_EQ(ra.asts, 0);
	CHECK_OK(dlm_ls_unlock_wait(b, rb.lksb.sb_lkid, 0, &rb.lksb));
	CHECK(wait_asts(&ra, 1));
	CHECK_EQ(ra.status, 0);
	CHECK_OK(dlm_ls_unlock_wait(a, ra.lksb.sb_lkid, 0, &ra.lksb));

	/* With CONVDEADLK the second is demoted to NL, a gets EX, then b gets EX with DEMOTED. */
	rec_init(&ra, a);
	rec_init(&rb, b);
	CHECK_OK(dlm_ls_lock_wait(a, LKM_PRMODE, &ra.lksb, 0, "cd2", 3, 0, NULL, NULL, NULL));
	CHECK_OK(dlm_ls_lock_wait(b, LKM_PRMODE, &rb.lksb, 0, "cd2", 3, 0, NULL, NULL, NULL));
	CHECK_OK(dlm_ls_lock(a, LKM_EXMODE, &ra.lksb, LKF_CONVERT, NULL, 0, 0, rec_ast, &ra, NULL, NULL));
	h_sync(a);
	CHECK_OK(dlm_ls_lock(b, LKM_EXMODE, &rb.lksb, LKF_CONVERT | LKF_CONVDEADLK, NULL, 0, 0, rec_ast, &rb, NULL,
			     NULL));
	CHECK(wait_asts(&ra, 1));
	CHECK_EQ(ra.status, 0);
	CHECK_EQ(rb.asts, 0);
	CHECK_OK(dlm_ls_unlock_wait(a, ra.lksb.sb_lkid, 0, &ra.lksb));
	CHECK(wait_asts(&rb, 1));
	CHECK_EQ(rb.status, 0);
	CHECK(rb.sb_flags & DLM_SBF_DEMOTED);
	CHECK_OK(dlm_ls_unlock_wait(b, rb.lksb.sb_lkid, 0, &rb.lksb));

	/* ALTPR: PW is blocked by a PR holder, PR is not: granted PR with ALTMODE. ALTCW likewise. */
	rec_init(&ra, a);
	rec_init(&rb, b);
	CHECK_OK(dlm_ls_lock_wait(a, LKM_PRMODE, &ra.lksb, 0, "alt", 3, 0, NULL, NULL, NULL));
	CHECK_OK(dlm_ls_lock(b, LKM_PWMODE, &rb.lksb, LKF_ALTPR, "alt", 3, 0, rec_ast, &rb, NULL, NULL));
	CHECK(wait_asts(&rb, 1));
	CHECK_EQ(rb.status, 0);
	CHECK(rb.sb_flags & DLM_SBF_ALTMODE);
	CHECK_OK(dlm_ls_unlock_wait(b, rb.lksb.sb_lkid, 0, &rb.lksb));
	CHECK_OK(dlm_ls_unlock_wait(a, ra.lksb.sb_lkid, 0, &ra.lksb));
	CHECK_OK(dlm_ls_lock_wait(a, LKM_CWMODE, &ra.lksb, 0, "alt", 3, 0, NULL, NULL, NULL));
	CHECK_OK(dlm_ls_lock_wait(b, LKM_NLMODE, &rb.lksb, 0, "alt", 3, 0, NULL, NULL, NULL));
	CHECK_OK(dlm_ls_lock_wait(b, LKM_EXMODE, &rb.lksb, LKF_CONVERT | LKF_ALTCW, NULL, 0, 0, NULL, NULL, NULL));
	CHECK_EQ(rb.lksb.sb_status, 0);
	CHECK(rb.lksb.sb_flags & DLM_SBF_ALTMODE);
	/* A conversion while another is pending: EBUSY. */
	rec_init(&rb, b);
	CHECK_OK(dlm_ls_lock_wait(b, LKM_PRMODE, &rb.lksb, 0, "busy", 4, 0, NULL, NULL, NULL));
	CHECK_OK(dlm_ls_lock_wait(a, LKM_PRMODE, &ra.lksb, 0, "busy", 4, 0, NULL, NULL, NULL));
	CHECK_OK(dlm_ls_lock(b, LKM_EXMODE, &rb.lksb, LKF_CONVERT, NULL, 0, 0, rec_ast, &rb, NULL, NULL));
	CHECK_ERR(dlm_ls_lock(b, LKM_NLMODE, &rb.lksb, LKF_CONVERT, NULL, 0, 0, rec_ast, &rb, NULL, NULL), EBUSY);
	CHECK_ERR(dlm_ls_unlock(b, rb.lksb.sb_lkid, 0, &rb.lksb, &rb), EBUSY);
	CHECK_OK(h_release(name, a, 1));
	h_close(b);
}

struct waiter_arg {
	dlm_lshandle_t ls;
	struct dlm_lksb lksb;
	int rc, err;
};

static void *lock_waiter(void *arg)
{
	struct waiter_arg *w = arg;
	w->rc = dlm_ls_lock_wait(w->ls, LKM_EXMODE, &w->lksb, 0, "res3", 4, 0, NULL, NULL, NULL);
	w->err = errno;
	return NULL;
}

static void test_cancel_forceunlock(void)
{
	const char *name = fresh("cancel");
	dlm_lshandle_t a = h_open(name), b = h_open(name);
	struct rec ra, rb, rc;
	CHECK(a && b);
	rec_init(&ra, a);
	rec_init(&rb, b);
	rec_init(&rc, b);
	CHECK_OK(dlm_ls_lock_wait(a, LKM_EXMODE, &ra.lksb, 0, "res", 3, 0, NULL, NULL, NULL));

	/* Cancel a waiting request: one AST, ECANCEL; the lock is gone. */
	CHECK_OK(dlm_ls_lock(b, LKM_EXMODE, &rb.lksb, 0, "res", 3, 0, rec_ast, &rb, NULL, NULL));
	CHECK_OK(dlm_ls_unlock(b, rb.lksb.sb_lkid, LKF_CANCEL, &rb.lksb, &rb));
	CHECK(wait_asts(&rb, 1));
	CHECK_EQ(rb.status, ECANCEL);
	CHECK_ERR(dlm_ls_unlock(b, rb.lksb.sb_lkid, 0, &rb.lksb, &rb), ENOENT);

	/* Cancel a waiting conversion: the lock keeps its mode. */
	rec_init(&rb, b);
	CHECK_OK(dlm_ls_lock_wait(b, LKM_NLMODE, &rb.lksb, 0, "res", 3, 0, NULL, NULL, NULL));
	CHECK_OK(dlm_ls_lock(b, LKM_EXMODE, &rb.lksb, LKF_CONVERT, NULL, 0, 0, rec_ast, &rb, NULL, NULL));
	h_sync(b);
#ifdef TEST_LT
	CHECK_ERR(dlm_ls_unlock_wait(b, rb.lksb.sb_lkid, LKF_CANCEL, &rc.lksb), ECANCEL);
#else
	CHECK_OK(dlm_ls_unlock_wait(b, rb.lksb.sb_lkid, LKF_CANCEL, &rc.lksb));
#endif
	CHECK_EQ(rc.lksb.sb_status, ECANCEL);
	/* A cancel with nothing to cancel: 0 and no AST (libdlm), EBUSY for the _wait form here. */
	CHECK_OK(dlm_ls_unlock(b, rb.lksb.sb_lkid, LKF_CANCEL, &rb.lksb, &rb));
	CHECK_ERR(dlm_ls_unlock_wait(b, rb.lksb.sb_lkid, LKF_CANCEL, &rb.lksb), EBUSY);
	CHECK_OK(dlm_ls_unlock_wait(b, rb.lksb.sb_lkid, 0, &rb.lksb));
	CHECK_EQ(rb.lksb.sb_status, EUNLOCK);
	CHECK_EQ(rb.asts, 0);

	/* FORCEUNLOCK of a waiting request: one AST, EUNLOCK. A plain unlock is refused meanwhile. */
	rec_init(&rb, b);
	CHECK_OK(dlm_ls_lock(b, LKM_PRMODE, &rb.lksb, 0, "res", 3, 0, rec_ast, &rb, NULL, NULL));
	CHECK_ERR(dlm_ls_unlock(b, rb.lksb.sb_lkid, 0, &rb.lksb, &rb), EBUSY);
	CHECK_OK(dlm_ls_unlock(b, rb.lksb.sb_lkid, LKF_FORCEUNLOCK, &rb.lksb, &rb));
	CHECK(wait_asts(&rb, 1));
	CHECK_EQ(rb.status, EUNLOCK);
	CHECK_ERR(dlm_ls_unlock(b, rb.lksb.sb_lkid, LKF_FORCEUNLOCK, &rb.lksb, &rb), ENOENT);

	/* Another thread's dlm_ls_lock_wait, cancelled from here: it returns with ECANCEL in its lksb. */
	{
		pthread_t t;
		struct waiter_arg w;
		memset(&w, 0, sizeof(w));
		w.ls = b;
		CHECK_OK(dlm_ls_unlock_wait(a, ra.lksb.sb_lkid, 0, &ra.lksb));
		rec_init(&ra, a);
		CHECK_OK(dlm_ls_lock_wait(a, LKM_EXMODE, &ra.lksb, 0, "res3", 4, 0, &ra, REC_BAST, NULL));
		CHECK(pthread_create(&t, NULL, lock_waiter, &w) == 0);
		/* The holder's bast says the request is queued; its lock id was set before it was sent. */
		CHECK(wait_basts(&ra, 1));
		rec_init(&rc, b);
		CHECK_OK(dlm_ls_unlock(b, w.lksb.sb_lkid, LKF_CANCEL, &rc.lksb, NULL));
		pthread_join(t, NULL);
#ifdef TEST_LT
		CHECK(w.rc == -1 && w.err == ECANCEL);
#else
		CHECK_EQ(w.rc, 0);
#endif
		CHECK_EQ(w.lksb.sb_status, ECANCEL);
		/* The canceller's lksb too (written before the waiter was woken). */
		CHECK_EQ(rc.lksb.sb_status, ECANCEL);
		CHECK_OK(dlm_ls_unlock_wait(a, ra.lksb.sb_lkid, 0, &ra.lksb));
	}

	/* FORCEUNLOCK of a granted lock is an unlock. */
	rec_init(&rb, b);
	CHECK_OK(dlm_ls_lock(b, LKM_PRMODE, &rb.lksb, 0, "res", 3, 0, rec_ast, &rb, NULL, NULL));
	CHECK(wait_asts(&rb, 1));
	CHECK_OK(dlm_ls_unlock(b, rb.lksb.sb_lkid, LKF_FORCEUNLOCK, &rb.lksb, &rb));
	CHECK(wait_asts(&rb, 2));
	CHECK_EQ(rb.status, EUNLOCK);
	CHECK_OK(h_release(name, a, 1));
	h_close(b);
}

static void test_timeout(void)
{
	const char *name = fresh("timeout");
	dlm_lshandle_t a = h_open(name), b = h_open(name);
	struct rec ra, rb;
	uint64_t timeout = 10, xid = 77; /* centiseconds */
	double start;
	CHECK(a && b);
	rec_init(&ra, a);
	rec_init(&rb, b);
	CHECK_OK(dlm_ls_lock_wait(a, LKM_EXMODE, &ra.lksb, 0, "res", 3, 0, NULL, NULL, NULL));
	start = h_now();
	CHECK_OK(dlm_ls_lockx(b, LKM_PRMODE, &rb.lksb, LKF_TIMEOUT, "res", 3, 0, rec_ast, &rb, NULL, &xid, &timeout));
	CHECK(wait_asts(&rb, 1));
	CHECK_EQ(rb.status, ETIMEDOUT);
	CHECK(h_now() - start >= 0.09);
	/* A timeout that does not expire. */
	rec_init(&rb, b);
	timeout = 3000;
	CHECK_OK(dlm_ls_lockx(b, LKM_PRMODE, &rb.lksb, LKF_TIMEOUT, "res", 3, 0, rec_ast, &rb, NULL, NULL, &timeout));
	CHECK_OK(dlm_ls_unlock_wait(a, ra.lksb.sb_lkid, 0, &ra.lksb));
	CHECK(wait_asts(&rb, 1));
	CHECK_EQ(rb.status, 0);
	/* TIMEOUT needs a timeout. */
	timeout = 0;
	CHECK_ERR(dlm_ls_lockx(b, LKM_PRMODE, &rb.lksb, LKF_TIMEOUT, "t", 1, 0, rec_ast, &rb, NULL, NULL, &timeout),
		  EINVAL);
	CHECK_ERR(dlm_ls_lockx(b, LKM_PRMODE, &rb.lksb, LKF_TIMEOUT, "t", 1, 0, rec_ast, &rb, NULL, NULL, NULL),
		  EINVAL);
	CHECK_OK(h_release(name, a, 1));
	h_close(b);
}

static void test_einval(void)
{
	const char *name = fresh("einval");
	dlm_lshandle_t ls = h_open(name);
	struct rec r;
	char long_name[80];
	CHECK(ls != NULL);
	rec_init(&r, ls);
	memset(long_name, 'n', sizeof(long_name));
	CHECK_ERR(dlm_ls_lock(ls, 6, &r.lksb, 0, "r", 1, 0, rec_ast, &r, NULL, NULL), EINVAL);
	CHECK_ERR(dlm_ls_lock(ls, LKM_EXMODE, &r.lksb, 0, "r", 0, 0, rec_ast, &r, NULL, NULL), EINVAL);
	CHECK_ERR(dlm_ls_lock(ls, LKM_EXMODE, &r.lksb, 0, long_name, 65, 0, rec_ast, &r, NULL, NULL), EINVAL);
	CHECK_ERR(dlm_ls_lock(ls, LKM_EXMODE, NULL, 0, "r", 1, 0, rec_ast, &r, NULL, NULL), EINVAL);
	CHECK_ERR(dlm_ls_lock(ls, LKM_EXMODE, &r.lksb, 0x80000000u >> 4, "r", 1, 0, rec_ast, &r, NULL, NULL), EINVAL);
	CHECK_ERR(dlm_ls_lock(ls, LKM_EXMODE, &r.lksb, LKF_QUECVT, "r", 1, 0, rec_ast, &r, NULL, NULL), EINVAL);
	CHECK_ERR(dlm_ls_lock(ls, LKM_EXMODE, &r.lksb, LKF_CONVDEADLK, "r", 1, 0, rec_ast, &r, NULL, NULL), EINVAL);
	CHECK_ERR(dlm_ls_lock(ls, LKM_PRMODE, &r.lksb, LKF_EXPEDITE, "r", 1, 0, rec_ast, &r, NULL, NULL), EINVAL);
	CHECK_ERR(dlm_ls_lock(ls, LKM_NLMODE, &r.lksb, LKF_EXPEDITE | LKF_NOQUEUE, "r", 1, 0, rec_ast, &r, NULL, NULL),
		  EINVAL);
	CHECK_ERR(dlm_ls_lock(ls, LKM_EXMODE, &r.lksb, LKF_CANCEL, "r", 1, 0, rec_ast, &r, NULL, NULL), EINVAL);
	CHECK_ERR(dlm_ls_lock(ls, LKM_EXMODE, &r.lksb, LKF_TIMEOUT, "r", 1, 0, rec_ast, &r, NULL, NULL), EINVAL);
	r.lksb.sb_lvbptr = NULL;
	CHECK_ERR(dlm_ls_lock(ls, LKM_EXMODE, &r.lksb, LKF_VALBLK, "r", 1, 0, rec_ast, &r, NULL, NULL), EINVAL);
	r.lksb.sb_lvbptr = r.lvb;
	CHECK_ERR(dlm_ls_lock(ls, LKM_EXMODE, &r.lksb, 0, "r", 1, 0, rec_ast, &r, NULL, (void *)1), ENOSYS);
	/* Conversions and unlocks of locks that do not exist. */
	r.lksb.sb_lkid = 12345;
	CHECK_ERR(dlm_ls_lock(ls, LKM_EXMODE, &r.lksb, LKF_CONVERT, NULL, 0, 0, rec_ast, &r, NULL, NULL), ENOENT);
	CHECK_ERR(dlm_ls_unlock(ls, 12345, 0, &r.lksb, &r), ENOENT);
	CHECK_ERR(dlm_ls_unlock(ls, 0, 0, &r.lksb, &r), EINVAL);
	CHECK_OK(dlm_ls_lock_wait(ls, LKM_EXMODE, &r.lksb, 0, "r", 1, 0, NULL, NULL, NULL));
	CHECK_ERR(dlm_ls_unlock(ls, r.lksb.sb_lkid, LKF_CANCEL | LKF_FORCEUNLOCK, &r.lksb, &r), EINVAL);
	CHECK_ERR(dlm_ls_unlock(ls, r.lksb.sb_lkid, LKF_NOQUEUE, &r.lksb, &r), EINVAL);
	CHECK_ERR(dlm_ls_lock(ls, LKM_EXMODE, &r.lksb, LKF_CONVERT | LKF_ORPHAN, NULL, 0, 0, rec_ast, &r, NULL, NULL),
		  EINVAL);
	CHECK_ERR(dlm_ls_lock(ls, LKM_PRMODE, &r.lksb, LKF_CONVERT | LKF_CONVDEADLK | LKF_NOQUEUE, NULL, 0, 0, rec_ast,
			      &r, NULL, NULL),
		  EINVAL);
	CHECK_ERR(dlm_ls_deadlock_cancel(ls, 0, 0), EINVAL);
	CHECK_ERR(dlm_ls_deadlock_cancel(ls, 999999, 0), ENOENT);
	/* A lock that is granted cannot be cancelled for a deadlock. */
	CHECK_ERR(dlm_ls_deadlock_cancel(ls, r.lksb.sb_lkid, 0), EBUSY);
	/* Bad handles. */
	CHECK_ERR(dlm_ls_lock(NULL, LKM_EXMODE, &r.lksb, 0, "r", 1, 0, rec_ast, &r, NULL, NULL), ENOTCONN);
	CHECK_ERR(dlm_ls_unlock(NULL, 1, 0, &r.lksb, &r), ENOTCONN);
	CHECK_OK(dlm_ls_unlock_wait(ls, r.lksb.sb_lkid, 0, &r.lksb));
	CHECK_OK(h_release(name, ls, 0));
}

static void test_default_lockspace(void)
{
	struct rec r;
	struct dlm_lksb lksb;
	int fd;
	rec_init(&r, NULL);
	memset(&lksb, 0, sizeof(lksb));
	/* No default lockspace yet: unlock has nothing to talk to. */
	CHECK_ERR(dlm_unlock(1, 0, &lksb, NULL), ENOTCONN);
#ifndef TEST_LT
	CHECK_OK(dlm_pthread_init());
	CHECK_ERR(dlm_pthread_init(), EEXIST);
#endif
	fd = dlm_get_fd();
	CHECK(fd >= 0);
	CHECK_OK(dlm_lock_wait(LKM_EXMODE, &lksb, 0, "dflt", 4, 0, NULL, NULL, NULL));
	CHECK_EQ(lksb.sb_status, 0);
	CHECK_OK(dlm_unlock_wait(lksb.sb_lkid, 0, &lksb));
	CHECK_EQ(lksb.sb_status, EUNLOCK);
	CHECK_OK(dlm_lock(LKM_PRMODE, &r.lksb, 0, "dflt", 4, 0, rec_ast, &r, NULL, NULL));
#ifdef TEST_LT
	for (int i = 0; i < 1000 && r.asts == 0; i++) {
		struct pollfd p = {fd, POLLIN, 0};
		if (poll(&p, 1, 10000) <= 0)
			break;
		CHECK_OK(dlm_dispatch(fd));
	}
#else
	CHECK(wait_asts(&r, 1));
#endif
	CHECK_EQ(r.status, 0);
	CHECK_OK(dlm_unlock(r.lksb.sb_lkid, 0, &r.lksb, &r));
#ifdef TEST_LT
	for (int i = 0; i < 1000 && r.asts == 1; i++) {
		struct pollfd p = {fd, POLLIN, 0};
		if (poll(&p, 1, 10000) <= 0)
			break;
		CHECK_OK(dlm_dispatch(fd));
	}
#else
	CHECK(wait_asts(&r, 2));
#endif
	CHECK_EQ(r.status, EUNLOCK);
#ifndef TEST_LT
	{
		int id = 0, id2 = 0;
		CHECK_OK(lock_resource("simple", LKM_EXMODE, 0, &id));
		CHECK(id != 0);
		CHECK_OK(lock_resource("simple", LKM_NLMODE, LKF_CONVERT, &id));
		CHECK_EQ(lock_resource("simple2", LKM_EXMODE, LKF_NOQUEUE, &id2), 0);
		CHECK_OK(unlock_resource(id2));
		CHECK_OK(unlock_resource(id));
		CHECK(unlock_resource(id) == -1 && errno == ENOENT);
		CHECK_OK(dlm_pthread_cleanup());
		CHECK_ERR(dlm_unlock(1, 0, &lksb, NULL), ENOTCONN);
		/* lock_resource starts the default lockspace and its thread itself. */
		CHECK_OK(lock_resource("simple", LKM_PRMODE, 0, &id));
		CHECK_OK(unlock_resource(id));
		CHECK_OK(dlm_pthread_cleanup());
	}
#endif
}

static void test_deadlock_cancel(void)
{
	const char *name = fresh("dlcancel");
	dlm_lshandle_t a = h_open(name), b = h_open(name);
	struct rec ra, rb;
	CHECK(a && b);
	rec_init(&ra, a);
	rec_init(&rb, b);
	CHECK_OK(dlm_ls_lock_wait(a, LKM_EXMODE, &ra.lksb, 0, "res", 3, 0, NULL, NULL, NULL));
	CHECK_OK(dlm_ls_lock(b, LKM_EXMODE, &rb.lksb, 0, "res", 3, 0, rec_ast, &rb, NULL, NULL));
	/* Right after the request: the library waits for dlmd's lock id itself. */
	CHECK_OK(dlm_ls_deadlock_cancel(b, rb.lksb.sb_lkid, 0));
	CHECK(wait_asts(&rb, 1));
	CHECK_EQ(rb.status, EDEADLK);
	CHECK_OK(h_release(name, a, 1));
	h_close(b);
}

static void test_parent_locks(void)
{
	const char *name = fresh("parent");
	dlm_lshandle_t ls = h_open(name);
	struct rec p, c1, c2;
	CHECK(ls != NULL);
	rec_init(&p, ls);
	rec_init(&c1, ls);
	rec_init(&c2, ls);
	CHECK_OK(dlm_ls_lock_wait(ls, LKM_PRMODE, &p.lksb, 0, "dir", 3, 0, NULL, NULL, NULL));
	CHECK_OK(dlm_ls_lock(ls, LKM_EXMODE, &c1.lksb, 0, "file", 4, p.lksb.sb_lkid, rec_ast, &c1, NULL, NULL));
	CHECK(wait_asts(&c1, 1));
	CHECK_EQ(c1.status, 0);
	/* The same name under no parent is another resource. */
	CHECK_OK(dlm_ls_lock(ls, LKM_EXMODE, &c2.lksb, LKF_NOQUEUE, "file", 4, 0, rec_ast, &c2, NULL, NULL));
	CHECK(wait_asts(&c2, 1));
	CHECK_EQ(c2.status, 0);
	/* A parent with sub-locks: a plain unlock is refused, FORCEUNLOCK takes the children along. */
	CHECK_ERR(dlm_ls_unlock(ls, p.lksb.sb_lkid, 0, &p.lksb, &p), EBUSY);
	CHECK_OK(dlm_ls_unlock_wait(ls, p.lksb.sb_lkid, LKF_FORCEUNLOCK, &p.lksb));
	CHECK_EQ(p.lksb.sb_status, EUNLOCK);
	CHECK(wait_asts(&c1, 2));
	CHECK_EQ(c1.status, EUNLOCK);
	CHECK_ERR(dlm_ls_unlock(ls, c1.lksb.sb_lkid, 0, &c1.lksb, &c1), ENOENT);
	CHECK_ERR(dlm_ls_lock(ls, LKM_EXMODE, &c1.lksb, 0, "x", 1, 424242, rec_ast, &c1, NULL, NULL), ENOENT);
	CHECK_OK(h_release(name, ls, 1));
}

static void test_purge_own(void)
{
	const char *name = fresh("purgeown");
	dlm_lshandle_t a = h_open(name), b = h_open(name);
	struct rec r1, r2, rb;
	CHECK(a && b);
	rec_init(&r1, a);
	rec_init(&r2, a);
	rec_init(&rb, b);
	CHECK_OK(dlm_ls_lock_wait(a, LKM_EXMODE, &r1.lksb, 0, "p1", 2, 0, NULL, NULL, NULL));
	CHECK_OK(dlm_ls_lock(a, LKM_EXMODE, &r2.lksb, 0, "p2", 2, 0, rec_ast, &r2, NULL, NULL));
	/* Purging our own pid drops every lock of ours, without ASTs. */
	CHECK_OK(dlm_ls_purge(a, 0, getpid()));
	CHECK_OK(dlm_ls_lock_wait(b, LKM_EXMODE, &rb.lksb, LKF_NOQUEUE, "p1", 2, 0, NULL, NULL, NULL));
	CHECK_EQ(rb.lksb.sb_status, 0);
	CHECK_OK(dlm_ls_lock_wait(b, LKM_EXMODE, &rb.lksb, LKF_NOQUEUE, "p2", 2, 0, NULL, NULL, NULL));
	CHECK_EQ(rb.lksb.sb_status, 0);
	CHECK_ERR(dlm_ls_unlock(a, r1.lksb.sb_lkid, 0, &r1.lksb, &r1), ENOENT);
	/* Another node's orphans: none here. */
	CHECK_OK(dlm_ls_purge(a, 12345, 1));
	CHECK_OK(h_release(name, b, 1));
	h_close(a);
}

static void test_fd_readable(void)
{
#ifdef TEST_LT
	/* libdlm_lt: the fd is readable exactly when dlm_dispatch has something to do. */
	const char *name = fresh("fd");
	dlm_lshandle_t ls = dlm_create_lockspace(name, 0600);
	struct rec r;
	struct pollfd p;
	CHECK(ls != NULL);
	rec_init(&r, ls);
	p.fd = dlm_ls_get_fd(ls);
	p.events = POLLIN;
	CHECK_EQ(poll(&p, 1, 0), 0);
	CHECK_OK(dlm_ls_lock(ls, LKM_EXMODE, &r.lksb, 0, "r", 1, 0, rec_ast, &r, NULL, NULL));
	CHECK_EQ(poll(&p, 1, 10000), 1);
	CHECK_EQ(r.asts, 0);
	CHECK_OK(dlm_dispatch(p.fd));
	CHECK_EQ(r.asts, 1);
	CHECK_EQ(poll(&p, 1, 0), 0);
	CHECK_OK(dlm_release_lockspace(name, ls, 1));
#endif
}

/* An AST may close its own lockspace: no more ASTs come, and nothing breaks. */
static dlm_lshandle_t closing_ls;
static int closed_in_ast;

static void close_ast(void *arg)
{
	struct rec *r = arg;
	rec_ast(r);
	dlm_close_lockspace(closing_ls);
	pthread_mutex_lock(&h_mu);
	closed_in_ast = 1;
	pthread_cond_broadcast(&h_cond);
	pthread_mutex_unlock(&h_mu);
}

static H_UNUSED int pred_closed(void *arg)
{
	(void)arg;
	return closed_in_ast;
}

static void test_close_in_ast(void)
{
	const char *name = fresh("closeast");
	struct rec r1, r2;
	dlm_lshandle_t other = h_open(name);
	int fd;
	closing_ls = h_open(name);
	CHECK(closing_ls && other);
	/* h_wait must not touch the handle once the AST has closed it. */
	h_untrack(closing_ls);
	fd = dlm_ls_get_fd(closing_ls);
	rec_init(&r1, closing_ls);
	rec_init(&r2, closing_ls);
	closed_in_ast = 0;
	CHECK_OK(dlm_ls_lock(closing_ls, LKM_EXMODE, &r2.lksb, 0, "c2", 2, 0, rec_ast, &r2, NULL, NULL));
	/* The last use of the handle here: its AST may run (and close it) before this call returns. */
	CHECK_OK(dlm_ls_lock(closing_ls, LKM_EXMODE, &r1.lksb, 0, "c1", 2, 0, close_ast, &r1, NULL, NULL));
#ifdef TEST_LT
	for (int i = 0; i < 100 && !closed_in_ast; i++) {
		struct pollfd p = {fd, POLLIN, 0};
		if (poll(&p, 1, 10000) <= 0)
			break;
		dlm_dispatch(fd);
	}
#else
	(void)fd;
	CHECK(h_wait(pred_closed, NULL));
#endif
	CHECK_EQ(closed_in_ast, 1);
	/* The closed handle's locks are gone: the other owner gets both at once. */
	{
		struct dlm_lksb lksb;
		memset(&lksb, 0, sizeof(lksb));
		CHECK_OK(dlm_ls_lock_wait(other, LKM_EXMODE, &lksb, 0, "c1", 2, 0, NULL, NULL, NULL));
		CHECK_EQ(lksb.sb_status, 0);
		CHECK_OK(dlm_ls_lock_wait(other, LKM_EXMODE, &lksb, 0, "c2", 2, 0, NULL, NULL, NULL));
		CHECK_EQ(lksb.sb_status, 0);
	}
	CHECK_EQ(r2.asts + r1.asts <= 2, 1);
	CHECK_OK(h_release(name, other, 1));
}

int main(void)
{
	snprintf(h_prefix, sizeof(h_prefix), "lib: ");
	RUN(test_lockspaces);
	RUN(test_versions);
	RUN(test_sync_lock_unlock);
	RUN(test_async_ast);
	RUN(test_bast);
	RUN(test_noqueue);
	RUN(test_lvb);
	RUN(test_conversions);
	RUN(test_cancel_forceunlock);
	RUN(test_timeout);
	RUN(test_einval);
	RUN(test_default_lockspace);
	RUN(test_deadlock_cancel);
	RUN(test_parent_locks);
	RUN(test_purge_own);
	RUN(test_fd_readable);
	RUN(test_close_in_ast);
	return h_done();
}
