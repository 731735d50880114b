import ArgumentParser
import DLMClient
import DLMCore
import DLMWire
import Foundation
import Glibc

@main
struct DLMTool: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "dlmtool",
        abstract: "Look into and operate a running dlmd.",
        discussion: """
            Every command talks to dlmd over its Unix socket: --socket PATH, else $DLM_SOCKET, else \
            /run/dlm/dlmd.sock. With --json a command prints one JSON object for machines; for status, ls, \
            lockdebug and lockdump it is the daemon's own report (Protocol/CLIENT.md §8).

            Exit status: 0 on success; 1 when dlmd cannot be reached or refuses the request (the reason is \
            printed as "dlmtool: <message>" on standard error); 64 for a usage error. `dlmtool lock` exits \
            with its command's status; see `dlmtool help lock`.
            """,
        subcommands: [
            Status.self, Ls.self, LockDebug.self, LockDump.self, Join.self, Leave.self, Purge.self, Lock.self,
            Members.self, FenceAck.self, Dump.self, DumpConfig.self,
            Keygen.self,
        ])
}

/// The options every command takes.
struct CommonOptions: ParsableArguments {
    @Option(
        name: .long,
        help: ArgumentHelp(
            "The socket dlmd listens on (default: $DLM_SOCKET, else /run/dlm/dlmd.sock).", valueName: "path"))
    var socket: String?

    @Flag(name: .long, help: "Print one JSON object for machines instead of text.")
    var json = false

    var socketPath: String { socket ?? DLMConnection.defaultSocketPath }

    /// Connects to dlmd, runs `body` and closes the connection. Any error is printed as
    /// `dlmtool: <message>` and turned into exit status 1 (or the status it names).
    func withConnection<T>(_ body: (DLMConnection) async throws -> T) async throws -> T {
        let connection = try await connect()
        do {
            let result = try await body(connection)
            await connection.close()
            return result
        } catch {
            await connection.close()
            throw ToolError.exit(for: error)
        }
    }

    /// Asks dlmd for the report of `kind`: with --json prints it as dlmd wrote it, else hands it to `body` decoded.
    func withReport<Report: Decodable>(
        _ kind: QueryKind, as type: Report.Type, _ body: (Report) throws -> Void
    ) async throws {
        try await withConnection { connection in
            let json = try await connection.query(kind)
            if self.json { return printJSONBytes(json) }
            try body(try decodeReport(type, json))
        }
    }

    /// Connects to dlmd; on failure prints why and throws exit status 1.
    func connect() async throws -> DLMConnection {
        let path = socketPath
        do {
            return try await DLMConnection.connect(socketPath: path, clientName: "dlmtool")
        } catch {
            throw ToolError.exit(
                for: ToolError("cannot connect to dlmd at \(path): \(describeConnectionError(error, path: path))"))
        }
    }
}

extension DLMConnection {
    /// Opens a lockspace whatever its value block length: dlmd refuses (EEXIST) to open an existing lockspace
    /// with a length other than the one asked for, and 0 asks for the default, 32. So the length is looked
    /// up first; a missing lockspace is created with the default length if `create`, else ENOENT.
    func openAnyLockspace(_ name: String, create: Bool) async throws -> DLMLockspace {
        let report = try decodeReport(LockspacesReport.self, try await query(.lockspaces))
        let length = report.lockspaces.first { $0.name == name }?.lvbLength
        return try await openLockspace(name, create: create, valueBlockLength: length)
    }
}

/// A failure the tool reports as `dlmtool: <message>` with a non-zero exit status.
struct ToolError: Error, CustomStringConvertible {
    var message: String
    var exitCode: Int32

    init(_ message: String, exitCode: Int32 = 1) {
        self.message = message
        self.exitCode = exitCode
    }

    var description: String { message }

    /// Prints `dlmtool: <message>` to standard error.
    static func report(_ message: String) {
        FileHandle.standardError.write(Data("dlmtool: \(message)\n".utf8))
    }

    /// Reports `error` and returns the `ExitCode` to end the process with.
    static func exit(for error: Error) -> Error {
        switch error {
        case let exit as ExitCode:
            return exit
        case let error as ToolError:
            report(error.message)
            return ExitCode(error.exitCode)
        case let error as DLMError:
            report("\(error.message) (\(error.status.name))")
            return ExitCode(1)
        default:
            report("\(error)")
            return ExitCode(1)
        }
    }
}

/// Writes JSON bytes (one object) and a newline to standard output.
func printJSONBytes(_ bytes: [UInt8]) {
    FileHandle.standardOutput.write(Data(bytes + [UInt8(ascii: "\n")]))
}

/// Encodes a value as compact JSON with sorted keys, as dlmd does, and prints it.
func printJSON<T: Encodable>(_ value: T) throws {
    let encoder = JSONEncoder()
    encoder.outputFormatting = [.sortedKeys, .withoutEscapingSlashes]
    printJSONBytes(Array(try encoder.encode(value)))
}

/// Decodes one of dlmd's reports.
func decodeReport<T: Decodable>(_ type: T.Type, _ bytes: [UInt8]) throws -> T {
    do {
        return try JSONDecoder().decode(type, from: Data(bytes))
    } catch {
        throw ToolError("cannot read dlmd's report: \(error)")
    }
}

/// Why a connection could not be made, in words ("No such file or directory"). NIO's errors name the
/// system call; a plain connect(2) to the same path gives the errno alone.
func describeConnectionError(_ error: Error, path: String) -> String {
    if let error = error as? DLMError { return error.message }
    let fd = Glibc.socket(AF_UNIX, Int32(SOCK_STREAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0)
    guard fd >= 0 else { return "\(error)" }
    defer { Glibc.close(fd) }
    var address = sockaddr_un()
    address.sun_family = sa_family_t(AF_UNIX)
    let bytes = Array(path.utf8)
    let capacity = MemoryLayout.size(ofValue: address.sun_path)
    guard bytes.count < capacity else { return "the path is longer than \(capacity - 1) bytes" }
    withUnsafeMutableBytes(of: &address.sun_path) { buffer in
        buffer.copyBytes(from: bytes)
    }
    let result = withUnsafePointer(to: address) {
        $0.withMemoryRebound(to: sockaddr.self, capacity: 1) {
            Glibc.connect(fd, $0, socklen_t(MemoryLayout<sockaddr_un>.size))
        }
    }
    return result == 0 ? "\(error)" : String(cString: strerror(errno))
}

/// A lockspace name on the command line: 1 to 64 bytes.
func checkLockspaceName(_ name: String) throws {
    guard (1...64).contains(name.utf8.count) else { throw ValidationError("a lockspace name has 1 to 64 bytes") }
}
