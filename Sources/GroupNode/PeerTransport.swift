import GroupServices
import Logging
import NIOCore
import NIOPosix

/// Why a node could not start.
public struct GroupNodeError: Error, CustomStringConvertible, Hashable, Sendable {
    public var message: String
    public init(_ message: String) { self.message = message }
    public var description: String { message }
}

/// Peer frames over TCP, on one event loop (docs/GROUPS.md, "Shell"). The node listens on its configured address
/// and reads authenticated frames from whoever connects, after sending each connection a random challenge that
/// its frames must be sealed with; it sends to node X over an outbound connection of its own, opened at the first
/// send and reopened after a failure with a backoff, and seals its frames once X's challenge has come. A message to
/// a peer that is not connected (beyond a small queue while connecting) or whose connection is backlogged is
/// dropped: the core repairs losses. Lock traffic is not sent through that path: `GroupNode` writes its frames
/// (`write`) only on a usable connection (`readyConnection`), paces them itself, and sends again what a closed
/// connection may have lost (docs/GROUPS.md, "Lock traffic"). Every method runs on `eventLoop`.
final class PeerTransport: @unchecked Sendable {
    let eventLoop: EventLoop
    let codec: PeerFrameCodec
    let config: ClusterConfig
    let logger: Logger
    let onEnvelope: (PeerEnvelope) -> Void
    let rejections: RateLimitedLog
    /// This node's life: the sender of the opening frames.
    let local: Member

    /// Outbound channels become unwritable past this many pending bytes; group messages to them are then dropped.
    static let highWaterMark = 4 << 20
    /// What may queue for a peer while its connection opens.
    static let connectingQueueLimit = 1 << 20
    static let initialBackoff = TimeAmount.milliseconds(50)
    static let maximumBackoff = TimeAmount.seconds(1)
    /// How long a new outbound connection may wait for the peer's challenge before it is closed.
    static let challengeTimeout = TimeAmount.seconds(1)
    /// Inbound connections from one address that have not sent an authenticated frame yet: more are closed at once
    /// (a peer opens one connection to each node; a few allow for reconnections racing the old one's close).
    static let unauthenticatedPerAddress = 4
    /// How long an inbound connection may stay without an authenticated frame: a member sends a heartbeat every
    /// heartbeat interval, so the suspect timeout (and at least a second) is plenty.
    var authenticationTimeout: TimeAmount { .milliseconds(Int64(max(config.suspectTimeout, 1000))) }

    struct Outbound {
        var channel: Channel?
        /// The challenge the peer sent on `channel`: frames are sealed with it; nil until it has come.
        var challenge: [UInt8]?
        var connecting = false
        /// Frames without their HMAC (`PeerFrameCodec.unsigned`), waiting for the connection and its challenge.
        var queued: [[UInt8]] = []
        var queuedBytes = 0
        var nextAttempt = NIODeadline.uptimeNanoseconds(0)
        var backoff = PeerTransport.initialBackoff
        var needsFlush = false
        /// The number of `channel` once its challenge has come (`readyConnection`); 0 before.
        var connection: UInt64 = 0
    }

    var outbound: [NodeID: Outbound] = [:]
    var inbound: [ObjectIdentifier: Channel] = [:]
    /// Inbound connections not authenticated yet, by remote address (without the port), and each one's address.
    var unauthenticated: [String: Set<ObjectIdentifier>] = [:]
    var unauthenticatedAddress: [ObjectIdentifier: String] = [:]
    private(set) var unauthenticatedClosed = 0
    var serverChannel: Channel?
    var stopped = false
    /// Frames written to a channel since the last flush.
    var toFlush: Set<NodeID> = []
    /// Challenges read on outbound channels whose connect had not completed yet (`connected` takes them).
    var earlyChallenges: [ObjectIdentifier: [UInt8]] = [:]
    /// The counter of the last frame this node sealed (to any destination): the next is one more.
    private(set) var framesSealed: UInt64 = 0
    /// The last (incarnation, counter) accepted from each peer, over all connections: replays are refused.
    var replayGuard = PeerReplayGuard()
    private(set) var framesDropped = 0
    private(set) var framesRejected = 0
    var onRejected: ((PeerFrameError) -> Void)?
    /// Called when a connection to a peer becomes usable (its challenge came), after the frames queued for it left.
    var onReady: ((NodeID) -> Void)?
    /// The usable outbound connections so far: each gets the next number.
    var connectionsReady: UInt64 = 0

    init(
        eventLoop: EventLoop, codec: PeerFrameCodec, config: ClusterConfig, logger: Logger, local: Member,
        onEnvelope: @escaping (PeerEnvelope) -> Void
    ) {
        self.local = local
        self.eventLoop = eventLoop
        self.codec = codec
        self.config = config
        self.logger = logger
        self.onEnvelope = onEnvelope
        self.rejections = RateLimitedLog(logger: logger)
    }

    /// Binds the local node's address.
    func start() -> EventLoopFuture<Void> {
        eventLoop.assertInEventLoop()
        guard let me = config.node(codec.localNode) else {
            return eventLoop.makeFailedFuture(
                GroupNodeError("node \(codec.localNode) is not in the cluster config's node list"))
        }
        let bootstrap = ServerBootstrap(group: eventLoop)
            .serverChannelOption(.backlog, value: 64)
            .serverChannelOption(.socketOption(.so_reuseaddr), value: 1)
            .childChannelOption(.socketOption(.tcp_nodelay), value: 1)
            .childChannelOption(.maxMessagesPerRead, value: 16)
            .childChannelInitializer { [self] channel in
                channel.eventLoop.makeCompletedFuture {
                    try channel.pipeline.syncOperations.addHandler(PeerInboundHandler(transport: self))
                }
            }
        return bootstrap.bind(host: me.host, port: me.port).flatMapErrorThrowing { error in
            throw GroupNodeError("node \(me.id) cannot listen on \(me.address): \(error)")
        }.map { channel in
            if self.stopped {
                channel.close(promise: nil)
            } else {
                self.serverChannel = channel
            }
        }
    }

    /// The port the node listens on (useful when the config gave port 0... which it may not; for tests).
    var localPort: Int? { serverChannel?.localAddress?.port }

    func stop() -> EventLoopFuture<Void> {
        eventLoop.assertInEventLoop()
        stopped = true
        var closing: [EventLoopFuture<Void>] = []
        if let serverChannel { closing.append(serverChannel.close().recover { _ in }) }
        serverChannel = nil
        for channel in inbound.values { closing.append(channel.close().recover { _ in }) }
        inbound = [:]
        for (_, peer) in outbound {
            if let channel = peer.channel { closing.append(channel.close().recover { _ in }) }
        }
        outbound = [:]
        return EventLoopFuture.andAllComplete(closing, on: eventLoop)
    }

    // MARK: Sending

    func send(_ message: GroupMessage, from sender: Member, to node: NodeID) {
        eventLoop.assertInEventLoop()
        guard !stopped, node != codec.localNode, let address = config.node(node) else { return }
        var peer = outbound[node] ?? Outbound()
        if let channel = peer.channel, let challenge = peer.challenge {
            framesSealed += 1
            if channel.isWritable {
                let envelope = PeerEnvelope(
                    sender: sender, counter: framesSealed, destination: node, body: .group(message))
                channel.write(channel.allocator.buffer(bytes: codec.seal(envelope, challenge: challenge)), promise: nil)
                toFlush.insert(node)
            } else {
                framesDropped += 1
            }
            return
        }
        if peer.queued.isEmpty {
            // What waits for the connection starts with its opening frame (numbered before what follows it).
            framesSealed += 1
            let opening = codec.unsigned(
                PeerEnvelope(sender: local, counter: framesSealed, destination: node, body: .opening))
            peer.queued.append(opening)
            peer.queuedBytes += opening.count
        }
        framesSealed += 1
        let frame = codec.unsigned(
            PeerEnvelope(sender: sender, counter: framesSealed, destination: node, body: .group(message)))
        if peer.queuedBytes + frame.count <= Self.connectingQueueLimit {
            peer.queued.append(frame)
            peer.queuedBytes += frame.count
        } else {
            framesDropped += 1
        }
        if peer.channel == nil && !peer.connecting && NIODeadline.now() >= peer.nextAttempt {
            peer.connecting = true
            connect(node, address)
        }
        outbound[node] = peer
    }

    /// The number of the usable connection to `node` (connected, its challenge come), or nil: a new number means a
    /// new connection, and what was written on the one before may have been lost.
    func readyConnection(to node: NodeID) -> UInt64? {
        guard !stopped, let peer = outbound[node], peer.channel != nil, peer.challenge != nil else { return nil }
        return peer.connection
    }

    /// Seals `body` and writes it on the usable connection to `node` (to be flushed with `flush`), whatever its
    /// backlog: the caller paces itself. Returns the frame's size and the write's outcome, or nil if there is no
    /// usable connection.
    func write(_ body: PeerBody, from sender: Member, to node: NodeID) -> (bytes: Int, written: EventLoopFuture<Void>)?
    {
        eventLoop.assertInEventLoop()
        guard !stopped, let channel = outbound[node]?.channel, let challenge = outbound[node]?.challenge else {
            return nil
        }
        framesSealed += 1
        let frame = codec.seal(
            PeerEnvelope(sender: sender, counter: framesSealed, destination: node, body: body), challenge: challenge)
        let promise = eventLoop.makePromise(of: Void.self)
        channel.write(channel.allocator.buffer(bytes: frame), promise: promise)
        toFlush.insert(node)
        return (frame.count, promise.futureResult)
    }

    /// Opens a connection to `node` unless one is open or opening, or the backoff after a failure runs.
    func connectIfNeeded(_ node: NodeID) {
        eventLoop.assertInEventLoop()
        guard !stopped, node != codec.localNode, let address = config.node(node) else { return }
        var peer = outbound[node] ?? Outbound()
        guard peer.channel == nil && !peer.connecting && NIODeadline.now() >= peer.nextAttempt else {
            outbound[node] = peer
            return
        }
        peer.connecting = true
        outbound[node] = peer
        connect(node, address)
    }

    /// Closes the outbound connection to `node`, as a network failure would (for tests).
    func closeConnection(to node: NodeID) {
        outbound[node]?.channel?.close(promise: nil)
    }

    /// Flushes every connection written to since the last flush.
    func flush() {
        // A flush can complete writes whose callbacks write again (lock traffic): those are flushed too.
        while !toFlush.isEmpty {
            let nodes = toFlush
            toFlush = []
            for node in nodes { outbound[node]?.channel?.flush() }
        }
    }

    func connect(_ node: NodeID, _ address: ClusterConfig.Node) {
        let bootstrap = ClientBootstrap(group: eventLoop)
            .channelOption(.socketOption(.tcp_nodelay), value: 1)
            .channelOption(
                .writeBufferWaterMark,
                value: ChannelOptions.Types.WriteBufferWaterMark(low: Self.highWaterMark / 2, high: Self.highWaterMark)
            )
            .connectTimeout(.seconds(1))
            .channelInitializer { [self] channel in
                channel.eventLoop.makeCompletedFuture {
                    try channel.pipeline.syncOperations.addHandler(PeerOutboundHandler(transport: self, node: node))
                }
            }
        bootstrap.connect(host: address.host, port: address.port).whenComplete { result in
            self.connected(node, result)
        }
    }

    func connected(_ node: NodeID, _ result: Result<Channel, Error>) {
        eventLoop.assertInEventLoop()
        switch result {
        case .success(let channel):
            guard !stopped, var peer = outbound[node] else {
                channel.close(promise: nil)
                return
            }
            guard channel.isActive else {
                // Closed before this completion ran (its close found no channel to clear): a failed attempt.
                earlyChallenges[ObjectIdentifier(channel)] = nil
                connected(node, .failure(ChannelError.alreadyClosed))
                return
            }
            logger.debug("connected to node \(node); waiting for its challenge")
            peer.channel = channel
            peer.challenge = nil
            peer.connection = 0
            peer.connecting = false
            outbound[node] = peer
            if let challenge = earlyChallenges.removeValue(forKey: ObjectIdentifier(channel)) {
                challenged(node, channel, challenge)
                return
            }
            eventLoop.scheduleTask(in: Self.challengeTimeout) { [self] in
                guard outbound[node]?.channel === channel, outbound[node]?.challenge == nil else { return }
                logger.debug("node \(node) sent no challenge; closing that connection")
                channel.close(promise: nil)
            }
        case .failure(let error):
            guard !stopped, var peer = outbound[node] else { return }
            logger.debug("cannot connect to node \(node): \(error)")
            framesDropped += peer.queued.count
            peer.connecting = false
            peer.queued = []
            peer.queuedBytes = 0
            peer.nextAttempt = .now() + peer.backoff
            peer.backoff = min(peer.backoff * 2, Self.maximumBackoff)
            outbound[node] = peer
        }
    }

    /// The peer's challenge came on `channel`: the frames queued for it leave, sealed with it.
    func challenged(_ node: NodeID, _ channel: Channel, _ challenge: [UInt8]) {
        guard !stopped, var peer = outbound[node] else { return }
        guard peer.channel === channel else {
            // The challenge can be read before the connect's own completion has run (`connected`): keep it for then.
            if peer.connecting { earlyChallenges[ObjectIdentifier(channel)] = challenge }
            return
        }
        guard peer.challenge == nil else { return }
        peer.challenge = challenge
        peer.backoff = Self.initialBackoff
        connectionsReady += 1
        peer.connection = connectionsReady
        let queued = peer.queued
        peer.queued = []
        // The opening frame first (the queue starts with one): the receiver takes nothing larger until a frame has
        // authenticated the connection.
        if queued.isEmpty {
            framesSealed += 1
            let opening = codec.seal(
                PeerEnvelope(sender: local, counter: framesSealed, destination: node, body: .opening),
                challenge: challenge)
            channel.write(channel.allocator.buffer(bytes: opening), promise: nil)
        }
        for frame in queued {
            channel.write(channel.allocator.buffer(bytes: codec.sign(frame, challenge: challenge)), promise: nil)
        }
        channel.flush()
        peer.queuedBytes = 0
        outbound[node] = peer
        onReady?(node)
    }

    func outboundClosed(_ node: NodeID, _ channel: Channel) {
        earlyChallenges[ObjectIdentifier(channel)] = nil
        guard var peer = outbound[node], peer.channel === channel else { return }
        logger.debug("the connection to node \(node) closed")
        if peer.challenge == nil {
            // Closed before the challenge came: like a failed connection, what waited for it is dropped (the
            // opening frame that starts the queue is not counted).
            framesDropped += max(0, peer.queued.count - 1)
            peer.queued = []
            peer.queuedBytes = 0
            peer.nextAttempt = .now() + peer.backoff
            peer.backoff = min(peer.backoff * 2, Self.maximumBackoff)
        } else {
            peer.nextAttempt = .now() + Self.initialBackoff
        }
        peer.channel = nil
        peer.challenge = nil
        peer.connection = 0
        outbound[node] = peer
    }

    // MARK: Receiving

    /// A new inbound connection: refused (false, and closed) if its address already has
    /// `unauthenticatedPerAddress` connections that have not authenticated; else it must authenticate within
    /// `authenticationTimeout`.
    func inboundOpened(_ channel: Channel) -> Bool {
        let id = ObjectIdentifier(channel)
        let address = Self.host(of: channel)
        guard unauthenticated[address, default: []].count < Self.unauthenticatedPerAddress else {
            unauthenticatedClosed += 1
            rejections.log(
                kind: "unauthenticated",
                "closing a connection from \(address): \(Self.unauthenticatedPerAddress) from there have not "
                    + "authenticated yet")
            channel.close(promise: nil)
            return false
        }
        inbound[id] = channel
        unauthenticated[address, default: []].insert(id)
        unauthenticatedAddress[id] = address
        eventLoop.scheduleTask(in: authenticationTimeout) { [self] in
            guard unauthenticated[address]?.contains(id) == true else { return }
            unauthenticatedClosed += 1
            rejections.log(kind: "unauthenticated", "closing a connection from \(address): no authenticated frame")
            channel.close(promise: nil)
        }
        return true
    }

    /// The connection's first authenticated frame came.
    func inboundAuthenticated(_ channel: Channel) { forgetUnauthenticated(channel) }

    func inboundClosed(_ channel: Channel) {
        inbound[ObjectIdentifier(channel)] = nil
        forgetUnauthenticated(channel)
    }

    func forgetUnauthenticated(_ channel: Channel) {
        guard let address = unauthenticatedAddress.removeValue(forKey: ObjectIdentifier(channel)) else { return }
        unauthenticated[address]?.remove(ObjectIdentifier(channel))
        if unauthenticated[address]?.isEmpty == true { unauthenticated[address] = nil }
    }

    static func host(of channel: Channel) -> String { channel.remoteAddress?.ipAddress ?? "?" }

    /// Hands an authenticated frame to the node unless it is a replay (which throws: its connection is then closed
    /// like that of any refused frame, since a replay is an attack or a bug).
    func accept(_ envelope: PeerEnvelope) throws(PeerFrameError) {
        try replayGuard.admit(envelope)
        heardFrom(envelope.sender.node)
        onEnvelope(envelope)
    }

    /// A node we cannot reach but that reaches us is up again (a restart): the backoff of our connection to it is
    /// over, so that it hears from us as soon as we hear from it (else a restarted node could wait up to
    /// `maximumBackoff` for our heartbeats and propose a view without us).
    func heardFrom(_ node: NodeID) {
        guard var peer = outbound[node], peer.channel == nil, !peer.connecting,
            peer.backoff > Self.initialBackoff || NIODeadline.now() < peer.nextAttempt
        else { return }
        peer.backoff = Self.initialBackoff
        peer.nextAttempt = .now()
        outbound[node] = peer
        connectIfNeeded(node)
    }

    func rejected(_ error: PeerFrameError, from channel: Channel) {
        framesRejected += 1
        onRejected?(error)
        rejections.log(
            kind: error.kind,
            "dropped \(error) from \(channel.remoteAddress.map { "\($0)" } ?? "?"); closing that connection")
        channel.close(promise: nil)
    }
}

/// Reads frames from a peer's connection: a frame that fails any check (a replay included) closes the connection.
final class PeerInboundHandler: ChannelInboundHandler {
    typealias InboundIn = ByteBuffer
    typealias OutboundOut = ByteBuffer
    let transport: PeerTransport
    var buffer: ByteBuffer?
    var failed = false
    var authenticated = false
    /// Sent first on the connection; the peer seals its frames with it.
    let challenge = PeerFrameCodec.makeChallenge()

    init(transport: PeerTransport) { self.transport = transport }

    func channelActive(context: ChannelHandlerContext) {
        guard transport.inboundOpened(context.channel) else {
            failed = true
            return
        }
        context.writeAndFlush(
            wrapOutboundOut(context.channel.allocator.buffer(bytes: transport.codec.challengeFrame(challenge))),
            promise: nil)
        context.fireChannelActive()
    }

    func channelInactive(context: ChannelHandlerContext) {
        transport.inboundClosed(context.channel)
        context.fireChannelInactive()
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        guard !failed else { return }
        var incoming = unwrapInboundIn(data)
        if buffer == nil || buffer!.readableBytes == 0 {
            buffer = incoming
        } else {
            buffer!.writeBuffer(&incoming)
        }
        while !failed, let length = buffer!.getInteger(at: buffer!.readerIndex, as: UInt32.self) {
            guard Int(length) <= PeerEnvelope.maximumLength else {
                fail(.oversized(Int(length)), context: context)
                return
            }
            guard authenticated || Int(length) <= PeerEnvelope.maximumFirstLength else {
                fail(.oversizedFirst(Int(length)), context: context)
                return
            }
            guard buffer!.readableBytes >= 4 + Int(length) else { break }
            buffer!.moveReaderIndex(forwardBy: 4)
            let result = buffer!.readWithUnsafeReadableBytes { raw -> (Int, Result<PeerEnvelope, PeerFrameError>) in
                let frame = UnsafeRawBufferPointer(rebasing: raw[..<Int(length)])
                do throws(PeerFrameError) {
                    return (Int(length), .success(try transport.codec.open(frame, challenge: challenge)))
                } catch {
                    return (Int(length), .failure(error))
                }
            }
            do throws(PeerFrameError) {
                try transport.accept(try result.get())
                if !authenticated {
                    authenticated = true
                    transport.inboundAuthenticated(context.channel)
                }
            } catch {
                fail(error, context: context)
            }
        }
        if let readable = buffer?.readableBytes {
            if readable == 0 {
                buffer = nil
            } else if buffer!.readerIndex >= Self.compactionThreshold && buffer!.readerIndex >= readable {
                // A steady stream (lock traffic) may never leave the buffer empty: drop what was read, once it is
                // at least as much as what is left to move.
                buffer!.discardReadBytes()
            }
        }
    }

    /// Read bytes kept in the buffer before it is compacted.
    static let compactionThreshold = 1 << 20

    func fail(_ error: PeerFrameError, context: ChannelHandlerContext) {
        failed = true
        buffer = nil
        transport.rejected(error, from: context.channel)
    }

    func errorCaught(context: ChannelHandlerContext, error: Error) {
        context.close(promise: nil)
    }
}

/// The handler of a connection this node opened to send to a peer: it reads the peer's challenge, then nothing.
final class PeerOutboundHandler: ChannelInboundHandler {
    typealias InboundIn = ByteBuffer
    let transport: PeerTransport
    let node: NodeID
    var buffer: ByteBuffer?
    var challenged = false

    init(transport: PeerTransport, node: NodeID) {
        self.transport = transport
        self.node = node
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        guard !challenged else { return }
        var incoming = unwrapInboundIn(data)
        if buffer == nil { buffer = incoming } else { buffer!.writeBuffer(&incoming) }
        guard let length = buffer!.getInteger(at: buffer!.readerIndex, as: UInt32.self) else { return }
        guard Int(length) == PeerEnvelope.challengeFrameLength else {
            transport.rejected(.malformed("a challenge of \(length) bytes"), from: context.channel)
            return
        }
        guard buffer!.readableBytes >= 4 + Int(length) else { return }
        let result = buffer!.withUnsafeReadableBytes { raw -> Result<[UInt8], PeerFrameError> in
            let frame = UnsafeRawBufferPointer(rebasing: raw[4..<(4 + Int(length))])
            do throws(PeerFrameError) {
                return .success(try transport.codec.openChallenge(frame))
            } catch {
                return .failure(error)
            }
        }
        buffer = nil
        switch result {
        case .success(let challenge):
            challenged = true
            transport.challenged(node, context.channel, challenge)
        case .failure(let error):
            transport.rejected(error, from: context.channel)
        }
    }

    func channelInactive(context: ChannelHandlerContext) {
        transport.outboundClosed(node, context.channel)
        context.fireChannelInactive()
    }

    func errorCaught(context: ChannelHandlerContext, error: Error) {
        context.close(promise: nil)
    }
}
