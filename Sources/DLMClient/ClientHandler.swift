import DLMCore
import DLMWire
import NIOCore

/// The client side of one connection, on the channel's event loop: matches replies to requests by tag,
/// follows queued operations by lock id until their completion, and delivers blocking callbacks.
final class ClientHandler: ChannelInboundHandler, @unchecked Sendable {
    typealias InboundIn = ServerMessage

    /// A request waiting for its reply.
    enum Pending {
        /// Any single reply frame (PONG, LOCKSPACE, OK, QUERY_REPLY, HELLO_REPLY).
        case reply(EventLoopPromise<ServerMessage>)
        /// A lock operation: resolved by its COMPLETION, which may come after an OK.
        case operation(EventLoopPromise<CompletionMessage>, blocking: BlockingHandler?)
    }

    typealias BlockingHandler = @Sendable (LockID, LockMode) -> Void

    var pending: [UInt32: Pending] = [:]
    /// Queued operations, by lock id, and the request tag that started each.
    var queued: [UInt32: (tag: UInt32, promise: EventLoopPromise<CompletionMessage>)] = [:]
    /// Blocking-callback handlers of granted locks.
    var blockingHandlers: [UInt32: BlockingHandler] = [:]
    /// Tags whose task was cancelled before the lock id was known.
    var cancelWhenQueued: Set<UInt32> = []
    var helloPromise: EventLoopPromise<ServerMessage>?
    var closedError: DLMError?
    let onBlocking: BlockingHandler
    var context: ChannelHandlerContext?

    init(onBlocking: @escaping BlockingHandler) {
        self.onBlocking = onBlocking
    }

    func handlerAdded(context: ChannelHandlerContext) {
        self.context = context
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        switch unwrapInboundIn(data) {
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
                case .reply(let promise)?: promise.fail(error)
                case .operation(let promise, _)?: promise.fail(error)
                case nil: break
                }
            }
        case .ok(let tag, let lock):
            switch pending.removeValue(forKey: tag) {
            case .reply(let promise)?:
                promise.succeed(.ok(tag: tag, lock: lock))
            case .operation(let promise, let blocking)?:
                // The operation waits: its completion comes later, untagged.
                queued[lock] = (tag, promise)
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
            if let tag = other.replyTag, case .reply(let promise)? = pending.removeValue(forKey: tag) {
                promise.succeed(other)
            }
        }
    }

    /// A completion ends the lock's queued operation and, when tagged, the request it answers.
    func complete(_ completion: CompletionMessage) {
        let lock = completion.lock
        if let waiting = queued.removeValue(forKey: lock) {
            cancelWhenQueued.remove(waiting.tag)
            waiting.promise.succeed(completion)
        }
        if completion.tag != 0,
            case .operation(let promise, let blocking)? = pending.removeValue(forKey: completion.tag)
        {
            if completion.status == .granted, let blocking { blockingHandlers[lock] = blocking }
            promise.succeed(completion)
        }
        if completion.mode == nil { blockingHandlers[lock] = nil }
    }

    func channelInactive(context: ChannelHandlerContext) {
        failAll(closedError ?? DLMError(.shuttingDown, "the connection to dlmd closed"))
        context.fireChannelInactive()
    }

    func errorCaught(context: ChannelHandlerContext, error: Error) {
        failAll(DLMError(.protocolError, "connection error: \(error)"))
        context.close(promise: nil)
    }

    func failAll(_ error: DLMError) {
        if closedError == nil { closedError = error }
        helloPromise?.fail(error)
        helloPromise = nil
        let waiting = pending
        pending.removeAll()
        for (_, entry) in waiting {
            switch entry {
            case .reply(let promise): promise.fail(error)
            case .operation(let promise, _): promise.fail(error)
            }
        }
        let operations = queued
        queued.removeAll()
        for (_, entry) in operations { entry.promise.fail(error) }
    }

    // MARK: Sending (on the event loop)

    var nextTag: UInt32 = 1

    func allocateTag() -> UInt32 {
        let tag = nextTag
        nextTag = nextTag == UInt32.max ? 1 : nextTag + 1
        return tag
    }

    func write(_ message: ClientMessage) {
        guard let context else { return }
        var buffer = context.channel.allocator.buffer(capacity: 64)
        message.encode(into: &buffer)
        context.writeAndFlush(wrapOutboundOut(buffer), promise: nil)
    }

    typealias OutboundOut = ByteBuffer

    func sendCancel(lock: UInt32) {
        let tag = allocateTag()
        // The cancel's own reply (a COMPLETION, or EBUSY if the race was lost) needs no waiter.
        write(.unlock(UnlockMessage(tag: tag, lock: lock, flags: .cancel)))
    }
}

extension ServerMessage {
    var replyTag: UInt32? {
        switch self {
        case .pong(let tag), .lockspace(let tag, _, _, _), .ok(let tag, _), .error(let tag, _, _),
            .queryReply(let tag, _):
            tag
        case .completion(let c): c.tag
        case .helloReply, .blocking, .goodbye: nil
        }
    }
}
