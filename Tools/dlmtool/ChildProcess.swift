import CDLMSystem
import Foundation
import Synchronization

/// The command `dlmtool lock` runs: inheriting standard input, output and error, sent the SIGTERM, SIGINT and
/// SIGHUP that dlmtool receives, and killed if dlmtool dies.
final class ChildProcess {
    let pid: pid_t
    /// The thread that started the child reports its exit here.
    private var events: AsyncStream<Int32>.AsyncIterator

    private init(pid: pid_t, events: AsyncStream<Int32>.AsyncIterator) {
        self.pid = pid
        self.events = events
    }

    /// Signals passed on to the child.
    static let forwardedSignals = [SIGTERM, SIGINT, SIGHUP]

    /// Why a command could not be started, with the exit status a shell would give (127: not found,
    /// 126: found but not runnable).
    struct SpawnError: Error {
        var errno: Int32
        var exitCode: Int32 { errno == ENOENT ? 127 : 126 }
    }

    /// The file descriptors open in this process now.
    static func openDescriptors() -> Set<Int32> {
        let names = (try? FileManager.default.contentsOfDirectory(atPath: "/proc/self/fd")) ?? []
        return Set(names.compactMap { Int32($0) })
    }

    /// The descriptors dlmtool was started with, to pass on to the child: those open now but the runtime's
    /// own (Dispatch opens an epoll and an eventfd before `main` runs: `anon_inode` links), and but the one
    /// that listed the directory (closed since).
    static func inheritedDescriptors() -> Set<Int32> {
        openDescriptors().filter { descriptor in
            guard
                let link = try? FileManager.default.destinationOfSymbolicLink(atPath: "/proc/self/fd/\(descriptor)")
            else { return false }
            return !link.hasPrefix("anon_inode:")
        }
    }

    /// Starts `arguments` (the program is looked up in $PATH) with `environment`. The child inherits the
    /// descriptors in `inherited` (those dlmtool was started with) and none that dlmtool opened since (the
    /// connection to dlmd, NIO's epoll and event descriptors). Installs the signal forwarding first, so that
    /// a signal that arrives while the child starts is passed on too. The child dies with dlmtool
    /// (PR_SET_PDEATHSIG, SIGKILL): a command must not run on once the process that holds its lock is gone. That
    /// signal comes when the *thread* that started the child ends, so one thread of its own starts it and waits
    /// for it.
    static func spawn(
        _ arguments: [String], environment: [String: String], inherited: Set<Int32>
    ) async throws(SpawnError) -> ChildProcess {
        for descriptor in openDescriptors().subtracting(inherited) where descriptor > 2 {
            _ = fcntl(descriptor, F_SETFD, FD_CLOEXEC)
        }
        installForwarding()
        // First the child's pid (or minus the errno of a failed start), then its exit status.
        let (events, continuation) = AsyncStream<Int32>.makeStream()
        let thread = Thread {
            let argv = arguments.map { strdup($0) } + [nil]
            let envp = environment.map { strdup("\($0.key)=\($0.value)") } + [nil]
            var childErrno: Int32 = 0
            let pid = dlm_spawn_dying_with_parent(arguments[0], argv, envp, &childErrno)
            let spawnErrno = errno
            for pointer in argv { free(pointer) }
            for pointer in envp { free(pointer) }
            guard pid > 0, childErrno == 0 else {
                if pid > 0 {
                    var status: Int32 = 0
                    while waitpid(pid, &status, 0) < 0 && errno == EINTR {}
                }
                continuation.yield(-(pid > 0 ? childErrno : spawnErrno))
                continuation.finish()
                return
            }
            forwardTarget.store(pid, ordering: .sequentiallyConsistent)
            let pending = pendingSignal.exchange(0, ordering: .sequentiallyConsistent)
            if pending != 0 { kill(pid, pending) }
            continuation.yield(pid)
            // Wait without reaping, stop forwarding, then reap: a signal is never sent to a recycled pid.
            var info = siginfo_t()
            while waitid(P_PID, id_t(pid), &info, WEXITED | WNOWAIT) != 0 && errno == EINTR {}
            forwardTarget.store(0, ordering: .sequentiallyConsistent)
            var status: Int32 = 0
            while waitpid(pid, &status, 0) < 0 && errno == EINTR {}
            let signal = status & 0x7f
            continuation.yield(signal == 0 ? (status >> 8) & 0xff : 128 + signal)
            continuation.finish()
        }
        thread.start()
        var iterator = events.makeAsyncIterator()
        let first = await iterator.next() ?? -ECHILD
        guard first > 0 else { throw SpawnError(errno: -first) }
        return ChildProcess(pid: first, events: iterator)
    }

    /// Waits for the child to exit and returns its exit status as a shell reports it: the status it exited with,
    /// or 128 + the signal that killed it.
    func wait() async -> Int32 {
        await events.next() ?? 128 + SIGKILL
    }

    /// Sends `signal` to the child, if it runs.
    static func signal(_ signal: Int32) {
        let pid = forwardTarget.load(ordering: .sequentiallyConsistent)
        if pid > 0 { kill(pid, signal) }
    }

    /// Installs the forwarding handler for every signal of `forwardedSignals` that is not ignored (a
    /// signal ignored by whoever started dlmtool, as nohup does with SIGHUP, stays ignored by the child).
    static func installForwarding() {
        for signal in forwardedSignals {
            var current = sigaction()
            sigaction(signal, nil, &current)
            if let handler = current.__sigaction_handler.sa_handler,
                unsafeBitCast(handler, to: Int.self) == unsafeBitCast(SIG_IGN, to: Int.self)
            {
                continue
            }
            var action = sigaction()
            action.__sigaction_handler.sa_sigaction = forwardSignal
            action.sa_flags = SA_SIGINFO | SA_RESTART
            sigemptyset(&action.sa_mask)
            sigaction(signal, &action, nil)
        }
    }
}

/// The child to pass signals to: 0 before it starts and after it exits.
private let forwardTarget = Atomic<Int32>(0)
/// A signal that arrived before the child had started, to be sent to it once it has.
private let pendingSignal = Atomic<Int32>(0)

/// The signal handler. A signal the terminal sends (Ctrl-C, hangup: `si_code` SI_KERNEL) goes to the
/// whole foreground process group, so the child has it already; one sent by a process (kill(1), a service
/// manager: `si_code` SI_USER or SI_QUEUE, <= 0) is passed on.
private func forwardSignal(
    _ signal: Int32, _ info: UnsafeMutablePointer<siginfo_t>?, _ context: UnsafeMutableRawPointer?
) {
    if let info, info.pointee.si_code > 0 { return }
    let pid = forwardTarget.load(ordering: .sequentiallyConsistent)
    if pid > 0 {
        kill(pid, signal)
    } else {
        pendingSignal.store(signal, ordering: .sequentiallyConsistent)
    }
}
