import Foundation

/// A real `dlmd` process on a private socket and data directory, for one test or benchmark.
public final class Daemon: @unchecked Sendable {
    public let directory: String
    public let socketPath: String
    public let process = Process()
    /// What dlmd prints on standard output ("listening on", view changes, fences), line by line.
    public let log = LineLog()

    /// `$DLMD`, else the `dlmd` built next to the running test bundle or executable.
    public static var executable: String {
        if let path = ProcessInfo.processInfo.environment["DLMD"] { return path }
        return productsDirectory.appendingPathComponent("dlmd").path
    }

    /// The build's products folder: that of the test bundle, else that of this executable.
    public static var productsDirectory: URL {
        let bundle = Bundle.allBundles.first { $0.bundlePath.hasSuffix(".xctest") }
        if let bundle { return bundle.bundleURL.deletingLastPathComponent() }
        return URL(fileURLWithPath: CommandLine.arguments[0]).deletingLastPathComponent()
    }

    /// A new folder's path under the temporary directory, removed when the process exits (TemporaryFolders).
    public static func temporaryDirectory(_ prefix: String) -> String {
        TemporaryFolders.path(prefix)
    }

    /// Starts dlmd (behind `launcher`, e.g. `ip netns exec NS`) with its socket and data in `directory` and
    /// returns once it listens.
    public init(
        executable: String = Daemon.executable, directory: String? = nil, arguments: [String] = [],
        launcher: [String] = [], logLevel: String = "warning"
    ) throws {
        let directory = directory ?? Daemon.temporaryDirectory("dlmd-test")
        try FileManager.default.createDirectory(atPath: directory, withIntermediateDirectories: true)
        self.directory = directory
        self.socketPath = directory + "/dlmd.sock"
        let command =
            launcher + [executable, "--socket", socketPath, "--data-dir", directory, "--log-level", logLevel]
            + arguments
        process.executableURL = URL(fileURLWithPath: command[0])
        process.arguments = Array(command.dropFirst())
        let output = Pipe()
        process.standardOutput = output
        try process.run()
        log.read(output.fileHandleForReading)
        // A cluster member may print a view before it listens: that line stays for the caller's waits.
        try log.wait(for: "\"listening on\"", keepingPlace: true) { $0.contains("listening on") }
    }

    public var pid: Int32 { process.processIdentifier }

    /// SIGTERM, and wait for the exit status.
    @discardableResult
    public func stop() -> Int32 {
        if process.isRunning { process.terminate() }
        process.waitUntilExit()
        return process.terminationStatus
    }

    /// SIGKILL, and wait.
    public func kill() {
        if process.isRunning { Foundation.kill(process.processIdentifier, SIGKILL) }
        process.waitUntilExit()
    }

    deinit {
        if process.isRunning {
            Foundation.kill(process.processIdentifier, SIGKILL)
            process.waitUntilExit()
        }
    }

    /// Runs dlmd to its end (for --check, or a start that must fail): its exit status, standard output and
    /// standard error.
    public static func runToEnd(_ arguments: [String]) throws -> (status: Int32, output: String, error: String) {
        try runProgram(Daemon.executable, arguments)
    }
}

/// Runs `executable` with `arguments` to its end: its exit status, standard output and standard error.
public func runProgram(_ executable: String, _ arguments: [String]) throws -> (
    status: Int32, output: String, error: String
) {
    let process = Process()
    process.executableURL = URL(fileURLWithPath: executable)
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
