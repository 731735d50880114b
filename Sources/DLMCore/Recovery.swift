/// What a lock service needs of the engine when resources move between nodes (a master died and another node
/// rebuilds its resources from the holders' copies; docs/RECOVERY.md).
extension LockEngine {
    /// Rebuilds a resource from the locks its surviving holders sent: each lock gets a fresh id (the snapshot's ids
    /// are ignored and must be distinct), in the snapshot's order; the ids come back in that order. Nothing is
    /// granted here (`grantAfterRecovery`). A resource with persistent locks is journaled, whole: its records in
    /// the store are replaced.
    ///
    /// A sub-resource (a path of more than one name) is rebuilt after its parent resource: each of its locks names
    /// its parent lock by the id this engine gave it, a granted lock of the same owner on the parent resource (of
    /// any owner, or an orphan, for an orphan: it may have outlived its own parent's owner).
    mutating func recoverResource(_ snapshot: ResourceSnapshot) throws(DLMError) -> [LockID] {
        if snapshot.path.count == 1 {
            guard snapshot.locks.allSatisfy({ $0.parent == nil }) else {
                throw .invalid("a lock on a top-level resource has no parent lock")
            }
        } else {
            guard let parentResource = resourceSlot(snapshot.lockspace, path: Array(snapshot.path.dropLast())) else {
                throw .noEntry("the parent resource is not rebuilt")
            }
            for lock in snapshot.locks {
                guard let parent = lock.parent else { throw .invalid("a lock on a sub-resource needs a parent lock") }
                let slot = parent.slot
                guard slot >= 0, slot < locks.count, !locks[slot].isFree, locks[slot].resource == parentResource,
                    locks[slot].isGranted,
                    lock.owner == nil
                        || (locks[slot].owner != orphanOwner && owners[Int(locks[slot].owner)].id == lock.owner)
                else {
                    throw .invalid("parent lock \(parent) is not a granted lock of the owner on the parent resource")
                }
            }
        }
        var fresh = snapshot
        var ids: [LockID] = []
        ids.reserveCapacity(snapshot.locks.count)
        for index in fresh.locks.indices {
            // Taken from the free list now and filled by `restore` (which accepts a slot that is still on it).
            let slot = allocateLock()
            liveLocks -= 1  // `restore` counts it
            fresh.locks[index].id = LockID(slot: slot)
            ids.append(fresh.locks[index].id)
        }
        do throws(DLMError) {
            try restore(fresh)
        } catch {
            for id in ids { freeLocks.append(Int32(id.slot)) }
            throw error
        }
        if fresh.locks.contains(where: { $0.flags.contains(.persistent) }),
            let slot = resourceSlot(snapshot.lockspace, path: snapshot.path)
        {
            // Written whole, over whatever the store holds of it: its locks have new ids, and a record under an
            // old id (this node's own previous life, at a restart of the whole cluster) would give a lock back twice.
            journal.append(
                .delete(lockspace: lockspaces[Int(resources[Int(slot)].lockspace)].name, path: snapshot.path))
            track(slot)
            for id in ids { touch(slot, lock: Int32(id.slot)) }
        }
        return ids
    }

    /// The top-level resources of every lockspace, by lockspace name and resource name (the resources this node
    /// masters, when it masters across nodes).
    /// Whether a top-level resource of that name exists (has locks) in the lockspace of that name.
    public func hasTopLevelResource(lockspace: [UInt8], name: [UInt8]) -> Bool {
        guard let id = self.lockspace(named: lockspace) else { return false }
        return resourceSlot(id, path: [name]) != nil
    }

    /// The top-level resources freed since the last call, oldest first, each with the time it was freed and the
    /// last fencing token it issued (`EngineConfig.reportsFreedResources`).
    public mutating func takeFreedResources() -> [(
        lockspace: [UInt8], name: [UInt8], at: Instant, fencingToken: UInt64
    )] {
        defer { freedResources.removeAll(keepingCapacity: true) }
        return freedResources
    }

    public func topLevelResources() -> [(lockspace: [UInt8], name: [UInt8])] {
        topLevelResources(slots: 0..<resources.count)
    }

    /// How many resource slots there are (`topLevelResources(slots:)` walks them in slices).
    public var resourceSlotCount: Int { resources.count }

    /// The top-level resources in `slots` (clamped to the slots there are), in slot order.
    public func topLevelResources(slots: Range<Int>) -> [(lockspace: [UInt8], name: [UInt8])] {
        var found: [(lockspace: [UInt8], name: [UInt8])] = []
        for slot in slots.clamped(to: 0..<resources.count) {
            let record = resources[slot]
            guard !record.isFree, record.parent == none else { continue }
            found.append((lockspaces[Int(record.lockspace)].name, record.name))
        }
        return found
    }

    /// The top-level resource (lockspace name, resource name) of a live lock (the lock's own resource, or the
    /// top of its parents' chain for a sub-lock); nil if there is no such lock.
    public func topLevelResource(of id: LockID) -> (lockspace: [UInt8], name: [UInt8])? {
        let slot = id.slot
        guard slot >= 0, slot < locks.count, !locks[slot].isFree else { return nil }
        var resource = locks[slot].resource
        while resources[Int(resource)].parent != none { resource = resources[Int(resource)].parent }
        return (lockspaces[Int(resources[Int(resource)].lockspace)].name, resources[Int(resource)].name)
    }

    /// The owners with locks or requests here that `matching` selects (a departed node's, when recovery purges).
    public func owners(matching: (OwnerID) -> Bool) -> [OwnerID] {
        ownerIndex.keys.filter(matching).sorted()
    }

    /// Raises every lockspace's fencing-token floor, and that of lockspaces created later: resources created or
    /// rebuilt later issue tokens above it.
    public mutating func raiseFencingTokenFloors(to floor: UInt64) {
        newLockspaceFloor = max(newLockspaceFloor, floor)
        for index in lockspaces.indices where lockspaces[index].isLive && lockspaces[index].fencingTokenFloor < floor {
            lockspaces[index].fencingTokenFloor = floor
        }
    }
}
