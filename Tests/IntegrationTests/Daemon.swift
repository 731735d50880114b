import Foundation

/// A real `dlmd` process on a private socket and data directory, for one test.
final class Daemon: @unchecked Sendable {
    let directory: String
    let socketPath: String
    let process = Process()
    /// What dlmd prints on standard output ("listening on", view changes, fences), line by line.
    let log = LineLog()

    /// The `dlmd` built next to the test bundle (or `$DLMD`).
    static var executable: String {
        if let path = ProcessInfo.processInfo.environment["DLMD"] { return path }
        return productsDirectory.appendingPathComponent("dlmd").path
    }

    static var productsDirectory: URL {
        let bundle = Bundle.allBundles.first { $0.bundlePath.hasSuffix(".xctest") }
        if let bundle { return bundle.bundleURL.deletingLastPathComponent() }
        return URL(fileURLWithPath: CommandLine.arguments[0]).deletingLastPathComponent()
    }

    /// Starts dlmd (behind `launcher`, e.g. `ip netns exec NS`) and returns once it listens.
    init(directory: String? = nil, arguments: [String] = [], launcher: [String] = []) throws {
        let directory =
            directory
            ?? FileManager.default.temporaryDirectory
            .appendingPathComponent("dlmd-test-\(UUID().uuidString.prefix(8))").path
        try FileManager.default.createDirectory(atPath: directory, withIntermediateDirectories: true)
        self.directory = directory
        self.socketPath = directory + "/dlmd.sock"
        let command =
            launcher + [Daemon.executable, "--socket", socketPath, "--data-dir", directory, "--log-level", "warning"]
            + arguments
        process.executableURL = URL(fileURLWithPath: command[0])
        process.arguments = Array(command.dropFirst())
        let output = Pipe()
        process.standardOutput = output
        try process.run()
        log.read(output.fileHandleForReading)
        try log.wait(for: "\"listening on\"") { $0.contains("listening on") }
    }

    /// SIGTERM, and wait for the exit status.
    @discardableResult
    func stop() -> Int32 {
        if process.isRunning { process.terminate() }
        process.waitUntilExit()
        return process.terminationStatus
    }

    /// SIGKILL, and wait.
    func kill() {
        if process.isRunning { Foundation.kill(process.processIdentifier, SIGKILL) }
        process.waitUntilExit()
    }

    deinit {
        if process.isRunning {
            Foundation.kill(process.processIdentifier, SIGKILL)
            process.waitUntilExit()
        }
    }
}

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

extension Daemon {
    /// Runs dlmd to its end (for --check, or a start that must fail): its exit status, standard output and
    /// standard error.
    static func runToEnd(_ arguments: [String]) throws -> (status: Int32, output: String, error: String) {
        let process = Process()
        process.executableURL = URL(fileURLWithPath: Daemon.executable)
        process.arguments = arguments
        let output = Pipe()
        let error = Pipe()
        process.standardOutput = output
        process.standardError = error
        try process.run()
        let out = output.fileHandleForReading.readDataToEndOfFile()
        let err = error.fileHandleForReading.readDataToEndOfFile()
        process.waitUntilExit()
        return (process.terminationStatus, String(decoding: out, as: UTF8.self), String(decoding: err, as: UTF8.self))
    }
}

struct DaemonError: Error, CustomStringConvertible {
    var description: String
    init(_ description: String) { self.description = description }
}
