import DLMClient
import DLMCore
import DLMTestSupport
import DLMWire
import Foundation
import NIOCore
import Testing

/// Limits against a real dlmd (docs/SECURITY.md): a client that sends without reading its replies is no longer
/// read from once its unread output passes the pause mark, loses nothing, and others are served meanwhile; one
/// whose unread output passes the limit is closed; connections past max_connections are refused.
@Suite(.timeLimit(.minutes(2)))
struct LimitTests {
    static func status(_ connection: DLMConnection) async throws -> StatusReport {
        let json = try await connection.query(.status)
        return try JSONDecoder().decode(StatusReport.self, from: Data(json))
    }

    /// Asks for the status until `condition` holds (a hang detector ends the wait).
    static func waitForStatus(
        _ connection: DLMConnection, _ what: String, until condition: (StatusReport) -> Bool
    ) async throws -> StatusReport {
        let deadline = ContinuousClock.now + .seconds(30)
        while true {
            let report = try await status(connection)
            if condition(report) { return report }
            guard ContinuousClock.now < deadline else { throw SupportError("no status with \(what): \(report)") }
            try await Task.sleep(for: .milliseconds(10))
        }
    }

    static func frames(_ messages: [ClientMessage]) -> [UInt8] {
        var buffer = ByteBuffer()
        for message in messages { message.encode(into: &buffer) }
        return Array(buffer.readableBytesView)
    }

    static func decode(_ bytes: [UInt8]) throws -> [ServerMessage] {
        var buffer = ByteBuffer(bytes: bytes)
        var messages: [ServerMessage] = []
        while let (type, body) = try nextFrame(from: &buffer, maxLength: WireLimits.maxServerFrame) {
            var body = body
            messages.append(try ServerMessage.decode(type: type, body: &body))
        }
        return messages
    }

    /// A client writes PINGs without reading: once its unread PONGs pass 64 KiB dlmd stops reading it, so its
    /// writes stop (the socket fills) while another client is served; then it reads, and every PING it sent gets
    /// its PONG, in order.
    @Test func aClientThatDoesNotReadIsPausedNotServedWithoutBound() async throws {
        let daemon = try Daemon(arguments: ["--output-pause-kib", "64"])
        defer { daemon.stop() }
        let observer = try await DLMConnection.connect(socketPath: daemon.socketPath)
        let flooder = try RawSocket(path: daemon.socketPath)
        flooder.send(Self.frames([.hello(Hello(pid: 1, clientName: "flooder"))]))
        let count = 400_000
        let pings = Self.frames((0..<count).map { .ping(tag: UInt32($0)) })
        let taken = flooder.sendWithoutBlocking(pings)
        #expect(taken < pings.count, "dlmd read all \(pings.count) bytes without pausing")
        let paused = try await Self.waitForStatus(observer, "a paused client") { $0.limits?.readsPaused == 1 }
        #expect(paused.limits?.outputPauseBytes == 64 << 10)
        #expect(paused.limits?.closedForOutput == 0)
        // Served meanwhile.
        let ls = try await observer.openLockspace("limits")
        let lock = try await ls.request(Array("r".utf8), mode: .ex)
        #expect(lock.status == .granted)

        // Now it reads everything, and sends the rest of a cut frame and BYE.
        let frameSize = pings.count / count
        let sent = (taken + frameSize - 1) / frameSize
        let reader = Task.detached { [flooder] in flooder.readToEnd(limit: 1 << 30) }
        flooder.send(Array(pings[taken..<(sent * frameSize)]) + Self.frames([.bye(tag: 7)]))
        let replies = try Self.decode(await reader.value)
        #expect(replies.first.map { if case .helloReply = $0 { true } else { false } } == true)
        let pongs = replies.dropFirst().prefix { if case .pong = $0 { true } else { false } }
        #expect(pongs.count == sent)
        #expect(pongs.enumerated().allSatisfy { $0.element == .pong(tag: UInt32($0.offset)) })
        #expect(replies.last == .ok(tag: 7, lock: 0))
        let after = try await Self.waitForStatus(observer, "no paused client") { $0.limits?.readsPaused == 0 }
        #expect(after.connections == 1)
        await observer.close()
    }

    /// A client pipelines requests while its node is stopped (a cluster member without quorum): they wait to run,
    /// and once 64 of them wait dlmd stops reading from it (its writes stop, and the status says so) while another
    /// client is served. Once the node has quorum, every request runs in order, reading resumes, and nothing is
    /// lost.
    @Test func requestsWaitingToRunPauseReadingAtTheCap() async throws {
        let cluster = try TestCluster(nodes: 3)
        cluster.arguments = { _ in ["--max-queued-requests", "64"] }
        defer { cluster.stopAll() }
        try cluster.start(1)
        let observer = try await DLMConnection.connect(socketPath: cluster.socket(1))
        let flooder = try RawSocket(path: cluster.socket(1))
        // The open waits for quorum, and every PING after it waits behind it.
        flooder.send(
            Self.frames([
                .hello(Hello(pid: 1, clientName: "flooder")),
                .openLockspace(tag: 1, name: Array("q".utf8), valueBlockLength: 0, create: true, mode: 0o600),
            ]))
        let count = 400_000
        let pings = Self.frames((0..<count).map { .ping(tag: UInt32(2 + $0)) })
        let taken = flooder.sendWithoutBlocking(pings)
        #expect(taken < pings.count, "dlmd read all \(pings.count) bytes without pausing")
        let paused = try await Self.waitForStatus(observer, "a client paused for its queue") {
            $0.limits?.readsPausedForQueue == 1
        }
        #expect(paused.limits?.maxQueuedRequests == 64 && paused.limits?.queuePauses == 1)
        #expect(paused.recovery.heldRequests < count && !paused.recovery.waitingFor.isEmpty && !paused.quorate)

        try cluster.start(2)
        let frameSize = pings.count / count
        let sent = (taken + frameSize - 1) / frameSize
        let reader = Task.detached { [flooder] in flooder.readToEnd(limit: 1 << 30) }
        flooder.send(Array(pings[taken..<(sent * frameSize)]) + Self.frames([.bye(tag: 7)]))
        let replies = try Self.decode(await reader.value)
        #expect(replies.count == sent + 3)
        #expect(
            replies.dropFirst().first.map { if case .lockspace(1, _, _, true) = $0 { true } else { false } } == true)
        let pongs = replies.dropFirst(2).prefix { if case .pong = $0 { true } else { false } }
        #expect(pongs.count == sent)
        #expect(pongs.enumerated().allSatisfy { $0.element == .pong(tag: UInt32(2 + $0.offset)) })
        #expect(replies.last == .ok(tag: 7, lock: 0))
        let after = try await Self.waitForStatus(observer, "no client paused") { $0.limits?.readsPausedForQueue == 0 }
        #expect(after.limits?.queuePauses == 1)
        let text = try await ToolRun.run(arguments: ["status", "--socket", cluster.socket(1)])
        #expect(text.fields["request queue"]?.hasPrefix("pause reading at 64 requests waiting to run") == true)
        await observer.close()
    }

    /// A client asks for many status reports without reading them: its unread output passes the limit (256 KiB)
    /// before its reads pause, and it is closed; the count says so, and another client is served.
    @Test func aClientWhoseUnreadOutputPassesTheLimitIsClosed() async throws {
        let daemon = try Daemon(arguments: ["--output-pause-kib", "16", "--output-limit-kib", "256"])
        defer { daemon.stop() }
        let observer = try await DLMConnection.connect(socketPath: daemon.socketPath)
        let flooder = try RawSocket(path: daemon.socketPath)
        flooder.send(Self.frames([.hello(Hello(pid: 1, clientName: "flooder"))]))
        _ = flooder.sendWithoutBlocking(
            Self.frames((0..<20_000).map { .query(tag: UInt32($0), kind: .status, argument: []) }))
        let report = try await Self.waitForStatus(observer, "a client closed for its output") {
            $0.limits?.closedForOutput == 1
        }
        #expect(report.limits?.outputLimitBytes == 256 << 10)
        let received = flooder.readToEnd(limit: 1 << 30)
        #expect(received.count < 20_000 * 1_000, "the flooder got \(received.count) bytes")
        try await observer.ping()
        await observer.close()
    }

    /// `--max-locks-per-connection 2 --max-locks-per-user 3`: a connection's third lock and its user's fourth are
    /// refused with EAGAIN (the uid is the kernel's), counted in the status; an unlock makes room.
    @Test func locksPastTheConnectionOrUserLimitAreRefused() async throws {
        let daemon = try Daemon(arguments: ["--max-locks-per-connection", "2", "--max-locks-per-user", "3"])
        defer { daemon.stop() }
        let a = try await DLMConnection.connect(socketPath: daemon.socketPath)
        let b = try await DLMConnection.connect(socketPath: daemon.socketPath)
        let lsA = try await a.openLockspace("limits")
        let lsB = try await b.openLockspace("limits")
        let first = try await lsA.lock("r1", mode: .ex)
        _ = try await lsA.lock("r2", mode: .ex)
        let perConnection = await #expect(throws: DLMError.self) { try await lsA.lock("r3", mode: .ex) }
        #expect(perConnection?.status == .tryAgain)
        #expect(perConnection?.message.contains("max_locks_per_connection") == true)
        _ = try await lsB.lock("s1", mode: .ex)
        let perUser = await #expect(throws: DLMError.self) { try await lsB.lock("s2", mode: .ex) }
        #expect(perUser?.status == .tryAgain)
        #expect(perUser?.message.contains("max_locks_per_user") == true)
        try await first.unlock()
        _ = try await lsB.lock("s2", mode: .ex)
        let report = try await Self.status(a)
        #expect(report.limits?.locksRefused == 2)
        #expect(report.limits?.maxLocksPerConnection == 2 && report.limits?.maxLocksPerUser == 3)
        await a.close()
        await b.close()
    }

    /// `--max-connections 2`: a third client is refused (EAGAIN), and served once another has gone; a C client
    /// past the limit gets EAGAIN from the library.
    @Test func connectionsPastTheMaximumAreRefused() async throws {
        let daemon = try Daemon(arguments: ["--max-connections", "2"])
        defer { daemon.stop() }
        let a = try await DLMConnection.connect(socketPath: daemon.socketPath)
        let b = try await DLMConnection.connect(socketPath: daemon.socketPath)
        let error = await #expect(throws: DLMError.self) {
            try await DLMConnection.connect(socketPath: daemon.socketPath)
        }
        #expect(error?.status == .tryAgain, "\(String(describing: error))")
        await b.close()
        let report = try await Self.waitForStatus(a, "one connection") { $0.connections == 1 }
        #expect(report.limits?.connectionsRefused == 1 && report.limits?.maxConnections == 2)
        let c = try await DLMConnection.connect(socketPath: daemon.socketPath)
        // The C library says EAGAIN too (dlm_create_lockspace fails with errno 11), whether or not its HELLO was
        // sent before dlmd closed.
        let program = try ClusterDeadlockTests.deadlocker.get()
        let process = Process()
        process.executableURL = URL(fileURLWithPath: program)
        process.arguments = ["limits", "r1", "r2"]
        process.environment = ["DLM_SOCKET": daemon.socketPath]
        let output = Pipe()
        process.standardOutput = output
        try process.run()
        let printed = String(decoding: output.fileHandleForReading.readDataToEndOfFile(), as: UTF8.self)
        process.waitUntilExit()
        #expect(printed == "error create \(EAGAIN)\n")
        await c.close()
        await a.close()
    }
}
