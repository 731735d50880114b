/*
 * One side of a deadlock between processes on different nodes (Tests/IntegrationTests/ClusterDeadlockTests.swift):
 * on the dlmd of $DLM_SOCKET, in lockspace LOCKSPACE, it takes FIRST in EX with dlm_ls_lock_wait and prints "held";
 * once it reads a line on standard input it asks for SECOND in EX and prints "granted" or "deadlock" (EDEADLK:
 * it then lets FIRST go, so that the other side gets through) or "status N"; after one more line it unlocks what
 * it holds and exits. Usage: deadlocker LOCKSPACE FIRST SECOND.
 */
#include <errno.h>
#include <sys/types.h>

#include <libdlm.h>

#include <stdio.h>
#include <string.h>

static int wait_line(void)
{
	char line[64];
	return fgets(line, sizeof(line), stdin) != NULL;
}

int main(int argc, char **argv)
{
	dlm_lshandle_t ls;
	struct dlm_lksb held, wanted;
	int rc, status;

	if (argc != 4) {
		fprintf(stderr, "usage: deadlocker LOCKSPACE FIRST SECOND\n");
		return 2;
	}
	setvbuf(stdout, NULL, _IOLBF, 0);
	ls = dlm_create_lockspace(argv[1], 0600);
	if (!ls) {
		printf("error create %d\n", errno);
		return 1;
	}
	memset(&held, 0, sizeof(held));
	memset(&wanted, 0, sizeof(wanted));
	rc = dlm_ls_lock_wait(ls, LKM_EXMODE, &held, 0, argv[2], strlen(argv[2]), 0, NULL, NULL, NULL);
	if (rc || held.sb_status) {
		printf("error first %d\n", rc ? errno : held.sb_status);
		return 1;
	}
	printf("held\n");
	if (!wait_line())
		return 1;
	rc = dlm_ls_lock_wait(ls, LKM_EXMODE, &wanted, 0, argv[3], strlen(argv[3]), 0, NULL, NULL, NULL);
	status = rc ? errno : wanted.sb_status;
	if (status == EDEADLK) {
		dlm_ls_unlock_wait(ls, held.sb_lkid, 0, &held);
		printf("deadlock\n");
	} else if (status == 0) {
		printf("granted\n");
	} else {
		printf("status %d\n", status);
	}
	wait_line();
	if (status == 0) {
		dlm_ls_unlock_wait(ls, wanted.sb_lkid, 0, &wanted);
		dlm_ls_unlock_wait(ls, held.sb_lkid, 0, &held);
	}
	dlm_close_lockspace(ls);
	return 0;
}
