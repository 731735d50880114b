/// Value blocks and persistent locks that outlive their master. With `EngineConfig.replicatesValueBlocks` (a node
/// that masters resources across a cluster), a top-level resource is *replicated* from the moment its value block
/// is written or marked invalid, PW or EX is granted on it to a holder with VALBLK, or a persistent lock is taken
/// on it: after every input that changed it (its value block, its invalid mark, its PW or EX holder, its locks),
/// the engine gives its state as a `.replicate` effect, and when it is freed, its removal. The lock service sends
/// these to a second node and lets no frame of that input go out until that node has them (DLMCluster's
/// LockService+Replicas.swift), so that an acknowledged write, and a granted persistent lock or an orphan, survive
/// the death of the master. A resource nobody uses value blocks or persistent locks on costs one bit test per
/// change.
///
/// A top-level resource's replica carries its whole tree of persistent locks: the granted persistent locks of its
/// sub-resources too, each under a persistent lock of the list (a persistent sub-lock is orphaned only with a
/// persistent parent, so one under a lock that is not persistent never outlives its holder). A tracked
/// sub-resource's changes mark its top-level resource's replica dirty.

/// The value-block state of a resource as its master replicates it.
public struct ValueReplica: Sendable, Hashable {
    public var lockspace: [UInt8]
    public var name: [UInt8]
    /// The resource was freed (its value block with it): the replica is forgotten.
    public var removed: Bool
    /// nil while all zeros.
    public var valueBlock: [UInt8]?
    public var valueBlockSequence: UInt64
    public var invalid: Bool
    /// The holder of PW or EX, if any (at most one holds either): if it dies with the master, the value can no
    /// longer be trusted. (An orphan is `OwnerID(rawValue: 0)`: it writes no more.)
    public var writer: OwnerID?
    /// The granted persistent locks of the resource's tree, orphans included: those of the top-level resource in
    /// grant-queue order, each followed by its persistent sub-locks (depth first), so a parent comes before its
    /// sub-locks.
    public var persistentLocks: [ReplicatedLock]
    /// The lockspace's value-block length (with persistent locks only: a new master may have to create it).
    public var valueBlockLength: Int
    /// Set by a backup node that sends the replica to a new master in recovery when it may lack later writes: it
    /// was not the resource's backup node by every placement since it stored it (DLMCluster's
    /// LockService+Replicas.swift). Never set by the engine.
    public var outdated: Bool
    /// Set by a backup node on the replicas it keeps: which master's life sent it, in which of its generations.
    /// Never set by the engine.
    public var origin: ReplicaOrigin?

    public init(
        lockspace: [UInt8], name: [UInt8], removed: Bool = false, valueBlock: [UInt8]? = nil,
        valueBlockSequence: UInt64 = 0, invalid: Bool = false, writer: OwnerID? = nil,
        persistentLocks: [ReplicatedLock] = [], valueBlockLength: Int = 0, outdated: Bool = false,
        origin: ReplicaOrigin? = nil
    ) {
        self.outdated = outdated
        self.origin = origin
        self.persistentLocks = persistentLocks
        self.valueBlockLength = persistentLocks.isEmpty ? 0 : valueBlockLength
        self.lockspace = lockspace
        self.name = name
        self.removed = removed
        self.valueBlock = valueBlock
        self.valueBlockSequence = valueBlockSequence
        self.invalid = invalid
        self.writer = writer
    }
}

/// Where a backup node's replica came from: the master's node and life, and the master's generation when it sent it
/// (its generations only grow in a life). Each replica is the resource's whole state, so of two that one life of a
/// master sent, the one of the later generation is the later state, whichever backup node kept it.
public struct ReplicaOrigin: Sendable, Hashable {
    public var master: UInt32
    public var incarnation: UInt64
    public var generation: UInt64

    public init(master: UInt32, incarnation: UInt64, generation: UInt64) {
        self.master = master
        self.incarnation = incarnation
        self.generation = generation
    }

    /// Whether this replica is older than `other`: the same life of the same master sent `other` later.
    public func precedes(_ other: ReplicaOrigin) -> Bool {
        master == other.master && incarnation == other.incarnation && generation < other.generation
    }
}

/// A granted persistent lock as its master replicates it: if the master dies, the new master rebuilds it as an
/// orphan when its owner is gone too (a live owner's node sends the lock itself).
public struct ReplicatedLock: Sendable, Hashable {
    /// nil for an orphan.
    public var owner: OwnerID?
    /// An orphan's former owner's node (0 if unknown).
    public var orphanNode: UInt32
    public var pid: UInt32
    /// The user of its owner (or former owner); `LockEngine.unknownUser` if unknown.
    public var uid: UInt32
    public var mode: LockMode
    public var flags: LockFlags
    public var fencingToken: UInt64
    /// The names of its resource below the top-level resource (empty: a lock on the top-level resource).
    public var subPath: [[UInt8]]
    /// A sub-lock's parent lock: its index in the replica's `persistentLocks` (always lower than the sub-lock's).
    public var parent: Int?

    public init(
        owner: OwnerID?, orphanNode: UInt32 = 0, pid: UInt32, uid: UInt32 = LockEngine.unknownUser, mode: LockMode,
        flags: LockFlags, fencingToken: UInt64, subPath: [[UInt8]] = [], parent: Int? = nil
    ) {
        self.subPath = subPath
        self.parent = parent
        self.owner = owner
        self.orphanNode = orphanNode
        self.pid = pid
        self.uid = uid
        self.mode = mode
        self.flags = flags
        self.fencingToken = fencingToken
    }
}

extension LockEngine {
    /// A replicated resource changed in a way `touch` does not see (an owner's lock became an orphan).
    @inline(__always)
    mutating func replicaChanged(_ resource: Int32) {
        let resource = topLevel(of: resource)
        if resources[Int(resource)].marks & (ResourceMark.replicated | ResourceMark.replicaDirty)
            == ResourceMark.replicated
        {
            markReplicaDirty(resource)
        }
    }

    /// Starts replicating a top-level resource (its value block or a persistent lock is in use).
    @inline(__always)
    mutating func replicate(_ resource: Int32) {
        guard config.replicatesValueBlocks, resources[Int(resource)].parent == none else { return }
        let bits = resources[Int(resource)].marks
        if bits & ResourceMark.replicated == 0 {
            resources[Int(resource)].marks = bits | ResourceMark.replicated
            replicatedResources += 1
            markReplicaDirty(resource)
        }
    }

    /// A persistent lock is taken on a sub-resource: its top-level resource is replicated from now on, with its
    /// tree.
    mutating func replicateTree(of resource: Int32) {
        guard config.replicatesValueBlocks else { return }
        let top = topLevel(of: resource)
        replicate(top)
        markReplicaDirty(top)
    }

    func topLevel(of resource: Int32) -> Int32 {
        var top = resource
        while resources[Int(top)].parent != none { top = resources[Int(top)].parent }
        return top
    }

    mutating func markReplicaDirty(_ resource: Int32) {
        if resources[Int(resource)].marks & ResourceMark.replicaDirty == 0 {
            resources[Int(resource)].marks |= ResourceMark.replicaDirty
            dirtyReplicas.append(resource)
        }
    }

    /// Whether replicas wait for `drainReplicas`.
    var hasReplicas: Bool { !dirtyReplicas.isEmpty || !replicaRemovals.isEmpty }

    /// The state of every replicated resource changed since the last drain, and the removals.
    mutating func drainReplicas(into effects: inout [Effect]) {
        for removal in replicaRemovals { effects.append(.replicate(removal)) }
        replicaRemovals.removeAll(keepingCapacity: true)
        for slot in dirtyReplicas {
            let record = resources[Int(slot)]
            guard !record.isFree, record.marks & ResourceMark.replicaDirty != 0 else { continue }
            resources[Int(slot)].marks = (record.marks & ~ResourceMark.replicaDirty) | ResourceMark.replicaSent
            effects.append(.replicate(replica(of: slot)))
        }
        dirtyReplicas.removeAll(keepingCapacity: true)
    }

    func replica(of slot: Int32) -> ValueReplica {
        let record = resources[Int(slot)]
        var writer: OwnerID?
        let writerModes: UInt8 = 1 << LockMode.pw.rawValue | 1 << LockMode.ex.rawValue
        if record.granted.present & writerModes != 0 {
            for queue in [QueueKind.grant, .convert] {
                var cursor = queueEnds(slot, queue).head
                while cursor != none, writer == nil {
                    if locks[Int(cursor)].grantedMode >= LockMode.pw.rawValue {
                        // An orphan's "owner" is node 0, which is never a member: it is gone with the master.
                        let owner = locks[Int(cursor)].owner
                        writer = owner == orphanOwner ? OwnerID(rawValue: 0) : owners[Int(owner)].id
                    }
                    cursor = locks[Int(cursor)].next
                }
            }
        }
        var persistent: [ReplicatedLock] = []
        if record.marks & ResourceMark.tracked != 0 {
            for queue in [QueueKind.grant, .convert] {
                var cursor = queueEnds(slot, queue).head
                while cursor != none {
                    let lock = locks[Int(cursor)]
                    if lock.flags.contains(.persistent), lock.isGranted {
                        appendPersistent(cursor, subPath: [], parent: nil, to: &persistent)
                    }
                    cursor = lock.next
                }
            }
        }
        return ValueReplica(
            lockspace: lockspaces[Int(record.lockspace)].name, name: record.name, valueBlock: record.valueBlock,
            valueBlockSequence: record.valueBlockSequence, invalid: record.valueBlockInvalid, writer: writer,
            persistentLocks: persistent, valueBlockLength: lockspaces[Int(record.lockspace)].valueBlockLength)
    }

    /// A granted persistent lock, and then its granted persistent sub-locks with theirs (in slot order: the
    /// sub-lock table is a set).
    func appendPersistent(_ slot: Int32, subPath: [[UInt8]], parent: Int?, to list: inout [ReplicatedLock]) {
        let lock = locks[Int(slot)]
        guard let mode = LockMode(rawValue: lock.grantedMode) else { return }
        let orphan = lock.owner == orphanOwner
        let index = list.count
        list.append(
            ReplicatedLock(
                owner: orphan ? nil : owners[Int(lock.owner)].id, orphanNode: orphan ? orphanNodes[Int(slot)] : 0,
                pid: processID(of: slot), uid: userID(of: slot), mode: mode, flags: lock.flags,
                fencingToken: lock.fencingToken, subPath: subPath, parent: parent))
        guard lock.children > 0, let children = subLocks[slot] else { return }
        for child in children.sorted()
        where locks[Int(child)].flags.contains(.persistent) && locks[Int(child)].isGranted {
            appendPersistent(
                child, subPath: subPath + [resources[Int(locks[Int(child)].resource)].name], parent: index,
                to: &list)
        }
    }

    /// A freed resource that was replicated: its removal goes out with the next drain, if its replica went out
    /// before. (A resource freed in the input that began replicating it was never sent: an exit that releases a
    /// million EX locks marks each value block invalid and frees it at once, and sends nothing.)
    mutating func replicaFreed(_ slot: Int32) {
        let record = resources[Int(slot)]
        resources[Int(slot)].marks &= ~(ResourceMark.replicated | ResourceMark.replicaDirty | ResourceMark.replicaSent)
        replicatedResources -= 1
        guard record.marks & ResourceMark.replicaSent != 0 else { return }
        replicaRemovals.append(
            ValueReplica(lockspace: lockspaces[Int(record.lockspace)].name, name: record.name, removed: true))
    }

    /// Every replicated resource, as if it had just changed (a new view moved the replicas to other nodes).
    public mutating func replicateAll(into effects: inout [Effect]) {
        // (No walk of a million resources when none is replicated: most lock spaces use no value block.)
        if replicatedResources > 0 {
            for slot in resources.indices where !resources[slot].isFree {
                if resources[slot].marks & ResourceMark.replicated != 0 { markReplicaDirty(Int32(slot)) }
            }
        }
        drainReplicas(into: &effects)
    }
}
