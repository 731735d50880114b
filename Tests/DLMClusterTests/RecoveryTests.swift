import DLMCluster
import DLMCore
import DLMWire
import Testing

/// Recovery when a node leaves (LockService+Recovery.swift), in-process: the survivors rebuild the directory and
/// the resources whose master left from their own locks, drop the departed node's locks, and go on with one lock
/// space.
@Suite struct RecoveryTests {
    typealias H = ServiceHarness
    static let remote: UInt32 = 0x8000_0001
    static let secondRemote: UInt32 = 0x8000_0002

    /// Node 3 masters a resource on which node 1 holds EX and node 2 waits for EX; node 3 dies. Node 1 keeps its
    /// EX (a new request of another node waits for it, and gets no grant during recovery), node 2's request still
    /// waits, and is granted, with a higher fencing token, once node 1 unlocks.
    @Test func aGrantedLockSurvivesTheDeathOfItsMaster() {
        var c = ClusterHarness(nodes: 3)
        let name = ClusterHarness.name(directedTo: 3, of: 3)
        let master = c.client(3, "m")
        let a = c.client(1, "a")
        let b = c.client(2, "b")
        c.send(master, H.lock(2, name, .nl))
        #expect(c.run() == ["3m: COMPLETION tag 2 lock 1 granted NL"])
        c.send(a, H.lock(2, name, .ex))
        #expect(c.run() == ["1a: COMPLETION tag 2 lock \(Self.remote) granted EX"])
        let before = c.completions["1a"]!.last!.fencingToken
        c.send(b, H.lock(2, name, .ex))
        #expect(Set(c.run()) == ["2b: OK tag 2 lock \(Self.remote)", "1a: BAST lock \(Self.remote) EX"])

        c.crash(3)
        c.installView()
        #expect(c.run() == [])
        for node in [UInt32(1), 2] { #expect(!c.nodes[node]!.service.isStopped) }
        // A third request on the name waits too: node 1's EX is still held. (Node 2 masters the name now: the
        // directory node among the survivors.)
        let d = c.client(2, "d")
        c.send(d, H.lock(2, name, .pr))
        #expect(c.run().count == 1)
        #expect(c.nodes[2]!.service.engine.lockCount == 3)
        c.send(a, H.unlock(3, Self.remote))
        let after = c.run()
        #expect(after.contains("1a: COMPLETION tag 3 lock \(Self.remote) EUNLOCK"))
        #expect(after.contains("2b: COMPLETION tag 0 lock \(Self.remote) granted EX"))
        #expect(!after.contains { $0.hasPrefix("2d: COMPLETION") })
        let token = c.completions["2b"]!.last!.fencingToken
        #expect(token > before)
    }

    /// A resource whose master survives keeps its master and its locks; the departed node's locks on it go, which
    /// lets a waiting request of a survivor through.
    @Test func theDepartedNodesLocksAreDroppedWhereTheMasterSurvives() {
        var c = ClusterHarness(nodes: 3)
        let name = ClusterHarness.name(directedTo: 1, of: 3)
        let a = c.client(1, "a")
        let doomed = c.client(3, "x")
        let b = c.client(2, "b")
        c.send(a, H.lock(2, name, .pr))
        #expect(c.run() == ["1a: COMPLETION tag 2 lock 1 granted PR"])
        c.send(doomed, H.lock(2, name, .pr))
        #expect(c.run() == ["3x: COMPLETION tag 2 lock \(Self.remote) granted PR"])
        c.send(b, H.lock(2, name, .pw))
        #expect(
            Set(c.run()) == [
                "2b: OK tag 2 lock \(Self.remote)", "1a: BAST lock 1 PW", "3x: BAST lock \(Self.remote) PW",
            ])
        c.crash(3)
        c.installView()
        #expect(c.run() == [])
        c.send(a, H.unlock(3, 1))
        #expect(
            Set(c.run()) == [
                "1a: COMPLETION tag 3 lock 1 EUNLOCK", "2b: COMPLETION tag 0 lock \(Self.remote) granted PW",
            ])
    }

    /// A view that changes again during recovery aborts the run; the next one completes, and nothing is lost:
    /// node 4 dies while the others recover from node 3's death, before any of them has finished.
    @Test func aNewViewDuringRecoveryStartsItOver() {
        var c = ClusterHarness(nodes: 4)
        let name = ClusterHarness.name(directedTo: 3, of: 4)
        let master = c.client(3, "m")
        let a = c.client(1, "a")
        let b = c.client(2, "b")
        c.send(master, H.lock(2, name, .nl))
        _ = c.run()
        c.send(a, H.lock(2, name, .ex))
        #expect(c.run() == ["1a: COMPLETION tag 2 lock \(Self.remote) granted EX"])
        c.send(b, H.lock(2, name, .ex))
        _ = c.run()
        c.crash(3)
        c.installView()
        // Only some recovery messages are carried before node 4 dies too.
        c.crash(4)
        c.installView(order: [2, 1])
        #expect(c.run() == [])
        for node in [UInt32(1), 2] { #expect(!c.nodes[node]!.service.isStopped) }
        c.send(a, H.unlock(3, Self.remote))
        #expect(
            Set(c.run()) == [
                "1a: COMPLETION tag 3 lock \(Self.remote) EUNLOCK",
                "2b: COMPLETION tag 0 lock \(Self.remote) granted EX",
            ])
    }

    /// A request sent to a master that dies before answering is sent again to the new master when recovery is
    /// done: the client gets its answer once.
    @Test func aRequestInFlightToADyingMasterIsSentAgain() {
        var c = ClusterHarness(nodes: 3)
        let name = ClusterHarness.name(directedTo: 3, of: 3)
        let master = c.client(3, "m")
        let a = c.client(1, "a")
        c.send(master, H.lock(2, name, .nl))
        _ = c.run()
        c.send(a, H.lock(2, name, .nl))
        #expect(c.run() == ["1a: COMPLETION tag 2 lock \(Self.remote) granted NL"])
        // The request leaves node 1 for node 3 (its cached master), which dies before it arrives.
        c.send(a, H.lock(3, name, .ex))
        c.crash(3)
        c.installView()
        let lines = c.run()
        #expect(lines.filter { $0.hasPrefix("1a: ") }.count == 1)
        #expect(lines == ["1a: COMPLETION tag 3 lock \(Self.secondRemote) granted EX"])
    }

    /// A restarted node is a new life: it gets nothing of its old locks, and the others drop them.
    @Test func aRestartedNodeJoinsAsANewIncarnation() {
        var c = ClusterHarness(nodes: 3)
        let name = ClusterHarness.name(directedTo: 1, of: 3)
        let a = c.client(1, "a")
        let x = c.client(3, "x")
        c.send(a, H.lock(2, name, .nl))
        #expect(c.run() == ["1a: COMPLETION tag 2 lock 1 granted NL"])
        c.send(x, H.lock(2, name, .ex))
        #expect(c.run() == ["3x: COMPLETION tag 2 lock \(Self.remote) granted EX"])
        c.send(a, H.lock(3, name, .ex))
        #expect(Set(c.run()) == ["1a: OK tag 3 lock 3", "3x: BAST lock \(Self.remote) EX"])
        c.crash(3)
        c.start(3)
        c.installView()
        #expect(c.run() == ["1a: COMPLETION tag 0 lock 3 granted EX"])
        let y = c.client(3, "y")
        c.send(y, H.lock(2, name, .ex, .noQueue))
        #expect(c.run() == ["3y: COMPLETION tag 2 lock \(Self.remote) EAGAIN"])
    }
}
