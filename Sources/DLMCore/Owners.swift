/// An owner's bookkeeping: the head of its list of locks.
struct OwnerRecord {
    var id: OwnerID
    var head: Int32 = none
    var lockCount = 0
    var isLive = true
    /// The owner's process id, given to each lock it takes or adopts (`setProcessID`); 0 if unknown.
    var pid: UInt32 = 0
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

    /// Records the process id of an owner (a client's HELLO): its locks carry it, and keep it when they become
    /// orphans, for `purgeOrphans`.
    public mutating func setProcessID(_ pid: UInt32, of owner: OwnerID) {
        owners[Int(ownerSlot(owner))].pid = pid
    }

    /// The process id of a lock's owner, or of the owner an orphan had; 0 if unknown.
    func processID(of lock: Int32) -> UInt32 {
        let owner = locks[Int(lock)].owner
        return owner == orphanOwner ? orphanProcessIDs[lock] ?? 0 : owners[Int(owner)].pid
    }

    mutating func linkToOwner(_ lock: Int32, _ owner: Int32) {
        let head = owners[Int(owner)].head
        locks[Int(lock)].owner = owner
        locks[Int(lock)].ownerPrev = none
        locks[Int(lock)].ownerNext = head
        if head != none { locks[Int(head)].ownerPrev = lock }
        owners[Int(owner)].head = lock
        owners[Int(owner)].lockCount += 1
        touch(locks[Int(lock)].resource)
    }

    mutating func unlinkFromOwner(_ lock: Int32) {
        let owner = locks[Int(lock)].owner
        let prev = locks[Int(lock)].ownerPrev
        let next = locks[Int(lock)].ownerNext
        if owner == orphanOwner { orphanProcessIDs[lock] = nil }
        if prev != none { locks[Int(prev)].ownerNext = next } else { owners[Int(owner)].head = next }
        if next != none { locks[Int(next)].ownerPrev = prev }
        locks[Int(lock)].ownerPrev = none
        locks[Int(lock)].ownerNext = none
        owners[Int(owner)].lockCount -= 1
        if owner != orphanOwner, owners[Int(owner)].lockCount == 0, !owners[Int(owner)].isLive {
            freeOwners.append(owner)
        }
    }

    /// The owner went away: its non-persistent locks are released (a PW or EX holder's value block becomes
    /// invalid), pending requests and conversions are dropped, and its granted persistent locks become
    /// orphans that a request with ORPHAN can adopt. A persistent lock is orphaned only if its parent is too.
    /// No completion goes to the departed owner; others may be granted.
    public mutating func ownerExited(_ owner: OwnerID, into effects: inout [Effect]) {
        guard let slot = ownerIndex.removeValue(forKey: owner) else { return }
        var mine: [Int32] = []
        var cursor = owners[Int(slot)].head
        while cursor != none {
            mine.append(cursor)
            cursor = locks[Int(cursor)].ownerNext
        }
        // Children before parents, so that a parent is never released while a child still names it.
        mine.sort { (depth(of: $0), $0) > (depth(of: $1), $1) }
        var keeps: [Int32: Bool] = [:]
        func keep(_ lock: Int32) -> Bool {
            if let known = keeps[lock] { return known }
            let record = locks[Int(lock)]
            var result = record.flags.contains(.persistent) && record.isGranted
            if result, record.parent != none, locks[Int(record.parent)].owner == slot { result = keep(record.parent) }
            keeps[lock] = result
            return result
        }
        var touched: [Int32] = []
        for lock in mine {
            let resource = locks[Int(lock)].resource
            if !touched.contains(resource) { touched.append(resource) }
            if keep(lock) {
                if locks[Int(lock)].queue == QueueKind.convert.rawValue { revertConversion(lock) }
                unlinkFromOwner(lock)
                linkToOwner(lock, orphanOwner)
                if owners[Int(slot)].pid != 0 { orphanProcessIDs[lock] = owners[Int(slot)].pid }
            } else {
                if locks[Int(lock)].grantedMode >= LockMode.pw.rawValue, locks[Int(lock)].isGranted {
                    resources[Int(resource)].valueBlockInvalid = true
                    touch(resource)
                }
                removeLock(lock)
            }
        }
        owners[Int(slot)].isLive = false
        if owners[Int(slot)].lockCount == 0 { freeOwners.append(slot) }
        for resource in touched where !resources[Int(resource)].isFree {
            grantPending(resource, into: &effects)
            freeResourceIfUnused(resource)
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
        var cursor = resources[Int(resource)].grantQueue.head
        while cursor != none {
            let record = locks[Int(cursor)]
            if record.owner == orphanOwner {
                if record.grantedMode == request.mode.rawValue {
                    unlinkFromOwner(cursor)
                    linkToOwner(cursor, owner)
                    locks[Int(cursor)].flags = request.flags.union(.persistent).subtracting(.orphan)
                    locks[Int(cursor)].options = LockEngine.options(of: request)
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
                otherMode = true
            }
            cursor = record.next
        }
        if otherMode { throw DLMError(.tryAgain, "the orphan lock on this resource has another mode") }
        throw .noEntry("no orphan lock on this resource")
    }
}

extension LockEngine {
    /// Removes every orphan of `lockspace` whose former owner had process id `pid` (0: the orphans of unknown
    /// pid), each with its sub-locks, as FORCEUNLOCK would: a sub-lock that has an owner gets an EUNLOCK
    /// completion, and what the release lets through is granted. Orphans of other pids stay. Returns how many
    /// locks were removed, sub-locks included. ENOENT for an unknown lockspace (`dlm_ls_purge`).
    public mutating func purgeOrphans(
        lockspace: LockspaceID, pid: UInt32, into effects: inout [Effect]
    ) throws(DLMError) -> Int {
        let ls = lockspace.rawValue
        guard Int(ls) < lockspaces.count, lockspaces[Int(ls)].isLive else { throw .noEntry("no such lockspace") }
        var targets: [Int32] = []
        var cursor = owners[Int(orphanOwner)].head
        while cursor != none {
            if resources[Int(locks[Int(cursor)].resource)].lockspace == ls, processID(of: cursor) == pid {
                targets.append(cursor)
            }
            cursor = locks[Int(cursor)].ownerNext
        }
        // Parents first: a target that is a sub-lock of another goes with it.
        targets.sort { (depth(of: $0), $0) < (depth(of: $1), $1) }
        let before = liveLocks
        for lock in targets where !locks[Int(lock)].isFree && locks[Int(lock)].owner == orphanOwner {
            if locks[Int(lock)].children > 0 { forceUnlockChildren(of: lock, into: &effects) }
            let resource = locks[Int(lock)].resource
            removeLock(lock)
            grantPending(resource, into: &effects)
            freeResourceIfUnused(resource)
        }
        return before - liveLocks
    }
}
