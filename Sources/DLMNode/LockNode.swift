import DLMCluster
import DLMCore
import DLMWire
import Foundation
import GroupNode
import GroupServices
import Logging
import NIOCore

/// The shell around one node's `LockService` (DLMCluster): it owns the service on one event loop, turns socket
/// events, timers, store commits and group-services views into the service's inputs, and carries out its output:
/// store changes to the store's thread, frames to their connections, closes. It decides nothing itself. All of its
/// state is touched on `eventLoop` only, so no request hops between threads.
public final class LockNode: @unchecked Sendable {
    public let eventLoop: EventLoop
    public let configuration: NodeConfiguration
    let logger: Logger
    var service: LockService
    /// The channel of each connection, by the service's slot.
    var connections: ContiguousArray<ClientConnection?> = []
    /// Connections with frames waiting to be written, in the order they got them.
    var dirty: [ClientConnection] = []
    let startedAt: NIODeadline
    var ticker: RepeatedTask?
    /// The store and its writer thread; nil for a node without a store.
    var persistence: NodePersistence?
    /// Group services, for a cluster member; nil when standalone.
    var cluster: ClusterMembership?
    /// Keeps the loop polling after client I/O, if configured (`--busy-poll`).
    let busyPoll: BusyPoll?
    /// A bulk slice is scheduled.
    var bulkScheduled = false
    /// Wakes the loop for the next slice without a sleep (SliceWake.swift); nil until the server made it (and in
    /// tests without one): the next slice is then a task scheduled `bulkSliceDelay` later.
    var sliceWake: SliceWake?
    /// Nested inputs (an output that closes a channel reports it at once) are timed as part of the outer one.
    var stepDepth = 0
    /// Steps of `longStep` or more, logged at most once a second.
    lazy var longSteps = RateLimitedLog(logger: logger, interval: .seconds(1))
    /// The turns of the node's event loop (LoopTurns.swift); nil: slices only wait `bulkSliceDelay`.
    var loopTurns: LoopTurns?
    /// The output being carried out, and its arrays kept for the next batch.
    var spare = ServiceOutput()
    var applying = false
    var applyAgain = false
    /// What the node counts for Prometheus, when it serves metrics (NodeMetrics.swift).
    var metrics: NodeMetrics?
    /// Connections not read from now (their unread output is past the pause mark), and those closed for output
    /// past the limit.
    var readsPaused = 0
    var closedForOutput = 0
    /// TLS handshakes of TCP clients that failed, and why the last one did (`dlmtool status`; not logged one by one:
    /// anyone on the network can make them).
    var tlsRefusals = 0
    var lastTLSRefusal: String?

    public init(configuration: NodeConfiguration, eventLoop: EventLoop, logger: Logger) {
        self.configuration = configuration
        self.eventLoop = eventLoop
        self.logger = logger
        self.service = LockService(configuration: Self.serviceConfiguration(configuration, incarnation: 0))
        self.startedAt = .now()
        self.busyPoll =
            configuration.busyPoll > .zero ? BusyPoll(eventLoop: eventLoop, window: configuration.busyPoll) : nil
    }

    static func serviceConfiguration(_ configuration: NodeConfiguration, incarnation: UInt64, store: Bool = false)
        -> ServiceConfiguration
    {
        var engine = configuration.engine
        let cluster = configuration.cluster != nil
        // Fencing tokens after this start are above any issued before it: the incarnation is in the high bits. In a
        // cluster, whose resources move between nodes, the view number is (each recovery raises the floors to it;
        // view numbers only grow, across restarts too).
        if store && !cluster { engine.fencingTokenBase = incarnation << 40 }
        var service = ServiceConfiguration(
            nodeID: configuration.nodeID, incarnation: incarnation, engine: engine,
            tickInterval: configuration.tickInterval,
            repliesWaitForCommits: store && configuration.durability != .none, hasStore: store,
            isClusterMember: cluster, mastersAcrossNodes: cluster,
            tossDelay: UInt64(configuration.cluster?.tossDelay ?? ClusterConfig.defaultTimeouts.toss) * 1_000_000)
        service.maxConnections = configuration.maxConnections
        service.maxLockspaces = configuration.maxLockspaces
        service.maxLocksPerConnection = configuration.maxLocksPerConnection
        service.maxLocksPerUser = configuration.maxLocksPerUser
        service.maxQueuedRequests = configuration.maxQueuedRequests
        return service
    }

    /// Starts the service's timers.
    public func start() {
        eventLoop.preconditionInEventLoop()
        let interval = TimeAmount.nanoseconds(Int64(configuration.tickInterval))
        ticker = eventLoop.scheduleRepeatedTask(initialDelay: interval, delay: interval) { [self] _ in
            handle(.tick(now: NIODeadline.now().uptimeNanoseconds))
        }
    }

    /// One input, then its output carried out.
    func handle(_ input: ServiceInput) {
        stepDepth += 1
        defer { stepDepth -= 1 }
        let start = NIODeadline.now()
        service.handle(input)
        apply()
        if stepDepth == 1 {
            let took = NIODeadline.now() - start
            if took >= LockNode.longStep {
                longSteps.log(
                    kind: "long step", Self.longStepLine(input, took: took, recoveryPhase: service.recoveryPhase))
            }
        }
    }

    /// A step this long is a pause that every client of the node sees, and one of ten times as long gets a node
    /// suspected by its peers; each is logged (at most one line a second) with what caused it, so that the work can
    /// be cut into slices.
    static let longStep = TimeAmount.milliseconds(100)

    static func longStepLine(_ input: ServiceInput, took: TimeAmount, recoveryPhase: UInt8?) -> String {
        let cause: String
        switch input {
        case .peer(let node, let message): cause = "message \(message.kind) of node \(node)"
        case .bulkSlice: cause = "a slice of work done in slices"
        case .viewInstalled(let view, _): cause = "view \(view.id.number) installed"
        case .closed: cause = "a client's connection closed"
        case .inputEnded: cause = "a client's input ended"
        case .tick: cause = "a tick"
        case .committed: cause = "a store commit"
        case .shutdown: cause = "the shutdown"
        default: cause = "an input"
        }
        return "one step of the lock service took \(took.nanoseconds / 1_000_000) ms: \(cause)"
            + (recoveryPhase.map { " (recovering, phase \($0))" } ?? "")
    }

    // MARK: Connections

    func connected(_ channel: Channel) -> ClientConnection {
        let id = service.connect(credentials: peerCredentials(of: channel))
        let connection = ClientConnection(id: id, channel: channel, timed: metrics != nil)
        while connections.count <= Int(id.slot) { connections.append(nil) }
        connections[Int(id.slot)] = connection
        // Not carried out here: a refusal (too many connections, shutting down) would close the channel before its
        // handler knows the connection, and its close would be lost. The handler flushes once it does.
        return connection
    }

    /// A frame of a client. Frames are written once a read batch is handled (`flush`), or as soon as many wait: a
    /// client with hundreds of requests in flight then gets the first answers while the node works on the rest.
    func receive(_ message: ClientMessage, from connection: ClientConnection) {
        let now = NIODeadline.now().uptimeNanoseconds
        metrics?.received(message, on: connection, at: now)
        if case .query = message {
            service.handle(.query(connection.id, message, reportEnvironment(for: message)))
        } else {
            service.handle(.frame(connection.id, message, now: now))
        }
        if service.pendingFrames >= LockNode.eagerWriteFrames { apply() }
    }

    static let eagerWriteFrames = 128

    /// The read batch is handled: out with everything.
    func flush() { apply() }

    /// The connection is gone.
    func disconnected(_ connection: ClientConnection) {
        if connections[Int(connection.id.slot)] === connection { connections[Int(connection.id.slot)] = nil }
        connection.isClosed = true
        handle(.closed(connection.id))
    }

    /// Carries out the service's output: the store's changes to its thread, frames to their connections (written
    /// the connections marked last first: the requester is marked first, so the grants and callbacks its request
    /// caused for others go out before its own replies), closes after their frames, a bulk slice scheduled.
    func apply() {
        // Carrying out may call back into the node (a close fires channelInactive at once): those inputs are
        // handled, and their output carried out in the next round of this loop, not in the middle of this one.
        guard !applying else {
            applyAgain = true
            return
        }
        applying = true
        defer { applying = false }
        repeat {
            applyAgain = false
            service.swapOutput(&spare)
            if !spare.discarded.isEmpty {
                // Freed on another thread, which holds the last reference once this scope ends.
                let discarded = spare.discarded
                spare.discarded = []
                DispatchQueue.global(qos: .utility).async { withExtendedLifetime(discarded) {} }
            }
            carryOut(spare)
            spare.removeAll()
        } while applyAgain
    }

    func carryOut(_ output: ServiceOutput) {
        guard !output.isEmpty else { return }
        if !output.peerMessages.isEmpty, let group = cluster?.group {
            // In order per node; the group node sends what one turn of the loop queued for a node together.
            for (node, message) in output.peerMessages { group.sendLockTraffic(message.frameBytes, to: NodeID(node)) }
            if let metrics {
                for (_, message) in output.peerMessages { metrics.peerSentCounts[Int(message.kind.rawValue)] &+= 1 }
            }
        }
        if let commit = output.commit {
            persistence?.writer?.submit(generation: commit.generation, changes: commit.changes)
        }
        let metrics = self.metrics
        // One reading of the clock for the frames of this batch, when they are timed.
        let now = metrics == nil || output.frames.isEmpty ? 0 : NIODeadline.now().uptimeNanoseconds
        for (id, message) in output.frames {
            guard let connection = connections[Int(id.slot)], connection.id == id, !connection.isClosed else {
                metrics?.sent(message, on: nil, at: now)
                continue
            }
            metrics?.sent(message, on: connection, at: now)
            message.encode(into: &connection.outbound)
            if !connection.isDirty {
                connection.isDirty = true
                dirty.append(connection)
            }
        }
        for connection in dirty.reversed() {
            connection.isDirty = false
            guard connection.outbound.readableBytes > 0, !connection.isClosed else { continue }
            connection.channel.writeAndFlush(connection.outbound, promise: nil)
            // Usually written at once, so the buffer is ours again and is reused; else this copies on write.
            connection.outbound.clear()
            if !connection.channel.isWritable { checkUnreadOutput(connection) }
        }
        dirty.removeAll(keepingCapacity: true)
        for id in output.closes {
            guard let connection = connections[Int(id.slot)], connection.id == id, !connection.isClosed else {
                continue
            }
            connection.isClosed = true
            // After the frames written above: writes complete in order, then the channel closes.
            let channel = connection.channel
            channel.writeAndFlush(channel.allocator.buffer(capacity: 0)).whenComplete { _ in
                channel.close(promise: nil)
            }
        }
        for (id, paused) in output.readPauses {
            // Too many of its requests wait to run (LockService+Backpressure.swift); reading also waits for its
            // output to drain (ClientChannelHandler.channelWritabilityChanged).
            guard let connection = connections[Int(id.slot)], connection.id == id, !connection.isClosed else {
                continue
            }
            connection.queuePaused = paused
            let channel = connection.channel
            channel.setOption(.autoRead, value: !paused && channel.isWritable).whenFailure { _ in }
        }
        for notice in output.notices {
            logger.notice(
                "\(notice.message)", metadata: notice.metadata.mapValues { Logger.MetadataValue.string($0) })
        }
        // The start and end of a recovery are printed as view changes are (docs/OPERATIONS.md).
        for event in output.recoveries {
            metrics?.recovery(event, at: NIODeadline.now().uptimeNanoseconds)
            switch event {
            case .started(let view, let run):
                cluster?.announce(
                    "dlmd: node \(configuration.nodeID) recovery started view \(view)" + (run == 0 ? "" : " run \(run)")
                )
            case .rebuilt(let view, let run):
                cluster?.announce(
                    "dlmd: node \(configuration.nodeID) recovery phase 2 view \(view)" + (run == 0 ? "" : " run \(run)")
                )
            case .done(let view, let run):
                cluster?.announce(
                    "dlmd: node \(configuration.nodeID) recovery done view \(view)" + (run == 0 ? "" : " run \(run)"))
            }
        }
        // A run starts with this node's joins and ends with the groups agreed: the provider keeps them (with corosync,
        // as a CPG group each).
        if !output.recoveries.isEmpty { cluster?.group.setLockspaceGroups(service.lockspaceGroupsOfThisNode) }
        if output.wantsBulkSlice { scheduleBulkSlice() }
        for ack in output.fenceAcks { acknowledgeFence(ack) }
    }

    /// A root client's FENCE_ACK: this node's group services count their fence of the node as done, if they are
    /// fencing it; the answer goes back to the service, which replies in the connection's order.
    func acknowledgeFence(_ ack: (connection: ConnectionID, tag: UInt32, node: UInt32)) {
        var refusal: String?
        if let cluster {
            do {
                try cluster.group.acknowledgeFence(NodeID(ack.node))
            } catch {
                refusal = "\(error)"
            }
        } else {
            refusal = "this dlmd has not joined its cluster yet"
        }
        handle(.fenceAcknowledged(ack.connection, tag: ack.tag, refusal: refusal))
    }

    /// A client that does not read its output while others' requests keep adding to it (grants, blocking
    /// callbacks) is closed past the limit, as Redis does past `client-output-buffer-limit`: its locks go as a
    /// closed client's do, and dlmd's memory stays bounded. (Its own requests stopped being read at the pause mark.)
    func checkUnreadOutput(_ connection: ClientConnection) {
        guard let options = connection.channel.syncOptions,
            let unread = try? options.getOption(.bufferedWritableBytes), unread > configuration.outputLimitBytes
        else { return }
        connection.isClosed = true
        closedForOutput += 1
        logger.notice(
            "closing a client that does not read its output",
            metadata: ["unread bytes": "\(unread)", "limit": "\(configuration.outputLimitBytes)"])
        connection.channel.close(promise: nil)
    }

    /// Work in slices (recovery, exits, purges, releases with many locks): the next slice in the loop's next turn,
    /// after it polled its sockets. Through the slice wake when there is one; else a little later, not at once, and
    /// only once the loop polled its sockets since this one, since NIO runs every task that is due before it polls
    /// them again (and the tasks a slice causes, such as writing its lock traffic, may outlast the delay).
    func scheduleBulkSlice() {
        guard !bulkScheduled else { return }
        bulkScheduled = true
        if let sliceWake, sliceWake.wake() { return }
        let turn = loopTurns?.count
        eventLoop.scheduleTask(in: LockNode.bulkSliceDelay) { [self] in runBulkSlice(after: turn) }
    }

    func runBulkSlice(after turn: UInt64?) {
        if let turn, loopTurns?.count == turn {
            // Nothing else is done until it is due again: the loop finds no task due, ends its turn and polls.
            eventLoop.scheduleTask(in: LockNode.bulkSliceDelay) { [self] in runBulkSlice(after: turn) }
            return
        }
        bulkScheduled = false
        handle(.bulkSlice)
    }

    static let bulkSliceDelay = TimeAmount.microseconds(20)

    /// What only the shell knows, for a QUERY's report (the log and the settings only for the queries of them).
    func reportEnvironment(for query: ClientMessage) -> ReportEnvironment {
        var recentLog: (lines: [String], capacity: Int)?
        var settings: [(key: String, value: String)]?
        if case .query(_, let kind, _) = query {
            if kind == .log, let log = configuration.recentLog { recentLog = (log.lines, log.capacity) }
            if kind == .config { settings = configuration.settingsInEffect() }
        }
        return ReportEnvironment(
            pid: getpid(), uptimeSeconds: Double((NIODeadline.now() - startedAt).nanoseconds) / 1e9,
            socket: configuration.socketPath, listen: configuration.listenAddress,
            dataDirectory: configuration.dataDirectory, store: storeReport, cluster: cluster?.report(),
            busyPoll: busyPoll.map { .init(windowMicroseconds: $0.window.nanoseconds / 1000, polls: $0.polls) },
            output: (configuration.outputPauseBytes, configuration.outputLimitBytes, readsPaused, closedForOutput),
            tls: configuration.clientTLS.map { _ in
                .init(handshakesRefused: tlsRefusals, lastRefusal: lastTLSRefusal)
            },
            recentLog: recentLog, settings: settings)
    }
}
