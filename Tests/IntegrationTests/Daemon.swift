import Foundation

/// A real `dlmd` process on a private socket and data directory, for one test.
final class Daemon: @unchecked Sendable {
    let directory: String
    let socketPath: String
    let process = Process()
    private let output = Pipe()
    private(set) var lines: [String] = []

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

    /// Starts dlmd and returns once it listens.
    init(directory: String? = nil, arguments: [String] = []) throws {
        let directory =
            directory
            ?? FileManager.default.temporaryDirectory
            .appendingPathComponent("dlmd-test-\(UUID().uuidString.prefix(8))").path
        try FileManager.default.createDirectory(atPath: directory, withIntermediateDirectories: true)
        self.directory = directory
        self.socketPath = directory + "/dlmd.sock"
        process.executableURL = URL(fileURLWithPath: Daemon.executable)
        process.arguments = ["--socket", socketPath, "--data-dir", directory, "--log-level", "warning"] + arguments
        process.standardOutput = output
        try process.run()
        try waitForLine(containing: "listening on")
    }

    /// Reads dlmd's standard output until a line contains `text` (or dlmd exits).
    func waitForLine(containing text: String) throws {
        let handle = output.fileHandleForReading
        var pending = Data()
        while true {
            let chunk = handle.availableData
            if chunk.isEmpty { throw DaemonError("dlmd exited before printing \"\(text)\"; output: \(lines)") }
            pending.append(chunk)
            while let newline = pending.firstIndex(of: UInt8(ascii: "\n")) {
                let line = String(decoding: pending[pending.startIndex..<newline], as: UTF8.self)
                pending = Data(pending[pending.index(after: newline)...])
                lines.append(line)
                if line.contains(text) { return }
            }
        }
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
