import Testing

@testable import DLMCore

/// Snapshots and `restore`: a resource rebuilt in a fresh engine is the same resource, and behaves the same.
@Suite struct SnapshotTests {
    /// Resource "r" with locks on all three queues, a written value block, a persistent lock, a TIMEOUT waiter
    /// and a waiter with a transaction and priority; and "r/s", a child resource under owner 1's lock.
    static func busyResource() -> Harness {
        var h = Harness()
        #expect(h.lock("a", by: 1, on: "r", .pw, .valueBlock) == ["a granted PW lvb=<> token=1"])
        #expect(h.convert("a", to: .pr, .valueBlock, value: bytes("v1")) == ["a granted PR seq=1"])
        #expect(h.lock("b", by: 2, on: "r", .cr, .persistent) == ["b granted CR seq=1"])
        #expect(h.lock("s", by: 1, on: "s", .ex, parent: "a") == ["s granted EX token=1"])
        #expect(h.lock("c", by: 3, on: "r", .nl) == ["c granted NL seq=1"])
        #expect(h.convert("c", to: .ex) == ["a bast EX", "b bast EX"])
        #expect(h.lock("d", by: 4, on: "r", .pw, .timeout, timeout: 5 * second) == [])
        #expect(h.lock("e", by: 5, on: "r", .nl, .valueBlock, transaction: 7, priority: 3) == [])
        return h
    }

    /// The same operations, in the same order, on any engine holding `busyResource`.
    static func play(_ h: inout Harness) -> [[String]] {
        [
            h.tick(5 * second),
            h.unlock("b"),
            h.unlock("s"),
            h.unlock("a"),
            h.convert("c", to: .nl, .valueBlock, value: bytes("v2")),
            h.exit(5),
            h.lock("f", by: 6, on: "r", .ex, .valueBlock),
            h.lock("g", by: 7, on: "r", .pr),
        ]
    }

    @Test func snapshotShowsTheQueuesInOrder() {
        let h = Self.busyResource()
        let all = h.engine.snapshotLockspace(h.ls)
        #expect(all.map(\.path) == [[bytes("r")], [bytes("r"), bytes("s")]])
        let r = all[0]
        #expect(r.locks.map(\.id) == ["a", "b", "c", "d", "e"].map { h.id($0) })
        #expect(r.locks.map(\.queue) == [.grant, .grant, .convert, .wait, .wait])
        #expect(r.locks.map(\.grantedMode) == [.pr, .cr, .nl, nil, nil])
        #expect(r.locks.map(\.requestedMode) == [nil, nil, .ex, .pw, .nl])
        #expect(r.valueBlock == valueBlock("v1") && r.valueBlockSequence == 1 && !r.valueBlockInvalid)
        #expect(r.fencingToken == 1)
        #expect(r.locks[3].deadline == 5 * second)
        #expect(r.locks[4].transaction == 7 && r.locks[4].priority == 3)
        #expect(r.locks[1].flags.contains(.persistent))
        #expect(all[1].locks.map(\.parent) == [h.id("a")])
        #expect(h.engine.snapshotResource(h.ls, path: [bytes("nothing")]) == nil)
    }

    @Test func restoreIntoAFreshEngineGivesAnIdenticalSnapshot() throws {
        let h = Self.busyResource()
        let g = try Harness(restoring: h)
        #expect(g.engine.snapshotLockspace(g.ls) == h.engine.snapshotLockspace(h.ls))
        #expect(g.engine.lockCount == h.engine.lockCount)
        #expect(g.engine.resourceCount == h.engine.resourceCount)
        #expect(g.engine.waitForEdges() == h.engine.waitForEdges())
    }

    @Test func restoredEngineBehavesTheSame() throws {
        var h = Self.busyResource()
        var g = try Harness(restoring: h)
        let original = Self.play(&h)
        let restored = Self.play(&g)
        #expect(
            original == [
                ["d ETIMEDOUT seq=1"],
                ["b EUNLOCK seq=1"],
                ["s EUNLOCK"],
                ["a EUNLOCK seq=1", "c granted EX seq=1 token=2", "e granted NL lvb=<v1> seq=1"],
                ["c granted NL seq=2"],
                [],
                ["f granted EX lvb=<v2> seq=2 token=3"],
                ["f bast PR"],
            ])
        #expect(restored == original)
        #expect(g.engine.snapshotLockspace(g.ls) == h.engine.snapshotLockspace(h.ls))
    }

    @Test func restoreOfAResourceThatHasLocksIsEEXIST() throws {
        let h = Self.busyResource()
        var g = try Harness(restoring: h)
        let r = h.engine.snapshotLockspace(h.ls)[0]
        let error = #expect(throws: DLMError.self) { try g.engine.restore(r) }
        #expect(error?.status == .exists)
    }

    @Test func restoreWithATakenLockIDIsEEXIST() throws {
        let h = Self.busyResource()
        var g = Harness()
        _ = g.lock("x", by: 9, on: "x", .nl)
        let r = h.engine.snapshotLockspace(h.ls)[0]
        let error = #expect(throws: DLMError.self) { try g.engine.restore(r) }
        #expect(error?.status == .exists)
    }

    @Test func restoreOfAChildBeforeItsParentIsENOENT() {
        let h = Self.busyResource()
        var g = Harness()
        let child = h.engine.snapshotLockspace(h.ls)[1]
        let error = #expect(throws: DLMError.self) { try g.engine.restore(child) }
        #expect(error?.status == .noEntry)
    }

    @Test func restoreIntoAnUnknownLockspaceIsENOENT() {
        let h = Self.busyResource()
        var g = LockEngine()
        let error = #expect(throws: DLMError.self) { try g.restore(h.engine.snapshotLockspace(h.ls)[0]) }
        #expect(error?.status == .noEntry)
    }

    @Test func restoreKeepsFencingTokensIncreasing() throws {
        var h = Harness()
        _ = h.lock("a", by: 1, on: "r", .ex)
        _ = h.convert("a", to: .ex)
        _ = h.convert("a", to: .nl)
        var g = try Harness(restoring: h)
        #expect(g.convert("a", to: .ex) == ["a granted EX token=3"])
    }
}
