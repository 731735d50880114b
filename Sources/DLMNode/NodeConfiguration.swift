import DLMCore

/// Everything a node needs to start, from the command line or a config file.
public struct NodeConfiguration: Sendable {
    /// The Unix socket clients connect to; nil for none.
    public var socketPath: String?
    /// A TCP address clients connect to ("HOST:PORT"); nil for none.
    public var listenAddress: String?
    /// Where the node keeps what must survive a restart.
    public var dataDirectory: String
    public var nodeID: UInt32
    public var engine: EngineConfig
    /// How often the engine's timers (timeouts, deadlock searches) run, in nanoseconds.
    public var tickInterval: UInt64

    public static let defaultSocketPath = "/run/dlm/dlmd.sock"
    public static let defaultDataDirectory = "/var/lib/dlm"

    public init(
        socketPath: String? = NodeConfiguration.defaultSocketPath, listenAddress: String? = nil,
        dataDirectory: String = NodeConfiguration.defaultDataDirectory, nodeID: UInt32 = 1,
        engine: EngineConfig = EngineConfig(), tickInterval: UInt64 = 10_000_000
    ) {
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
