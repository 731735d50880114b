/// What a node must write to its store so that persistent locks survive a crash, computed by the engine and
/// drained by the shell after each input (the engine does no I/O itself).
///
/// Only resources that hold persistent locks are journaled ("tracked"); any change to one of them (a queue,
/// a granted mode, the value block, an owner) makes it dirty, and `drainJournal` turns each dirty resource into
/// one entry: its persistent granted locks and value block, or a deletion when none is left. A workload
/// without persistent locks costs one bit test per change. (`touch` marks a replicated resource's replica dirty
/// too: ValueReplicas.swift.)

/// The marks of a resource record (`ResourceRecord.marks`).
enum ResourceMark {
    /// The resource holds, or held since its last journal entry, persistent locks.
    static let tracked: UInt8 = 1
    /// Changed since the last drain.
    static let dirty: UInt8 = 2
    /// On a bulk job's list of resources to grant from (BulkWork.swift).
    static let inBulkJob: UInt8 = 4
    /// Its value block is replicated to a second node (ValueReplicas.swift).
    static let replicated: UInt8 = 8
    /// Replicated, and changed since the last `drainReplicas`.
    static let replicaDirty: UInt8 = 16
}

/// One change for the store.
public enum JournalEntry: Sendable, Hashable {
    /// Write the persistent state of a resource (replacing what was stored under its lockspace and path).
    case put(StoredResource)
    /// The resource has no persistent lock left: forget it.
    case delete(lockspace: [UInt8], path: [[UInt8]])
}

/// One change of a node's store: the engine's journal, the lockspaces, the last membership view.
public enum StoreChange: Sendable, Hashable {
    case journal(JournalEntry)
    case putLockspace(name: [UInt8], valueBlockLength: Int)
    case deleteLockspace(name: [UInt8])
    /// The last installed membership view (for the group services).
    case view([UInt8])
}

/// The persistent state of a resource: what a crash must not lose.
public struct StoredResource: Sendable, Hashable, Codable {
    /// The lockspace's name (ids are not stable across restarts).
    public var lockspace: [UInt8]
    /// The resource with its persistent granted locks only, each in its granted mode.
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

extension LockEngine {
    /// Marks a tracked resource dirty.
    @inline(__always)
    mutating func touch(_ resource: Int32) {
        let bits = resources[Int(resource)].marks
        if bits & ResourceMark.tracked != 0 && bits & ResourceMark.dirty == 0 {
            resources[Int(resource)].marks = bits | ResourceMark.dirty
            dirtyResources.append(resource)
        }
        if bits & (ResourceMark.replicated | ResourceMark.replicaDirty) == ResourceMark.replicated {
            markReplicaDirty(resource)
        }
    }

    /// Starts journaling a resource (a persistent lock is being taken on it).
    mutating func track(_ resource: Int32) {
        if resources[Int(resource)].marks & ResourceMark.tracked == 0 {
            resources[Int(resource)].marks |= ResourceMark.tracked
            touch(resource)
        }
    }

    /// Whether changes wait for `drainJournal`.
    public var hasJournal: Bool { !dirtyResources.isEmpty || !journal.isEmpty }

    /// Appends the changes since the last drain, in the order they must be applied.
    mutating func drainJournal(into entries: inout [JournalEntry]) {
        entries.append(contentsOf: journal)
        journal.removeAll(keepingCapacity: true)
        for slot in dirtyResources {
            let record = resources[Int(slot)]
            guard !record.isFree, record.marks & ResourceMark.dirty != 0 else { continue }
            resources[Int(slot)].marks &= ~ResourceMark.dirty
            var snapshot = snapshot(resource: slot)
            let volatileWriter = snapshot.locks.contains {
                !$0.flags.contains(.persistent) && ($0.grantedMode.map { $0 >= .pw } ?? false)
            }
            snapshot.locks = snapshot.locks.compactMap { lock in
                guard lock.flags.contains(.persistent), lock.grantedMode != nil else { return nil }
                var stored = lock
                stored.queue = .grant
                stored.requestedMode = nil
                stored.pendingFlags = []
                stored.deadline = 0
                return stored
            }
            let name = lockspaces[Int(record.lockspace)].name
            if snapshot.locks.isEmpty {
                resources[Int(slot)].marks &= ~(ResourceMark.tracked | ResourceMark.dirty)
                entries.append(.delete(lockspace: name, path: snapshot.path))
            } else {
                entries.append(
                    .put(StoredResource(lockspace: name, resource: snapshot, hasVolatileWriter: volatileWriter)))
            }
        }
        dirtyResources.removeAll(keepingCapacity: true)
    }

    /// Gives back what a store kept, after a restart: every persistent lock as an orphan with its id, mode and
    /// value block; the value block invalid if a non-persistent PW or EX holder died with the node. Returns the
    /// locks restored. Locks whose parent was not kept are dropped. The resource is journaled again, so that the
    /// store learns that the volatile holders are gone.
    @discardableResult
    mutating func restoreStored(_ stored: StoredResource) throws(DLMError) -> Int {
        guard let lockspace = lockspace(named: stored.lockspace) else {
            throw .noEntry("lockspace \(stored.lockspace) does not exist")
        }
        var resource = stored.resource
        resource.lockspace = lockspace
        if stored.hasVolatileWriter { resource.valueBlockInvalid = true }
        var kept = Set<LockID>()
        var locks: [LockSnapshot] = []
        for var lock in resource.locks {
            lock.owner = nil
            if let parent = lock.parent {
                let exists = parent.slot >= 0 && parent.slot < self.locks.count && !self.locks[parent.slot].isFree
                guard kept.contains(parent) || exists else { continue }
            }
            kept.insert(lock.id)
            locks.append(lock)
        }
        resource.locks = locks
        if locks.isEmpty { return 0 }
        if resource.path.count > 1 && resourceSlot(lockspace, path: Array(resource.path.dropLast())) == nil {
            return 0  // the parent resource held no persistent lock: its children went with it
        }
        try restore(resource)
        if let slot = resourceSlot(lockspace, path: resource.path) {
            resources[Int(slot)].marks &= ~(ResourceMark.tracked | ResourceMark.dirty)
            track(slot)
        }
        return locks.count
    }
}
