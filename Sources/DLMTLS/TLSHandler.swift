import CDLMTLS
import NIOCore

/// TLS on a channel: the first handler of a TCP connection's pipeline, below the protocol's frames. Inbound it
/// turns the network's bytes into plaintext, outbound plaintext into records. Writes made before the handshake
/// completes wait for it, in order. A failed handshake or record sends the peer its alert, fires a `TLSError`
/// down the pipeline and closes the channel. `close` sends close_notify first.
public final class TLSHandler: ChannelDuplexHandler {
    public typealias InboundIn = ByteBuffer
    public typealias InboundOut = ByteBuffer
    public typealias OutboundIn = ByteBuffer
    public typealias OutboundOut = ByteBuffer

    let session: OpaquePointer
    // Held for as long as the session that was made from it.
    let context: TLSContext
    var established = false
    var failed: TLSError?
    var held: [(ByteBuffer, EventLoopPromise<Void>?)] = []
    var flushHeld = false
    /// Whether any plaintext came from the peer. Until then a failure counts as the handshake's: in TLS 1.3 a
    /// server refuses a client's certificate after the client has finished its side of the handshake.
    var receivedPlaintext = false
    /// How long the handshake may take from the connection's start; then the session fails and the channel closes.
    /// (Writes wait for the handshake, so a peer that never completes one would otherwise keep its connection, and
    /// never see even the close that dlmd's HELLO deadline asks for.)
    let handshakeTimeout: TimeAmount
    var handshakeDeadline: Scheduled<Void>?
    var error = [CChar](repeating: 0, count: 512)

    /// A session of `context`; a client's checks that dlmd's certificate names `serverName` (a host name or an
    /// address). The handshake must complete within `handshakeTimeout` of the connection's start.
    public init(context: TLSContext, serverName: String? = nil, handshakeTimeout: TimeAmount = .seconds(10)) throws {
        self.handshakeTimeout = handshakeTimeout
        precondition(context.isServer == (serverName == nil), "a client session names its server")
        var error = [CChar](repeating: 0, count: 512)
        guard let session = dlm_tls_new(context.context, serverName, &error, error.count) else {
            throw TLSError(text(error))
        }
        self.session = session
        self.context = context
    }

    deinit {
        dlm_tls_free(session)
    }

    public func channelActive(context: ChannelHandlerContext) {
        handshakeDeadline = context.eventLoop.assumeIsolated().scheduleTask(in: handshakeTimeout) { [weak self] in
            guard let self, !self.established else { return }
            self.fail(
                context: context,
                TLSError("the TLS handshake did not complete within \(self.handshakeTimeout)", inHandshake: true))
        }
        context.fireChannelActive()
        // A client's first flight (ClientHello); a server has nothing to say yet.
        advanceHandshake(context: context)
        sendOutput(context: context, flush: true)
    }

    public func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        guard failed == nil else { return }
        let bytes = unwrapInboundIn(data)
        let fed = bytes.withUnsafeReadableBytes { raw in
            dlm_tls_feed(session, raw.bindMemory(to: UInt8.self).baseAddress, raw.count)
        }
        guard fed == 1 else { return fail(context: context, TLSError("out of memory")) }
        guard established || advanceHandshake(context: context) else {
            sendOutput(context: context, flush: true)
            return
        }
        while failed == nil {
            var plaintext = context.channel.allocator.buffer(capacity: 16_384)
            var result: Int32 = 0
            plaintext.writeWithUnsafeMutableBytes(minimumWritableBytes: 16_384) { raw in
                result = dlm_tls_read(
                    session, raw.bindMemory(to: UInt8.self).baseAddress, raw.count, &error, error.count)
                return max(Int(result), 0)
            }
            if result > 0 {
                receivedPlaintext = true
                context.fireChannelRead(wrapInboundOut(plaintext))
                // The handlers above may have closed the channel (a malformed frame): nothing more is read.
                guard context.channel.isActive else { return }
                continue
            }
            switch result {
            case Int32(DLM_TLS_MORE):
                sendOutput(context: context, flush: true)
            case Int32(DLM_TLS_CLOSED):
                // The peer's close_notify: answer it and close.
                dlm_tls_shutdown(session)
                sendOutput(context: context, flush: true)
                context.close(promise: nil)
            default:
                fail(context: context, TLSError(text(error), inHandshake: !receivedPlaintext))
            }
            return
        }
    }

    /// Runs the handshake on; true once it is complete (the writes held until then are sent).
    @discardableResult
    func advanceHandshake(context: ChannelHandlerContext) -> Bool {
        guard !established, failed == nil else { return established }
        switch dlm_tls_handshake(session, &error, error.count) {
        case 1:
            established = true
            let waiting = held
            held = []
            for (bytes, promise) in waiting { encrypt(context: context, bytes, promise: promise) }
            handshakeDeadline?.cancel()
            handshakeDeadline = nil
            if flushHeld {
                flushHeld = false
                sendOutput(context: context, flush: true)
            }
            return true
        case Int32(DLM_TLS_MORE):
            return false
        default:
            fail(context: context, TLSError(text(error), inHandshake: true))
            return false
        }
    }

    public func write(context: ChannelHandlerContext, data: NIOAny, promise: EventLoopPromise<Void>?) {
        if let failed {
            promise?.fail(failed)
            return
        }
        let bytes = unwrapOutboundIn(data)
        guard established else {
            held.append((bytes, promise))
            return
        }
        encrypt(context: context, bytes, promise: promise)
    }

    public func flush(context: ChannelHandlerContext) {
        guard established else {
            flushHeld = true
            return
        }
        context.flush()
    }

    public func close(context: ChannelHandlerContext, mode: CloseMode, promise: EventLoopPromise<Void>?) {
        if mode == .all, established, failed == nil {
            dlm_tls_shutdown(session)
            sendOutput(context: context, flush: true)
        }
        failHeld(TLSError("the connection closed before the TLS handshake completed"))
        context.close(mode: mode, promise: promise)
    }

    public func channelInactive(context: ChannelHandlerContext) {
        failHeld(TLSError("the connection closed before the TLS handshake completed"))
        handshakeDeadline?.cancel()
        handshakeDeadline = nil
        context.fireChannelInactive()
    }

    func encrypt(context: ChannelHandlerContext, _ bytes: ByteBuffer, promise: EventLoopPromise<Void>?) {
        guard bytes.readableBytes > 0 else {
            promise?.succeed()
            return
        }
        let result = bytes.withUnsafeReadableBytes { raw in
            dlm_tls_write(session, raw.bindMemory(to: UInt8.self).baseAddress, raw.count, &error, error.count)
        }
        guard result == 1 else {
            let refusal = TLSError(text(error))
            promise?.fail(refusal)
            return fail(context: context, refusal)
        }
        sendOutput(context: context, flush: false, promise: promise)
    }

    /// Writes what the session has for the network (records, handshake messages, alerts).
    func sendOutput(context: ChannelHandlerContext, flush: Bool, promise: EventLoopPromise<Void>? = nil) {
        let pending = dlm_tls_pending_output(session)
        if pending > 0 {
            var records = context.channel.allocator.buffer(capacity: pending)
            records.writeWithUnsafeMutableBytes(minimumWritableBytes: pending) { raw in
                dlm_tls_take_output(session, raw.bindMemory(to: UInt8.self).baseAddress, pending)
            }
            context.write(wrapOutboundOut(records), promise: promise)
        } else {
            promise?.succeed()
        }
        if flush { context.flush() }
    }

    /// Sends the alert the session made, tells the pipeline why, and closes.
    func fail(context: ChannelHandlerContext, _ refusal: TLSError) {
        guard failed == nil else { return }
        failed = refusal
        sendOutput(context: context, flush: true)
        failHeld(refusal)
        context.fireErrorCaught(refusal)
        context.close(promise: nil)
    }

    func failHeld(_ error: TLSError) {
        let waiting = held
        held = []
        for (_, promise) in waiting { promise?.fail(error) }
    }
}

@available(*, unavailable)
extension TLSHandler: Sendable {}
