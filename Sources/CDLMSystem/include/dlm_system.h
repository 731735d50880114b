#ifndef DLM_SYSTEM_H
#define DLM_SYSTEM_H

/* What the C library offers that Swift's Glibc module does not: malloc tuning (malloc.h), a child process that
 * dies with its parent (prctl, which posix_spawn cannot do), and pipe2 (a GNU extension). */

/* Turns off glibc's fastbins (mallopt M_MXFAST 0): after many small frees, the first larger allocation
 * consolidates them, which stalled dlmd's event loop for tens of milliseconds after a large exit or purge
 * (bench/RESULTS.md). Returns mallopt's result: 1 on success. */
int dlm_disable_malloc_fastbins(void);

/* Starts `file` (looked up in $PATH) with `argv` and `envp` as a child that is killed (SIGKILL) when the calling
 * thread's process dies (PR_SET_PDEATHSIG; the signal comes when the thread that forked exits, so call it from a
 * thread that lives as long as the child matters). The child starts with no blocked signals and SIGPIPE at its
 * default. Returns the child's pid, or -1 with errno when fork failed; when the child could not exec, its pid
 * (it has exited with 127: reap it) and *child_errno set to exec's errno. */
int dlm_spawn_dying_with_parent(const char *file, char *const argv[], char *const envp[], int *child_errno);

/* A pipe whose ends are closed on exec from the start (pipe2 O_CLOEXEC: a child spawned by another thread meanwhile
 * inherits neither), its write end non-blocking. Returns 0, or -1 with errno. */
int dlm_wake_pipe(int fds[2]);

#endif
