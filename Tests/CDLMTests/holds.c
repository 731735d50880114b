/*
 * A libdlm client for the kill-and-restart rounds (Tests/IntegrationTests/KillRoundsTests.swift): on the dlmd
 * of $DLM_SOCKET, in lockspace "rounds", it locks one of four shared names in EX or PR with dlm_ls_lock_wait,
 * holds it up to 3 ms, unlocks it, and again, until its dlmd dies or it reads a line on standard input.
 * Each hold is one line on standard output, as the holder saw it:
 *
 *   hold NAME MODE START_NS END_NS
 *
 * from the grant to the moment it asked for the unlock, in CLOCK_MONOTONIC nanoseconds. Usage: holds SEED.
 */
#include <errno.h>
#include <sys/types.h>

#include <libdlm.h>

#include <poll.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

static uint64_t now_ns(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

/* splitmix64, as the Swift side's generator. */
static uint64_t next(uint64_t *state)
{
	uint64_t z = (*state += 0x9E3779B97F4A7C15u);
	z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9u;
	z = (z ^ (z >> 27)) * 0x94D049BB133111EBu;
	return z ^ (z >> 31);
}

static int stop_requested(void)
{
	struct pollfd pfd = { .fd = 0, .events = POLLIN };
	return poll(&pfd, 1, 0) > 0;
}

int main(int argc, char **argv)
{
	static const char *names[] = { "alpha", "beta", "gamma", "delta" };
	uint64_t state = argc > 1 ? strtoull(argv[1], NULL, 10) : 1;
	dlm_lshandle_t ls = dlm_create_lockspace("rounds", 0600);
	if (ls == NULL) {
		fprintf(stderr, "holds: cannot open lockspace rounds: %s\n", strerror(errno));
		return 2;
	}
	setvbuf(stdout, NULL, _IOLBF, 0);
	printf("ready\n");
	while (!stop_requested()) {
		const char *name = names[next(&state) % 4];
		int mode = next(&state) % 100 < 60 ? LKM_EXMODE : LKM_PRMODE;
		struct dlm_lksb lksb;
		memset(&lksb, 0, sizeof(lksb));
		if (dlm_ls_lock_wait(ls, (uint32_t)mode, &lksb, 0, name, (unsigned int)strlen(name), 0, NULL, NULL,
				     NULL) != 0 ||
		    lksb.sb_status != 0)
			return 0; /* its dlmd died (or refused): the rounds start another client */
		uint64_t start = now_ns();
		usleep((useconds_t)(next(&state) % 4) * 1000);
		uint64_t end = now_ns();
		int unlocked = dlm_ls_unlock_wait(ls, lksb.sb_lkid, 0, &lksb) == 0;
		printf("hold %s %s %llu %llu\n", name, mode == LKM_EXMODE ? "EX" : "PR", (unsigned long long)start,
		       (unsigned long long)end);
		if (!unlocked)
			return 0;
	}
	return 0;
}
