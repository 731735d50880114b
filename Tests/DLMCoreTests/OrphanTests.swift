import Testing

@testable import DLMCore

/// An owner's exit (`ownerExited`): its locks are released, except granted PERSISTENT ones, which become
/// orphans that ORPHAN adopts.
@Suite struct OrphanTests {
    @Test func ownerExitReleasesNonPersistentLocksAndOthersAreGranted() {
        var h = Harness()
        _ = h.lock("a", by: 1, on: "r", .ex)
        #expect(h.lock("b", by: 2, on: "r", .pr) == ["a bast PR"])
        // owner 1 goes away: no completion to it; owner 2 is granted (and, as owner 1 held EX, the value
        // block is invalid)
        #expect(h.exit(1) == ["b granted PR VALNOTVALID"])
        #expect(h.state("a") == nil)
        #expect(h.engine.lockCount == 1)
    }

    @Test func ownerExitDropsPendingRequestsAndConversions() {
        var h = Harness()
        _ = h.lock("x", by: 2, on: "r", .pr)
        _ = h.lock("a", by: 1, on: "r", .pr)
        _ = h.lock("w", by: 1, on: "s", .nl)
        _ = h.lock("y", by: 2, on: "s", .ex)
        _ = h.lock("z", by: 3, on: "r", .pr)
        _ = h.convert("a", to: .ex)
        _ = h.convert("w", to: .ex)
        _ = h.lock("c", by: 2, on: "r", .cr)
        // owner 1's pending conversion on r and its PR go; owner 2's CR is granted. On s, owner 1's NL -> EX
        // conversion and the NL go; nothing waits there
        #expect(h.exit(1) == ["c granted CR"])
        #expect(h.engine.lockCount == 4)
    }

    @Test func persistentGrantedLockBecomesAnOrphan() {
        var h = Harness()
        _ = h.lock("a", by: 1, on: "r", .ex, .persistent)
        #expect(h.lock("b", by: 2, on: "r", .pr) == ["a bast PR"])
        #expect(h.exit(1) == [])
        #expect(h.state("a")?.owner == nil)
        #expect(h.state("a")?.queue == .grant)
        #expect(h.state("a")?.grantedMode == .ex)
        #expect(h.state("b")?.queue == .wait)
        // an orphan is told nothing
        #expect(h.lock("c", by: 3, on: "r", .ex) == [])
    }

    /// While the node's store is full, a new persistent lock is refused with ENOSPC (it would be stored), and
    /// nothing else is: a lock that is not persistent, a conversion and an unlock of a persistent lock, and the
    /// adoption of an orphan (which stores nothing new). Once the store has room, persistent locks are taken again.
    @Test func aFullStoreRefusesNewPersistentLocksOnly() {
        var h = Harness()
        #expect(h.lock("a", by: 1, on: "r", .ex, .persistent) == ["a granted EX token=1"])
        #expect(h.lock("p", by: 1, on: "q", .pr, .persistent) == ["p granted PR"])
        #expect(h.exit(1) == [])
        h.engine.refusesNewPersistentLocks = true
        #expect(h.lock("b", by: 2, on: "s", .ex, .persistent) == ["error ENOSPC"])
        #expect(h.state("b") == nil)
        #expect(h.lock("c", by: 2, on: "s", .ex) == ["c granted EX token=1"])
        #expect(h.lock("d", by: 3, on: "r", .ex, .orphan) == ["d granted EX token=2"])
        #expect(h.convert("d", to: .pr) == ["d granted PR"])
        #expect(h.unlock("d") == ["d EUNLOCK"])
        #expect(h.engine.lockCount == 2)
        h.engine.refusesNewPersistentLocks = false
        #expect(h.lock("b", by: 2, on: "s", .pr, .persistent) == ["c bast PR"])
        #expect(h.state("b")?.queue == .wait)
    }

    @Test func persistentPendingRequestIsDropped() {
        var h = Harness()
        _ = h.lock("a", by: 2, on: "r", .ex)
        _ = h.lock("b", by: 1, on: "r", .ex, .persistent)
        #expect(h.exit(1) == [])
        #expect(h.state("b") == nil)
        #expect(h.engine.lockCount == 1)
    }

    @Test func persistentConvertingLockBecomesAnOrphanInItsGrantedMode() {
        var h = Harness()
        _ = h.lock("x", by: 2, on: "r", .pr)
        _ = h.lock("a", by: 1, on: "r", .pr, .persistent)
        _ = h.convert("a", to: .ex)
        #expect(h.exit(1) == [])
        #expect(h.state("a")?.owner == nil)
        #expect(h.state("a")?.queue == .grant)
        #expect(h.state("a")?.grantedMode == .pr)
        #expect(h.state("a")?.requestedMode == nil)
    }

    @Test func orphanAdoptsTheLockOfTheSameNameAndModeWithItsValueBlock() {
        var h = Harness()
        #expect(h.lock("a", by: 1, on: "r", .ex, .persistent) == ["a granted EX token=1"])
        #expect(h.convert("a", to: .ex, .valueBlock, value: bytes("v1")) == ["a granted EX seq=1 token=2"])
        _ = h.lock("b", by: 2, on: "r", .pr)
        #expect(h.exit(1) == [])
        let orphan = h.id("a")
        // owner 3 adopts: granted at once, with the value block and a new fencing token, and is told that it
        // blocks owner 2's PR
        #expect(
            h.lock("c", by: 3, on: "r", .ex, [.orphan, .valueBlock]) == [
                "c granted EX lvb=<v1> seq=1 token=3", "c bast PR",
            ])
        #expect(h.id("c") == orphan)
        #expect(h.state("c")?.owner == OwnerID(3))
        #expect(h.state("c")?.flags.contains(.persistent) == true)
        #expect(h.state("c")?.flags.contains(.orphan) == false)
        #expect(h.engine.lockCount == 2)
        // it is owner 3's lock now
        #expect(h.unlock("c") == ["c EUNLOCK seq=1", "b granted PR seq=1"])
    }

    @Test func adoptedLockIsOrphanedAgainWhenItsNewOwnerExits() {
        var h = Harness()
        _ = h.lock("a", by: 1, on: "r", .pr, .persistent)
        _ = h.exit(1)
        #expect(h.lock("c", by: 3, on: "r", .pr, .orphan) == ["c granted PR"])
        _ = h.exit(3)
        #expect(h.state("c")?.owner == nil)
        #expect(h.lock("d", by: 4, on: "r", .pr, .orphan) == ["d granted PR"])
    }

    @Test func orphanOfAnotherModeIsEAGAIN() {
        var h = Harness()
        _ = h.lock("a", by: 1, on: "r", .pr, .persistent)
        _ = h.exit(1)
        #expect(h.lock("c", by: 3, on: "r", .ex, .orphan) == ["error EAGAIN"])
        #expect(h.lock("c", by: 3, on: "r", .cr, .orphan) == ["error EAGAIN"])
        #expect(h.state("a")?.owner == nil)
        #expect(h.engine.lockCount == 1)
    }

    @Test func orphanWhereThereIsNoneIsENOENT() {
        var h = Harness()
        // no resource at all
        #expect(h.lock("c", by: 3, on: "r", .pr, .orphan) == ["error ENOENT"])
        #expect(h.engine.resourceCount == 0)
        // a resource with a live lock of that mode, but no orphan
        _ = h.lock("a", by: 1, on: "r", .pr, .persistent)
        #expect(h.lock("c", by: 3, on: "r", .pr, .orphan) == ["error ENOENT"])
        // the orphan was adopted already
        _ = h.exit(1)
        #expect(h.lock("c", by: 3, on: "r", .pr, .orphan) == ["c granted PR"])
        #expect(h.lock("d", by: 4, on: "r", .pr, .orphan) == ["error ENOENT"])
    }

    @Test func orphanKeepsItsResourceAndValueBlock() {
        var h = Harness()
        _ = h.lock("a", by: 1, on: "r", .pw, .persistent)
        _ = h.convert("a", to: .pw, .valueBlock, value: bytes("kept"))
        _ = h.exit(1)
        #expect(h.engine.resourceCount == 1)
        // a PW orphan is still a holder: the value block stays valid
        #expect(h.lock("b", by: 2, on: "r", .nl, .valueBlock) == ["b granted NL lvb=<kept> seq=1"])
    }

    @Test func unknownOwnerExitingChangesNothing() {
        var h = Harness()
        _ = h.lock("a", by: 1, on: "r", .ex)
        #expect(h.exit(7) == [])
        #expect(h.engine.lockCount == 1)
    }

    @Test func ownerThatExitedMayComeBackAsANewOwner() {
        var h = Harness()
        _ = h.lock("a", by: 1, on: "r", .ex)
        _ = h.exit(1)
        #expect(h.lock("b", by: 1, on: "r", .ex) == ["b granted EX token=2"])
        #expect(h.unlock("b") == ["b EUNLOCK"])
    }

    // MARK: Purge (dlm_ls_purge)

    func purge(_ h: inout Harness, pid: UInt32, in lockspace: LockspaceID? = nil) -> (Int, [String]) {
        var effects: [Effect] = []
        do {
            let count = try h.engine.purgeOrphans(lockspace: lockspace ?? h.ls, pid: pid, into: &effects)
            return (count, h.render(effects))
        } catch {
            return (-1, ["error \(error.status.name)"])
        }
    }

    @Test func anOrphanKeepsThePidOfItsOwnerAndAnAdopterGivesItsOwn() {
        var h = Harness()
        h.engine.setProcess(pid: 101, of: OwnerID(1))
        h.engine.setProcess(pid: 303, of: OwnerID(3))
        _ = h.lock("a", by: 1, on: "r", .pr, .persistent)
        _ = h.lock("x", by: 2, on: "s", .pr, .persistent)
        #expect(h.state("a")?.pid == 101)
        #expect(h.state("x")?.pid == 0)  // owner 2 gave none
        _ = h.exit(1)
        _ = h.exit(2)
        #expect(h.state("a")?.owner == nil && h.state("a")?.pid == 101)
        #expect(h.state("x")?.pid == 0)
        #expect(h.lock("c", by: 3, on: "r", .pr, .orphan) == ["c granted PR"])
        #expect(h.state("c")?.pid == 303)
        _ = h.exit(3)
        #expect(h.state("c")?.owner == nil && h.state("c")?.pid == 303)
    }

    @Test func purgeRemovesTheOrphansOfThatPidOnly() {
        var h = Harness()
        let other = try! h.engine.createLockspace(name: bytes("other"))
        h.engine.setProcess(pid: 101, of: OwnerID(1))
        h.engine.setProcess(pid: 202, of: OwnerID(2))
        _ = h.lock("a1", by: 1, on: "r", .pr, .persistent)
        _ = h.lock("a2", by: 1, on: "s", .ex, .persistent)
        _ = h.lock("a3", by: 1, on: "r", .pr, .persistent, in: other)
        _ = h.lock("b1", by: 2, on: "r", .pr, .persistent)
        _ = h.lock("live", by: 1, on: "t", .pr)
        _ = h.exit(2)
        // owner 1 is alive: its locks are not orphans
        #expect(purge(&h, pid: 101) == (0, []))
        #expect(h.engine.lockCount == 5)
        _ = h.exit(1)
        _ = h.lock("w", by: 4, on: "s", .ex)
        #expect(h.state("w")?.queue == .wait)
        // a1 and a2 go (a2's release lets w through); b1, and a3 in another lockspace, stay
        #expect(purge(&h, pid: 101) == (2, ["w granted EX token=2"]))
        #expect(h.state("a1") == nil && h.state("a2") == nil)
        #expect(h.state("b1")?.owner == nil && h.state("a3")?.owner == nil)
        #expect(h.lock("e", by: 4, on: "r", .ex, .noQueue) == ["e EAGAIN"])
        // nothing left of pid 101 here; pid 0 (unknown) names none of these
        #expect(purge(&h, pid: 101) == (0, []))
        #expect(purge(&h, pid: 0) == (0, []))
        #expect(purge(&h, pid: 202) == (1, []))
        #expect(h.lock("f", by: 4, on: "r", .ex, .noQueue) == ["f granted EX token=1"])
        #expect(purge(&h, pid: 101, in: other) == (1, []))
        #expect(h.engine.lockCount == 2)
    }

    @Test func purgeTakesSubLocksWithTheOrphan() {
        var h = Harness()
        h.engine.setProcess(pid: 101, of: OwnerID(1))
        _ = h.lock("p", by: 1, on: "r", .pr, .persistent)
        _ = h.lock("c", by: 1, on: "sub", .pr, .persistent, parent: "p")
        _ = h.lock("g", by: 1, on: "deeper", .ex, .persistent, parent: "c")
        _ = h.exit(1)
        #expect(h.engine.lockCount == 3)
        // the orphans have no one to tell
        #expect(purge(&h, pid: 101) == (3, []))
        #expect(h.engine.lockCount == 0 && h.engine.resourceCount == 0)
    }

    @Test func purgeOfAnUnknownLockspaceIsENOENT() {
        var h = Harness()
        #expect(purge(&h, pid: 1, in: LockspaceID(rawValue: 9)) == (-1, ["error ENOENT"]))
    }

    @Test func aRestoredOrphanKeepsItsPid() throws {
        var h = Harness()
        h.engine.setProcess(pid: 101, of: OwnerID(1))
        _ = h.lock("a", by: 1, on: "r", .pw, .persistent)
        var entries: [JournalEntry] = []
        h.engine.drainJournal(into: &entries)
        guard case .put(let stored)? = entries.last else {
            Issue.record("no journal entry: \(entries)")
            return
        }
        #expect(stored.resource.locks.map(\.pid) == [101])
        var restarted = Harness()
        try restarted.engine.restoreStored(stored)
        var effects: [Effect] = []
        #expect(try restarted.engine.purgeOrphans(lockspace: restarted.ls, pid: 7, into: &effects) == 0)
        #expect(try restarted.engine.purgeOrphans(lockspace: restarted.ls, pid: 101, into: &effects) == 1)
        #expect(restarted.engine.lockCount == 0)
    }
}

/// An orphan is its user's: it keeps the uid of the owner that left it, only that user or root may adopt or purge
/// it, and it counts against that user's account (the per-user quota) until it goes.
@Suite struct OrphanUserTests {
    /// A purge by `user` of the orphans of `pid`: how many locks it removed and how many orphans it left.
    static func purge(_ h: inout Harness, pid: UInt32, by user: UInt32) -> (removed: Int, skipped: Int)? {
        let effects = h.engine.handle(
            .purge(lockspace: h.ls, pid: pid, user: user, requester: OwnerID(99), context: 7))
        for case .finished(let finished) in effects { return (finished.count, finished.skipped) }
        return nil
    }

    @Test func onlyItsUserOrRootMayAdoptOrPurgeAnOrphan() {
        var h = Harness()
        let account = h.engine.account(ofUser: 1000)
        h.engine.setProcess(pid: 101, uid: 1000, of: OwnerID(1))
        h.engine.setAccount(account, of: OwnerID(1))
        h.engine.setProcess(pid: 202, uid: 1001, of: OwnerID(2))
        h.engine.setProcess(pid: 303, uid: 1000, of: OwnerID(3))
        h.engine.setProcess(pid: 404, uid: 0, of: OwnerID(4))
        _ = h.lock("a", by: 1, on: "r", .pr, .persistent)
        _ = h.lock("b", by: 1, on: "s", .ex, .persistent)
        #expect(h.state("a")?.uid == 1000)
        #expect(h.engine.lockCount(ofAccount: account) == 2)
        _ = h.exit(1)
        // Orphans now, still uid 1000's, and still counted against its account.
        #expect(h.state("a")?.owner == nil && h.state("a")?.uid == 1000)
        #expect(h.engine.userID(of: h.ids["a"]!) == 1000)
        #expect(h.engine.lockCount(ofAccount: account) == 2)
        // Another user may neither adopt nor purge them; nothing changes.
        #expect(h.lock("x", by: 2, on: "r", .pr, .orphan) == ["error EPERM"])
        #expect(Self.purge(&h, pid: 101, by: 1001)! == (0, 2))
        #expect(h.engine.lockCount == 2 && h.engine.lockCount(ofAccount: account) == 2)
        // The same user adopts one (another process of it); root purges the other.
        #expect(h.lock("c", by: 3, on: "r", .pr, .orphan) == ["c granted PR"])
        #expect(h.state("c")?.uid == 1000 && h.state("c")?.pid == 303)
        #expect(h.engine.lockCount(ofAccount: account) == 1)
        #expect(Self.purge(&h, pid: 101, by: 0)! == (1, 0))
        #expect(h.engine.lockCount(ofAccount: account) == 0)
        // Root adopts another user's orphan, which then is root's.
        _ = h.exit(3)
        #expect(h.state("c")?.owner == nil && h.state("c")?.uid == 1000)
        #expect(h.lock("d", by: 4, on: "r", .pr, .orphan) == ["d granted PR"])
        #expect(h.state("d")?.uid == 0)
    }

    /// An orphan whose user is not known (restored from a store written before uids were kept, or left by an
    /// owner that gave none) may be adopted or purged by anyone allowed into its lockspace, as before.
    @Test func anOrphanOfAnUnknownUserIsAnyonesToTakeOver() {
        var h = Harness()
        h.engine.setProcess(pid: 101, of: OwnerID(1))
        h.engine.setProcess(pid: 202, uid: 1001, of: OwnerID(2))
        _ = h.lock("a", by: 1, on: "r", .pr, .persistent)
        _ = h.lock("b", by: 1, on: "s", .pr, .persistent)
        _ = h.exit(1)
        #expect(h.state("a")?.uid == LockEngine.unknownUser && h.engine.userID(of: h.ids["a"]!) == nil)
        #expect(h.lock("x", by: 2, on: "r", .pr, .orphan) == ["x granted PR"])
        #expect(Self.purge(&h, pid: 101, by: 1001)! == (1, 0))
    }

    /// A restored orphan (a store's record, or recovery's rebuild from a replica) keeps its uid and counts against
    /// its user's account on the node that holds it.
    @Test func aRestoredOrphanKeepsItsUserAndCounts() throws {
        var h = Harness()
        h.engine.setProcess(pid: 101, uid: 1000, of: OwnerID(1))
        _ = h.lock("a", by: 1, on: "r", .pw, .persistent)
        _ = h.exit(1)
        var entries: [JournalEntry] = []
        h.engine.drainJournal(into: &entries)
        guard case .put(let stored)? = entries.last else {
            Issue.record("no journal entry: \(entries)")
            return
        }
        #expect(stored.resource.locks.map(\.uid) == [1000])
        var restarted = Harness()
        _ = try restarted.engine.restoreStored(stored)
        let account = restarted.engine.account(ofUser: 1000)
        #expect(restarted.engine.lockCount(ofAccount: account) == 1)
        #expect(restarted.engine.userID(of: stored.resource.locks[0].id) == 1000)
    }
}
