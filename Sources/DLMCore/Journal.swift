/// What a node must write to its store so that persistent locks survive a crash, computed by the engine and
/// drained by the shell after each input (the engine does no I/O itself).
///
/// Only resources that have had persistent locks are journaled ("tracked"). The store holds one record per
/// resource (value block, fencing-token mark, whether a holder that is not persistent has PW or EX) and one
/// record per persistent granted lock, so that a change costs one lock's record and the resource's, whatever
/// the number of locks on the resource: a change to a tracked resource marks it dirty, a change to one of its
/// locks (queue, granted mode, owner) marks that lock dirty, and `drainJournal` writes the dirty locks that are
/// persistent and granted with their resource's record. A stored lock that goes is deleted on the spot; a
/// resource with no stored lock left is deleted whole. A workload without persistent locks costs one bit test
/// per change. (`touch` marks a replicated resource's replica dirty too: ValueReplicas.swift.)

/// The marks of a resource record (`ResourceRecord.marks`).
enum ResourceMark {
    /// The resource has had persistent locks: its changes are journaled while it lives.
    static let tracked: UInt8 = 1
    /// Changed since the last drain.
    static let dirty: UInt8 = 2
    /// On a bulk job's list of resources to grant from (BulkWork.swift).
    static let inBulkJob: UInt8 = 4
    /// Its value block is replicated to a second node (ValueReplicas.swift).
    static let replicated: UInt8 = 8
    /// Replicated, and changed since the last `drainReplicas`.
    static let replicaDirty: UInt8 = 16
    /// The store holds a record of the resource (written by the last drain that found stored locks on it).
    static let stored: UInt8 = 32
    /// Replicated, and a drain gave its replica: its removal must follow when it is freed.
    static let replicaSent: UInt8 = 64
}

/// One change for the store. Records of one resource are keyed by its lockspace name and path; a lock's by
/// those and its id.
public enum JournalEntry: Sendable, Hashable {
    /// Write the resource's own record (its value block, sequence, invalid mark, fencing-token mark, volatile
    /// writer) and the records of the locks in `resource.locks`. Other lock records of the resource stay.
    case put(StoredResource)
    /// A stored lock went: forget its record.
    case deleteLock(lockspace: [UInt8], path: [[UInt8]], lock: LockID)
    /// The resource has no stored lock left: forget its record and every lock record under it.
    case delete(lockspace: [UInt8], path: [[UInt8]])
}

/// One change of a node's store: the engine's journal, the lockspaces, the last membership view.
public enum StoreChange: Sendable, Hashable {
    case journal(JournalEntry)
    /// A lockspace and, once a client of this node created it, who did (`LockspaceAccess`).
    case putLockspace(name: [UInt8], valueBlockLength: Int, access: LockspaceAccess? = nil)
    case deleteLockspace(name: [UInt8])
    /// The last installed membership view (for the group services).
    case view([UInt8])
    /// The last view whose recovery of the lock space completed on this node (a cluster member): at a restart of
    /// the whole cluster, the stores of the members of the latest such view are the ones whose persistent locks
    /// come back (docs/RECOVERY.md, "A restart of the whole cluster").
    case recoveredView(UInt64)
}

/// The persistent state of a resource: what a crash must not lose. From the store (`restoreStored`), `locks`
/// are all its persistent locks; in a journal entry, the ones that changed.
public struct StoredResource: Sendable, Hashable, Codable {
    /// The lockspace's name (ids are not stable across restarts).
    public var lockspace: [UInt8]
    /// The resource with persistent granted locks only, each in its granted mode.
    public var resource: ResourceSnapshot
    /// A lock that is not persistent holds PW or EX: if the node dies now, that holder dies with it and the
    /// value block can no longer be trusted (REFERENCE.md §4).
    public var hasVolatileWriter: Bool

    public init(lockspace: [UInt8], resource: ResourceSnapshot, hasVolatileWriter: Bool) {
        self.lockspace = lockspace
        self.resource = resource
        self.hasVolatileWriter = hasVolatileWriter
    }
}

/// How many of a tracked resource's locks the store holds, and how many of those hold PW or EX.
struct StoredLockCount {
    var locks: Int32 = 0
    var writers: Int32 = 0
}

extension LockEngine {
    /// Marks a tracked resource dirty, and `lock` (one of its locks, if given) with it.
    @inline(__always)
    mutating func touch(_ resource: Int32, lock: Int32 = none) {
        let bits = resources[Int(resource)].marks
        if bits & ResourceMark.tracked != 0 {
            if bits & ResourceMark.dirty == 0 {
                resources[Int(resource)].marks = bits | ResourceMark.dirty
                dirtyResources.append(resource)
            }
            if lock != none && !locks[Int(lock)].options.contains(.journalDirty) {
                locks[Int(lock)].options.insert(.journalDirty)
                dirtyLocks.append(lock)
            }
            // (A sub-resource's persistent locks are replicated with its top-level resource.)
            if resources[Int(resource)].parent != none { replicaChanged(resource) }
        }
        if bits & (ResourceMark.replicated | ResourceMark.replicaDirty) == ResourceMark.replicated {
            markReplicaDirty(resource)
        }
    }

    /// Starts journaling a resource (a persistent lock is being taken on it, or converted to); a node that masters
    /// across a cluster replicates it from now on (its persistent locks must outlive their master:
    /// ValueReplicas.swift).
    mutating func track(_ resource: Int32, lock: Int32 = none) {
        resources[Int(resource)].marks |= ResourceMark.tracked
        if resources[Int(resource)].parent == none { replicate(resource) } else { replicateTree(of: resource) }
        touch(resource, lock: lock)
    }

    /// Whether changes wait for `drainJournal`.
    public var hasJournal: Bool { !dirtyResources.isEmpty || !journal.isEmpty }

    /// What the store keeps of a lock: persistent and granted, in its granted mode, without its pending state.
    func storedSnapshot(lock slot: Int32) -> LockSnapshot {
        var stored = snapshot(lock: slot)
        stored.queue = .grant
        stored.requestedMode = nil
        stored.pendingFlags = []
        stored.deadline = 0
        return stored
    }

    /// What the store keeps of a resource now, whole: its granted persistent locks (in their granted modes) and its
    /// value block; nil when it does not exist or holds no such lock. To write a resource again over records that
    /// may be stale (a cluster member's previous life, LockService+PreviousLife.swift).
    public func storedResource(lockspace name: [UInt8], path: [[UInt8]]) -> StoredResource? {
        guard let id = lockspace(named: name), let slot = resourceSlot(id, path: path) else { return nil }
        var resource = snapshot(resource: slot)
        let stored = resource.locks.filter { $0.flags.contains(.persistent) && $0.queue != .wait }
        guard !stored.isEmpty else { return nil }
        let writers = resource.locks.filter { $0.grantedMode == .pw || $0.grantedMode == .ex }
        let volatileWriter = writers.contains { !$0.flags.contains(.persistent) }
        resource.locks = stored.map { lock in
            var kept = lock
            kept.queue = .grant
            kept.requestedMode = nil
            kept.pendingFlags = []
            kept.deadline = 0
            return kept
        }
        return StoredResource(lockspace: name, resource: resource, hasVolatileWriter: volatileWriter)
    }

    /// A stored lock is going (`removeLock`): its record is deleted now, with its resource's when it was the
    /// last one (a later lock of the same input is put again after it).
    mutating func forgetStoredLock(_ lock: Int32) {
        let record = locks[Int(lock)]
        let resource = record.resource
        var count = storedLockCounts[resource, default: StoredLockCount()]
        count.locks -= 1
        if record.options.contains(.storedWriter) { count.writers -= 1 }
        let name = lockspaces[Int(resources[Int(resource)].lockspace)].name
        if count.locks > 0 {
            storedLockCounts[resource] = count
            journal.append(.deleteLock(lockspace: name, path: path(of: resource), lock: LockID(slot: lock)))
        } else {
            storedLockCounts[resource] = nil
            resources[Int(resource)].marks &= ~ResourceMark.stored
            journal.append(.delete(lockspace: name, path: path(of: resource)))
        }
        touch(resource)
    }

    /// The store holds `lock` now, as it is: its marks and its resource's counts follow (a lock that was stored
    /// keeps counting once; one that stopped or started holding PW or EX moves between the writers).
    mutating func noteStored(_ lock: Int32, in count: inout StoredLockCount) {
        let options = locks[Int(lock)].options
        if !options.contains(.stored) {
            locks[Int(lock)].options.insert(.stored)
            count.locks += 1
        }
        let writer = locks[Int(lock)].grantedMode >= LockMode.pw.rawValue
        if writer != options.contains(.storedWriter) {
            if writer {
                locks[Int(lock)].options.insert(.storedWriter)
                count.writers += 1
            } else {
                locks[Int(lock)].options.remove(.storedWriter)
                count.writers -= 1
            }
        }
    }

    /// Appends the changes since the last drain, in the order they must be applied: removals first (they
    /// happened before the state that the puts write).
    mutating func drainJournal(into entries: inout [JournalEntry]) {
        entries.append(contentsOf: journal)
        journal.removeAll(keepingCapacity: true)
        var changedLocks: [Int32: [LockSnapshot]] = [:]
        for lock in dirtyLocks {
            guard locks[Int(lock)].options.contains(.journalDirty) else { continue }  // freed, or seen already
            locks[Int(lock)].options.remove(.journalDirty)
            let record = locks[Int(lock)]
            guard record.flags.contains(.persistent), record.isGranted else { continue }
            var count = storedLockCounts[record.resource, default: StoredLockCount()]
            noteStored(lock, in: &count)
            storedLockCounts[record.resource] = count
            changedLocks[record.resource, default: []].append(storedSnapshot(lock: lock))
        }
        dirtyLocks.removeAll(keepingCapacity: true)
        for slot in dirtyResources {
            let record = resources[Int(slot)]
            guard !record.isFree, record.marks & ResourceMark.dirty != 0 else { continue }
            resources[Int(slot)].marks &= ~ResourceMark.dirty
            // (No stored lock: nothing to write. One whose last stored lock went was deleted then.)
            guard let count = storedLockCounts[slot], count.locks > 0 else { continue }
            let name = lockspaces[Int(record.lockspace)].name
            resources[Int(slot)].marks |= ResourceMark.stored
            // At most one lock holds PW or EX (they are compatible with no other PW or EX): a volatile writer is
            // one that the store does not hold.
            let writers = record.granted[LockMode.pw.rawValue] + record.granted[LockMode.ex.rawValue]
            let resource = ResourceSnapshot(
                lockspace: lockspaceID(slot: record.lockspace), path: path(of: slot),
                valueBlock: record.valueBlock, valueBlockSequence: record.valueBlockSequence,
                valueBlockInvalid: record.valueBlockInvalid, fencingToken: record.fencingToken,
                locks: changedLocks[slot] ?? [])
            entries.append(
                .put(
                    StoredResource(
                        lockspace: name, resource: resource, hasVolatileWriter: writers > UInt32(count.writers))))
        }
        dirtyResources.removeAll(keepingCapacity: true)
    }

    /// Gives back what a store kept, after a restart: every persistent lock as an orphan with its id, mode and
    /// value block; the value block invalid if a non-persistent PW or EX holder died with the node. Returns the
    /// locks restored. Locks whose parent was not kept are dropped. The resource is journaled again only when
    /// the store must learn something: that its volatile holders are gone, that locks were dropped, or that
    /// nothing of it is left (a start on a store of a million unchanged resources writes none of them back).
    @discardableResult
    mutating func restoreStored(_ stored: StoredResource) throws(DLMError) -> Int {
        guard let lockspace = lockspace(named: stored.lockspace) else {
            throw .noEntry("lockspace \(stored.lockspace) does not exist")
        }
        var resource = stored.resource
        resource.lockspace = lockspace
        if stored.hasVolatileWriter { resource.valueBlockInvalid = true }
        var locks = resource.locks
        for index in locks.indices { locks[index].owner = nil }
        if locks.contains(where: { $0.parent != nil }) {
            var kept = Set<LockID>()
            var withParents: [LockSnapshot] = []
            for lock in locks {
                if let parent = lock.parent {
                    let exists =
                        parent.slot >= 0 && parent.slot < self.locks.count && !self.locks[parent.slot].isFree
                    guard kept.contains(parent) || exists else { continue }
                }
                kept.insert(lock.id)
                withParents.append(lock)
            }
            locks = withParents
        }
        let changed = stored.hasVolatileWriter || locks.count != resource.locks.count
        resource.locks = locks
        // The parent resource held no persistent lock: its children went with it.
        let parentGone =
            resource.path.count > 1 && resourceSlot(lockspace, path: Array(resource.path.dropLast())) == nil
        if locks.isEmpty || parentGone {
            journal.append(.delete(lockspace: stored.lockspace, path: resource.path))
            return 0
        }
        try restore(resource)
        guard let slot = resourceSlot(lockspace, path: resource.path) else { return locks.count }
        resources[Int(slot)].marks |= ResourceMark.tracked
        if changed {
            // Written again whole: its record and every lock.
            journal.append(.delete(lockspace: stored.lockspace, path: resource.path))
            for lock in locks { touch(slot, lock: Int32(lock.id.slot)) }
        } else {
            // The store holds exactly this.
            resources[Int(slot)].marks |= ResourceMark.stored
            var count = StoredLockCount()
            for lock in locks { noteStored(Int32(lock.id.slot), in: &count) }
            storedLockCounts[slot] = count
        }
        return locks.count
    }
}
