/// Multi-resource deadlock detection through the wait-for graph between owners (or transactions), which
/// Linux lacks: a request that has waited `deadlockWait` starts a search; a cycle's victim (lowest priority,
/// then youngest request) gets EDEADLK and keeps what it already holds. Conversion deadlocks are found at
/// once, in `GrantRules.swift`.
///
/// A waiting lock waits for: every lock whose granted mode conflicts with its requested mode; every lock
/// queued ahead of it whose requested mode conflicts; and, for a lock queued ahead with a compatible mode,
/// whatever that lock waits for. NODLCKWT takes a lock out as a waiter, NODLCKBLK as a blocker.

/// One edge of the wait-for graph, for a cluster-wide search built on top of the per-node engines. Listing every
/// edge costs as much as their number, which grows with the square of a queue's length: the engine's own search
/// (DeadlockSearch.swift) builds a graph of linear size instead.
public struct WaitForEdge: Sendable, Hashable, Codable {
    public var waiter: DeadlockParticipant
    public var waitingLock: LockID
    public var blocker: DeadlockParticipant
    public var blockingLock: LockID
    public var lockspace: LockspaceID
    public var resource: [UInt8]
    /// The waiting request's deadlock priority and age, to choose a victim the same way everywhere.
    public var priority: UInt8
    public var waitingSince: Instant
}

extension LockEngine {
    /// Who waits or blocks through this lock; nil for an orphan, which never waits.
    func participant(_ lock: Int32) -> DeadlockParticipant? {
        let record = locks[Int(lock)]
        if record.owner == orphanOwner { return nil }
        let owner = owners[Int(record.owner)].id
        if record.transaction != 0 {
            return .transaction(
                TransactionID(node: owner.node, incarnation: owner.incarnation, xid: record.transaction))
        }
        return .owner(owner)
    }

    /// The locks a waiting lock waits for, each once.
    func blockers(of lock: Int32, memo: inout [Int32: [Int32]]) -> [Int32] {
        if let known = memo[lock] { return known }
        let record = locks[Int(lock)]
        let requested = record.requestedMode
        var result: [Int32] = []
        var added = Set<Int32>()
        func add(_ blocker: Int32) {
            if added.insert(blocker).inserted { result.append(blocker) }
        }
        for queue in [QueueKind.grant, .convert] {
            for holder in slots(record.resource, queue) where holder != lock {
                let other = locks[Int(holder)]
                if !ModeTable.compatible(other.grantedMode, requested) && !other.flags.contains(.noDeadlockBlock) {
                    add(holder)
                }
            }
        }
        if !record.flags.contains(.noOrder) {
            var ahead = slots(record.resource, .convert)
            if record.queue == QueueKind.wait.rawValue { ahead += slots(record.resource, .wait) }
            for other in ahead.prefix(while: { $0 != lock }) {
                let otherRecord = locks[Int(other)]
                if !ModeTable.compatible(otherRecord.requestedMode, requested)
                    && !otherRecord.flags.contains(.noDeadlockBlock)
                {
                    add(other)
                } else {
                    for transitive in blockers(of: other, memo: &memo) where transitive != lock { add(transitive) }
                }
            }
        }
        memo[lock] = result
        return result
    }

    /// Every edge of the wait-for graph, in a fixed order (oldest waiter first). Edges between locks of the
    /// same participant are left out: one owner may hold several locks that it orders itself.
    public func waitForEdges() -> [WaitForEdge] {
        var edges: [WaitForEdge] = []
        var memo: [Int32: [Int32]] = [:]
        var cursor = waiting.head
        while cursor != none {
            let record = locks[Int(cursor)]
            if !record.flags.contains(.noDeadlockWait), let waiter = participant(cursor) {
                let resource = resources[Int(record.resource)]
                for blocker in blockers(of: cursor, memo: &memo) {
                    guard let holder = participant(blocker), holder != waiter else { continue }
                    edges.append(
                        WaitForEdge(
                            waiter: waiter, waitingLock: LockID(slot: cursor), blocker: holder,
                            blockingLock: LockID(slot: blocker), lockspace: lockspaceID(slot: resource.lockspace),
                            resource: resource.name, priority: record.priority, waitingSince: record.waitingSince))
                }
            }
            cursor = record.waitNext
        }
        return edges
    }

    /// A cycle of the wait-for graph through the waiting request `lock`: the waiting locks along it, the
    /// given one first; nil if there is none (the search of a deadlock pass, DeadlockSearch.swift).
    public func findDeadlock(from id: LockID) -> [LockID]? {
        let slot = id.slot
        guard slot >= 0, slot < locks.count, !locks[slot].isFree, locks[slot].queue != QueueKind.grant.rawValue,
            !locks[slot].flags.contains(.noDeadlockWait), let who = participant(Int32(slot))
        else { return nil }
        var pass = wholeDeadlockPass()
        guard let node = pass.graph.participantNode[who] else { return nil }
        guard pass.components!.cyclic[Int(pass.components!.component[Int(node)])] else { return nil }
        var budget = Int.max
        return pass.shortestCycle(from: node, through: Int32(slot), budget: &budget)?.map(LockID.init(slot:))
    }

    /// Refuses a waiting request or conversion with EDEADLK, as a cluster-wide search decides (libdlm's
    /// `dlm_ls_deadlock_cancel`). ENOENT for an unknown lock, EBUSY if nothing is pending.
    mutating func cancelForDeadlock(_ id: LockID, into effects: inout [Effect]) throws(DLMError) {
        let slot = id.slot
        guard slot >= 0, slot < locks.count, !locks[slot].isFree else { throw .noEntry("no lock \(id)") }
        guard locks[slot].queue != QueueKind.grant.rawValue else { throw .busy("lock \(id) is not waiting") }
        finishPending(Int32(slot), status: .deadlock, into: &effects)
    }
}
