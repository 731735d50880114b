import DLMCore
import DLMTLS
import DLMWire
import NIOCore

/// The client side of one connection, on the channel's event loop: matches replies to requests by tag,
/// follows queued operations by lock id until their completion, and delivers blocking callbacks. It splits
/// the byte stream into frames and decodes them itself (no `ByteToMessageHandler`, no message boxed for the
/// pipeline).
///
/// Every request waits as a completion handler, run on the event loop when its answer arrives: the async API
/// resumes a continuation from it, the callback API calls the caller's handler. Frames written on the event
/// loop go into one outbound buffer, which is flushed once per read batch (when a handler answers a
/// completion with a new request) or once per turn of the event loop (requests from other threads).
final class ClientHandler: ChannelInboundHandler, @unchecked Sendable {
    typealias InboundIn = ByteBuffer
    typealias OutboundOut = ByteBuffer

    typealias BlockingHandler = @Sendable (LockID, LockMode) -> Void
    /// Ends a request answered by one reply frame.
    typealias ReplyHandler = @Sendable (Result<ServerMessage, DLMError>) -> Void
    /// Ends a lock operation: its COMPLETION, or the error that refused it.
    typealias OperationHandler = @Sendable (Result<CompletionMessage, DLMError>) -> Void

    /// A request waiting for its reply.
    enum Pending {
        /// Any single reply frame (PONG, LOCKSPACE, PURGED, OK, QUERY_REPLY).
        case reply(ReplyHandler)
        /// A lock operation: resolved by its COMPLETION, which may come after an OK.
        case operation(OperationHandler, blocking: BlockingHandler?)
    }

    var pending: [UInt32: Pending] = [:]
    /// Queued operations, by lock id, and the request tag that started each.
    var queued: [UInt32: (tag: UInt32, handler: OperationHandler)] = [:]
    /// Blocking-callback handlers of granted locks.
    var blockingHandlers: [UInt32: BlockingHandler] = [:]
    /// Tags whose task was cancelled before the lock id was known.
    var cancelWhenQueued: Set<UInt32> = []
    var helloPromise: EventLoopPromise<ServerMessage>?
    var closedError: DLMError?
    let onBlocking: BlockingHandler
    /// A lock of this connection that dlmd took away, untold by any request of ours (a forced release of its
    /// lockspace, a purge of its parent): its id and status.
    var onRemoved: (LockID, DLMStatus) -> Void = { _, _ in }
    var context: ChannelHandlerContext?
    var frames = FrameAccumulator()

    /// Frames encoded but not yet flushed.
    var outbound: ByteBuffer
    /// Between a read and the end of its batch: `channelReadComplete` flushes what the handlers wrote.
    var isReading = false
    /// A flush is queued on the event loop.
    var flushScheduled = false
    /// Keeps the event loop polling after reads (`DLMConnection.connect(busyPoll:)`).
    let busyPoll: TimeAmount
    var poller: BusyPoll?

    init(busyPoll: TimeAmount = .zero, onBlocking: @escaping BlockingHandler) {
        self.busyPoll = busyPoll
        self.onBlocking = onBlocking
        self.outbound = ByteBufferAllocator().buffer(capacity: 0)
    }

    func handlerAdded(context: ChannelHandlerContext) {
        self.context = context
        outbound = context.channel.allocator.buffer(capacity: 1024)
        if busyPoll > .zero { poller = BusyPoll.shared(on: context.eventLoop, window: busyPoll) }
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        guard closedError == nil else { return }
        poller?.activity()
        isReading = true
        do throws(WireError) {
            try frames.process(unwrapInboundIn(data), maxLength: WireLimits.maxServerFrame) {
                type, body throws(WireError) in
                receive(try ServerMessage.decode(type: type, body: &body))
            }
        } catch {
            // A malformed frame from the server: the connection cannot be trusted any more.
            failAll(DLMError(.protocolError, "connection error: \(error)"))
            context.close(promise: nil)
        }
    }

    func receive(_ message: ServerMessage) {
        switch message {
        case .helloReply(let reply):
            helloPromise?.succeed(.helloReply(reply))
            helloPromise = nil
        case .error(let tag, let status, let message):
            let error = DLMError(status, message)
            if tag == 0 {
                helloPromise?.fail(error)
                helloPromise = nil
                failAll(error)
            } else {
                switch pending.removeValue(forKey: tag) {
                case .reply(let handler)?: handler(.failure(error))
                case .operation(let handler, _)?: handler(.failure(error))
                case nil: break
                }
            }
        case .ok(let tag, let lock):
            switch pending.removeValue(forKey: tag) {
            case .reply(let handler)?:
                handler(.success(.ok(tag: tag, lock: lock)))
            case .operation(let handler, let blocking)?:
                // The operation waits: its completion comes later, untagged.
                queued[lock] = (tag, handler)
                if let blocking { blockingHandlers[lock] = blocking }
                if cancelWhenQueued.remove(tag) != nil { sendCancel(lock: lock) }
            case nil:
                break
            }
        case .completion(let completion):
            complete(completion)
        case .blocking(let lock, let mode):
            blockingHandlers[lock]?(LockID(rawValue: lock), mode)
            onBlocking(LockID(rawValue: lock), mode)
        case .goodbye(let reason):
            failAll(DLMError(.shuttingDown, "dlmd closed the connection: \(reason)"))
        case let other:
            if let tag = other.replyTag, case .reply(let handler)? = pending.removeValue(forKey: tag) {
                handler(.success(other))
            }
        }
    }

    func channelReadComplete(context: ChannelHandlerContext) {
        isReading = false
        flushOutbound()
        context.fireChannelReadComplete()
    }

    /// A completion ends the lock's queued operation and, when tagged, the request it answers.
    func complete(_ completion: CompletionMessage) {
        let lock = completion.lock
        if completion.mode == nil { blockingHandlers[lock] = nil }
        if let waiting = queued.removeValue(forKey: lock) {
            if !cancelWhenQueued.isEmpty { cancelWhenQueued.remove(waiting.tag) }
            waiting.handler(.success(completion))
        } else if completion.tag == 0, completion.mode == nil {
            onRemoved(LockID(rawValue: lock), completion.status)
        }
        if completion.tag != 0,
            case .operation(let handler, let blocking)? = pending.removeValue(forKey: completion.tag)
        {
            if completion.status == .granted, let blocking { blockingHandlers[lock] = blocking }
            handler(.success(completion))
        }
    }

    func channelInactive(context: ChannelHandlerContext) {
        failAll(closedError ?? DLMError(.shuttingDown, "the connection to dlmd closed"))
        context.fireChannelInactive()
    }

    func errorCaught(context: ChannelHandlerContext, error: Error) {
        if let refusal = error as? TLSError, refusal.inHandshake {
            // A certificate refused by either side: dlmd does not admit this client, or is not the dlmd it trusts.
            failAll(DLMError(.permissionDenied, "\(refusal)"))
        } else {
            failAll(DLMError(.protocolError, "connection error: \(error)"))
        }
        context.close(promise: nil)
    }

    func failAll(_ error: DLMError) {
        if closedError == nil { closedError = error }
        helloPromise?.fail(error)
        helloPromise = nil
        let waiting = pending
        pending.removeAll()
        let operations = queued
        queued.removeAll()
        for (_, entry) in waiting {
            switch entry {
            case .reply(let handler): handler(.failure(error))
            case .operation(let handler, _): handler(.failure(error))
            }
        }
        for (_, entry) in operations { entry.handler(.failure(error)) }
    }

    // MARK: Sending (on the event loop)

    var nextTag: UInt32 = 1

    func allocateTag() -> UInt32 {
        let tag = nextTag
        nextTag = nextTag == UInt32.max ? 1 : nextTag + 1
        return tag
    }

    /// Sends a request answered by one reply frame; `handler` runs on the event loop, never before this
    /// returns.
    func startRequest(_ message: ClientMessage, handler: @escaping ReplyHandler) {
        if let error = closedError {
            context?.eventLoop.execute { handler(.failure(error)) }
            return
        }
        let tag = allocateTag()
        pending[tag] = .reply(handler)
        write(message.tagged(tag))
    }

    /// Sends a lock operation and returns its tag (0 if the connection is closed); `handler` runs on the event
    /// loop with the operation's completion, never before this returns.
    @discardableResult
    func startOperation(
        _ message: ClientMessage, blocking: BlockingHandler?, handler: @escaping OperationHandler
    ) -> UInt32 {
        if let error = closedError {
            context?.eventLoop.execute { handler(.failure(error)) }
            return 0
        }
        let tag = allocateTag()
        pending[tag] = .operation(handler, blocking: blocking)
        write(message.tagged(tag))
        return tag
    }

    /// Encodes a frame into the outbound buffer. Inside a read batch, `channelReadComplete` flushes it;
    /// otherwise a flush is queued behind the tasks already on the event loop, so that requests submitted
    /// together leave in one write.
    func write(_ message: ClientMessage) {
        guard let context else { return }
        message.encode(into: &outbound)
        // Hundreds of requests in flight: let the first ones go while the rest are encoded.
        if outbound.readableBytes >= ClientHandler.eagerWriteBytes {
            flushOutbound()
            return
        }
        if isReading || flushScheduled { return }
        flushScheduled = true
        context.eventLoop.execute { self.flushOutbound() }
    }

    static let eagerWriteBytes = 4096

    func flushOutbound() {
        flushScheduled = false
        guard let context, outbound.readableBytes > 0 else { return }
        context.writeAndFlush(wrapOutboundOut(outbound), promise: nil)
        outbound.clear()
    }

    func sendCancel(lock: UInt32) {
        // The cancel's own reply (a COMPLETION, or EBUSY if the race was lost) needs no waiter.
        write(.unlock(UnlockMessage(tag: allocateTag(), lock: lock, flags: .cancel)))
    }
}

extension ClientMessage {
    /// The same request with `tag`.
    func tagged(_ tag: UInt32) -> ClientMessage {
        switch self {
        case .hello:
            return self
        case .ping:
            return .ping(tag: tag)
        case .bye:
            return .bye(tag: tag)
        case .openLockspace(_, let name, let length, let create, let mode):
            return .openLockspace(tag: tag, name: name, valueBlockLength: length, create: create, mode: mode)
        case .releaseLockspace(_, let lockspace, let force):
            return .releaseLockspace(tag: tag, lockspace: lockspace, force: force)
        case .purge(_, let lockspace, let nodeID, let pid):
            return .purge(tag: tag, lockspace: lockspace, nodeID: nodeID, pid: pid)
        case .fenceAck(_, let nodeID):
            return .fenceAck(tag: tag, nodeID: nodeID)
        case .lock(var m):
            m.tag = tag
            return .lock(m)
        case .convert(var m):
            m.tag = tag
            return .convert(m)
        case .unlock(var m):
            m.tag = tag
            return .unlock(m)
        case .deadlockCancel(_, let lock):
            return .deadlockCancel(tag: tag, lock: lock)
        case .query(_, let kind, let argument):
            return .query(tag: tag, kind: kind, argument: argument)
        }
    }
}

extension ServerMessage {
    var replyTag: UInt32? {
        switch self {
        case .pong(let tag), .lockspace(let tag, _, _, _), .purged(let tag, _), .ok(let tag, _),
            .error(let tag, _, _), .queryReply(let tag, _):
            tag
        case .completion(let c): c.tag
        case .helloReply, .blocking, .goodbye: nil
        }
    }
}
