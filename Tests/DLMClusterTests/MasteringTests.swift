import DLMWire
import Testing

@testable import DLMCluster
@testable import DLMCore

/// Resource mastering across nodes (LockService+Mastering.swift), in-process: several nodes' lock services, the
/// peer messages carried in order per pair of nodes. The first node to ask the directory masters a resource;
/// every other node's requests go to it, so one lock space spans the nodes.
@Suite struct MasteringTests {
    typealias H = ServiceHarness
    static let remote: UInt32 = 0x8000_0001

    /// EX on one name from two nodes: one holder at a time, the other waits, gets a blocking callback sent across,
    /// and is granted when the first unlocks.
    @Test func exclusiveLockIsExclusiveAcrossNodes() {
        var c = ClusterHarness(nodes: 3)
        let name = ClusterHarness.name(directedTo: 3, of: 3)
        let a = c.client(1, "a")
        let b = c.client(2, "b")
        c.send(a, H.lock(2, name, .ex))
        #expect(c.run() == ["1a: COMPLETION tag 2 lock 1 granted EX"])
        c.send(b, H.lock(2, name, .ex))
        let queued = c.run()
        #expect(Set(queued) == ["2b: OK tag 2 lock \(Self.remote)", "1a: BAST lock 1 EX"])
        c.send(a, H.unlock(3, 1))
        #expect(
            Set(c.run()) == [
                "1a: COMPLETION tag 3 lock 1 EUNLOCK", "2b: COMPLETION tag 0 lock \(Self.remote) granted EX",
            ])
        // And back: node 1's new request waits for node 2's holder, which is told across.
        c.send(a, H.lock(4, name, .pr))
        #expect(Set(c.run()) == ["1a: OK tag 4 lock 1", "2b: BAST lock \(Self.remote) PR"])
        c.send(b, H.unlock(3, Self.remote))
        #expect(
            Set(c.run()) == [
                "2b: COMPLETION tag 3 lock \(Self.remote) EUNLOCK", "1a: COMPLETION tag 0 lock 1 granted PR",
            ])
    }

    /// DEADLOCK_CANCEL (`dlm_ls_deadlock_cancel`) of a lock mastered on another node goes to its master: the asker
    /// gets OK and the lock's owner its EDEADLK, as on one node; another user of the owner's node may not cancel
    /// it, root may; a lock that no longer exists is ENOENT, a granted one EBUSY.
    @Test func deadlockCancelOfALockMasteredElsewhere() {
        var c = ClusterHarness(nodes: 2)
        let name = ClusterHarness.name(directedTo: 2, of: 2)
        let a = c.client(1, "a")
        let b = c.client(2, "b", credentials: ClientCredentials(pid: 20, uid: 1000))
        let other = c.client(2, "o", credentials: ClientCredentials(pid: 21, uid: 1001))
        let root = c.client(2, "r", credentials: .root)
        // Node 1 masters the name (its client asked first); node 2's EX waits there.
        c.send(a, H.lock(2, name, .ex))
        #expect(c.run() == ["1a: COMPLETION tag 2 lock 1 granted EX"])
        c.send(b, H.lock(2, name, .ex))
        #expect(Set(c.run()) == ["2b: OK tag 2 lock \(Self.remote)", "1a: BAST lock 1 EX"])
        c.send(other, .deadlockCancel(tag: 3, lock: Self.remote))
        #expect(c.run() == ["2o: ERROR tag 3 EPERM"])
        c.send(b, .deadlockCancel(tag: 3, lock: Self.remote))
        #expect(c.run() == ["2b: OK tag 3 lock \(Self.remote)", "2b: COMPLETION tag 0 lock \(Self.remote) EDEADLK"])
        c.send(root, .deadlockCancel(tag: 4, lock: Self.remote))
        #expect(c.run() == ["2r: ERROR tag 4 ENOENT"])

        // Root cancels another user's waiting request; the owner hears of it, not root.
        c.send(b, H.lock(5, name, .pr))
        #expect(c.run() == ["2b: OK tag 5 lock \(Self.remote)"])
        c.send(root, .deadlockCancel(tag: 6, lock: Self.remote))
        #expect(c.run() == ["2r: OK tag 6 lock \(Self.remote)", "2b: COMPLETION tag 0 lock \(Self.remote) EDEADLK"])

        // A granted lock has nothing to cancel.
        c.send(a, H.unlock(3, 1))
        _ = c.run()
        c.send(b, H.lock(7, name, .ex))
        #expect(c.run() == ["2b: COMPLETION tag 7 lock \(Self.remote) granted EX"])
        c.send(root, .deadlockCancel(tag: 8, lock: Self.remote))
        #expect(c.run() == ["2r: ERROR tag 8 EBUSY"])
        // The lock stays granted: its holder unlocks it.
        c.send(b, H.unlock(9, Self.remote))
        #expect(c.run() == ["2b: COMPLETION tag 9 lock \(Self.remote) EUNLOCK"])
    }

    /// The lock limits count a connection's locks on resources mastered elsewhere (its process copies) too: with
    /// at most 2 locks per connection and 3 per user, node 1's client gets EAGAIN for a third lock on node 2's
    /// resources, and a second connection of the same user for the user's fourth; an unlock makes room.
    @Test func lockLimitsCountLocksMasteredElsewhere() {
        var c = ClusterHarness(nodes: 2, lockLimits: (perConnection: 2, perUser: 3))
        let names = (0..<4).map { ClusterHarness.name(directedTo: 2, of: 2, prefix: "r\($0)-") }
        // Node 2 masters the names: two of its clients lock them first (two each, the limit).
        let b = c.client(2, "b")
        let e = c.client(2, "e")
        for (index, name) in names.enumerated() { c.send(index < 2 ? b : e, H.lock(UInt32(2 + index), name, .nl)) }
        #expect(c.run().allSatisfy { $0.contains("granted NL") })
        let a = c.client(1, "a", credentials: ClientCredentials(pid: 10, uid: 1000))
        let d = c.client(1, "d", credentials: ClientCredentials(pid: 11, uid: 1000))
        c.send(a, H.lock(2, names[0], .pr))
        c.send(a, H.lock(3, names[1], .pr))
        c.send(a, H.lock(4, names[2], .pr))
        #expect(
            Set(c.run()) == [
                "1a: COMPLETION tag 2 lock \(Self.remote) granted PR",
                "1a: COMPLETION tag 3 lock \(Self.remote + 1) granted PR", "1a: ERROR tag 4 EAGAIN",
            ])
        c.send(d, H.lock(2, names[2], .pr))
        c.send(d, H.lock(3, names[3], .pr))
        #expect(
            Set(c.run()) == ["1d: COMPLETION tag 2 lock \(Self.remote + 2) granted PR", "1d: ERROR tag 3 EAGAIN"])
        c.send(a, H.unlock(5, Self.remote))
        _ = c.run()
        c.send(d, H.lock(4, names[3], .pr))
        #expect(c.run() == ["1d: COMPLETION tag 4 lock \(Self.remote) granted PR"])
    }

    /// The directory assigns the first asker; after one lookup, a resource mastered here costs no message, and
    /// a resource whose directory is this node costs none at all.
    @Test func aLocallyMasteredResourceTakesNoHop() {
        var c = ClusterHarness(nodes: 3)
        let elsewhere = ClusterHarness.name(directedTo: 2, of: 3)
        let here = ClusterHarness.name(directedTo: 1, of: 3)
        let a = c.client(1, "a")
        let start = c.carried  // the first view's recovery
        c.send(a, H.lock(2, elsewhere, .ex))
        #expect(c.run() == ["1a: COMPLETION tag 2 lock 1 granted EX"])
        #expect(c.carried - start == 2)  // a lookup and its answer
        c.send(a, H.unlock(3, 1))
        c.send(a, H.lock(4, elsewhere, .pr))
        c.send(a, H.lock(5, here, .ex))
        #expect(c.run().count == 3)
        #expect(c.carried - start == 2)
    }

    /// NOQUEUE, a conversion and a cancel on a remotely mastered resource answer as on one node.
    @Test func noQueueConversionAndCancelAcrossNodes() {
        var c = ClusterHarness(nodes: 2)
        let name = ClusterHarness.name(directedTo: 2, of: 2)
        let a = c.client(1, "a")
        let b = c.client(2, "b")
        c.send(b, H.lock(2, name, .pr))
        #expect(c.run() == ["2b: COMPLETION tag 2 lock 1 granted PR"])
        c.send(a, H.lock(2, name, .ex, .noQueue))
        #expect(c.run() == ["1a: COMPLETION tag 2 lock \(Self.remote) EAGAIN"])
        c.send(a, H.lock(3, name, .pr))
        #expect(c.run() == ["1a: COMPLETION tag 3 lock \(Self.remote) granted PR"])
        // Up to EX waits for b's PR; a cancel gives back the PR it held.
        c.send(a, .convert(ConvertMessage(tag: 4, lock: Self.remote, mode: .ex)))
        #expect(Set(c.run()) == ["1a: OK tag 4 lock \(Self.remote)", "2b: BAST lock 1 EX"])
        c.send(a, H.unlock(5, Self.remote, .cancel))
        let cancelled = c.run()
        #expect(cancelled.contains("1a: COMPLETION tag 5 lock \(Self.remote) ECANCEL PR"), "\(cancelled)")
        // A lock that this client does not hold: ENOENT, nothing sent.
        let before = c.carried
        c.send(a, H.unlock(6, Self.remote + 7))
        #expect(c.run() == ["1a: ERROR tag 6 ENOENT"])
        #expect(c.carried == before)
    }

    /// A value block written by an EX holder on one node is read by a holder on another.
    @Test func valueBlocksTravelThroughTheMaster() {
        var c = ClusterHarness(nodes: 3)
        let name = ClusterHarness.name(directedTo: 1, of: 3)
        let a = c.client(2, "a")
        let b = c.client(3, "b")
        // Node 2 asks first, so it masters the resource (node 1 is only its directory); node 3's PR goes to it.
        c.send(a, H.lock(2, name, .ex, .valueBlock))
        _ = c.run()
        let value = Array(repeating: UInt8(7), count: 32)
        c.send(
            a, .convert(ConvertMessage(tag: 3, lock: 1, flags: [.convert, .valueBlock], mode: .nl, valueBlock: value)))
        _ = c.run()
        c.send(b, H.lock(2, name, .pr, .valueBlock))
        #expect(c.run() == ["3b: COMPLETION tag 2 lock \(Self.remote) granted PR"])
        #expect(c.completions["3b"]?.last?.valueBlock == value)
    }

    /// A client that goes releases its locks on every master; a sub-lock goes to its parent's master.
    @Test func anExitReleasesRemoteLocksAndSubLocksFollowTheirParent() {
        var c = ClusterHarness(nodes: 3)
        let name = ClusterHarness.name(directedTo: 3, of: 3)
        let a = c.client(1, "a")
        let b = c.client(2, "b")
        c.send(a, H.lock(2, name, .nl))
        _ = c.run()
        c.send(b, H.lock(2, name, .ex))
        #expect(c.run() == ["2b: COMPLETION tag 2 lock \(Self.remote) granted EX"])
        c.send(b, H.lock(3, "child", .ex, parent: Self.remote))
        #expect(c.run() == ["2b: COMPLETION tag 3 lock \(Self.remote + 1) granted EX"])
        let a2 = c.client(1, "c")
        c.send(a2, H.lock(2, name, .ex))
        #expect(Set(c.run()) == ["1c: OK tag 2 lock 4", "2b: BAST lock \(Self.remote) EX"])
        c.close(b)
        #expect(c.run() == ["1c: COMPLETION tag 0 lock 4 granted EX"])
        #expect(c.nodes[1]!.service.engine.lockCount == 2)
    }

    /// A client holding locks that another node masters goes: its node forgets their copies in slices, between which
    /// it serves, while the master releases them at once. When that master dies before the last slice, recovery
    /// resends none of the gone client's copies: nothing is rebuilt for an owner that is gone.
    @Test func anExitForgetsRemoteCopiesInSlicesAndRecoveryResendsNoneOfThem() {
        var c = ClusterHarness(nodes: 3, engine: EngineConfig(bulkSlice: 4))
        let names = (0..<20).map { "x\($0)" }
        let a = Self.heldRemotely(&c, names, master: 2)
        #expect(c.nodes[2]!.service.engine.lockCount == names.count)

        // Node 1 gets no slice from now on; its client goes.
        c.slicesWithheld = [1]
        c.close(a)
        _ = c.run()
        let copies = { (c: ClusterHarness) in c.nodes[1]!.service.mastering.copies.copies.filter { $0.owner != 0 }.count
        }
        #expect(copies(c) == names.count, "the copies were forgotten in one step")
        #expect(c.nodes[2]!.service.engine.lockCount == 0, "the master did not release the gone client's locks")
        // Node 1 serves meanwhile.
        let d = c.client(1, "d")
        c.send(d, H.lock(2, "local", .ex))
        _ = c.run()
        #expect(c.completions["1d"]?.last?.status == .granted)

        // The master dies before node 1's last slice: after recovery, every name is free. (Node 1 gets slices again:
        // recovery's, which come first, and its second phase begins with one; the exit's forgetting waits until the
        // recovery ends, which resends none of the exiting owner's copies.)
        c.crash(2)
        c.installView()
        c.slicesWithheld = []
        _ = c.run()
        let b = c.client(3, "b")
        for (index, name) in names.enumerated() { c.send(b, H.lock(UInt32(10 + index), name, .ex, .noQueue)) }
        _ = c.run()
        #expect(
            c.completions["3b"]?.filter { $0.status == .granted }.count == names.count,
            "locks of the gone client were rebuilt: \(c.completions["3b"] ?? [])")

        c.slicesWithheld = []
        _ = c.run()
        #expect(copies(c) == 0)
        #expect(c.nodes[1]!.service.mastering.copies.hasExiting == false)
    }

    /// An owner's exit forgets the locks recovery rebuilt for it in slices, on every master, not in the exit's step
    /// (a client that held 62,500 rebuilt locks made a step of 126 ms when it went); its locks go all the same.
    @Test func anExitForgetsItsRebuiltLocksInSlices() {
        var c = ClusterHarness(nodes: 3, engine: EngineConfig(bulkSlice: 4))
        let names = (0..<20).map { "y\($0)" }
        let a = Self.heldRemotely(&c, names, master: 3)
        // Node 3 dies: nodes 1 and 2 rebuild the client's locks.
        c.crash(3)
        c.installView()
        _ = c.run()
        let rebuilt = { (c: ClusterHarness) in
            [1, 2].map { c.nodes[$0]!.service.mastering.rebuilt.count }.reduce(0, +)
        }
        #expect(rebuilt(c) == names.count)
        #expect(c.nodes[2]!.service.mastering.rebuilt.count > 0)
        // No node gets a slice from now on; the client goes.
        c.slicesWithheld = [1, 2]
        c.close(a)
        _ = c.run()
        #expect(rebuilt(c) == names.count, "the rebuilt locks were forgotten in the exit's step")
        c.slicesWithheld = []
        _ = c.run()
        #expect(rebuilt(c) == 0)
        #expect(c.nodes[1]!.service.mastering.rebuilt.hasExiting == false)
        #expect(c.nodes[2]!.service.mastering.rebuilt.hasExiting == false)
        // Every name is free.
        let b = c.client(2, "b")
        for (index, name) in names.enumerated() { c.send(b, H.lock(UInt32(10 + index), name, .ex, .noQueue)) }
        _ = c.run()
        #expect(c.completions["2b"]?.filter { $0.status == .granted }.count == names.count)
    }

    /// A client's UNLOCK of its persistent lock waits behind its request to another node's master, and the client
    /// goes before the answer comes: the unlock still runs, then the owner exits on every master; no orphan is
    /// left (the frames behind the answer used to be dropped with the connection).
    @Test func framesBehindARemoteAnswerRunBeforeTheExitOfTheirGoneClient() {
        var c = ClusterHarness(nodes: 3)
        let a = c.client(1, "a")
        c.send(a, H.lock(2, ClusterHarness.name(directedTo: 1, of: 3), .ex, .persistent))
        #expect(c.run() == ["1a: COMPLETION tag 2 lock 1 granted EX"])
        c.send(a, H.lock(3, ClusterHarness.name(directedTo: 3, of: 3), .ex))
        c.send(a, H.unlock(4, 1))
        c.close(a)
        _ = c.run()
        #expect(c.nodes[1]!.service.engine.lockCount == 0)
        #expect(c.nodes[3]!.service.engine.lockCount == 0)
    }

    /// A persistent lock on a resource mastered on another node is acknowledged once the master's store holds
    /// it, as a single node acknowledges its own clients' (durability `batch` or `sync`); other nodes' traffic
    /// does not wait for it.
    @Test func aRemotePersistentLockIsAnsweredAfterTheMastersCommit() {
        var c = ClusterHarness(nodes: 2, stores: true)
        let name = ClusterHarness.name(directedTo: 2, of: 2)
        let b = c.client(2, "b")
        let a = c.client(1, "a")
        _ = c.commit(1)
        _ = c.commit(2)
        c.send(b, H.lock(2, name, .nl))
        _ = c.commit(2)
        c.send(a, H.lock(2, name, .ex, .persistent))
        #expect(c.run() == [])
        #expect(c.commit(2) == ["1a: COMPLETION tag 2 lock \(Self.remote) granted EX"])
    }

    /// Three nodes dropping idle resources after 1 µs; a resource whose directory is node 2, mastered by node 3,
    /// was held by a client of node 3 and one of node 1 (so node 1 caches its master), and is idle now.
    static func idleResource() -> (
        ClusterHarness, name: String, key: DirectoryKey, master: (node: UInt32, id: ConnectionID),
        holder: (node: UInt32, id: ConnectionID)
    ) {
        var c = ClusterHarness(nodes: 3, tossDelay: 1_000)
        let name = ClusterHarness.name(directedTo: 2, of: 3)
        let key = DirectoryKey(lockspace: Array("ls".utf8), name: Array(name.utf8))
        let master = c.client(3, "m")
        let holder = c.client(1, "h")
        c.send(master, H.lock(2, name, .pr))
        #expect(c.run() == ["3m: COMPLETION tag 2 lock 1 granted PR"])
        c.send(holder, H.lock(2, name, .pr))
        #expect(c.run() == ["1h: COMPLETION tag 2 lock \(Self.remote) granted PR"])
        c.send(master, H.unlock(3, 1))
        c.send(holder, H.unlock(3, Self.remote))
        _ = c.run()
        return (c, name, key, master, holder)
    }

    /// A resource with no lock for the toss delay is dropped by its master, from the directory, and from the caches
    /// of holders that no longer use it; the next node to ask masters it anew (with no message, as its directory).
    @Test func anIdleResourceIsDroppedEverywhereAndMasteredAnew() {
        let idle = Self.idleResource()
        var c = idle.0
        let (name, key) = (idle.name, idle.key)
        #expect(c.nodes[3]!.service.mastering.masters[key] == 3 && c.nodes[2]!.service.mastering.directory[key] == 3)
        // Not before the delay.
        c.tick(by: 999)
        _ = c.run()
        #expect(c.nodes[3]!.service.mastering.masters[key] == 3)
        c.tick(by: 1_000)
        _ = c.run()
        #expect(c.nodes[3]!.service.mastering.masters[key] == nil)
        #expect(c.nodes[2]!.service.mastering.directory[key] == nil)
        #expect(c.nodes[3]!.service.mastering.removing.isEmpty)
        c.tick(by: 1_000)  // the holder's cache: a delay after its last copy went
        #expect(c.nodes[1]!.service.mastering.masters[key] == nil)
        // Node 2 asks next: its own directory names it, no message at all.
        let asker = c.client(2, "a")
        let start = c.carried
        c.send(asker, H.lock(2, name, .ex))
        #expect(c.run() == ["2a: COMPLETION tag 2 lock 1 granted EX"])
        #expect(c.carried == start && c.nodes[2]!.service.mastering.masters[key] == 2)
    }

    /// A client that took locks on another node's resources and released them all, then goes: that master forgets
    /// it too. (It was told only by the holder's node, and only when the client still held a lock there: a master
    /// kept a record of every remote client that had ever locked there, and a client on another node that came and
    /// went each time, as `dlmtool lock` does, grew every master it used.)
    @Test func aMasterForgetsAGoneClientThatHoldsNothingThere() {
        var c = ClusterHarness(nodes: 3)
        let a = Self.heldRemotely(&c, ["z0", "z1"], master: 2)
        c.send(a, H.unlock(20, Self.remote))
        c.send(a, H.unlock(21, Self.remote + 1))
        _ = c.run()
        #expect(c.nodes[2]!.service.engine.lockCount == 0)
        let owner = OwnerID(node: 1, incarnation: c.incarnations[1]!, local: a.id.owner)
        #expect(c.nodes[2]!.service.engine.ownerIndex[owner] != nil, "the master knows the client while it lives")
        c.close(a)
        _ = c.run()
        #expect(c.nodes[2]!.service.engine.ownerIndex[owner] == nil, "the master keeps a gone client's record")
        #expect(c.nodes[1]!.service.mastering.copies.mastersUsed.isEmpty)
    }

    /// FORCEUNLOCK of a parent lock that another node masters: its client gets the sub-locks' EUNLOCKs first, then
    /// the parent's, as a client of the master's own node does (the master's answer went out ahead of the
    /// sub-locks' completions).
    @Test func aRemoteForceUnlockEndsTheSubLocksBeforeTheParent() {
        var c = ClusterHarness(nodes: 3)
        let a = Self.heldRemotely(&c, ["fp"], master: 2)
        let (parent, first, second) = (Self.remote, Self.remote + 1, Self.remote + 2)
        c.send(a, H.lock(20, "c1", .ex, parent: parent))
        c.send(a, H.lock(21, "c2", .pr, parent: parent))
        #expect(
            c.run() == [
                "1a: COMPLETION tag 20 lock \(first) granted EX", "1a: COMPLETION tag 21 lock \(second) granted PR",
            ])
        c.send(a, H.unlock(22, parent, .forceUnlock))
        #expect(
            c.run() == [
                "1a: COMPLETION tag 0 lock \(first) EUNLOCK", "1a: COMPLETION tag 0 lock \(second) EUNLOCK",
                "1a: COMPLETION tag 22 lock \(parent) EUNLOCK",
            ])
        // The same on the master's own node.
        let m = c.client(2, "n")
        c.send(m, H.lock(30, "fp", .ex))
        _ = c.run()
        c.send(m, H.lock(31, "c1", .ex, parent: 1))
        c.send(m, H.lock(32, "c2", .pr, parent: 1))
        _ = c.run()
        c.send(m, H.unlock(33, 1, .forceUnlock))
        #expect(
            c.run() == [
                "2n: COMPLETION tag 0 lock 2 EUNLOCK", "2n: COMPLETION tag 0 lock 3 EUNLOCK",
                "2n: COMPLETION tag 33 lock 1 EUNLOCK",
            ])
    }

    /// A request that reaches a master while it drops the resource waits until the directory has forgotten it,
    /// then is told "not master" and looks again: the asker becomes the one master, never two.
    @Test func aRequestMeetingAMasterThatDropsTheResourceFindsTheNewMaster() {
        let idle = Self.idleResource()
        var c = idle.0
        let (name, key, master, holder) = (idle.name, idle.key, idle.master, idle.holder)
        // The master drops it, its REMOVE held on the way; the holder still has the master in its cache.
        c.paused.insert(ClusterHarness.Link(from: 3, to: 2))
        c.tick(by: 1_500)
        _ = c.run()
        #expect(c.nodes[3]!.service.mastering.removing == [key])
        #expect(c.nodes[1]!.service.mastering.masters[key] == 3)
        c.send(holder, H.lock(4, name, .ex))
        #expect(c.run() == [])  // held by node 3 until the directory answers
        c.paused = []
        #expect(c.run() == ["1h: COMPLETION tag 4 lock 1 granted EX"])  // mastered by its own node now
        #expect(c.nodes[1]!.service.mastering.masters[key] == 1 && c.nodes[2]!.service.mastering.directory[key] == 1)
        #expect(c.nodes[3]!.service.mastering.masters[key] == nil)
        // Node 3's next request goes to the new master and waits behind the EX.
        c.send(master, H.lock(5, name, .pr))
        #expect(Set(c.run()) == ["3m: OK tag 5 lock \(Self.remote)", "1h: BAST lock 1 PR"])
    }

    /// Node 4 masters `count` names (its client "m" asks first), and node 1's client "a" holds PR on each: its
    /// lock ids.
    static func heldOnNodeFour(_ count: Int) -> (ClusterHarness, a: (node: UInt32, id: ConnectionID), [UInt32]) {
        var c = ClusterHarness(nodes: 4)
        let names = (0..<count).map { "z\($0)" }
        let m = c.client(4, "m")
        for (index, name) in names.enumerated() { c.send(m, H.lock(UInt32(10 + index), name, .nl)) }
        _ = c.run()
        let a = c.client(1, "a")
        for (index, name) in names.enumerated() { c.send(a, H.lock(UInt32(10 + index), name, .pr)) }
        _ = c.run()
        let locks = (c.completions["1a"] ?? []).filter { $0.status == .granted }.map(\.lock)
        #expect(locks.count == names.count)
        return (c, a, locks)
    }

    /// Every lock of node 1's "a" unlocks: they stayed its own.
    static func expectEveryLockUnlocks(
        _ c: inout ClusterHarness, _ a: (node: UInt32, id: ConnectionID), _ locks: [UInt32]
    ) {
        for (index, lock) in locks.enumerated() { c.send(a, H.unlock(UInt32(1_000 + index), lock)) }
        _ = c.run()
        #expect((c.completions["1a"] ?? []).filter { $0.status == .unlocked }.count == locks.count)
    }

    /// A later recovery run sends again the bindings of every lock an earlier run rebuilt (a holder may not have had
    /// them when it started the run), a shard of the rebuilt locks per slice: a walk of them all and a sort of the
    /// list in one step was a long step, at every later recovery, of a node that had rebuilt a million locks. The
    /// holder's locks stay its own through both recoveries.
    @Test func laterRunsResendRebuiltBindingsInSlices() {
        var (c, a, locks) = Self.heldOnNodeFour(300)
        // Node 4 dies: nodes 1 to 3 rebuild a's locks; then node 3 dies, and a second run recovers.
        c.crash(4)
        c.installView()
        _ = c.run()
        c.crash(3)
        c.installView()
        _ = c.run()
        var service = c.nodes[2]!.service
        let rebuilt = service.mastering.rebuilt.count
        #expect(rebuilt > 0)
        // Node 2's part of the walk, one shard a slice at the smallest budget: never all of it at once.
        var work = RecoveryWork(phase: 1)
        var slices = 0
        while true {
            var budget = 1
            slices += 1
            if service.reboundBindings(&work, budget: &budget) { break }
            if slices == 1 { #expect((work.bindings[1]?.count ?? 0) < rebuilt) }
        }
        #expect(slices == ShardedDictionary<RebuiltCopy, LockID>.shardCount)
        #expect(work.bindings[1]?.count == rebuilt)
        #expect(Set(work.bindings[1]?.map(\.copy) ?? []).count == rebuilt)
        Self.expectEveryLockUnlocks(&c, a, locks)
    }

    /// The ids of rebuilt locks are kept until a later recovery completed (every member of it has had them then),
    /// not for as long as the locks live: after a second recovery, the first one's are forgotten and no third
    /// recovery sends them again; the holder's locks stay its own throughout.
    @Test func rebuiltLocksAreForgottenOnceALaterRecoveryCompleted() {
        var (c, a, locks) = Self.heldOnNodeFour(60)
        func rebuilt() -> Int { c.nodes.values.map(\.service.mastering.rebuilt.count).reduce(0, +) }
        func bindingsCarried(_ body: (inout ClusterHarness) -> Void) -> Int {
            var count = 0
            body(&c)
            _ = c.run { _, message in
                if case .recoverBindings(_, let list) = message { count += list.count }
                return false
            }
            return count
        }
        // Node 4 dies: its resources are rebuilt on nodes 1 to 3, and a's locks bound to them (those rebuilt on
        // node 1 itself without a message).
        #expect(
            bindingsCarried {
                $0.crash(4); $0.installView()
            } > 0)
        #expect(rebuilt() == locks.count)
        // A node joins: node 1 completed the first recovery (its phase-0 report says so), so the next one sends it
        // none of those ids again, and forgets them when it completes.
        #expect(
            bindingsCarried {
                $0.start(5); $0.installView()
            } == 0)
        #expect(rebuilt() == 0)
        Self.expectEveryLockUnlocks(&c, a, locks)
    }

    /// The other side: the new masters complete a recovery while the holder, node 1, has not had their answers
    /// (they are held on the way), and a new view aborts node 1's run, which drops them. The next recovery sends
    /// node 1 the ids again (its phase-0 report says it did not complete the first), and its locks stay its own.
    @Test func aHolderThatMissedTheIdsGetsThemInTheNextRecovery() {
        var (c, a, locks) = Self.heldOnNodeFour(60)
        c.crash(4)
        c.installView()
        c.hold(ClusterHarness.Link(from: 2, to: 1), ClusterHarness.Link(from: 3, to: 1)) {
            if case .recoverBindings = $0 { true } else { false }
        }
        _ = c.run()
        #expect(c.nodes[2]!.service.isRunningRecovery == false)
        #expect(c.nodes[3]!.service.isRunningRecovery == false)
        #expect(c.nodes[1]!.service.isRunningRecovery)
        c.start(5)
        c.installView()
        c.paused = []
        _ = c.run()
        #expect(c.nodes.values.allSatisfy { !$0.service.isRunningRecovery })
        Self.expectEveryLockUnlocks(&c, a, locks)
    }

    /// Node 4 dies and node 2 restarts (a new life): node 1 completes no recovery while the new masters complete
    /// two (each time it misses a last barrier, and the next view aborts its run). Still counting node 2 as departed
    /// (its earlier life left), node 1 resends the locks node 2 masters in the next run, to that run's directory
    /// nodes: node 2 still knows their ids (node 1's phase-0 reports said it completed neither recovery) and binds
    /// them again, so they stay node 1's. Seed 249815 of the recovery tests: the master forgot the ids once it had
    /// completed the second recovery, and the holder's locks were lost.
    @Test func aHolderThatCompletesNoRecoveryKeepsItsLocksThroughThree() {
        var (c, a, locks) = Self.heldOnNodeFour(60)
        c.crash(4)
        c.crash(2)
        c.start(2)
        /// The view's run completes everywhere but on node 1, which misses `sender`'s last barrier.
        func installViewWithoutNodeOne(_ c: inout ClusterHarness, missing sender: UInt32) {
            c.installView()
            let run = c.nodes[sender]!.service.mastering.recovery!.view
            c.hold(ClusterHarness.Link(from: sender, to: 1)) {
                if case .recoveryDone(run, 2, _, _, _) = $0 { true } else { false }
            }
            _ = c.run()
            #expect(c.nodes.filter { $0.key != 1 }.values.allSatisfy { !$0.service.isRunningRecovery })
            #expect(c.nodes[1]!.service.isRunningRecovery)
        }
        installViewWithoutNodeOne(&c, missing: 3)
        c.paused = []
        c.start(5)
        installViewWithoutNodeOne(&c, missing: 3)
        c.paused = []
        c.start(6)
        c.installView()
        _ = c.run()
        #expect(c.nodes.values.allSatisfy { !$0.service.isRunningRecovery })
        Self.expectEveryLockUnlocks(&c, a, locks)
    }

    /// `master` masters `names` (its client "m" asks first, then unlocks), and node 1's client "a", returned, holds
    /// EX on each of them.
    static func heldRemotely(_ c: inout ClusterHarness, _ names: [String], master: UInt32) -> (
        node: UInt32, id: ConnectionID
    ) {
        let m = c.client(master, "m")
        for (index, name) in names.enumerated() { c.send(m, H.lock(UInt32(10 + index), name, .nl)) }
        _ = c.run()
        for index in names.indices { c.send(m, H.unlock(UInt32(40 + index), UInt32(index + 1))) }
        _ = c.run()
        let a = c.client(1, "a")
        for (index, name) in names.enumerated() { c.send(a, H.lock(UInt32(10 + index), name, .ex)) }
        _ = c.run()
        #expect(c.completions["1a"]?.filter { $0.status == .granted }.count == names.count)
        return a
    }

    /// Node 3 masters a resource whose directory node is node 2 and issues fencing tokens on it, node 1 issues
    /// tokens of its own on another resource of the lockspace, and the resource, idle, is dropped by node 3 (its
    /// REMOVE carries the last token to the directory). Returns the cluster, the resource, node 1's client and
    /// node 3's last token.
    static func tokensThenDropped() -> (
        c: ClusterHarness, name: String, next: (node: UInt32, id: ConnectionID), last: UInt64
    ) {
        var c = ClusterHarness(nodes: 3, tossDelay: 1_000)
        let name = ClusterHarness.name(directedTo: 2, of: 3)
        let first = c.client(3, "f")
        let next = c.client(1, "n")
        c.send(next, H.lock(2, ClusterHarness.name(directedTo: 1, of: 3), .ex))
        _ = c.run()
        for tag in UInt32(2)...6 {
            c.send(first, H.lock(tag * 2, name, .ex))
            _ = c.run()
            c.send(first, H.unlock(tag * 2 + 1, 1))
            _ = c.run()
        }
        let last = c.completions["3f"]!.compactMap { $0.fencingToken == 0 ? nil : $0.fencingToken }.max()!
        c.tick(by: 1_500)
        _ = c.run()
        c.tick(by: 1_500)
        _ = c.run()
        #expect(
            c.nodes[3]!.service.mastering.masters[DirectoryKey(lockspace: Array("ls".utf8), name: Array(name.utf8))]
                == nil)
        return (c, name, next, last)
    }

    /// A resource's fencing tokens keep growing when, idle, it is dropped by its master and mastered anew by
    /// another node: the REMOVE carries its last token to the directory, whose answer raises the new master's floor.
    @Test func fencingTokensKeepGrowingWhenAnIdleResourceMovesToAnotherMaster() {
        var (c, name, next, last) = Self.tokensThenDropped()
        c.send(next, H.lock(3, name, .ex))
        #expect(c.run() == ["1n: COMPLETION tag 3 lock 2 granted EX"])  // mastered by node 1 now
        #expect(c.completions["1n"]!.last!.fencingToken > last)
    }

    /// The same across a recovery run of the same view (a join of another lockspace): the run keeps the floor the
    /// REMOVE left with the directory, since a run within a view raises no floor above the view's tokens.
    @Test func fencingTokensKeepGrowingAcrossARunOfTheSameView() {
        var (c, name, next, last) = Self.tokensThenDropped()
        // Node 2 joins another lockspace: a run of the same view.
        let other = LockspaceGroupTests.bareClient(&c, 2, "o")
        c.nodes[2]!.send(other.id, .openLockspace(tag: 1, name: Array("other".utf8), valueBlockLength: 0, create: true))
        #expect(c.run() == ["2o: LOCKSPACE tag 1 id 0 created"])
        c.send(next, H.lock(3, name, .ex))
        #expect(c.run() == ["1n: COMPLETION tag 3 lock 2 granted EX"])
        #expect(c.completions["1n"]!.last!.fencingToken > last)
    }
}
