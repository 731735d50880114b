import DLMClient
import DLMCore
import DLMTestSupport
import DLMWire
import Foundation
import Testing

/// Real `dlmd` processes of one cluster are one lock manager: a name locked on one node is locked on every node,
/// and a node's death (`kill -9`) loses no granted lock of a survivor (docs/RECOVERY.md).
@Suite(.serialized) struct DistributedLockTests {
    /// A blocking callback to await: the sign that another request is queued behind a lock.
    final class Blocked: @unchecked Sendable {
        let stream: AsyncStream<LockMode>
        let continuation: AsyncStream<LockMode>.Continuation
        init() { (stream, continuation) = AsyncStream.makeStream() }
        var handler: @Sendable (LockMode) -> Void { { [continuation] in continuation.yield($0) } }

        /// The next blocking callback (a hang detector ends the wait after 60 s).
        func next() async throws -> LockMode {
            try await withThrowingTaskGroup(of: LockMode?.self) { group in
                group.addTask { [stream] in
                    for await mode in stream { return mode }
                    return nil
                }
                group.addTask {
                    try await Task.sleep(for: .seconds(60))
                    return nil
                }
                let mode = try await group.next()!
                group.cancelAll()
                guard let mode else { throw DLMError(.timedOut, "no blocking callback within 60 s") }
                return mode
            }
        }
    }

    /// Takes `mode` with NOQUEUE: nil if granted (the lock is unlocked again), else the refusal's status.
    static func tryLock(
        _ ls: DLMLockspace, _ name: String, _ mode: LockMode, parent: DLMLock? = nil
    ) async throws -> DLMStatus? {
        do {
            let lock = try await ls.lock(name, mode: mode, flags: .noQueue, parent: parent)
            try await lock.unlock()
            return nil
        } catch let error as DLMError {
            return error.status
        }
    }

    /// Starts the cluster's nodes, waits for their first view, and opens `lockspace` with a client of each.
    static func clientOnEveryNode(_ cluster: TestCluster, lockspace: String) async throws -> (
        connections: [DLMConnection], spaces: [DLMLockspace]
    ) {
        try cluster.startAll()
        let members = (1...cluster.addresses.count).map(String.init).joined(separator: ",")
        for node in 1...cluster.addresses.count { try cluster.waitForView(at: node, members: members, primary: true) }
        var spaces: [DLMLockspace] = []
        var connections: [DLMConnection] = []
        for node in 1...cluster.addresses.count {
            let connection = try await DLMConnection.connect(socketPath: cluster.socket(node))
            connections.append(connection)
            spaces.append(try await connection.openLockspace(lockspace))
        }
        return (connections, spaces)
    }

    /// EX on one name from clients of three nodes: one holder at a time; the others' NOQUEUE requests are refused
    /// with EAGAIN, and a queued request on another node is granted, with a higher fencing token, when the
    /// holder unlocks.
    @Test func aNameIsExclusiveAcrossNodes() async throws {
        let cluster = try TestCluster(nodes: 3)
        defer { cluster.stopAll() }
        let (connections, spaces) = try await Self.clientOnEveryNode(cluster, lockspace: "shared")
        for name in ["backup", "volume-1", "volume-2", "journal"] {
            let blocked = Blocked()
            let held = try await spaces[0].lock(name, mode: .ex, onBlocking: blocked.handler)
            #expect(try await Self.tryLock(spaces[1], name, .ex) == .tryAgain, "\(name) granted twice")
            #expect(try await Self.tryLock(spaces[2], name, .pr) == .tryAgain, "\(name) granted PR beside EX")
            let second = spaces[1]
            let waiter = Task { try await second.lock(name, mode: .ex) }
            // The waiter is queued (its master tells the holder's node, which calls back), then the holder lets go.
            #expect(try await blocked.next() == .ex)
            try await held.unlock()
            let next = try await waiter.value
            #expect(next.mode == .ex)
            #expect(next.fencingToken > held.fencingToken)
            #expect(try await Self.tryLock(spaces[2], name, .ex) == .tryAgain)
            try await next.unlock()
            #expect(try await Self.tryLock(spaces[2], name, .ex) == nil)
        }
        for connection in connections { await connection.close() }
    }

    /// DaemonTests' statuses (ECANCEL through a cancelled task), blocking callbacks and value blocks with the two
    /// clients on different nodes: each resource is mastered by the node of the client that asks first, so every
    /// case runs once with the waiter remote and once with the holder remote.
    @Test func statusesCallbacksAndValueBlocksWithHoldersOnTwoNodes() async throws {
        let cluster = try TestCluster(nodes: 2)
        defer { cluster.stopAll() }
        let (connections, spaces) = try await Self.clientOnEveryNode(cluster, lockspace: "statuses")
        for (x, y) in [(0, 1), (1, 0)] {
            let (a, lsA, lsB) = (connections[x], spaces[x], spaces[y])
            let tag = "\(x)"
            // Granted, EAGAIN (NOQUEUE against EX), ETIMEDOUT, EUNLOCK.
            let held = try await lsA.request(Array("r\(tag)".utf8), mode: .ex)
            #expect(held.status == .granted && held.mode == .ex)
            let refused = try await lsB.request(Array("r\(tag)".utf8), mode: .pr, flags: .noQueue)
            #expect(refused.status == .tryAgain && refused.mode == nil)
            let timedOut = try await lsB.request(Array("r\(tag)".utf8), mode: .pr, timeout: .milliseconds(30))
            #expect(timedOut.status == .timedOut)
            #expect(try await lsA.unlock(held.id) == .unlocked)
            // EDEADLK: two PR holders converting to EX; EBUSY: an unlock of a converting lock.
            let p1 = try await lsA.lock("d\(tag)", mode: .pr)
            let p2 = try await lsB.lock("d\(tag)", mode: .pr)
            async let first = p1.requestConversion(to: .ex)
            try await waitUntil { try await waitingCount(a, lockspace: "statuses", resource: "d\(tag)") == 1 }
            await expectStatus(.busy) { try await p1.unlock() }
            let second = try await p2.requestConversion(to: .ex)
            #expect(second.status == .deadlock && second.mode == .pr)
            try await p2.unlock()
            let converted = try await first
            #expect(converted.status == .granted && converted.mode == .ex)
            try await p1.unlock()
            // ECANCEL: a waiting request whose task is cancelled is cancelled at its master.
            let blocker = try await lsA.lock("c\(tag)", mode: .ex)
            let cancelled = Task { try await lsB.request(Array("c\(tag)".utf8), mode: .ex) }
            try await waitUntil { try await waitingCount(a, lockspace: "statuses", resource: "c\(tag)") == 1 }
            cancelled.cancel()
            #expect(try await cancelled.value.status == .cancelled)
            try await blocker.unlock()
            // EINVAL and ENOENT, refused at once.
            await expectStatus(.invalid) { _ = try await lsB.lock("x", mode: .pr, flags: [.expedite]) }
            await expectStatus(.noEntry) { try await lsB.unlock(LockID(rawValue: 0x8000_7fff)) }
            // A blocking callback crosses to the holder; the waiter is granted when it unlocks.
            let (told, teller) = AsyncStream<LockMode>.makeStream()
            let holder = try await lsA.lock("b\(tag)", mode: .pr, onBlocking: { teller.yield($0) })
            async let waiter = lsB.lock("b\(tag)", mode: .ex)
            var modes = told.makeAsyncIterator()
            #expect(await modes.next() == .ex)
            try await holder.unlock()
            let exclusive = try await waiter
            #expect(exclusive.mode == .ex)
            // A value block written on one node is read on the other (an NL lock keeps the resource, and its value
            // block, between them).
            let keeper = try await lsA.lock("b\(tag)", mode: .nl)
            try await exclusive.unlock(valueBlock: Array("from \(y)".utf8))
            let reader = try await keeper.convert(to: .pr, flags: .valueBlock)
            #expect(reader.valueBlock?.prefix(6) == ArraySlice(Array("from \(y)".utf8)))
            try await reader.unlock()
        }
        for connection in connections { await connection.close() }
    }

    /// The node that masters a name dies (`kill -9`): a survivor's EX on it stays held (another survivor's
    /// NOQUEUE request is refused), a queued request of a third survivor is granted once the holder unlocks, and
    /// the grant's fencing token is above every token issued before the death.
    @Test func aGrantedLockSurvivesTheDeathOfItsMaster() async throws {
        let cluster = try TestCluster(nodes: 4)
        defer { cluster.stopAll() }
        try cluster.startAll()
        for node in 1...4 { try cluster.waitForView(at: node, members: "1,2,3,4", primary: true) }
        var spaces: [Int: DLMLockspace] = [:]
        for node in 1...4 {
            let connection = try await DLMConnection.connect(socketPath: cluster.socket(node))
            spaces[node] = try await connection.openLockspace("shared")
        }
        // Node 4 asks first, so it masters the name.
        let first = try await spaces[4]!.lock("backup", mode: .nl)
        let blocked = Blocked()
        let held = try await spaces[1]!.lock("backup", mode: .ex, onBlocking: blocked.handler)
        #expect(first.mode == .nl)
        _ = cluster.kill(4)
        for node in 1...3 { try cluster.waitForView(at: node, members: "1,2,3", primary: true) }
        #expect(try await Self.tryLock(spaces[2]!, "backup", .ex) == .tryAgain, "granted twice after the death")
        let third = spaces[3]!
        let waiter = Task { try await third.lock("backup", mode: .ex) }
        // Queued on the new master: the holder is called back from there.
        #expect(try await blocked.next() == .ex)
        try await held.unlock()
        let next = try await waiter.value
        #expect(next.mode == .ex)
        #expect(next.fencingToken > held.fencingToken)
    }

    /// Sub-locks survive `kill -9` of their master with their tree (Linux refuses them): node 1 holds PR on a
    /// resource that node 3 masters and EX on a sub-resource under it, node 2 shares the PR. Node 3 dies: node 2's
    /// EX NOQUEUE on the sub-resource under its own PR is refused, node 1's sub-lock still converts and unlocks
    /// through the new master, and node 2's sub-lock is granted afterwards.
    @Test func aSubLockSurvivesTheDeathOfItsMaster() async throws {
        let cluster = try TestCluster(nodes: 3)
        defer { cluster.stopAll() }
        let (_, spaces) = try await Self.clientOnEveryNode(cluster, lockspace: "shared")
        // Node 3 asks first, so it masters the name.
        _ = try await spaces[2].lock("volume", mode: .nl)
        let parent = try await spaces[0].lock("volume", mode: .pr)
        let extent = try await spaces[0].lock("extent", mode: .ex, parent: parent)
        let sharing = try await spaces[1].lock("volume", mode: .pr)
        _ = cluster.kill(3)
        for node in 1...2 { try cluster.waitForView(at: node, members: "1,2", primary: true) }
        do {
            let lock = try await spaces[1].lock("extent", mode: .ex, flags: .noQueue, parent: sharing)
            try await lock.unlock()
            Issue.record("the sub-resource was granted EX twice after its master's death")
        } catch let error as DLMError {
            #expect(error.status == .tryAgain)
        }
        let converted = try await extent.convert(to: .pw)
        #expect(converted.mode == .pw)
        try await converted.unlock()
        let after = try await spaces[1].lock("extent", mode: .ex, flags: .noQueue, parent: sharing)
        #expect(after.mode == .ex)
        try await after.unlock()
        try await parent.unlock()
    }

    /// Orphans survive `kill -9` of their master (its backup node kept them): a client of node 1 exits holding
    /// persistent EX locks on two names that node 3 masters, and a persistent PW sub-lock under the first. Node 3
    /// dies: a client of node 2 is refused EX on both, adopts the first on its new master (the orphan sub-lock stays
    /// under it, and holds), and a purge of node 1's process (its pid and node kept with the orphans) removes the
    /// second and the sub-lock.
    @Test func orphansSurviveTheDeathOfTheirMaster() async throws {
        let cluster = try TestCluster(nodes: 3)
        defer { cluster.stopAll() }
        let (connections, spaces) = try await Self.clientOnEveryNode(cluster, lockspace: "kept")
        // Node 3 asks first, so it masters the names (an idle name keeps its master for a while).
        for name in ["vault", "safe"] {
            try await spaces[2].lock(name, mode: .nl).unlock()
            let top = try await spaces[0].lock(name, mode: .ex, flags: .persistent)
            // A persistent sub-lock under the vault: it goes through the value replica, as a tree.
            if name == "vault" { _ = try await spaces[0].lock("drawer", mode: .pw, flags: .persistent, parent: top) }
        }
        await connections[0].close()
        _ = cluster.kill(3)
        for node in 1...2 { try cluster.waitForView(at: node, members: "1,2", primary: true) }
        for name in ["vault", "safe"] {
            #expect(try await Self.tryLock(spaces[1], name, .ex) == .tryAgain, "\(name) was lost with its master")
        }
        let adopted = try await spaces[1].lock("vault", mode: .ex, flags: .orphan)
        #expect(adopted.mode == .ex)
        // The orphan sub-lock is still under it (ORPHAN adopts top-level locks only).
        #expect(try await Self.tryLock(spaces[1], "drawer", .ex, parent: adopted) == .tryAgain)
        // The purge of node 1's process removes its orphans: "safe" and the sub-lock.
        #expect(try await spaces[1].purge(nodeID: 1, pid: UInt32(getpid())) == 2)
        #expect(try await Self.tryLock(spaces[1], "safe", .ex) == nil)
        #expect(try await Self.tryLock(spaces[1], "drawer", .ex, parent: adopted) == nil)
        #expect(try await Self.tryLock(spaces[1], "vault", .pr) == .tryAgain)
        try await adopted.unlock()
    }

    /// A value block written through one node survives `kill -9` of the node that masters it: the writer on node
    /// 1 unlocks EX with a value (answered once the master's backup node has it), the master (node 3) dies, and a
    /// reader on node 2 that kept an NL lock converts to PR and reads the value, valid.
    @Test func aWrittenValueBlockSurvivesTheDeathOfItsMaster() async throws {
        let cluster = try TestCluster(nodes: 3)
        defer { cluster.stopAll() }
        try cluster.startAll()
        for node in 1...3 { try cluster.waitForView(at: node, members: "1,2,3", primary: true) }
        var spaces: [Int: DLMLockspace] = [:]
        for node in 1...3 {
            let connection = try await DLMConnection.connect(socketPath: cluster.socket(node))
            spaces[node] = try await connection.openLockspace("shared")
        }
        // Node 3 asks first, so it masters the name.
        _ = try await spaces[3]!.lock("config", mode: .nl)
        let reader = try await spaces[2]!.lock("config", mode: .nl, flags: .valueBlock)
        let value = Array("generation 42".utf8) + Array(repeating: 0, count: 32 - 13)
        let writer = try await spaces[1]!.lock("config", mode: .ex, flags: .valueBlock)
        try await writer.unlock(valueBlock: value)
        _ = cluster.kill(3)
        for node in 1...2 { try cluster.waitForView(at: node, members: "1,2", primary: true) }
        let read = try await reader.convert(to: .pr, flags: .valueBlock)
        #expect(read.valueBlock == value)
        #expect(!read.flags.contains(.valueNotValid))
    }

    /// A client of node 2 leaves persistent locks on names mastered by nodes 3 and 1 and goes: they stay as
    /// orphans there. `purge` from a client of node 1, naming node 2 and that process, removes both (count 2) and
    /// frees the names.
    @Test func aPurgeReachesTheOrphansOnEveryNode() async throws {
        let cluster = try TestCluster(nodes: 3)
        defer { cluster.stopAll() }
        let (connections, spaces) = try await Self.clientOnEveryNode(cluster, lockspace: "purged")
        // The first node to ask masters a name, and an idle name keeps its master for a while.
        try await spaces[2].lock("on-3", mode: .nl).unlock()
        try await spaces[0].lock("on-1", mode: .nl).unlock()
        _ = try await spaces[1].lock("on-3", mode: .ex, flags: .persistent)
        _ = try await spaces[1].lock("on-1", mode: .ex, flags: .persistent)
        await connections[1].close()
        #expect(try await Self.tryLock(spaces[0], "on-3", .ex) == .tryAgain)
        let pid = UInt32(getpid())
        #expect(try await spaces[0].purge(nodeID: 2, pid: pid &+ 1) == 0)
        #expect(try await spaces[0].purge(nodeID: 2, pid: pid) == 2)
        #expect(try await Self.tryLock(spaces[0], "on-3", .ex) == nil)
        #expect(try await Self.tryLock(spaces[2], "on-1", .ex) == nil)
        for connection in [connections[0], connections[2]] { await connection.close() }
    }
}

/// What an operator sees of a cluster's lock space: each resource's master and directory node, each lock's holder
/// node, the locks held on resources other nodes master, the lockspace's members and the recovery state.
@Suite(.serialized) struct ClusterReportTests {
    static func report<T: Decodable>(
        _ type: T.Type, _ connection: DLMConnection, _ kind: QueryKind, _ argument: String = ""
    ) async throws -> T {
        try JSONDecoder().decode(type, from: Data(try await connection.query(kind, argument: Array(argument.utf8))))
    }

    @Test func lockdebugLsAndStatusShowMastersHoldersAndRecovery() async throws {
        let cluster = try TestCluster(nodes: 3)
        defer { cluster.stopAll() }
        try cluster.startAll()
        for node in 1...3 { try cluster.waitForView(at: node, members: "1,2,3", primary: true) }
        var connections: [Int: DLMConnection] = [:]
        var spaces: [Int: DLMLockspace] = [:]
        for node in 1...3 {
            connections[node] = try await DLMConnection.connect(socketPath: cluster.socket(node))
            spaces[node] = try await connections[node]!.openLockspace("shared")
        }
        // Node 1 asks first, so it masters "backup"; node 2's PR waits behind node 1's EX.
        let blocked = DistributedLockTests.Blocked()
        let held = try await spaces[1]!.lock("backup", mode: .ex, onBlocking: blocked.handler)
        let second = spaces[2]!
        let waiter = Task { try await second.lock("backup", mode: .pr) }
        #expect(try await blocked.next() == .pr)

        let debug = try await Self.report(LockDebugReport.self, connections[1]!, .lockdebug, "shared")
        let resource = try #require(debug.resources.first { $0.name == "backup" })
        #expect(resource.master == 1)
        let directory = try #require(resource.directory)
        #expect((1...3).contains(directory))
        #expect(resource.granted.map(\.node) == [1])
        #expect(resource.waiting.map(\.node) == [2])
        #expect(debug.remote == [])
        // On node 2: no resource of its own, its waiting request as a lock mastered on node 1.
        let remote = try await Self.report(LockDebugReport.self, connections[2]!, .lockdebug, "shared")
        #expect(remote.resources.isEmpty)
        let copy = try #require(remote.remote?.first)
        #expect(copy.name == "backup" && copy.master == 1 && copy.grantedMode == nil && copy.requestedMode == "PR")
        // dlmtool prints the same.
        let text = try await ToolRun.run(arguments: ["lockdebug", "--socket", cluster.socket(1), "shared"]).stdout
        #expect(text.contains("Master: node 1  Directory: node \(directory)"))
        #expect(text.contains("node 2"))
        let held2 = try await ToolRun.run(arguments: ["lockdebug", "--socket", cluster.socket(2), "shared"]).stdout
        #expect(held2.contains("Held here, mastered elsewhere") && held2.contains("master node 1"))

        let spacesReport = try await Self.report(LockspacesReport.self, connections[3]!, .lockspaces)
        #expect(spacesReport.lockspaces.first?.members == [1, 2, 3])
        let status = try await Self.report(StatusReport.self, connections[3]!, .status)
        let view = try #require(status.view?.id)
        #expect(status.recovery.recoveredView == view && status.recovery.phase == nil)

        // Node 3 dies: the survivors recover the next view.
        cluster.kill(3)
        for node in 1...2 { try cluster.waitForView(at: node, members: "1,2", primary: true) }
        try await held.unlock()
        _ = try await waiter.value
        try cluster.waitForRecovery(at: 1, after: view)
        let after = try await Self.report(StatusReport.self, connections[1]!, .status)
        #expect(after.recovery.recoveredView ?? 0 > view && after.recovery.phase == nil)
        #expect(
            try await Self.report(LockspacesReport.self, connections[1]!, .lockspaces).lockspaces.first?.members == [
                1, 2,
            ])
        for connection in connections.values { await connection.close() }
    }
}

extension ClusterReportTests {
    /// A lockspace's members are the nodes whose clients opened it (docs/RECOVERY.md, "Lockspace groups"): `dlmtool
    /// ls` lists them; a third node's open that names another value-block length is refused with EEXIST, and one
    /// that names none joins with the group's length and meets the same locks.
    @Test func aLockspaceIsSharedByTheNodesThatUseIt() async throws {
        let cluster = try TestCluster(nodes: 3)
        defer { cluster.stopAll() }
        try cluster.startAll()
        for node in 1...3 { try cluster.waitForView(at: node, members: "1,2,3", primary: true) }
        var connections: [Int: DLMConnection] = [:]
        for node in 1...3 { connections[node] = try await DLMConnection.connect(socketPath: cluster.socket(node)) }
        let first = try await connections[1]!.openLockspace("pair", valueBlockLength: 64)
        let second = try await connections[2]!.openLockspace("pair")
        let listed = try await Self.report(LockspacesReport.self, connections[2]!, .lockspaces)
        #expect(listed.lockspaces.map(\.members) == [[1, 2]])
        #expect(listed.lockspaces.map(\.lvbLength) == [64])
        let text = try await ToolRun.run(arguments: ["ls", "--socket", cluster.socket(1)]).stdout
        #expect(text.contains("MEMBERS") && text.contains("1,2"), "\(text)")
        #expect(try await Self.report(LockspacesReport.self, connections[3]!, .lockspaces).lockspaces.isEmpty)
        let held = try await first.lock("volume", mode: .ex)
        do {
            _ = try await connections[3]!.openLockspace("pair", valueBlockLength: 32)
            Issue.record("a join naming another value-block length was taken")
        } catch let error as DLMError {
            #expect(error.status == .exists)
        }
        let third = try await connections[3]!.openLockspace("pair")
        #expect(try await DistributedLockTests.tryLock(third, "volume", .pr) == .tryAgain)
        let members = try await Self.report(LockspacesReport.self, connections[1]!, .lockspaces).lockspaces
        #expect(members.map(\.members) == [[1, 2, 3]] && members.map(\.lvbLength) == [64])
        try await held.unlock()
        #expect(try await DistributedLockTests.tryLock(third, "volume", .ex) == nil)
        // Node 2's client releases the lockspace: node 2 masters none of its locks, so it leaves the group.
        try await connections[2]!.releaseLockspace(second)
        try await waitUntil(attempts: 200_000) {
            try await Self.report(LockspacesReport.self, connections[1]!, .lockspaces).lockspaces.map(\.members)
                == [[1, 3]]
        }
        #expect(try await Self.report(LockspacesReport.self, connections[2]!, .lockspaces).lockspaces.isEmpty)
        // Nodes 1 and 3 still exclude each other.
        let again = try await first.lock("volume", mode: .ex)
        #expect(try await DistributedLockTests.tryLock(third, "volume", .pr) == .tryAgain)
        try await again.unlock()
        for connection in connections.values { await connection.close() }
    }
}

/// A restart of the whole cluster gives back the persistent locks of the stores of its last view's members, and
/// nothing of a store whose node left an earlier view (docs/RECOVERY.md, "A restart of the whole cluster").
@Suite struct WholeClusterRestartDaemonTests {
    @Test(.timeLimit(.minutes(3))) func persistentLocksComeBackFromTheLatestStores() async throws {
        // wait_for_all: after the restart, the first primary view has every node, so every store is heard.
        let cluster = try TestCluster(nodes: 3, quorum: "wait_for_all = true\n")
        defer { cluster.stopAll() }
        let (connections, spaces) = try await DistributedLockTests.clientOnEveryNode(cluster, lockspace: "kept")
        // Node 3 masters "vault" and "stale", node 1 "ledger" (the first node to ask masters a name).
        for name in ["vault", "stale"] { try await spaces[2].lock(name, mode: .nl).unlock() }
        try await spaces[0].lock("ledger", mode: .nl).unlock()
        let value = Array("written before".utf8) + [UInt8](repeating: 0, count: 32 - 14)
        let vault = try await spaces[1].lock("vault", mode: .ex, flags: [.persistent, .valueBlock])
        _ = try await vault.convert(to: .pw, flags: .valueBlock, valueBlock: value)
        _ = try await spaces[1].lock("ledger", mode: .pr, flags: .persistent)
        let stale = try await spaces[1].lock("stale", mode: .ex, flags: .persistent)
        // Node 3 dies: its resources are rebuilt on nodes 1 and 2, and "stale" is then released there. Node 3's
        // store still has it, as of an earlier view.
        _ = cluster.kill(3)
        for node in 1...2 { try cluster.waitForView(at: node, members: "1,2", primary: true) }
        try await stale.unlock()
        #expect(try await DistributedLockTests.tryLock(spaces[0], "stale", .ex) == nil)
        // A persistent lock and its unlock on a name each survivor masters: answered once that node's store has
        // committed them, and with them the end of its recovery of view {1,2}.
        for node in 0...1 { try await spaces[node].lock("sync-\(node)", mode: .ex, flags: .persistent).unlock() }
        // The rest of the cluster dies, its holder's client with it (node 2 alone has no quorum: no later view).
        _ = cluster.kill(1)
        _ = cluster.kill(2)
        for connection in connections { await connection.close() }
        try cluster.startAll()
        for node in 1...3 { try cluster.waitForView(at: node, members: "1#2,2#2,3#2", primary: true) }
        var again: [DLMLockspace] = []
        var clients: [DLMConnection] = []
        for node in 1...3 {
            let connection = try await DLMConnection.connect(socketPath: cluster.socket(node))
            clients.append(connection)
            again.append(try await connection.openLockspace("kept"))
        }
        // The persistent locks of the last view came back as orphans: they still exclude, from every node.
        for node in 0...2 {
            #expect(try await DistributedLockTests.tryLock(again[node], "vault", .pr) == .tryAgain)
            #expect(try await DistributedLockTests.tryLock(again[node], "ledger", .ex) == .tryAgain)
        }
        // The stale store's "stale" did not come back.
        #expect(try await DistributedLockTests.tryLock(again[2], "stale", .ex) == nil)
        // Adopted from another node than their holder's, with the value and fencing tokens above the old ones.
        let adopted = try await again[2].lock("vault", mode: .pw, flags: [.orphan, .valueBlock])
        #expect(adopted.valueBlock == value)
        #expect(!adopted.flags.contains(.valueNotValid))
        #expect(adopted.fencingToken > vault.fencingToken)
        try await adopted.unlock()
        // Their new masters stored them: a second restart of the whole cluster gives back what is left ("ledger").
        for node in 0...2 { try await again[node].lock("sync-\(node)", mode: .ex, flags: .persistent).unlock() }
        for node in 1...3 { _ = cluster.kill(node) }
        for client in clients { await client.close() }
        try cluster.startAll()
        for node in 1...3 { try cluster.waitForView(at: node, members: "1#3,2#3,3#3", primary: true) }
        let last = try await DLMConnection.connect(socketPath: cluster.socket(2))
        let space = try await last.openLockspace("kept")
        #expect(try await DistributedLockTests.tryLock(space, "ledger", .ex) == .tryAgain)
        #expect(try await DistributedLockTests.tryLock(space, "vault", .ex) == nil)
        let reader = try await space.lock("ledger", mode: .pr, flags: .orphan)
        #expect(reader.mode == .pr)
        try await reader.unlock()
        #expect(try await DistributedLockTests.tryLock(space, "ledger", .ex) == nil)
        await last.close()
    }
}
