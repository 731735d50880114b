import Testing

@testable import DLMCore

/// Bulk work in slices (BulkWork.swift): an owner's exit, a purge and a forced release larger than one slice are
/// done a slice at a time, others are served between slices, and the work grows linearly with the locks.
@Suite struct BulkWorkTests {
    /// An exit of 25 locks in slices of 10: the first slice runs with the exit, the others with
    /// `continueBulkWork`; between slices another owner is served, and a lock the walk has not reached still
    /// blocks; the waiter on a resource released in the first slice is granted once the walk is over.
    @Test func anExitLargerThanASliceIsDoneInSlicesAndOthersAreServedBetween() {
        var h = Harness(config: EngineConfig(bulkSlice: 10))
        for i in 0..<25 { _ = h.lock("a\(i)", by: 1, on: "r\(i)", .ex) }
        // The owner's list is walked from its newest lock: r24 is released in the first slice, r0 in the third.
        #expect(h.lock("w", by: 2, on: "r24", .ex) == ["a24 bast EX"])
        #expect(h.exit(1) == [])
        var busy = h.engine.hasBulkWork
        #expect(busy)
        #expect(h.lock("x", by: 3, on: "elsewhere", .ex) == ["x granted EX token=1"])
        #expect(h.lock("y", by: 3, on: "r0", .pr, .noQueue) == ["y EAGAIN"])
        #expect(h.slice() == [])
        #expect(h.state("w")?.queue == .wait)
        var effects: [String] = []
        var slices = 2
        while h.engine.hasBulkWork {
            effects += h.slice()
            slices += 1
        }
        #expect(slices == 5)  // 25 locks, then 25 resources to grant from, 10 steps a slice
        #expect(effects == ["w granted EX VALNOTVALID token=2"])  // the EX holder died
        busy = h.engine.hasBulkWork
        #expect(!busy)
        #expect(h.engine.lockCount == 2 && h.engine.resourceCount == 2)
    }

    /// An owner's pending requests are dropped before the first slice: none is ever granted to the departed owner,
    /// and its queued conversion returns to its granted mode, so that an unlock between slices lets the waiter
    /// behind it through only after the walk.
    @Test func pendingRequestsOfAnExitingOwnerAreNeverGranted() {
        var h = Harness(config: EngineConfig(bulkSlice: 2))
        _ = h.lock("b", by: 2, on: "r", .ex)
        #expect(h.lock("p", by: 1, on: "r", .pr) == ["b bast PR"])
        for i in 0..<6 { _ = h.lock("a\(i)", by: 1, on: "s\(i)", .ex) }
        #expect(h.exit(1) == [])
        #expect(h.state("p") == nil)
        // The holder lets go between slices: the departed owner's request is gone, so nothing is granted.
        #expect(h.unlock("b") == ["b EUNLOCK"])
        h.engine.finishBulkWork(into: &effectsSink)
        #expect(h.engine.lockCount == 0)
    }

    /// An exit waiting behind another in the queue of bulk jobs keeps its owner's slot until its walk: here the
    /// exiting owner had only a pending request, which goes at once; the next owner to come must not get that
    /// slot while the job waits, or the job would walk the newcomer's list and release its lock (found by the
    /// random recovery traffic with slices of one lock: a survivor lost a granted lock after recovery).
    @Test func aQueuedExitDoesNotReleaseTheLocksOfTheNextOwner() {
        var h = Harness(config: EngineConfig(bulkSlice: 1))
        for i in 0..<3 { _ = h.lock("a\(i)", by: 1, on: "r\(i)", .ex) }
        _ = h.lock("b", by: 2, on: "q", .ex)
        #expect(h.lock("p", by: 3, on: "q", .ex) == ["b bast EX"])
        #expect(h.exit(1) == [])
        #expect(h.exit(3) == [])
        #expect(h.engine.bulkJobCount == 2)
        #expect(h.lock("n", by: 4, on: "s", .ex) == ["n granted EX token=1"])
        Self.expectTheNewOwnersLockSurvivesTheJobs(&h)
    }

    /// Runs the bulk jobs to their end: no one is told anything, and "n" (owner 4's EX on s) still holds it.
    static func expectTheNewOwnersLockSurvivesTheJobs(_ h: inout Harness) {
        var effects: [String] = []
        while h.engine.hasBulkWork { effects += h.slice() }
        #expect(effects == [])
        #expect(h.state("n")?.queue == .grant)
        #expect(h.lock("x", by: 5, on: "s", .ex, .noQueue) == ["x EAGAIN"])
    }

    /// An exit whose walk is over but whose grants take another slice gave its owner's slot back at the end of the
    /// walk; a new owner that took the slot and exited too (its only lock a pending request, gone at once) waits
    /// behind it. The first job's next slice must not give the slot back again: a third owner would get it, and
    /// the second job would walk and release that owner's lock (found by the random recovery traffic, seed 62729:
    /// a survivor's lock vanished on its master after a recovery).
    @Test func anExitFinishingItsGrantsDoesNotGiveBackASlotTakenSince() {
        var h = Harness(config: EngineConfig(bulkSlice: 3))
        _ = h.lock("b", by: 2, on: "q", .ex)
        for i in 0..<3 { _ = h.lock("a\(i)", by: 1, on: "r\(i)", .ex) }
        #expect(h.exit(1) == [])  // the walk, in the first slice: its grants need another
        #expect(h.engine.bulkJobCount == 1)
        #expect(h.lock("p", by: 3, on: "q", .ex) == ["b bast EX"])  // owner 3 takes owner 1's slot
        #expect(h.exit(3) == [])
        #expect(h.engine.bulkJobCount == 2)
        #expect(h.slice() == [])  // the first job's grants
        #expect(h.engine.bulkJobCount == 1)
        #expect(h.lock("n", by: 4, on: "s", .ex) == ["n granted EX token=2"])
        Self.expectTheNewOwnersLockSurvivesTheJobs(&h)
    }

    /// Within a resource the outcome is that of an exit done at once: a waiter blocked by two locks of the exiting
    /// owner is granted once both are gone, in the mode it asked (not an alternate one), and a PW holder's value
    /// block is invalid when it reads it.
    @Test func aResourceGrantsOnlyOnceTheWalkIsOver() {
        var h = Harness(config: EngineConfig(bulkSlice: 1))
        _ = h.lock("cr", by: 1, on: "r", .cr)
        _ = h.lock("pw", by: 1, on: "r", .pw)
        #expect(h.lock("w", by: 2, on: "r", .ex, [.alternatePR, .valueBlock]) == ["cr bast EX", "pw bast EX"])
        #expect(h.exit(1) == [])
        #expect(h.slice() == [])
        #expect(h.slice() == ["w granted EX VALNOTVALID lvb=<> token=2"])
    }

    /// A forced release of a lockspace bigger than a slice: the lockspace is gone at once for requests, its name
    /// is busy until the last slice, each lock's owner is told (EUNLOCK), and the requester learns how many locks
    /// were dropped (`finished`).
    @Test func aForcedReleaseIsDoneInSlicesAndTheNameIsBusyMeanwhile() throws {
        var h = Harness(config: EngineConfig(bulkSlice: 4))
        let other = try h.engine.createLockspace(name: Array("other".utf8))
        for i in 0..<20 { _ = h.lock("a\(i)", by: 1, on: "r\(i)", .ex) }
        _ = h.lock("p", by: 1, on: "r0", .ex, parent: "a0")
        _ = h.lock("o", by: 2, on: "kept", .ex, in: other)
        var effects: [Effect] = []
        #expect(try !h.engine.releaseLockspace(h.ls, force: true, requester: OwnerID(9), context: 77, into: &effects))
        #expect(h.engine.lockspaceInfo(h.ls) == nil)
        #expect(h.engine.lockspace(named: Array("ls".utf8)) == nil)
        let busy = #expect(throws: DLMError.self) { try h.engine.createLockspace(name: Array("ls".utf8)) }
        #expect(busy?.status == .busy)
        var slices = 1
        while h.engine.hasBulkWork {
            h.engine.continueBulkWork(into: &effects)
            slices += 1
        }
        #expect(slices > 3)
        #expect(effects.last == .finished(Finished(owner: OwnerID(9), context: 77, count: 21)))
        let told = effects.dropLast().compactMap { effect -> Completion? in
            if case .completion(let completion) = effect { return completion }
            return nil
        }
        #expect(told.count == 21 && effects.count == 22)
        #expect(told.allSatisfy { $0.owner == OwnerID(1) && $0.status == .unlocked && $0.mode == nil })
        #expect(Set(told.map(\.lock)).count == 21)
        #expect(h.engine.lockCount == 1 && h.engine.resourceCount == 1)
        _ = try h.engine.createLockspace(name: Array("ls".utf8))
    }

    /// A purge in slices ends with `finished` and the count, sub-locks included; its sub-lock's owner is told.
    @Test func aPurgeIsDoneInSlicesAndEndsWithTheCount() throws {
        var h = Harness(config: EngineConfig(bulkSlice: 3))
        h.engine.setProcess(pid: 100, of: OwnerID(1))
        for i in 0..<10 { _ = h.lock("a\(i)", by: 1, on: "r\(i)", .ex, .persistent) }
        #expect(h.exit(1) == [])
        h.engine.finishBulkWork(into: &effectsSink)
        _ = h.lock("adopted", by: 2, on: "r0", .ex, [.orphan])
        _ = h.lock("sub", by: 2, on: "s", .ex, parent: "adopted")
        _ = h.exit(2)  // the parent is orphaned again, its non-persistent sub-lock released
        h.engine.finishBulkWork(into: &effectsSink)
        var effects: [Effect] = []
        try h.engine.beginPurge(lockspace: h.ls, pid: 100, requester: OwnerID(5), context: 1, into: &effects)
        #expect(effects.isEmpty)
        h.engine.finishBulkWork(into: &effects)
        #expect(effects == [.finished(Finished(owner: OwnerID(5), context: 1, count: 9))])
        // The orphan adopted by owner 2 had its pid (0 once owner 2 left: it never said one) and stays.
        #expect(h.engine.lockCount == 1)
    }

    /// FORCEUNLOCK of a parent with more sub-locks than a slice: its sub-locks go a slice at a time, in the same
    /// order and with the same effects as at once, and the parent last; meanwhile the parent takes no new sub-lock
    /// and no other operation, and a sub-lock its owner unlocks in between is passed over.
    @Test func forceUnlockOfAParentWithManySubLocksIsDoneInSlices() throws {
        func tree(_ slice: Int) -> Harness {
            var h = Harness(config: EngineConfig(bulkSlice: slice))
            _ = h.lock("p", by: 1, on: "parent", .ex, .valueBlock)
            for i in 0..<30 { _ = h.lock("c\(i)", by: 1, on: "c\(i)", .ex, parent: "p") }
            for i in 0..<5 { _ = h.lock("g\(i)", by: 1, on: "g\(i)", .pr, parent: "c3") }
            _ = h.lock("w", by: 2, on: "c7", .ex, parent: nil)
            return h
        }
        var atOnce = tree(10_000)
        let expected = atOnce.unlock("p", .forceUnlock)
        #expect(expected.count == 36 && expected.last == "p EUNLOCK")

        var h = tree(8)
        var seen = h.unlock("p", .forceUnlock)
        #expect(!seen.contains("p EUNLOCK") && h.engine.hasBulkWork)
        #expect(h.lock("late", by: 1, on: "late", .ex, parent: "p") == ["error EBUSY"])
        #expect(h.convert("p", to: .pr) == ["error EBUSY"])
        // The owner unlocks a sub-lock the walk has not reached: it is passed over.
        let own = h.unlock("c29")
        #expect(own == ["c29 EUNLOCK"])
        while h.engine.hasBulkWork { seen += h.slice() }
        seen += own
        #expect(Array(seen.dropLast()) == expected.filter { $0 != "c29 EUNLOCK" })
        #expect(seen.last == "c29 EUNLOCK" && seen.dropLast().last == "p EUNLOCK")
        #expect(h.state("p") == nil && h.engine.lockCount == 1)
    }

    /// 20,000 orphans of one resource adopted one by one (as clients do after dlmd restarts): an adopted lock
    /// moves to the end of the grant queue, so each adoption finds an orphan at once. Counted, not timed.
    @Test func adoptingManyOrphansOfOneResourceIsLinear() throws {
        var engine = LockEngine()
        let ls = try engine.createLockspace(name: Array("ls".utf8))
        var effects: [Effect] = []
        let n = 20_000
        for _ in 0..<n {
            _ = try engine.lock(
                LockRequest(
                    lockspace: ls, owner: OwnerID(1), name: Array("shared".utf8), mode: .pr, flags: .persistent),
                into: &effects)
        }
        engine.ownerExited(OwnerID(1), into: &effects)
        engine.finishBulkWork(into: &effects)
        for owner in 2...UInt64(n + 1) {
            _ = try engine.lock(
                LockRequest(
                    lockspace: ls, owner: OwnerID(owner), name: Array("shared".utf8), mode: .pr, flags: .orphan),
                into: &effects)
        }
        #expect(engine.lockCount == n)
        #expect(engine.probe.adoptionSteps <= 2 * n, "\(engine.probe.adoptionSteps) steps")
    }

    /// Timeouts that come together are given up a slice a tick, oldest deadline first: 5,000 at once in three ticks.
    @Test func timeoutsThatComeTogetherAreGivenUpASliceATick() throws {
        var h = Harness(config: EngineConfig(timeoutSlice: 2048))
        _ = h.lock("holder", by: 1, on: "r", .ex)
        for i in 0..<5000 { _ = h.lock("w\(i)", by: UInt64(2 + i), on: "r", .ex, .timeout, timeout: second) }
        let ticks = [h.tick(2 * second), h.tick(2 * second), h.tick(2 * second), h.tick(2 * second)]
        #expect(ticks.map(\.count) == [2048, 2048, 904, 0])
        #expect(ticks[0].first == "w0 ETIMEDOUT" && ticks[2].last == "w4999 ETIMEDOUT")
    }

    /// The guard against quadratic paths: an exit of 200,000 locks (a quarter persistent, a quarter pending),
    /// a purge of the orphans it left and a forced release cost a few steps per lock, counted by the engine's
    /// probe, not timed. The old exit (a `contains` over the touched resources) took 200,000² / 2.
    @Test func bulkWorkIsLinearInTheLocks() throws {
        let n = 200_000
        var engine = LockEngine(config: EngineConfig(deadlockWait: 0))
        let ls = try engine.createLockspace(name: Array("ls".utf8))
        var effects: [Effect] = []
        engine.setProcess(pid: 7, of: OwnerID(1))
        for i in 0..<n {
            let flags: LockFlags = i % 4 == 0 ? .persistent : []
            _ = try engine.lock(
                LockRequest(lockspace: ls, owner: OwnerID(1), name: Array("r\(i)".utf8), mode: .ex, flags: flags),
                into: &effects)
        }
        for i in stride(from: 1, to: n, by: 4) {
            _ = try engine.lock(
                LockRequest(lockspace: ls, owner: OwnerID(2), name: Array("r\(i)".utf8), mode: .pr), into: &effects)
        }
        effects.removeAll()
        var before = engine.probe.bulkSteps
        engine.ownerExited(OwnerID(1), into: &effects)
        engine.finishBulkWork(into: &effects)
        let grants = effects.filter { if case .completion(let c) = $0 { c.status == .granted } else { false } }
        #expect(grants.count == n / 4)
        #expect(engine.lockCount == n / 2)  // the orphans and owner 2's locks
        #expect(engine.probe.bulkSteps - before <= 3 * n, "\(engine.probe.bulkSteps - before) steps")

        before = engine.probe.bulkSteps
        #expect(try engine.purgeOrphans(lockspace: ls, pid: 7, into: &effects) == n / 4)
        #expect(engine.probe.bulkSteps - before <= 3 * n / 4 + 1, "\(engine.probe.bulkSteps - before) steps")

        before = engine.probe.bulkSteps
        try engine.releaseLockspace(ls, force: true)
        #expect(engine.lockCount == 0 && engine.resourceCount == 0)
        #expect(engine.probe.bulkSteps - before <= 2 * n, "\(engine.probe.bulkSteps - before) steps")
    }
}

/// Effects a test does not look at.
nonisolated(unsafe) var effectsSink: [Effect] = []
