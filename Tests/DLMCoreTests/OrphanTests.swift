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
}
