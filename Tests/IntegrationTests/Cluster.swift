import Foundation

/// Lines a process prints, read on a thread of their own and stamped with the time they arrived, so that a test
/// can wait for a line (an event) and measure when it came.
final class LineLog: @unchecked Sendable {
    private let condition = NSCondition()
    private var lines: [(text: String, at: Date)] = []
    private var ended = false
    /// Lines before this index were already matched by `wait`.
    private var cursor = 0

    func read(_ handle: FileHandle) {
        Thread.detachNewThread { [self] in
            var pending = Data()
            while true {
                let chunk = handle.availableData
                condition.lock()
                if chunk.isEmpty {
                    ended = true
                    condition.broadcast()
                    condition.unlock()
                    return
                }
                pending.append(chunk)
                while let newline = pending.firstIndex(of: UInt8(ascii: "\n")) {
                    lines.append((String(decoding: pending[pending.startIndex..<newline], as: UTF8.self), Date()))
                    pending = Data(pending[pending.index(after: newline)...])
                }
                condition.broadcast()
                condition.unlock()
            }
        }
    }

    /// Waits for the first line after the last matched one that satisfies `predicate`; fails once the process
    /// ended or after `timeout` (a bound on a liveness failure, not a pause).
    @discardableResult
    func wait(
        for description: String, timeout: TimeInterval = 60, _ predicate: (String) -> Bool
    ) throws -> (text: String, at: Date) {
        let deadline = Date().addingTimeInterval(timeout)
        condition.lock()
        defer { condition.unlock() }
        while true {
            while cursor < lines.count {
                let line = lines[cursor]
                cursor += 1
                if predicate(line.text) { return line }
            }
            if ended { throw DaemonError("the process ended before \(description); it printed: \(all)") }
            if !condition.wait(until: deadline) {
                throw DaemonError("no \(description) within \(Int(timeout)) s; printed: \(all)")
            }
        }
    }

    /// Skips what was printed so far.
    func skipToEnd() {
        condition.lock()
        cursor = lines.count
        condition.unlock()
    }

    private var all: [String] { lines.map(\.text) }
}

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
    private(set) var processes: [Int: Process] = [:]
    private(set) var logs: [Int: LineLog] = [:]

    /// Short timeouts make the tests quick; `nil` keeps the defaults (detection within 1.5 s).
    static let quickTimeouts =
        "[timeouts]\nheartbeat_ms = 100\nsuspect_ms = 800\nview_change_ms = 600\nflush_ms = 300\n"

    init(
        nodes count: Int, timeouts: String? = TestCluster.quickTimeouts, addresses: [String]? = nil,
        launcher: @escaping (Int) -> [String] = { _ in [] }
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
        try "#!/bin/sh\necho \"$1\" >> '\(fenceLog)'\nexit 0\n".write(toFile: fence, atomically: true, encoding: .utf8)
        chmod(fence, 0o755)
        var config = """
            [cluster]
            name = "test"
            key_file = "\(keyPath)"

            [quorum]
            expected_votes = \(count)

            [fencing]
            command = "\(fence)"

            """
        if let timeouts { config += "\n" + timeouts }
        for (index, address) in self.addresses.enumerated() {
            config += "\n[[node]]\nid = \(index + 1)\naddress = \"\(address)\"\n"
        }
        try config.write(toFile: configPath, atomically: true, encoding: .utf8)
        let keygen = Process()
        keygen.executableURL = URL(fileURLWithPath: ToolRun.executable)
        keygen.arguments = ["keygen", keyPath]
        keygen.standardOutput = FileHandle.nullDevice
        try keygen.run()
        keygen.waitUntilExit()
        guard keygen.terminationStatus == 0 else { throw DaemonError("dlmtool keygen failed") }
    }

    func socket(_ node: Int) -> String { directory + "/node\(node)/dlmd.sock" }

    /// Starts node `node` (again, on the same data directory) and returns once it listens for clients.
    func start(_ node: Int) throws {
        let process = Process()
        let output = Pipe()
        let log = LineLog()
        let command =
            launcher(node) + [
                Daemon.executable, "--config", configPath, "--node-id", "\(node)", "--data-dir",
                directory + "/node\(node)", "--socket", socket(node), "--log-level", "warning",
            ]
        process.executableURL = URL(fileURLWithPath: command[0])
        process.arguments = Array(command.dropFirst())
        process.standardOutput = output
        try process.run()
        log.read(output.fileHandleForReading)
        processes[node] = process
        logs[node] = log
        try log.wait(for: "node \(node) listening") { $0.contains("listening on") }
    }

    func startAll() throws {
        for node in 1...addresses.count { try start(node) }
    }

    /// kill -9; returns when it is gone, with the time of the kill.
    @discardableResult
    func kill(_ node: Int) -> Date {
        let now = Date()
        if let process = processes[node], process.isRunning {
            Foundation.kill(process.processIdentifier, SIGKILL)
            process.waitUntilExit()
        }
        return now
    }

    /// Waits until `node` installs a view of exactly `members` ("1,2,3"; a later incarnation shows as "3#2").
    @discardableResult
    func waitForView(at node: Int, members: String, primary: Bool, timeout: TimeInterval = 60) throws -> Date {
        let suffix = " members \(members) " + (primary ? "primary" : "not primary (no quorum)")
        return try logs[node]!.wait(for: "view {\(members)} at node \(node)", timeout: timeout) {
            $0.hasSuffix(suffix)
        }.at
    }

    /// The nodes the fence command was run against, in order.
    var fenced: [Int] {
        ((try? String(contentsOfFile: fenceLog, encoding: .utf8)) ?? "").split(separator: "\n").compactMap {
            Int($0)
        }
    }

    func stopAll() {
        for (_, process) in processes where process.isRunning {
            process.terminate()
            process.waitUntilExit()
        }
    }

    deinit {
        for (_, process) in processes where process.isRunning {
            Foundation.kill(process.processIdentifier, SIGKILL)
            process.waitUntilExit()
        }
        try? FileManager.default.removeItem(atPath: directory)
    }
}

/// A TCP port on 127.0.0.1 that nothing listens on right now.
func freePort() throws -> Int {
    let fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
    guard fd >= 0 else { throw DaemonError("socket: \(errno)") }
    defer { close(fd) }
    var address = sockaddr_in()
    address.sin_family = sa_family_t(AF_INET)
    address.sin_addr.s_addr = inet_addr("127.0.0.1")
    address.sin_port = 0
    var length = socklen_t(MemoryLayout<sockaddr_in>.size)
    let bound = withUnsafeMutablePointer(to: &address) {
        $0.withMemoryRebound(to: sockaddr.self, capacity: 1) {
            bind(fd, $0, length) == 0 && getsockname(fd, $0, &length) == 0
        }
    }
    guard bound else { throw DaemonError("cannot find a free port: \(errno)") }
    return Int(UInt16(bigEndian: address.sin_port))
}
