import DLMCore
import DLMWire
import Testing

@testable import DLMCluster

/// Lockspace groups (docs/RECOVERY.md, "Lockspace groups"): a lockspace is shared by the nodes whose clients use
/// it; its directory is spread over them alone; a node's first open of it waits for a recovery run that adds the
/// node to the group, whose value-block length it must take.
@Suite struct LockspaceGroupTests {
    typealias H = ServiceHarness
    static let ls = Array("ls".utf8)

    /// A client of `node` that has said HELLO and opened nothing.
    static func bareClient(_ c: inout ClusterHarness, _ node: UInt32, _ name: String) -> (
        node: UInt32, id: ConnectionID
    ) {
        let id = c.nodes[node]!.service.connect(credentials: nil)
        c.nodes[node]!.names[id] = "\(node)\(name)"
        c.nodes[node]!.send(id, .hello(Hello(pid: 100, clientName: name)))
        _ = c.run()
        return (node, id)
    }

    static func open(_ tag: UInt32, length: UInt8) -> ClientMessage {
        .openLockspace(tag: tag, name: ls, valueBlockLength: length, create: true)
    }

    /// The group of "ls" on each live node, and whether they agree.
    static func groups(_ c: ClusterHarness) -> Set<[UInt32]> {
        Set(c.nodes.values.map { $0.service.mastering.groups[ls]?.members ?? [] })
    }

    /// The runs that completed on `node` after its view's first (those a join started).
    static func joinRuns(_ c: ClusterHarness, _ node: UInt32) -> Int {
        (c.recoveries[node] ?? []).filter {
            if case .done(_, let run) = $0 { run > 0 } else { false }
        }.count
    }

    @Test func aLockspacesDirectoryIsSpreadOverItsGroupOnly() {
        var c = ClusterHarness(nodes: 3, everyNodeUsesLockspace: false)
        let a = c.client(1, "a")
        _ = c.client(2, "b")
        // Each first open of "ls" on a node was a run of the view: every node agrees the group is nodes 1 and 2.
        #expect(Self.groups(c) == [[1, 2]])
        #expect(Self.joinRuns(c, 3) == 2)
        let names = (0..<40).map { "r\($0)" }
        for (index, name) in names.enumerated() { c.send(a, H.lock(UInt32(2 + index), name, .pr)) }
        #expect(c.run().count == names.count)
        // Node 3 uses no lockspace: it is no resource's directory node, and has no lockspace at all.
        #expect(c.nodes[3]!.service.mastering.directory.count == 0)
        #expect(c.nodes[3]!.service.engine.lockspaceCount == 0)
        // The directory is spread over both members: node 2 holds some of the entries.
        #expect(c.nodes[1]!.service.mastering.directory.count + c.nodes[2]!.service.mastering.directory.count == 40)
        #expect(c.nodes[2]!.service.mastering.directory.count > 0)
        // `dlmtool ls` lists the group as the lockspace's members.
        #expect(c.nodes[1]!.service.lockspacesReport(for: .root).lockspaces.first?.members == [1, 2])
        // A death of a node outside the group leaves it as it was.
        c.crash(3)
        c.installView()
        _ = c.run()
        #expect(Self.groups(c) == [[1, 2]])
    }

    @Test func anOpenWaitsForItsJoinAndExclusionHoldsAcrossIt() {
        var c = ClusterHarness(nodes: 3, everyNodeUsesLockspace: false)
        let a = c.client(1, "a")
        _ = c.client(2, "b")
        c.send(a, H.lock(2, "r0", .ex))
        #expect(c.run() == ["1a: COMPLETION tag 2 lock 1 granted EX"])
        // Node 3's first open waits for a run that adds node 3 to the group; its next frame waits behind it.
        let d = Self.bareClient(&c, 3, "d")
        let runsBefore = Self.joinRuns(c, 3)
        c.nodes[3]!.send(d.id, Self.open(1, length: 0))
        c.nodes[3]!.send(d.id, H.lock(2, "r0", .ex))
        #expect(c.nodes[3]!.service.mastering.joining[Self.ls] == 0)
        // The EX that node 1 holds still excludes node 3's, whichever node is the directory of r0 now: it waits.
        let remote: UInt32 = 0x8000_0001
        #expect(c.run() == ["3d: LOCKSPACE tag 1 id 0 created", "1a: BAST lock 1 EX", "3d: OK tag 2 lock \(remote)"])
        #expect(Self.joinRuns(c, 3) == runsBefore + 1)
        #expect(Self.groups(c) == [[1, 2, 3]])
        c.send(a, H.unlock(3, 1))
        #expect(
            Set(c.run()) == ["1a: COMPLETION tag 3 lock 1 EUNLOCK", "3d: COMPLETION tag 0 lock \(remote) granted EX"])
    }

    /// Node 3's join of another lockspace, and the death of a node outside the group, rebuild no directory entry of
    /// "ls"; a death inside the group rebuilds them.
    @Test func aRunRebuildsOnlyTheDirectoriesOfTheGroupsItChanges() {
        var c = ClusterHarness(nodes: 4, everyNodeUsesLockspace: false)
        let a = c.client(1, "a")
        _ = c.client(2, "b")
        _ = c.client(3, "c")
        let names = (0..<40).map { "r\($0)" }
        for (index, name) in names.enumerated() { c.send(a, H.lock(UInt32(2 + index), name, .pr)) }
        #expect(c.run().count == names.count)
        func entries(_ c: ClusterHarness) -> [UInt32: Int] {
            c.nodes.mapValues { $0.service.mastering.directory.count }
        }
        let before = entries(c)
        #expect(before.values.reduce(0, +) == 40 && before[4] == 0)
        // Node 3 joins "other": a run of the view, which leaves the entries of "ls" where they are.
        c.registrationsCarried = [:]
        let d = Self.bareClient(&c, 3, "d")
        c.nodes[3]!.send(d.id, .openLockspace(tag: 1, name: Array("other".utf8), valueBlockLength: 0, create: true))
        #expect(c.run() == ["3d: LOCKSPACE tag 1 id 1 created"])
        #expect(Self.joinRuns(c, 1) == 4)
        #expect(c.registrationsCarried["ls"] == nil)
        #expect(entries(c) == before)
        // Node 4, in no group, dies: nothing of "ls" is rebuilt.
        c.crash(4)
        c.installView()
        _ = c.run()
        #expect(c.registrationsCarried["ls"] == nil)
        #expect(entries(c).filter { $0.key != 4 } == before.filter { $0.key != 4 })
        // Node 3, in the group, dies: its entries move to nodes 1 and 2, and node 1 registers its resources again.
        c.crash(3)
        c.installView()
        _ = c.run()
        #expect((c.registrationsCarried["ls"] ?? 0) > 0)
        #expect(entries(c)[1]! + entries(c)[2]! == 40)
        c.send(a, H.unlock(100, 1))
        #expect(c.run() == ["1a: COMPLETION tag 100 lock 1 EUNLOCK"])
    }

    @Test func aJoinNamingAnotherValueBlockLengthIsRefused() {
        var c = ClusterHarness(nodes: 3, everyNodeUsesLockspace: false)
        let a = Self.bareClient(&c, 1, "a")
        c.nodes[1]!.send(a.id, Self.open(1, length: 64))
        #expect(c.run() == ["1a: LOCKSPACE tag 1 id 0 created"])
        let b = Self.bareClient(&c, 2, "b")
        c.nodes[2]!.send(b.id, Self.open(1, length: 32))
        #expect(c.run() == ["2b: ERROR tag 1 EEXIST"])
        #expect(Self.groups(c) == [[1]])
        // An open that names no length takes the group's.
        c.nodes[2]!.send(b.id, Self.open(2, length: 0))
        #expect(c.run() == ["2b: LOCKSPACE tag 2 id 0 created"])
        let engine = c.nodes[2]!.service.engine
        #expect(engine.lockspace(named: Self.ls).flatMap { engine.lockspaceInfo($0) }?.valueBlockLength == 64)
        #expect(Self.groups(c) == [[1, 2]])
        // Once a member, an open naming another length is refused at once, as on one node.
        let e = Self.bareClient(&c, 2, "e")
        c.nodes[2]!.send(e.id, Self.open(1, length: 32))
        #expect(c.run().first?.hasPrefix("2e: ERROR tag 1") == true)
    }

    @Test func joinsAtOnceAndTheCoordinatorsDeathLoseNoOpen() {
        var c = ClusterHarness(nodes: 4, everyNodeUsesLockspace: false)
        _ = c.client(1, "a")
        // Nodes 2 and 3 open at once: both join.
        let b = Self.bareClient(&c, 2, "b")
        let d = Self.bareClient(&c, 3, "d")
        let e = Self.bareClient(&c, 4, "e")
        c.nodes[2]!.send(b.id, Self.open(1, length: 0))
        c.nodes[3]!.send(d.id, Self.open(1, length: 0))
        #expect(Set(c.run()) == ["2b: LOCKSPACE tag 1 id 0 created", "3d: LOCKSPACE tag 1 id 0 created"])
        #expect(Self.groups(c) == [[1, 2, 3]])
        // Node 4's request to the coordinator (node 1) is held back, and node 1 dies.
        c.paused.insert(ClusterHarness.Link(from: 4, to: 1))
        c.nodes[4]!.send(e.id, Self.open(1, length: 0))
        #expect(c.run() == [])
        #expect(c.nodes[4]!.service.mastering.joinWaiters.count == 1)
        c.crash(1)
        c.paused = []
        c.installView()
        // The new view's run names node 4's join.
        #expect(c.run() == ["4e: LOCKSPACE tag 1 id 0 created"])
        #expect(Self.groups(c) == [[2, 3, 4]])
    }

    /// A run that leaves the directory of a lockspace as it was does not hold its lookups: while the death of node 4
    /// rebuilds the directory of "other" (nodes 3 and 4), the first LOCKs of new resources of "ls" (nodes 1 and 2)
    /// are looked up, mastered and granted, through either node's directory, before the run ends.
    @Test func lookupsRunDuringARunThatLeavesTheirDirectoryAsItWas() {
        var c = ClusterHarness(nodes: 4, everyNodeUsesLockspace: false)
        let a = c.client(1, "a")
        let b = c.client(2, "b")
        for node: UInt32 in [3, 4] {
            let o = Self.bareClient(&c, node, "o")
            c.nodes[node]!.send(
                o.id, .openLockspace(tag: 1, name: Array("other".utf8), valueBlockLength: 0, create: true))
            #expect(c.run() == ["\(node)o: LOCKSPACE tag 1 id 0 created"])
        }
        c.crash(4)
        c.installView()
        // The run goes on until node 3 has done its part of phase 1; its barrier to node 2 is then held back: node 2
        // cannot end phase 1, nor any node the run.
        c.hold(ClusterHarness.Link(from: 3, to: 2)) {
            if case .recoveryDone(_, 1, _, _, _) = $0 { true } else { false }
        }
        for node: UInt32 in [1, 2] {
            #expect(c.nodes[node]!.service.mastering.recovery?.rebuiltDirectories == [Array("other".utf8)])
        }
        // A resource whose directory node is node 2, and one whose directory node is node 1.
        let remote = ClusterHarness.name(directedTo: 2, of: 2)
        let local = ClusterHarness.name(directedTo: 1, of: 2)
        c.send(a, H.lock(2, remote, .ex))
        c.send(a, H.lock(3, local, .ex))
        #expect(c.run() == ["1a: COMPLETION tag 2 lock 1 granted EX", "1a: COMPLETION tag 3 lock 2 granted EX"])
        // Node 2's client finds node 1 the master of the first (through its own directory) and waits for the EX.
        c.send(b, H.lock(2, remote, .ex))
        #expect(c.run() == ["1a: BAST lock 1 EX", "2b: OK tag 2 lock \(0x8000_0001 as UInt32)"])
        #expect(c.nodes[1]!.service.isRecovering && c.nodes[2]!.service.isRecovering)
        c.paused = []
        _ = c.run()
        #expect(!c.nodes[1]!.service.isRecovering && !c.nodes[2]!.service.isRecovering)
        c.send(a, H.unlock(4, 1))
        #expect(
            Set(c.run()) == [
                "1a: COMPLETION tag 4 lock 1 EUNLOCK", "2b: COMPLETION tag 0 lock \(0x8000_0001 as UInt32) granted EX",
            ])
    }

    /// A node leaves a lockspace's group once its client released the lockspace there (a release is refused while
    /// the node masters another node's lock in it): the group and its directory go on without it, and a resource
    /// it mastered is mastered anew by another node, with fencing tokens above those it issued. Opening the
    /// lockspace again joins the group again.
    @Test func aReleaseLeavesTheGroup() {
        var c = ClusterHarness(nodes: 3, everyNodeUsesLockspace: false)
        let a = c.client(1, "a")
        let b = c.client(2, "b")
        let d = c.client(3, "d")
        #expect(Self.groups(c) == [[1, 2, 3]])
        let names = (0..<30).map { "r\($0)" }
        // Node 3 masters these (its client asked first), and issues fencing tokens there.
        for (index, name) in names.enumerated() { c.send(d, H.lock(UInt32(10 + index), name, .ex)) }
        #expect(c.run().count == names.count)
        let last = c.completions["3d"]!.map(\.fencingToken).max()!
        #expect(last > 0)
        for index in names.indices { c.send(d, H.unlock(UInt32(100 + index), UInt32(1 + index))) }
        #expect(c.run().count == names.count)
        // Node 2 uses one of them for a while: it keeps node 3 as its master in its cache.
        c.send(b, H.lock(2, names[1], .pr))
        c.send(b, H.unlock(3, 0x8000_0001))
        #expect(c.run().count == 2)
        // Node 1 holds a lock node 3 masters: the release is refused, and node 3 stays.
        c.send(a, H.lock(2, names[0], .pr))
        #expect(c.run() == ["1a: COMPLETION tag 2 lock \(0x8000_0001 as UInt32) granted PR"])
        c.send(d, .releaseLockspace(tag: 200, lockspace: 0, force: false))
        #expect(c.run().first?.hasPrefix("3d: ERROR tag 200 EBUSY") == true)
        c.send(a, H.unlock(3, 0x8000_0001))
        #expect(c.run() == ["1a: COMPLETION tag 3 lock \(0x8000_0001 as UInt32) EUNLOCK"])
        #expect(Self.groups(c) == [[1, 2, 3]])
        // Now node 3 masters no lock: the release succeeds, and a run leaves node 3 out of the group.
        let runs = Self.joinRuns(c, 1)
        c.send(d, .releaseLockspace(tag: 201, lockspace: 0, force: false))
        #expect(c.run() == ["3d: OK tag 201 lock 0"])
        #expect(Self.joinRuns(c, 1) == runs + 1)
        #expect(Set(c.nodes.values.map { $0.service.mastering.groups[Self.ls]?.members ?? [] }) == [[1, 2]])
        let me = c.nodes[3]!.service
        #expect(me.mastering.directory.count == 0 && me.mastering.joined[Self.ls] == nil)
        #expect(me.mastering.masters.keys(masteredBy: 3).isEmpty)
        // Node 2's request on the resource its cache says node 3 masters finds that node 3 no longer does: it looks
        // the resource up again and masters it. Node 1 masters the others anew; all above node 3's tokens.
        c.send(b, H.lock(4, names[1], .ex))
        #expect(c.run() == ["2b: COMPLETION tag 4 lock 1 granted EX"])
        for (index, name) in names.enumerated() where index != 1 {
            c.send(a, H.lock(UInt32(10 + index), name, .ex))
        }
        #expect(c.run().count == names.count - 1)
        #expect(c.completions["1a"]!.suffix(names.count - 1).allSatisfy { $0.fencingToken > last })
        #expect(c.completions["2b"]!.last!.fencingToken > last)
        // And node 2's EX excludes node 1's.
        c.send(a, H.lock(5, names[1], .ex, .noQueue))
        #expect(c.run().last?.hasSuffix("EAGAIN") == true)
        #expect(c.nodes[1]!.service.mastering.directory.count + c.nodes[2]!.service.mastering.directory.count >= 30)
        // Node 3's client opens the lockspace again: it joins, and meets node 1's EX.
        c.send(d, Self.open(300, length: 0))
        #expect(c.run() == ["3d: LOCKSPACE tag 300 id 65536 created"])  // (the released slot's next generation)
        #expect(Self.groups(c) == [[1, 2, 3]])
        c.send(
            d, .lock(LockMessage(tag: 301, lockspace: 65536, flags: .noQueue, mode: .ex, name: Array(names[0].utf8))))
        #expect(c.run() == ["3d: COMPLETION tag 301 lock \(0x8000_0001 as UInt32) EAGAIN"])
    }
}
