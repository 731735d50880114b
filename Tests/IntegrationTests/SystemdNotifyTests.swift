import DLMClient
import DLMTestSupport
import Foundation
import Testing

/// dlmd under systemd (`Type=notify`, dist/systemd/dlmd.service): it sends `READY=1` to `$NOTIFY_SOCKET` only once a
/// client can connect and be served, and `STOPPING=1` when SIGTERM begins a clean stop. The test plays systemd's
/// part: it binds the datagram socket itself and reads what arrives.
@Suite(.serialized, .timeLimit(.minutes(2)))
struct SystemdNotifyTests {
    /// A bound `AF_UNIX` `SOCK_DGRAM` socket: a path, or an abstract name written `@name` as in `$NOTIFY_SOCKET`.
    final class NotifySocket {
        let fd: Int32
        let name: String

        init(_ name: String) throws {
            self.name = name
            fd = socket(AF_UNIX, Int32(SOCK_DGRAM.rawValue), 0)
            guard fd >= 0 else { throw SupportError("socket: errno \(errno)") }
            var address = sockaddr_un()
            address.sun_family = sa_family_t(AF_UNIX)
            var bytes = Array(name.utf8)
            let abstract = bytes.first == UInt8(ascii: "@")
            if abstract { bytes[0] = 0 } else { bytes.append(0) }
            withUnsafeMutableBytes(of: &address.sun_path) { $0.copyBytes(from: bytes) }
            let length = MemoryLayout<sockaddr_un>.offset(of: \.sun_path)! + bytes.count
            let bound = withUnsafePointer(to: &address) {
                $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { bind(fd, $0, socklen_t(length)) }
            }
            guard bound == 0 else {
                close(fd)
                throw SupportError("bind \(name): errno \(errno)")
            }
            // A bound on a hang, not a pause: a datagram that never comes fails the test after a minute.
            var limit = timeval(tv_sec: 60, tv_usec: 0)
            setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &limit, socklen_t(MemoryLayout<timeval>.size))
        }

        /// The lines of the next datagram.
        func receive() throws -> [String] {
            var buffer = [UInt8](repeating: 0, count: 4096)
            while true {
                let n = recv(fd, &buffer, buffer.count, 0)
                if n < 0 && errno == EINTR { continue }
                guard n >= 0 else { throw SupportError("no notification on \(name) within 60 s (errno \(errno))") }
                return String(decoding: buffer[0..<n], as: UTF8.self).split(separator: "\n").map(String.init)
            }
        }

        deinit {
            close(fd)
            if !name.hasPrefix("@") { unlink(name) }
        }
    }

    /// Starts dlmd with `NOTIFY_SOCKET=notifyName` and checks the whole exchange: READY=1 with a STATUS line naming
    /// the socket, a client served at once, STOPPING=1 on SIGTERM, and a clean exit.
    func readyThenServedThenStopping(notifyName: (String) -> String) async throws {
        let directory = Daemon.temporaryDirectory("dlmd-notify")
        try FileManager.default.createDirectory(atPath: directory, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(atPath: directory) }
        let notify = try NotifySocket(notifyName(directory))
        let socketPath = directory + "/dlmd.sock"
        let process = Process()
        process.executableURL = URL(fileURLWithPath: Daemon.executable)
        process.arguments = ["--socket", socketPath, "--data-dir", directory, "--log-level", "warning"]
        process.environment = ProcessInfo.processInfo.environment.merging(["NOTIFY_SOCKET": notify.name]) { $1 }
        let output = Pipe()
        process.standardOutput = output
        let log = LineLog()
        try process.run()
        log.read(output.fileHandleForReading)
        defer {
            if process.isRunning {
                kill(process.processIdentifier, SIGKILL)
                process.waitUntilExit()
            }
        }

        let ready = try notify.receive()
        #expect(ready.contains("READY=1"), "the first notification: \(ready)")
        let status = ready.first { $0.hasPrefix("STATUS=") }
        #expect(status?.contains(socketPath) == true, "READY=1 comes with a STATUS line naming the socket: \(ready)")
        // Ready means ready: the first connection after READY=1 is served, with no retry.
        let connection = try await DLMConnection.connect(socketPath: socketPath)
        let ls = try await connection.openLockspace("notify")
        try await ls.lock("r", mode: .ex).unlock()
        await connection.close()

        process.terminate()
        let stopping = try notify.receive()
        #expect(stopping.contains("STOPPING=1"), "the notification after SIGTERM: \(stopping)")
        process.waitUntilExit()
        #expect(process.terminationReason == .exit && process.terminationStatus == 0, "printed: \(log.all)")
    }

    @Test func readyAndStoppingOnASocketPath() async throws {
        try await readyThenServedThenStopping { directory in directory + "/notify.sock" }
    }

    @Test func readyAndStoppingOnAnAbstractSocket() async throws {
        try await readyThenServedThenStopping { _ in "@dlmd-notify-test-\(UUID().uuidString.prefix(8))" }
    }
}
