import DLMClient
import DLMCore
import DLMTestSupport
import DLMWire
import Foundation
import NIOCore
import Testing

/// PURGE (`dlm_ls_purge`) against a real dlmd: the orphans of one process go, those of others stay, and an
/// orphan still knows its process after a restart of dlmd.
@Suite struct PurgeTests {
    /// A process that takes persistent PR locks on `names` and an EX lock on `gate`, then dies: a raw
    /// connection whose HELLO gives `pid`. Returns once dlmd has handled its exit (our `gate` request is
    /// granted), so that its persistent locks are orphans.
    func leaveOrphans(_ daemon: Daemon, _ ls: DLMLockspace, pid: UInt32, names: [String]) async throws {
        let socket = try RawSocket(path: daemon.socketPath)
        var out = ByteBuffer()
        ClientMessage.hello(Hello(pid: pid, clientName: "doomed")).encode(into: &out)
        for (index, name) in (names + ["gate"]).enumerated() {
            let persistent = index < names.count
            ClientMessage.lock(
                LockMessage(
                    tag: UInt32(index + 1), lockspace: ls.id, flags: persistent ? .persistent : [],
                    mode: persistent ? .pr : .ex, name: Array(name.utf8))
            ).encode(into: &out)
        }
        socket.send(Array(out.readableBytesView))
        // HELLO_REPLY, then a completion per lock; then the socket closes, as a process's does when it dies.
        var granted = 0
        for message in try socket.readFrames(names.count + 2).dropFirst() {
            if case .completion(let c) = message, c.status == .granted { granted += 1 }
        }
        socket.close()
        #expect(granted == names.count + 1)
        let gate = try await ls.lock("gate", mode: .ex)
        try await gate.unlock()
    }

    /// Whether `name` is free: EX with NOQUEUE is granted (and released), not refused.
    func isFree(_ ls: DLMLockspace, _ name: String) async throws -> Bool {
        let result = try await ls.request(Array(name.utf8), mode: .ex, flags: .noQueue)
        if result.status == .granted { try await ls.unlock(result.id) }
        return result.status == .granted
    }

    /// The pid of each orphan of the lockspace, by resource name, from lockdebug.
    func orphanPIDs(_ client: DLMConnection, _ ls: String) async throws -> [String: Int32] {
        let json = try await client.query(.lockdebug, argument: Array(ls.utf8))
        let report = try JSONDecoder().decode(LockDebugReport.self, from: Data(json))
        var pids: [String: Int32] = [:]
        for resource in report.resources {
            for lock in resource.granted where lock.owner == "orphan" { pids[resource.name] = lock.pid }
        }
        return pids
    }

    @Test func purgeRemovesTheOrphansOfOneProcessAndThePidSurvivesARestart() async throws {
        let daemon = try Daemon()
        defer { daemon.stop() }
        let client = try await DLMConnection.connect(socketPath: daemon.socketPath)
        let ls = try await client.openLockspace("purge")
        try await leaveOrphans(daemon, ls, pid: 4001, names: ["a1", "a2"])
        try await leaveOrphans(daemon, ls, pid: 4002, names: ["b1", "b2"])
        #expect(try await orphanPIDs(client, "purge") == ["a1": 4001, "a2": 4001, "b1": 4002, "b2": 4002])

        // Another node's process: nothing here.
        #expect(try await ls.purge(nodeID: 99, pid: 4001) == 0)
        #expect(try await ls.purge(pid: 4001) == 2)
        #expect(try await isFree(ls, "a1"))
        #expect(try await isFree(ls, "a2"))
        #expect(try await !isFree(ls, "b1"))
        #expect(try await !isFree(ls, "b2"))
        #expect(try await ls.purge(pid: 4001) == 0)

        // After a restart the orphans come back from the store with their pid.
        await client.close()
        #expect(daemon.stop() == 0)
        let again = try Daemon(directory: daemon.directory)
        defer { again.stop() }
        let second = try await DLMConnection.connect(socketPath: again.socketPath)
        let reopened = try await second.openLockspace("purge")
        #expect(try await orphanPIDs(second, "purge") == ["b1": 4002, "b2": 4002])
        #expect(try await reopened.purge(pid: 4001) == 0)
        #expect(try await !isFree(reopened, "b1"))
        #expect(try await reopened.purge(nodeID: 1, pid: 4002) == 2)
        #expect(try await isFree(reopened, "b1"))
        #expect(try await isFree(reopened, "b2"))
        #expect(try await orphanPIDs(second, "purge").isEmpty)

        // A released lockspace: ENOENT, whatever the node.
        let gone = try await second.openLockspace("gone")
        try await second.releaseLockspace(gone)
        for node: UInt32 in [0, 99] {
            let error = await #expect(throws: DLMError.self) { try await gone.purge(nodeID: node, pid: 4002) }
            #expect(error?.status == .noEntry)
        }
        await second.close()
    }
}

extension RawSocket {
    /// Reads `count` frames from dlmd, blocking.
    func readFrames(_ count: Int) throws -> [ServerMessage] {
        var input = ByteBuffer()
        var messages: [ServerMessage] = []
        var chunk = [UInt8](repeating: 0, count: 4096)
        while messages.count < count {
            while messages.count < count,
                let (type, body) = try nextFrame(from: &input, maxLength: WireLimits.maxServerFrame)
            {
                var body = body
                messages.append(try ServerMessage.decode(type: type, body: &body))
            }
            if messages.count == count { break }
            let read = chunk.withUnsafeMutableBytes { Foundation.read(fd, $0.baseAddress, $0.count) }
            guard read > 0 else { throw SupportError("dlmd closed after \(messages.count) of \(count) frames") }
            input.writeBytes(chunk[0..<read])
        }
        return messages
    }
}
