import DLMCore
import DLMWire
import Testing

@testable import DLMCluster

/// PURGE across nodes (LockService+Purges.swift): the orphans a process left are on the masters of their resources,
/// on any node; a PURGE from any node removes them all and counts them.
@Suite struct PurgeAcrossNodesTests {
    typealias H = ServiceHarness

    static func purge(_ tag: UInt32, node: UInt32, pid: UInt32) -> ClientMessage {
        .purge(tag: tag, lockspace: 0, nodeID: node, pid: pid)
    }

    /// Client b of node 2 (pid 100) holds persistent locks on names mastered by nodes 3 and 1, and goes: they stay as
    /// orphans on those masters. A PURGE of node 2's pid 100 from a client of node 1 removes both (PURGED count 2),
    /// after which the names are free; a PURGE of another pid or node removes nothing.
    @Test func aPurgeFromAnyNodeRemovesTheOrphansOnEveryMaster() {
        var c = ClusterHarness(nodes: 3)
        let onThree = ClusterHarness.name(directedTo: 1, of: 3, prefix: "p")
        let onOne = ClusterHarness.name(directedTo: 2, of: 3, prefix: "q")
        let a = c.client(1, "a")
        let b = c.client(2, "b")
        let m = c.client(3, "m")
        // The first node to ask masters a name (and an idle name keeps its master).
        c.send(m, H.lock(2, onThree, .nl))
        c.send(m, H.unlock(3, 1))
        c.send(a, H.lock(2, onOne, .nl))
        c.send(a, H.unlock(3, 1))
        _ = c.run()
        c.send(b, H.lock(2, onThree, .ex, .persistent))
        c.send(b, H.lock(3, onOne, .ex, .persistent))
        #expect(c.run().filter { $0.contains("granted EX") }.count == 2)
        c.close(b)
        _ = c.run()
        // Held by the orphans.
        c.send(a, H.lock(4, onThree, .ex, .noQueue))
        #expect(c.run().contains { $0.hasPrefix("1a: COMPLETION tag 4") && $0.contains("EAGAIN") })
        c.send(a, Self.purge(5, node: 2, pid: 101))
        c.send(a, Self.purge(6, node: 3, pid: 100))
        #expect(c.run() == ["1a: PURGED tag 5 count 0", "1a: PURGED tag 6 count 0"])
        c.send(a, Self.purge(7, node: 2, pid: 100))
        #expect(c.run() == ["1a: PURGED tag 7 count 2"])
        c.send(a, H.lock(8, onThree, .ex, .noQueue))
        c.send(a, H.lock(9, onOne, .ex, .noQueue))
        let granted = c.run()
        #expect(granted.contains { $0.hasPrefix("1a: COMPLETION tag 8") && $0.contains("granted EX") }, "\(granted)")
        #expect(granted.contains { $0.hasPrefix("1a: COMPLETION tag 9") && $0.contains("granted EX") }, "\(granted)")
    }

    /// Node 0 in PURGE is the asking node: a client of node 2 purges what another process of node 2 left, on node
    /// 3's master too.
    @Test func nodeZeroIsTheAskingNode() {
        var c = ClusterHarness(nodes: 3)
        let name = ClusterHarness.name(directedTo: 1, of: 3, prefix: "z")
        let m = c.client(3, "m")
        c.send(m, H.lock(2, name, .nl))
        c.send(m, H.unlock(3, 1))
        _ = c.run()
        let b = c.client(2, "b")
        c.send(b, H.lock(2, name, .pw, .persistent))
        _ = c.run()
        c.close(b)
        _ = c.run()
        let d = c.client(2, "d")
        c.send(d, Self.purge(4, node: 0, pid: 100))
        #expect(c.run() == ["2d: PURGED tag 4 count 1"])
    }

    /// The orphans of a client of the master itself (written PW, then down to PR with the value block), purged by
    /// node and pid from a client of another node.
    @Test func theOrphansOfAMastersOwnClientArePurgedFromAnotherNode() {
        var c = ClusterHarness(nodes: 2)
        let names = (0..<2).map { ClusterHarness.name(directedTo: UInt32(1 + $0), of: 2, prefix: "o\($0)-") }
        let b = c.client(1, "b", credentials: ClientCredentials(pid: 555, uid: 1000, gid: 1000))
        for (index, name) in names.enumerated() {
            c.send(b, H.lock(UInt32(2 + index), name, .pw, .persistent))
            c.send(b, H.convert(UInt32(4 + index), 1 + UInt32(index), .pr, [.convert, .persistent, .valueBlock]))
        }
        #expect(c.run().filter { $0.contains("granted PR") }.count == 2)
        c.close(b)
        _ = c.run()
        let d = c.client(2, "d", credentials: .root)
        c.send(d, Self.purge(4, node: 1, pid: 555))
        #expect(c.run() == ["2d: PURGED tag 4 count 2"])
        for (index, name) in names.enumerated() { c.send(d, H.lock(UInt32(5 + index), name, .ex, .noQueue)) }
        #expect(c.run().filter { $0.contains("granted EX") }.count == 2)
    }

    /// A member that fails while a purge waits for its answer is not waited for: the client still gets PURGED.
    @Test func aMemberThatFailsIsNotWaitedFor() {
        var c = ClusterHarness(nodes: 3)
        let a = c.client(1, "a")
        c.paused.insert(ClusterHarness.Link(from: 1, to: 3))
        c.send(a, Self.purge(2, node: 2, pid: 100))
        #expect(c.run() == [])
        c.crash(3)
        c.installView()
        #expect(c.run().contains("1a: PURGED tag 2 count 0"))
    }

    /// An orphan stays its user's on every node and after its master dies: a client of node 2 (uid 1000) leaves a
    /// persistent EX mastered by node 3. A client of node 1 of another uid may neither adopt it nor purge it
    /// (EPERM, and the orphan still holds the name); node 3 dies and the orphan, rebuilt on a new master from its
    /// replica, is still uid 1000's; a client of uid 1000 on node 1 adopts it; root purges it once it is an orphan
    /// again.
    @Test func anOrphanStaysItsUsersOnEveryNodeAndAfterItsMasterDies() {
        var c = ClusterHarness(nodes: 3)
        let name = ClusterHarness.name(directedTo: 1, of: 3, prefix: "u")
        let open: UInt16 = 0o666
        let m = c.client(3, "m", credentials: .root, mode: open)
        c.send(m, H.lock(2, name, .nl))
        c.send(m, H.unlock(3, 1))
        _ = c.run()
        let b = c.client(2, "b", credentials: ClientCredentials(pid: 555, uid: 1000), mode: open)
        c.send(b, H.lock(2, name, .ex, .persistent))
        #expect(c.run().contains { $0.hasPrefix("2b: COMPLETION tag 2") && $0.contains("granted EX") })
        c.close(b)
        _ = c.run()
        let other = c.client(1, "x", credentials: ClientCredentials(pid: 600, uid: 1001), mode: open)
        let same = c.client(1, "y", credentials: ClientCredentials(pid: 601, uid: 1000))
        let root = c.client(1, "r", credentials: .root)

        c.send(other, H.lock(4, name, .ex, .orphan))
        let refused = c.run()
        #expect(refused.count == 1 && refused[0].hasPrefix("1x: ") && refused[0].contains("EPERM"), "\(refused)")
        c.send(other, Self.purge(5, node: 2, pid: 555))
        let purge = c.run()
        #expect(purge.count == 1 && purge[0].hasPrefix("1x: ERROR tag 5 EPERM"), "\(purge)")
        c.send(other, H.lock(6, name, .ex, .noQueue))
        #expect(c.run().contains { $0.hasPrefix("1x: COMPLETION tag 6") && $0.contains("EAGAIN") })

        c.crash(3)
        c.installView()
        _ = c.run()
        c.send(other, H.lock(7, name, .ex, .orphan))
        let again = c.run()
        #expect(again.count == 1 && again[0].contains("EPERM"), "\(again)")
        c.send(same, H.lock(8, name, .ex, .orphan))
        #expect(c.run().contains { $0.hasPrefix("1y: COMPLETION tag 8") && $0.contains("granted EX") })
        c.close(same)
        _ = c.run()
        c.send(root, Self.purge(9, node: 1, pid: 601))
        #expect(c.run() == ["1r: PURGED tag 9 count 1"])
        c.send(other, H.lock(10, name, .ex, .noQueue))
        #expect(c.run().contains { $0.hasPrefix("1x: COMPLETION tag 10") && $0.contains("granted EX") })
    }
}
