import DequeModule

/// Work that is large by nature (an owner exiting with a million locks, a purge, a forced release of a lockspace)
/// is done in slices of at most `EngineConfig.bulkSlice` steps, so that the shell serves other clients and group
/// services between slices: the first slice runs with the input that started the job, the shell calls
/// `continueBulkWork` for the others while `hasBulkWork`. Jobs run one after another, in the order they were
/// started. Each job walks what it works on once (an owner's list of locks, the orphans, the lock slots), so a
/// job is linear in its locks; `probe.bulkSteps` counts its steps.
///
/// What others see meanwhile: the locks a job has not reached yet are still there and block as before; a request
/// that arrives between slices is handled as if the job had paused there. An exiting owner's pending requests and
/// conversions are dropped before the first slice, so none of them is ever granted.
struct BulkJob {
    enum Kind {
        /// The locks of an owner that went away: released, or orphaned when persistent.
        case ownerExit(owner: Int32)
        /// The orphans of a lockspace whose former owner had a process id, with their sub-locks.
        /// The orphans of a process (`pid`) of `node` (nil: of any node) that `user` may take over.
        case purge(lockspace: UInt32, pid: UInt32, node: UInt32?, user: UInt32)
        /// Every lock of a lockspace that a forced release dropped, each owner told (`dropLocks`).
        case forcedRelease(lockspace: UInt32)
        /// The sub-locks of a lock that FORCEUNLOCK releases, deepest first, then the lock itself.
        case forceUnlock(UnlockRequest, root: Int32, writes: Bool)
    }

    var kind: Kind
    /// Whom to tell when the job is done (`Effect.finished`), with the shell's context; nil: nobody.
    var requester: (owner: OwnerID, context: UInt64)?
    /// The next lock of the list walked, or the next lock slot of a forced release.
    var cursor: Int32 = none
    var started = false
    /// The walk of its list is over (an owner's exit: the owner's slot was given back then, and the job, whose grants
    /// may take more slices, must never look at that slot again: a new owner may have it).
    var walked = false
    /// Locks to release that still had sub-locks when reached: released once the walk is over.
    var deferred: [Int32] = []
    /// FORCEUNLOCK: the parents being walked, each with its sub-locks in slot order and the next to look at.
    var parents: [(parent: Int32, children: [Int32], next: Int)] = []
    /// The resources the job changed. Each grants what it can (and is freed if unused) once the walk is over, so
    /// that a resource's outcome is the one of an exit done at once: a waiter is never granted past a lock of the
    /// exiting owner that the walk has not reached yet, nor before a value block it held becomes invalid.
    var touched = TouchedResources()
    /// How many of `touched` granted what they could.
    var granted = 0
    /// How many locks the job removed.
    var removed = 0
    /// A purge: how many orphans it left for being another user's.
    var skipped = 0
}

/// Counts of the engine's work, so that a test can tell a linear path from a quadratic one without a clock.
public struct WorkProbe: Sendable, Hashable {
    /// Steps of bulk jobs: locks and slots looked at.
    public var bulkSteps = 0
    /// Nodes and edges of the wait-for graphs built by deadlock passes, and locks looked at to check a cycle.
    public var deadlockSteps = 0
    /// Deadlock passes that built a graph.
    public var deadlockPasses = 0
    /// Locks looked at to find an orphan to adopt.
    public var adoptionSteps = 0

    public init() {}
}

/// Resources, each once, in the order first touched; a resource's mark `inBulkJob` says it is on the list, so that
/// a list of a million resources needs no set beside it (growing one stalls a slice).
struct TouchedResources {
    var order: [Int32] = []
}

extension LockEngine {
    /// Whether a bulk job waits for `continueBulkWork`.
    public var hasBulkWork: Bool { !bulkJobs.isEmpty }

    /// How many bulk jobs are not finished.
    public var bulkJobCount: Int { bulkJobs.count }

    /// Whether a FORCEUNLOCK of this lock is releasing its sub-locks in slices: its completion comes at the end.
    public func isUnlockingInSlices(_ id: LockID) -> Bool {
        let slot = id.slot
        return slot >= 0 && slot < locks.count && !locks[slot].isFree && locks[slot].options.contains(.unlocking)
    }

    /// Runs one slice of the bulk jobs (at most `config.bulkSlice` steps), appending its effects.
    mutating func continueBulkWork(into effects: inout [Effect]) {
        var budget = config.bulkSlice
        while budget > 0, var job = bulkJobs.popFirst() {
            if runSlice(&job, budget: &budget, into: &effects) {
                if let requester = job.requester {
                    effects.append(
                        .finished(
                            Finished(
                                owner: requester.owner, context: requester.context, count: job.removed,
                                skipped: job.skipped)))
                }
            } else {
                bulkJobs.prepend(job)
            }
        }
    }

    /// Queues a job; if no other job runs, its first slice runs now.
    mutating func startBulkJob(_ job: BulkJob, into effects: inout [Effect]) {
        bulkJobs.append(job)
        if bulkJobs.count == 1 { continueBulkWork(into: &effects) }
    }

    /// Runs every bulk job to its end (for callers that want the whole effect at once, like the tests).
    mutating func finishBulkWork(into effects: inout [Effect]) {
        while hasBulkWork { continueBulkWork(into: &effects) }
    }

    /// Runs `job` until it is done (true) or the budget is spent: the walk, then the grants it allows.
    mutating func runSlice(_ job: inout BulkJob, budget: inout Int, into effects: inout [Effect]) -> Bool {
        let walked: Bool
        switch job.kind {
        case .ownerExit(let owner):
            walked =
                job.walked
                || walkList(&job, of: owner, budget: &budget, effects: &effects) {
                    engine, lock, touched, _ in engine.exitOne(lock, owner: owner, touched: &touched)
                }
            if walked, !job.walked {
                // The walk took every lock of the owner: its slot may serve a new owner. (Once: in a later slice of
                // this job's grants, the slot may be a new owner's, one that is exiting too and whose own job waits
                // behind this one. Freeing the slot again then gave it to a third owner, whose locks that job
                // released: RecoveryRandomTests seed 62729.)
                job.walked = true
                owners[Int(owner)].isExiting = false
                if owners[Int(owner)].lockCount == 0 { freeOwners.append(owner) }
            }
        case .purge(let lockspace, let pid, let node, let user):
            var skipped = 0
            walked = walkList(&job, of: orphanOwner, budget: &budget, effects: &effects) {
                engine, lock, touched, effects in
                guard engine.resources[Int(engine.locks[Int(lock)].resource)].lockspace == lockspace,
                    engine.processID(of: lock) == pid, node == nil || engine.orphanNodes[Int(lock)] == node
                else { return 0 }
                guard LockEngine.mayTakeOver(engine.orphanUserIDs[Int(lock)], by: user) else {
                    skipped += 1
                    return 0
                }
                // With sub-locks, after the walk: they may be the next locks of the list.
                if engine.locks[Int(lock)].children > 0 { return -1 }
                return engine.removeWithSubLocks(lock, touched: &touched, into: &effects)
            }
            job.skipped += skipped
        case .forceUnlock(let request, let root, let writes):
            return forceUnlockSlice(&job, request, root: root, writes: writes, budget: &budget, into: &effects)
        case .forcedRelease(let lockspace):
            guard dropLocks(&job, of: lockspace, budget: &budget, into: &effects) else { return false }
            lockspaces[Int(lockspace)].isDraining = false
            forgetLockspaceName(Int(lockspace))
            return true
        }
        guard walked else { return false }
        while job.granted < job.touched.order.count {
            guard budget > 0 else { return false }
            budget -= 1
            probe.bulkSteps += 1
            let resource = job.touched.order[job.granted]
            job.granted += 1
            guard !resources[Int(resource)].isFree else { continue }
            resources[Int(resource)].marks &= ~ResourceMark.inBulkJob
            if lockspaces[Int(resources[Int(resource)].lockspace)].isLive {
                grantPending(resource, into: &effects)
            }
            freeResourceIfUnused(resource)
        }
        return true
    }

    /// Walks a list of locks (an owner's, or the orphans') from the job's cursor, calling `visit` on each (it
    /// returns how many locks it removed, or -1 to defer a lock with sub-locks), until the list or the budget
    /// ends; then the deferred locks. A cursor that something else took out of the list since the last slice
    /// sends the walk back to the head: what was done is gone from the list.
    mutating func walkList(
        _ job: inout BulkJob, of owner: Int32, budget: inout Int, effects: inout [Effect],
        _ visit: (inout LockEngine, Int32, inout TouchedResources, inout [Effect]) -> Int
    ) -> Bool {
        if !job.started {
            job.started = true
            job.cursor = owners[Int(owner)].head
        } else if job.cursor != none && (locks[Int(job.cursor)].isFree || locks[Int(job.cursor)].owner != owner) {
            job.cursor = owners[Int(owner)].head
        }
        while job.cursor != none {
            guard budget > 0 else { return false }
            budget -= 1
            probe.bulkSteps += 1
            let lock = job.cursor
            job.cursor = locks[Int(lock)].ownerNext
            let removed = visit(&self, lock, &job.touched, &effects)
            if removed < 0 { job.deferred.append(lock) } else { job.removed += removed }
        }
        // Locks that had sub-locks when reached, last reached first; a lock deferred twice (after a walk started
        // again) is gone the second time.
        while let lock = job.deferred.last {
            guard budget > 0 else { return false }
            budget -= 1
            probe.bulkSteps += 1
            job.deferred.removeLast()
            guard !locks[Int(lock)].isFree, locks[Int(lock)].owner == owner else { continue }
            job.removed += removeWithSubLocks(lock, touched: &job.touched, into: &effects)
        }
        return true
    }

    /// Puts a resource on a job's list of resources to grant from, once.
    mutating func touch(_ resource: Int32, in touched: inout TouchedResources) {
        guard resources[Int(resource)].marks & ResourceMark.inBulkJob == 0 else { return }
        resources[Int(resource)].marks |= ResourceMark.inBulkJob
        touched.order.append(resource)
    }

    /// Removes a lock and, first, every sub-lock of it (as FORCEUNLOCK does: a sub-lock with an owner gets
    /// EUNLOCK); returns how many locks went.
    mutating func removeWithSubLocks(
        _ lock: Int32, touched: inout TouchedResources, into effects: inout [Effect]
    ) -> Int {
        let before = liveLocks
        if locks[Int(lock)].children > 0 { forceUnlockChildren(of: lock, into: &effects) }
        touch(locks[Int(lock)].resource, in: &touched)
        removeLock(lock)
        return before - liveLocks
    }

    /// One lock of an exiting owner: kept as an orphan if it is persistent and so is each parent of the same
    /// owner (a persistent lock is orphaned only with its parent), else released (a PW or EX holder's value block
    /// becomes invalid). A lock to release that still has sub-locks is deferred (-1).
    mutating func exitOne(_ lock: Int32, owner: Int32, touched: inout TouchedResources) -> Int {
        let resource = locks[Int(lock)].resource
        if keepsAsOrphan(lock, owner: owner) {
            touch(resource, in: &touched)
            unlinkFromOwner(lock)
            // Not a change for the store: every stored lock comes back as an orphan anyway (`restoreStored`), with
            // the pid it keeps. Writing a million orphaned locks again would only load the disk.
            linkAsOrphan(
                lock, pid: owners[Int(owner)].pid, uid: owners[Int(owner)].uid, node: owners[Int(owner)].id.node,
                touching: false)
            // Its replica must say it is an orphan now (its holder no longer resends it if the master dies).
            replicaChanged(resource)
            return 0
        }
        if locks[Int(lock)].grantedMode >= LockMode.pw.rawValue, locks[Int(lock)].isGranted {
            resources[Int(resource)].valueBlockInvalid = true
            replicate(resource)
            touch(resource)
        }
        if locks[Int(lock)].children > 0 { return -1 }
        touch(resource, in: &touched)
        removeLock(lock)
        return 1
    }

    /// Whether a granted lock of an exiting owner becomes an orphan: it and every parent of the same owner are
    /// persistent.
    func keepsAsOrphan(_ lock: Int32, owner: Int32) -> Bool {
        var cursor = lock
        while cursor != none && locks[Int(cursor)].owner == owner {
            guard locks[Int(cursor)].flags.contains(.persistent), locks[Int(cursor)].isGranted else { return false }
            cursor = locks[Int(cursor)].parent
        }
        return true
    }

    /// A forced release: walks the lock slots from the cursor and drops each lock of the lockspace; locks with
    /// sub-locks are dropped after the walk, once their sub-locks (all in the same lockspace) are gone. Each lock's
    /// owner is told that it was taken away (`dropLock`); nothing else is granted, since the lockspace is gone.
    mutating func dropLocks(
        _ job: inout BulkJob, of lockspace: UInt32, budget: inout Int, into effects: inout [Effect]
    ) -> Bool {
        if !job.started {
            job.started = true
            job.cursor = 0
        }
        // Looking at a slot costs less than dropping a lock: a slice looks at up to 8 slots per step.
        var looks = 0
        while Int(job.cursor) < locks.count {
            guard budget > 0 else { return false }
            looks += 1
            if looks == 8 {
                looks = 0
                budget -= 1
            }
            probe.bulkSteps += 1
            let slot = job.cursor
            job.cursor += 1
            let record = locks[Int(slot)]
            guard !record.isFree, resources[Int(record.resource)].lockspace == lockspace else { continue }
            if record.children > 0 {
                job.deferred.append(slot)
                continue
            }
            budget -= 1
            dropLock(slot, into: &effects)
            job.removed += 1
        }
        // Parents, deepest first: a parent is deferred after its sub-locks (slot order does not say which is
        // deeper), so sort by depth once.
        if !job.deferred.isEmpty {
            job.deferred.sort { (depth(of: $0), $0) < (depth(of: $1), $1) }
        }
        while let lock = job.deferred.last {
            guard budget > 0 else { return false }
            budget -= 1
            probe.bulkSteps += 1
            job.deferred.removeLast()
            if locks[Int(lock)].isFree { continue }
            dropLock(lock, into: &effects)
            job.removed += 1
        }
        return true
    }

    /// Drops a lock of a lockspace that is being released, and its resource if that was the last lock. Its owner
    /// gets an untagged completion: EUNLOCK for a lock that held a mode (its conversion, if one waited, goes with
    /// it), ECANCEL for a request never granted; an orphan has no one to tell.
    mutating func dropLock(_ lock: Int32, into effects: inout [Effect]) {
        let record = locks[Int(lock)]
        let resource = record.resource
        if record.owner != orphanOwner {
            effects.append(
                .completion(
                    Completion(
                        lock: LockID(slot: lock), owner: owners[Int(record.owner)].id,
                        status: record.isGranted ? .unlocked : .cancelled, mode: nil,
                        valueBlockSequence: resources[Int(resource)].valueBlockSequence)))
        }
        removeLock(lock)
        freeResourceIfUnused(resource)
    }

    /// Starts a FORCEUNLOCK of a lock with many sub-locks: the lock and its sub-locks that have sub-locks take no
    /// new sub-lock and no other operation meanwhile.
    mutating func startForceUnlock(
        _ lock: Int32, _ request: UnlockRequest, writes: Bool, into effects: inout [Effect]
    ) {
        locks[Int(lock)].options.insert(.unlocking)
        var job = BulkJob(kind: .forceUnlock(request, root: lock, writes: writes))
        job.parents = [(lock, subLocks[lock].map { $0.sorted() } ?? [], 0)]
        startBulkJob(job, into: &effects)
    }

    /// A slice of a FORCEUNLOCK: a walk of the sub-locks in the order of `forceUnlockChildren` (in slot order, a
    /// sub-lock's own sub-locks before it), each with its EUNLOCK completion and what its release lets through;
    /// then the lock itself. A sub-lock that went meanwhile (its owner unlocked it) is passed over.
    mutating func forceUnlockSlice(
        _ job: inout BulkJob, _ request: UnlockRequest, root: Int32, writes: Bool, budget: inout Int,
        into effects: inout [Effect]
    ) -> Bool {
        while let top = job.parents.last {
            guard budget > 0 else { return false }
            budget -= 1
            probe.bulkSteps += 1
            if top.next < top.children.count {
                let child = top.children[top.next]
                job.parents[job.parents.count - 1].next += 1
                guard !locks[Int(child)].isFree, locks[Int(child)].parent == top.parent else { continue }
                if locks[Int(child)].children > 0 {
                    locks[Int(child)].options.insert(.unlocking)
                    job.parents.append((child, subLocks[child].map { $0.sorted() } ?? [], 0))
                    continue
                }
                releaseSubLock(child, into: &effects)
                job.removed += 1
                continue
            }
            job.parents.removeLast()
            if top.parent != root {
                releaseSubLock(top.parent, into: &effects)
                job.removed += 1
            }
        }
        // The lock itself, as an unlock done at once would end.
        guard !locks[Int(root)].isFree else { return true }
        locks[Int(root)].options.remove(.unlocking)
        finishUnlock(root, request, writes: writes, into: &effects)
        return true
    }

    /// One sub-lock of a FORCEUNLOCK: its completion (an orphan has no one to tell), then its release.
    mutating func releaseSubLock(_ lock: Int32, into effects: inout [Effect]) {
        let record = locks[Int(lock)]
        if record.owner != orphanOwner {
            effects.append(
                .completion(
                    Completion(
                        lock: LockID(slot: lock), owner: owners[Int(record.owner)].id, status: .unlocked,
                        mode: nil, valueBlockSequence: resources[Int(record.resource)].valueBlockSequence)))
        }
        removeLock(lock)
        if lockspaces[Int(resources[Int(record.resource)].lockspace)].isLive {
            grantPending(record.resource, into: &effects)
        }
        freeResourceIfUnused(record.resource)
    }
}
