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

    /// A purge of more orphans than a slice (5,000, done in slices) and a PING sent after it in one write: the
    /// replies keep the order of the requests (PURGED, then PONG), as the C library requires.
    @Test func repliesKeepTheirOrderAroundAPurgeInSlices() async throws {
        let daemon = try Daemon()
        defer { daemon.stop() }
        let client = try await DLMConnection.connect(socketPath: daemon.socketPath)
        let ls = try await client.openLockspace("ordered")
        try await leaveOrphans(daemon, ls, pid: 77, names: (0..<5000).map { "o\($0)" })

        let socket = try RawSocket(path: daemon.socketPath)
        var out = ByteBuffer()
        ClientMessage.hello(Hello(pid: 1, clientName: "purger")).encode(into: &out)
        ClientMessage.purge(tag: 10, lockspace: ls.id, nodeID: 0, pid: 77).encode(into: &out)
        ClientMessage.ping(tag: 11).encode(into: &out)
        socket.send(Array(out.readableBytesView))
        let replies = try socket.readFrames(3).dropFirst()
        #expect(Array(replies) == [.purged(tag: 10, count: 5000), .pong(tag: 11)])
        await client.close()
    }

    /// FORCEUNLOCK of a parent with 3,000 sub-locks (done in slices), then a PING in the same write: every
    /// sub-lock's untagged EUNLOCK, then the parent's, tagged (the reply), then PONG.
    @Test func forceUnlockOfAParentWithManySubLocksAnswersInOrder() async throws {
        let daemon = try Daemon()
        defer { daemon.stop() }
        let client = try await DLMConnection.connect(socketPath: daemon.socketPath)
        let ls = try await client.openLockspace("tree")
        let socket = try RawSocket(path: daemon.socketPath)
        var out = ByteBuffer()
        ClientMessage.hello(Hello(pid: 1, clientName: "tree")).encode(into: &out)
        ClientMessage.lock(LockMessage(tag: 1, lockspace: ls.id, mode: .ex, name: Array("parent".utf8)))
            .encode(into: &out)
        socket.send(Array(out.readableBytesView))
        guard case .completion(let parent) = try socket.readFrames(2).last else { throw SupportError("no parent") }
        out.clear()
        for i in 0..<3000 {
            ClientMessage.lock(
                LockMessage(
                    tag: UInt32(2 + i), lockspace: ls.id, mode: .ex, options: [], parent: parent.lock,
                    name: Array("child\(i)".utf8))
            ).encode(into: &out)
        }
        socket.send(Array(out.readableBytesView))
        #expect(
            try socket.readFrames(3000).allSatisfy {
                if case .completion(let c) = $0 { c.status == .granted } else { false }
            })
        out.clear()
        ClientMessage.unlock(UnlockMessage(tag: 9000, lock: parent.lock, flags: .forceUnlock)).encode(into: &out)
        ClientMessage.ping(tag: 9001).encode(into: &out)
        socket.send(Array(out.readableBytesView))
        let answers = try socket.readFrames(3002)
        let children = answers.prefix(3000).filter {
            if case .completion(let c) = $0 {
                c.tag == 0 && c.status == .unlocked && c.lock != parent.lock
            } else {
                false
            }
        }
        #expect(children.count == 3000)
        guard case .completion(let last) = answers[3000] else { throw SupportError("no parent completion") }
        #expect(last.tag == 9000 && last.lock == parent.lock && last.status == .unlocked)
        #expect(answers[3001] == .pong(tag: 9001))
        await client.close()
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
