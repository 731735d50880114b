import Testing

@testable import DLMCore

/// Parent locks (OpenVMS sub-locks): a request naming a parent lock names a resource in the namespace of the
/// parent lock's resource.
@Suite struct ParentLockTests {
    @Test func sameChildNameUnderTwoParentResourcesIsTwoResources() {
        var h = Harness()
        _ = h.lock("p1", by: 1, on: "p1", .pr)
        _ = h.lock("p2", by: 1, on: "p2", .pr)
        #expect(h.lock("c1", by: 1, on: "c", .ex, parent: "p1") == ["c1 granted EX token=1"])
        #expect(h.lock("c2", by: 1, on: "c", .ex, parent: "p2") == ["c2 granted EX token=1"])
        // and a top-level "c" is a third
        #expect(h.lock("c3", by: 2, on: "c", .ex) == ["c3 granted EX token=1"])
        #expect(h.engine.resourceCount == 5)
        #expect(h.engine.snapshotResource(h.ls, path: [bytes("p1"), bytes("c")])?.locks.map(\.id) == [h.id("c1")])
        #expect(h.engine.snapshotResource(h.ls, path: [bytes("p2"), bytes("c")])?.locks.map(\.id) == [h.id("c2")])
    }

    @Test func sameChildNameUnderTwoLocksOnOneParentResourceIsOneResource() {
        var h = Harness()
        _ = h.lock("pa", by: 1, on: "p", .pr)
        _ = h.lock("pb", by: 2, on: "p", .pr)
        #expect(h.lock("ca", by: 1, on: "c", .ex, parent: "pa") == ["ca granted EX token=1"])
        // owner 2's child "c" under its own lock on "p" is the same resource: queued behind owner 1's EX
        #expect(h.lock("cb", by: 2, on: "c", .ex, parent: "pb") == ["ca bast EX"])
        #expect(h.engine.resourceCount == 2)
        #expect(h.unlock("ca") == ["ca EUNLOCK", "cb granted EX token=2"])
    }

    @Test func parentMustBeGranted() {
        var h = Harness()
        _ = h.lock("x", by: 1, on: "p", .ex)
        _ = h.lock("p", by: 2, on: "p", .ex)
        #expect(h.state("p")?.queue == .wait)
        #expect(h.lock("c", by: 2, on: "c", .ex, parent: "p") == ["error EINVAL"])
    }

    @Test func aConvertingParentIsGranted() {
        var h = Harness()
        _ = h.lock("x", by: 1, on: "p", .pr)
        _ = h.lock("p", by: 2, on: "p", .pr)
        _ = h.convert("p", to: .ex)
        #expect(h.lock("c", by: 2, on: "c", .ex, parent: "p") == ["c granted EX token=1"])
    }

    @Test func parentMustBeOwnedByTheRequester() {
        var h = Harness()
        _ = h.lock("p", by: 1, on: "p", .pr)
        #expect(h.lock("c", by: 2, on: "c", .ex, parent: "p") == ["error ENOENT"])
    }

    @Test func parentMustBeInTheSameLockspace() throws {
        var h = Harness()
        let other = try h.engine.createLockspace(name: bytes("other"))
        _ = h.lock("p", by: 1, on: "p", .pr)
        #expect(h.lock("c", by: 1, on: "c", .ex, parent: "p", in: other) == ["error EINVAL"])
    }

    @Test func unlockOfAParentWithChildrenIsEBUSY() {
        var h = Harness()
        _ = h.lock("p", by: 1, on: "p", .ex)
        _ = h.lock("c", by: 1, on: "c", .ex, parent: "p")
        #expect(h.unlock("p") == ["error EBUSY"])
        #expect(h.unlock("c") == ["c EUNLOCK"])
        #expect(h.unlock("p") == ["p EUNLOCK"])
        #expect(h.engine.resourceCount == 0)
    }

    @Test func aWaitingChildCountsAsAChild() {
        var h = Harness()
        _ = h.lock("pa", by: 1, on: "p", .pr)
        _ = h.lock("pb", by: 2, on: "p", .pr)
        _ = h.lock("ca", by: 1, on: "c", .ex, parent: "pa")
        _ = h.lock("cb", by: 2, on: "c", .ex, parent: "pb")
        #expect(h.unlock("pb") == ["error EBUSY"])
    }

    /// FORCEUNLOCK of a parent unlocks its children first, deepest first, each with EUNLOCK, and what each
    /// release lets through is granted.
    @Test func forceUnlockUnlocksTheChildrenToo() {
        var h = Harness()
        _ = h.lock("p", by: 1, on: "p", .pr)
        _ = h.lock("c", by: 1, on: "c", .ex, parent: "p")
        _ = h.lock("g", by: 1, on: "g", .ex, parent: "c")
        _ = h.lock("q", by: 2, on: "p", .pr)
        #expect(h.lock("d", by: 2, on: "c", .ex, parent: "q") == ["c bast EX"])
        #expect(h.unlock("p", .forceUnlock) == ["g EUNLOCK", "c EUNLOCK", "d granted EX token=2", "p EUNLOCK"])
        #expect(h.state("c") == nil && h.state("g") == nil && h.state("p") == nil)
        // "p/c/g" is gone, "p" (owner 2's PR) and "p/c" (owner 2's EX) remain
        #expect(h.engine.resourceCount == 2)
        #expect(h.engine.lockCount == 2)
    }

    /// A sub-lock waiting behind its siblings is not granted while the FORCEUNLOCK of their parent releases them
    /// (it went out granted just before its own EUNLOCK: on another node, the parent's EUNLOCK came first, then
    /// that grant, and another owner took the resource while its owner still believed it held EX). At once and in
    /// slices alike; another parent's sub-lock is granted when they are gone.
    @Test func forceUnlockNeverGrantsASubLockOfTheParentItReleases() {
        for slice in [10_000, 1] {
            var h = Harness(config: EngineConfig(bulkSlice: slice))
            _ = h.lock("p", by: 1, on: "p", .pw)
            _ = h.lock("q", by: 2, on: "p", .nl)
            _ = h.lock("cw", by: 1, on: "c", .cw, parent: "p")
            _ = h.lock("cr", by: 1, on: "c", .cr, parent: "p")
            #expect(h.lock("ex", by: 1, on: "c", .ex, parent: "p") == ["cw bast EX", "cr bast EX"])
            #expect(h.lock("other", by: 2, on: "c", .ex, parent: "q") == [])
            var seen = h.unlock("p", .forceUnlock)
            while h.engine.hasBulkWork { seen += h.slice() }
            #expect(
                seen == ["cw EUNLOCK", "cr EUNLOCK", "ex EUNLOCK", "other granted EX token=1", "p EUNLOCK"],
                "bulk slice \(slice)")
        }
    }

    @Test func forceUnlockOfAParentUnlocksAWaitingChild() {
        var h = Harness()
        _ = h.lock("pa", by: 1, on: "p", .pr)
        _ = h.lock("pb", by: 2, on: "p", .pr)
        _ = h.lock("ca", by: 1, on: "c", .ex, parent: "pa")
        _ = h.lock("cb", by: 2, on: "c", .ex, parent: "pb")
        #expect(h.unlock("pb", .forceUnlock) == ["cb EUNLOCK", "pb EUNLOCK"])
    }

    @Test func ownerExitReleasesChildrenBeforeParents() {
        var h = Harness()
        _ = h.lock("p", by: 1, on: "p", .pr)
        _ = h.lock("c", by: 1, on: "c", .ex, parent: "p")
        _ = h.lock("q", by: 2, on: "p", .pr)
        _ = h.lock("d", by: 2, on: "c", .ex, parent: "q")
        // (owner 1 held EX on "p/c": its value block is now invalid)
        #expect(h.exit(1) == ["d granted EX VALNOTVALID token=2"])
        #expect(h.engine.lockCount == 2)
    }

    @Test func persistentChildIsOrphanedOnlyWithItsParent() {
        var h = Harness()
        _ = h.lock("p", by: 1, on: "p", .pr, .persistent)
        _ = h.lock("c", by: 1, on: "c", .ex, .persistent, parent: "p")
        _ = h.lock("t", by: 1, on: "t", .ex, parent: "p")
        _ = h.lock("q", by: 1, on: "q", .pr)
        _ = h.lock("d", by: 1, on: "d", .ex, .persistent, parent: "q")
        _ = h.exit(1)
        // p and its persistent child are orphans; the non-persistent child is released; q is not persistent,
        // so its persistent child goes with it
        #expect(h.state("p")?.owner == nil && h.state("p")?.grantedMode == .pr)
        #expect(h.state("c")?.owner == nil && h.state("c")?.grantedMode == .ex)
        #expect(h.state("t") == nil && h.state("q") == nil && h.state("d") == nil)
        #expect(h.engine.lockCount == 2)
    }

    /// A parent adopted by another owner keeps its children as orphans: FORCEUNLOCK of it still finds them.
    @Test func forceUnlockOfAnAdoptedParentTakesItsOrphanedChildren() {
        var h = Harness()
        _ = h.lock("p", by: 1, on: "p", .pr, .persistent)
        _ = h.lock("c", by: 1, on: "c", .ex, .persistent, parent: "p")
        _ = h.lock("other", by: 3, on: "o", .ex)
        _ = h.exit(1)
        #expect(h.lock("a", by: 2, on: "p", .pr, .orphan) == ["a granted PR"])
        #expect(h.state("c")?.owner == nil)
        #expect(h.unlock("a") == ["error EBUSY"])
        // The orphaned child goes too, telling no one.
        #expect(h.unlock("a", .forceUnlock) == ["a EUNLOCK"])
        #expect(h.state("c") == nil && h.state("a") == nil)
        #expect(h.engine.lockCount == 1)
    }
}
