import Foundation
import GroupServices
import Logging
import NIOCore
import NIOPosix

/// What group services tell the application (the effects of `GroupMember` that are not the shell's business, and
/// the outcome of fences).
public enum GroupNodeEvent: Sendable, Hashable {
    case viewInstalled(View, primary: Bool)
    case delivered(Delivery)
    case barrierCompleted(String, view: ViewID)
    case barrierAborted(String, view: ViewID?)
    case groupEvent(GroupEvent)
    /// The fence command fenced this node (exit status 0).
    case fenced(NodeID)
    /// An operator acknowledged the fence of this node (`acknowledgeFence`): it counts as done.
    case fenceAcknowledged(NodeID)
    /// A fence the coordinator waits on failed; it is tried again.
    case fenceFailed(NodeID, reason: String)
    /// The fence command of a fence that an operator acknowledged while it ran ended, how (`FenceOutcome.reason`:
    /// `exit status 0` when it fenced): nothing changes, the fence was done when acknowledged.
    case fenceCommandEndedAfterAcknowledgement(NodeID, reason: String)
    /// This node learnt that its own life was fenced (a primary view left it out): it never joins again, and
    /// waits to be restarted.
    case lifeFenced
    /// A payload that `from` sent with `sendLockTraffic`: each exactly once, in the order sent, for as long as that
    /// life of the sender and this node's live (docs/GROUPS.md, "Lock traffic").
    case lockTraffic([UInt8], from: Member)
}

/// A node's view of the cluster, for `dlmtool members` and monitors (JSON through Codable).
public struct ClusterStatus: Sendable, Codable, Hashable {
    public struct MemberStatus: Sendable, Codable, Hashable {
        public var node: UInt32
        public var incarnation: UInt64
    }
    public struct ViewStatus: Sendable, Codable, Hashable {
        /// The view number.
        public var id: UInt64
        public var coordinator: UInt32
        public var members: [MemberStatus]
        public var primary: Bool
    }
    public struct NodeStatus: Sendable, Codable, Hashable {
        public var id: UInt32
        public var address: String
        /// `self`; `member` (in the view, heard from); `joining` (heard from, not in the view yet); `suspected` (in
        /// the view, silent past the suspect timeout); `fencing` (its fence command runs, or is due again);
        /// `fenced` (fenced, not heard from since in a new incarnation); `down` (silent, not in the view).
        public var state: String
        public var lastHeardMillisecondsAgo: UInt64?
        public var incarnation: UInt64?
        public var votes: Int
    }

    public var clusterName: String
    public var nodeID: UInt32
    public var incarnation: UInt64
    public var view: ViewStatus?
    public var quorate: Bool
    /// What a pending view change or recovery waits for (`view agreement`, `quorum`, `fencing node 3`,
    /// `barrier NAME`); empty when settled.
    public var waitingFor: [String]
    public var nodes: [NodeStatus]
    public var highestViewNumber: UInt64
}

/// One node of group services over the network: a `GroupMember` driven on an event loop, with the peer transport,
/// the fence command and persistence carried out in the order the member asks (docs/GROUPS.md, "Shell").
public final class GroupNode: @unchecked Sendable {
    public let config: ClusterConfig
    public let nodeID: NodeID
    public let incarnation: UInt64
    public let eventLoop: EventLoop
    let key: ClusterKey
    let initialState: PersistentState
    var logger: Logger
    let persist: (PersistentState) throws -> Void
    let onEvent: (GroupNodeEvent) -> Void

    enum State { case idle, running, stopped }
    var state = State.idle
    /// `GroupMember`, or `CorosyncMember` with the corosync provider.
    var member: (any MembershipCore)?
    var transport: PeerTransport?
    /// The connection to corosync (the corosync provider only).
    var corosync: CorosyncLink?
    /// The most lockspaces that get a CPG group of their own (`setLockspaceGroups`).
    public static let maxLockspaceGroups = 128
    var warnedOfLockspaceGroups = false
    var ticker: RepeatedTask?
    var processing = false
    var pending: [GroupInput] = []
    var effects: [GroupEffect] = []

    var lastHeard: [NodeID: NIODeadline] = [:]
    /// When the member was ticked last (`ticked`).
    var lastTick: UInt64?
    var incarnations: [NodeID: UInt64] = [:]
    var fencesRunning: Set<NodeID> = []
    /// Fences whose command still runs that an operator acknowledged: its end is only reported.
    var acknowledgedWhileRunning: Set<NodeID> = []
    /// Fenced nodes, with the incarnation last heard from when the fence succeeded.
    var fenced: [NodeID: UInt64] = [:]
    var fenceFailures: [NodeID: String] = [:]

    /// Lock traffic with each peer (GroupNode+LockTraffic.swift).
    var lockPeers: [NodeID: LockPeer] = [:]
    /// Peers with payloads queued since the last `flushLockTraffic`.
    var lockTrafficToFlush: Set<NodeID> = []
    var lockTrafficFlushScheduled = false
    /// The most lock traffic bytes that may wait for one peer (queued, or sent and not acknowledged); past it, lock
    /// traffic to that life of the peer fails. Only tests change it.
    var lockTrafficQueueLimit = GroupNode.lockTrafficQueueLimit

    /// How often the member is ticked.
    public static let tickInterval = TimeAmount.milliseconds(10)

    /// Everything runs on `eventLoop` (one serial owner). `persist` is called on the loop and must return only when
    /// the state is durable; if it throws, the node stops. `onEvent` is called on the loop.
    public init(
        config: ClusterConfig, nodeID: NodeID, key: ClusterKey, incarnation: UInt64, persisted: PersistentState,
        eventLoop: EventLoop, logger: Logger, persist: @escaping (PersistentState) throws -> Void,
        onEvent: @escaping (GroupNodeEvent) -> Void
    ) {
        self.config = config
        self.nodeID = nodeID
        self.key = key
        self.incarnation = incarnation
        self.initialState = persisted
        self.eventLoop = eventLoop
        self.logger = logger
        self.logger[metadataKey: "node"] = "\(nodeID)"
        self.persist = persist
        self.onEvent = onEvent
    }

    /// Binds this node's address, then starts the member and its ticks. Fails if the node is not in the config,
    /// the incarnation is 0, or the address cannot be bound.
    public func start() -> EventLoopFuture<Void> {
        eventLoop.flatSubmit { [self] in
            guard state == .idle else {
                return eventLoop.makeFailedFuture(GroupNodeError("a GroupNode starts once"))
            }
            guard config.node(nodeID) != nil else {
                return eventLoop.makeFailedFuture(
                    GroupNodeError(
                        "node \(nodeID) is not in the cluster config's node list "
                            + "(\(config.nodes.map { "\($0.id)" }.joined(separator: ", ")))"))
            }
            guard incarnation > 0 else {
                return eventLoop.makeFailedFuture(GroupNodeError("incarnations start at 1"))
            }
            let codec = PeerFrameCodec(
                key: key, clusterName: config.name, localNode: nodeID, knownNodes: Set(config.nodes.map(\.id)))
            let transport = PeerTransport(
                eventLoop: eventLoop, codec: codec, config: config, logger: logger,
                local: Member(node: nodeID, incarnation: incarnation)
            ) { [weak self] envelope in self?.received(envelope) }
            transport.onRejected = onFrameRejected
            transport.onReady = { [weak self] node in self?.lockTrafficConnectionReady(node) }
            self.transport = transport
            state = .running
            return transport.start().flatMapError { error in
                self.state = .stopped
                return transport.stop().flatMapThrowing { throw error }
            }.flatMapThrowing { [self] in
                guard state == .running else { return }
                if case .corosync = config.provider {
                    member = CorosyncMember(
                        id: nodeID, nodes: config.nodes.map(\.id),
                        fenceRetryInterval: config.settings.fenceRetryInterval)
                    apply(.start(incarnation: incarnation, persisted: initialState, now: Self.now()))
                    let loop = eventLoop
                    let link = CorosyncLink(group: "dlmd:\(config.name)", logger: logger) { [weak self] event in
                        guard let node = self else { return }
                        loop.execute { node.corosyncEvent(event) }
                    }
                    do {
                        try link.start()
                    } catch {
                        state = .stopped
                        _ = transport.stop()
                        throw error
                    }
                    corosync = link
                    logger.info(
                        "group services of node \(nodeID) (incarnation \(incarnation)) from corosync (CPG group dlmd:\(config.name)), lock traffic on \(config.node(nodeID)!.address)"
                    )
                } else {
                    member = GroupMember(id: nodeID, settings: config.settings)
                    logger.info(
                        "group services of node \(nodeID) (incarnation \(incarnation)) listening on \(config.node(nodeID)!.address)"
                    )
                    apply(.start(incarnation: incarnation, persisted: initialState, now: Self.now()))
                }
                ticker = eventLoop.scheduleRepeatedTask(initialDelay: Self.tickInterval, delay: Self.tickInterval) {
                    [weak self] _ in
                    self?.ticked()
                }
            }
        }
    }

    /// Stops ticking and closes every channel. A fence command under way runs to its end, but its result is ignored.
    public func stop() -> EventLoopFuture<Void> {
        eventLoop.flatSubmit { [self] in stopNow() }
    }

    func stopNow() -> EventLoopFuture<Void> {
        state = .stopped
        ticker?.cancel()
        ticker = nil
        pending = []
        lockPeers = [:]
        lockTrafficToFlush = []
        corosync?.stop()
        corosync = nil
        return transport?.stop() ?? eventLoop.makeSucceededVoidFuture()
    }

    static func now() -> UInt64 { NIODeadline.now().uptimeNanoseconds }

    /// A tick: the member's clock, lock traffic's retransmissions, and a warning when the loop was busy for half
    /// the suspect timeout or more since the tick before (peers may suspect this node; corosync warns alike when
    /// its main process was not scheduled).
    func ticked() {
        let now = Self.now()
        if let lastTick, now - lastTick >= config.settings.suspectTimeout / 2 {
            logger.warning(
                "the event loop was busy for \((now - lastTick) / 1_000_000) ms: peers suspect a node silent for \(config.settings.suspectTimeout / 1_000_000) ms"
            )
        }
        lastTick = now
        apply(.tick(now: now))
        tickLockTraffic()
    }

    // MARK: The application's requests (from any thread; carried out on the loop)

    public func multicast(_ payload: [UInt8], group: String?) { submit(.multicast(payload: payload, group: group)) }
    public func enterBarrier(_ name: String) { submit(.enterBarrier(name)) }
    public func joinGroup(_ name: String) { submit(.joinGroup(name)) }
    public func leaveGroup(_ name: String) { submit(.leaveGroup(name)) }

    /// The lockspaces whose group the lock service says this node is in (or asks to join). With corosync, this node
    /// is in a CPG group for each (`CorosyncLink.lockspaceGroup`), which corosync's tools show, as they show
    /// dlm_controld's lockspaces; the built-in provider keeps nothing of them (`dlmtool ls` shows the groups).
    /// (`lockspaces` is only read with corosync.)
    public func setLockspaceGroups(_ lockspaces: @autoclosure () -> Set<[UInt8]>) {
        guard case .corosync = config.provider else { return }
        let lockspaces = lockspaces()
        if lockspaces.count > Self.maxLockspaceGroups && !warnedOfLockspaceGroups {
            warnedOfLockspaceGroups = true
            logger.warning(
                "\(lockspaces.count) lockspaces: only the first \(Self.maxLockspaceGroups) in name order get a CPG group"
            )
        }
        let names = Self.lockspaceGroupNames(lockspaces, cluster: config.name)
        eventLoop.execute { [self] in corosync?.setLockspaceGroups(names) }
    }

    /// The CPG groups of `lockspaces`: those of the first `limit` in name order (each group is a connection to
    /// corosync of its own, with its shared-memory buffers).
    static func lockspaceGroupNames(_ lockspaces: Set<[UInt8]>, cluster: String, limit: Int = maxLockspaceGroups)
        -> Set<[UInt8]>
    {
        let first = lockspaces.sorted { $0.lexicographicallyPrecedes($1) }.prefix(limit)
        return Set(first.map { CorosyncLink.lockspaceGroup(cluster: cluster, lockspace: $0) })
    }

    func submit(_ input: GroupInput) {
        if eventLoop.inEventLoop {
            apply(input)
        } else {
            eventLoop.execute { self.apply(input) }
        }
    }

    /// Whether the node runs: started, and not stopped (by `stop` or by a failed persist). On the loop.
    public var isRunning: Bool {
        eventLoop.preconditionInEventLoop()
        return state == .running
    }

    /// Whether the installed view is primary. On the loop.
    public var isPrimary: Bool {
        eventLoop.preconditionInEventLoop()
        return member?.isPrimary ?? false
    }

    /// The installed view. On the loop.
    public var view: View? {
        eventLoop.preconditionInEventLoop()
        return member?.view
    }

    /// Frames refused (bad HMAC, unknown sender, ...: their connection was closed). On the loop.
    public var framesRejected: Int { transport?.framesRejected ?? 0 }

    /// Called on the loop for each refused frame (for diagnostics and tests); set it before `start`.
    public var onFrameRejected: ((PeerFrameError) -> Void)?

    /// Group services frames dropped because their peer was not connected or was backlogged (lock traffic is never
    /// dropped so: `lockTrafficStatus`). On the loop.
    public var framesDropped: Int { transport?.framesDropped ?? 0 }

    // MARK: Driving the member

    func received(_ envelope: PeerEnvelope) {
        let sender = envelope.sender
        guard state == .running else { return }
        lastHeard[sender.node] = .now()
        if sender.incarnation >= incarnations[sender.node] ?? 0 {
            incarnations[sender.node] = sender.incarnation
            if let fencedIncarnation = fenced[sender.node], sender.incarnation > fencedIncarnation {
                fenced[sender.node] = nil
            }
        }
        lockTrafficHeard(sender)
        switch envelope.body {
        case .group(let message):
            apply(.received(message, from: sender))
        case .lockTraffic(let frame):
            receivedLockTraffic(frame, from: sender)
        case .opening:
            break
        }
    }

    func corosyncEvent(_ event: ProviderEvent) {
        if case .lost(let reason) = event, state == .running {
            logger.critical(
                "the connection to corosync is lost (\(reason)): lock requests are held until dlmd restarts")
        }
        apply(.provider(event))
    }

    /// Hands an input to the member and carries out its effects in order. An input that arrives while effects are
    /// carried out (an event handler that multicasts) waits for them, so that events keep their order.
    func apply(_ input: GroupInput) {
        guard state == .running, member != nil else { return }
        pending.append(input)
        guard !processing else { return }
        processing = true
        defer { processing = false }
        var index = 0
        while index < pending.count {
            let next = pending[index]
            index += 1
            effects.removeAll(keepingCapacity: true)
            let wasFenced = member!.wasFenced
            member!.handle(next, into: &effects)
            if !wasFenced && member!.wasFenced { onEvent(.lifeFenced) }
            let batch = effects
            for effect in batch {
                guard carryOut(effect) else {
                    pending = []
                    return
                }
            }
        }
        pending.removeAll(keepingCapacity: true)
        transport?.flush()
    }

    /// Carries out one effect; false if the node stopped.
    func carryOut(_ effect: GroupEffect) -> Bool {
        guard state == .running else { return false }
        switch effect {
        case .send(let message, let node):
            transport?.send(message, from: member!.me, to: node)
        case .persist(let persistent):
            do {
                try persist(persistent)
            } catch {
                logger.critical("cannot persist the group services state, stopping group services: \(error)")
                transport?.flush()
                _ = stopNow()
                return false
            }
        case .viewInstalled(let view, let primary):
            logger.info("installed \(view)\(primary ? " (primary)" : " (not primary: no quorum)")")
            lockTrafficViewInstalled(view, primary: primary)
            onEvent(.viewInstalled(view, primary: primary))
        case .deliver(let delivery):
            onEvent(.delivered(delivery))
        case .barrierCompleted(let name, let view):
            onEvent(.barrierCompleted(name, view: view))
        case .barrierAborted(let name, let view):
            onEvent(.barrierAborted(name, view: view))
        case .groupEvent(let event):
            onEvent(.groupEvent(event))
        case .fence(let node):
            fence(node)
        case .fenceFailed(let node):
            onEvent(.fenceFailed(node, reason: fenceFailures[node] ?? "failed"))
        case .multicastToProvider(let message):
            corosync?.multicast(message)
        }
        return state == .running
    }

    func fence(_ node: NodeID) {
        guard !fencesRunning.contains(node) else {
            // Its result will answer this request too (even if an operator acknowledged an earlier one).
            acknowledgedWhileRunning.remove(node)
            return
        }
        fencesRunning.insert(node)
        logger.warning("fencing node \(node): \(config.fenceCommand) \(node)")
        let loop = eventLoop
        FenceCommand.run(command: config.fenceCommand, node: node, timeout: config.fenceTimeout) { outcome in
            loop.execute { self.fenceDone(node, outcome) }
        }
    }

    /// An operator says node `node` is off (`dlmtool fence-ack`, dlm_tool's `fence_ack`): the fence that this node's
    /// group services wait for counts as done, as if the fence command had succeeded (a command still running is
    /// ignored when it ends). Throws when they are not fencing `node`: only the coordinator of the view being formed
    /// fences.
    public func acknowledgeFence(_ node: NodeID) throws {
        eventLoop.preconditionInEventLoop()
        guard state == .running, let member, member.fencing.contains(node) else {
            let fencing = member?.fencing ?? []
            throw GroupNodeError(
                "node \(nodeID) is not fencing node \(node)"
                    + (fencing.isEmpty
                        ? " (it fences no node: the coordinator of the view being formed fences, `dlmtool status` "
                            + "names the fences a node waits for)"
                        : " (it is fencing node\(fencing.count == 1 ? "" : "s") \(fencing.map(\.description).joined(separator: ", ")))")
            )
        }
        logger.warning("fence of node \(node) acknowledged by an operator: node \(node) is taken for off")
        if fencesRunning.contains(node) { acknowledgedWhileRunning.insert(node) }
        noteFenced(node)
        onEvent(.fenceAcknowledged(node))
        apply(.fenced(node, ok: true))
    }

    func noteFenced(_ node: NodeID) {
        fenced[node] = incarnations[node] ?? 0
        fenceFailures[node] = nil
    }

    /// What membership waits for, each `fencing node N` with why its last run failed, if it did: what an operator
    /// needs before `dlmtool fence-ack`.
    func waitsWithFenceFailures(_ waits: [String]) -> [String] {
        guard !fenceFailures.isEmpty else { return waits }
        let retry = "retried every \(config.settings.fenceRetryInterval / 1_000_000) ms"
        var reasons: [String: String] = [:]
        for (node, reason) in fenceFailures { reasons["fencing node \(node)"] = reason }
        return waits.map { wait in reasons[wait].map { "\(wait) (last run failed: \($0); \(retry))" } ?? wait }
    }

    func fenceDone(_ node: NodeID, _ outcome: FenceOutcome) {
        fencesRunning.remove(node)
        guard state == .running else { return }
        if acknowledgedWhileRunning.remove(node) != nil {
            // (Counted once, when acknowledged: neither a second "fenced" nor a failure to retry.)
            logger.warning(
                "the fence command for node \(node) ended (\(outcome.reason)) after an operator acknowledged the fence")
            onEvent(.fenceCommandEndedAfterAcknowledgement(node, reason: outcome.reason))
            return
        }
        if outcome.ok {
            logger.warning("node \(node) fenced")
            noteFenced(node)
            onEvent(.fenced(node))
        } else if member?.fencing.contains(node) ?? false {
            logger.error("fencing node \(node) failed (\(outcome.reason)); it will be tried again")
            fenceFailures[node] = outcome.reason
        } else {
            // (An operator acknowledged the fence meanwhile, or the view that needed it is gone.)
            logger.warning("fencing node \(node) failed (\(outcome.reason)); no fence of it is awaited any more")
        }
        apply(.fenced(node, ok: outcome.ok))
    }

    // MARK: Status

    /// The node's view of the cluster. On the loop.
    public func status() -> ClusterStatus {
        eventLoop.preconditionInEventLoop()
        let now = NIODeadline.now()
        let view = member?.view
        let alive = Set((member?.aliveMembers ?? []).map(\.node))
        let fencing = Set(member?.fencing ?? []).union(fencesRunning)
        let isCorosync = corosync != nil
        let nodes = config.nodes.map { node -> ClusterStatus.NodeStatus in
            let inView = view?.nodes.contains(node.id) ?? false
            let state: String
            if node.id == nodeID {
                state = "self"
            } else if fencing.contains(node.id) {
                state = "fencing"
            } else if alive.contains(node.id) {
                state = inView ? "member" : "joining"
            } else if fenced[node.id] != nil {
                state = "fenced"
            } else {
                state = inView ? "suspected" : "down"
            }
            // With corosync, a node is heard of as long as corosync has its process in the group.
            let heard = node.id == nodeID || (isCorosync && alive.contains(node.id)) ? now : lastHeard[node.id]
            return ClusterStatus.NodeStatus(
                id: node.id.rawValue, address: node.address, state: state,
                lastHeardMillisecondsAgo: heard.map { UInt64(max(0, (now - $0).nanoseconds)) / 1_000_000 },
                incarnation: node.id == nodeID ? incarnation : incarnations[node.id], votes: node.votes)
        }
        return ClusterStatus(
            clusterName: config.name, nodeID: nodeID.rawValue, incarnation: incarnation,
            view: view.map { view in
                ClusterStatus.ViewStatus(
                    id: view.id.number, coordinator: view.id.coordinator.rawValue,
                    members: view.members.map {
                        ClusterStatus.MemberStatus(node: $0.node.rawValue, incarnation: $0.incarnation)
                    },
                    primary: member?.isPrimary ?? false)
            },
            quorate: member?.isPrimary ?? false,
            waitingFor: state == .running ? waitsWithFenceFailures(member?.waitingFor ?? ["start"]) : ["start"],
            nodes: nodes,
            highestViewNumber: member?.persistent.highestViewNumber ?? initialState.highestViewNumber)
    }
}
