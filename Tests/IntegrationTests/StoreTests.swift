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
        let directory = FileManager.default.temporaryDirectory.appendingPathComponent("dlm-foreign-\(UUID())").path
        try FileManager.default.createDirectory(atPath: directory, withIntermediateDirectories: true)
        try Data("not lmdb".utf8).write(to: URL(fileURLWithPath: directory + "/data.mdb"))
        let start = try Daemon.runToEnd(["--data-dir", directory, "--socket", directory + "/s.sock"])
        #expect(start.status == 1, "\(start.error)")
        #expect(try Data(contentsOf: URL(fileURLWithPath: directory + "/data.mdb")) == Data("not lmdb".utf8))
    }
}
