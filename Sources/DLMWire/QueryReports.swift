/// The JSON objects of QUERY_REPLY (Protocol/CLIENT.md §8), which `dlmtool --json` prints as they are.

public struct StatusReport: Codable, Sendable, Hashable {
    public var nodeID: UInt32
    public var version: String
    public var pid: Int32
    public var uptimeSeconds: Double
    public var socket: String?
    public var listen: String?
    public var dataDirectory: String?
    public var lockspaces: Int
    public var resources: Int
    public var locks: Int
    public var connections: Int
    /// The node's store, if it has one.
    public var store: Store?
    /// This life of the node: counted up (and persisted) at every start; 0 for a node without a store.
    public var incarnation: UInt64
    /// Whether the node may grant: always for a standalone node; for a cluster member, while it is in a primary
    /// view (a majority of the expected votes) that is ready for recovery.
    public var quorate: Bool
    /// The installed membership view; nil for a standalone node or before the first view.
    public var view: View?
    /// What lock requests wait for; `waitingFor` is empty when the node serves requests.
    public var recovery: Recovery
    /// The cluster this node is a member of (`dlmd --config FILE --node-id N`); nil when standalone.
    public var cluster: Cluster?
    /// The event loop's busy polling (`dlmd --busy-poll`); nil when off.
    public var busyPoll: BusyPollStatus?
    /// Work the engine does in slices between requests; nil from a server that does not report it.
    public var work: Work?
    /// The node's limits and how often they refused or closed (docs/SECURITY.md); nil from an older server.
    public var limits: Limits?
    /// TLS for TCP clients (`--tls-cert`); nil when dlmd takes none.
    public var tls: TLSStatus?

    /// How TLS clients fared: handshakes refused (a certificate refused by either side, no common version, a
    /// connection that sent something else than TLS, or none within the deadline), and why the last one was.
    public struct TLSStatus: Codable, Sendable, Hashable {
        public var handshakesRefused: Int
        public var lastRefusal: String?

        enum CodingKeys: String, CodingKey {
            case handshakesRefused = "handshakes_refused"
            case lastRefusal = "last_refusal"
        }

        public init(handshakesRefused: Int, lastRefusal: String?) {
            self.handshakesRefused = handshakesRefused
            self.lastRefusal = lastRefusal
        }
    }

    /// The limits a client can meet: connections and lockspaces (refused with EAGAIN), and output a client has not
    /// read (reading from it pauses past `outputPauseBytes`; it is closed past `outputLimitBytes`).
    public struct Limits: Codable, Sendable, Hashable {
        public var maxConnections: Int
        public var maxLockspaces: Int
        public var connectionsRefused: Int
        public var lockspacesRefused: Int
        /// The most locks of one connection, and of one user's connections (nil from an older dlmd).
        public var maxLocksPerConnection: Int?
        public var maxLocksPerUser: Int?
        /// LOCK requests refused for passing either.
        public var locksRefused: Int?
        /// From the shell, which holds the sockets; nil in-process.
        public var outputPauseBytes: Int?
        public var outputLimitBytes: Int?
        /// Connections not read from now, because their unread output is past the pause mark.
        public var readsPaused: Int?
        public var closedForOutput: Int?
        /// The most requests of one connection that wait to run (`max_queued_requests`); connections not read from
        /// now because that many wait, and how often that happened (nil from an older dlmd).
        public var maxQueuedRequests: Int?
        public var readsPausedForQueue: Int?
        public var queuePauses: Int?

        enum CodingKeys: String, CodingKey {
            case maxConnections = "max_connections"
            case maxLockspaces = "max_lockspaces"
            case connectionsRefused = "connections_refused"
            case lockspacesRefused = "lockspaces_refused"
            case maxLocksPerConnection = "max_locks_per_connection"
            case maxLocksPerUser = "max_locks_per_user"
            case locksRefused = "locks_refused"
            case outputPauseBytes = "output_pause_bytes"
            case outputLimitBytes = "output_limit_bytes"
            case readsPaused = "reads_paused"
            case closedForOutput = "closed_for_output"
            case maxQueuedRequests = "max_queued_requests"
            case readsPausedForQueue = "reads_paused_for_queue"
            case queuePauses = "queue_pauses"
        }

        public init(
            maxConnections: Int, maxLockspaces: Int, connectionsRefused: Int, lockspacesRefused: Int,
            maxLocksPerConnection: Int? = nil, maxLocksPerUser: Int? = nil, locksRefused: Int? = nil,
            outputPauseBytes: Int? = nil, outputLimitBytes: Int? = nil, readsPaused: Int? = nil,
            closedForOutput: Int? = nil, maxQueuedRequests: Int? = nil, readsPausedForQueue: Int? = nil,
            queuePauses: Int? = nil
        ) {
            self.maxConnections = maxConnections
            self.maxLockspaces = maxLockspaces
            self.connectionsRefused = connectionsRefused
            self.lockspacesRefused = lockspacesRefused
            self.maxLocksPerConnection = maxLocksPerConnection
            self.maxLocksPerUser = maxLocksPerUser
            self.locksRefused = locksRefused
            self.outputPauseBytes = outputPauseBytes
            self.outputLimitBytes = outputLimitBytes
            self.readsPaused = readsPaused
            self.closedForOutput = closedForOutput
            self.maxQueuedRequests = maxQueuedRequests
            self.readsPausedForQueue = readsPausedForQueue
            self.queuePauses = queuePauses
        }
    }

    /// Work done in slices (exits, purges and forced releases with many locks; deadlock passes).
    public struct Work: Codable, Sendable, Hashable {
        /// Bulk jobs (an exit, a purge, a forced release) not finished yet.
        public var bulkJobs: Int
        /// Deadlock passes run since the start, and whether one is in progress.
        public var deadlockPasses: Int
        public var deadlockPassRunning: Bool
        /// In a cluster mastering across nodes: the searches for deadlocks across nodes this node started, and the
        /// victims it decided (nil outside one).
        public var clusterDeadlockSearches: Int?
        public var clusterDeadlockVictims: Int?

        enum CodingKeys: String, CodingKey {
            case bulkJobs = "bulk_jobs"
            case deadlockPasses = "deadlock_passes"
            case deadlockPassRunning = "deadlock_pass_running"
            case clusterDeadlockSearches = "cluster_deadlock_searches"
            case clusterDeadlockVictims = "cluster_deadlock_victims"
        }

        public init(
            bulkJobs: Int, deadlockPasses: Int, deadlockPassRunning: Bool, clusterDeadlockSearches: Int? = nil,
            clusterDeadlockVictims: Int? = nil
        ) {
            self.bulkJobs = bulkJobs
            self.deadlockPasses = deadlockPasses
            self.deadlockPassRunning = deadlockPassRunning
            self.clusterDeadlockSearches = clusterDeadlockSearches
            self.clusterDeadlockVictims = clusterDeadlockVictims
        }
    }

    public struct BusyPollStatus: Codable, Sendable, Hashable {
        /// How long the loop polls after its last read, in microseconds.
        public var windowMicroseconds: Int64
        /// How many times it went round polling since the start.
        public var polls: UInt64

        enum CodingKeys: String, CodingKey {
            case windowMicroseconds = "window_us"
            case polls
        }

        public init(windowMicroseconds: Int64, polls: UInt64) {
            self.windowMicroseconds = windowMicroseconds
            self.polls = polls
        }
    }

    /// An agreed membership view (group services).
    public struct View: Codable, Sendable, Hashable {
        /// The view number; it increases at every view change, across restarts.
        public var id: UInt64
        /// The node that proposed the view (and orders its messages).
        public var coordinator: UInt32
        public var members: [UInt32]
        public var primary: Bool

        public init(id: UInt64, coordinator: UInt32, members: [UInt32], primary: Bool) {
            self.id = id
            self.coordinator = coordinator
            self.members = members
            self.primary = primary
        }
    }

    /// Lock requests are held (not refused) while the node is not quorate, as the kernel DLM stops a lockspace
    /// during recovery.
    public struct Recovery: Codable, Sendable, Hashable {
        /// For instance "view agreement", "quorum", "fencing node 3"; empty when requests are served.
        public var waitingFor: [String]
        /// Requests (and disconnections) received while stopped, handled in order once the node is quorate.
        public var heldRequests: Int
        /// A cluster member's lock recovery (docs/RECOVERY.md): the view of the run under way, its phase (1
        /// rebuild, 2 purge and grant) and the members whose end of that phase has not come yet; nil when none
        /// runs. `recoveredView`: the view of the last completed run.
        public var view: UInt64?
        public var phase: Int?
        public var waitingForNodes: [UInt32]?
        public var recoveredView: UInt64?

        enum CodingKeys: String, CodingKey {
            case waitingFor = "waiting_for"
            case heldRequests = "held_requests"
            case view, phase
            case waitingForNodes = "waiting_for_nodes"
            case recoveredView = "recovered_view"
        }

        public init(
            waitingFor: [String], heldRequests: Int, view: UInt64? = nil, phase: Int? = nil,
            waitingForNodes: [UInt32]? = nil, recoveredView: UInt64? = nil
        ) {
            self.waitingFor = waitingFor
            self.heldRequests = heldRequests
            self.view = view
            self.phase = phase
            self.waitingForNodes = waitingForNodes
            self.recoveredView = recoveredView
        }
    }

    public struct Cluster: Codable, Sendable, Hashable {
        public var name: String
        public var expectedVotes: Int
        /// The votes a primary view needs.
        public var quorumVotes: Int
        /// With `auto_tie_breaker`: the node with which exactly half of the expected votes is enough; nil without.
        public var tieBreakerNode: UInt32?
        /// The highest view number this node has promised or installed (persisted).
        public var highestView: UInt64
        public var nodes: [Node]
        /// What this node's membership waits for, whether or not the lock service is stopped meanwhile (a view
        /// change under way, `fencing node N`, with why its last run failed); empty when settled. Absent from
        /// reports of older dlmd.
        public var waitingFor: [String]?

        /// A configured node as this node sees it.
        public struct Node: Codable, Sendable, Hashable {
            public var nodeID: UInt32
            public var address: String
            public var votes: Int
            /// "self", "member", "joining", "suspected", "down", "fencing", "fenced".
            public var state: String
            /// Milliseconds since a frame from it was last accepted; nil if never (or for this node).
            public var lastHeardMilliseconds: UInt64?
            /// The incarnation it last spoke as.
            public var incarnation: UInt64?

            enum CodingKeys: String, CodingKey {
                case nodeID = "node_id"
                case address, votes, state
                case lastHeardMilliseconds = "last_heard_ms"
                case incarnation
            }

            public init(
                nodeID: UInt32, address: String, votes: Int, state: String, lastHeardMilliseconds: UInt64?,
                incarnation: UInt64?
            ) {
                self.nodeID = nodeID
                self.address = address
                self.votes = votes
                self.state = state
                self.lastHeardMilliseconds = lastHeardMilliseconds
                self.incarnation = incarnation
            }
        }

        enum CodingKeys: String, CodingKey {
            case name
            case expectedVotes = "expected_votes"
            case quorumVotes = "quorum_votes"
            case tieBreakerNode = "tie_breaker_node"
            case highestView = "highest_view"
            case nodes
            case waitingFor = "waiting_for"
        }

        public init(
            name: String, expectedVotes: Int, quorumVotes: Int, tieBreakerNode: UInt32? = nil, highestView: UInt64,
            nodes: [Node], waitingFor: [String]? = nil
        ) {
            self.waitingFor = waitingFor
            self.name = name
            self.expectedVotes = expectedVotes
            self.quorumVotes = quorumVotes
            self.tieBreakerNode = tieBreakerNode
            self.highestView = highestView
            self.nodes = nodes
        }
    }

    /// What `dlmtool status` shows of the store.
    public struct Store: Codable, Sendable, Hashable {
        public var path: String
        public var durability: String
        public var incarnation: UInt64
        public var mapSize: Int
        public var usedBytes: Int
        public var lastTransaction: Int
        /// Seconds since 1970 of the last commit by the store's thread.
        public var lastCommit: Double?
        /// The store alarm: "full" (its data reached `map_size`: new persistent locks and lockspaces are refused
        /// with ENOSPC until unlocks make room) or "failed" (a commit or sync failed: changes to persistent state
        /// are no longer acknowledged); absent when neither.
        public var alarm: String?
        /// Why the store failed.
        public var failure: String?

        enum CodingKeys: String, CodingKey {
            case path, durability, incarnation, alarm, failure
            case mapSize = "map_size"
            case usedBytes = "used_bytes"
            case lastTransaction = "last_transaction"
            case lastCommit = "last_commit"
        }

        public init(
            path: String, durability: String, incarnation: UInt64, mapSize: Int, usedBytes: Int, lastTransaction: Int,
            lastCommit: Double?, alarm: String? = nil, failure: String? = nil
        ) {
            self.path = path
            self.durability = durability
            self.incarnation = incarnation
            self.mapSize = mapSize
            self.usedBytes = usedBytes
            self.lastTransaction = lastTransaction
            self.lastCommit = lastCommit
            self.alarm = alarm
            self.failure = failure
        }
    }

    enum CodingKeys: String, CodingKey {
        case store
        case nodeID = "node_id"
        case version, pid
        case uptimeSeconds = "uptime_seconds"
        case socket, listen
        case dataDirectory = "data_dir"
        case lockspaces, resources, locks, connections
        case incarnation, quorate, view, recovery, cluster
        case busyPoll = "busy_poll"
        case work, limits, tls
    }

    public init(
        nodeID: UInt32, version: String, pid: Int32, uptimeSeconds: Double, socket: String?, listen: String?,
        dataDirectory: String?, lockspaces: Int, resources: Int, locks: Int, connections: Int, store: Store? = nil,
        incarnation: UInt64 = 0, quorate: Bool = true, view: View? = nil,
        recovery: Recovery = Recovery(waitingFor: [], heldRequests: 0), cluster: Cluster? = nil,
        busyPoll: BusyPollStatus? = nil, work: Work? = nil, limits: Limits? = nil, tls: TLSStatus? = nil
    ) {
        self.tls = tls
        self.limits = limits
        self.busyPoll = busyPoll
        self.work = work
        self.store = store
        self.incarnation = incarnation
        self.quorate = quorate
        self.view = view
        self.recovery = recovery
        self.cluster = cluster
        self.nodeID = nodeID
        self.version = version
        self.pid = pid
        self.uptimeSeconds = uptimeSeconds
        self.socket = socket
        self.listen = listen
        self.dataDirectory = dataDirectory
        self.lockspaces = lockspaces
        self.resources = resources
        self.locks = locks
        self.connections = connections
    }
}

public struct LockspacesReport: Codable, Sendable, Hashable {
    public struct Entry: Codable, Sendable, Hashable {
        public var name: String
        public var id: UInt32
        public var lvbLength: Int
        public var resources: Int
        public var locks: Int
        /// In a cluster: the nodes the lockspace spans (the view's members: a lockspace spans the cluster).
        public var members: [UInt32]?
        /// Its permission bits (octal, "0600"), creator's uid and gid on this node; absent while no client of this
        /// node has created it (it exists here for other nodes' locks).
        public var mode: String?
        public var uid: UInt32?
        public var gid: UInt32?

        enum CodingKeys: String, CodingKey {
            case name, id
            case lvbLength = "lvb_length"
            case resources, locks, members, mode, uid, gid
        }

        public init(
            name: String, id: UInt32, lvbLength: Int, resources: Int, locks: Int, members: [UInt32]? = nil,
            mode: String? = nil, uid: UInt32? = nil, gid: UInt32? = nil
        ) {
            self.name = name
            self.id = id
            self.lvbLength = lvbLength
            self.resources = resources
            self.locks = locks
            self.members = members
            self.mode = mode
            self.uid = uid
            self.gid = gid
        }
    }

    public var lockspaces: [Entry]
    /// In a cluster: the recovery state the lockspaces share (the node recovers as a whole).
    public var recovery: StatusReport.Recovery?

    public init(lockspaces: [Entry], recovery: StatusReport.Recovery? = nil) {
        self.lockspaces = lockspaces
        self.recovery = recovery
    }
}

public struct LockDebugReport: Codable, Sendable, Hashable {
    public struct Lock: Codable, Sendable, Hashable {
        public var id: String
        public var grantedMode: String?
        public var requestedMode: String?
        public var owner: String
        public var pid: Int32
        /// The uid of the owner's process, when that is a live client of the reporting node that the kernel
        /// named (a Unix-socket client); nil otherwise.
        public var uid: UInt32?
        public var flags: String
        public var waitingMilliseconds: Double?
        public var parent: String?
        public var fencingToken: UInt64
        /// In a cluster: the node of the lock's holder (nil for an orphan).
        public var node: UInt32?

        enum CodingKeys: String, CodingKey {
            case id
            case grantedMode = "granted_mode"
            case requestedMode = "requested_mode"
            case owner, pid, uid, flags
            case waitingMilliseconds = "waiting_ms"
            case parent
            case fencingToken = "fencing_token"
            case node
        }

        public init(
            id: String, grantedMode: String?, requestedMode: String?, owner: String, pid: Int32, flags: String,
            waitingMilliseconds: Double?, parent: String?, fencingToken: UInt64, node: UInt32? = nil, uid: UInt32? = nil
        ) {
            self.node = node
            self.uid = uid
            self.id = id
            self.grantedMode = grantedMode
            self.requestedMode = requestedMode
            self.owner = owner
            self.pid = pid
            self.flags = flags
            self.waitingMilliseconds = waitingMilliseconds
            self.parent = parent
            self.fencingToken = fencingToken
        }
    }

    public struct Resource: Codable, Sendable, Hashable {
        public var name: String
        public var nameHex: String
        public var path: [String]
        public var master: UInt32
        public var lvbHex: String
        public var lvbSequence: UInt64
        public var lvbValid: Bool
        public var fencingToken: UInt64
        public var granted: [Lock]
        public var converting: [Lock]
        public var waiting: [Lock]
        /// In a cluster: the resource's directory node in the current view.
        public var directory: UInt32?

        enum CodingKeys: String, CodingKey {
            case name
            case nameHex = "name_hex"
            case path, master, directory
            case lvbHex = "lvb_hex"
            case lvbSequence = "lvb_sequence"
            case lvbValid = "lvb_valid"
            case fencingToken = "fencing_token"
            case granted, converting, waiting
        }

        public init(
            name: String, nameHex: String, path: [String], master: UInt32, lvbHex: String, lvbSequence: UInt64,
            lvbValid: Bool, fencingToken: UInt64, granted: [Lock], converting: [Lock], waiting: [Lock],
            directory: UInt32? = nil
        ) {
            self.directory = directory
            self.name = name
            self.nameHex = nameHex
            self.path = path
            self.master = master
            self.lvbHex = lvbHex
            self.lvbSequence = lvbSequence
            self.lvbValid = lvbValid
            self.fencingToken = fencingToken
            self.granted = granted
            self.converting = converting
            self.waiting = waiting
        }
    }

    /// In a cluster: a lock of this node's clients on a resource mastered by another node (its process copy).
    public struct RemoteLock: Codable, Sendable, Hashable {
        /// The name of the lock's resource (for a sub-lock, of its sub-resource), and its hex.
        public var name: String
        public var nameHex: String
        /// For a sub-lock, the names from the top-level resource down to its own (nil for a top-level one).
        public var path: [String]?
        public var master: UInt32
        /// The lock id the client sees (its process copy's).
        public var id: String
        public var grantedMode: String?
        public var requestedMode: String?
        public var owner: String
        /// The uid of the owner's process, as for `Lock.uid`.
        public var uid: UInt32?

        enum CodingKeys: String, CodingKey {
            case name
            case nameHex = "name_hex"
            case path, master, id
            case grantedMode = "granted_mode"
            case requestedMode = "requested_mode"
            case owner, uid
        }

        public init(
            name: String, nameHex: String, master: UInt32, id: String, grantedMode: String?, requestedMode: String?,
            owner: String, uid: UInt32? = nil, path: [String]? = nil
        ) {
            self.path = path
            self.uid = uid
            self.name = name
            self.nameHex = nameHex
            self.master = master
            self.id = id
            self.grantedMode = grantedMode
            self.requestedMode = requestedMode
            self.owner = owner
        }
    }

    public var lockspace: String
    public var resources: [Resource]
    /// The cursor of the next page (QUERY kinds 5 and 6); nil on the last page. A resource with more locks than a
    /// page continues on the next page, under the same name.
    public var next: UInt64?
    /// In a cluster, on the first page: this node's clients' locks on resources that other nodes master (at most
    /// 2,048; `remoteTruncated` says when there were more).
    public var remote: [RemoteLock]?
    public var remoteTruncated: Bool?

    enum CodingKeys: String, CodingKey {
        case lockspace, resources, next, remote
        case remoteTruncated = "remote_truncated"
    }

    public init(
        lockspace: String, resources: [Resource], next: UInt64? = nil, remote: [RemoteLock]? = nil,
        remoteTruncated: Bool? = nil
    ) {
        self.next = next
        self.lockspace = lockspace
        self.resources = resources
        self.remote = remote
        self.remoteTruncated = remoteTruncated
    }
}

/// The settings dlmd runs with (QUERY kind 8, `dlmtool dump-config`), each under its config file key, in order.
public struct ConfigReport: Codable, Sendable, Hashable {
    public struct Setting: Codable, Sendable, Hashable {
        public var key: String
        public var value: String

        public init(key: String, value: String) {
            self.key = key
            self.value = value
        }
    }

    public var settings: [Setting]

    public init(settings: [Setting]) {
        self.settings = settings
    }
}

/// dlmd's most recent log lines (QUERY kind 7, `dlmtool dump`), oldest first.
public struct LogReport: Codable, Sendable, Hashable {
    public var lines: [String]
    /// How many lines the server keeps at most.
    public var capacity: Int

    public init(lines: [String], capacity: Int) {
        self.lines = lines
        self.capacity = capacity
    }
}
