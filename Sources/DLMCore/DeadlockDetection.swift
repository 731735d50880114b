/// Multi-resource deadlock detection through the wait-for graph between owners (or transactions), which
/// Linux lacks: a request that has waited `deadlockWait` starts a search; a cycle's victim (lowest priority,
/// then youngest request) gets EDEADLK and keeps what it already holds. Conversion deadlocks are found at
/// once, in `GrantRules.swift`.
///
/// A waiting lock waits for: every lock whose granted mode conflicts with its requested mode; every lock
/// queued ahead of it whose requested mode conflicts; and, for a lock queued ahead with a compatible mode,
/// whatever that lock waits for. NODLCKWT takes a lock out as a waiter, NODLCKBLK as a blocker.

/// One edge of the wait-for graph, for a cluster-wide search built on top of the per-node engines.
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
        if record.transaction != 0 { return .transaction(record.transaction) }
        if record.owner == orphanOwner { return nil }
        return .owner(owners[Int(record.owner)].id)
    }

    /// The locks a waiting lock waits for, each once.
    func blockers(of lock: Int32, memo: inout [Int32: [Int32]]) -> [Int32] {
        if let known = memo[lock] { return known }
        let record = locks[Int(lock)]
        let requested = record.requestedMode
        var result: [Int32] = []
        func add(_ blocker: Int32) {
            if !result.contains(blocker) { result.append(blocker) }
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
                            blockingLock: LockID(slot: blocker), lockspace: LockspaceID(rawValue: resource.lockspace),
                            resource: resource.name, priority: record.priority, waitingSince: record.waitingSince))
                }
            }
            cursor = record.waitNext
        }
        return edges
    }

    /// A cycle of the wait-for graph through the waiting request `lock`: the waiting locks along it, the
    /// given one first; nil if there is none.
    public func findDeadlock(from id: LockID) -> [LockID]? {
        let slot = id.slot
        guard slot >= 0, slot < locks.count, !locks[slot].isFree else { return nil }
        return findCycle(from: Int32(slot)).map { $0.map(LockID.init(slot:)) }
    }

    /// What the searches of one tick share: each participant's waiting locks, and each lock's blockers as they
    /// are found. Valid until the queues change (a victim is refused).
    struct WaitForIndex {
        var waitingBy: [DeadlockParticipant: [Int32]] = [:]
        var blockers: [Int32: [Int32]] = [:]
    }

    func waitForIndex() -> WaitForIndex {
        var index = WaitForIndex()
        var cursor = waiting.head
        while cursor != none {
            if !locks[Int(cursor)].flags.contains(.noDeadlockWait), let who = participant(cursor) {
                index.waitingBy[who, default: []].append(cursor)
            }
            cursor = locks[Int(cursor)].waitNext
        }
        return index
    }

    func findCycle(from start: Int32) -> [Int32]? {
        var index: WaitForIndex?
        return findCycle(from: start, index: &index)
    }

    /// `index` is built on first need and kept for the next search.
    func findCycle(from start: Int32, index: inout WaitForIndex?) -> [Int32]? {
        let record = locks[Int(start)]
        guard record.queue == QueueKind.convert.rawValue || record.queue == QueueKind.wait.rawValue,
            !record.flags.contains(.noDeadlockWait), let target = participant(start)
        else { return nil }
        if index == nil { index = waitForIndex() }
        let waitingBy = index!.waitingBy
        // Taken out while searching (and put back after), so that adding to it copies nothing.
        var memo: [Int32: [Int32]] = [:]
        swap(&memo, &index!.blockers)
        defer { swap(&memo, &index!.blockers) }
        var visited: Set<DeadlockParticipant> = [target]
        // Depth-first over participants. A frame holds one participant's waiting locks, the one being
        // followed, its blockers and the next blocker to try; the path is the followed lock of each frame.
        struct Frame {
            var locks: [Int32]
            var current = 0
            var blockers: [Int32]
            var next = 0
        }
        var stack = [Frame(locks: [start], blockers: blockers(of: start, memo: &memo))]
        while !stack.isEmpty {
            let top = stack.count - 1
            if stack[top].next < stack[top].blockers.count {
                let blocker = stack[top].blockers[stack[top].next]
                stack[top].next += 1
                let waiter = participant(stack[top].locks[stack[top].current])
                guard let holder = participant(blocker), holder != waiter else { continue }
                if holder == target { return stack.map { $0.locks[$0.current] } }
                if visited.insert(holder).inserted, let theirs = waitingBy[holder] {
                    stack.append(Frame(locks: theirs, blockers: blockers(of: theirs[0], memo: &memo)))
                }
            } else if stack[top].current + 1 < stack[top].locks.count {
                stack[top].current += 1
                stack[top].blockers = blockers(of: stack[top].locks[stack[top].current], memo: &memo)
                stack[top].next = 0
            } else {
                stack.removeLast()
            }
        }
        return nil
    }

    /// Runs the deadlock searches that are due, resolves each cycle found, and searches again later for
    /// requests that still wait.
    mutating func searchDueDeadlocks(into effects: inout [Effect]) {
        guard config.deadlockWait > 0 else { return }
        var index: WaitForIndex?
        while let first = deadlockChecks.first, first.due <= now {
            deadlockChecks.removeFirst()
            guard isCurrent(first) else { continue }
            if let cycle = findCycle(from: first.lock, index: &index) {
                let victim = cycle.min { a, b in
                    let x = locks[Int(a)]
                    let y = locks[Int(b)]
                    return (x.priority, ~x.waitingSince, ~x.waitSequence) < (
                        y.priority, ~y.waitingSince, ~y.waitSequence
                    )
                }!
                finishPending(victim, status: .deadlock, into: &effects)
                index = nil  // the queues changed
            }
            if isCurrent(first) {
                deadlockChecks.append(
                    TimerEntry(due: now &+ config.deadlockWait, lock: first.lock, sequence: first.sequence))
            }
        }
    }

    /// Refuses a waiting request or conversion with EDEADLK, as a cluster-wide search decides (libdlm's
    /// `dlm_ls_deadlock_cancel`). ENOENT for an unknown lock, EBUSY if nothing is pending.
    public mutating func cancelForDeadlock(_ id: LockID, into effects: inout [Effect]) throws(DLMError) {
        let slot = id.slot
        guard slot >= 0, slot < locks.count, !locks[slot].isFree else { throw .noEntry("no lock \(id)") }
        guard locks[slot].queue != QueueKind.grant.rawValue else { throw .busy("lock \(id) is not waiting") }
        finishPending(Int32(slot), status: .deadlock, into: &effects)
    }
}
