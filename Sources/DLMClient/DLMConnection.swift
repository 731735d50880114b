import DLMCore
import DLMTLS
import DLMWire
import Foundation
import NIOCore
import NIOPosix

/// A blocking callback: another request waits for `mode`, which the holder of `lock` blocks.
/// A lock of the connection that dlmd took away without a request of the connection: a forced release of its
/// lockspace (EUNLOCK; ECANCEL for a request that still waited) or a purge of the orphan it was a sub-lock of
/// (EUNLOCK). The lock is gone.
public struct RemovedLock: Sendable, Hashable {
    public var lock: LockID
    public var status: DLMStatus

    public init(lock: LockID, status: DLMStatus) {
        self.lock = lock
        self.status = status
    }
}

public struct BlockingEvent: Sendable, Hashable {
    public var lock: LockID
    public var mode: LockMode

    public init(lock: LockID, mode: LockMode) {
        self.lock = lock
        self.mode = mode
    }
}

/// A connection to `dlmd`: one owner of locks. When it closes, or this process dies, its locks are
/// released and its persistent locks become orphans. Requests may be issued from many tasks at once; they
/// are pipelined on the one connection.
public final class DLMConnection: Sendable {
    let channel: Channel
    let handler: ClientHandler
    /// The node's id and the protocol version agreed.
    public let nodeID: UInt32
    public let protocolVersion: UInt16
    /// Every blocking callback of this connection's locks, in order.
    public let blockingCallbacks: AsyncStream<BlockingEvent>
    let blockingContinuation: AsyncStream<BlockingEvent>.Continuation
    /// Every lock of this connection that dlmd took away (`RemovedLock`), in order; it ends when the connection
    /// closes.
    public let removedLocks: AsyncStream<RemovedLock>
    let loopExecutor: EventLoopTaskExecutor

    /// The socket `dlmd` listens on by default: `$DLM_SOCKET`, else /run/dlm/dlmd.sock.
    public static var defaultSocketPath: String {
        ProcessInfo.processInfo.environment["DLM_SOCKET"] ?? "/run/dlm/dlmd.sock"
    }

    /// Connects over a Unix socket (default: `defaultSocketPath`). The connection's I/O, and the completion
    /// handlers of the callback API, run on one event loop of `eventLoopGroup` (default: NIO's shared
    /// group, one thread per CPU). A program with many connections on few CPUs may give them a group of
    /// one thread, so that they share it instead of waking one another.
    ///
    /// With a `busyPoll` window, the event loop keeps polling for that long after each read instead of
    /// sleeping at once (`BusyPoll`): lower latency where waking a sleeping CPU is slow, as in most VMs, for
    /// up to that much of the loop's CPU after each burst of replies. Off (zero) by default.
    public static func connect(
        socketPath: String? = nil, clientName: String = ProcessInfo.processInfo.processName,
        eventLoopGroup: (any EventLoopGroup)? = nil, busyPoll: TimeAmount = .zero
    ) async throws -> DLMConnection {
        try await connect(clientName: clientName, eventLoopGroup: eventLoopGroup, busyPoll: busyPoll) { bootstrap in
            try await bootstrap.connect(unixDomainSocketPath: socketPath ?? defaultSocketPath).get()
        }
    }

    /// What a TCP client needs for a dlmd that takes TLS (`--tls-cert`, `--tls-key`, `--tls-client-ca`): the
    /// authorities it trusts to name dlmd, and its own certificate and private key, which dlmd checks against its
    /// client authorities. Made once, used for any number of connections.
    public struct TLS: Sendable {
        let context: TLSContext
        /// The name dlmd's certificate must carry (a DNS name or an address); nil: the host connected to.
        public var serverName: String?

        /// `caFile`: PEM certificates of the authorities that sign dlmd's certificate (nil: the system's).
        /// `certificateFile`, `keyFile`: this client's certificate chain and its unencrypted private key (PEM); the
        /// key file must not be readable by every user. Throws `DLMError` EINVAL with OpenSSL's reason when a file
        /// cannot be read or the key is not the certificate's.
        public init(caFile: String?, certificateFile: String, keyFile: String, serverName: String? = nil) throws {
            do {
                context = try TLSContext(
                    clientCAFile: caFile, certificateFile: certificateFile,
                    privateKey: try TLSContext.readPrivateKey(keyFile))
            } catch let error as TLSError {
                throw DLMError(.invalid, "TLS: \(error)")
            }
            self.serverName = serverName
        }
    }

    /// Connects over TCP; with `tls`, in TLS, and dlmd's certificate must name `tls.serverName` or `host`. A
    /// certificate refused by either side fails with `DLMError` EACCES.
    public static func connect(
        host: String, port: Int, tls: TLS? = nil, clientName: String = ProcessInfo.processInfo.processName,
        eventLoopGroup: (any EventLoopGroup)? = nil, busyPoll: TimeAmount = .zero
    ) async throws -> DLMConnection {
        try await connect(
            clientName: clientName, eventLoopGroup: eventLoopGroup, busyPoll: busyPoll,
            tls: tls.map { ($0.context, $0.serverName ?? host) }
        ) { bootstrap in
            try await bootstrap.channelOption(.socketOption(.tcp_nodelay), value: 1).connect(host: host, port: port)
                .get()
        }
    }

    static func connect(
        clientName: String, eventLoopGroup: (any EventLoopGroup)?, busyPoll: TimeAmount,
        tls: (context: TLSContext, serverName: String)? = nil,
        _ open: (ClientBootstrap) async throws -> Channel
    ) async throws -> DLMConnection {
        let (stream, continuation) = AsyncStream<BlockingEvent>.makeStream()
        let handler = ClientHandler(busyPoll: busyPoll) { lock, mode in
            continuation.yield(BlockingEvent(lock: lock, mode: mode))
        }
        let (removed, removedContinuation) = AsyncStream<RemovedLock>.makeStream()
        handler.onRemoved = { lock, status in removedContinuation.yield(RemovedLock(lock: lock, status: status)) }
        let bootstrap = ClientBootstrap(group: eventLoopGroup ?? MultiThreadedEventLoopGroup.singleton)
            .channelOption(.maxMessagesPerRead, value: 16)
            .channelInitializer { channel in
                channel.eventLoop.makeCompletedFuture {
                    if let tls {
                        try channel.pipeline.syncOperations.addHandler(
                            TLSHandler(context: tls.context, serverName: tls.serverName))
                    }
                    try channel.pipeline.syncOperations.addHandler(handler)
                }
            }
        let channel = try await open(bootstrap)
        let hello = try await channel.eventLoop.flatSubmit {
            // dlmd may refuse the connection before HELLO (too many connections: ERROR EAGAIN, then a close).
            if let refused = handler.closedError {
                return channel.eventLoop.makeFailedFuture(refused) as EventLoopFuture<ServerMessage>
            }
            let promise = channel.eventLoop.makePromise(of: ServerMessage.self)
            handler.helloPromise = promise
            handler.write(.hello(Hello(pid: UInt32(getpid()), clientName: clientName)))
            return promise.futureResult
        }.get()
        guard case .helloReply(let reply) = hello else {
            channel.close(promise: nil)
            throw DLMError(.protocolError, "dlmd answered HELLO with \(hello)")
        }
        channel.closeFuture.whenComplete { _ in removedContinuation.finish() }
        return DLMConnection(
            channel: channel, handler: handler, nodeID: reply.nodeID, protocolVersion: reply.version,
            blockingCallbacks: stream, continuation: continuation, removedLocks: removed)
    }

    init(
        channel: Channel, handler: ClientHandler, nodeID: UInt32, protocolVersion: UInt16,
        blockingCallbacks: AsyncStream<BlockingEvent>, continuation: AsyncStream<BlockingEvent>.Continuation,
        removedLocks: AsyncStream<RemovedLock>
    ) {
        self.channel = channel
        self.handler = handler
        self.nodeID = nodeID
        self.protocolVersion = protocolVersion
        self.blockingCallbacks = blockingCallbacks
        self.blockingContinuation = continuation
        self.removedLocks = removedLocks
        self.loopExecutor = EventLoopTaskExecutor(channel.eventLoop)
        channel.closeFuture.whenComplete { _ in continuation.finish() }
    }

    /// Closes the connection: this owner's locks are released, persistent ones orphaned.
    public func close() async {
        try? await channel.close()
    }

    // MARK: Requests

    /// Runs `body` on the connection's event loop: at once when called there, else as a task of the loop.
    @inline(__always)
    func onEventLoop(_ body: @escaping @Sendable () -> Void) {
        let loop = channel.eventLoop
        if loop.inEventLoop { body() } else { loop.execute(body) }
    }

    /// Sends a request whose answer is one reply frame.
    func request(_ message: ClientMessage) async throws -> ServerMessage {
        let handler = self.handler
        return try await withCheckedThrowingContinuation { continuation in
            onEventLoop { handler.startRequest(message) { continuation.resume(with: $0) } }
        }
    }

    /// Sends a lock operation and waits for its completion. If the task is cancelled while the operation
    /// waits, the operation is cancelled (CANCEL), and ends with ECANCEL unless it was granted first.
    func operation(blocking: ClientHandler.BlockingHandler?, _ message: ClientMessage) async throws
        -> CompletionMessage
    {
        let handler = self.handler
        let tagBox = TagBox()
        return try await withTaskCancellationHandler {
            try await withCheckedThrowingContinuation { continuation in
                onEventLoop {
                    tagBox.tag = handler.startOperation(message, blocking: blocking) { continuation.resume(with: $0) }
                }
            }
        } onCancel: {
            channel.eventLoop.execute {
                guard let tag = tagBox.tag, tag != 0 else { return }
                if let entry = handler.queued.first(where: { $0.value.tag == tag }) {
                    handler.sendCancel(lock: entry.key)
                } else if handler.pending[tag] != nil {
                    handler.cancelWhenQueued.insert(tag)
                }
            }
        }
    }

    /// Round trip to the daemon.
    public func ping() async throws {
        _ = try await request(.ping(tag: 0))
    }

    /// Opens a lockspace, creating it (with `valueBlockLength`, default 32) unless `create` is false. A lockspace
    /// this call creates gets `mode` (permission bits, default 0600: this user only) and this process's uid and
    /// gid; opening one needs read and write permission on it (EACCES otherwise).
    public func openLockspace(
        _ name: String, create: Bool = true, valueBlockLength: Int? = nil, mode: UInt16 = LockspaceAccess.defaultMode
    ) async throws -> DLMLockspace {
        try await openLockspace(Array(name.utf8), create: create, valueBlockLength: valueBlockLength, mode: mode)
    }

    public func openLockspace(
        _ name: [UInt8], create: Bool = true, valueBlockLength: Int? = nil, mode: UInt16 = LockspaceAccess.defaultMode
    ) async throws -> DLMLockspace {
        guard mode & ~0o777 == 0 else {
            throw DLMError(
                .invalid, "a lockspace mode has permission bits only (0 to 0777), not 0\(String(mode, radix: 8))")
        }
        guard !name.isEmpty, name.count <= WireLimits.maxName else {
            throw DLMError(.invalid, "a lockspace name has 1 to 64 bytes")
        }
        if let length = valueBlockLength, !(1...WireLimits.maxValueBlock).contains(length) {
            throw DLMError(.invalid, "a value block length is a multiple of 8 from 8 to 64, not \(length)")
        }
        let length = UInt8(valueBlockLength ?? 0)
        let reply = try await request(
            .openLockspace(tag: 0, name: name, valueBlockLength: length, create: create, mode: mode))
        guard case .lockspace(_, let id, let lvbLength, let created) = reply else {
            throw DLMError(.protocolError, "unexpected reply \(reply)")
        }
        return DLMLockspace(
            connection: self, id: id, name: name, valueBlockLength: Int(lvbLength), wasCreated: created)
    }

    /// Releases a lockspace: EBUSY while it holds locks, unless `force`.
    public func releaseLockspace(_ lockspace: DLMLockspace, force: Bool = false) async throws {
        _ = try await request(.releaseLockspace(tag: 0, lockspace: lockspace.id, force: force))
    }

    /// Tells the node that node `nodeID` is off, so the fence its group services wait for (a fence command that
    /// keeps failing) counts as done (dlm_tool's `fence_ack`; root only). Acknowledging a node that is not off can
    /// let two nodes hold the same lock: check first.
    public func acknowledgeFence(of nodeID: UInt32) async throws {
        let reply = try await request(.fenceAck(tag: 0, nodeID: nodeID))
        guard case .ok = reply else { throw DLMError(.protocolError, "unexpected reply \(reply)") }
    }

    /// Refuses a waiting request with EDEADLK (libdlm's `dlm_ls_deadlock_cancel`).
    public func deadlockCancel(_ lock: LockID) async throws {
        _ = try await request(.deadlockCancel(tag: 0, lock: lock.rawValue))
    }

    /// The JSON of a QUERY (Protocol/CLIENT.md §8).
    public func query(_ kind: QueryKind, argument: [UInt8] = []) async throws -> [UInt8] {
        let reply = try await request(.query(tag: 0, kind: kind, argument: argument))
        guard case .queryReply(_, let json) = reply else { throw DLMError(.protocolError, "unexpected reply \(reply)") }
        return json
    }
}

final class TagBox: @unchecked Sendable {
    var tag: UInt32?
}
