#define _GNU_SOURCE
#include "dlm_system.h"

#include <errno.h>
#include <fcntl.h>
#include <malloc.h>
#include <signal.h>
#include <string.h>
#include <sys/prctl.h>
#include <unistd.h>

int dlm_disable_malloc_fastbins(void)
{
	return mallopt(M_MXFAST, 0);
}

int dlm_wake_pipe(int fds[2])
{
	if (pipe2(fds, O_CLOEXEC) != 0)
		return -1;
	if (fcntl(fds[1], F_SETFL, fcntl(fds[1], F_GETFL) | O_NONBLOCK) != 0) {
		int saved = errno;
		close(fds[0]);
		close(fds[1]);
		errno = saved;
		return -1;
	}
	return 0;
}

int dlm_spawn_dying_with_parent(const char *file, char *const argv[], char *const envp[], int *child_errno)
{
	int report[2];
	pid_t parent = getpid();
	pid_t pid;
	sigset_t none;
	ssize_t n;
	int err = 0;

	*child_errno = 0;
	if (pipe2(report, O_CLOEXEC) != 0)
		return -1;
	pid = fork();
	if (pid < 0) {
		err = errno;
		close(report[0]);
		close(report[1]);
		errno = err;
		return -1;
	}
	if (pid == 0) {
		/* The child: only async-signal-safe calls until exec. */
		struct sigaction action;
		memset(&action, 0, sizeof(action));
		action.sa_handler = SIG_DFL;
		sigaction(SIGPIPE, &action, NULL);
		sigemptyset(&none);
		sigprocmask(SIG_SETMASK, &none, NULL);
		if (prctl(PR_SET_PDEATHSIG, SIGKILL) != 0 || getppid() != parent) {
			err = ECHILD;
			(void)!write(report[1], &err, sizeof(err));
			_exit(127);
		}
		execvpe(file, argv, envp);
		err = errno;
		(void)!write(report[1], &err, sizeof(err));
		_exit(127);
	}
	close(report[1]);
	do
		n = read(report[0], &err, sizeof(err));
	while (n < 0 && errno == EINTR);
	close(report[0]);
	if (n == (ssize_t)sizeof(err))
		*child_errno = err;
	return pid;
}
