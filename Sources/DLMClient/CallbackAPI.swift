import DLMCore
import DLMWire
import NIOCore

// The callback API: libdlm's asynchronous calls (`dlm_ls_lock`, `dlm_ls_unlock` with a completion AST) for
// programs that keep many requests in flight or want no task per request. A `submit...` call sends the
// request and returns; its completion handler runs later on the connection's event loop
// (`DLMConnection.eventLoop`), never before the call returns.
//
// Called on that event loop (typically from another completion handler), a request is encoded straight
// into the connection's outbound buffer, and everything written while handling one read batch leaves in
// one write: no hop between threads, no task, no flush per request. Called from any other thread, the
// request hops to the event loop once.

extension DLMConnection {
    /// The event loop that carries this connection: its I/O and every completion handler of the callback API.
    public var eventLoop: any EventLoop { channel.eventLoop }

    /// A `TaskExecutor` that runs jobs on the connection's event loop. A task that prefers it
    /// (`withTaskExecutorPreference(connection.taskExecutor) { ... }`) sends its requests from the loop and
    /// resumes there when they complete, so the async API costs no hop between threads either.
    public var taskExecutor: any TaskExecutor { loopExecutor }
}

/// Runs tasks' jobs on a NIO event loop.
final class EventLoopTaskExecutor: TaskExecutor {
    let loop: any EventLoop

    init(_ loop: any EventLoop) {
        self.loop = loop
    }

    func enqueue(_ job: consuming ExecutorJob) {
        let job = UnownedJob(job)
        loop.execute { job.runSynchronously(on: self.asUnownedTaskExecutor()) }
    }
}

extension DLMLockspace {
    /// Requests a lock and returns at once. `completion` runs on the connection's event loop with the
    /// request's result, whatever its status (granted, EAGAIN, EDEADLK, ETIMEDOUT, ECANCEL), or with the
    /// `DLMError` that refused it (EINVAL, ENOENT, ...) or that closed the connection. The arguments are those
    /// of `request(_:mode:...)`.
    public func submitLock(
        _ name: [UInt8], mode: LockMode, flags: LockFlags = [], parent: LockID? = nil, timeout: Duration? = nil,
        transaction: UInt64? = nil, priority: UInt8 = 0, alwaysFencingToken: Bool = false,
        onBlocking: (@Sendable (LockMode) -> Void)? = nil,
        completion: @escaping @Sendable (Result<LockResult, DLMError>) -> Void
    ) {
        let (message, blocking) = lockMessage(
            name, mode: mode, flags: flags, parent: parent, timeout: timeout, transaction: transaction,
            priority: priority, alwaysFencingToken: alwaysFencingToken, onBlocking: onBlocking)
        submit(message, blocking: blocking) { result in completion(result.map { LockResult($0, lockspace: self) }) }
    }

    /// Converts a granted lock of this connection to `mode` and returns at once. `completion` runs on the
    /// connection's event loop with the conversion's result, whatever its status (the lock keeps its old mode
    /// when the conversion fails), or with the `DLMError` that refused it.
    public func submitConversion(
        _ lock: LockID, to mode: LockMode, flags: LockFlags = [], valueBlock: [UInt8]? = nil,
        timeout: Duration? = nil, priority: UInt8? = nil,
        completion: @escaping @Sendable (Result<LockResult, DLMError>) -> Void
    ) {
        let message = convertMessage(
            lock, to: mode, flags: flags, valueBlock: valueBlock, timeout: timeout, priority: priority)
        submit(message, blocking: nil) { result in completion(result.map { LockResult($0, lockspace: self) }) }
    }

    /// Unlocks (with `.cancel` cancels, with `.forceUnlock` force-unlocks) a lock of this connection and
    /// returns at once. `completion` runs on the connection's event loop with the status (EUNLOCK, or ECANCEL
    /// for a cancel), or with the `DLMError` that refused it.
    public func submitUnlock(
        _ lock: LockID, valueBlock: [UInt8]? = nil, flags: LockFlags = [],
        completion: @escaping @Sendable (Result<DLMStatus, DLMError>) -> Void
    ) {
        submit(unlockMessage(lock, valueBlock: valueBlock, flags: flags), blocking: nil) { result in
            completion(result.map(\.status))
        }
    }

    func submit(
        _ message: ClientMessage, blocking: ClientHandler.BlockingHandler?,
        _ completion: @escaping @Sendable (Result<CompletionMessage, DLMError>) -> Void
    ) {
        let handler = connection.handler
        let loop = connection.channel.eventLoop
        if loop.inEventLoop {
            handler.startOperation(message, blocking: blocking, handler: completion)
        } else {
            loop.execute { handler.startOperation(message, blocking: blocking, handler: completion) }
        }
    }
}
