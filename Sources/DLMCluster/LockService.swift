import DLMCore
import DLMWire
import DequeModule
import GroupServices

/// A client connection, as the service numbers it: a slot of its table of clients, and the owner number that the
/// connection's locks carry (never used twice on this node).
public struct ConnectionID: Hashable, Sendable, CustomStringConvertible {
    public var slot: UInt32
    public var owner: UInt64

    public var description: String { "connection \(owner)" }
}

/// What happens to a node's lock service: a client connects, sends a frame, stops sending or goes; time passes; the
/// store commits; group services change the view; work in slices goes on; the node shuts down.
public enum ServiceInput: Sendable {
    /// A frame of a client, at `now` (the shell's monotonic clock, in nanoseconds).
    case frame(ConnectionID, ClientMessage, now: Instant)
    /// A QUERY frame, with what only the shell knows (uptime, sockets, store, cluster) for its report.
    case query(ConnectionID, ClientMessage, ReportEnvironment)
    /// The shell's answer to a FENCE_ACK of `ServiceOutput.fenceAcks`: nil if the fence counts as done, else why not.
    case fenceAcknowledged(ConnectionID, tag: UInt32, refusal: String?)
    /// A frame that could not be decoded: ERROR (tag 0) with this status and message, then the connection closes.
    case malformed(ConnectionID, DLMStatus, String)
    /// The client will send nothing more (a half-close): its answers go out, then the connection closes.
    case inputEnded(ConnectionID)
    /// The connection is gone: its owner's locks are released or orphaned.
    case closed(ConnectionID)
    case tick(now: Instant)
    /// The store holds everything up to this generation (`ServiceOutput.commit`).
    case committed(generation: UInt64)
    /// Group services installed a view: a primary view serves requests, any other holds them.
    case viewInstalled(View, primary: Bool)
    /// A slice of the work done in slices (`ServiceOutput.wantsBulkSlice`).
    case bulkSlice
    /// A clean shutdown: every client is told (GOODBYE) and closed, its persistent locks become orphans.
    case shutdown
    /// A message of another node's lock service (in order per sending node).
    case peer(from: UInt32, PeerMessage)
}

/// What the shell must do after some inputs, in this order: write the store's changes (the frames that wait for
/// them are held by the service until `committed`), write the frames to their connections (in order per
/// connection), close connections (after their frames), and schedule a bulk slice if asked.
public struct ServiceOutput: Sendable {
    /// Store changes to write as one generation.
    public var commit: (generation: UInt64, changes: [StoreChange])?
    /// Frames to send, in order.
    public var frames: [(connection: ConnectionID, message: ServerMessage)] = []
    /// Connections to close once their frames are written.
    public var closes: [ConnectionID] = []
    /// Work in slices waits: send `.bulkSlice` a little later (after the loop has polled its sockets).
    public var wantsBulkSlice = false
    /// Events for the log: (level notice, message, metadata).
    public var notices: [(message: String, metadata: [String: String])] = []
    /// Recoveries that started or ended (also in `notices`), for the shell to announce as it announces views.
    public var recoveries: [RecoveryEvent] = []
    /// Messages for other nodes' lock services, in order (per node, they must arrive in this order).
    public var peerMessages: [(to: UInt32, message: PeerMessage)] = []
    /// Fence acknowledgements of root clients (FENCE_ACK) for the shell's group services; each is answered with
    /// `ServiceInput.fenceAcknowledged`, and the connection's later requests wait for that answer.
    public var fenceAcks: [(connection: ConnectionID, tag: UInt32, node: UInt32)] = []
    /// Connections to stop reading from (`paused`) because `maxQueuedRequests` of their requests wait, or to read
    /// from again; in order.
    public var readPauses: [(connection: ConnectionID, paused: Bool)] = []
    /// Large containers the service is done with (a recovery's lists and the old directory, of up to a million
    /// entries each): the shell lets go of them off its event loop, since freeing one is a step of tens to
    /// hundreds of milliseconds.
    public var discarded: [any Sendable] = []

    public init() {}

    /// Empties the output, keeping the arrays' capacity.
    public mutating func removeAll() {
        frames.removeAll(keepingCapacity: true)
        closes.removeAll(keepingCapacity: true)
        commit = nil
        wantsBulkSlice = false
        if !notices.isEmpty { notices.removeAll() }
        if !recoveries.isEmpty { recoveries.removeAll() }
        if !peerMessages.isEmpty { peerMessages.removeAll(keepingCapacity: true) }
        if !readPauses.isEmpty { readPauses.removeAll() }
        if !discarded.isEmpty { discarded.removeAll() }
        if !fenceAcks.isEmpty { fenceAcks.removeAll() }
    }

    public var isEmpty: Bool {
        commit == nil && frames.isEmpty && closes.isEmpty && !wantsBulkSlice && notices.isEmpty
            && peerMessages.isEmpty && recoveries.isEmpty && readPauses.isEmpty && fenceAcks.isEmpty
    }
}

/// A recovery of the lock space started or ended on this node, for the view it recovers.
public enum RecoveryEvent: Sendable, Hashable {
    case started(view: UInt64, run: UInt64 = 0)
    /// Every member ended phase 1 (directory rebuilt, locks resent to their new masters): phase 2 (rebuild, purge,
    /// replicas, grants) begins.
    case rebuilt(view: UInt64, run: UInt64 = 0)
    case done(view: UInt64, run: UInt64 = 0)
}

/// How a node's lock service is set up.
public struct ServiceConfiguration: Sendable {
    public var nodeID: UInt32
    /// This life of the node (its store's start count); 0 without a store.
    public var incarnation: UInt64
    public var engine: EngineConfig
    /// How often the shell ticks the service, in nanoseconds; a frame that comes later than this after the last
    /// tick ticks the engine first.
    public var tickInterval: UInt64
    /// Whether replies that change persistent state wait for the store's commit (a store with `batch` or `sync`
    /// durability); with `none`, or without a store, nothing waits.
    public var repliesWaitForCommits: Bool
    /// Whether the node has a store at all (else no changes are collected).
    public var hasStore: Bool
    /// A cluster member holds requests until group services agree on a primary view.
    public var isClusterMember: Bool
    /// Resources are mastered across the members of the view (LockService+Mastering.swift); else every resource
    /// is mastered by the node its client talks to.
    public var mastersAcrossNodes: Bool
    /// How long, in nanoseconds, a resource mastered across nodes stays known after its last lock went before
    /// its master drops it from the directory (Linux's `toss_secs`), and a holder forgets a cached master it no
    /// longer uses.
    public var tossDelay: UInt64
    /// How long, in nanoseconds, a new connection may go without its HELLO before it is refused (ETIMEDOUT) and
    /// closed: a client that connects and says nothing does not hold a connection for ever.
    public var helloTimeout: UInt64 = 10_000_000_000
    /// The most client connections at once (`max_connections`); one more is refused with ERROR EAGAIN and closed.
    public var maxConnections = ServiceConfiguration.defaultMaxConnections
    /// The most lockspaces (`max_lockspaces`, those being released included); creating one more is EAGAIN.
    public var maxLockspaces = ServiceConfiguration.defaultMaxLockspaces
    /// The most locks (granted, converting or waiting) one connection holds (`max_locks_per_connection`); a LOCK
    /// past it is EAGAIN. It bounds the requests a connection has waiting too: each is a lock.
    public var maxLocksPerConnection = ServiceConfiguration.defaultMaxLocksPerConnection
    /// The most locks the connections of one user (kernel uid) hold together on this node
    /// (`max_locks_per_user`); a LOCK past it is EAGAIN. Clients without a kernel uid (TCP) are not counted.
    public var maxLocksPerUser = ServiceConfiguration.defaultMaxLocksPerUser
    /// The most requests of one connection that have been read and wait to run (`max_queued_requests`): behind
    /// an earlier request's reply (done in slices, or answered by another node), or held while the node is
    /// stopped. At the cap the shell stops reading from the connection (`ServiceOutput.readPauses`) until half of
    /// them have run. Requests that run and wait in a lock queue are not queued here: they are locks.
    public var maxQueuedRequests = ServiceConfiguration.defaultMaxQueuedRequests
    /// How many entries (resources, locks, process copies) a slice of a recovery phase looks at
    /// (LockService+Recovery.swift, `continueRecovery`). A request on a resource recovery did not touch waits
    /// behind one slice at most: with 4,096, a client of such resources paused for 106-116 ms in a recovery of a
    /// million locks; with 1,024, 40-75 ms (bench/RESULTS.md).
    public var recoverySlice = 1_024

    public static let defaultMaxConnections = 10_000
    public static let defaultMaxLockspaces = 4_096
    public static let defaultMaxLocksPerConnection = 1 << 22
    public static let defaultMaxLocksPerUser = 1 << 24
    public static let defaultMaxQueuedRequests = 1_024

    public init(
        nodeID: UInt32, incarnation: UInt64 = 0, engine: EngineConfig = EngineConfig(),
        tickInterval: UInt64 = 10_000_000, repliesWaitForCommits: Bool = false, hasStore: Bool = false,
        isClusterMember: Bool = false, mastersAcrossNodes: Bool = false, tossDelay: UInt64 = 10_000_000_000
    ) {
        self.tossDelay = tossDelay
        self.nodeID = nodeID
        self.incarnation = incarnation
        self.engine = engine
        self.tickInterval = tickInterval
        self.repliesWaitForCommits = repliesWaitForCommits
        self.hasStore = hasStore
        self.isClusterMember = isClusterMember
        self.mastersAcrossNodes = mastersAcrossNodes
    }
}

/// One node's lock manager as a deterministic state machine: client frames, closed connections, ticks, commits
/// and views go in (`handle`); what the shell must do comes out in one batch (`takeOutput`), as raft's `Ready`.
/// It owns the engine, every client's protocol state, the frames that wait for a commit, the gate that holds
/// requests while the node is outside a primary view, and the replies of work done in slices. It does no I/O and
/// reads no clock; `LockNode` is its shell (docs/ARCHITECTURE.md).
///
/// Ordering rules it keeps:
/// - replies to one connection leave in the order of its requests, each after the commit of what it changed
///   (durability), and later frames of that connection wait behind it;
/// - while stopped, requests that change lock state, and disconnections, wait in arrival order and run on
///   `resume`; PING, QUERY and BYE are answered at once unless earlier requests of the connection wait;
/// - a request done in slices (purge, forced release, FORCEUNLOCK of many sub-locks) answers at its end, and the
///   requests its connection sent after it wait until then.
public struct LockService {
    public let configuration: ServiceConfiguration
    public internal(set) var engine: LockEngine
    /// The clients, by slot (a free slot's owner is 0), and what each holds that is not a plain value: apart, so
    /// that the hot path reads a client's state without retaining its arrays.
    var clients: ContiguousArray<Client> = []
    var queues: ContiguousArray<ClientQueues> = []
    var freeSlots: [UInt32] = []
    /// The slot of each connection, by its owner number (effects name owners).
    var slotsByOwner: [UInt64: UInt32] = [:]
    var clientCount = 0
    var nextOwner: UInt64 = 1
    /// Connections that have not said HELLO yet, oldest first, with the time of the tick before they came.
    var helloDeadlines: Deque<(id: ConnectionID, since: Instant)> = []
    /// The time of the last tick.
    var lastTick: Instant = 0
    /// Reused for every input, so that the hot path allocates no array.
    var effects: [Effect] = []
    var output = ServiceOutput()
    var isShuttingDown = false

    // Durability (LockService+Durability.swift).
    /// Changes of the inputs since the last `takeOutput`.
    var pendingChanges: [StoreChange] = []
    /// The generation the current inputs' changes belong to.
    var openGeneration: UInt64 = 1
    /// The highest generation known to be in the store.
    var storeCommittedGeneration: UInt64 = 0
    /// Every generation up to this one is in the store and on its replicas' nodes: what waited for it went out.
    var releasedGeneration: UInt64 = 0
    /// The closed generations that still wait for the store or for replica acknowledgements, oldest first.
    var unreleased: Deque<GenerationWait> = []
    /// The nodes this generation's value replicas went to (LockService+Replicas.swift).
    var openReplicaBackups: Set<UInt32> = []
    /// While handling an input whose changes must be committed first: the generation its frames wait for.
    var holdingGeneration: UInt64?
    /// The generation of the last change recorded.
    var lastChangedGeneration: UInt64 = 0

    // The gate (LockService+Gate.swift).
    /// Non-empty while the node is stopped (a cluster member outside a primary view): what it waits for.
    var stopReasons: [String] = []
    /// What arrived while stopped, in order.
    var heldInputs: Deque<HeldInput> = []

    // Work in slices (LockService+Bulk.swift).
    var bulkReplies: [UInt64: BulkReply] = [:]
    var nextBulkContext: UInt64 = 1
    var forceUnlockReplies: [LockID: (owner: OwnerID, tag: UInt32)] = [:]
    /// Connections whose requests waited behind a reply that has now gone out (`drainDeferred`).
    var connectionsWithDeferredRequests: [ConnectionID] = []
    /// How often a limit refused (the status report's `limits`).
    var limitRefusals = (connections: 0, lockspaces: 0, locks: 0)
    /// Connections the shell does not read from because their queued requests reached `maxQueuedRequests`
    /// (LockService+Backpressure.swift; few at a time), and how often one was paused.
    var queuePausedConnections: [ConnectionID] = []
    var queuePauses = 0
    /// Connections whose input ended (half-closed or gone) while frames they sent still waited
    /// (LockService+Endings.swift).
    var endedConnections: [ConnectionID] = []

    /// Resource mastering across nodes (LockService+Mastering.swift).
    var mastering = Mastering()

    public init(configuration: ServiceConfiguration, engine: LockEngine? = nil) {
        var configuration = configuration
        // Value blocks in use survive their master (LockService+Replicas.swift).
        if configuration.mastersAcrossNodes {
            configuration.engine.replicatesValueBlocks = true
            configuration.engine.reportsFreedResources = true
        }
        self.configuration = configuration
        self.engine = engine ?? LockEngine(config: configuration.engine)
        effects.reserveCapacity(64)
        output.frames.reserveCapacity(64)
        if configuration.isClusterMember { stopReasons = ["view agreement"] }
        mastering.members = [configuration.nodeID]
        mastering.memberIncarnations = [configuration.nodeID: configuration.incarnation]
        mastering.viewMembers = mastering.memberIncarnations
        mastering.copies.localNode = configuration.nodeID
    }

    /// The owner identity of a connection's locks: this node, this life, the connection's number.
    func owner(_ id: ConnectionID) -> OwnerID { owner(local: id.owner) }

    /// The cluster-wide owner of this node's owner number `local` (a connection's, or a process copy's owner).
    func owner(local: UInt64) -> OwnerID {
        OwnerID(node: configuration.nodeID, incarnation: configuration.incarnation, local: local)
    }

    // MARK: Clients

    /// A new connection: its id. A node that is shutting down refuses it (ERROR ESHUTDOWN, then close).
    /// `credentials`: who the kernel says the client is (a Unix socket's `SO_PEERCRED`); nil when unknown (TCP).
    public mutating func connect(credentials: ClientCredentials? = nil) -> ConnectionID {
        let slot: UInt32
        if let free = freeSlots.popLast() {
            slot = free
        } else {
            slot = UInt32(clients.count)
            clients.append(Client(id: ConnectionID(slot: slot, owner: 0)))
            queues.append(ClientQueues())
        }
        let id = ConnectionID(slot: slot, owner: nextOwner)
        nextOwner += 1
        clients[Int(slot)] = Client(id: id)
        clients[Int(slot)].credentials = credentials
        clients[Int(slot)].isRoot = credentials?.uid == 0
        queues[Int(slot)] = ClientQueues()
        slotsByOwner[id.owner] = slot
        clientCount += 1
        if isShuttingDown {
            refuse(id, status: .shuttingDown, message: "dlmd is shutting down")
        } else if clientCount > configuration.maxConnections {
            // Not logged one by one: a flood of connections must not flood the log too (the status counts them).
            limitRefusals.connections += 1
            refuse(
                id, status: .tryAgain,
                message: "dlmd serves at most \(configuration.maxConnections) connections (max_connections)",
                logged: false)
        }
        helloDeadlines.append((id, lastTick))
        return id
    }

    /// The client of a live connection id.
    @inline(__always)
    func isLive(_ id: ConnectionID) -> Bool {
        Int(id.slot) < clients.count && clients[Int(id.slot)].id == id
    }

    /// Forgets a connection for good (its frames and owner are done with).
    mutating func forget(_ id: ConnectionID) {
        guard isLive(id) else { return }
        clients[Int(id.slot)] = Client(id: ConnectionID(slot: id.slot, owner: 0))
        queues[Int(id.slot)] = ClientQueues()
        slotsByOwner[id.owner] = nil
        freeSlots.append(id.slot)
        clientCount -= 1
    }

    /// The number of connections the service knows (for the status report).
    public var connectionCount: Int { clientCount }

    /// The store alarm, as the shell reads it from its store: while it is on, a new persistent lock (in the
    /// engine, whichever node asks) and a new lockspace are refused with ENOSPC; everything else goes on.
    public var storeIsFull: Bool {
        get { engine.refusesNewPersistentLocks }
        set { engine.refusesNewPersistentLocks = newValue }
    }

    // MARK: Inputs

    /// Handles one input; what the shell must do accumulates until `takeOutput`.
    public mutating func handle(_ input: ServiceInput) {
        switch input {
        case .frame(let id, let message, let now):
            receive(message, from: id, now: now, environment: nil)
        case .query(let id, let message, let environment):
            receive(message, from: id, now: nil, environment: environment)
        case .malformed(let id, let status, let message):
            refuse(id, status: status, message: message)
        case .fenceAcknowledged(let id, let tag, let refusal):
            fenceAcknowledged(id, tag: tag, refusal: refusal)
        case .inputEnded(let id):
            inputEnded(id)
        case .closed(let id):
            disconnected(id)
        case .tick(let now):
            if lastTick == 0 {
                // The first tick: connections made before it count from now (there was no time before).
                for index in helloDeadlines.indices { helloDeadlines[index].since = now }
            }
            lastTick = now
            refuseSilentConnections(now: now)
            advanceClock(to: now)
            if mastersAcrossNodes {
                tossIdle(now: now)
                searchDeadlocksAcrossNodes(now: now)
                if !mastering.released.isEmpty { leaveReleasedGroups() }
            }
        case .committed(let generation):
            committed(upTo: generation)
        case .viewInstalled(let view, let primary):
            viewInstalled(view, primary: primary)
        case .bulkSlice:
            // (Recovery first: the node is stopped while it recovers, and the engine's work waits for its end.)
            if hasRecoveryWork {
                continueRecovery()
            } else {
                if mastering.endingLife != nil { continueEndingLife() }
                if mastering.copies.hasExiting { mastering.copies.forgetExited(budget: configuration.engine.bulkSlice) }
                if mastering.rebuilt.hasExiting {
                    mastering.rebuilt.forgetExited(budget: configuration.engine.bulkSlice)
                }
                if engine.hasBulkWork, !isStopped, !isHoldingForDeadlock { run(.continueBulkWork, reply: nil) }
            }
        case .shutdown:
            shutdown()
        case .peer(let node, let message):
            receive(message, from: node)
        }
        // Messages to this node itself, requests that waited behind an answer and the ends of connections whose
        // frames have all run: each may cause the others.
        repeat {
            while !mastering.loopback.isEmpty || !connectionsWithDeferredRequests.isEmpty {
                while let message = mastering.loopback.popFirst() { receive(message, from: configuration.nodeID) }
                if !connectionsWithDeferredRequests.isEmpty { drainDeferred() }
            }
        } while !endedConnections.isEmpty && finishEndedConnections()
        if !queuePausedConnections.isEmpty { resumeReadsOfDrainedQueues() }
        // Only this input's frames and messages wait for its changes (a hold set outside `run`, e.g. by recovery's
        // replication, ends here too).
        holdingGeneration = nil
    }

    /// A clean shutdown: every client is told (GOODBYE) and closed, the owners that left while the node was
    /// stopped and those still connected exit (their persistent locks become orphans), and work in slices ends, so
    /// that the last commit holds it all.
    mutating func shutdown() {
        isShuttingDown = true
        heldInputs.removeAll()
        for slot in clients.indices {
            let client = clients[slot]
            // Owners whose exit waited (for the gate, or behind frames they sent) exit too.
            guard client.id.owner != 0, !client.hasExited else { continue }
            if !client.isGone, client.state != .closing {
                deliver(client.id, .goodbye(reason: "dlmd is shutting down"))
                close(client.id)
            }
            clients[slot].hasExited = true
            run(.ownerExited(owner(client.id)), reply: nil)
        }
        while engine.hasBulkWork { run(.continueBulkWork, reply: nil) }
        while mastering.endingLife != nil { continueEndingLife() }
        while mastering.copies.hasExiting { mastering.copies.forgetExited(budget: configuration.engine.bulkSlice) }
    }

    /// What the shell must do now (see `ServiceOutput`): swapped with `spare`, which the shell emptied after the
    /// last batch (`ServiceOutput.removeAll`), so that no array is allocated per batch. The service then starts a
    /// new batch.
    public mutating func swapOutput(_ spare: inout ServiceOutput) {
        closeGeneration()
        output.wantsBulkSlice =
            (engine.hasBulkWork && !isStopped && !isHoldingForDeadlock) || hasRecoveryWork
            || mastering.endingLife != nil || mastering.copies.hasExiting || mastering.rebuilt.hasExiting
        swap(&output, &spare)
        output.removeAll()
    }

    /// What the shell must do now, as a value (for tests).
    public mutating func takeOutput() -> ServiceOutput {
        var taken = ServiceOutput()
        swapOutput(&taken)
        return taken
    }

    /// How many frames wait in the current batch (the shell takes the output early past a bound).
    public var pendingFrames: Int { output.frames.count }

    /// Passes the time to the engine, which runs due timeouts and deadlock searches.
    mutating func advanceClock(to now: Instant) {
        guard !isStopped else { return }
        if isHoldingForDeadlock {
            // A timeout or a local deadlock pass could end a wait of the cycle being decided.
            mastering.deadlocks.holds.clockBehind = max(mastering.deadlocks.holds.clockBehind ?? 0, now)
            return
        }
        run(.tick(now: now), reply: nil)
    }

    /// Connections that have not said HELLO within `helloTimeout` are refused (ETIMEDOUT) and closed.
    mutating func refuseSilentConnections(now: Instant) {
        while let first = helloDeadlines.first, first.since &+ configuration.helloTimeout <= now {
            helloDeadlines.removeFirst()
            guard isLive(first.id), clients[Int(first.id.slot)].state == .awaitingHello else { continue }
            let seconds = Double(configuration.helloTimeout) / 1e9
            refuse(first.id, status: .timedOut, message: "no HELLO within \(seconds) s of connecting")
        }
    }

    /// A malformed or out-of-order frame, or a connection past a limit: ERROR with tag 0, then this connection
    /// closes; `logged`: a notice says so.
    mutating func refuse(_ id: ConnectionID, status: DLMStatus, message: String, logged: Bool = true) {
        guard isLive(id), clients[Int(id.slot)].state != .closing else { return }
        if logged {
            output.notices.append(
                (
                    "closing a client after a bad frame",
                    ["owner": "\(id.owner)", "pid": "\(clients[Int(id.slot)].pid)", "error": message]
                ))
        }
        deliver(id, .error(tag: 0, status: status, message: message))
        close(id)
    }

    /// Closes a connection once its frames are out: frames that wait for a commit go first, so a client that
    /// half-closes (or says BYE) still gets every answer, in order (Protocol/CLIENT.md §9).
    mutating func close(_ id: ConnectionID) {
        guard isLive(id) else { return }
        clients[Int(id.slot)].state = .closing
        if clients[Int(id.slot)].lastHeldGeneration == 0 {
            output.closes.append(id)
        } else {
            clients[Int(id.slot)].closeWhenSent = true
        }
    }

    /// The connection is gone: its owner's locks are released or orphaned, once the frames it sent before have run
    /// (LockService+Endings.swift) and the gate lets it.
    mutating func disconnected(_ id: ConnectionID) {
        guard isLive(id), !clients[Int(id.slot)].isGone else { return }
        clients[Int(id.slot)].isGone = true
        if clients[Int(id.slot)].state == .ready, hasWaitingFrames(id) {
            waitForFramesBeforeEnd(id)
            return
        }
        clients[Int(id.slot)].state = .closing
        exitOrWait(id)
    }

    /// The owner exits now, or once the gate or a deadlock decision's hold lets it.
    mutating func exitOrWait(_ id: ConnectionID) {
        if isStopped {
            heldInputs.append(.exited(id))
        } else if isHoldingForDeadlock {
            waitForDeadlockDecision(.exited(id))
        } else {
            ownerExited(id)
        }
    }

    /// The owner's locks are released or orphaned; the connection is forgotten once nothing waits for it.
    mutating func ownerExited(_ id: ConnectionID) {
        clients[Int(id.slot)].hasExited = true
        run(.ownerExited(owner(id)), reply: nil)
        mastering.rebuilt.forget(owner: owner(id))
        remoteOwnerExited(id)
        if clients[Int(id.slot)].lastHeldGeneration == 0 { forget(id) }
    }
}

/// A client connection's protocol state: plain values only.
struct Client {
    enum State {
        case awaitingHello
        case ready
        case closing
    }

    /// Owner 0: a free slot.
    let id: ConnectionID
    var state = State.awaitingHello
    /// The pid its locks carry (ClientCredentials.swift, `processID`).
    var pid: UInt32 = 0
    var credentials: ClientCredentials?
    /// The kernel says it is root: no permission check (read on every LOCK without copying `credentials`, whose
    /// groups array would be retained and released).
    var isRoot = false
    /// Lockspaces (ids) it was found to have read and write permission on: checked once per lockspace, on open or
    /// on its first LOCK there (LockService+Access.swift).
    var lockspaces: [UInt32] = []
    /// The account of its user (`LockEngine.account(ofUser:)`), or -1 (no kernel uid).
    var account: Int32 = -1
    /// Its owner's slot in the engine (`LockEngine.ownerSlotNumber`), from its HELLO on; -1 before.
    var engineSlot: Int32 = -1
    /// The generation the last of its held frames waits for; 0 when none wait.
    var lastHeldGeneration: UInt64 = 0
    /// Close once no frame waits.
    var closeWhenSent = false
    /// Its input ended while frames it sent still waited: it closes (or its owner exits) once they have run.
    var endsAfterWaitingFrames = false
    /// The shell reported the connection gone.
    var isGone = false
    /// Its owner's locks were released (`ownerExited`): once no frame waits, the connection is forgotten. (An exit
    /// held while the node is stopped has not run yet.)
    var hasExited = false
    /// Requests of this connection held while the node is stopped (LockService+Gate.swift).
    var heldRequests = 0
    /// A request of this connection is done in slices: its reply comes at the end, and the requests after it wait
    /// (`ClientQueues.deferredRequests`).
    var awaitingReply = false

    init(id: ConnectionID) { self.id = id }
}

/// What a client connection holds that is not a plain value.
struct ClientQueues {
    /// Frames waiting for a store commit, by the generation they wait for, oldest first.
    var held: [(generation: UInt64, messages: [ServerMessage])] = []
    /// Requests that wait behind a reply done in slices, with what a QUERY among them needs for its report.
    var deferredRequests: Deque<(message: ClientMessage, environment: ReportEnvironment?)> = []
    var name = ""
}

extension LockService {
    /// Gives back what the store kept, before the node serves: the lockspaces, then every persistent lock as an
    /// orphan with its value block. Returns how many locks came back and the changes to write before serving
    /// (the restored resources again: their volatile holders are gone).
    public mutating func restore(
        lockspaces: [(name: [UInt8], valueBlockLength: Int, access: LockspaceAccess?)], resources: [StoredResource]
    ) throws(DLMError) -> (locks: Int, changes: [StoreChange]) {
        var changes: [StoreChange] = []
        func apply(_ input: Input) throws(DLMError) {
            effects.removeAll(keepingCapacity: true)
            engine.handle(input, into: &effects)
            for effect in effects {
                switch effect {
                case .refused(let error): throw error
                case .persist(let entry): changes.append(.journal(entry))
                default: break
                }
            }
        }
        for lockspace in lockspaces {
            try apply(
                .openLockspace(
                    name: lockspace.name, valueBlockLength: lockspace.valueBlockLength, create: true,
                    creator: lockspace.access))
        }
        for resource in resources {
            do throws(DLMError) {
                try apply(.restore(resource))
            } catch {
                throw DLMError(error.status, "cannot restore resource \(resource.resource.path) of the store: \(error)")
            }
        }
        return (engine.lockCount, changes)
    }
}
