import DLMCluster
import DLMCore
import DLMStore
import DLMTLS
import GroupNode
import NIOCore

/// Everything a node needs to start, from the command line or a config file.
public struct NodeConfiguration: Sendable {
    /// The Unix socket clients connect to; nil for none.
    public var socketPath: String?
    /// The Unix socket's permission bits and group (SocketPermissions.swift); nil: dlmd's group.
    public var socketMode: UInt16
    public var socketGroup: String?
    /// A TCP address clients connect to ("HOST:PORT"); nil for none.
    public var listenAddress: String?
    /// TLS for the TCP clients, with a client certificate required (`--tls-cert`, `--tls-key`, `--tls-client-ca`);
    /// nil: plain TCP, on a loopback address only (`NodeServer.checkListenAddress`).
    public var clientTLS: TLSContext?
    /// Where the node keeps what must survive a restart.
    public var dataDirectory: String
    public var nodeID: UInt32
    public var engine: EngineConfig
    /// How often the engine's timers (timeouts, deadlock searches) run, in nanoseconds.
    public var tickInterval: UInt64
    /// When acknowledgements of persistent state wait for the disk.
    public var durability: Durability
    /// The most bytes the LMDB data file may grow to.
    public var mapSize: Int
    /// The cluster this node is a member of; nil for a standalone node.
    public var cluster: ClusterConfig?
    /// How long the event loop keeps polling after its last I/O before it sleeps (`BusyPoll`); zero for never.
    public var busyPoll: TimeAmount
    /// Where Prometheus scrapes the node's metrics ("HOST:PORT", `GET /metrics`); nil for nowhere.
    public var metricsAddress: String?
    /// The ring of dlmd's recent log lines that `dlmtool dump` reads (QUERY kind 7); nil: none kept (dlmd's own
    /// main fills one from its log handler and its announcements).
    public var recentLog: RecentLog?
    /// The log level dlmd runs at, as `dlmtool dump-config` shows it (nil: not known).
    public var logLevel: String?

    /// Limits (docs/SECURITY.md): client connections at once, lockspaces, and a client's output it has not read:
    /// past `outputPauseBytes` dlmd stops reading from it until it has read half of that; past `outputLimitBytes`
    /// (output that other clients' requests cause keeps coming) it is closed.
    public var maxConnections = NodeConfiguration.defaultMaxConnections
    public var maxLockspaces = NodeConfiguration.defaultMaxLockspaces
    /// The most locks of one connection, and of one user's connections together (ServiceConfiguration).
    public var maxLocksPerConnection = NodeConfiguration.defaultMaxLocksPerConnection
    public var maxLocksPerUser = NodeConfiguration.defaultMaxLocksPerUser
    /// The most requests of one connection that wait to run before dlmd stops reading from it (ServiceConfiguration).
    public var maxQueuedRequests = NodeConfiguration.defaultMaxQueuedRequests
    public var outputPauseBytes = NodeConfiguration.defaultOutputPauseBytes
    public var outputLimitBytes = NodeConfiguration.defaultOutputLimitBytes

    public static let defaultMaxConnections = ServiceConfiguration.defaultMaxConnections
    public static let defaultMaxLockspaces = ServiceConfiguration.defaultMaxLockspaces
    public static let defaultMaxLocksPerConnection = ServiceConfiguration.defaultMaxLocksPerConnection
    public static let defaultMaxLocksPerUser = ServiceConfiguration.defaultMaxLocksPerUser
    public static let defaultMaxQueuedRequests = ServiceConfiguration.defaultMaxQueuedRequests
    public static let defaultOutputPauseBytes = 1 << 20
    public static let defaultOutputLimitBytes = 64 << 20
    public static let defaultSocketPath = "/run/dlm/dlmd.sock"
    public static let defaultDataDirectory = "/var/lib/dlm"
    /// 1 GiB: room for millions of persistent locks; the file grows only as far as it is used.
    public static let defaultMapSize = 1 << 30

    public init(
        socketPath: String? = NodeConfiguration.defaultSocketPath, listenAddress: String? = nil,
        dataDirectory: String = NodeConfiguration.defaultDataDirectory, nodeID: UInt32 = 1,
        engine: EngineConfig = EngineConfig(), tickInterval: UInt64 = 10_000_000, durability: Durability = .batch,
        mapSize: Int = NodeConfiguration.defaultMapSize, cluster: ClusterConfig? = nil, busyPoll: TimeAmount = .zero,
        metricsAddress: String? = nil, socketMode: UInt16 = SocketPermissions.defaultMode, socketGroup: String? = nil
    ) {
        self.socketMode = socketMode
        self.socketGroup = socketGroup
        self.metricsAddress = metricsAddress
        self.busyPoll = busyPoll
        self.cluster = cluster
        self.durability = durability
        self.mapSize = mapSize
        self.socketPath = socketPath
        self.listenAddress = listenAddress
        self.dataDirectory = dataDirectory
        self.nodeID = nodeID
        self.engine = engine
        self.tickInterval = tickInterval
    }
}

/// The version dlmd reports.
public let dlmVersion = "0.1.0"
