import Testing

@testable import DLMCore

/// REFERENCE.md §5 (Linux `conversion_deadlock_detect`): a conversion whose granted mode blocks the requested
/// mode of a conversion ahead of it, or which blocks and is blocked by one behind it, is in a conversion
/// deadlock, found at once: EDEADLK, or with CONVDEADLK a demotion to NL (DEMOTED); with NODLCKWT it waits and
/// is told to give way.
@Suite struct ConversionDeadlockTests {
    @Test func conversionDeadlockIsEDEADLKAtOnce() {
        var h = Harness()
        _ = h.lock("a", by: 1, on: "r", .pr)
        _ = h.lock("b", by: 2, on: "r", .pr)
        // owner 1 converts PR -> EX -> queued behind owner 2's PR
        #expect(h.convert("a", to: .ex) == ["b bast EX"])
        // owner 2 converts PR -> EX: its PR blocks owner 1 ahead, owner 1's PR blocks it -> EDEADLK, keeps PR
        #expect(h.convert("b", to: .ex) == ["b EDEADLK PR"])
        #expect(h.state("b")?.queue == .grant)
        #expect(h.state("b")?.grantedMode == .pr)
        #expect(h.state("a")?.queue == .convert)
        // owner 2 unlocks -> owner 1's conversion goes through
        #expect(h.unlock("b") == ["b EUNLOCK", "a granted EX token=1"])
    }

    @Test func conversionWhoseGrantedModeBlocksNobodyIsNoDeadlock() {
        var h = Harness()
        _ = h.lock("x", by: 3, on: "r", .cr)
        _ = h.lock("a", by: 1, on: "r", .pr)
        _ = h.lock("b", by: 2, on: "r", .nl)
        #expect(h.convert("a", to: .ex) == ["x bast EX"])
        // owner 2's NL blocks nobody: its conversion to CW just queues behind owner 1 (whose granted PR blocks
        // it; owner 1 is converting, so it is not told)
        #expect(h.convert("b", to: .cw) == [])
        #expect(h.state("b")?.queue == .convert)
    }

    @Test func conversionDeadlockWithConvertDeadlockDemotesToNL() {
        var h = Harness()
        _ = h.lock("a", by: 1, on: "r", .pr)
        _ = h.lock("b", by: 2, on: "r", .pr)
        #expect(h.convert("a", to: .ex) == ["b bast EX"])
        // owner 2 converts PR -> EX with CONVDEADLK: its PR is demoted to NL, which lets owner 1 through; owner
        // 2 then waits (on NL) for owner 1's EX
        #expect(h.convert("b", to: .ex, .conversionDeadlockDemote) == ["a granted EX token=1", "a bast EX"])
        #expect(h.state("b")?.queue == .convert)
        #expect(h.state("b")?.grantedMode == .nl)
        // when granted, the completion says it was demoted
        #expect(h.unlock("a") == ["a EUNLOCK", "b granted EX DEMOTED token=2"])
        // the flag is reported once
        #expect(h.convert("b", to: .pr) == ["b granted PR"])
    }

    @Test func cancelledDemotedConversionReportsDemoted() {
        var h = Harness()
        _ = h.lock("a", by: 1, on: "r", .pr)
        _ = h.lock("b", by: 2, on: "r", .pr)
        _ = h.convert("a", to: .ex)
        // owner 2 converts PR -> CW with CONVDEADLK: demoted to NL, owner 1's EX goes through, owner 2 waits
        #expect(h.convert("b", to: .cw, .conversionDeadlockDemote) == ["a granted EX token=1", "a bast CW"])
        #expect(h.cancel("b") == ["b ECANCEL NL DEMOTED"])
        #expect(h.state("b")?.grantedMode == .nl)
    }

    @Test func demotedConversionReportsDemotedWhenItTimesOut() {
        var h = Harness()
        _ = h.lock("a", by: 1, on: "r", .pr)
        _ = h.lock("b", by: 2, on: "r", .pr)
        _ = h.convert("a", to: .ex)
        _ = h.convert("b", to: .ex, [.conversionDeadlockDemote, .timeout], timeout: second)
        #expect(h.tick(second) == ["b ETIMEDOUT NL DEMOTED"])
    }

    @Test func demotionGrantsTheDemotedConversionWhenNothingElseBlocksIt() {
        var h = Harness()
        _ = h.lock("a", by: 1, on: "r", .pr)
        _ = h.lock("b", by: 2, on: "r", .pr)
        // owner 1 converts PR -> CW (blocked by owner 2's PR); owner 2 converts PR -> CW with CONVDEADLK: a
        // deadlock (each PR blocks the other's CW) -> demoted to NL, owner 1's CW goes through, and then owner
        // 2's CW is compatible with it -> granted, DEMOTED
        #expect(h.convert("a", to: .cw) == ["b bast CW"])
        #expect(h.convert("b", to: .cw, .conversionDeadlockDemote) == ["a granted CW", "b granted CW DEMOTED"])
    }

    @Test func conversionDeadlockWithNoDeadlockWaitStaysQueuedAndIsToldToGiveWay() {
        var h = Harness()
        _ = h.lock("a", by: 1, on: "r", .pr)
        _ = h.lock("b", by: 2, on: "r", .pr)
        #expect(h.convert("a", to: .pw) == ["b bast PW"])
        // owner 2 converts PR -> EX with NODLCKWT: no EDEADLK; it waits and is told (a blocking callback to
        // itself) that EX is blocked
        #expect(h.convert("b", to: .ex, .noDeadlockWait) == ["b bast EX"])
        #expect(h.state("b")?.queue == .convert)
        // owner 2 gives way: cancels, then unlocks -> owner 1 through
        #expect(h.cancel("b") == ["b ECANCEL PR"])
        #expect(h.unlock("b") == ["b EUNLOCK", "a granted PW token=1"])
    }

    @Test func noDeadlockWaitLockAlreadyToldIsNotToldAgain() {
        var h = Harness()
        _ = h.lock("a", by: 1, on: "r", .pr)
        _ = h.lock("b", by: 2, on: "r", .pr)
        #expect(h.convert("a", to: .ex) == ["b bast EX"])
        #expect(h.convert("b", to: .ex, .noDeadlockWait) == [])
        #expect(h.state("b")?.queue == .convert)
    }

    @Test func conversionDeadlockWithNoQueueIsEAGAIN() {
        var h = Harness()
        _ = h.lock("a", by: 1, on: "r", .pr)
        _ = h.lock("b", by: 2, on: "r", .pr)
        _ = h.convert("a", to: .ex)
        #expect(h.convert("b", to: .ex, .noQueue) == ["b EAGAIN PR"])
    }

    /// Two conversions that block each other, the new one at the head (HEADQUE): a deadlock too.
    @Test func mutualBlockWithAConversionBehindIsADeadlock() {
        var h = Harness()
        _ = h.lock("a", by: 1, on: "r", .pr)
        _ = h.lock("b", by: 2, on: "r", .pr)
        #expect(h.convert("a", to: .ex) == ["b bast EX"])
        #expect(h.convert("b", to: .cw, .headOfQueue) == ["b EDEADLK PR"])
    }

    /// A conversion put at the head (HEADQUE) whose requested mode the granted mode of a queued conversion
    /// blocks: the queued one is now in a deadlock, found by the pass over the queues that an out-of-order
    /// queueing runs at once.
    @Test func conversionDeadlockFoundInAPassIsRefused() {
        var h = Harness()
        _ = h.lock("z", by: 3, on: "r", .pr)
        _ = h.lock("x", by: 2, on: "r", .pr)
        _ = h.lock("h", by: 1, on: "r", .nl)
        _ = h.lock("n", by: 4, on: "r", .nl)
        #expect(h.convert("x", to: .pw) == ["z bast PW"])
        // owner 1's NL blocks nobody: no deadlock; it goes to the head. The pass that follows: owner 1 (head) is
        // blocked by the PRs; owner 2's PR blocks owner 1 ahead -> EDEADLK, keeps PR, and, back on the grant
        // queue, is told EX waits
        #expect(h.convert("h", to: .ex, .headOfQueue) == ["z bast EX", "x EDEADLK PR", "x bast EX"])
        #expect(h.unlock("n") == ["n EUNLOCK"])
    }

    @Test func conversionDeadlockFoundInAPassWithNoDeadlockWaitIsToldToGiveWay() {
        var h = Harness()
        _ = h.lock("z", by: 3, on: "r", .pr)
        _ = h.lock("x", by: 2, on: "r", .pr)
        _ = h.lock("h", by: 1, on: "r", .nl)
        _ = h.lock("n", by: 4, on: "r", .nl)
        _ = h.lock("m", by: 5, on: "r", .nl)
        #expect(h.convert("x", to: .pw, .noDeadlockWait) == ["z bast PW"])
        #expect(h.convert("h", to: .ex, .headOfQueue) == ["z bast EX", "x bast PW"])
        #expect(h.unlock("n") == ["n EUNLOCK"])
        #expect(h.state("x")?.queue == .convert)
        // told once
        #expect(h.unlock("m") == ["m EUNLOCK"])
    }
}
