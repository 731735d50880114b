import DLMTestSupport
import Testing

@testable import DLMCore

/// The deadlock pass (DeadlockSearch.swift) against the wait-for graph as DeadlockDetection.swift defines it:
/// the same cycles, found at linear cost.
@Suite struct DeadlockSearchTests {
    /// Random queues (every mode, NOORDER, NODLCKBLK, NODLCKWT, HEADQUE, QUECVT, transactions, conversions):
    /// from every waiting request, `findDeadlock` finds a cycle exactly when the graph of `waitForEdges` has one
    /// through that request, and each step of the cycle it returns is an edge of that graph.
    @Test(arguments: 0..<8)
    func theLinearGraphFindsTheSameCyclesAsTheEdges(part: Int) throws {
        var cycles = 0
        for seed in UInt64(part * 250)..<UInt64(part * 250 + 250) {
            var random = SplitMix64(seed: seed)
            var engine = LockEngine(config: EngineConfig(deadlockWait: 0))
            let ls = try engine.createLockspace(name: Array("ls".utf8))
            let owners = 2 + random.below(5)
            let resources = 1 + random.below(4)
            var ids: [(LockID, OwnerID)] = []
            var effects: [Effect] = []
            for _ in 0..<(10 + random.below(40)) {
                let owner = OwnerID(UInt64(1 + random.below(owners)))
                if !ids.isEmpty && random.percent(35) {
                    let (id, holder) = random.element(ids)
                    var flags: LockFlags = []
                    for flag in [LockFlags.queueConversion, .headOfQueue, .noOrder, .noDeadlockWait, .noDeadlockBlock]
                    where random.percent(12) { flags.insert(flag) }
                    _ = try? engine.convert(
                        ConvertRequest(lock: id, owner: holder, mode: random.mode(), flags: flags), into: &effects)
                    continue
                }
                var flags: LockFlags = []
                for flag in [LockFlags.headOfQueue, .noOrder, .noDeadlockWait, .noDeadlockBlock]
                where random.percent(10) {
                    flags.insert(flag)
                }
                let request = LockRequest(
                    lockspace: ls, owner: owner, name: Array("r\(random.below(resources))".utf8), mode: random.mode(),
                    flags: flags, transaction: random.percent(20) ? UInt64(1 + random.below(3)) : nil)
                if let id = try? engine.lock(request, into: &effects) { ids.append((id, owner)) }
            }
            let edges = engine.waitForEdges()
            for (id, _) in ids {
                guard let state = engine.lockState(id), state.queue != .grant,
                    !state.flags.contains(.noDeadlockWait)
                else { continue }
                let expected = Self.cycleExists(from: id, edges)
                let found = engine.findDeadlock(from: id)
                if expected { cycles += 1 }
                #expect((found != nil) == expected, "seed \(seed), lock \(id): edges \(edges)")
                if let found {
                    #expect(found.first == id)
                    for (i, lock) in found.enumerated() {
                        let next = engine.lockState(found[(i + 1) % found.count])!
                        let blocker: DeadlockParticipant =
                            next.transaction.map { .transaction(TransactionID(xid: $0)) } ?? .owner(next.owner!)
                        #expect(
                            edges.contains { $0.waitingLock == lock && $0.blocker == blocker },
                            "seed \(seed): \(found) is not a cycle of \(edges)")
                    }
                }
            }
        }
        // About 2,400 requests of each part's seeds are on a cycle: the test compares cycles, not only their absence.
        #expect(cycles > 1_000)
    }

    /// A cycle of the participants' graph that leaves through the lock `start`.
    static func cycleExists(from start: LockID, _ edges: [WaitForEdge]) -> Bool {
        guard let target = edges.first(where: { $0.waitingLock == start })?.waiter else { return false }
        var frontier = edges.filter { $0.waitingLock == start }.map(\.blocker)
        var seen = Set<DeadlockParticipant>()
        while let who = frontier.popLast() {
            if who == target { return true }
            guard seen.insert(who).inserted else { continue }
            frontier += edges.filter { $0.waiter == who }.map(\.blocker)
        }
        return false
    }

    /// W requests for EX behind one holder: each waits for every one ahead (W² / 2 edges), the pass takes a few
    /// steps per request (a copy of the queue, some set nodes, their edges), and a second pass over unchanged
    /// queues is not run. Counted by the engine's probe, not timed.
    @Test func aPassOverALongQueueIsLinear() throws {
        for waiters in [1_000, 10_000] {
            var engine = LockEngine()
            let ls = try engine.createLockspace(name: Array("ls".utf8))
            var effects: [Effect] = []
            _ = try engine.lock(
                LockRequest(lockspace: ls, owner: OwnerID(1), name: Array("hot".utf8), mode: .ex), into: &effects)
            for owner in 2...(waiters + 1) {
                _ = try engine.lock(
                    LockRequest(lockspace: ls, owner: OwnerID(UInt64(owner)), name: Array("hot".utf8), mode: .ex),
                    into: &effects)
            }
            effects.removeAll()
            engine.tick(now: second, into: &effects)
            #expect(effects.isEmpty)
            #expect(engine.probe.deadlockPasses == 1)
            var tick = second
            while engine.isSearchingDeadlocks {
                tick += second / 100
                engine.tick(now: tick, into: &effects)
            }
            #expect(engine.probe.deadlockSteps <= 24 * waiters, "\(engine.probe.deadlockSteps) steps for \(waiters)")
            for step in 2...20 { engine.tick(now: UInt64(step) * second, into: &effects) }
            #expect(engine.probe.deadlockPasses == 1)
        }
    }

    /// A real cycle hidden among 10,000 waiters on other resources is found within `deadlockWait` and a second.
    @Test func aCycleAmongManyWaitersIsFound() throws {
        var h = Harness()
        _ = h.lock("a", by: 1, on: "x", .ex)
        _ = h.lock("b", by: 2, on: "y", .ex)
        for i in 0..<100 { _ = h.lock("h\(i)", by: 3, on: "hot\(i)", .ex) }
        for owner in 10..<10_010 { _ = h.lock("q\(owner)", by: UInt64(owner), on: "hot\(owner % 100)", .pr) }
        #expect(h.engine.lockCount == 10_102)
        _ = h.tick(second / 2)
        _ = h.lock("wa", by: 1, on: "y", .ex)
        _ = h.lock("wb", by: 2, on: "x", .ex)
        // Ticks every 10 ms, as dlmd's: the pass over 10,000 requests takes a few slices. The victim comes within
        // `deadlockWait` plus a second of the cycle closing (the floor of the issue), and it alone.
        var seen: [String] = []
        var now = second / 2
        while seen.isEmpty && now < second / 2 + 2 * second {
            now += second / 100
            seen += h.tick(now)
        }
        #expect(seen == ["wb EDEADLK"])
        #expect(now <= second / 2 + second + second, "found at \(now) ns")
    }
}
