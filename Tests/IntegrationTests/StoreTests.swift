import DLMClient
import DLMCore
import DLMTestSupport
import DLMWire
import Foundation
import NIOCore
import Testing

/// The store seen from outside: what `dlmtool status` says of it, `dlmd --check`, and a damaged or foreign
/// data directory refused at start with a clear error.
@Suite struct StoreTests {

    /// A client that sends durable requests and at once shuts down its sending side still gets every reply,
    /// in order, although the replies wait for the store's commit (Protocol/CLIENT.md §9).
    @Test(arguments: ["sync", "batch"])
    func halfClosedClientGetsRepliesThatWaitedForTheCommit(durability: String) async throws {
        let daemon = try Daemon(arguments: ["--durability", durability])
        defer { daemon.stop() }
        let socket = try RawSocket(path: daemon.socketPath)
        var out = ByteBuffer()
        ClientMessage.hello(Hello(pid: 7, clientName: "half")).encode(into: &out)
        ClientMessage.openLockspace(tag: 1, name: Array("half".utf8), valueBlockLength: 0, create: true)
            .encode(into: &out)
        for tag in 2...9 {
            ClientMessage.lock(
                LockMessage(
                    tag: UInt32(tag), lockspace: 0, flags: .persistent, mode: .ex, name: Array("r\(tag)".utf8))
            ).encode(into: &out)
        }
        ClientMessage.bye(tag: 10).encode(into: &out)
        socket.send(Array(out.readableBytesView))
        socket.finishSending()
        let replies = try socket.readFrames(11)
        guard case .helloReply = replies[0] else { throw SupportError("not HELLO_REPLY first: \(replies[0])") }
        guard case .lockspace(1, 0, _, true) = replies[1] else { throw SupportError("no LOCKSPACE: \(replies[1])") }
        for (index, reply) in replies[2...9].enumerated() {
            guard case .completion(let completion) = reply, completion.tag == UInt32(index + 2),
                completion.status == .granted
            else { throw SupportError("not the grant of tag \(index + 2): \(reply)") }
        }
        guard case .ok(10, _) = replies[10] else { throw SupportError("no OK for BYE: \(replies[10])") }
        socket.close()
    }

    @Test func statusReportsTheStoreAndEachStartIsANewIncarnation() async throws {
        let daemon = try Daemon(arguments: ["--durability", "sync"])
        let client = try await DLMConnection.connect(socketPath: daemon.socketPath)
        let ls = try await client.openLockspace("kept")
        _ = try await ls.lock("r", mode: .ex, flags: .persistent)
        let report = try JSONDecoder().decode(StatusReport.self, from: Data(try await client.query(.status)))
        #expect(report.store?.durability == "sync")
        #expect(report.store?.incarnation == 1)
        #expect(report.store?.path == daemon.directory)
        #expect((report.store?.usedBytes ?? 0) > 0 && (report.store?.mapSize ?? 0) == 1 << 30)
        #expect(report.store?.lastCommit != nil)
        await client.close()
        #expect(daemon.stop() == 0)

        // dlmd --check reads it back without starting.
        let check = try Daemon.runToEnd(["--data-dir", daemon.directory, "--check"])
        #expect(check.status == 0, "\(check.error)")
        #expect(check.output.contains("sound") && check.output.contains("1 persistent locks"))

        let again = try Daemon(directory: daemon.directory)
        defer { again.stop() }
        let second = try await DLMConnection.connect(socketPath: again.socketPath)
        let status = try JSONDecoder().decode(StatusReport.self, from: Data(try await second.query(.status)))
        #expect(status.store?.incarnation == 2 && status.store?.durability == "batch")
        #expect(status.locks == 1)
        await second.close()
    }

    /// Takes persistent EX locks on new names, 64 at a time, until dlmd refuses one with ENOSPC (the store is
    /// full); returns those granted. Any other failure, or no refusal within 200,000 locks, fails the test.
    static func fillStore(_ ls: DLMLockspace, prefix: String) async throws -> [DLMLock] {
        let padding = String(repeating: "x", count: 40)
        var granted: [DLMLock] = []
        var refused = false
        var next = 0
        while !refused {
            guard next < 200_000 else { throw SupportError("200000 persistent locks and no ENOSPC") }
            let first = next
            next += 64
            let wave = try await withThrowingTaskGroup(of: DLMLock?.self) { group in
                for index in first..<next {
                    group.addTask {
                        do {
                            return try await ls.lock("\(prefix)-\(index)-\(padding)", mode: .ex, flags: .persistent)
                        } catch let error as DLMError where error.status == .noSpace {
                            return nil
                        }
                    }
                }
                var wave: [DLMLock?] = []
                for try await lock in group { wave.append(lock) }
                return wave
            }
            granted += wave.compactMap { $0 }
            refused = wave.contains { $0 == nil }
        }
        return granted
    }

    /// `--map-size 1`: a client takes persistent locks until the store is full. Then new persistent locks and
    /// new lockspaces are refused with ENOSPC and the alarm shows in the status, while dlmd stays up and serves
    /// everything else; unlocks make room and the alarm goes off; and dlmd restarts on a full store with its
    /// alarm on and the persistent locks there to adopt.
    @Test(.timeLimit(.minutes(2)))
    func aFullStoreRefusesNewPersistentStateAndDlmdStaysUp() async throws {
        let directory = Daemon.temporaryDirectory("dlmd-full")
        var daemon = try Daemon(directory: directory, arguments: ["--map-size", "1"])
        let client = try await DLMConnection.connect(socketPath: daemon.socketPath)
        let ls = try await client.openLockspace("fill")
        let locks = try await Self.fillStore(ls, prefix: "a")
        #expect(locks.count > 1000, "only \(locks.count) persistent locks fit in 1 MiB")
        var report = try await LimitTests.waitForStatus(client, "the store alarm") { $0.store?.alarm == "full" }
        #expect(report.store.map { $0.usedBytes >= $0.mapSize } == true, "\(String(describing: report.store))")
        let refused = await #expect(throws: DLMError.self) {
            _ = try await ls.lock("one-more", mode: .ex, flags: .persistent)
        }
        #expect(refused?.status == .noSpace)
        let refusedLockspace = await #expect(throws: DLMError.self) { try await client.openLockspace("another") }
        #expect(refusedLockspace?.status == .noSpace)
        // Everything else goes on: locks that are not persistent, conversions, opening a lockspace that exists.
        let plain = try await ls.lock("plain", mode: .ex)
        let converted = try await locks[0].convert(to: .pr)
        #expect(converted.mode == .pr)
        _ = try await client.openLockspace("fill")

        // Unlocks make room: the alarm goes off and persistent locks are taken again.
        for lock in locks.dropFirst() { try await lock.unlock() }
        report = try await LimitTests.waitForStatus(client, "no store alarm") { $0.store?.alarm == nil }
        #expect(report.store.map { $0.usedBytes < $0.mapSize } == true, "\(String(describing: report.store))")
        _ = try await ls.lock("again", mode: .ex, flags: .persistent)
        try await plain.unlock()

        // Full again, then dlmd stops and starts on the full store: its alarm is on from the start, and its
        // persistent locks are there as orphans, to adopt.
        let second = try await Self.fillStore(ls, prefix: "b")
        await client.close()
        #expect(daemon.stop() == 0)
        daemon = try Daemon(directory: directory, arguments: ["--map-size", "1"])
        defer { daemon.stop() }
        let after = try await DLMConnection.connect(socketPath: daemon.socketPath)
        report = try await LimitTests.status(after)
        #expect(report.store?.alarm == "full", "\(String(describing: report.store))")
        #expect(report.locks == second.count + 2)
        let again = try await after.openLockspace("fill")
        let adopted = try await again.lock(
            "b-0-\(String(repeating: "x", count: 40))", mode: .ex, flags: [.persistent, .orphan])
        #expect(adopted.mode == .ex)
        let refusedAfter = await #expect(throws: DLMError.self) {
            _ = try await again.lock("c-0", mode: .ex, flags: .persistent)
        }
        #expect(refusedAfter?.status == .noSpace)
        await after.close()
    }

    @Test func aDamagedDataDirectoryIsRefusedWithAClearError() throws {
        let daemon = try Daemon()
        #expect(daemon.stop() == 0)
        let file = daemon.directory + "/data.mdb"
        let handle = try FileHandle(forWritingTo: URL(fileURLWithPath: file))
        try handle.write(contentsOf: Data(repeating: 0x42, count: 8192))  // both meta pages
        try handle.close()

        let check = try Daemon.runToEnd(["--data-dir", daemon.directory, "--check"])
        #expect(check.status == 1)
        #expect(check.error.contains("damaged"), "\(check.error)")

        let start = try Daemon.runToEnd(["--data-dir", daemon.directory, "--socket", daemon.directory + "/again.sock"])
        #expect(start.status == 1)
        #expect(start.error.hasPrefix("dlmd: "), "\(start.error)")
        #expect(!FileManager.default.fileExists(atPath: daemon.directory + "/again.sock"))
    }

    @Test func aDirectoryThatIsNotAStoreIsNotTouched() throws {
        let directory = Daemon.temporaryDirectory("dlm-foreign")
        try FileManager.default.createDirectory(atPath: directory, withIntermediateDirectories: true)
        try Data("not lmdb".utf8).write(to: URL(fileURLWithPath: directory + "/data.mdb"))
        let start = try Daemon.runToEnd(["--data-dir", directory, "--socket", directory + "/s.sock"])
        #expect(start.status == 1, "\(start.error)")
        #expect(try Data(contentsOf: URL(fileURLWithPath: directory + "/data.mdb")) == Data("not lmdb".utf8))
    }
}
