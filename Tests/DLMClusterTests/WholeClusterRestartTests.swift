import DLMCluster
import DLMCore
import DLMWire
import GroupServices
import Testing

/// A restart of the whole cluster in process, with each node's store modelled from the changes it wrote
/// (`ModelStore`): the persistent locks of the last view's stores come back exactly once, as orphans of their
/// holders' nodes and pids, also when a new view aborts the first recovery after the restart; a store of an
/// earlier view gives nothing back; the previous lives' records are gone from the stores afterwards, which hold
/// exactly what the engines hold; and a second restart of the whole cluster gives the same back again.
@Suite struct WholeClusterRestartTests {
    typealias H = ServiceHarness

    /// Every store commits what it wrote, and every message is carried, until nothing is left.
    static func settle(_ c: inout ClusterHarness) {
        for _ in 0..<4 {
            for node in c.nodes.keys.sorted() { _ = c.commit(node) }
        }
    }

    /// Every node stops, then starts again from its store, and group services agree on a view of them all.
    static func restartWholeCluster(_ c: inout ClusterHarness) {
        let nodes = c.incarnations.keys.sorted()
        for node in nodes { c.crash(node) }
        for node in nodes { c.restartFromStore(node) }
        c.installView()
    }

    /// The locks on resource `name` (a path below a top-level resource: "top/child") across the live nodes: (node
    /// that masters it, lock).
    static func locks(_ c: ClusterHarness, _ name: String) -> [(node: UInt32, lock: LockSnapshot)] {
        var found: [(UInt32, LockSnapshot)] = []
        let path = name.split(separator: "/").map { Array($0.utf8) }
        for (node, harness) in c.nodes.sorted(by: { $0.key < $1.key }) {
            let engine = harness.service.engine
            guard let ls = engine.lockspace(named: Array("ls".utf8)),
                let resource = engine.snapshotResource(ls, path: path)
            else { continue }
            found += resource.locks.map { (node, $0) }
        }
        return found
    }

    /// Each node's store holds exactly the persistent locks its engine holds.
    static func storesMatchEngines(_ c: ClusterHarness, sourceLocation: SourceLocation = #_sourceLocation) {
        for (node, harness) in c.nodes.sorted(by: { $0.key < $1.key }) {
            let store = c.storeContents[node] ?? ModelStore()
            for stored in store.records {
                let current = harness.service.engine.storedResource(
                    lockspace: stored.lockspace, path: stored.resource.path)
                #expect(
                    current.map { Set($0.resource.locks.map(\.id)) } == Set(stored.resource.locks.map(\.id)),
                    "node \(node): the store's \(stored.resource.path.map(\.displayName)) is not the engine's",
                    sourceLocation: sourceLocation)
            }
        }
    }

    @Test func theLatestStoresComeBackOnceAndStaleOnesDoNot() {
        var c = ClusterHarness(nodes: 3, stores: true)
        // p1, p2, p3: a persistent lock of node N's client on a name node N masters (the first to ask masters it).
        let names = (1...3).map { "p\($0)" }
        let modes: [LockMode] = [.ex, .pw, .pr]
        var holders: [(node: UInt32, id: ConnectionID)] = []
        for node in UInt32(1)...3 {
            let holder = c.client(node, "h")
            holders.append(holder)
            c.send(holder, H.lock(2, names[Int(node) - 1], modes[Int(node) - 1], .persistent))
        }
        // "stale": a persistent EX of node 3's client, mastered by node 3.
        c.send(holders[2], H.lock(3, "stale", .ex, .persistent))
        Self.settle(&c)
        #expect(c.completions["3h"]?.count == 2)
        // Node 3 dies: its resources are rebuilt on nodes 1 and 2 (its client's locks as orphans); there a client of
        // node 1 adopts the orphan on "stale" and releases it. Node 3's store keeps it, as of the first view.
        c.crash(3)
        c.installView()
        Self.settle(&c)
        let adopter = c.client(1, "a")
        c.send(adopter, H.lock(2, "stale", .ex, .orphan))
        Self.settle(&c)
        #expect(c.completions["1a"]?.last?.status == .granted)
        c.send(adopter, H.unlock(3, c.completions["1a"]!.last!.lock))
        Self.settle(&c)
        #expect(Self.locks(c, "stale").isEmpty)

        // The rest dies; all three restart from their stores. A second view of the same members aborts the first
        // recovery after a few messages.
        Self.restartWholeCluster(&c)
        _ = c.run(limit: 4)
        c.installView()
        Self.settle(&c)
        for round in 1...2 {
            for (index, name) in names.enumerated() {
                let found = Self.locks(c, name)
                #expect(found.count == 1, "round \(round): \(name) has \(found.count) locks: \(found)")
                if let (_, lock) = found.first {
                    #expect(lock.owner == nil && lock.orphanNode == UInt32(index + 1) && lock.pid == 100, "\(lock)")
                    #expect(lock.grantedMode == modes[index])
                }
            }
            #expect(Self.locks(c, "stale").isEmpty, "round \(round): a stale store's lock came back")
            Self.storesMatchEngines(c)
            #expect(
                c.storeContents.values.allSatisfy { $0.resources.keys.allSatisfy { $0.path != [Array("stale".utf8)] } })
            // Restarted again, all at once: the stores of that recovery give the same back.
            Self.restartWholeCluster(&c)
            Self.settle(&c)
        }
        // And a client adopts one from another node than its holder's; the rest stay.
        let late = c.client(2, "late")
        c.send(late, H.lock(2, "p1", .ex, .orphan))
        Self.settle(&c)
        #expect(c.completions["2late"]?.last?.status == .granted)
        #expect(Self.locks(c, "p3").count == 1)
    }

    /// Persistent sub-locks come back with their tree: a client of node 1 holds persistent PR on a resource,
    /// persistent EX on a sub-resource under it and persistent PW one level further down, and EX (not persistent)
    /// on a second sub-resource. After each of two restarts of the whole cluster the three persistent locks are
    /// orphans again, each under the one it was under, on one node, and the stores hold what the engines hold; the
    /// EX that was not persistent is gone.
    @Test func persistentSubLocksComeBackWithTheirTree() {
        var c = ClusterHarness(nodes: 3, stores: true)
        let holder = c.client(1, "h")
        c.send(holder, H.lock(2, "tree", .pr, .persistent))
        Self.settle(&c)
        let top = c.completions["1h"]?.last?.lock ?? 0
        c.send(holder, H.lock(3, "child", .ex, .persistent, parent: top))
        Self.settle(&c)
        let child = c.completions["1h"]?.last?.lock ?? 0
        c.send(holder, H.lock(4, "leaf", .pw, .persistent, parent: child))
        c.send(holder, H.lock(5, "volatile", .ex, parent: top))
        Self.settle(&c)
        #expect(c.completions["1h"]?.filter { $0.status == .granted }.count == 4)
        for round in 1...2 {
            Self.restartWholeCluster(&c)
            Self.settle(&c)
            let tops = Self.locks(c, "tree")
            let children = Self.locks(c, "tree/child")
            let leaves = Self.locks(c, "tree/child/leaf")
            #expect(tops.count == 1 && children.count == 1 && leaves.count == 1, "round \(round)")
            #expect(Self.locks(c, "tree/volatile").isEmpty, "round \(round)")
            guard let (node, topLock) = tops.first, let childLock = children.first?.lock,
                let leafLock = leaves.first?.lock
            else { continue }
            #expect(children.first?.node == node && leaves.first?.node == node)
            #expect(topLock.grantedMode == .pr && childLock.grantedMode == .ex && leafLock.grantedMode == .pw)
            for lock in [topLock, childLock, leafLock] {
                #expect(lock.owner == nil && lock.orphanNode == 1 && lock.pid == 100, "round \(round): \(lock)")
            }
            #expect(childLock.parent == topLock.id && leafLock.parent == childLock.id, "round \(round)")
            Self.storesMatchEngines(c)
        }
    }

    /// A node that restarts into a cluster that kept running drops its previous life, and its store forgets it.
    @Test func aRestartIntoARunningClusterDropsThePreviousLife() {
        var c = ClusterHarness(nodes: 3, stores: true)
        let holder = c.client(3, "h")
        c.send(holder, H.lock(2, "mine", .ex, .persistent))
        Self.settle(&c)
        c.crash(3)
        c.installView()
        Self.settle(&c)
        // The orphan lives on on nodes 1 and 2; purged there.
        let purger = c.client(1, "p")
        c.send(purger, .purge(tag: 2, lockspace: 0, nodeID: 3, pid: 100))
        Self.settle(&c)
        #expect(Self.locks(c, "mine").isEmpty)
        // Idle past the toss delay: its master and the directory forget it, so that nothing there stands in the way.
        c.tick(by: 11_000_000_000)
        Self.settle(&c)
        c.restartFromStore(3)
        c.installView()
        Self.settle(&c)
        #expect(Self.locks(c, "mine").isEmpty, "a stale previous life came back into a running cluster")
        #expect(c.storeContents[3]?.resources.isEmpty == true)
    }

    /// A previous life ends in slices after the first recovery, and its node serves between them. Until the last
    /// slice its store says it recovered no view, so a crash of the whole cluster meanwhile does not offer its old
    /// records, which may be stale: here an orphan that another node adopted and released would come back.
    @Test func aPreviousLifeEndsInSlicesAndACrashMeanwhileBringsNothingStaleBack() {
        var c = ClusterHarness(nodes: 2, stores: true, recoverySlice: 2)
        // Twelve persistent locks of node 1's client, on names node 1 masters (it asks first), and "s", whose
        // directory node is node 2 (its orphan is rebuilt there after the restart).
        let holder = c.client(1, "h")
        let stale = ClusterHarness.name(directedTo: 2, of: 2, prefix: "s")
        let names = (0..<12).map { "p\($0)" } + [stale]
        for (index, name) in names.enumerated() { c.send(holder, H.lock(UInt32(10 + index), name, .ex, .persistent)) }
        Self.settle(&c)
        #expect(c.completions["1h"]?.filter { $0.status == .granted }.count == names.count)
        let records = c.storeContents[1]?.records.count ?? 0
        #expect(records == names.count)

        // The whole cluster restarts; node 1 gets no slice once its recovery is done.
        c.withholdSlicesAfter = (1, "recovery done")
        Self.restartWholeCluster(&c)
        Self.settle(&c)
        #expect(c.slicesWithheld == [1], "node 1's recovery did not complete")
        let view = c.storeContents[2]?.recoveredView ?? 0
        #expect(view > 0)
        #expect(c.storeContents[1]?.recoveredView == 0, "the view was stored before the old records were gone")
        #expect(!c.notices.contains { $0.node == 1 && $0.message.contains("previous life are settled") })
        // Node 1 serves meanwhile.
        let fresh = c.client(1, "x")
        c.send(fresh, H.lock(2, "fresh", .ex))
        Self.settle(&c)
        #expect(c.completions["1x"]?.last?.status == .granted)
        // On node 2, a client adopts the orphan on the stale name and releases it: node 1's old record of it is stale.
        let adopter = c.client(2, "a")
        c.send(adopter, H.lock(2, stale, .ex, .orphan))
        Self.settle(&c)
        #expect(c.completions["2a"]?.last?.status == .granted)
        c.send(adopter, H.unlock(3, c.completions["2a"]!.last!.lock))
        Self.settle(&c)
        #expect(Self.locks(c, stale).isEmpty)

        // Everything dies before node 1's last slice, and restarts. Node 1's new life offers nothing (its store's age
        // is unknown); it ends its previous life, a slice per two of its records, after its recovery.
        c.withholdSlicesAfter = nil
        c.slicesWithheld = []
        let oldRecords = c.storeContents[1]?.records.count ?? 0
        #expect(oldRecords == names.count)
        #expect(
            c.storeContents[1]?.resources.keys.contains { $0.path == [Array(stale.utf8)] } == true,
            "node 1's store no longer has its old record of the stale name")
        c.notices = []
        Self.restartWholeCluster(&c)
        Self.settle(&c)
        #expect(Self.locks(c, stale).isEmpty, "a stale record of a previous life came back")
        for name in names { #expect(Self.locks(c, name).count <= 1, "\(name) came back twice") }
        let ofNode1 = c.notices.filter { $0.node == 1 }.map(\.message)
        if let done = ofNode1.firstIndex(of: "recovery done"),
            let settled = ofNode1.firstIndex(where: { $0.contains("previous life are settled") })
        {
            let slices = ofNode1[done..<settled].filter { $0 == ClusterHarness.sliceMark }.count
            #expect(slices >= oldRecords / 2, "\(oldRecords) records ended in \(slices) slices")
        } else {
            Issue.record("node 1 did not end its previous life: \(ofNode1)")
        }
        #expect(c.storeContents.values.allSatisfy { $0.recoveredView > view })
        Self.storesMatchEngines(c)
    }
}
