import Testing

@testable import DLMCore

/// Fencing tokens: every grant of PW or EX (every grant, with `alwaysFencingToken`) carries a token that
/// increases strictly per resource, across conversions, orphan adoption, and the resource being freed and made
/// again.
@Suite struct FencingTokenTests {
    @Test func tokensIncreaseAcrossGrants() {
        var h = Harness()
        _ = h.lock("n", by: 9, on: "r", .nl)
        #expect(h.lock("a", by: 1, on: "r", .ex) == ["a granted EX token=1"])
        #expect(h.lock("b", by: 2, on: "r", .pw) == ["a bast PW"])
        #expect(h.unlock("a") == ["a EUNLOCK", "b granted PW token=2"])
        #expect(h.unlock("b") == ["b EUNLOCK"])
        #expect(h.lock("c", by: 3, on: "r", .ex) == ["c granted EX token=3"])
        #expect(h.state("c")?.fencingToken == 3)
    }

    /// A lockspace released and created again under the same name (forced or not) issues tokens above those of
    /// its earlier life: a client that fenced with a token of the first never sees a smaller one.
    @Test(arguments: [false, true])
    func tokensIncreaseAcrossTheLockspaceBeingReleasedAndCreatedAgain(force: Bool) throws {
        var h = Harness()
        let name = Array("again".utf8)
        var ls = try h.engine.createLockspace(name: name)
        for round in 0..<3 {
            let (a, b) = ("a\(round)", "b\(round)")
            // (Forced, both resources are live at once and start at the same floor; else q starts above r's token.)
            let (first, second) = force ? (round + 1, round + 1) : (round * 2 + 1, round * 2 + 2)
            #expect(h.lock(a, by: 1, on: "r", .ex, in: ls) == ["\(a) granted EX token=\(first)"])
            if !force { _ = h.unlock(a) }
            #expect(h.lock(b, by: 2, on: "q", .ex, in: ls) == ["\(b) granted EX token=\(second)"])
            if !force { _ = h.unlock(b) }
            try h.engine.releaseLockspace(ls, force: force)
            ls = try h.engine.createLockspace(name: name)
        }
    }

    @Test(arguments: [LockMode.nl, .cr, .cw, .pr])
    func noTokenForAGrantBelowPW(mode: LockMode) {
        var h = Harness()
        #expect(h.lock("a", by: 1, on: "r", mode) == ["a granted \(mode)"])
        #expect(h.state("a")?.fencingToken == 0)
    }

    @Test(arguments: LockMode.allCases)
    func alwaysFencingTokenGivesATokenForEveryGrant(mode: LockMode) {
        var h = Harness()
        #expect(h.lock("a", by: 1, on: "r", mode, alwaysFencingToken: true) == ["a granted \(mode) token=1"])
        #expect(h.lock("b", by: 2, on: "r", .nl, alwaysFencingToken: true) == ["b granted NL token=2"])
    }

    @Test func alwaysFencingTokenForPRGrantsAndConversions() {
        var h = Harness()
        #expect(h.lock("a", by: 1, on: "r", .pr, alwaysFencingToken: true) == ["a granted PR token=1"])
        #expect(h.lock("b", by: 2, on: "r", .pr) == ["b granted PR"])
        #expect(h.convert("a", to: .cr) == ["a granted CR token=2"])
        #expect(h.convert("b", to: .nl) == ["b granted NL"])
    }

    @Test func tokensIncreaseAcrossConversions() {
        var h = Harness()
        #expect(h.lock("a", by: 1, on: "r", .nl) == ["a granted NL"])
        #expect(h.convert("a", to: .ex) == ["a granted EX token=1"])
        #expect(h.convert("a", to: .pr) == ["a granted PR"])
        #expect(h.convert("a", to: .pw) == ["a granted PW token=2"])
        #expect(h.convert("a", to: .ex) == ["a granted EX token=3"])
        #expect(h.convert("a", to: .ex) == ["a granted EX token=4"])
        #expect(h.state("a")?.fencingToken == 4)
    }

    @Test func queuedConversionGetsItsTokenWhenGranted() {
        var h = Harness()
        _ = h.lock("a", by: 1, on: "r", .pr)
        _ = h.lock("b", by: 2, on: "r", .pr)
        _ = h.lock("x", by: 3, on: "x", .ex)
        #expect(h.convert("b", to: .ex) == ["a bast EX"])
        #expect(h.unlock("a") == ["a EUNLOCK", "b granted EX token=1"])
    }

    @Test func tokenIncreasesWhenAnOrphanIsAdopted() {
        var h = Harness()
        #expect(h.lock("a", by: 1, on: "r", .pw, .persistent) == ["a granted PW token=1"])
        _ = h.exit(1)
        #expect(h.lock("b", by: 2, on: "r", .pw, .orphan) == ["b granted PW token=2"])
        #expect(h.state("b")?.fencingToken == 2)
    }

    @Test func tokensIncreaseAcrossTheResourceBeingFreedAndMadeAgain() {
        var h = Harness()
        #expect(h.lock("a", by: 1, on: "r", .ex) == ["a granted EX token=1"])
        #expect(h.lock("b", by: 2, on: "r", .ex) == ["a bast EX"])
        #expect(h.unlock("a") == ["a EUNLOCK", "b granted EX token=2"])
        #expect(h.unlock("b") == ["b EUNLOCK"])
        #expect(h.engine.resourceCount == 0)
        #expect(h.lock("c", by: 3, on: "r", .ex) == ["c granted EX token=3"])
        _ = h.exit(3)
        #expect(h.engine.resourceCount == 0)
        #expect(h.lock("d", by: 4, on: "r", .pw) == ["d granted PW token=4"])
    }

    /// A freed resource's counter is kept as a floor for its lockspace (the engine does not remember each
    /// freed name): a resource made anew starts above every freed one.
    @Test func resourceMadeAgainStartsAboveTheLockspacesFreedCounters() {
        var h = Harness()
        for i in 1...5 {
            #expect(h.lock("s\(i)", by: 1, on: "s", .ex) == ["s\(i) granted EX token=\(i)"])
            _ = h.unlock("s\(i)")
        }
        #expect(h.lock("r1", by: 1, on: "r", .ex) == ["r1 granted EX token=6"])
        _ = h.unlock("r1")
        #expect(h.lock("r2", by: 1, on: "r", .ex) == ["r2 granted EX token=7"])
        #expect(h.lock("s6", by: 1, on: "s", .ex) == ["s6 granted EX token=7"])
    }

    @Test func tokensArePerResource() {
        var h = Harness()
        _ = h.lock("n", by: 9, on: "r1", .nl)
        _ = h.lock("a", by: 1, on: "r1", .ex)
        _ = h.convert("a", to: .ex)
        #expect(h.lock("b", by: 2, on: "r2", .ex) == ["b granted EX token=1"])
        #expect(h.convert("a", to: .ex) == ["a granted EX token=3"])
    }

    @Test func alternateModeGrantOfPRHasNoToken() {
        var h = Harness()
        _ = h.lock("a", by: 1, on: "r", .pr)
        #expect(h.lock("b", by: 2, on: "r", .ex, .alternatePR) == ["b granted PR ALTMODE"])
    }
}
