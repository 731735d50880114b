import Foundation
import GroupServices
import TOMLKit

/// A configuration error, naming the file and the key: `/etc/dlm/cluster.toml: node[2].address: "127.0.0.1" is not
/// HOST:PORT`. Node entries are numbered from 0, in the order of the file's `[[node]]` tables.
public struct ClusterConfigError: Error, CustomStringConvertible, Hashable, Sendable {
    public var file: String
    public var message: String
    public init(file: String, _ message: String) {
        self.file = file
        self.message = message
    }
    public var description: String { "\(file): \(message)" }
}

/// The cluster configuration (docs/GROUPS.md, "Shell"): the cluster's name and key file, the static node list with
/// votes, quorum options, the fence command and the timeouts of group services.
public struct ClusterConfig: Sendable, Hashable {
    public struct Node: Sendable, Hashable {
        public var id: NodeID
        public var host: String
        public var port: Int
        public var votes: Int
        public init(id: NodeID, host: String, port: Int, votes: Int = 1) {
            self.id = id
            self.host = host
            self.port = port
            self.votes = votes
        }
        /// `HOST:PORT`, with brackets around an IPv6 host.
        public var address: String { host.contains(":") ? "[\(host)]:\(port)" : "\(host):\(port)" }
    }

    /// Where membership, quorum and total order come from (`[cluster] provider`).
    public enum Provider: Sendable, Hashable {
        /// Group services' own (`GroupMember`): heartbeats over the peer transport, the node list of this file.
        case builtIn
        /// A running corosync 3 (`CorosyncMember`): CPG, votequorum, and the node list from cmap. Lock traffic still
        /// goes over the peer transport, to `port` on each node's `ring0_addr`.
        case corosync(port: Int)
    }

    public var provider: Provider = .builtIn
    /// The cluster's name; with the corosync provider, corosync's `totem.cluster_name` when the file gives none.
    public var name: String
    /// An absolute path: a relative `key_file` is resolved against the config file's directory.
    public var keyFile: String
    public var nodes: [Node]
    public var expectedVotes: Int?
    public var twoNode: Bool
    public var waitForAll: Bool
    /// votequorum's `auto_tie_breaker`: exactly half of the expected votes is quorate with the lowest node among them.
    public var autoTieBreaker: Bool
    /// Run with the node id as its only argument; exit status 0 means the node is fenced.
    public var fenceCommand: String
    /// Seconds after which a fence command is killed (and counts as failed).
    public var fenceTimeout: Double
    // The timeouts of group services, in milliseconds (`Settings`).
    public var heartbeatInterval: Int
    public var suspectTimeout: Int
    public var viewChangeTime: Int
    public var flushTimeout: Int
    public var retransmitInterval: Int
    public var fenceRetryInterval: Int
    public var joinDelay: Int
    /// How long a resource mastered across nodes stays known after its last lock went, in milliseconds (the lock
    /// service's `tossDelay`, Linux's `toss_secs`).
    public var tossDelay: Int

    /// The defaults of `Settings`, in milliseconds.
    public static let defaultTimeouts = (
        heartbeat: 200, suspect: 1000, viewChange: 500, flush: 300, retransmit: 50, fenceRetry: 250, toss: 10_000
    )

    /// A configuration built in code; `validate` checks it as `parse` would.
    public init(
        name: String, keyFile: String, nodes: [Node], expectedVotes: Int? = nil, twoNode: Bool = false,
        waitForAll: Bool = false, autoTieBreaker: Bool = false, fenceCommand: String, fenceTimeout: Double = 60,
        heartbeatInterval: Int = ClusterConfig.defaultTimeouts.heartbeat,
        suspectTimeout: Int = ClusterConfig.defaultTimeouts.suspect,
        viewChangeTime: Int = ClusterConfig.defaultTimeouts.viewChange,
        flushTimeout: Int = ClusterConfig.defaultTimeouts.flush,
        retransmitInterval: Int = ClusterConfig.defaultTimeouts.retransmit,
        fenceRetryInterval: Int = ClusterConfig.defaultTimeouts.fenceRetry, joinDelay: Int? = nil,
        tossDelay: Int = ClusterConfig.defaultTimeouts.toss
    ) {
        self.tossDelay = tossDelay
        self.name = name
        self.keyFile = keyFile
        self.nodes = nodes
        self.expectedVotes = expectedVotes
        self.twoNode = twoNode
        self.waitForAll = waitForAll
        self.autoTieBreaker = autoTieBreaker
        self.fenceCommand = fenceCommand
        self.fenceTimeout = fenceTimeout
        self.heartbeatInterval = heartbeatInterval
        self.suspectTimeout = suspectTimeout
        self.viewChangeTime = viewChangeTime
        self.flushTimeout = flushTimeout
        self.retransmitInterval = retransmitInterval
        self.fenceRetryInterval = fenceRetryInterval
        self.joinDelay = joinDelay ?? heartbeatInterval
    }

    public func node(_ id: NodeID) -> Node? { nodes.first { $0.id == id } }

    /// The `[timeouts]` table as in effect: each key, its milliseconds, and the least it may be.
    public var timeouts: [(key: String, milliseconds: Int, minimum: Int)] {
        [
            ("heartbeat_ms", heartbeatInterval, 1), ("suspect_ms", suspectTimeout, 1),
            ("view_change_ms", viewChangeTime, 1), ("flush_ms", flushTimeout, 1),
            ("retransmit_ms", retransmitInterval, 1), ("fence_retry_ms", fenceRetryInterval, 1),
            ("join_delay_ms", joinDelay, 0), ("toss_ms", tossDelay, 1),
        ]
    }

    /// The settings of `GroupMember`. Valid for a configuration that passed `validate` (as every parsed one did).
    public var settings: Settings {
        var votes: [NodeID: Int] = [:]
        for node in nodes { votes[node.id] = node.votes }
        let ms = Settings.millisecond
        return Settings(
            votes: votes, expectedVotes: expectedVotes, twoNode: twoNode, waitForAll: waitForAll,
            autoTieBreaker: autoTieBreaker, heartbeatInterval: UInt64(heartbeatInterval) * ms,
            suspectTimeout: UInt64(suspectTimeout) * ms,
            viewChangeTime: UInt64(viewChangeTime) * ms, flushTimeout: UInt64(flushTimeout) * ms,
            retransmitInterval: UInt64(retransmitInterval) * ms, fenceRetryInterval: UInt64(fenceRetryInterval) * ms,
            joinDelay: UInt64(joinDelay) * ms)
    }

    /// The longest timeout accepted, in milliseconds (one hour).
    public static let maximumTimeout = 3_600_000

    /// Checks everything `Settings` would check with a precondition, and more, and throws an error naming the key.
    public func validate(file: String) throws {
        func fail(_ message: String) -> ClusterConfigError { ClusterConfigError(file: file, message) }
        if case .corosync(let port) = provider {
            if !(1...65535).contains(port) { throw fail("cluster.port: must be an integer from 1 to 65535") }
        }
        if keyFile.isEmpty { throw fail("cluster.key_file: must not be empty") }
        if provider == .builtIn {
            if name.isEmpty { throw fail("cluster.name: must not be empty") }
            if nodes.isEmpty { throw fail("node: the node list is empty (add [[node]] tables with id and address)") }
        }
        var ids: [NodeID: Int] = [:]
        var addresses: [String: Int] = [:]
        for (index, node) in nodes.enumerated() {
            if node.id.rawValue == 0 { throw fail("node[\(index)].id: must be an integer from 1 to \(UInt32.max)") }
            if let other = ids[node.id] {
                throw fail("node[\(index)].id: \(node.id) is also the id of node[\(other)]")
            }
            ids[node.id] = index
            if node.host.isEmpty || !(1...65535).contains(node.port) {
                throw fail("node[\(index)].address: \"\(node.address)\" is not HOST:PORT")
            }
            if let other = addresses[node.address] {
                throw fail("node[\(index)].address: \(node.address) is also the address of node[\(other)]")
            }
            addresses[node.address] = index
            if node.votes < 1 || node.votes > 1_000_000 {
                throw fail("node[\(index)].votes: must be an integer from 1 to 1000000")
            }
        }
        let total = nodes.reduce(0) { $0 + $1.votes }
        if let expectedVotes, expectedVotes < total {
            throw fail("quorum.expected_votes: must be an integer >= \(total) (the sum of the nodes' votes)")
        }
        if twoNode {
            if nodes.count != 2 || nodes.contains(where: { $0.votes != 1 }) {
                throw fail("quorum.two_node: needs exactly two nodes with one vote each")
            }
            if let expectedVotes, expectedVotes != 2 {
                throw fail("quorum.expected_votes: must be 2 (or absent) with two_node")
            }
            if autoTieBreaker { throw fail("quorum.auto_tie_breaker: not with two_node (choose one)") }
        }
        if fenceCommand.isEmpty { throw fail("fencing.command: must not be empty") }
        if !(fenceTimeout > 0 && fenceTimeout <= Double(Self.maximumTimeout / 1000)) {
            throw fail("fencing.timeout: must be a number of seconds > 0 and <= \(Self.maximumTimeout / 1000)")
        }
        for (key, value, minimum) in timeouts where value < minimum || value > Self.maximumTimeout {
            throw fail("timeouts.\(key): must be an integer from \(minimum) to \(Self.maximumTimeout)")
        }
        if suspectTimeout < 2 * heartbeatInterval {
            throw fail(
                "timeouts.suspect_ms: must be at least twice timeouts.heartbeat_ms (\(2 * heartbeatInterval))")
        }
        if flushTimeout < 2 * retransmitInterval {
            throw fail(
                "timeouts.flush_ms: must be at least twice timeouts.retransmit_ms (\(2 * retransmitInterval))")
        }
        if flushTimeout > viewChangeTime {
            throw fail("timeouts.flush_ms: must be at most timeouts.view_change_ms (\(viewChangeTime))")
        }
    }

    // MARK: Parsing

    /// Reads and parses a cluster config. It names the fence command, which dlmd runs: the file must be owned by
    /// root or by dlmd's user and not writable by its group or others (`TrustedFile`), and is read from the
    /// descriptor that was checked.
    public static func load(path: String) throws -> ClusterConfig {
        let bytes: [UInt8]
        do {
            bytes = try TrustedFile.read(path, what: "the cluster config", secret: false, limit: 1 << 20)
        } catch {
            throw ClusterConfigError(file: path, "cannot read the file: \(error.message)")
        }
        guard let text = String(validating: bytes, as: UTF8.self) else {
            throw ClusterConfigError(file: path, "the file is not UTF-8 text")
        }
        return try parse(text, file: path)
    }

    /// Parses a cluster config. `file` names it in errors, and its directory is where a relative `key_file` is.
    public static func parse(_ text: String, file: String) throws -> ClusterConfig {
        let root: TOMLTable
        do {
            root = try ConfigText.parse(text)
        } catch let error as ConfigText.Malformed {
            throw ClusterConfigError(file: file, "line \(error.line), column \(error.column): \(error.message)")
        } catch let error as TOMLParseError {
            throw ClusterConfigError(
                file: file, "line \(error.source.begin.line), column \(error.source.begin.column): \(error.description)"
            )
        }
        let reader = Reader(file: file)
        try reader.allow(root, keys: ["cluster", "quorum", "fencing", "node", "timeouts", "dlmd"], path: "")

        let cluster = try reader.table(root, "cluster", required: true)!
        try reader.allow(cluster, keys: ["name", "key_file", "provider", "port"], path: "cluster")
        var provider = Provider.builtIn
        switch cluster["provider"].map({ $0.string }) {
        case nil, "builtin"?:
            if cluster["port"] != nil { throw reader.fail("cluster.port: only with provider = \"corosync\"") }
        case "corosync"?:
            provider = .corosync(port: try reader.int(cluster, "port", path: "cluster", required: true)!)
            for table in ["node", "quorum"] where root[table] != nil {
                throw reader.fail(
                    "\(table): not with provider = \"corosync\" (the node list and quorum come from corosync)")
            }
        default:
            throw reader.fail("cluster.provider: must be \"builtin\" or \"corosync\"")
        }
        let name =
            provider == .builtIn || cluster["name"] != nil ? try reader.string(cluster, "name", path: "cluster")! : ""
        var keyFile = try reader.string(cluster, "key_file", path: "cluster")!
        if !keyFile.isEmpty, !keyFile.hasPrefix("/") {
            let directory = URL(fileURLWithPath: file).deletingLastPathComponent()
            keyFile = directory.appendingPathComponent(keyFile).standardizedFileURL.path
        }

        var expectedVotes: Int?
        var twoNode = false
        var waitForAll = false
        var autoTieBreaker = false
        if let quorum = try reader.table(root, "quorum") {
            try reader.allow(
                quorum, keys: ["expected_votes", "two_node", "wait_for_all", "auto_tie_breaker"], path: "quorum")
            expectedVotes = try reader.int(quorum, "expected_votes", path: "quorum", required: false)
            twoNode = try reader.bool(quorum, "two_node", path: "quorum") ?? false
            waitForAll = try reader.bool(quorum, "wait_for_all", path: "quorum") ?? false
            autoTieBreaker = try reader.bool(quorum, "auto_tie_breaker", path: "quorum") ?? false
        }

        let fencing = try reader.table(root, "fencing", required: true)!
        try reader.allow(fencing, keys: ["command", "timeout"], path: "fencing")
        let fenceCommand = try reader.string(fencing, "command", path: "fencing")!
        var fenceTimeout = 60.0
        if let value = fencing["timeout"] {
            if let int = value.int {
                fenceTimeout = Double(int)
            } else if let double = value.double {
                fenceTimeout = double
            } else {
                throw reader.fail("fencing.timeout: must be a number of seconds")
            }
        }

        var nodes: [Node] = []
        let nodeValue = root["node"]
        guard nodeValue != nil || provider != .builtIn else {
            throw reader.fail("node: the node list is empty (add [[node]] tables with id and address)")
        }
        guard let nodeArray = nodeValue.map({ $0.array }) ?? .some(TOMLArray()) else {
            throw reader.fail("node: must be an array of tables ([[node]])")
        }
        for index in 0..<nodeArray.count {
            let path = "node[\(index)]"
            guard let table = nodeArray[index].table else { throw reader.fail("\(path): must be a table") }
            try reader.allow(table, keys: ["id", "address", "votes"], path: path)
            let id = try reader.int(table, "id", path: path, required: true)!
            guard id >= 1, id <= Int(UInt32.max) else {
                throw reader.fail("\(path).id: must be an integer from 1 to \(UInt32.max)")
            }
            let address = try reader.string(table, "address", path: path)!
            guard let (host, port) = parseAddress(address) else {
                throw reader.fail("\(path).address: \"\(address)\" is not HOST:PORT")
            }
            let votes = try reader.int(table, "votes", path: path, required: false) ?? 1
            nodes.append(Node(id: NodeID(UInt32(id)), host: host, port: port, votes: votes))
        }

        let d = defaultTimeouts
        var times: [String: Int] = [:]
        if let timeouts = try reader.table(root, "timeouts") {
            let keys = [
                "heartbeat_ms", "suspect_ms", "view_change_ms", "flush_ms", "retransmit_ms", "fence_retry_ms",
                "join_delay_ms", "toss_ms",
            ]
            try reader.allow(timeouts, keys: Set(keys), path: "timeouts")
            for key in keys { times[key] = try reader.int(timeouts, key, path: "timeouts", required: false) }
        }
        let heartbeat = times["heartbeat_ms"] ?? d.heartbeat
        var config = ClusterConfig(
            name: name, keyFile: keyFile, nodes: nodes, expectedVotes: expectedVotes, twoNode: twoNode,
            waitForAll: waitForAll, autoTieBreaker: autoTieBreaker, fenceCommand: fenceCommand,
            fenceTimeout: fenceTimeout, heartbeatInterval: heartbeat, suspectTimeout: times["suspect_ms"] ?? d.suspect,
            viewChangeTime: times["view_change_ms"] ?? d.viewChange, flushTimeout: times["flush_ms"] ?? d.flush,
            retransmitInterval: times["retransmit_ms"] ?? d.retransmit,
            fenceRetryInterval: times["fence_retry_ms"] ?? d.fenceRetry, joinDelay: times["join_delay_ms"],
            tossDelay: times["toss_ms"] ?? d.toss)
        config.provider = provider
        try config.validate(file: file)
        return config
    }

    /// The config of a corosync provider's node, completed with what corosync's cmap says (`CorosyncLink.nodelist`):
    /// every node of the nodelist at `ring0_addr` and the provider's port, its `quorum_votes`, and the cluster's name
    /// when the file gave none.
    public func completed(with nodelist: CorosyncNodelist, file: String) throws -> ClusterConfig {
        guard case .corosync(let port) = provider else { return self }
        var config = self
        config.nodes = nodelist.nodes.map { Node(id: $0.id, host: $0.address, port: port, votes: $0.votes) }
        if config.name.isEmpty { config.name = nodelist.clusterName }
        if config.name.isEmpty {
            throw ClusterConfigError(file: file, "cluster.name: missing, and corosync has no totem.cluster_name")
        }
        do {
            try config.validate(file: file)
        } catch let error as ClusterConfigError {
            throw ClusterConfigError(file: file, "with corosync's nodelist: \(error.message)")
        }
        return config
    }

    /// `HOST:PORT` or `[IPV6]:PORT`.
    static func parseAddress(_ address: String) -> (String, Int)? {
        let host: Substring
        let portText: Substring
        if address.hasPrefix("[") {
            guard let close = address.firstIndex(of: "]"), address[address.index(after: close)...].hasPrefix(":")
            else { return nil }
            host = address[address.index(after: address.startIndex)..<close]
            portText = address[address.index(close, offsetBy: 2)...]
        } else {
            guard let colon = address.lastIndex(of: ":"), !address[..<colon].contains(":") else { return nil }
            host = address[..<colon]
            portText = address[address.index(after: colon)...]
        }
        guard !host.isEmpty, !host.contains(where: \.isWhitespace), portText.allSatisfy(\.isASCII),
            let port = Int(portText), (1...65535).contains(port)
        else { return nil }
        return (String(host), port)
    }

    /// Reads typed values out of TOML tables with errors that name the key.
    struct Reader {
        let file: String

        func fail(_ message: String) -> ClusterConfigError { ClusterConfigError(file: file, message) }

        func key(_ path: String, _ key: String) -> String { path.isEmpty ? key : "\(path).\(key)" }

        func allow(_ table: TOMLTable, keys: Set<String>, path: String) throws {
            for name in table.keys.sorted() where !keys.contains(name) {
                let what = path.isEmpty ? "table or key" : "key"
                throw fail(
                    "unknown \(what) \(key(path, name)) (known: \(keys.sorted().map { key(path, $0) }.joined(separator: ", ")))"
                )
            }
        }

        func table(_ table: TOMLTable, _ name: String, required: Bool = false) throws -> TOMLTable? {
            guard let value = table[name] else {
                if required { throw fail("[\(name)]: missing") }
                return nil
            }
            guard let result = value.table else { throw fail("\(name): must be a table ([\(name)])") }
            return result
        }

        func string(_ table: TOMLTable, _ name: String, path: String) throws -> String? {
            guard let value = table[name] else { throw fail("\(key(path, name)): missing") }
            guard let string = value.string else { throw fail("\(key(path, name)): must be a string") }
            return string
        }

        func int(_ table: TOMLTable, _ name: String, path: String, required: Bool) throws -> Int? {
            guard let value = table[name] else {
                if required { throw fail("\(key(path, name)): missing") }
                return nil
            }
            guard let int = value.int else { throw fail("\(key(path, name)): must be an integer") }
            return int
        }

        func bool(_ table: TOMLTable, _ name: String, path: String) throws -> Bool? {
            guard let value = table[name] else { return nil }
            guard let bool = value.bool else { throw fail("\(key(path, name)): must be true or false") }
            return bool
        }
    }
}
