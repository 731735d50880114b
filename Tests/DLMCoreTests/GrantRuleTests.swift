import Testing

@testable import DLMCore

/// REFERENCE.md §2: the ten rules of "can this lock be granted now", the pass over the queues after a release,
/// and the blocking callbacks that follow.
@Suite struct GrantRuleTests {
    // MARK: The ten rules

    @Test func rule1ExpediteGrantsANewNLRequestAtOnce() {
        var h = Harness()
        #expect(h.lock("a", by: 1, on: "r", .ex) == ["a granted EX token=1"])
        // owner 2 asks PR -> queued behind owner 1's EX
        #expect(h.lock("b", by: 2, on: "r", .pr) == ["a bast PR"])
        // owner 3 asks NL -> compatible, but the wait queue is not empty (rule 9): queued
        #expect(h.lock("c", by: 3, on: "r", .nl) == [])
        #expect(h.state("c")?.queue == .wait)
        // owner 4 asks NL with EXPEDITE -> granted at once, ahead of both waiters
        #expect(h.lock("d", by: 4, on: "r", .nl, .expedite) == ["d granted NL"])
        #expect(h.state("b")?.queue == .wait)
        #expect(h.state("c")?.queue == .wait)
    }

    @Test func rule2ConflictWithTheGrantQueueQueues() {
        var h = Harness()
        #expect(h.lock("a", by: 1, on: "r1", .ex) == ["a granted EX token=1"])
        // owner 2 asks PR on r1 -> queued, owner 1 is told
        #expect(h.lock("b", by: 2, on: "r1", .pr) == ["a bast PR"])
        #expect(h.state("b")?.queue == .wait)
        // owner 1 unlocks -> grant to owner 2, no blocking callback
        #expect(h.unlock("a") == ["a EUNLOCK", "b granted PR"])
    }

    @Test func rule2ConflictWithTheGrantQueueQueuesAConversion() {
        var h = Harness()
        _ = h.lock("a", by: 1, on: "r", .pr)
        _ = h.lock("b", by: 2, on: "r", .pr)
        // owner 2 converts PR -> EX: owner 1's PR blocks it -> convert queue, owner 1 told
        #expect(h.convert("b", to: .ex) == ["a bast EX"])
        #expect(h.state("b")?.queue == .convert)
        #expect(h.state("b")?.grantedMode == .pr)
        #expect(h.unlock("a") == ["a EUNLOCK", "b granted EX token=1"])
    }

    /// A lock on the convert queue blocks with its granted mode, not with the mode it asks for: NOORDER (rule 7)
    /// lets a request past the queues, yet the granted PR of a converting lock still stops CW, while CR (which
    /// the requested EX would block) goes through.
    @Test func rule3ConflictWithTheGrantedModeOfAConvertingLockQueues() {
        var h = Harness()
        _ = h.lock("a", by: 1, on: "r", .pr)
        _ = h.lock("b", by: 2, on: "r", .cr)
        // owner 1 converts PR -> EX: owner 2's CR blocks it
        #expect(h.convert("a", to: .ex) == ["b bast EX"])
        // owner 3 asks CW with NOORDER -> queued: CW conflicts with owner 1's granted PR
        #expect(h.lock("c", by: 3, on: "r", .cw, .noOrder) == [])
        #expect(h.state("c")?.queue == .wait)
        // owner 4 asks CR with NOORDER -> granted: CR is compatible with the granted PR (and CR); it now blocks
        // owner 1's EX and is told so
        #expect(h.lock("d", by: 4, on: "r", .cr, .noOrder) == ["d granted CR", "d bast EX"])
    }

    /// A queued conversion that is not first on the convert queue is granted after recovery (rule 4), never in
    /// a normal pass (rule 8).
    @Test func rule4RecoveryGrantsAConversionRegardlessOfOrder() throws {
        var h = Harness()
        _ = h.lock("a", by: 1, on: "r", .pr)
        _ = h.lock("b", by: 2, on: "r", .nl)
        _ = h.lock("c", by: 3, on: "r", .nl)
        _ = h.lock("n", by: 4, on: "r", .nl)
        // owner 2 converts NL -> EX: blocked by owner 1's PR
        #expect(h.convert("b", to: .ex) == ["a bast EX"])
        // owner 3 converts NL -> CR with QUECVT: compatible, but queued behind owner 2 (rule 6)
        #expect(h.convert("c", to: .cr, .queueConversion) == [])
        // a pass over the queues (owner 4 unlocks) leaves owner 3 queued: not first (rule 8)
        #expect(h.unlock("n") == ["n EUNLOCK"])
        #expect(h.state("c")?.queue == .convert)
        // the resource is rebuilt on another engine; when recovery is done, owner 3 is granted out of order
        var recovered = try Harness(restoring: h)
        // (and, newly granted a CR that blocks the waiting EX, is told so)
        #expect(recovered.grantPendingAfterRecovery() == ["c granted CR", "c bast EX"])
        #expect(recovered.state("b")?.queue == .convert)
        // a second recovery pass has nothing more to grant, and owner 1 was already told EX
        #expect(recovered.grantPendingAfterRecovery() == [])
    }

    @Test func rule5AConversionRequestedNowOvertakesQueuedConversionsAndWaiters() {
        var h = Harness()
        _ = h.lock("a", by: 1, on: "r", .pr)
        _ = h.lock("b", by: 2, on: "r", .pr)
        // owner 2 converts PR -> EX -> convert queue
        #expect(h.convert("b", to: .ex) == ["a bast EX"])
        // owner 4 asks EX -> wait queue (owner 1 was already told EX)
        #expect(h.lock("d", by: 4, on: "r", .ex) == [])
        // owner 1 converts PR -> CR -> granted at once, ahead of both; then told again (a new grant) that EX waits
        #expect(h.convert("a", to: .cr) == ["a granted CR", "a bast EX"])
        #expect(h.state("b")?.queue == .convert)
        #expect(h.state("d")?.queue == .wait)
    }

    @Test func rule6QueuedConversionIsGrantedNowOnlyWithAnEmptyConvertQueue() {
        var h = Harness()
        _ = h.lock("a", by: 1, on: "r", .pr)
        _ = h.lock("b", by: 2, on: "r", .pr)
        _ = h.lock("c", by: 3, on: "r", .nl)
        _ = h.lock("e", by: 5, on: "r", .nl)
        // owner 3 converts NL -> CR with QUECVT while the convert queue is empty -> granted
        #expect(h.convert("c", to: .cr, .queueConversion) == ["c granted CR"])
        #expect(h.convert("b", to: .ex) == ["a bast EX", "c bast EX"])
        // owner 5 converts NL -> CR with QUECVT while owner 2's conversion is queued -> queued behind it
        #expect(h.convert("e", to: .cr, .queueConversion) == [])
        #expect(h.state("e")?.queue == .convert)
        // owner 3 converts CR -> NL -> CR without QUECVT -> granted at once (rule 5), and told again that EX waits
        #expect(h.convert("c", to: .nl) == ["c granted NL"])
        #expect(h.convert("c", to: .cr) == ["c granted CR", "c bast EX"])
    }

    @Test func rule7NoOrderGrantsANewRequestAheadOfTheQueue() {
        var h = Harness()
        _ = h.lock("a", by: 1, on: "r", .pr)
        #expect(h.lock("b", by: 2, on: "r", .ex) == ["a bast EX"])
        // owner 3 asks PR -> compatible, but queued behind owner 2 (rule 9)
        #expect(h.lock("c", by: 3, on: "r", .pr) == [])
        // owner 4 asks PR with NOORDER -> granted, and told that it blocks owner 2's EX
        #expect(h.lock("d", by: 4, on: "r", .pr, .noOrder) == ["d granted PR", "d bast EX"])
    }

    @Test func rule7NoOrderGrantsAQueuedRequestThatIsNotFirst() {
        var h = Harness()
        #expect(h.lock("a", by: 1, on: "r", .ex) == ["a granted EX token=1"])
        #expect(h.lock("b", by: 2, on: "r", .ex) == ["a bast EX"])
        #expect(h.lock("c", by: 3, on: "r", .pr, .noOrder) == [])
        #expect(h.lock("d", by: 4, on: "r", .pr) == [])
        // owner 1 converts EX -> PR: owner 3 (NOORDER) is granted behind the blocked head, owner 4 is not;
        // then both holders are told EX waits
        #expect(
            h.convert("a", to: .pr) == ["a granted PR", "c granted PR", "a bast EX", "c bast EX"])
        #expect(h.state("d")?.queue == .wait)
    }

    @Test func rule8AQueuedConversionMustBeFirstOnTheConvertQueue() {
        var h = Harness()
        _ = h.lock("a", by: 1, on: "r", .pr)
        _ = h.lock("b", by: 2, on: "r", .nl)
        _ = h.lock("c", by: 3, on: "r", .nl)
        _ = h.lock("n", by: 4, on: "r", .nl)
        #expect(h.convert("b", to: .ex) == ["a bast EX"])
        #expect(h.convert("c", to: .cr, .queueConversion) == [])
        // a pass: owner 3's CR is compatible but second -> stays
        #expect(h.unlock("n") == ["n EUNLOCK"])
        #expect(h.state("c")?.queue == .convert)
        // owner 2 cancels -> owner 3 is first -> granted
        #expect(h.cancel("b") == ["b ECANCEL NL", "c granted CR"])
    }

    @Test func rule9ANewRequestNeedsAnEmptyWaitQueue() {
        var h = Harness()
        _ = h.lock("a", by: 1, on: "r", .pr)
        #expect(h.lock("b", by: 2, on: "r", .ex) == ["a bast EX"])
        // owner 3 asks PR, compatible with the granted PR -> queued: the wait queue is not empty
        #expect(h.lock("c", by: 3, on: "r", .pr) == [])
        #expect(h.state("c")?.queue == .wait)
    }

    @Test func rule9ANewRequestNeedsAnEmptyConvertQueue() {
        var h = Harness()
        _ = h.lock("a", by: 1, on: "r", .pr)
        _ = h.lock("b", by: 2, on: "r", .pr)
        #expect(h.convert("b", to: .ex) == ["a bast EX"])
        // owner 3 asks CR, compatible with both granted PRs -> queued: the convert queue is not empty
        #expect(h.lock("c", by: 3, on: "r", .cr) == [])
        #expect(h.state("c")?.queue == .wait)
        // both queues empty again -> a new compatible request is granted at once
        #expect(h.cancel("b") == ["b ECANCEL PR", "c granted CR"])
        #expect(h.lock("d", by: 4, on: "r", .cr) == ["d granted CR"])
    }

    @Test func rule10AQueuedRequestMustBeFirstOnTheWaitQueue() {
        var h = Harness()
        _ = h.lock("n", by: 9, on: "r", .nl)
        _ = h.lock("a", by: 1, on: "r", .pr)
        #expect(h.lock("b", by: 2, on: "r", .ex) == ["a bast EX"])
        #expect(h.lock("c", by: 3, on: "r", .pr) == [])
        // a pass: owner 3's PR is compatible but behind owner 2 (FIFO) -> stays
        #expect(h.unlock("n") == ["n EUNLOCK"])
        #expect(h.state("c")?.queue == .wait)
        // owner 2 gives up -> owner 3 is first -> granted
        #expect(h.cancel("b") == ["b ECANCEL", "c granted PR"])
    }

    @Test func rule10AQueuedRequestNeedsAnEmptyConvertQueue() {
        var h = Harness()
        _ = h.lock("n", by: 9, on: "r", .nl)
        _ = h.lock("a", by: 1, on: "r", .pr)
        _ = h.lock("x", by: 2, on: "r", .pr)
        #expect(h.convert("a", to: .ex) == ["x bast EX"])
        #expect(h.lock("c", by: 3, on: "r", .cr) == [])
        // a pass: owner 3 is first on the wait queue and compatible, but a conversion is queued -> stays
        #expect(h.unlock("n") == ["n EUNLOCK"])
        #expect(h.state("c")?.queue == .wait)
        // owner 1 cancels its conversion -> owner 3 granted
        #expect(h.cancel("a") == ["a ECANCEL PR", "c granted CR"])
    }

    // MARK: The pass over the queues

    /// After every grant on the convert queue the pass starts again from its head: granting a later (NOORDER)
    /// conversion lets the first one through.
    @Test func grantingPendingConversionsRestartsFromTheHead() {
        var h = Harness()
        _ = h.lock("c", by: 3, on: "r", .pr)
        _ = h.lock("b", by: 2, on: "r", .nl)
        _ = h.lock("n", by: 4, on: "r", .nl)
        // owner 2 converts NL -> CW: owner 3's PR blocks it
        #expect(h.convert("b", to: .cw) == ["c bast CW"])
        // owner 3 converts PR -> CW behind it (QUECVT), NOORDER, and NODLCKWT so that the conversion deadlock
        // (its PR blocks owner 2's CW ahead) leaves it queued; it was already told CW. Queued out of order, a
        // pass follows at once: owner 2 (head) is blocked by owner 3's PR; owner 3 (NOORDER) is granted CW;
        // from the head again, owner 2's CW is now compatible -> granted
        #expect(
            h.convert("c", to: .cw, [.queueConversion, .noOrder, .noDeadlockWait]) == [
                "c granted CW", "b granted CW",
            ])
        #expect(h.unlock("n") == ["n EUNLOCK"])
    }

    @Test func aPassGrantsConversionsBeforeWaiters() {
        var h = Harness()
        _ = h.lock("a", by: 1, on: "r", .ex)
        _ = h.lock("b", by: 2, on: "r", .nl)
        #expect(h.convert("b", to: .pr) == ["a bast PR"])
        #expect(h.lock("c", by: 3, on: "r", .pr) == [])
        #expect(h.unlock("a") == ["a EUNLOCK", "b granted PR", "c granted PR"])
    }

    // MARK: Blocking callbacks

    @Test func blockingCallbacksGoToIncompatibleHoldersOnTheGrantQueueOnly() {
        var h = Harness()
        _ = h.lock("a", by: 1, on: "r", .pr)
        _ = h.lock("b", by: 2, on: "r", .cr)
        _ = h.lock("x", by: 3, on: "r", .nl)
        // owner 1 converts PR -> EX: only owner 2's CR blocks it (the NL is compatible)
        #expect(h.convert("a", to: .ex) == ["b bast EX"])
        // owner 4 asks PW: owner 1's granted PR blocks it too, but owner 1 is converting: no callback to it;
        // owner 2's CR does not block PW
        #expect(h.lock("d", by: 4, on: "r", .pw) == [])
    }

    @Test func holderThatWantsNoBlockingCallbacksGetsNone() {
        var h = Harness()
        _ = h.lock("a", by: 1, on: "r", .ex, basts: false)
        _ = h.lock("b", by: 2, on: "r", .pr)
        #expect(h.lock("c", by: 3, on: "r", .ex) == [])
        #expect(h.unlock("a") == ["a EUNLOCK", "b granted PR", "b bast EX"])
    }

    /// A holder is told the strongest blocked mode, never again for a mode no stronger than one it was told,
    /// and told afresh after a new grant.
    @Test func blockingCallbacksForTheStrongestModeWithoutDuplicates() {
        var h = Harness()
        #expect(h.lock("a", by: 1, on: "r", .pr) == ["a granted PR"])
        #expect(h.lock("b", by: 2, on: "r", .cw) == ["a bast CW"])
        // EX is stronger than CW -> told again
        #expect(h.lock("c", by: 3, on: "r", .ex) == ["a bast EX"])
        // PW is no stronger than EX -> not told
        #expect(h.lock("d", by: 4, on: "r", .pw) == [])
        // a pass (owner 4 cancels) with CW and EX still blocked: nothing new to tell owner 1
        #expect(h.cancel("d") == ["d ECANCEL"])
        // owner 1 converts PR -> CR: a new grant; owner 2's CW goes through; EX is still blocked, and both
        // holders are told
        #expect(h.convert("a", to: .cr) == ["a granted CR", "b granted CW", "a bast EX", "b bast EX"])
    }

    @Test func aPassTellsTheStrongestBlockedModeOnly() {
        var h = Harness()
        _ = h.lock("a", by: 1, on: "r", .pr)
        #expect(h.lock("b", by: 2, on: "r", .cw) == ["a bast CW"])
        #expect(h.lock("c", by: 3, on: "r", .pw) == ["a bast PW"])
        // owner 1 converts PR -> PR: a new grant; CW and PW are blocked -> told PW only
        #expect(h.convert("a", to: .pr) == ["a granted PR", "a bast PW"])
        // CW is no stronger than PW: a new CW waiter tells nobody
        #expect(h.lock("d", by: 4, on: "r", .cw) == [])
    }

    /// CW and PR are not comparable: a PW holder told PR is still told CW.
    @Test func blockingCallbacksForIncomparableModesAreBothSent() {
        var h = Harness()
        #expect(h.lock("a", by: 1, on: "r", .pw) == ["a granted PW token=1"])
        #expect(h.lock("b", by: 2, on: "r", .pr) == ["a bast PR"])
        #expect(h.lock("c", by: 3, on: "r", .cw) == ["a bast CW"])
        #expect(h.lock("d", by: 4, on: "r", .pr) == [])
        #expect(h.lock("e", by: 5, on: "r", .cw) == [])
    }
}
