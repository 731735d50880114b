import DLMTestSupport
import Foundation

/// A cluster of real `dlmd` processes for one test: a config file with `count` nodes on loopback (or on the
/// given addresses), a key made by `dlmtool keygen`, and a fence command that records whom it fenced.
final class TestCluster: @unchecked Sendable {
    let directory: String
    let configPath: String
    let keyPath: String
    let fenceLog: String
    let addresses: [String]
    /// Prefix of every dlmd command line for node i (e.g. `ip netns exec NS`).
    let launcher: (Int) -> [String]
    private(set) var daemons: [Int: Daemon] = [:]
    /// More arguments of node i's dlmd (e.g. `--metrics`).
    var arguments: (Int) -> [String] = { _ in [] }

    /// Short timeouts make the tests quick; `nil` keeps the defaults (detection within 1.5 s).
    static let quickTimeouts =
        "[timeouts]\nheartbeat_ms = 100\nsuspect_ms = 800\nview_change_ms = 600\nflush_ms = 300\n"

    /// With `corosyncPort`, the nodes take membership, quorum and their node list from a running corosync (`[cluster]
    /// provider = "corosync"`) and `addresses` only counts them.
    /// `quorum`: more keys of the `[quorum]` table (e.g. "wait_for_all = true\n").
    init(
        nodes count: Int, timeouts: String? = TestCluster.quickTimeouts, addresses: [String]? = nil,
        corosyncPort: Int? = nil, quorum: String = "", launcher: @escaping (Int) -> [String] = { _ in [] }
    ) throws {
        directory =
            FileManager.default.temporaryDirectory
            .appendingPathComponent("dlm-cluster-\(UUID().uuidString.prefix(8))").path
        try FileManager.default.createDirectory(atPath: directory, withIntermediateDirectories: true)
        configPath = directory + "/cluster.toml"
        keyPath = directory + "/authkey"
        fenceLog = directory + "/fenced"
        self.addresses = try addresses ?? (1...count).map { _ in "127.0.0.1:\(try freePort())" }
        self.launcher = launcher
        let fence = directory + "/fence-node"
        try Self.writeFenceCommand(fence, log: fenceLog, exitStatus: 0)
        let provider = corosyncPort.map { "provider = \"corosync\"\nport = \($0)\n" } ?? ""
        var config = """
            [cluster]
            name = "test"
            key_file = "\(keyPath)"
            \(provider)
            [fencing]
            command = "\(fence)"

            """
        if corosyncPort == nil { config += "\n[quorum]\nexpected_votes = \(count)\n" + quorum }
        if let timeouts { config += "\n" + timeouts }
        if corosyncPort == nil {
            for (index, address) in self.addresses.enumerated() {
                config += "\n[[node]]\nid = \(index + 1)\naddress = \"\(address)\"\n"
            }
        }
        try config.write(toFile: configPath, atomically: false, encoding: .utf8)
        let keygen = Process()
        keygen.executableURL = URL(fileURLWithPath: ToolRun.executable)
        keygen.arguments = ["keygen", keyPath]
        keygen.standardOutput = FileHandle.nullDevice
        try keygen.run()
        keygen.waitUntilExit()
        guard keygen.terminationStatus == 0 else { throw SupportError("dlmtool keygen failed") }
    }

    func socket(_ node: Int) -> String { daemons[node]?.socketPath ?? directory + "/node\(node)/dlmd.sock" }

    /// What node `node` printed.
    func log(_ node: Int) -> LineLog { daemons[node]!.log }

    /// Starts node `node` (again, on the same data directory) and returns once it listens for clients.
    func start(_ node: Int) throws {
        if let earlier = daemons[node] { earlierLogs[node, default: []] += earlier.log.all + ["-- restarted --"] }
        daemons[node] = try Daemon(
            directory: directory + "/node\(node)",
            arguments: ["--config", configPath, "--node-id", "\(node)"] + arguments(node),
            launcher: launcher(node),
            logLevel: ProcessInfo.processInfo.environment["DLM_TEST_LOG_LEVEL"] ?? "warning")
    }

    /// What earlier lives of each restarted node printed.
    private var earlierLogs: [Int: [String]] = [:]

    /// Writes what every life of every node printed to `prefix`N.log, for a failure's post-mortem.
    func saveLogs(to prefix: String) {
        for (node, daemon) in daemons {
            let lines = earlierLogs[node, default: []] + daemon.log.all
            try? lines.joined(separator: "\n").write(toFile: "\(prefix)\(node).log", atomically: false, encoding: .utf8)
        }
    }

    func startAll() throws {
        for node in 1...addresses.count { try start(node) }
    }

    /// kill -9; returns when it is gone, with the time of the kill.
    @discardableResult
    func kill(_ node: Int) -> ContinuousClock.Instant {
        let now = ContinuousClock.now
        daemons[node]?.kill()
        return now
    }

    /// Waits until `node` installs a view of exactly `members` ("1,2,3"; a later incarnation shows as "3#2").
    @discardableResult
    func waitForView(at node: Int, members: String, primary: Bool, timeout: TimeInterval = 60) throws
        -> ContinuousClock.Instant
    {
        let suffix = " members \(members) " + (primary ? "primary" : "not primary (no quorum)")
        return try log(node).wait(for: "view {\(members)} at node \(node)", timeout: timeout) {
            $0.hasSuffix(suffix)
        }.at
    }

    /// Waits until `node` prints the start of the second phase, then the end, of a recovery run of a view after
    /// `view` ("recovery phase 2 view V", "recovery done view V", or "... view V run R").
    func waitForRecovery(at node: Int, after view: UInt64, timeout: TimeInterval = 60) throws {
        for line in [" recovery phase 2 view ", " recovery done view "] {
            try log(node).wait(for: "\(line) after view \(view) at node \(node)", timeout: timeout) { printed in
                guard let range = printed.range(of: line) else { return false }
                return printed[range.upperBound...].split(separator: " ").first.flatMap { UInt64($0) } ?? 0 > view
            }
        }
    }

    /// From now on the fence command fails (exit 1), still recording whom it was run against.
    func failFences() throws {
        try Self.writeFenceCommand(directory + "/fence-node", log: fenceLog, exitStatus: 1)
    }

    /// The fence command: it appends the node id it is given to `log`, and exits with `exitStatus`.
    static func writeFenceCommand(_ path: String, log: String, exitStatus: Int) throws {
        try "#!/bin/sh\necho \"$1\" >> '\(log)'\nexit \(exitStatus)\n".write(
            toFile: path, atomically: true, encoding: .utf8)
        chmod(path, 0o755)
    }

    /// The nodes the fence command was run against, in order.
    var fenced: [Int] {
        ((try? String(contentsOfFile: fenceLog, encoding: .utf8)) ?? "").split(separator: "\n").compactMap {
            Int($0)
        }
    }

    func stopAll() {
        for daemon in daemons.values { daemon.stop() }
    }

    deinit {
        daemons = [:]
        try? FileManager.default.removeItem(atPath: directory)
    }
}
