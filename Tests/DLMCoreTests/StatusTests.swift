import Testing

@testable import DLMCore

/// REFERENCE.md §3: every completion status and synchronous error, and every completion flag, each produced
/// for real by the engine.
@Suite struct StatusTests {
    @Test func statusValuesAreLibdlms() {
        let expected: [(DLMStatus, Int32, String)] = [
            (.granted, 0, "0"), (.noEntry, 2, "ENOENT"), (.tryAgain, 11, "EAGAIN"), (.busy, 16, "EBUSY"),
            (.exists, 17, "EEXIST"), (.invalid, 22, "EINVAL"), (.deadlock, 35, "EDEADLK"),
            (.timedOut, 110, "ETIMEDOUT"), (.cancelled, 0x10001, "ECANCEL"), (.unlocked, 0x10002, "EUNLOCK"),
        ]
        for (status, value, name) in expected {
            #expect(status.rawValue == value)
            #expect(status.name == name)
        }
        #expect(DLMStatus(rawValue: 99).name == "status 99")
    }

    @Test func completionFlagValuesAreLibdlms() {
        #expect(CompletionFlags.demoted.rawValue == 0x1)
        #expect(CompletionFlags.valueNotValid.rawValue == 0x2)
        #expect(CompletionFlags.alternateMode.rawValue == 0x4)
        #expect(
            CompletionFlags([.demoted, .valueNotValid, .alternateMode]).description == "DEMOTED|VALNOTVALID|ALTMODE")
    }

    // MARK: Completion statuses

    @Test func grantedIsStatusZero() {
        var h = Harness()
        var effects: [Effect] = []
        let id = try? h.engine.lock(
            LockRequest(lockspace: h.ls, owner: OwnerID(1), name: bytes("r"), mode: .pr), into: &effects)
        #expect(effects == [.completion(Completion(lock: id!, owner: OwnerID(1), status: .granted, mode: .pr))])
    }

    @Test func eagainFromNoQueue() {
        var h = Harness()
        _ = h.lock("a", by: 1, on: "r", .ex)
        #expect(h.lock("b", by: 2, on: "r", .ex, .noQueue) == ["b EAGAIN"])
    }

    @Test func eagainFromOrphanOfAnotherMode() {
        var h = Harness()
        _ = h.lock("a", by: 1, on: "r", .pr, .persistent)
        _ = h.exit(1)
        #expect(h.lock("b", by: 2, on: "r", .ex, .orphan) == ["error EAGAIN"])
    }

    @Test func eagainWhenTheEngineHoldsItsMaximumOfLocks() {
        var h = Harness(config: EngineConfig(maxLocks: 2))
        _ = h.lock("a", by: 1, on: "r", .nl)
        _ = h.lock("b", by: 1, on: "r", .nl)
        #expect(h.lock("c", by: 1, on: "r", .nl) == ["error EAGAIN"])
        _ = h.unlock("a")
        #expect(h.lock("c", by: 1, on: "r", .nl) == ["c granted NL"])
    }

    @Test func edeadlkFromAConversionDeadlock() {
        var h = Harness()
        _ = h.lock("a", by: 1, on: "r", .pr)
        _ = h.lock("b", by: 2, on: "r", .pr)
        _ = h.convert("a", to: .ex)
        #expect(h.convert("b", to: .ex) == ["b EDEADLK PR"])
    }

    @Test func edeadlkFromADeadlockSearch() {
        var h = Harness()
        _ = h.lock("a", by: 1, on: "r1", .ex)
        _ = h.lock("b", by: 2, on: "r2", .ex)
        _ = h.lock("wa", by: 1, on: "r2", .ex)
        _ = h.lock("wb", by: 2, on: "r1", .ex)
        #expect(h.tick(second) == ["wb EDEADLK"])
    }

    @Test func etimedoutFromATimeout() {
        var h = Harness()
        _ = h.lock("a", by: 1, on: "r", .ex)
        _ = h.lock("b", by: 2, on: "r", .ex, .timeout, timeout: 10)
        #expect(h.tick(10) == ["b ETIMEDOUT"])
    }

    @Test func eunlockFromAnUnlock() {
        var h = Harness()
        _ = h.lock("a", by: 1, on: "r", .ex)
        #expect(h.unlock("a") == ["a EUNLOCK"])
    }

    @Test func ecancelFromACancel() {
        var h = Harness()
        _ = h.lock("a", by: 1, on: "r", .ex)
        _ = h.lock("b", by: 2, on: "r", .ex)
        #expect(h.cancel("b") == ["b ECANCEL"])
    }

    // MARK: Synchronous errors

    @Test func einvalForAResourceNameOfNoneOrMoreThan64Bytes() {
        var h = Harness()
        #expect(h.lock("a", by: 1, on: "", .ex) == ["error EINVAL"])
        #expect(h.lock("a", by: 1, on: String(repeating: "x", count: 65), .ex) == ["error EINVAL"])
        #expect(h.lock("a", by: 1, on: String(repeating: "x", count: 64), .ex) == ["a granted EX token=1"])
    }

    @Test func einvalForABadFlagCombination() {
        var h = Harness()
        #expect(h.lock("a", by: 1, on: "r", .pr, .expedite) == ["error EINVAL"])
    }

    @Test func enoentForAnUnknownLockID() {
        var h = Harness()
        var effects: [Effect] = []
        let error = #expect(throws: DLMError.self) {
            try h.engine.unlock(UnlockRequest(lock: LockID(rawValue: 7), owner: OwnerID(1)), into: &effects)
        }
        #expect(error?.status == .noEntry)
        _ = h.lock("a", by: 1, on: "r", .ex)
        _ = h.unlock("a")
        // a lock that is gone is unknown too
        #expect(h.unlock("a") == ["error ENOENT"])
        #expect(h.convert("a", to: .nl) == ["error ENOENT"])
        #expect(effects == [])
    }

    @Test func enoentForAnotherOwnersLock() {
        var h = Harness()
        _ = h.lock("a", by: 1, on: "r", .ex)
        _ = h.lock("x", by: 2, on: "other", .nl)
        #expect(h.unlock("a", by: 2) == ["error ENOENT"])
        #expect(h.convert("a", to: .nl, by: 2) == ["error ENOENT"])
        #expect(h.state("a")?.grantedMode == .ex)
    }

    @Test func enoentForAnUnknownLockspace() {
        var h = Harness()
        #expect(h.lock("a", by: 1, on: "r", .ex, in: LockspaceID(rawValue: 5)) == ["error ENOENT"])
    }

    @Test func enoentForAnOrphanThatDoesNotExist() {
        var h = Harness()
        #expect(h.lock("a", by: 1, on: "r", .ex, .orphan) == ["error ENOENT"])
    }

    @Test func ebusyForAnOperationOnALockWithOneInFlight() {
        var h = Harness()
        _ = h.lock("a", by: 1, on: "r", .pr)
        _ = h.lock("b", by: 2, on: "r", .pr)
        _ = h.convert("b", to: .ex)
        #expect(h.convert("b", to: .cw) == ["error EBUSY"])
        #expect(h.unlock("b") == ["error EBUSY"])
        // CANCEL and FORCEUNLOCK are the exceptions
        #expect(h.cancel("b") == ["b ECANCEL PR"])
        _ = h.convert("b", to: .ex)
        #expect(h.unlock("b", .forceUnlock) == ["b EUNLOCK"])
    }

    @Test func ebusyForACancelWithNothingToCancel() {
        var h = Harness()
        _ = h.lock("a", by: 1, on: "r", .pr)
        #expect(h.cancel("a") == ["error EBUSY"])
    }

    @Test func ebusyForAnUnlockOfAParentWithChildren() {
        var h = Harness()
        _ = h.lock("p", by: 1, on: "p", .ex)
        _ = h.lock("c", by: 1, on: "c", .ex, parent: "p")
        #expect(h.unlock("p") == ["error EBUSY"])
    }

    // MARK: Completion flags

    @Test func demotedFlag() {
        var h = Harness()
        _ = h.lock("a", by: 1, on: "r", .pr)
        _ = h.lock("b", by: 2, on: "r", .pr)
        _ = h.convert("a", to: .ex)
        _ = h.convert("b", to: .ex, .conversionDeadlockDemote)
        #expect(h.unlock("a") == ["a EUNLOCK", "b granted EX DEMOTED token=2"])
    }

    @Test func valueNotValidFlag() {
        var h = Harness()
        _ = h.lock("n", by: 9, on: "r", .nl)
        _ = h.lock("a", by: 1, on: "r", .ex)
        _ = h.unlock("a", .invalidateValueBlock)
        #expect(h.lock("b", by: 2, on: "r", .pr, .valueBlock) == ["b granted PR VALNOTVALID lvb=<>"])
    }

    @Test func alternateModeFlag() {
        var h = Harness()
        _ = h.lock("a", by: 1, on: "r", .pr)
        #expect(h.lock("b", by: 2, on: "r", .pw, .alternatePR) == ["b granted PR ALTMODE"])
    }

    // MARK: The single entry point

    /// `handle` is the engine's one way in and out: the outcome of each input is an effect, first (`accepted`
    /// with a new lock's id, `refused` with the error, `lockspace`), then what it let through, then the changes for
    /// the store (`persist`).
    @Test func handleReportsEveryOutcomeAsEffects() {
        var h = Harness()
        let a = LockRequest(lockspace: h.ls, owner: OwnerID(1), name: bytes("r"), mode: .ex)
        let first = h.engine.handle(.lock(a))
        guard case .accepted(let id) = first.first else {
            Issue.record("no lock id: \(first)")
            return
        }
        #expect(h.render(Array(first.dropFirst())) == ["#\(id.rawValue) granted EX token=1 owner=1"])
        let b = LockRequest(lockspace: h.ls, owner: OwnerID(2), name: bytes("r"), mode: .ex, flags: .noQueue)
        let queued = h.engine.handle(.lock(b))
        guard case .accepted(let refused) = queued.first else {
            Issue.record("no lock id")
            return
        }
        #expect(refused != id && h.render(Array(queued.dropFirst())) == ["#\(refused.rawValue) EAGAIN owner=2"])
        let bad = h.engine.handle(.convert(ConvertRequest(lock: id, owner: OwnerID(1), mode: .nl, flags: .orphan)))
        guard case .refused(let error) = bad.first else {
            Issue.record("an ORPHAN conversion was accepted")
            return
        }
        #expect(error.status == .invalid && bad.count == 1)
        let unlock = h.engine.handle(.unlock(UnlockRequest(lock: id, owner: OwnerID(1))))
        #expect(unlock == [.completion(Completion(lock: id, owner: OwnerID(1), status: .unlocked, mode: nil))])
        #expect(h.engine.handle(.tick(now: second)).isEmpty)
        #expect(h.engine.handle(.ownerExited(OwnerID(1))).isEmpty)
        #expect(h.engine.lockCount == 0)
        let opened = h.engine.handle(.openLockspace(name: bytes("other"), valueBlockLength: 16, create: true))
        guard case .lockspace(let info, created: true) = opened.first else {
            Issue.record("no lockspace: \(opened)")
            return
        }
        #expect(info.valueBlockLength == 16)
        #expect(
            h.engine.handle(.openLockspace(name: bytes("none"), valueBlockLength: nil, create: false)).first
                == .refused(DLMError(.noEntry, "no lockspace none")))
        // A persistent lock: the store's change comes last.
        let kept = h.engine.handle(
            .lock(LockRequest(lockspace: h.ls, owner: OwnerID(3), name: bytes("p"), mode: .pr, flags: .persistent)))
        guard case .persist(.put(let stored)) = kept.last else {
            Issue.record("no change for the store: \(kept)")
            return
        }
        #expect(stored.resource.name == bytes("p") && stored.resource.locks.count == 1)
    }
}
