import Testing

@testable import DLMCore

/// The engine's side of deadlock detection across nodes (ClusterDeadlocks.swift): each master's part of the
/// wait-for graph, the parts joined at their participants, and the check of a cycle's steps before a victim.
@Suite struct ClusterDeadlockTests {
    /// Two masters: on the first, owner 1 holds x and owner 2 waits for it; on the second, owner 2 holds y and
    /// owner 1 waits for it. Neither engine sees a cycle; their parts joined do, through both masters.
    static func twoMasters() -> (first: Harness, second: Harness) {
        var first = Harness()
        var second = Harness()
        _ = first.lock("x1", by: 1, on: "x", .ex)
        _ = first.lock("x2", by: 2, on: "x", .ex)
        _ = second.lock("y2", by: 2, on: "y", .ex)
        _ = second.lock("y1", by: 1, on: "y", .ex)
        return (first, second)
    }

    static func step(_ h: Harness, _ label: String) -> (lock: LockID, waitSequence: UInt32) {
        (h.id(label), h.state(label)!.waitSequence)
    }

    @Test func partsOfTwoMastersJoinIntoACycleNeitherSeesAlone() {
        let (first, second) = Self.twoMasters()
        #expect(first.engine.findDeadlock(from: first.id("x2")) == nil)
        #expect(second.engine.findDeadlock(from: second.id("y1")) == nil)
        var graph = ClusterWaitForGraph()
        graph.add(first.engine.waitForGraphPart(), of: 1)
        graph.add(second.engine.waitForGraphPart(), of: 2)
        let cycles = graph.cyclesAcrossMasters(through: [Self.step(first, "x2")], of: 1)
        #expect(cycles.count == 1)
        let cycle = cycles.first ?? []
        #expect(cycle.map(\.master) == [1, 2])
        #expect(cycle.map(\.waiter) == [.owner(OwnerID(2)), .owner(OwnerID(1))])
        #expect(cycle.first?.lock == first.id("x2"))
        // Each master confirms its step: it waits for the next step's participant.
        let x2 = first.engine.checkDeadlockStep(
            first.id("x2"), waitSequence: cycle[0].waitSequence, blocker: .owner(OwnerID(1)))
        let y1 = second.engine.checkDeadlockStep(
            second.id("y1"), waitSequence: cycle[1].waitSequence, blocker: .owner(OwnerID(2)))
        #expect(x2.waits && y1.waits)
        // Not for a participant it does not wait for.
        #expect(
            !first.engine.checkDeadlockStep(
                first.id("x2"), waitSequence: cycle[0].waitSequence, blocker: .owner(OwnerID(3))
            ).waits)
    }

    /// The victim: lowest priority, then the shortest wait; none when a step no longer waits.
    @Test func theVictimIsTheLowestPriorityThenTheYoungest() {
        let a = DeadlockStep(master: 1, lock: LockID(rawValue: 1), waitSequence: 1, waiter: .owner(OwnerID(1)))
        let b = DeadlockStep(master: 2, lock: LockID(rawValue: 1), waitSequence: 1, waiter: .owner(OwnerID(2)))
        let old = DeadlockStepState(waits: true, priority: 0, waited: 5_000)
        let young = DeadlockStepState(waits: true, priority: 0, waited: 1_000)
        #expect(DeadlockStepState.victim(of: [(a, old), (b, young)]) == b)
        #expect(DeadlockStepState.victim(of: [(a, young), (b, old)]) == a)
        let low = DeadlockStepState(waits: true, priority: 0, waited: 5_000)
        let high = DeadlockStepState(waits: true, priority: 9, waited: 1_000)
        #expect(DeadlockStepState.victim(of: [(a, low), (b, high)]) == a)
        let gone = DeadlockStepState(waits: false, priority: 0, waited: 0)
        #expect(DeadlockStepState.victim(of: [(a, old), (b, gone)]) == nil)
    }

    /// A lock that stopped waiting and waits again is another wait: a check or a victim of the old one does nothing.
    @Test func anotherWaitOfTheSameLockIsNotTheOneSearched() {
        var (first, _) = Self.twoMasters()
        let old = Self.step(first, "x2")
        _ = first.cancel("x2")
        _ = first.lock("x2", by: 2, on: "x", .ex)
        let new = Self.step(first, "x2")
        #expect(new.lock == old.lock)
        #expect(new.waitSequence != old.waitSequence)
        #expect(
            !first.engine.checkDeadlockStep(old.lock, waitSequence: old.waitSequence, blocker: .owner(OwnerID(1))).waits
        )
        var effects: [Effect] = []
        first.engine.handle(.deadlockVictim(old.lock, waitSequence: old.waitSequence), into: &effects)
        #expect(first.render(effects) == [])
        first.engine.handle(.deadlockVictim(new.lock, waitSequence: new.waitSequence), into: &effects)
        #expect(first.render(effects) == ["x2 EDEADLK"])
        #expect(first.state("x1")?.grantedMode == .ex)
    }

    /// A cycle on one master's resources is that engine's own to find: the search across nodes leaves it.
    @Test func aCycleOnOneMasterIsLeftToItsEngine() {
        var h = Harness()
        _ = h.lock("x1", by: 1, on: "x", .ex)
        _ = h.lock("y2", by: 2, on: "y", .ex)
        _ = h.lock("x2", by: 2, on: "x", .ex)
        _ = h.lock("y1", by: 1, on: "y", .ex)
        #expect(h.engine.findDeadlock(from: h.id("x2")) != nil)
        var graph = ClusterWaitForGraph()
        graph.add(h.engine.waitForGraphPart(), of: 1)
        #expect(graph.cyclesAcrossMasters(through: [Self.step(h, "x2"), Self.step(h, "y1")], of: 1).isEmpty)
    }
}
