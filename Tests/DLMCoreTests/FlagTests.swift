import Testing

@testable import DLMCore

/// REFERENCE.md §3: each libdlm flag on its own, and the combinations that are EINVAL. Flags whose behaviour
/// has a file of its own are covered there too (VALBLK / IVVALBLK: ValueBlockTests; CONVDEADLK / NODLCKWT:
/// ConversionDeadlockTests; PERSISTENT / ORPHAN: OrphanTests; NODLCKWT / NODLCKBLK: DeadlockCycleTests;
/// TIMEOUT: TimeoutTests).
@Suite struct FlagTests {
    @Test func flagValuesAreLibdlms() {
        let expected: [(LockFlags, UInt32, String)] = [
            (.noQueue, 0x1, "NOQUEUE"), (.cancel, 0x2, "CANCEL"), (.convert, 0x4, "CONVERT"),
            (.valueBlock, 0x8, "VALBLK"), (.queueConversion, 0x10, "QUECVT"),
            (.invalidateValueBlock, 0x20, "IVVALBLK"), (.conversionDeadlockDemote, 0x40, "CONVDEADLK"),
            (.persistent, 0x80, "PERSISTENT"), (.noDeadlockWait, 0x100, "NODLCKWT"),
            (.noDeadlockBlock, 0x200, "NODLCKBLK"), (.expedite, 0x400, "EXPEDITE"),
            (.noQueueBlockingCallback, 0x800, "NOQUEUEBAST"), (.headOfQueue, 0x1000, "HEADQUE"),
            (.noOrder, 0x2000, "NOORDER"), (.orphan, 0x4000, "ORPHAN"), (.alternatePR, 0x8000, "ALTPR"),
            (.alternateCW, 0x10000, "ALTCW"), (.forceUnlock, 0x20000, "FORCEUNLOCK"), (.timeout, 0x40000, "TIMEOUT"),
        ]
        for (flag, value, name) in expected {
            #expect(flag.rawValue == value)
            #expect(flag.description == name)
        }
        #expect(LockFlags.names.count == expected.count)
    }

    // MARK: NOQUEUE

    @Test func noQueueFailsWithEAGAINInsteadOfWaiting() {
        var h = Harness()
        _ = h.lock("a", by: 1, on: "r", .ex)
        // owner 2 asks PR with NOQUEUE -> EAGAIN, no blocking callback, no lock left
        #expect(h.lock("b", by: 2, on: "r", .pr, .noQueue) == ["b EAGAIN"])
        #expect(h.state("b") == nil)
        #expect(h.engine.lockCount == 1)
        // a compatible NOQUEUE request is granted as usual
        #expect(h.lock("c", by: 3, on: "r", .nl, .noQueue) == ["c granted NL"])
    }

    @Test func noQueueConversionFailsWithEAGAINAndKeepsTheGrantedMode() {
        var h = Harness()
        _ = h.lock("a", by: 1, on: "r", .pr)
        _ = h.lock("b", by: 2, on: "r", .pr)
        #expect(h.convert("b", to: .ex, .noQueue) == ["b EAGAIN PR"])
        #expect(h.state("b")?.queue == .grant)
        #expect(h.state("b")?.grantedMode == .pr)
    }

    // MARK: NOQUEUEBAST

    @Test func noQueueBastTellsHoldersOnGrantAndConvertQueuesWhenNoQueueFails() {
        var h = Harness()
        _ = h.lock("b", by: 2, on: "r", .cr)
        _ = h.lock("a", by: 1, on: "r", .pr)
        // owner 1 converts PR -> EX: blocked by owner 2's CR
        #expect(h.convert("a", to: .ex) == ["b bast EX"])
        // owner 3 asks PW with NOQUEUE: EAGAIN, and nobody is told
        #expect(h.lock("c", by: 3, on: "r", .pw, .noQueue) == ["c EAGAIN"])
        // with NOQUEUEBAST: EAGAIN, then owner 1 (on the convert queue, granted PR) is told PW; owner 2's CR
        // does not block PW
        #expect(h.lock("d", by: 4, on: "r", .pw, [.noQueue, .noQueueBlockingCallback]) == ["d EAGAIN", "a bast PW"])
    }

    @Test func noQueueBastOnAFailedConversion() {
        var h = Harness()
        _ = h.lock("a", by: 1, on: "r", .pr)
        _ = h.lock("b", by: 2, on: "r", .pr)
        #expect(h.convert("b", to: .ex, [.noQueue, .noQueueBlockingCallback]) == ["b EAGAIN PR", "a bast EX"])
    }

    @Test func noQueueBastWithoutNoQueueChangesNothing() {
        var h = Harness()
        _ = h.lock("a", by: 1, on: "r", .ex)
        #expect(h.lock("b", by: 2, on: "r", .pr, .noQueueBlockingCallback) == ["a bast PR"])
        #expect(h.state("b")?.queue == .wait)
    }

    // MARK: CANCEL

    @Test func cancelOfAWaitingRequestCompletesWithECANCEL() {
        var h = Harness()
        _ = h.lock("a", by: 1, on: "r", .ex)
        _ = h.lock("b", by: 2, on: "r", .pr)
        #expect(h.cancel("b") == ["b ECANCEL"])
        #expect(h.state("b") == nil)
        #expect(h.engine.lockCount == 1)
    }

    @Test func cancelOfAConversionReturnsTheLockToItsGrantedMode() {
        var h = Harness()
        _ = h.lock("a", by: 1, on: "r", .pr)
        _ = h.lock("b", by: 2, on: "r", .pr)
        _ = h.convert("b", to: .ex)
        #expect(h.cancel("b") == ["b ECANCEL PR"])
        #expect(h.state("b")?.queue == .grant)
        #expect(h.state("b")?.grantedMode == .pr)
        #expect(h.state("b")?.requestedMode == nil)
    }

    @Test func cancelWithNothingPendingIsEBUSY() {
        var h = Harness()
        _ = h.lock("a", by: 1, on: "r", .ex)
        #expect(h.cancel("a") == ["error EBUSY"])
        #expect(h.state("a")?.grantedMode == .ex)
    }

    // MARK: CONVERT

    @Test func convertChangesTheModeOfTheNamedLock() {
        var h = Harness()
        #expect(h.lock("a", by: 1, on: "r", .nl) == ["a granted NL"])
        #expect(h.convert("a", to: .ex) == ["a granted EX token=1"])
        #expect(h.state("a")?.grantedMode == .ex)
    }

    @Test func convertOnANewRequestIsEINVAL() {
        var h = Harness()
        #expect(h.lock("a", by: 1, on: "r", .ex, .convert) == ["error EINVAL"])
    }

    @Test func conversionWithoutConvertIsEINVAL() {
        var h = Harness()
        _ = h.lock("a", by: 1, on: "r", .nl)
        var request = ConvertRequest(lock: h.id("a"), owner: OwnerID(1), mode: .ex)
        request.flags = []
        #expect(h.convert(request) == ["error EINVAL"])
    }

    @Test func conversionOfALockThatIsNotGrantedIsEBUSY() {
        var h = Harness()
        _ = h.lock("a", by: 1, on: "r", .ex)
        _ = h.lock("b", by: 2, on: "r", .ex)
        #expect(h.convert("b", to: .pr) == ["error EBUSY"])
        _ = h.lock("c", by: 3, on: "r", .nl, .expedite)
        _ = h.convert("c", to: .pr)
        #expect(h.convert("c", to: .cr) == ["error EBUSY"])
    }

    // MARK: QUECVT

    /// QUECVT is legal for up-conversions only, PR <-> CW counting as one; anything else is EINVAL.
    @Test(arguments: LockMode.allCases, LockMode.allCases)
    func queueConversionOnlyForUpConversions(held: LockMode, asked: LockMode) {
        var h = Harness()
        _ = h.lock("a", by: 1, on: "r", held)
        let legal = asked > held || (held == .pr && asked == .cw) || (held == .cw && asked == .pr)
        let effects = h.convert("a", to: asked, .queueConversion)
        if legal {
            #expect(effects.count == 1 && effects[0].hasPrefix("a granted \(asked)"))
        } else {
            #expect(effects == ["error EINVAL"])
            #expect(h.state("a")?.grantedMode == held)
        }
        #expect(held.allowsQueuedConversion(to: asked) == legal)
    }

    @Test func queueConversionOnANewRequestIsEINVAL() {
        var h = Harness()
        #expect(h.lock("a", by: 1, on: "r", .ex, .queueConversion) == ["error EINVAL"])
    }

    // MARK: CONVDEADLK

    @Test func conversionDeadlockDemoteNeedsConvert() {
        var h = Harness()
        #expect(h.lock("a", by: 1, on: "r", .ex, .conversionDeadlockDemote) == ["error EINVAL"])
    }

    @Test func conversionDeadlockDemoteWithNoQueueIsEINVAL() {
        var h = Harness()
        _ = h.lock("a", by: 1, on: "r", .nl)
        #expect(h.convert("a", to: .ex, [.conversionDeadlockDemote, .noQueue]) == ["error EINVAL"])
        #expect(h.convert("a", to: .ex, .conversionDeadlockDemote) == ["a granted EX token=1"])
    }

    // MARK: EXPEDITE

    @Test func expediteGrantsAnNLRequestAtOnce() {
        var h = Harness()
        _ = h.lock("a", by: 1, on: "r", .ex)
        _ = h.lock("b", by: 2, on: "r", .ex)
        #expect(h.lock("c", by: 3, on: "r", .nl, .expedite) == ["c granted NL"])
    }

    @Test(arguments: [LockMode.cr, .cw, .pr, .pw, .ex])
    func expediteForAnotherModeThanNLIsEINVAL(mode: LockMode) {
        var h = Harness()
        #expect(h.lock("a", by: 1, on: "r", mode, .expedite) == ["error EINVAL"])
    }

    @Test func expediteWithNoQueueIsEINVAL() {
        var h = Harness()
        #expect(h.lock("a", by: 1, on: "r", .nl, [.expedite, .noQueue]) == ["error EINVAL"])
    }

    @Test func expediteWithQueueConversionIsEINVAL() {
        var h = Harness()
        #expect(h.lock("a", by: 1, on: "r", .nl, [.expedite, .queueConversion]) == ["error EINVAL"])
    }

    @Test func expediteOnAConversionIsEINVAL() {
        var h = Harness()
        _ = h.lock("a", by: 1, on: "r", .ex)
        #expect(h.convert("a", to: .nl, .expedite) == ["error EINVAL"])
        #expect(h.state("a")?.grantedMode == .ex)
    }

    // MARK: HEADQUE

    @Test func headQueuePutsANewRequestAtTheHeadOfTheWaitQueue() {
        var h = Harness()
        _ = h.lock("a", by: 1, on: "r", .ex)
        #expect(h.lock("b", by: 2, on: "r", .ex) == ["a bast EX"])
        #expect(h.lock("c", by: 3, on: "r", .pr, .headOfQueue) == [])
        // owner 1 unlocks -> owner 3 (head) first; owner 2's EX is then blocked by it
        #expect(h.unlock("a") == ["a EUNLOCK", "c granted PR", "c bast EX"])
        #expect(h.state("b")?.queue == .wait)
    }

    /// HEADQUE does not bypass rule 9 (a new request is not granted "now" past a waiter), but once queued at
    /// the head, rule 10 grants a compatible request at once: it is not left waiting for the next unlock.
    @Test func headQueueRequestBehindABlockedWaiterIsGrantedAsTheNewHead() {
        var h = Harness()
        _ = h.lock("n", by: 9, on: "r", .nl)
        _ = h.lock("a", by: 1, on: "r", .pr)
        #expect(h.lock("b", by: 2, on: "r", .ex) == ["a bast EX"])
        #expect(h.lock("c", by: 3, on: "r", .pr, .headOfQueue) == ["c granted PR", "c bast EX"])
        #expect(h.state("c")?.queue == .grant)
        #expect(h.state("b")?.queue == .wait)
        #expect(h.unlock("n") == ["n EUNLOCK"])
    }

    @Test func withoutHeadQueueANewRequestJoinsTheTail() {
        var h = Harness()
        _ = h.lock("a", by: 1, on: "r", .ex)
        #expect(h.lock("b", by: 2, on: "r", .ex) == ["a bast EX"])
        #expect(h.lock("c", by: 3, on: "r", .pr) == [])
        #expect(h.unlock("a") == ["a EUNLOCK", "b granted EX token=2", "b bast PR"])
    }

    @Test func headQueuePutsAConversionAtTheHeadOfTheConvertQueue() {
        var h = Harness()
        _ = h.lock("a", by: 1, on: "r", .pr)
        _ = h.lock("b", by: 2, on: "r", .pr)
        _ = h.lock("c", by: 3, on: "r", .nl)
        _ = h.lock("n", by: 4, on: "r", .nl)
        #expect(h.convert("b", to: .ex) == ["a bast EX"])
        // QUECVT keeps owner 3 from overtaking "now"; HEADQUE puts it first, where rule 8 grants it at once
        #expect(h.convert("c", to: .cr, [.queueConversion, .headOfQueue]) == ["c granted CR", "c bast EX"])
        #expect(h.state("c")?.queue == .grant)
        #expect(h.state("b")?.queue == .convert)
    }

    @Test func headQueuePutsABlockedConversionAheadOfTheQueuedOnes() {
        var h = Harness()
        _ = h.lock("a", by: 1, on: "r", .pr)
        _ = h.lock("b", by: 2, on: "r", .nl)
        _ = h.lock("c", by: 3, on: "r", .nl)
        #expect(h.convert("b", to: .ex) == ["a bast EX"])
        // owner 3 asks PW at the head: blocked by the PR holder, it is first on the convert queue, ahead of b;
        // the holder already knows EX waits, which covers PW
        #expect(h.convert("c", to: .pw, [.headOfQueue]) == [])
        #expect(
            h.engine.snapshotResource(h.ls, path: [bytes("r")])?.locks.map(\.id).suffix(2) == [h.id("c"), h.id("b")])
    }

    // MARK: NOORDER

    @Test func noOrderGrantsAsSoonAsCompatible() {
        var h = Harness()
        _ = h.lock("a", by: 1, on: "r", .pr)
        #expect(h.lock("b", by: 2, on: "r", .ex) == ["a bast EX"])
        // granted past the waiting EX, it is told at once that it blocks it
        #expect(h.lock("c", by: 3, on: "r", .pr, .noOrder) == ["c granted PR", "c bast EX"])
        // NOORDER does not override a conflict; owner 3 already knows EX waits, which covers PW
        #expect(h.lock("d", by: 4, on: "r", .pw, .noOrder) == [])
        #expect(h.state("d")?.queue == .wait)
    }

    // MARK: ALTPR / ALTCW

    @Test func alternatePRGrantsPRWhenTheModeCannotBeGranted() {
        var h = Harness()
        _ = h.lock("a", by: 1, on: "r", .pr)
        #expect(h.lock("b", by: 2, on: "r", .ex, .alternatePR) == ["b granted PR ALTMODE"])
        #expect(h.state("b")?.grantedMode == .pr)
    }

    @Test func alternateCWGrantsCWWhenTheModeCannotBeGranted() {
        var h = Harness()
        _ = h.lock("a", by: 1, on: "r", .cw)
        #expect(h.lock("b", by: 2, on: "r", .pr, .alternateCW) == ["b granted CW ALTMODE"])
        #expect(h.state("b")?.grantedMode == .cw)
    }

    @Test func alternateModeIsNotUsedWhenTheModeItselfCanBeGranted() {
        var h = Harness()
        _ = h.lock("a", by: 1, on: "r", .cr)
        #expect(h.lock("b", by: 2, on: "r", .pw, .alternatePR) == ["b granted PW token=1"])
    }

    @Test func alternateModeOfAQueuedRequestIsGrantedLater() {
        var h = Harness()
        _ = h.lock("a", by: 1, on: "r", .cw)
        // neither EX nor PR goes with CW -> queued
        #expect(h.lock("b", by: 2, on: "r", .ex, .alternatePR) == ["a bast EX"])
        // owner 1 converts CW -> PR -> owner 2 gets its alternate mode
        #expect(h.convert("a", to: .pr) == ["a granted PR", "b granted PR ALTMODE"])
    }

    @Test func alternateModeOnAConversion() {
        var h = Harness()
        _ = h.lock("a", by: 1, on: "r", .pr)
        _ = h.lock("b", by: 2, on: "r", .nl)
        #expect(h.convert("b", to: .ex, .alternatePR) == ["b granted PR ALTMODE"])
    }

    // MARK: FORCEUNLOCK

    @Test func forceUnlockUnlocksAPendingConversion() {
        var h = Harness()
        _ = h.lock("a", by: 1, on: "r", .pr)
        _ = h.lock("b", by: 2, on: "r", .pr)
        _ = h.convert("b", to: .ex)
        #expect(h.unlock("b") == ["error EBUSY"])
        #expect(h.unlock("b", .forceUnlock) == ["b EUNLOCK"])
        #expect(h.state("b") == nil)
    }

    @Test func forceUnlockUnlocksAWaitingRequestAndLetsOthersThrough() {
        var h = Harness()
        _ = h.lock("a", by: 1, on: "r", .pr)
        _ = h.lock("b", by: 2, on: "r", .ex)
        _ = h.lock("c", by: 3, on: "r", .pr)
        #expect(h.unlock("b") == ["error EBUSY"])
        #expect(h.unlock("b", .forceUnlock) == ["b EUNLOCK", "c granted PR"])
    }

    @Test func forceUnlockOfAGrantedLockIsAnUnlock() {
        var h = Harness()
        _ = h.lock("a", by: 1, on: "r", .ex)
        _ = h.lock("b", by: 2, on: "r", .ex)
        #expect(h.unlock("a", .forceUnlock) == ["a EUNLOCK", "b granted EX token=2"])
    }

    // MARK: Illegal combinations on unlock and on requests

    @Test func cancelWithForceUnlockIsEINVAL() {
        var h = Harness()
        _ = h.lock("a", by: 1, on: "r", .ex)
        _ = h.lock("b", by: 2, on: "r", .ex)
        #expect(h.unlock("b", [.cancel, .forceUnlock]) == ["error EINVAL"])
        #expect(h.state("b")?.queue == .wait)
    }

    static let lockOnlyFlags: [LockFlags] = [
        .noQueue, .convert, .queueConversion, .conversionDeadlockDemote, .persistent, .noDeadlockWait,
        .noDeadlockBlock, .expedite, .noQueueBlockingCallback, .headOfQueue, .noOrder, .orphan, .alternatePR,
        .alternateCW, .timeout,
    ]

    @Test(arguments: lockOnlyFlags)
    func lockOnlyFlagOnUnlockIsEINVAL(flag: LockFlags) {
        var h = Harness()
        _ = h.lock("a", by: 1, on: "r", .ex)
        #expect(h.unlock("a", flag) == ["error EINVAL"])
        #expect(h.unlock("a", [.cancel, flag]) == ["error EINVAL"])
        #expect(h.state("a")?.grantedMode == .ex)
    }

    @Test(arguments: [LockFlags.cancel, .forceUnlock])
    func unlockOnlyFlagOnARequestIsEINVAL(flag: LockFlags) {
        var h = Harness()
        #expect(h.lock("a", by: 1, on: "r", .ex, flag) == ["error EINVAL"])
        _ = h.lock("b", by: 1, on: "r", .nl)
        #expect(h.convert("b", to: .ex, flag) == ["error EINVAL"])
    }

    @Test func unlockTakesValueBlockFlags() {
        var h = Harness()
        _ = h.lock("a", by: 1, on: "r", .pr)
        #expect(h.unlock("a", [.valueBlock, .invalidateValueBlock]) == ["a EUNLOCK"])
    }

    // MARK: TIMEOUT (validation; behaviour in TimeoutTests)

    @Test func timeoutNeedsATimeoutValue() {
        var h = Harness()
        #expect(h.lock("a", by: 1, on: "r", .ex, .timeout) == ["error EINVAL"])
        #expect(h.lock("a", by: 1, on: "r", .ex, .timeout, timeout: 0) == ["error EINVAL"])
        #expect(h.lock("a", by: 1, on: "r", .ex, timeout: second) == ["error EINVAL"])
        #expect(h.lock("a", by: 1, on: "r", .ex, .timeout, timeout: second) == ["a granted EX token=1"])
    }

    @Test func conversionTimeoutNeedsATimeoutValue() {
        var h = Harness()
        _ = h.lock("a", by: 1, on: "r", .nl)
        #expect(h.convert("a", to: .ex, .timeout) == ["error EINVAL"])
        #expect(h.convert("a", to: .ex, timeout: second) == ["error EINVAL"])
        #expect(h.convert("a", to: .ex, .timeout, timeout: second) == ["a granted EX token=1"])
    }

    // MARK: ORPHAN and PERSISTENT (validation; behaviour in OrphanTests)

    @Test func orphanOnAConversionIsEINVAL() {
        var h = Harness()
        _ = h.lock("a", by: 1, on: "r", .nl)
        #expect(h.convert("a", to: .ex, .orphan) == ["error EINVAL"])
    }

    @Test func orphanWithAParentIsEINVAL() {
        var h = Harness()
        _ = h.lock("p", by: 1, on: "p", .ex)
        #expect(h.lock("c", by: 1, on: "c", .ex, .orphan, parent: "p") == ["error EINVAL"])
    }

    @Test func persistentIsKeptAcrossConversions() {
        var h = Harness()
        _ = h.lock("a", by: 1, on: "r", .nl, .persistent)
        _ = h.convert("a", to: .ex)
        #expect(h.state("a")?.flags.contains(.persistent) == true)
    }
}
