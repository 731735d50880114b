import DLMClient
import DLMCore
import DLMTestSupport
import DLMWire
import Foundation
import NIOCore
import Testing

/// Integration tests against a real dlmd process over its Unix socket.
@Suite struct DaemonTests {
    @Test func everyStatusReachesTheClient() async throws {
        let daemon = try Daemon()
        defer { daemon.stop() }
        let a = try await DLMConnection.connect(socketPath: daemon.socketPath)
        let b = try await DLMConnection.connect(socketPath: daemon.socketPath)
        let lsA = try await a.openLockspace("statuses")
        let lsB = try await b.openLockspace("statuses")

        // 0: granted.
        let held = try await lsA.request(Array("r".utf8), mode: .ex)
        #expect(held.status == .granted && held.mode == .ex)
        // EAGAIN: NOQUEUE against EX.
        let refused = try await lsB.request(Array("r".utf8), mode: .pr, flags: .noQueue)
        #expect(refused.status == .tryAgain && refused.mode == nil)
        // ETIMEDOUT: a request that waits past its timeout.
        let timedOut = try await lsB.request(Array("r".utf8), mode: .pr, timeout: .milliseconds(30))
        #expect(timedOut.status == .timedOut)
        // EUNLOCK.
        #expect(try await lsA.unlock(held.id) == .unlocked)
        // EDEADLK: two PR holders both converting to EX.
        let p1 = try await lsA.lock("d", mode: .pr)
        let p2 = try await lsB.lock("d", mode: .pr)
        async let first = p1.requestConversion(to: .ex)
        try await waitUntil { try await waitingCount(a, lockspace: "statuses", resource: "d") == 1 }
        let second = try await p2.requestConversion(to: .ex)
        #expect(second.status == .deadlock && second.mode == .pr)
        try await p2.unlock()
        #expect(try await first.status == .granted)
        // ECANCEL: cancel a waiting request.
        let blocker = try await lsA.lock("c", mode: .ex)
        async let waiter = lsB.request(Array("c".utf8), mode: .ex)
        try await waitUntil { try await waitingCount(a, lockspace: "statuses", resource: "c") == 1 }
        let waitingID = try await waitingLockID(a, lockspace: "statuses", resource: "c")
        try await lsB.cancel(waitingID)
        #expect(try await waiter.status == .cancelled)
        try await blocker.unlock()
        // EINVAL, ENOENT, EBUSY: refused synchronously.
        await expectStatus(.invalid) { _ = try await lsA.lock("x", mode: .pr, flags: [.expedite]) }
        await expectStatus(.noEntry) { try await lsA.unlock(LockID(rawValue: 999_999)) }
        let busyHolder = try await lsA.lock("b", mode: .ex)
        let busyWaiter = try await lsB.request(Array("b".utf8), mode: .ex, flags: .noQueue)
        #expect(busyWaiter.status == .tryAgain)
        let pr = try await lsB.lock("b2", mode: .pr)
        let pr2 = try await lsA.lock("b2", mode: .pr)
        async let converting = pr.requestConversion(to: .ex)
        try await waitUntil { try await waitingCount(a, lockspace: "statuses", resource: "b2") == 1 }
        await expectStatus(.busy) { try await pr.unlock() }
        try await pr2.unlock()
        #expect(try await converting.status == .granted)
        try await busyHolder.unlock()
        await a.close()
        await b.close()
    }

    @Test func blockingCallbacksArrive() async throws {
        let daemon = try Daemon()
        defer { daemon.stop() }
        let a = try await DLMConnection.connect(socketPath: daemon.socketPath)
        let b = try await DLMConnection.connect(socketPath: daemon.socketPath)
        let lsA = try await a.openLockspace("basts")
        let lsB = try await b.openLockspace("basts")
        let (told, continuation) = AsyncStream<LockMode>.makeStream()
        let holder = try await lsA.lock("r", mode: .pr, onBlocking: { mode in continuation.yield(mode) })
        async let waiter = lsB.lock("r", mode: .ex)
        var modes = told.makeAsyncIterator()
        #expect(await modes.next() == .ex)
        // The connection-wide stream sees it too.
        var all = a.blockingCallbacks.makeAsyncIterator()
        #expect(await all.next() == BlockingEvent(lock: holder.id, mode: .ex))
        try await holder.unlock()
        #expect(try await waiter.mode == .ex)
        await a.close()
        await b.close()
    }

    @Test func valueBlocksTravel() async throws {
        let daemon = try Daemon()
        defer { daemon.stop() }
        let a = try await DLMConnection.connect(socketPath: daemon.socketPath)
        let ls = try await a.openLockspace("lvb", valueBlockLength: 16)
        #expect(ls.valueBlockLength == 16)
        let writer = try await ls.lock("r", mode: .ex, flags: .valueBlock)
        #expect(writer.valueBlock == [UInt8](repeating: 0, count: 16))
        // An NL lock keeps the resource, and with it the value block, alive between holders.
        let keeper = try await ls.lock("r", mode: .nl)
        try await writer.unlock(valueBlock: Array("hello".utf8))
        let reader = try await keeper.convert(to: .pr, flags: .valueBlock)
        #expect(reader.valueBlock == Array("hello".utf8) + [UInt8](repeating: 0, count: 11))
        #expect(reader.valueBlockSequence == 1)
        await a.close()
    }

    @Test func manyRequestsInFlightOnOneConnection() async throws {
        let daemon = try Daemon()
        defer { daemon.stop() }
        let connection = try await DLMConnection.connect(socketPath: daemon.socketPath)
        let ls = try await connection.openLockspace("pipelined")
        let ids = try await withThrowingTaskGroup(of: LockID.self) { group in
            for index in 0..<1000 {
                group.addTask { try await ls.lock("r\(index % 100)", mode: .pr).id }
            }
            return try await group.reduce(into: Set<LockID>()) { $0.insert($1) }
        }
        #expect(ids.count == 1000)
        let status = try JSONDecoder().decode(StatusReport.self, from: Data(try await connection.query(.status)))
        #expect(status.locks == 1000 && status.resources == 100)
        await connection.close()
    }

    @Test func aDisconnectedClientsLocksAreReleasedAndPersistentOnesOrphaned() async throws {
        let daemon = try Daemon()
        defer { daemon.stop() }
        let leaving = try await DLMConnection.connect(socketPath: daemon.socketPath)
        let lsLeaving = try await leaving.openLockspace("owners", valueBlockLength: 8)
        let plain = try await lsLeaving.lock("plain", mode: .ex)
        let kept = try await lsLeaving.lock("kept", mode: .pw, flags: [.persistent, .valueBlock])
        _ = plain
        let other = try await DLMConnection.connect(socketPath: daemon.socketPath)
        let ls = try await other.openLockspace("owners")
        async let next = ls.lock("plain", mode: .ex)
        try await waitUntil { try await waitingCount(other, lockspace: "owners", resource: "plain") == 1 }
        await leaving.close()
        #expect(try await next.mode == .ex)
        let adopted = try await ls.lock("kept", mode: .pw, flags: [.orphan, .valueBlock])
        #expect(adopted.id == kept.id)
        await expectStatus(.noEntry) { _ = try await ls.lock("kept", mode: .pw, flags: .orphan) }
        await other.close()
    }

    @Test func aFloodOfBadFramesDisturbsNoOtherClient() async throws {
        let daemon = try Daemon()
        defer { daemon.stop() }
        let good = try await DLMConnection.connect(socketPath: daemon.socketPath)
        let ls = try await good.openLockspace("flood", valueBlockLength: 8)
        let held = try await ls.lock("held", mode: .ex, flags: .valueBlock)
        let keeper = try await ls.lock("held", mode: .nl, flags: .valueBlock)
        try await held.unlock(valueBlock: Array("keep".utf8))
        var generator = SystemRandomNumberGenerator()
        for round in 0..<300 {
            let socket = try RawSocket(path: daemon.socketPath)
            var frame: [UInt8]
            switch round % 4 {
            case 0:  // garbage before HELLO
                let count = Int.random(in: 1...200, using: &generator)
                frame = (0..<count).map { _ in UInt8.random(in: 0...255, using: &generator) }
            case 1:  // a LOCK before HELLO
                var buffer = ByteBuffer()
                ClientMessage.lock(LockMessage(tag: 1, lockspace: 0, mode: .ex, name: Array("held".utf8)))
                    .encode(into: &buffer)
                frame = Array(buffer.readableBytesView)
            case 2:  // an oversized frame
                frame = [0, 1, 0, 0, 0x20] + [UInt8](repeating: 0, count: 64)
            default:  // a valid HELLO, then a truncated LOCK
                var buffer = ByteBuffer()
                ClientMessage.hello(Hello(pid: 1, clientName: "bad")).encode(into: &buffer)
                ClientMessage.lock(LockMessage(tag: 1, lockspace: 0, mode: .ex, name: Array("held".utf8)))
                    .encode(into: &buffer)
                frame = Array(buffer.readableBytesView.dropLast(3))
                frame[3] -= 3
                frame += [0, 0, 0, 1, 0x77]  // and an unknown type
            }
            socket.send(frame)
            socket.finishSending()
            let reply = socket.readToEnd()
            // The bad client gets an ERROR frame (tag 0) before the close.
            var buffer = ByteBuffer(bytes: reply)
            var sawError = false
            while let (type, body) = try nextFrame(from: &buffer, maxLength: WireLimits.maxServerFrame) {
                var body = body
                if case .error(0, let status, _) = try ServerMessage.decode(type: type, body: &body) {
                    sawError = status == .protocolError || status == .messageTooLong
                }
            }
            #expect(sawError, "round \(round): no ERROR before the close")
        }
        // The good client is untouched: its lock, its value block, its connection.
        try await good.ping()
        let converted = try await keeper.convert(to: .pr, flags: .valueBlock)
        #expect(converted.valueBlock == Array("keep".utf8) + [0, 0, 0, 0])
        let report = try JSONDecoder().decode(StatusReport.self, from: Data(try await good.query(.status)))
        #expect(report.connections == 1 && report.locks == 1)
        await good.close()
    }

    /// `--listen`: a TCP client on loopback is served as a Unix-socket one is; a non-loopback address is refused
    /// at start (no TLS or client authentication yet), saying why.
    @Test func tcpClientsOnLoopbackOnly() async throws {
        let directory = Daemon.temporaryDirectory("dlmd-tcp")
        let refused = try Daemon.runToEnd([
            "--no-socket", "--listen", "0.0.0.0:\(try freePort())", "--data-dir", directory,
        ])
        #expect(refused.status != 0)
        #expect(refused.error.contains("loopback address only"), "\(refused.error)")
        // Refused before anything was created.
        #expect(!FileManager.default.fileExists(atPath: directory))
        let port = try freePort()
        let daemon = try Daemon(arguments: ["--listen", "127.0.0.1:\(port)"])
        defer { daemon.stop() }
        let socket = try RawSocket(tcpPort: port)
        var request = ByteBuffer()
        ClientMessage.hello(Hello(pid: 1, clientName: "tcp")).encode(into: &request)
        ClientMessage.bye(tag: 9).encode(into: &request)
        socket.send(Array(request.readableBytesView))
        var buffer = ByteBuffer(bytes: socket.readToEnd())
        var replies: [ServerMessage] = []
        while let (type, body) = try nextFrame(from: &buffer, maxLength: WireLimits.maxServerFrame) {
            var body = body
            replies.append(try ServerMessage.decode(type: type, body: &body))
        }
        guard case .helloReply = replies.first else {
            Issue.record("no HELLO_REPLY: \(replies)")
            return
        }
        #expect(replies.dropFirst().first == .ok(tag: 9, lock: 0))
    }

    @Test func aCleanShutdownTellsClientsAndKeepsPersistentLocks() async throws {
        let daemon = try Daemon()
        let client = try await DLMConnection.connect(socketPath: daemon.socketPath)
        let ls = try await client.openLockspace("shutdown", valueBlockLength: 8)
        let persistent = try await ls.lock("p", mode: .ex, flags: [.persistent, .valueBlock])
        _ = try await persistent.convert(to: .pw, flags: .valueBlock, valueBlock: Array("saved".utf8))
        _ = try await ls.lock("q", mode: .ex)
        let token = try await ls.lock("t", mode: .ex, flags: .persistent).fencingToken
        #expect(daemon.stop() == 0)
        // The client was told: its next request fails with ESHUTDOWN.
        await expectStatus(.shuttingDown) { try await client.ping() }
        // A new daemon on the same data directory gives the persistent lock back as an orphan.
        let restarted = try Daemon(directory: daemon.directory)
        defer { restarted.stop() }
        let again = try await DLMConnection.connect(socketPath: restarted.socketPath)
        let ls2 = try await again.openLockspace("shutdown")
        let adopted = try await ls2.lock("t", mode: .ex, flags: .orphan)
        #expect(adopted.fencingToken > token)
        let value = try await ls2.lock("p", mode: .pw, flags: [.orphan, .valueBlock])
        #expect(value.id == persistent.id)
        #expect(value.valueBlock == Array("saved".utf8) + [0, 0, 0])
        // The non-persistent lock is gone.
        await expectStatus(.noEntry) { _ = try await ls2.lock("q", mode: .ex, flags: .orphan) }
        let fresh = try await ls2.lock("q", mode: .ex, flags: .noQueue)
        #expect(fresh.mode == .ex)
        await again.close()
    }
}

// MARK: Helpers

func expectStatus(
    _ status: DLMStatus, sourceLocation: SourceLocation = #_sourceLocation, _ body: () async throws -> Void
) async {
    do {
        try await body()
        Issue.record("expected \(status.name), got success", sourceLocation: sourceLocation)
    } catch let error as DLMError {
        #expect(error.status == status, "\(error)", sourceLocation: sourceLocation)
    } catch {
        Issue.record("expected \(status.name), got \(error)", sourceLocation: sourceLocation)
    }
}

/// Polls dlmd (a request and its reply, not a sleep) until `condition` holds, for at most `attempts` rounds.
func waitUntil(attempts: Int = 10_000, _ condition: () async throws -> Bool) async throws {
    for _ in 0..<attempts {
        if try await condition() { return }
        await Task.yield()
    }
    throw SupportError("condition not reached")
}

func lockDebug(_ connection: DLMConnection, lockspace: String) async throws -> LockDebugReport {
    try JSONDecoder().decode(
        LockDebugReport.self, from: Data(try await connection.query(.lockdebug, argument: Array(lockspace.utf8))))
}

func waitingCount(_ connection: DLMConnection, lockspace: String, resource: String) async throws -> Int {
    let report = try await lockDebug(connection, lockspace: lockspace)
    guard let entry = report.resources.first(where: { $0.name == resource }) else { return 0 }
    return entry.waiting.count + entry.converting.count
}

func waitingLockID(_ connection: DLMConnection, lockspace: String, resource: String) async throws -> LockID {
    let report = try await lockDebug(connection, lockspace: lockspace)
    guard let entry = report.resources.first(where: { $0.name == resource }),
        let lock = (entry.waiting + entry.converting).first, let id = UInt32(lock.id, radix: 16)
    else { throw SupportError("no waiting lock on \(resource)") }
    return LockID(rawValue: id)
}
