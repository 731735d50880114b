/// An owner's bookkeeping: the head of its list of locks.
@usableFromInline
struct OwnerRecord {
    var id: OwnerID
    var head: Int32 = none
    @usableFromInline var lockCount = 0
    /// How many of its locks wait on a convert or wait queue.
    var pendingCount: Int32 = 0
    var isLive = true
    /// An exit's bulk job walks its list: its slot is not freed (and given to a new owner) before the walk ends.
    var isExiting = false
    /// The owner's process id, given to each lock it takes or adopts (`setProcess`); 0 if unknown.
    var pid: UInt32 = 0
    /// The owner's user (uid, from the kernel), kept by its orphans: only that user or root may adopt or purge
    /// them (`mayTakeOver`). `LockEngine.unknownUser` if not known.
    var uid: UInt32 = LockEngine.unknownUser
    /// The account its locks count against (`setAccount`: the shell's number for a user), or -1: none.
    var account: Int32 = -1
}

/// Slot 0 of the owner table holds the orphans: persistent locks whose owner went away.
let orphanOwner: Int32 = 0

extension LockEngine {
    /// The owner's slot, created on first use.
    mutating func ownerSlot(_ id: OwnerID) -> Int32 {
        if let slot = ownerIndex[id] { return slot }
        let slot: Int32
        if let free = freeOwners.popLast() {
            slot = free
            owners[Int(slot)] = OwnerRecord(id: id)
        } else {
            slot = Int32(owners.count)
            owners.append(OwnerRecord(id: id))
        }
        ownerIndex[id] = slot
        return slot
    }

    /// Records the process id and user of an owner (a client's HELLO and its kernel credentials): its locks carry
    /// them, and keep them when they become orphans, for `purgeOrphans` and `mayTakeOver`.
    mutating func setProcess(pid: UInt32, uid: UInt32 = LockEngine.unknownUser, of owner: OwnerID) {
        let slot = Int(ownerSlot(owner))
        owners[slot].pid = pid
        owners[slot].uid = uid
    }

    /// Makes an owner's locks count against `account` (a small number the shell gives each user, for its
    /// quota); the locks it holds already move to it.
    public mutating func setAccount(_ account: Int32, of owner: OwnerID) {
        let slot = Int(ownerSlot(owner))
        let count = owners[slot].lockCount
        if owners[slot].account >= 0 { accountLockCounts[Int(owners[slot].account)] -= count }
        owners[slot].account = account
        guard account >= 0 else { return }
        while accountLockCounts.count <= Int(account) { accountLockCounts.append(0) }
        accountLockCounts[Int(account)] += count
    }

    /// The locks (granted, converting or waiting) an owner holds in this engine.
    public func lockCount(of owner: OwnerID) -> Int {
        ownerIndex[owner].map { owners[Int($0)].lockCount } ?? 0
    }

    /// The number of an owner's slot (made if new), for `lockCount(ofOwnerSlot:)` without a lookup: it stays the
    /// owner's while the owner lives (a slot is given to another only after its owner exited).
    public mutating func ownerSlotNumber(of owner: OwnerID) -> Int32 { ownerSlot(owner) }

    /// The locks of the owner of a slot (`ownerSlotNumber`). Inlinable, as `lockCount(ofAccount:)`: a call of a
    /// non-mutating method of the engine from another module copies the whole engine (about 660 bytes) to pass
    /// it, which cost the lock limits' check 4 to 7 % of a pipelined dlmd's throughput.
    @inlinable public func lockCount(ofOwnerSlot slot: Int32) -> Int { owners[Int(slot)].lockCount }

    /// The locks of the owners of an account (`setAccount`) in this engine.
    @inlinable public func lockCount(ofAccount account: Int32) -> Int {
        account >= 0 && Int(account) < accountLockCounts.count ? accountLockCounts[Int(account)] : 0
    }

    /// The process id of a lock's owner, or of the owner an orphan had; 0 if unknown.
    func processID(of lock: Int32) -> UInt32 {
        let owner = locks[Int(lock)].owner
        return owner == orphanOwner ? orphanProcessIDs[Int(lock)] : owners[Int(owner)].pid
    }

    /// The user of a lock's owner, or of the owner an orphan had; `unknownUser` if unknown.
    func userID(of lock: Int32) -> UInt32 {
        let owner = locks[Int(lock)].owner
        return owner == orphanOwner ? orphanUserIDs[Int(lock)] : owners[Int(owner)].uid
    }

    /// The user of a lock's owner (or, for an orphan, of its former owner); nil if unknown or no such lock.
    public func userID(of lock: LockID) -> UInt32? {
        let slot = lock.slot
        guard slot >= 0, slot < locks.count, !locks[slot].isFree else { return nil }
        let uid = userID(of: Int32(slot))
        return uid == LockEngine.unknownUser ? nil : uid
    }

    /// The uid no user has: the user of a lock taken by an owner whose user is not known (in the engine's own
    /// tests), or of an orphan restored from a store written before users were kept.
    public static let unknownUser = UInt32.max

    /// Whether `uid` may adopt or purge an orphan whose former owner was `holder`: root may any, a user its own,
    /// and anyone allowed into the lockspace an orphan of an unknown user (as before users were kept).
    public static func mayTakeOver(_ holder: UInt32, by uid: UInt32) -> Bool {
        uid == 0 || holder == uid || holder == unknownUser
    }

    /// Puts a lock on an owner's list; a change for the store (`touch`) unless `touching` is false.
    mutating func linkToOwner(_ lock: Int32, _ owner: Int32, touching: Bool = true) {
        let head = owners[Int(owner)].head
        locks[Int(lock)].owner = owner
        locks[Int(lock)].ownerPrev = none
        locks[Int(lock)].ownerNext = head
        if head != none { locks[Int(head)].ownerPrev = lock }
        owners[Int(owner)].head = lock
        owners[Int(owner)].lockCount += 1
        if owners[Int(owner)].account >= 0 { accountLockCounts[Int(owners[Int(owner)].account)] += 1 }
        if touching { touch(locks[Int(lock)].resource, lock: lock) }
    }

    /// Makes a lock an orphan that process `pid` of `node`, of user `uid`, left (on the orphans' list): it counts
    /// against that user's account (`account(ofUser:)`), as its owner's locks did.
    mutating func linkAsOrphan(_ lock: Int32, pid: UInt32, uid: UInt32, node: UInt32, touching: Bool) {
        orphanProcessIDs[Int(lock)] = pid
        orphanUserIDs[Int(lock)] = uid
        orphanNodes[Int(lock)] = node
        linkToOwner(lock, orphanOwner, touching: touching)
        if uid != LockEngine.unknownUser { accountLockCounts[Int(account(ofUser: uid))] += 1 }
    }

    /// The account of a user's locks (`setAccount`), made on first use: the locks of its owners and its orphans
    /// count against it (the per-user quota).
    public mutating func account(ofUser uid: UInt32) -> Int32 {
        if let account = accountsByUser[uid] { return account }
        let account = Int32(accountsByUser.count)
        accountsByUser[uid] = account
        while accountLockCounts.count <= Int(account) { accountLockCounts.append(0) }
        return account
    }

    mutating func unlinkFromOwner(_ lock: Int32) {
        let owner = locks[Int(lock)].owner
        let prev = locks[Int(lock)].ownerPrev
        let next = locks[Int(lock)].ownerNext
        if owner == orphanOwner {
            if let account = accountsByUser[orphanUserIDs[Int(lock)]] { accountLockCounts[Int(account)] -= 1 }
            orphanProcessIDs[Int(lock)] = 0
            orphanUserIDs[Int(lock)] = LockEngine.unknownUser
            orphanNodes[Int(lock)] = 0
        }
        if prev != none { locks[Int(prev)].ownerNext = next } else { owners[Int(owner)].head = next }
        if next != none { locks[Int(next)].ownerPrev = prev }
        locks[Int(lock)].ownerPrev = none
        locks[Int(lock)].ownerNext = none
        owners[Int(owner)].lockCount -= 1
        if owners[Int(owner)].account >= 0 { accountLockCounts[Int(owners[Int(owner)].account)] -= 1 }
        if owner != orphanOwner, owners[Int(owner)].lockCount == 0, !owners[Int(owner)].isLive,
            !owners[Int(owner)].isExiting
        {
            freeOwners.append(owner)
        }
    }

    /// The owner went away: its pending requests and conversions are dropped at once, its non-persistent locks
    /// are released (a PW or EX holder's value block becomes invalid), and its granted persistent locks become
    /// orphans that a request with ORPHAN can adopt. A persistent lock is orphaned only if its parent is too. No
    /// completion goes to the departed owner; others may be granted. An owner with more locks than one slice
    /// (`EngineConfig.bulkSlice`) is done in slices (`continueBulkWork`, BulkWork.swift).
    mutating func ownerExited(_ owner: OwnerID, into effects: inout [Effect]) {
        guard let slot = ownerIndex.removeValue(forKey: owner) else { return }
        // From here on the owner is told nothing, and its slot is freed when its last lock goes
        // (`unlinkFromOwner`).
        owners[Int(slot)].isLive = false
        guard owners[Int(slot)].lockCount > 0 else {
            freeOwners.append(slot)
            return
        }
        // (A job may wait behind others, and its walk takes slices: if the slot were freed when dropping the
        // pending requests, or anything else, took its last lock, a new owner given the slot meanwhile would have
        // its locks released by this job.)
        owners[Int(slot)].isExiting = true
        var job = BulkJob(kind: .ownerExit(owner: slot))
        // The resources of its pending requests grant what they can with the others, after the walk.
        if owners[Int(slot)].pendingCount > 0 { dropPending(of: slot, touched: &job.touched) }
        startBulkJob(job, into: &effects)
    }

    /// Drops the pending requests of an exiting owner and returns its pending conversions to their granted modes,
    /// walking whichever is shorter: its list of locks or the list of every waiting lock.
    mutating func dropPending(of owner: Int32, touched: inout TouchedResources) {
        var pending: [Int32] = []
        pending.reserveCapacity(Int(owners[Int(owner)].pendingCount))
        if waitingCount < owners[Int(owner)].lockCount {
            var cursor = waiting.head
            while cursor != none {
                probe.bulkSteps += 1
                if locks[Int(cursor)].owner == owner { pending.append(cursor) }
                cursor = locks[Int(cursor)].waitNext
            }
        } else {
            var cursor = owners[Int(owner)].head
            while cursor != none {
                probe.bulkSteps += 1
                if let queue = locks[Int(cursor)].queueKind, queue != .grant { pending.append(cursor) }
                cursor = locks[Int(cursor)].ownerNext
            }
        }
        for lock in pending {
            touch(locks[Int(lock)].resource, in: &touched)
            if locks[Int(lock)].queue == QueueKind.convert.rawValue {
                revertConversion(lock)
            } else {
                removeLock(lock)  // a request not granted yet has no sub-locks
            }
        }
    }

    func depth(of lock: Int32) -> Int {
        var depth = 0
        var cursor = locks[Int(lock)].parent
        while cursor != none {
            depth += 1
            cursor = locks[Int(cursor)].parent
        }
        return depth
    }

    /// Adopts an orphan of the requested name and mode (ORPHAN): ENOENT if the resource has no orphan,
    /// EAGAIN if it has orphans of other modes only.
    mutating func adoptOrphan(
        _ request: LockRequest, resource: Int32?, owner: Int32, into effects: inout [Effect]
    ) throws(DLMError) -> LockID {
        guard let resource else { throw .noEntry("no orphan lock on this resource") }
        var otherMode = false
        var otherUser: UInt32?
        let uid = owners[Int(owner)].uid
        var cursor = resources[Int(resource)].grantQueue.head
        while cursor != none {
            probe.adoptionSteps += 1
            let record = locks[Int(cursor)]
            if record.owner == orphanOwner {
                if record.grantedMode != request.mode.rawValue {
                    otherMode = true
                } else if !LockEngine.mayTakeOver(orphanUserIDs[Int(cursor)], by: uid) {
                    otherUser = orphanUserIDs[Int(cursor)]
                } else {
                    unlinkFromOwner(cursor)
                    linkToOwner(cursor, owner)
                    // An adoption is a grant: the lock moves to the end of the grant queue, so that the orphans
                    // still to adopt stay first and the next adoption finds one at once (a queue of 100,000
                    // orphans adopted one by one would otherwise be walked 100,000 times).
                    unlinkFromQueue(cursor, .grant)
                    linkToQueue(cursor, .grant)
                    locks[Int(cursor)].flags = request.flags.union(.persistent).subtracting(.orphan)
                    locks[Int(cursor)].options = LockEngine.options(of: request).union(
                        locks[Int(cursor)].options.intersection(.journalState))
                    locks[Int(cursor)].transaction = request.transaction ?? 0
                    locks[Int(cursor)].priority = request.priority
                    locks[Int(cursor)].blockingSent = 0
                    var completion = Completion(
                        lock: LockID(slot: cursor), owner: request.owner, status: .granted,
                        mode: request.mode)
                    finishGrant(cursor, from: noMode, valueBlock: nil, completion: &completion)
                    effects.append(.completion(completion))
                    // An orphan was told of no one; its new owner learns whom it blocks.
                    revisitIfQueued(resource, into: &effects)
                    return LockID(slot: cursor)
                }
            }
            cursor = record.next
        }
        if let otherUser {
            throw DLMError(
                .notPermitted,
                "the orphan lock on this resource was uid \(otherUser)'s: only that user or root may adopt it")
        }
        if otherMode { throw DLMError(.tryAgain, "the orphan lock on this resource has another mode") }
        throw .noEntry("no orphan lock on this resource")
    }
}

extension LockEngine {
    /// Removes every orphan of `lockspace` whose former owner had process id `pid` (0: the orphans of unknown
    /// pid) and, unless `node` is nil, was a client of node `node` (across nodes, a master holds orphans of every
    /// node's clients), each with its sub-locks, as FORCEUNLOCK would: a sub-lock that has an owner gets an EUNLOCK
    /// completion, and what the release lets through is granted. Orphans of other pids (or nodes) stay, and so do
    /// those that `user` may not take over (`mayTakeOver`: another user's, unless `user` is root). Done in slices
    /// (BulkWork.swift): when it is over, `Effect.finished` tells `requester`, with `context`, how many locks were
    /// removed, sub-locks included, and how many orphans it left for being another user's. ENOENT for an unknown
    /// lockspace (`dlm_ls_purge`).
    mutating func beginPurge(
        lockspace: LockspaceID, pid: UInt32, node: UInt32? = nil, user: UInt32 = 0, requester: OwnerID,
        context: UInt64, into effects: inout [Effect]
    ) throws(DLMError) {
        guard let ls = liveSlot(lockspace) else { throw .noEntry("no such lockspace") }
        startBulkJob(
            BulkJob(kind: .purge(lockspace: ls, pid: pid, node: node, user: user), requester: (requester, context)),
            into: &effects)
    }

    /// `beginPurge` run to its end at once; returns how many locks were removed.
    mutating func purgeOrphans(
        lockspace: LockspaceID, pid: UInt32, into effects: inout [Effect]
    ) throws(DLMError) -> Int {
        var all: [Effect] = []
        try beginPurge(lockspace: lockspace, pid: pid, requester: OwnerID(UInt64.max), context: 0, into: &all)
        finishBulkWork(into: &all)
        var count = 0
        for effect in all {
            if case .finished(let finished) = effect, finished.owner == OwnerID(UInt64.max) {
                count = finished.count
            } else {
                effects.append(effect)
            }
        }
        return count
    }
}
