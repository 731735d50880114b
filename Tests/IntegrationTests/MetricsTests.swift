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
        let socket = try RawSocket(tcpPort: port)
        guard socket.send(Array("GET \(path) HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n".utf8)) else {
            throw SupportError("write failed")
        }
        let response = socket.readToEnd(limit: 16 << 20)
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
        // A request that waits: the holder's blocking callback says it is queued, then the holder lets it in.
        let (blocked, blocking) = AsyncStream<LockMode>.makeStream()
        let held = try await ls.lock("held", mode: .pr, onBlocking: { blocking.yield($0) })
        let refused = await #expect(throws: DLMError.self) { try await ls.lock("held", mode: .ex, flags: .noQueue) }
        #expect(refused?.status == .tryAgain)
        let other = try await DLMConnection.connect(socketPath: daemon.socketPath)
        let otherLs = try await other.openLockspace("metrics")
        async let waited = otherLs.lock("held", mode: .ex)
        var callbacks = blocked.makeAsyncIterator()
        #expect(await callbacks.next() == .ex)
        let waiting = try Self.get("/metrics", port: port).body
        #expect(Self.value("dlm_waiters", in: waiting) == 1)
        #expect(Self.value("dlm_locks", in: waiting) == 2)
        try await held.unlock()
        try await waited.unlock()
        // A persistent lock is stored before it is granted: a commit of the store.
        try await ls.lock("kept", mode: .ex, flags: .persistent).unlock()
        let scrape = try Self.get("/metrics", port: port)
        #expect(scrape.status == 200)
        let body = scrape.body
        #expect(Self.value("dlm_requests_total{type=\"lock\"}", in: body) == 14)
        #expect(Self.value("dlm_requests_total{type=\"unlock\"}", in: body) == 13)
        #expect(Self.value("dlm_completions_total{status=\"0\"}", in: body) == 13)
        #expect(Self.value("dlm_completions_total{status=\"EUNLOCK\"}", in: body) == 13)
        #expect(Self.value("dlm_completions_total{status=\"EAGAIN\"}", in: body) == 1)
        // Every request answered was timed: 14 locks (one answered OK, as it waited), 13 unlocks; 13 grants, one
        // of them after a wait.
        #expect(Self.value("dlm_request_duration_seconds_count{type=\"lock\"}", in: body) == 14)
        #expect(Self.value("dlm_request_duration_seconds_count{type=\"unlock\"}", in: body) == 13)
        #expect(Self.value("dlm_request_duration_seconds_bucket{type=\"lock\",le=\"+Inf\"}", in: body) == 14)
        #expect(Self.value("dlm_grant_latency_seconds_count", in: body) == 13)
        #expect(Self.value("dlm_wait_seconds_count", in: body) == 1)
        #expect((Self.value("dlm_wait_seconds_sum", in: body) ?? 0) > 0)
        #expect((Self.value("dlm_store_commit_seconds_count", in: body) ?? 0) >= 1)
        #expect((Self.value("dlm_store_used_bytes", in: body) ?? 0) > 0)
        #expect((Self.value("dlm_store_map_bytes", in: body) ?? 0) >= Self.value("dlm_store_used_bytes", in: body)!)
        #expect(Self.value("dlm_recovery_seconds_count", in: body) == 0)
        #expect(Self.value("dlm_locks", in: body) == 0)
        #expect(Self.value("dlm_waiters", in: body) == 0)
        #expect(Self.value("dlm_lockspaces", in: body) == 1)
        #expect(Self.value("dlm_connections", in: body) == 2)
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
        await other.close()
        await connection.close()
    }

    /// Cluster members count what only a cluster does: views installed, fences, lock messages to and from other
    /// nodes by kind, and recoveries timed whole and by phase.
    @Test(.timeLimit(.minutes(3))) func clusterMembersCountViewsFencesPeerMessagesAndRecoveries() async throws {
        let cluster = try TestCluster(nodes: 3)
        defer { cluster.stopAll() }
        let ports = try (1...3).map { _ in try freePort() }
        cluster.arguments = { ["--metrics", "127.0.0.1:\(ports[$0 - 1])"] }
        try cluster.startAll()
        for node in 1...3 { try cluster.waitForView(at: node, members: "1,2,3", primary: true) }
        // The lockspace open on every node; locks from node 1 on names whose directory the three share (spread by
        // a hash of the name): node 1 asks the others about some (it becomes their master, the first to ask).
        var connections: [DLMConnection] = []
        for node in 1...3 {
            let connection = try await DLMConnection.connect(socketPath: cluster.socket(node))
            _ = try await connection.openLockspace("metrics")
            connections.append(connection)
        }
        let ls = try await connections[0].openLockspace("metrics")
        for index in 0..<20 { try await ls.lock("r\(index)", mode: .ex).unlock() }
        let before = try Self.get("/metrics", port: ports[0]).body
        #expect((Self.value("dlm_peer_messages_sent_total{kind=\"lookup\"}", in: before) ?? 0) > 0)
        #expect((Self.value("dlm_peer_messages_received_total{kind=\"lookup_reply\"}", in: before) ?? 0) > 0)
        #expect((Self.value("dlm_views_installed_total", in: before) ?? 0) >= 1)
        let viewBefore = try #require(Self.value("dlm_view", in: before))
        #expect(viewBefore > 0)

        cluster.kill(3)
        for node in 1...2 {
            try cluster.waitForView(at: node, members: "1,2", primary: true)
            try cluster.log(node).wait(for: "the recovery after the kill at node \(node)", timeout: 60) {
                $0.contains("dlmd: node \(node) recovery done view")
                    && Double($0.split(separator: " ").last ?? "").map { $0 > viewBefore } == true
            }
        }
        var fences = 0.0
        for node in 1...2 {
            let body = try Self.get("/metrics", port: ports[node - 1]).body
            #expect((Self.value("dlm_view", in: body) ?? 0) > viewBefore)
            #expect((Self.value("dlm_views_installed_total", in: body) ?? 0) >= 2)
            #expect((Self.value("dlm_recoveries_done_total", in: body) ?? 0) >= 2)
            // The first view's recovery and the one after the kill, whole and in both phases.
            #expect((Self.value("dlm_recovery_seconds_count", in: body) ?? 0) >= 2)
            #expect((Self.value("dlm_recovery_phase_seconds_count{phase=\"1\"}", in: body) ?? 0) >= 2)
            #expect((Self.value("dlm_recovery_phase_seconds_count{phase=\"2\"}", in: body) ?? 0) >= 2)
            #expect((Self.value("dlm_peer_messages_sent_total{kind=\"recovery_done\"}", in: body) ?? 0) > 0)
            fences += Self.value("dlm_fences_total", in: body) ?? 0
        }
        // The coordinator fenced node 3 (once, or again if a loaded machine made the view change start over).
        #expect(fences >= 1 && !cluster.fenced.isEmpty)
        for connection in connections.prefix(2) { await connection.close() }
    }
}
