/// The full state of one lock, enough to rebuild it elsewhere (recovery) or later (persistence).
public struct LockSnapshot: Sendable, Hashable, Codable {
    public var id: LockID
    /// nil for an orphan.
    public var owner: OwnerID?
    public var queue: QueueKind
    public var grantedMode: LockMode?
    public var requestedMode: LockMode?
    public var flags: LockFlags
    public var parent: LockID?
    public var transaction: UInt64?
    public var priority: UInt8
    public var wantsBlockingCallbacks: Bool
    public var alwaysFencingToken: Bool
    /// Modes of the blocking callbacks sent since the last grant, one bit each.
    public var blockingSent: UInt8
    public var pendingFlags: CompletionFlags
    public var waitingSince: Instant
    public var waitSequence: UInt32
    /// With TIMEOUT, when a pending request gives up; zero otherwise.
    public var deadline: Instant
    public var fencingToken: UInt64
    /// The process id of the lock's owner, or of the owner an orphan had (`setProcess`); 0 if unknown.
    public var pid: UInt32
    /// The user of the lock's owner, or of the owner an orphan had; `LockEngine.unknownUser` if unknown.
    public var uid: UInt32 = LockEngine.unknownUser
    /// An orphan's former owner's node (PURGE names it; 0 if unknown).
    public var orphanNode: UInt32 = 0

    public init(
        id: LockID, owner: OwnerID?, queue: QueueKind, grantedMode: LockMode?, requestedMode: LockMode?,
        flags: LockFlags, parent: LockID?, transaction: UInt64?, priority: UInt8, wantsBlockingCallbacks: Bool,
        alwaysFencingToken: Bool, blockingSent: UInt8, pendingFlags: CompletionFlags, waitingSince: Instant,
        waitSequence: UInt32, deadline: Instant, fencingToken: UInt64, pid: UInt32 = 0,
        uid: UInt32 = LockEngine.unknownUser, orphanNode: UInt32 = 0
    ) {
        self.orphanNode = orphanNode
        self.uid = uid
        self.id = id
        self.owner = owner
        self.queue = queue
        self.grantedMode = grantedMode
        self.requestedMode = requestedMode
        self.flags = flags
        self.parent = parent
        self.transaction = transaction
        self.priority = priority
        self.wantsBlockingCallbacks = wantsBlockingCallbacks
        self.alwaysFencingToken = alwaysFencingToken
        self.blockingSent = blockingSent
        self.pendingFlags = pendingFlags
        self.waitingSince = waitingSince
        self.waitSequence = waitSequence
        self.deadline = deadline
        self.fencingToken = fencingToken
        self.pid = pid
    }
}

/// The full state of one resource: its place in the namespace, value block, fencing-token counter and its
/// locks in queue order (grant queue, convert queue, wait queue, each head first).
public struct ResourceSnapshot: Sendable, Hashable, Codable {
    public var lockspace: LockspaceID
    /// Names from the top-level resource down to this one (one name for a top-level resource).
    public var path: [[UInt8]]
    /// nil while the value block is all zeros.
    public var valueBlock: [UInt8]?
    public var valueBlockSequence: UInt64
    public var valueBlockInvalid: Bool
    public var fencingToken: UInt64
    public var locks: [LockSnapshot]

    public var name: [UInt8] { path.last ?? [] }

    public init(
        lockspace: LockspaceID, path: [[UInt8]], valueBlock: [UInt8]?, valueBlockSequence: UInt64,
        valueBlockInvalid: Bool, fencingToken: UInt64, locks: [LockSnapshot]
    ) {
        self.lockspace = lockspace
        self.path = path
        self.valueBlock = valueBlock
        self.valueBlockSequence = valueBlockSequence
        self.valueBlockInvalid = valueBlockInvalid
        self.fencingToken = fencingToken
        self.locks = locks
    }
}

extension LockEngine {
    func snapshot(lock slot: Int32) -> LockSnapshot {
        let record = locks[Int(slot)]
        return LockSnapshot(
            id: LockID(slot: slot), owner: record.owner == orphanOwner ? nil : owners[Int(record.owner)].id,
            queue: record.queueKind ?? .wait, grantedMode: LockMode(rawValue: record.grantedMode),
            requestedMode: LockMode(rawValue: record.requestedMode), flags: record.flags,
            parent: record.parent == none ? nil : LockID(slot: record.parent),
            transaction: record.transaction == 0 ? nil : record.transaction, priority: record.priority,
            wantsBlockingCallbacks: record.options.contains(.wantsBlockingCallbacks),
            alwaysFencingToken: record.options.contains(.alwaysFencingToken), blockingSent: record.blockingSent,
            pendingFlags: record.pendingFlags, waitingSince: record.waitingSince, waitSequence: record.waitSequence,
            deadline: record.deadline, fencingToken: record.fencingToken, pid: processID(of: slot),
            uid: userID(of: slot), orphanNode: record.owner == orphanOwner ? orphanNodes[Int(slot)] : 0)
    }

    func path(of resource: Int32) -> [[UInt8]] {
        var path: [[UInt8]] = []
        var cursor = resource
        while cursor != none {
            path.append(resources[Int(cursor)].name)
            cursor = resources[Int(cursor)].parent
        }
        return path.reversed()
    }

    func snapshot(resource slot: Int32) -> ResourceSnapshot {
        snapshot(resource: slot, dropping: 0, keeping: Int.max)
    }

    /// The snapshot of a resource with only some of its locks: after the first `dropping` (in queue order), at
    /// most `keeping`.
    func snapshot(resource slot: Int32, dropping: Int, keeping: Int) -> ResourceSnapshot {
        let record = resources[Int(slot)]
        var all: [Int32] = []
        var skipped = 0
        for queue in [QueueKind.grant, .convert, .wait] {
            var cursor = queueEnds(slot, queue).head
            while cursor != none && all.count < keeping {
                if skipped < dropping { skipped += 1 } else { all.append(cursor) }
                cursor = locks[Int(cursor)].next
            }
        }
        return ResourceSnapshot(
            lockspace: lockspaceID(slot: record.lockspace), path: path(of: slot), valueBlock: record.valueBlock,
            valueBlockSequence: record.valueBlockSequence, valueBlockInvalid: record.valueBlockInvalid,
            fencingToken: record.fencingToken, locks: all.map { snapshot(lock: $0) })
    }

    /// The resource at `path` (top-level name first), if it exists.
    func resourceSlot(_ lockspace: LockspaceID, path: [[UInt8]]) -> Int32? {
        guard let ls = liveSlot(lockspace) else { return nil }
        var parent = none
        for name in path {
            guard let slot = findResource(ResourceKey(lockspace: ls, parent: parent, name: name))
            else { return nil }
            parent = slot
        }
        return parent == none ? nil : parent
    }

    /// The state of one resource, or nil if it does not exist.
    public func snapshotResource(_ lockspace: LockspaceID, path: [[UInt8]]) -> ResourceSnapshot? {
        resourceSlot(lockspace, path: path).map { snapshot(resource: $0) }
    }

    /// The state of every resource of a lockspace, parents before their sub-resources, in a fixed order.
    public func snapshotLockspace(_ lockspace: LockspaceID) -> [ResourceSnapshot] {
        var result: [ResourceSnapshot] = []
        guard let ls = liveSlot(lockspace) else { return result }
        for slot in resources.indices where resources[slot].lockspace == ls {
            result.append(snapshot(resource: Int32(slot)))
        }
        result.sort { a, b in
            if a.path.count != b.path.count { return a.path.count < b.path.count }
            return a.path.lexicographicallyPrecedes(b.path) { $0.lexicographicallyPrecedes($1) }
        }
        return result
    }

    /// A page of a lockspace's resources with their locks (in queue order), for a report that must not hold the
    /// shell for long: from `cursor` (a resource slot in the high 32 bits, how many of its locks an earlier page
    /// showed in the low 32 bits) in slot order, until `maxLocks` locks or `maxSlots` slots looked at. A resource
    /// with more locks than are left is cut, and the next page goes on with it. Returns the page and the cursor of
    /// the next one (nil at the end).
    public func snapshotLockspacePage(
        _ lockspace: LockspaceID, from cursor: UInt64, maxLocks: Int = 2048, maxSlots: Int = 65_536
    ) -> (resources: [ResourceSnapshot], next: UInt64?) {
        guard let ls = liveSlot(lockspace) else { return ([], nil) }
        var slot = Int(cursor >> 32)
        var skip = Int(cursor & 0xFFFF_FFFF)
        var page: [ResourceSnapshot] = []
        var locksLeft = maxLocks
        var slotsLeft = maxSlots
        while slot < resources.count {
            guard slotsLeft > 0, locksLeft > 0 else { return (page, UInt64(slot) << 32) }
            slotsLeft -= 1
            guard resources[slot].lockspace == ls else {
                slot += 1
                skip = 0
                continue
            }
            let snapshot = snapshot(resource: Int32(slot), dropping: skip, keeping: locksLeft)
            let shown = snapshot.locks.count
            locksLeft -= max(shown, 1)
            page.append(snapshot)
            if skip + shown < Int(resources[slot].lockCount) {
                return (page, UInt64(slot) << 32 | UInt64(skip + shown))
            }
            slot += 1
            skip = 0
        }
        return (page, nil)
    }

    /// Rebuilds a resource and its locks from a snapshot, with the same lock ids. EEXIST if the resource
    /// already has locks or a lock id is taken; ENOENT if the lockspace, the parent resource or a parent lock
    /// is missing. Nothing is granted: call `grantPendingAfterRecovery` when recovery is done.
    mutating func restore(_ snapshot: ResourceSnapshot) throws(DLMError) {
        guard let ls = liveSlot(snapshot.lockspace) else { throw .noEntry("no such lockspace") }
        guard let name = snapshot.path.last, !name.isEmpty, name.count <= EngineConfig.maxNameLength else {
            throw .invalid("a resource snapshot needs a name of 1 to 64 bytes")
        }
        var parent = none
        if snapshot.path.count > 1 {
            guard let slot = resourceSlot(snapshot.lockspace, path: Array(snapshot.path.dropLast())) else {
                throw .noEntry("the parent resource does not exist")
            }
            parent = slot
        }
        let key = ResourceKey(lockspace: ls, parent: parent, name: name)
        if let existing = findResource(key), resources[Int(existing)].lockCount > 0 {
            throw DLMError(.exists, "the resource already has locks")
        }
        // (Most resources restored have no sub-locks: no set to build for them.)
        let hasSubLocks = snapshot.locks.contains { $0.parent != nil }
        let restoredHere = hasSubLocks ? Set(snapshot.locks.map(\.id)) : []
        for lock in snapshot.locks {
            let slot = lock.id.slot
            guard lock.id.rawValue != 0 else { throw .invalid("lock id 0 is not a lock") }
            if slot < locks.count, !locks[slot].isFree { throw DLMError(.exists, "lock id \(lock.id) is taken") }
            if let parentLock = lock.parent {
                let p = parentLock.slot
                guard restoredHere.contains(parentLock) || (p >= 0 && p < locks.count && !locks[p].isFree) else {
                    throw .noEntry("parent lock \(parentLock) does not exist")
                }
            }
        }
        let resource = findOrCreateResource(key)
        resources[Int(resource)].valueBlock = snapshot.valueBlock
        resources[Int(resource)].valueBlockSequence = snapshot.valueBlockSequence
        resources[Int(resource)].valueBlockInvalid = snapshot.valueBlockInvalid
        resources[Int(resource)].fencingToken = max(resources[Int(resource)].fencingToken, snapshot.fencingToken)
        // (A store's restore at start does not replicate: no walk of its locks.)
        if config.replicatesValueBlocks,
            snapshot.valueBlock != nil || snapshot.valueBlockInvalid
                || snapshot.locks.contains(where: { $0.flags.contains(.valueBlock) && ($0.grantedMode ?? .nl) >= .pw })
        {
            replicate(resource)
        }
        for lock in snapshot.locks {
            let slot = Int32(lock.id.slot)
            while locks.count <= Int(slot) {
                locks.append(LockRecord())
                orphanProcessIDs.append(0)
                orphanUserIDs.append(LockEngine.unknownUser)
                orphanNodes.append(0)
                freeLocks.append(Int32(locks.count - 1))
            }
            var options: LockOptions = []
            if lock.wantsBlockingCallbacks { options.insert(.wantsBlockingCallbacks) }
            if lock.alwaysFencingToken { options.insert(.alwaysFencingToken) }
            locks[Int(slot)] = LockRecord(
                resource: resource, parent: lock.parent.map { Int32($0.slot) } ?? none, flags: lock.flags,
                grantedMode: lock.grantedMode?.rawValue ?? noMode,
                requestedMode: lock.requestedMode?.rawValue ?? noMode,
                blockingSent: lock.blockingSent, priority: lock.priority, options: options,
                pendingFlags: lock.pendingFlags, waitSequence: lock.waitSequence, waitingSince: lock.waitingSince,
                deadline: lock.deadline, transaction: lock.transaction ?? 0, fencingToken: lock.fencingToken)
            if let owner = lock.owner {
                let ownerSlot = ownerSlot(owner)
                linkToOwner(slot, ownerSlot)
                if owners[Int(ownerSlot)].pid == 0 { owners[Int(ownerSlot)].pid = lock.pid }
                if owners[Int(ownerSlot)].uid == LockEngine.unknownUser { owners[Int(ownerSlot)].uid = lock.uid }
            } else {
                linkAsOrphan(slot, pid: lock.pid, uid: lock.uid, node: lock.orphanNode, touching: true)
            }
            linkToQueue(slot, lock.queue)
            resources[Int(resource)].lockCount += 1
            lockspaces[Int(ls)].lockCount += 1
            liveLocks += 1
            if lock.waitSequence > waitSequence { waitSequence = lock.waitSequence }
            if lock.queue != .grant {
                if lock.deadline != 0 {
                    timeouts.insert(TimerEntry(due: lock.deadline, lock: slot, sequence: lock.waitSequence))
                }
            }
        }
        for lock in snapshot.locks where hasSubLocks {
            if let parentLock = lock.parent { addSubLock(Int32(lock.id.slot), to: Int32(parentLock.slot)) }
        }
    }

    /// Rule 4: when recovery is done, every resource of the lockspace grants what it can, conversions
    /// regardless of their order, and sends the blocking callbacks that follow.
    /// Only a resource with a conversion or a waiting request has anything to grant or to tell: those are found
    /// through the list of waiting locks, not by a walk of every resource (a million of them after a large
    /// recovery, a step long enough to pause every client of the node), and taken in slot order, as the walk did.
    mutating func grantPendingAfterRecovery(_ lockspace: LockspaceID, into effects: inout [Effect]) {
        guard let ls = liveSlot(lockspace) else { return }
        var pending: [Int32] = []
        var cursor = waiting.head
        while cursor != none {
            let resource = locks[Int(cursor)].resource
            if resources[Int(resource)].lockspace == ls { pending.append(resource) }
            cursor = locks[Int(cursor)].waitNext
        }
        pending.sort()
        var last = none
        for resource in pending where resource != last {
            last = resource
            grantPending(resource, recovering: true, into: &effects)
        }
    }
}
