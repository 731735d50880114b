import DLMClient
import DLMCore
import DLMTestSupport
import Foundation
import Testing

/// `dlmd --metrics HOST:PORT`: Prometheus text on `GET /metrics` (docs/OPERATIONS.md, "Metrics"), which counts what
/// clients did and shows the node's state, and which `promtool check metrics` accepts.
@Suite struct MetricsTests {
    /// One HTTP GET over a plain socket: the status code and the body.
    static func get(_ path: String, port: Int) throws -> (status: Int, body: String) {
        let fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
        guard fd >= 0 else { throw SupportError("socket: errno \(errno)") }
        defer { close(fd) }
        var address = sockaddr_in()
        address.sin_family = sa_family_t(AF_INET)
        address.sin_port = in_port_t(UInt16(port).bigEndian)
        address.sin_addr.s_addr = inet_addr("127.0.0.1")
        let connected = withUnsafePointer(to: &address) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) {
                connect(fd, $0, socklen_t(MemoryLayout<sockaddr_in>.size))
            }
        }
        guard connected == 0 else { throw SupportError("cannot connect to 127.0.0.1:\(port): errno \(errno)") }
        let request = Array("GET \(path) HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n".utf8)
        guard write(fd, request, request.count) == request.count else { throw SupportError("write failed") }
        var response: [UInt8] = []
        var chunk = [UInt8](repeating: 0, count: 65536)
        while true {
            let n = read(fd, &chunk, chunk.count)
            if n < 0 && errno == EINTR { continue }
            guard n > 0 else { break }
            response += chunk[0..<n]
        }
        let text = String(decoding: response, as: UTF8.self)
        guard let split = text.range(of: "\r\n\r\n"),
            let status = Int(text.split(separator: " ").dropFirst().first ?? "")
        else { throw SupportError("not an HTTP response: \(text)") }
        return (status, String(text[split.upperBound...]))
    }

    /// The value of the sample `name` (with its labels, as printed) in a scrape; nil if absent.
    static func value(_ name: String, in body: String) -> Double? {
        for line in body.split(separator: "\n") where line.hasPrefix(name + " ") {
            return Double(line.dropFirst(name.count + 1))
        }
        return nil
    }

    @Test func aScrapeCountsRequestsAndShowsLocksAndPromtoolAcceptsIt() async throws {
        let port = try freePort()
        let daemon = try Daemon(arguments: ["--metrics", "127.0.0.1:\(port)"])
        defer { daemon.stop() }
        let connection = try await DLMConnection.connect(socketPath: daemon.socketPath)
        let ls = try await connection.openLockspace("metrics")
        for index in 0..<10 { try await ls.lock("r\(index)", mode: .ex).unlock() }
        let held = try await ls.lock("held", mode: .pr)
        let refused = await #expect(throws: DLMError.self) { try await ls.lock("held", mode: .ex, flags: .noQueue) }
        #expect(refused?.status == .tryAgain)
        let scrape = try Self.get("/metrics", port: port)
        #expect(scrape.status == 200)
        let body = scrape.body
        #expect(Self.value("dlm_requests_total{type=\"lock\"}", in: body) == 12)
        #expect(Self.value("dlm_requests_total{type=\"unlock\"}", in: body) == 10)
        #expect(Self.value("dlm_completions_total{status=\"0\"}", in: body) == 11)
        #expect(Self.value("dlm_completions_total{status=\"EUNLOCK\"}", in: body) == 10)
        #expect(Self.value("dlm_completions_total{status=\"EAGAIN\"}", in: body) == 1)
        #expect(Self.value("dlm_locks", in: body) == 1)
        #expect(Self.value("dlm_lockspaces", in: body) == 1)
        #expect(Self.value("dlm_connections", in: body) == 1)
        #expect(Self.value("dlm_quorate", in: body) == 1)
        #expect(Self.value("dlm_recovering", in: body) == 0)
        #expect(try Self.get("/other", port: port).status == 404)
        // promtool (Debian's prometheus, `make deps`) finds nothing wrong in it.
        let check = Process()
        check.executableURL = URL(fileURLWithPath: "/usr/bin/env")
        check.arguments = ["promtool", "check", "metrics"]
        let input = Pipe()
        let output = Pipe()
        check.standardInput = input
        check.standardOutput = output
        check.standardError = output
        try check.run()
        try input.fileHandleForWriting.write(contentsOf: Data(body.utf8))
        try input.fileHandleForWriting.close()
        let said = String(decoding: output.fileHandleForReading.readDataToEndOfFile(), as: UTF8.self)
        check.waitUntilExit()
        #expect(check.terminationStatus == 0, "promtool check metrics: \(said)")
        try await held.unlock()
        await connection.close()
    }
}
