import DLMCore
import DLMWire
import DequeModule
import Logging
import NIOCore

/// The shell around one lock engine: it owns the engine on one event loop, turns client frames into engine
/// inputs and the engine's effects into frames. All of its state is touched on `eventLoop` only, so no
/// request hops between threads.
public final class LockNode: @unchecked Sendable {
    public let eventLoop: EventLoop
    public let configuration: NodeConfiguration
    let logger: Logger
    var engine: LockEngine
    var connections: [OwnerID: ClientConnection] = [:]
    var nextOwner: UInt64 = 1
    /// Connections with frames waiting to be flushed.
    var dirty: [ClientConnection] = []
    /// Reused for every input, so that the hot path does not allocate an array.
    var effects: [Effect] = []
    let startedAt: NIODeadline
    var ticker: RepeatedTask?
    var isShuttingDown = false
    /// The store and the commits in flight; nil for a node without a store.
    var persistence: NodePersistence?
    /// While handling an input whose changes must be committed first: the generation its frames wait for.
    var holdingGeneration: UInt64?
    /// Non-empty while the node is stopped (a cluster member outside a primary view): what it waits for.
    var stopReasons: [String] = []
    /// What arrived while stopped, in order (LockNode+Gate.swift).
    var heldInputs: Deque<HeldInput> = []
    /// Group services, for a cluster member; nil when standalone.
    var cluster: ClusterMembership?
    /// Closing connections whose last frames wait for a store commit.
    var lingering: [OwnerID: ClientConnection] = [:]
    /// Keeps the loop polling after client I/O, if configured (`--busy-poll`).
    let busyPoll: BusyPoll?
    /// What to answer when a bulk operation ends (`Effect.finished`), by the context it was started with.
    var bulkReplies: [UInt64: BulkReply] = [:]
    /// FORCEUNLOCKs done in slices: the owner and the tag that the lock's completion answers.
    var forceUnlockReplies: [LockID: (owner: OwnerID, tag: UInt32)] = [:]
    var nextBulkContext: UInt64 = 1
    /// A slice of bulk work is scheduled (`scheduleBulkWork`).
    var bulkScheduled = false

    public init(configuration: NodeConfiguration, eventLoop: EventLoop, logger: Logger) {
        self.configuration = configuration
        self.eventLoop = eventLoop
        self.logger = logger
        self.engine = LockEngine(config: configuration.engine)
        self.startedAt = .now()
        self.busyPoll =
            configuration.busyPoll > .zero ? BusyPoll(eventLoop: eventLoop, window: configuration.busyPoll) : nil
        effects.reserveCapacity(64)
    }

    /// Starts the engine's timers.
    public func start() {
        eventLoop.preconditionInEventLoop()
        let interval = TimeAmount.nanoseconds(Int64(configuration.tickInterval))
        ticker = eventLoop.scheduleRepeatedTask(initialDelay: interval, delay: interval) { [self] _ in
            advanceClock()
            flush()
        }
    }

    /// Passes the time to the engine, which runs due timeouts and deadlock searches.
    func advanceClock() {
        guard !isStopped else { return }
        effects.removeAll(keepingCapacity: true)
        engine.tick(now: NIODeadline.now().uptimeNanoseconds, into: &effects)
        if !effects.isEmpty || engine.hasJournal { dispatch(reply: nil) }
        holdingGeneration = nil
    }

    // MARK: Connections

    func connected(_ channel: Channel) -> ClientConnection {
        let owner = OwnerID(nextOwner)
        nextOwner += 1
        let connection = ClientConnection(owner: owner, channel: channel)
        connections[owner] = connection
        if isShuttingDown {
            refuse(connection, status: .shuttingDown, message: "dlmd is shutting down")
        }
        return connection
    }

    /// The connection closed: its owner's locks are released or orphaned.
    func disconnected(_ connection: ClientConnection) {
        guard connections.removeValue(forKey: connection.owner) != nil else { return }
        if connection.awaitingReply {
            forceUnlockReplies = forceUnlockReplies.filter { $0.value.owner != connection.owner }
        }
        connection.state = .closing
        if isStopped {
            heldInputs.append(.exited(connection))
            return
        }
        effects.removeAll(keepingCapacity: true)
        engine.ownerExited(connection.owner, into: &effects)
        dispatch(reply: nil)
        holdingGeneration = nil
        flush()
    }

    /// Answers a malformed or out-of-order frame: ERROR with tag 0, then this connection closes.
    func refuse(_ connection: ClientConnection, status: DLMStatus, message: String) {
        guard connection.state != .closing else { return }
        logger.notice(
            "closing a client after a bad frame",
            metadata: ["owner": "\(connection.owner.rawValue)", "pid": "\(connection.pid)", "error": "\(message)"])
        connection.send(.error(tag: 0, status: status, message: message))
        close(connection)
    }

    /// Closes a connection once its frames are written. Frames that wait for a store commit go first: a
    /// client that half-closes (or says BYE) still gets every answer, in order (Protocol/CLIENT.md §9).
    func close(_ connection: ClientConnection) {
        connection.state = .closing
        if !connection.held.isEmpty {
            if connection.outbound.readableBytes > 0 {
                connection.held[connection.held.count - 1].frames.writeBuffer(&connection.outbound)
                connection.outbound.clear()
            }
            lingering[connection.owner] = connection
            return
        }
        let channel = connection.channel
        let frames = connection.outbound
        connection.outbound.clear()
        channel.writeAndFlush(frames).whenComplete { _ in channel.close(promise: nil) }
    }

    /// Hands this turn's store changes to the store's thread, and writes out every connection's pending frames,
    /// the connections marked last first: the requester is marked first, so the grants and callbacks its
    /// request caused for others go out before its own replies (a handoff then reaches the next holder a little
    /// sooner).
    func flush() {
        scheduleBulkWork()
        submitChanges()
        for connection in dirty.reversed() {
            connection.isDirty = false
            guard connection.outbound.readableBytes > 0, connection.state != .closing else { continue }
            write(connection)
        }
        dirty.removeAll(keepingCapacity: true)
    }

    func write(_ connection: ClientConnection) {
        connection.channel.writeAndFlush(connection.outbound, promise: nil)
        // Usually written at once, so the buffer is ours again and is reused; else this copies on write.
        connection.outbound.clear()
    }

    /// Frames for one connection are written once a read batch is handled, or as soon as this many bytes
    /// wait: a client with hundreds of requests in flight then gets the first answers while the node works
    /// on the rest, instead of the two taking turns.
    static let eagerWriteBytes = 4096

    func markDirty(_ connection: ClientConnection) {
        if !connection.isDirty {
            connection.isDirty = true
            dirty.append(connection)
        }
        if connection.outbound.readableBytes >= LockNode.eagerWriteBytes, connection.state != .closing {
            write(connection)
        }
    }

    func reply(_ connection: ClientConnection, _ message: ServerMessage) {
        deliver(connection, message)
    }

    /// Sends a frame now, or, while the input's changes or earlier frames of this connection wait for a commit,
    /// after that commit (frames to one connection never overtake each other).
    func deliver(_ connection: ClientConnection, _ message: ServerMessage) {
        if let generation = holdingGeneration ?? connection.held.last?.generation {
            connection.hold(message, generation: generation)
        } else {
            connection.send(message)
            markDirty(connection)
        }
    }

    // MARK: Requests

    func receive(_ message: ClientMessage, from connection: ClientConnection) {
        switch connection.state {
        case .closing:
            return
        case .awaitingHello:
            guard case .hello(let hello) = message else {
                refuse(connection, status: .protocolError, message: "the first frame must be HELLO")
                return
            }
            guard hello.minVersion <= ProtocolVersion.current, hello.maxVersion >= ProtocolVersion.current else {
                refuse(
                    connection, status: .protocolError,
                    message: "no common protocol version: client speaks \(hello.minVersion)-\(hello.maxVersion), "
                        + "server speaks \(ProtocolVersion.current)")
                return
            }
            connection.pid = hello.pid
            engine.setProcessID(hello.pid, of: connection.owner)
            connection.clientName = hello.clientName
            connection.state = .ready
            reply(
                connection,
                .helloReply(HelloReply(nodeID: configuration.nodeID, server: "dlmd \(dlmVersion)")))
        case .ready:
            if connection.awaitingReply {
                connection.deferredRequests.append(message)
            } else if mustHold(message, from: connection) {
                hold(message, from: connection)
            } else {
                handleRequest(message, from: connection)
            }
        }
    }

    func handleRequest(_ message: ClientMessage, from connection: ClientConnection) {
        let now = NIODeadline.now().uptimeNanoseconds
        if now > engine.now &+ configuration.tickInterval { advanceClock() }
        effects.removeAll(keepingCapacity: true)
        holdingGeneration = nil
        defer { holdingGeneration = nil }
        let owner = connection.owner
        do throws(DLMError) {
            switch message {
            case .hello:
                refuse(connection, status: .protocolError, message: "a second HELLO")
            case .ping(let tag):
                reply(connection, .pong(tag: tag))
            case .bye(let tag):
                reply(connection, .ok(tag: tag, lock: 0))
                flush()
                close(connection)
            case .openLockspace(let tag, let name, let length, let create):
                let existing = engine.lockspace(named: name)
                if existing == nil && !create { throw DLMError(.noEntry, "no lockspace \(name.displayName)") }
                // Length 0 opens an existing lockspace whatever its length, and creates one with the default.
                let id: LockspaceID
                if let existing, length == 0 {
                    id = existing
                } else {
                    id = try engine.createLockspace(name: name, valueBlockLength: length == 0 ? nil : Int(length))
                }
                let info = engine.lockspaceInfo(id)!
                if existing == nil { record(.putLockspace(name: name, valueBlockLength: info.valueBlockLength)) }
                reply(
                    connection,
                    .lockspace(
                        tag: tag, lockspace: id.rawValue, valueBlockLength: UInt8(info.valueBlockLength),
                        created: existing == nil))
            case .releaseLockspace(let tag, let lockspace, let force):
                let id = LockspaceID(rawValue: lockspace)
                let name = engine.lockspaceInfo(id)?.name ?? []
                let context = nextBulkContext
                if try engine.releaseLockspace(id, force: force, requester: owner, context: context, into: &effects) {
                    collectJournal()
                    record(.deleteLockspace(name: name))
                    reply(connection, .ok(tag: tag, lock: 0))
                } else {
                    // Its locks are dropped in slices; the reply comes with the end (`finished`).
                    nextBulkContext += 1
                    bulkReplies[context] = .released(tag: tag, lockspace: name)
                    connection.awaitingReply = true
                }
                dispatch(reply: nil)
            case .purge(let tag, let lockspace, let nodeID, let pid):
                if nodeID == 0 || nodeID == configuration.nodeID {
                    // Done in slices; the reply (PURGED) comes with the end (`finished`), after the sub-locks'
                    // completions and the grants the purge let through, and waits for the commit.
                    let context = nextBulkContext
                    try engine.beginPurge(
                        lockspace: LockspaceID(rawValue: lockspace), pid: pid, requester: owner, context: context,
                        into: &effects)
                    nextBulkContext += 1
                    bulkReplies[context] = .purged(tag: tag)
                    connection.awaitingReply = true
                    dispatch(reply: nil)
                } else if engine.lockspaceInfo(LockspaceID(rawValue: lockspace)) == nil {
                    throw DLMError(.noEntry, "no such lockspace")
                } else {
                    reply(connection, .purged(tag: tag, count: 0))
                }
            case .lock(let m):
                let request = LockRequest(
                    lockspace: LockspaceID(rawValue: m.lockspace), owner: owner, name: m.name, mode: m.mode,
                    flags: m.flags, parent: m.parent == 0 ? nil : LockID(rawValue: m.parent),
                    timeout: m.timeoutNanoseconds == 0 ? nil : m.timeoutNanoseconds,
                    transaction: m.transaction == 0 ? nil : m.transaction, priority: m.priority,
                    wantsBlockingCallbacks: m.options.contains(.blockingCallbacks),
                    alwaysFencingToken: m.options.contains(.alwaysFencingToken))
                let id = try engine.lock(request, into: &effects)
                dispatch(reply: (connection, m.tag, id))
            case .convert(let m):
                let request = ConvertRequest(
                    lock: LockID(rawValue: m.lock), owner: owner, mode: m.mode, flags: m.flags,
                    valueBlock: m.flags.contains(.valueBlock) ? m.valueBlock : nil,
                    timeout: m.timeoutNanoseconds == 0 ? nil : m.timeoutNanoseconds,
                    priority: m.priority == 255 ? nil : m.priority)
                try engine.convert(request, into: &effects)
                dispatch(reply: (connection, m.tag, LockID(rawValue: m.lock)))
            case .unlock(let m):
                let request = UnlockRequest(
                    lock: LockID(rawValue: m.lock), owner: owner, flags: m.flags,
                    valueBlock: m.flags.contains(.valueBlock) ? m.valueBlock : nil)
                try engine.unlock(request, into: &effects)
                if engine.isUnlockingInSlices(request.lock) {
                    // FORCEUNLOCK of a parent with many sub-locks: the lock's completion, tagged, comes at the end.
                    forceUnlockReplies[request.lock] = (connection.owner, m.tag)
                    connection.awaitingReply = true
                    dispatch(reply: nil)
                } else {
                    dispatch(reply: (connection, m.tag, LockID(rawValue: m.lock)))
                }
            case .deadlockCancel(let tag, let lock):
                try engine.cancelForDeadlock(LockID(rawValue: lock), into: &effects)
                reply(connection, .ok(tag: tag, lock: lock))
                dispatch(reply: nil)
            case .query(let tag, let kind, let argument):
                let json = try report(kind, argument: argument)
                reply(connection, .queryReply(tag: tag, json: json))
            }
        } catch {
            reply(connection, .error(tag: message.tag, status: error.status, message: error.message))
        }
    }

    /// Sends the effects in `effects` to their owners. The completion of the requested lock that the request
    /// itself produced carries the request's tag and is its reply; without one, the reply is OK with the lock.
    func dispatch(reply: (connection: ClientConnection, tag: UInt32, lock: LockID)?) {
        collectJournal()
        var replied = false
        if let reply {
            let answered = effects.contains {
                if case .completion(let c) = $0 { return c.lock == reply.lock && c.owner == reply.connection.owner }
                return false
            }
            if !answered {
                self.reply(reply.connection, .ok(tag: reply.tag, lock: reply.lock.rawValue))
                replied = true
            }
        }
        for effect in effects {
            // Most effects go to the requester: skip the owner lookup for those.
            let owner = effect.owner
            let found = reply.map { $0.connection.owner == owner ? $0.connection : nil } ?? nil
            guard let connection = found ?? connections[owner], connection.state == .ready else {
                if case .finished(let finished) = effect { finishBulk(finished, nil) }
                continue
            }
            switch effect {
            case .completion(let completion):
                var tag: UInt32 = 0
                if !replied, let reply, completion.lock == reply.lock, completion.owner == reply.connection.owner {
                    tag = reply.tag
                    replied = true
                }
                var endsForceUnlock = false
                if tag == 0, !forceUnlockReplies.isEmpty, completion.status == .unlocked,
                    let pending = forceUnlockReplies[completion.lock], pending.owner == completion.owner
                {
                    forceUnlockReplies[completion.lock] = nil
                    tag = pending.tag
                    endsForceUnlock = true
                }
                deliver(connection, .completion(CompletionMessage(tag: tag, completion)))
                if endsForceUnlock { replyDelivered(connection) }
            case .blockingCallback(let callback):
                deliver(connection, .blocking(lock: callback.lock.rawValue, mode: callback.mode))
            case .finished(let finished):
                finishBulk(finished, connection)
            }
        }
    }
}

// MARK: Bulk work

/// An owner's exit, a purge or a forced release with many locks is done in slices (DLMCore's BulkWork.swift);
/// between slices the loop reads sockets and serves others. A slice is scheduled a little later rather than
/// submitted at once: NIO runs every task that is due before it polls its sockets again.
extension LockNode {
    enum BulkReply {
        case purged(tag: UInt32)
        case released(tag: UInt32, lockspace: [UInt8])
    }

    static let bulkSliceDelay = TimeAmount.microseconds(20)

    func scheduleBulkWork() {
        guard engine.hasBulkWork, !bulkScheduled, !isStopped else { return }
        bulkScheduled = true
        eventLoop.scheduleTask(in: LockNode.bulkSliceDelay) { [self] in
            bulkScheduled = false
            guard !isStopped else { return }
            effects.removeAll(keepingCapacity: true)
            engine.continueBulkWork(into: &effects)
            dispatch(reply: nil)
            holdingGeneration = nil
            flush()
        }
    }

    /// A bulk operation ended: its reply (after what it let through), and for a release, the store forgets the
    /// lockspace. `connection` is nil when the requester has gone.
    func finishBulk(_ finished: Finished, _ connection: ClientConnection?) {
        guard let pending = bulkReplies.removeValue(forKey: finished.context) else { return }
        switch pending {
        case .purged(let tag):
            if let connection { deliver(connection, .purged(tag: tag, count: UInt32(finished.count))) }
        case .released(let tag, let lockspace):
            record(.deleteLockspace(name: lockspace))
            if let connection { deliver(connection, .ok(tag: tag, lock: 0)) }
        }
        if let connection { replyDelivered(connection) }
    }

    /// The reply that a connection's later requests waited for went out: they run now, in order, from a task of
    /// their own (this is called while effects are dispatched), until one of them waits again.
    func replyDelivered(_ connection: ClientConnection) {
        connection.awaitingReply = false
        guard !connection.deferredRequests.isEmpty else { return }
        let owner = connection.owner
        eventLoop.execute { [self] in
            guard let connection = connections[owner] else { return }
            while !connection.awaitingReply, let message = connection.deferredRequests.popFirst() {
                receive(message, from: connection)
            }
            flush()
        }
    }
}
