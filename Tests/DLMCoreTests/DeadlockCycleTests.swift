import Testing

@testable import DLMCore

/// Multi-resource deadlock detection (REFERENCE.md §5, the gap Linux leaves): a request that has waited
/// `deadlockWait` starts a search of the wait-for graph between owners (or transactions); a cycle's victim
/// (lowest priority, then youngest) gets EDEADLK and keeps what it already holds.
@Suite struct DeadlockCycleTests {
    /// Owners 1...n each hold EX on their resource r0...r(n-1) ("h0"...) and then ask EX on the next one's
    /// ("w0"...), all at time 0.
    static func ring(_ n: Int, priorities: [UInt8]? = nil, config: EngineConfig = EngineConfig()) -> Harness {
        var h = Harness(config: config)
        for i in 0..<n {
            #expect(h.lock("h\(i)", by: UInt64(i + 1), on: "r\(i)", .ex) == ["h\(i) granted EX token=1"])
        }
        for i in 0..<n {
            let next = (i + 1) % n
            let effects = h.lock("w\(i)", by: UInt64(i + 1), on: "r\(next)", .ex, priority: priorities?[i] ?? 0)
            #expect(effects == ["h\(next) bast EX"])
        }
        return h
    }

    static func edge(
        _ h: Harness, _ waiter: UInt64, _ waiting: String, _ blocker: UInt64, _ blocking: String, on resource: String,
        priority: UInt8 = 0, since: Instant = 0
    ) -> WaitForEdge {
        WaitForEdge(
            waiter: .owner(OwnerID(waiter)), waitingLock: h.id(waiting), blocker: .owner(OwnerID(blocker)),
            blockingLock: h.id(blocking), lockspace: h.ls, resource: bytes(resource), priority: priority,
            waitingSince: since)
    }

    /// A cycle of n owners over n resources: after `deadlockWait`, exactly one victim (the youngest request)
    /// gets EDEADLK, keeps its own EX, and once it lets go the others are granted one by one.
    @Test(arguments: 2...8)
    func cycleHasExactlyOneVictim(n: Int) {
        var h = Self.ring(n)
        let edges = (0..<n).map { i in
            Self.edge(h, UInt64(i + 1), "w\(i)", UInt64((i + 1) % n + 1), "h\((i + 1) % n)", on: "r\((i + 1) % n)")
        }
        #expect(h.engine.waitForEdges() == edges)
        #expect(h.engine.findDeadlock(from: h.id("w0")) == (0..<n).map { h.id("w\($0)") })
        // nothing before deadlockWait has passed
        #expect(h.tick(second - 1) == [])
        // the youngest request of the cycle is the victim
        #expect(h.tick(second) == ["w\(n - 1) EDEADLK"])
        #expect(h.state("w\(n - 1)") == nil)
        // it keeps what it holds
        #expect(h.state("h\(n - 1)")?.grantedMode == .ex)
        #expect(h.engine.waitForEdges() == Array(edges.dropLast()))
        #expect(h.engine.findDeadlock(from: h.id("w0")) == nil)
        // later searches find nothing
        #expect(h.tick(10 * second) == [])
        // the victim's owner lets go; each owner in turn is granted and lets go
        #expect(h.unlock("h\(n - 1)") == ["h\(n - 1) EUNLOCK", "w\(n - 2) granted EX token=2"])
        for i in stride(from: n - 2, through: 1, by: -1) {
            #expect(h.unlock("h\(i)") == ["h\(i) EUNLOCK", "w\(i - 1) granted EX token=2"])
        }
        #expect(h.engine.waitForEdges().isEmpty)
    }

    /// The same cycles with one request of lower priority than the others: it is the victim, old or young.
    @Test(arguments: 2...8)
    func victimHasTheLowestPriority(n: Int) {
        let victim = n / 2 - 1 + n % 2
        var h = Self.ring(n, priorities: (0..<n).map { $0 == victim ? 1 : 5 })
        #expect(h.tick(second) == ["w\(victim) EDEADLK"])
        #expect(h.state("h\(victim)")?.grantedMode == .ex)
        let before = (victim + n - 1) % n
        #expect(h.unlock("h\(victim)") == ["h\(victim) EUNLOCK", "w\(before) granted EX token=2"])
    }

    @Test func amongTheLowestPrioritiesTheYoungestIsTheVictim() {
        var h = Harness()
        for i in 0..<3 { _ = h.lock("h\(i)", by: UInt64(i + 1), on: "r\(i)", .ex) }
        // requests at 0, 10 ms and 20 ms, in the order w0, w2, w1; w2 has the highest priority
        _ = h.lock("w0", by: 1, on: "r1", .ex, priority: 1)
        _ = h.tick(10_000_000)
        _ = h.lock("w2", by: 3, on: "r0", .ex, priority: 9)
        _ = h.tick(20_000_000)
        _ = h.lock("w1", by: 2, on: "r2", .ex, priority: 1)
        #expect(
            h.engine.waitForEdges() == [
                Self.edge(h, 1, "w0", 2, "h1", on: "r1", priority: 1, since: 0),
                Self.edge(h, 3, "w2", 1, "h0", on: "r0", priority: 9, since: 10_000_000),
                Self.edge(h, 2, "w1", 3, "h2", on: "r2", priority: 1, since: 20_000_000),
            ])
        #expect(h.tick(second) == ["w1 EDEADLK"])
    }

    @Test func youngestByTimeIsTheVictimAmongEqualPriorities() {
        var h = Harness()
        for i in 0..<3 { _ = h.lock("h\(i)", by: UInt64(i + 1), on: "r\(i)", .ex) }
        _ = h.lock("w1", by: 2, on: "r2", .ex)
        _ = h.tick(10_000_000)
        _ = h.lock("w2", by: 3, on: "r0", .ex)
        _ = h.tick(20_000_000)
        _ = h.lock("w0", by: 1, on: "r1", .ex)
        // the first search is w1's, at 1 s; w0 is the youngest
        #expect(h.tick(second) == ["w0 EDEADLK"])
    }

    @Test func zeroDeadlockWaitDisablesTheSearch() {
        var h = Self.ring(2, config: EngineConfig(deadlockWait: 0))
        #expect(h.tick(100 * second) == [])
        #expect(h.engine.findDeadlock(from: h.id("w0")) != nil)
    }

    /// A request that waited without a cycle is searched from again every `deadlockWait`: a cycle closed later
    /// is found at its next search.
    @Test func searchRepeatsWhileARequestWaits() {
        var h = Harness()
        _ = h.lock("h0", by: 1, on: "r0", .ex)
        _ = h.lock("h1", by: 2, on: "r1", .ex)
        _ = h.lock("w0", by: 1, on: "r1", .ex)
        #expect(h.tick(second) == [])
        #expect(h.tick(second + second / 2) == [])
        _ = h.lock("w1", by: 2, on: "r0", .ex)
        // w0's second search, at 2 s, finds the cycle (w1's own would be at 2.5 s)
        #expect(h.tick(2 * second) == ["w1 EDEADLK"])
    }

    @Test func victimConversionKeepsItsGrantedMode() {
        var h = Harness()
        _ = h.lock("h0", by: 1, on: "r0", .ex)
        _ = h.lock("h1", by: 2, on: "r1", .ex)
        _ = h.lock("n1", by: 2, on: "r0", .nl)
        #expect(h.lock("w0", by: 1, on: "r1", .ex) == ["h1 bast EX"])
        #expect(h.convert("n1", to: .ex) == ["h0 bast EX"])
        #expect(h.tick(second) == ["n1 EDEADLK NL"])
        #expect(h.state("n1")?.queue == .grant)
        #expect(h.state("n1")?.grantedMode == .nl)
    }

    // MARK: NODLCKWT and NODLCKBLK

    /// A NODLCKWT request is not a waiter: a cycle through it has no victim, ever.
    @Test func noDeadlockWaitRequestIsNotAWaiter() {
        var h = Harness()
        for i in 0..<3 { _ = h.lock("h\(i)", by: UInt64(i + 1), on: "r\(i)", .ex) }
        _ = h.lock("w0", by: 1, on: "r1", .ex)
        _ = h.lock("w1", by: 2, on: "r2", .ex, .noDeadlockWait)
        _ = h.lock("w2", by: 3, on: "r0", .ex)
        #expect(
            h.engine.waitForEdges() == [
                Self.edge(h, 1, "w0", 2, "h1", on: "r1"), Self.edge(h, 3, "w2", 1, "h0", on: "r0"),
            ])
        #expect(h.engine.findDeadlock(from: h.id("w0")) == nil)
        #expect(h.engine.findDeadlock(from: h.id("w1")) == nil)
        #expect(h.tick(second) == [])
        #expect(h.tick(60 * second) == [])
        #expect(h.state("w1")?.queue == .wait)
    }

    /// A NODLCKBLK lock is not a blocker: a cycle through it has no victim.
    @Test func noDeadlockBlockLockIsNotABlocker() {
        var h = Harness()
        _ = h.lock("h0", by: 1, on: "r0", .ex)
        _ = h.lock("h1", by: 2, on: "r1", .ex, .noDeadlockBlock)
        _ = h.lock("w0", by: 1, on: "r1", .ex)
        _ = h.lock("w1", by: 2, on: "r0", .ex)
        #expect(h.engine.waitForEdges() == [Self.edge(h, 2, "w1", 1, "h0", on: "r0")])
        #expect(h.tick(second) == [])
        #expect(h.tick(60 * second) == [])
    }

    /// NODLCKBLK takes out that lock only: a cycle through another holder of the same resource is found.
    @Test func noDeadlockBlockExcludesOnlyThatLock() {
        var h = Harness()
        _ = h.lock("h0", by: 1, on: "r0", .pr)
        _ = h.lock("x", by: 3, on: "r0", .pr, .noDeadlockBlock)
        _ = h.lock("h1", by: 2, on: "r1", .ex)
        #expect(h.lock("w0", by: 1, on: "r1", .ex) == ["h1 bast EX"])
        #expect(h.lock("w1", by: 2, on: "r0", .ex) == ["h0 bast EX", "x bast EX"])
        #expect(
            h.engine.waitForEdges() == [
                Self.edge(h, 1, "w0", 2, "h1", on: "r1"), Self.edge(h, 2, "w1", 1, "h0", on: "r0"),
            ])
        #expect(h.tick(second) == ["w1 EDEADLK"])
    }

    // MARK: Transactions

    /// With transaction ids, the participants are the transactions: transaction 100 holds r1 through owner 1
    /// and waits for r2 through owner 3; transaction 200 (owner 2) holds r2 and waits for r1.
    @Test func transactionsAreTheParticipants() {
        var h = Harness()
        _ = h.lock("a", by: 1, on: "r1", .ex, transaction: 100)
        _ = h.lock("b", by: 2, on: "r2", .ex, transaction: 200)
        _ = h.lock("c", by: 3, on: "r2", .ex, transaction: 100)
        _ = h.lock("d", by: 2, on: "r1", .ex, transaction: 200)
        #expect(
            h.engine.waitForEdges() == [
                WaitForEdge(
                    waiter: .transaction(TransactionID(xid: 100)), waitingLock: h.id("c"),
                    blocker: .transaction(TransactionID(xid: 200)),
                    blockingLock: h.id("b"), lockspace: h.ls, resource: bytes("r2"), priority: 0, waitingSince: 0),
                WaitForEdge(
                    waiter: .transaction(TransactionID(xid: 200)), waitingLock: h.id("d"),
                    blocker: .transaction(TransactionID(xid: 100)),
                    blockingLock: h.id("a"), lockspace: h.ls, resource: bytes("r1"), priority: 0, waitingSince: 0),
            ])
        #expect(h.tick(second) == ["d EDEADLK"])
        #expect(h.state("b")?.grantedMode == .ex)
    }

    @Test func withoutTransactionsTheSameLocksAreNoCycle() {
        var h = Harness()
        _ = h.lock("a", by: 1, on: "r1", .ex)
        _ = h.lock("b", by: 2, on: "r2", .ex)
        _ = h.lock("c", by: 3, on: "r2", .ex)
        _ = h.lock("d", by: 2, on: "r1", .ex)
        #expect(h.tick(second) == [])
        #expect(h.tick(60 * second) == [])
    }

    @Test func locksOfOneTransactionNeverWaitForEachOther() {
        var h = Harness()
        _ = h.lock("a", by: 1, on: "r", .ex, transaction: 100)
        _ = h.lock("b", by: 2, on: "r", .ex, transaction: 100)
        #expect(h.engine.waitForEdges().isEmpty)
        #expect(h.tick(second) == [])
    }

    /// Documented choice: one owner may order its own locks, so its locks never wait for each other in the
    /// graph (a request behind the same owner's lock is not a deadlock the engine reports).
    @Test func locksOfOneOwnerNeverWaitForEachOther() {
        var h = Harness()
        _ = h.lock("a", by: 1, on: "r", .ex)
        _ = h.lock("b", by: 1, on: "r", .pr)
        #expect(h.engine.waitForEdges().isEmpty)
        #expect(h.tick(second) == [])
    }

    // MARK: No false positives

    @Test func chainThatIsNotACycleNeverGetsEDEADLK() {
        var h = Harness()
        _ = h.lock("h1", by: 1, on: "r1", .ex)
        _ = h.lock("h2", by: 2, on: "r2", .ex)
        _ = h.lock("h3", by: 3, on: "r3", .ex)
        _ = h.lock("w2", by: 2, on: "r1", .ex)
        _ = h.lock("w3", by: 3, on: "r2", .ex)
        _ = h.lock("w4", by: 4, on: "r3", .ex)
        #expect(
            h.engine.waitForEdges() == [
                Self.edge(h, 2, "w2", 1, "h1", on: "r1"), Self.edge(h, 3, "w3", 2, "h2", on: "r2"),
                Self.edge(h, 4, "w4", 3, "h3", on: "r3"),
            ])
        for t in 1...10 { #expect(h.tick(UInt64(t) * second) == []) }
        // and it resolves by itself as owners let go
        #expect(h.unlock("h1") == ["h1 EUNLOCK", "w2 granted EX token=2"])
        #expect(h.unlock("h2") == ["h2 EUNLOCK", "w3 granted EX token=2"])
        #expect(h.unlock("h3") == ["h3 EUNLOCK", "w4 granted EX token=2"])
    }

    /// A request queued behind a compatible waiter waits for what that waiter waits for, not for the waiter:
    /// owner 3's PR behind owner 2's PR waits for owner 1 only, so owner 2 waiting for owner 3 is no cycle.
    @Test func waitingBehindACompatibleWaiterIsNoCycle() {
        var h = Harness()
        _ = h.lock("a", by: 1, on: "r1", .ex)
        #expect(h.lock("p2", by: 2, on: "r1", .pr) == ["a bast PR"])
        #expect(h.lock("p3", by: 3, on: "r1", .pr) == [])
        _ = h.lock("h3", by: 3, on: "r2", .ex)
        #expect(h.lock("w2", by: 2, on: "r2", .ex) == ["h3 bast EX"])
        #expect(
            h.engine.waitForEdges() == [
                Self.edge(h, 2, "p2", 1, "a", on: "r1"), Self.edge(h, 3, "p3", 1, "a", on: "r1"),
                Self.edge(h, 2, "w2", 3, "h3", on: "r2"),
            ])
        #expect(h.tick(second) == [])
        #expect(h.tick(5 * second) == [])
        #expect(h.unlock("a") == ["a EUNLOCK", "p2 granted PR", "p3 granted PR"])
    }

    /// The same with owner 2 asking EX: FIFO puts owner 3's PR behind it, so owner 3 waits for owner 2 while
    /// owner 2 waits for owner 3: a real deadlock.
    @Test func waitingBehindAnIncompatibleWaiterIsACycle() {
        var h = Harness()
        _ = h.lock("a", by: 1, on: "r1", .ex)
        _ = h.lock("e2", by: 2, on: "r1", .ex)
        _ = h.lock("p3", by: 3, on: "r1", .pr)
        _ = h.lock("h3", by: 3, on: "r2", .ex)
        _ = h.lock("w2", by: 2, on: "r2", .ex)
        #expect(h.engine.waitForEdges().contains(Self.edge(h, 3, "p3", 2, "e2", on: "r1")))
        #expect(h.tick(second) == ["w2 EDEADLK"])
    }

    // MARK: A cluster-wide search's decision

    @Test func cancelForDeadlockRefusesAWaitingRequest() {
        var h = Harness()
        _ = h.lock("a", by: 1, on: "r", .ex)
        _ = h.lock("b", by: 2, on: "r", .ex)
        _ = h.lock("c", by: 3, on: "r", .ex)
        var effects: [Effect] = []
        #expect(throws: Never.self) { try h.engine.cancelForDeadlock(h.id("b"), into: &effects) }
        #expect(h.render(effects) == ["b EDEADLK"])
        let busy = #expect(throws: DLMError.self) { try h.engine.cancelForDeadlock(h.id("a"), into: &effects) }
        #expect(busy?.status == .busy)
        let unknown = #expect(throws: DLMError.self) {
            try h.engine.cancelForDeadlock(LockID(rawValue: 99), into: &effects)
        }
        #expect(unknown?.status == .noEntry)
    }
}
