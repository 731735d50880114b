import DequeModule
import HeapModule

/// The lock manager of one node as a deterministic state machine: requests, conversions, unlocks, owner
/// exits and the passing of time go in; completions and blocking callbacks come out, in a fixed order.
/// It does no I/O, reads no clock and starts no thread; its shell owns it from one serial executor.
///
/// The grant rules, flags and value block rules are those of the VMS / Linux DLM (REFERENCE.md §1-5);
/// each rule has a function named after it in `GrantRules.swift`.
public struct LockEngine {
    public let config: EngineConfig
    /// The engine's clock: the last time `tick(now:)` passed in.
    public private(set) var now: Instant = 0

    var lockspaces: [LockspaceRecord] = []
    var lockspaceIndex: [[UInt8]: UInt32] = [:]
    var locks: ContiguousArray<LockRecord> = []
    var freeLocks: [Int32] = []
    /// How many slots hold a live lock (`freeLocks` may also list slots that `restore` took since).
    var liveLocks = 0
    var resources: ContiguousArray<ResourceRecord> = []
    var freeResources: [Int32] = []
    var resourceIndex = ResourceIndex()
    @usableFromInline var owners: [OwnerRecord] = [OwnerRecord(id: OwnerID(UInt64.max))]
    var ownerIndex: [OwnerID: Int32] = [:]
    var freeOwners: [Int32] = []
    /// The locks of each account's owners (Owners.swift, `setAccount`).
    @usableFromInline var accountLockCounts: [Int] = []
    /// The process id each orphan's owner had (`setProcess`), by lock slot, 0 if unknown (and for a lock that is
    /// not an orphan): an array beside the lock slab, one entry per slot. Kept apart from `LockRecord`, which it
    /// would grow by 8 bytes with padding; a dictionary grew (and rehashed a million entries in one go) when an
    /// owner with a million persistent locks exited.
    var orphanProcessIDs: ContiguousArray<UInt32> = []
    /// The user each orphan's owner had, by lock slot (`unknownUser` if unknown, and for a lock that is not an
    /// orphan), beside `orphanProcessIDs`.
    var orphanUserIDs: ContiguousArray<UInt32> = []
    /// Each user's account (`account(ofUser:)`), an index of `accountLockCounts`.
    var accountsByUser: [UInt32: Int32] = [:]
    /// For each orphan, by slot: the node of the owner it had (0 if unknown: restored from the store).
    var orphanNodes: ContiguousArray<UInt32> = []
    /// All waiting and converting locks, oldest first.
    var waiting = QueueEnds()
    var waitSequence: UInt32 = 0
    /// Counts every change of a queue (a lock linked, unlinked, or its granted mode changed): a deadlock pass
    /// is not run again on unchanged queues that held no cycle (DeadlockSearch.swift).
    var queueVersion: UInt64 = 0
    /// The queues' version at the last deadlock pass, whether it found a cycle, and when the next may run.
    var deadlockGraphVersion: UInt64 = .max
    var deadlockLastPassFoundCycle = false
    var nextDeadlockPass: Instant = 0
    /// The deadlock pass in progress, done a slice a tick.
    var deadlockPass: DeadlockPass?
    /// Requests with TIMEOUT, by deadline.
    var timeouts: Heap<TimerEntry> = []
    /// The value handed in (VALBLK) with a conversion from PW or EX that waits on the convert queue: ALTPR / ALTCW
    /// may grant it later in a mode that writes it (PW -> EX reads, PW -> PR writes).
    var pendingValueBlocks: [Int32: [UInt8]] = [:]
    /// Resources whose persistent state changed since the last `drainJournal` (`Journal.swift`).
    var dirtyResources: [Int32] = []
    /// Top-level resources freed since the last `takeFreedResources` (with `reportsFreedResources`).
    var freedResources: [(lockspace: [UInt8], name: [UInt8], at: Instant, fencingToken: UInt64)] = []
    /// The fencing-token floor a lockspace created now starts at: the configured base, or the floor recovery last
    /// raised every lockspace to (`raiseFencingTokenFloors`), whichever is higher.
    var newLockspaceFloor: UInt64 = 0
    /// The fencing-token floor each released lockspace had when its last resource went, by name: a lockspace
    /// created again under that name starts above it, so its tokens never go back (one entry per name).
    var releasedLockspaceFloors: [[UInt8]: UInt64] = [:]
    /// Locks of tracked resources changed since the last `drainJournal`.
    var dirtyLocks: [Int32] = []
    /// For each resource with stored locks, how many (`Journal.swift`).
    var storedLockCounts: [Int32: StoredLockCount] = [:]
    /// Journal entries waiting for `drainJournal`.
    var journal: [JournalEntry] = []
    /// Replicated resources changed since the last `drainReplicas`, and the removals of freed ones
    /// (ValueReplicas.swift).
    var dirtyReplicas: [Int32] = []
    var replicaRemovals: [ValueReplica] = []
    /// How many resources are replicated to a backup node (their value block or persistent locks are in use:
    /// ValueReplicas.swift).
    public internal(set) var replicatedResources = 0
    /// The sub-locks of each lock that has some (`LockRecord.children` counts them), so that FORCEUNLOCK and purge
    /// find them without a walk. Sub-locks are rare: a table beside the slab costs the other locks nothing.
    var subLocks: [Int32: Set<Int32>] = [:]
    /// Work done in slices (BulkWork.swift), oldest first.
    var bulkJobs: Deque<BulkJob> = []
    /// How many locks wait on a convert or wait queue (the length of `waiting`).
    var waitingCount = 0
    /// Counts of work done, for tests that check how the work grows.
    public internal(set) var probe = WorkProbe()

    public init(config: EngineConfig = EngineConfig()) {
        self.config = config
    }

    // MARK: Lockspaces

    /// Creates a lockspace, or returns the existing one of that name (as `dlm_create_lockspace` does).
    /// EINVAL for a name of 0 or more than 64 bytes, or a value block length that is not a multiple of 8
    /// between 8 and 64; EEXIST if the name exists with another value block length.
    mutating func createLockspace(name: [UInt8], valueBlockLength: Int? = nil) throws(DLMError) -> LockspaceID {
        guard !name.isEmpty, name.count <= EngineConfig.maxNameLength else {
            throw .invalid("a lockspace name has 1 to 64 bytes, this one has \(name.count)")
        }
        let length = valueBlockLength ?? config.defaultValueBlockLength
        guard length > 0, length % 8 == 0, length <= EngineConfig.maxValueBlockLength else {
            throw .invalid("a value block length is a multiple of 8 from 8 to 64, not \(length)")
        }
        if let id = lockspaceIndex[name] {
            guard !lockspaces[Int(id)].isDraining else {
                throw .busy("the lockspace is still being released (\(lockspaces[Int(id)].lockCount) locks left)")
            }
            guard lockspaces[Int(id)].valueBlockLength == length else {
                throw DLMError(
                    .exists, "the lockspace exists with value block length \(lockspaces[Int(id)].valueBlockLength)")
            }
            return lockspaceID(slot: id)
        }
        let id: UInt32
        if let reusable = lockspaces.firstIndex(where: { !$0.isLive && !$0.isDraining }) {
            id = UInt32(reusable)
            var record = LockspaceRecord(
                name: name, valueBlockLength: length, fencingTokenFloor: initialFloor(of: name))
            record.generation = (lockspaces[reusable].generation &+ 1) & LockEngine.lockspaceSlotMask
            lockspaces[reusable] = record
        } else {
            guard lockspaces.count <= Int(LockEngine.lockspaceSlotMask) else {
                throw DLMError(.tryAgain, "the engine holds at most \(LockEngine.lockspaceSlotMask + 1) lockspaces")
            }
            id = UInt32(lockspaces.count)
            lockspaces.append(
                LockspaceRecord(name: name, valueBlockLength: length, fencingTokenFloor: initialFloor(of: name)))
        }
        lockspaceIndex[name] = id
        return lockspaceID(slot: id)
    }

    /// A lockspace's id is its slot (low 16 bits) and that slot's generation (high 16 bits): a handle on a
    /// released lockspace names no later lockspace created in the same slot, until that slot has been used
    /// 65,536 times more.
    static let lockspaceSlotMask: UInt32 = 0xFFFF

    /// The id of the lockspace in `slot`.
    func lockspaceID(slot: UInt32) -> LockspaceID {
        LockspaceID(rawValue: slot | lockspaces[Int(slot)].generation << 16)
    }

    /// The slot of a live lockspace; nil for an unknown id, a released lockspace, or an id of an earlier
    /// lockspace of the same slot.
    func liveSlot(_ id: LockspaceID) -> UInt32? {
        let slot = id.rawValue & LockEngine.lockspaceSlotMask
        guard Int(slot) < lockspaces.count, lockspaces[Int(slot)].isLive,
            lockspaces[Int(slot)].generation == id.rawValue >> 16
        else { return nil }
        return slot
    }

    /// The lockspace of that name, if it exists.
    public func lockspace(named name: [UInt8]) -> LockspaceID? {
        guard let id = lockspaceIndex[name], lockspaces[Int(id)].isLive else { return nil }
        return lockspaceID(slot: id)
    }

    public func lockspaceInfo(_ id: LockspaceID) -> LockspaceInfo? {
        guard let slot = liveSlot(id) else { return nil }
        let record = lockspaces[Int(slot)]
        return LockspaceInfo(
            id: id, name: record.name, valueBlockLength: record.valueBlockLength,
            resourceCount: record.resourceCount, lockCount: record.lockCount, access: record.access)
    }

    /// Lockspaces that exist, and those still being released.
    public var lockspaceCount: Int { lockspaceIndex.count }

    public var allLockspaces: [LockspaceInfo] {
        lockspaces.indices.compactMap { lockspaces[$0].isLive ? lockspaceInfo(lockspaceID(slot: UInt32($0))) : nil }
    }

    /// Releases a lockspace. EBUSY while it holds locks, unless forced; a forced release drops every lock
    /// without completions (libdlm's `force` of 2 and above). The lockspace is gone for requests at once; its
    /// locks are dropped in slices (BulkWork.swift), after which `Effect.finished` tells `requester`, with
    /// `context`, how many locks were dropped, and the name is free again (creating it meanwhile is EBUSY). A
    /// release that drops nothing is finished at once, without that effect. Returns whether it is finished.
    @discardableResult
    mutating func releaseLockspace(
        _ id: LockspaceID, force: Bool = false, requester: OwnerID = OwnerID(UInt64.max), context: UInt64 = 0,
        into effects: inout [Effect]
    ) throws(DLMError) -> Bool {
        guard let slot = liveSlot(id) else { throw .noEntry("no such lockspace") }
        let index = Int(slot)
        let held = lockspaces[index].lockCount
        if held > 0 && !force { throw .busy("the lockspace still holds \(held) locks") }
        lockspaces[index].isLive = false
        guard held > 0 else {
            forgetLockspaceName(index)
            return true
        }
        // The name and the slot are not reused before its locks are gone.
        lockspaces[index].isDraining = true
        startBulkJob(
            BulkJob(kind: .forcedRelease(lockspace: slot), requester: (requester, context)), into: &effects)
        return false
    }

    /// A released lockspace's name is free again once its last resource went: its floor is kept for that name.
    mutating func forgetLockspaceName(_ index: Int) {
        let name = lockspaces[index].name
        releasedLockspaceFloors[name] = max(releasedLockspaceFloors[name] ?? 0, lockspaces[index].fencingTokenFloor)
        lockspaceIndex[name] = nil
    }

    /// The fencing-token floor of a lockspace created now: above the tokens of every earlier lockspace of that
    /// name, of earlier lives (`fencingTokenBase`) and earlier views (`raiseFencingTokenFloors`).
    func initialFloor(of name: [UInt8]) -> UInt64 {
        max(config.fencingTokenBase, newLockspaceFloor, releasedLockspaceFloors[name] ?? 0)
    }

    /// `releaseLockspace` run to its end at once.
    mutating func releaseLockspace(_ id: LockspaceID, force: Bool = false) throws(DLMError) {
        var effects: [Effect] = []
        if try !releaseLockspace(id, force: force, into: &effects) { finishBulkWork(into: &effects) }
    }

    // MARK: Requests

    /// A new lock request. Errors in the request itself are thrown (EINVAL, ENOENT, and for ORPHAN also
    /// EAGAIN); otherwise the lock's id is returned and its completion is among the effects, now (granted,
    /// EAGAIN) or later (granted, EDEADLK, ETIMEDOUT, ECANCEL).
    mutating func lock(_ request: LockRequest, into effects: inout [Effect]) throws(DLMError) -> LockID {
        try LockEngine.validate(request)
        guard let ls = liveSlot(request.lockspace) else { throw .noEntry("no such lockspace") }
        var parentResource = none
        var parentLock = none
        if let parent = request.parent {
            parentLock = try ownedLock(parent, request.owner, "parent lock")
            guard locks[Int(parentLock)].isGranted else { throw .invalid("the parent lock is not granted") }
            guard !locks[Int(parentLock)].options.contains(.unlocking) else {
                throw .busy("the parent lock is being unlocked")
            }
            parentResource = locks[Int(parentLock)].resource
            guard resources[Int(parentResource)].lockspace == ls else {
                throw .invalid("the parent lock is in another lockspace")
            }
        }
        let owner = ownerSlot(request.owner)
        let key = ResourceKey(lockspace: ls, parent: parentResource, name: request.name)
        if request.flags.contains(.orphan) {
            return try adoptOrphan(request, resource: findResource(key), owner: owner, into: &effects)
        }
        guard lockCount < config.maxLocks else { throw DLMError(.tryAgain, "the engine holds its maximum of locks") }
        if refusesNewPersistentLocks, request.flags.contains(.persistent) {
            throw DLMError(.noSpace, "the node's store is full: no new persistent lock until it has room (store alarm)")
        }
        let resource = findOrCreateResource(key)
        let lock = allocateLock()
        locks[Int(lock)] = LockRecord(
            resource: resource, parent: parentLock, flags: request.flags, requestedMode: request.mode.rawValue,
            priority: request.priority, options: LockEngine.options(of: request),
            transaction: request.transaction ?? 0)
        if parentLock != none { addSubLock(lock, to: parentLock) }
        if request.flags.contains(.persistent) { track(resource, lock: lock) }
        linkToOwner(lock, owner)
        resources[Int(resource)].lockCount += 1
        lockspaces[Int(ls)].lockCount += 1
        requestNew(lock, timeout: request.timeout, into: &effects)
        return LockID(slot: lock)
    }

    /// Converts a granted lock to another mode. Errors in the request are thrown: EINVAL (bad flags, QUECVT
    /// that is not an up-conversion), ENOENT (unknown lock, or another owner's), EBUSY (a request or
    /// conversion is already pending). The outcome is a completion among the effects.
    mutating func convert(_ request: ConvertRequest, into effects: inout [Effect]) throws(DLMError) {
        try LockEngine.validate(request)
        let lock = try ownedLock(request.lock, request.owner, "lock")
        let record = locks[Int(lock)]
        guard record.queue == QueueKind.grant.rawValue, !record.options.contains(.unlocking) else {
            throw .busy("a request, conversion or unlock of this lock is still pending")
        }
        if request.flags.contains(.queueConversion),
            !LockMode(rawValue: record.grantedMode)!.allowsQueuedConversion(to: request.mode)
        {
            throw .invalid(
                "QUECVT is only for up-conversions, not \(LockMode(rawValue: record.grantedMode)!) to \(request.mode)")
        }
        let operation = ValueBlockOperation(from: record.grantedMode, to: request.mode.rawValue)
        if request.flags.contains(.valueBlock), operation == .write,
            !request.flags.contains(.invalidateValueBlock)
        {
            try checkValueBlock(request.valueBlock, resource: record.resource, required: true)
        } else if request.flags.contains(.valueBlock) {
            // ALTPR / ALTCW may grant a mode that writes the value (PW -> EX reads, PW -> PR writes): it must fit.
            try checkValueBlock(request.valueBlock, resource: record.resource, required: false)
        }
        var flags = request.flags
        var valueBlock = request.valueBlock
        if writeWasDone(base: request.valueBlockBase, resource: record.resource) {
            // Sent again after its master died, which had converted it: the value is not written twice.
            flags.remove(.invalidateValueBlock)
            valueBlock = nil
        }
        locks[Int(lock)].flags = flags.union(record.flags.intersection(.persistent))
        if request.flags.contains(.persistent) { track(record.resource, lock: lock) }
        locks[Int(lock)].requestedMode = request.mode.rawValue
        if let priority = request.priority { locks[Int(lock)].priority = priority }
        requestConversion(lock, valueBlock: valueBlock, timeout: request.timeout, into: &effects)
    }

    /// Unlocks, cancels (CANCEL) or force-unlocks (FORCEUNLOCK) a lock. Errors are thrown: EINVAL (bad
    /// flags), ENOENT (unknown lock), EBUSY (a plain unlock while a request or conversion is pending or
    /// while sub-locks exist; a CANCEL with nothing to cancel). The completion (EUNLOCK or ECANCEL) is
    /// among the effects, followed by whatever the release lets through.
    mutating func unlock(_ request: UnlockRequest, into effects: inout [Effect]) throws(DLMError) {
        guard request.flags.isSubset(of: LockFlags.unlockFlags) else {
            throw .invalid("an unlock takes only CANCEL, FORCEUNLOCK, VALBLK and IVVALBLK, not \(request.flags)")
        }
        guard !request.flags.isSuperset(of: [.cancel, .forceUnlock]) else {
            throw .invalid("CANCEL and FORCEUNLOCK exclude each other")
        }
        let lock = try ownedLock(request.lock, request.owner, "lock")
        let record = locks[Int(lock)]
        guard !record.options.contains(.unlocking) else { throw .busy("an unlock of this lock is in progress") }
        if request.flags.contains(.cancel) {
            guard record.queue != QueueKind.grant.rawValue else {
                throw .busy("nothing to cancel: the lock is granted with no request pending")
            }
            finishPending(lock, status: .cancelled, into: &effects)
            return
        }
        if !request.flags.contains(.forceUnlock) {
            guard record.queue == QueueKind.grant.rawValue else {
                throw .busy("a request or conversion of this lock is pending; cancel it or use FORCEUNLOCK")
            }
            guard record.children == 0 else {
                throw .busy("the lock is the parent of \(record.children) locks; unlock them or use FORCEUNLOCK")
            }
        }
        let writes = record.isGranted && record.grantedMode >= LockMode.pw.rawValue
        if writes, request.flags.contains(.valueBlock), !request.flags.contains(.invalidateValueBlock) {
            try checkValueBlock(request.valueBlock, resource: record.resource, required: true)
        }
        if record.children > 0 {
            if hasManyDescendants(lock) {
                // Its sub-locks in slices (BulkWork.swift); the lock itself, and its completion, at the end.
                startForceUnlock(lock, request, writes: writes, into: &effects)
                return
            }
            forceUnlockChildren(of: lock, into: &effects)
        }
        finishUnlock(lock, request, writes: writes, into: &effects)
    }

    /// The end of an unlock: the value block written (or invalidated) by a PW or EX holder, the completion
    /// (EUNLOCK), and whatever the release lets through.
    mutating func finishUnlock(_ lock: Int32, _ request: UnlockRequest, writes: Bool, into effects: inout [Effect]) {
        let resource = locks[Int(lock)].resource
        // (Not when sent again after its master died, which had done it: `writeWasDone`.)
        if writes, !writeWasDone(base: request.valueBlockBase, resource: resource) {
            if request.flags.contains(.invalidateValueBlock) {
                resources[Int(resource)].valueBlockInvalid = true
                replicate(resource)
                touch(resource)
            } else if request.flags.contains(.valueBlock) {
                writeValueBlock(request.valueBlock!, resource: resource)
            }
        }
        effects.append(
            .completion(
                Completion(
                    lock: request.lock, owner: request.owner, status: .unlocked,
                    mode: nil, valueBlockSequence: resources[Int(resource)].valueBlockSequence)))
        removeLock(lock)
        grantPending(resource, into: &effects)
        freeResourceIfUnused(resource)
    }

    /// Whether a lock has more descendants than a slice of bulk work (counted up to that bound only).
    func hasManyDescendants(_ lock: Int32) -> Bool {
        var count = 0
        var stack = [lock]
        while let parent = stack.popLast() {
            for child in subLocks[parent] ?? [] {
                count += 1
                if count > config.bulkSlice { return true }
                if locks[Int(child)].children > 0 { stack.append(child) }
            }
        }
        return false
    }

    /// Unlocks every descendant of a lock, deepest first, each with an EUNLOCK completion. (The lock and each
    /// descendant with sub-locks are marked `unlocking` first: none of their sub-locks is granted meanwhile.)
    mutating func forceUnlockChildren(of parent: Int32, into effects: inout [Effect]) {
        locks[Int(parent)].options.insert(.unlocking)
        // In slot order: the order of the completions.
        let children = subLocks[parent].map { $0.sorted() } ?? []
        for child in children {
            if locks[Int(child)].children > 0 { forceUnlockChildren(of: child, into: &effects) }
            releaseSubLock(child, into: &effects)
        }
    }

    /// Ends a pending request or conversion with `status` (ECANCEL, ETIMEDOUT, EDEADLK), then grants what
    /// that lets through.
    mutating func finishPending(_ lock: Int32, status: DLMStatus, into effects: inout [Effect]) {
        let resource = locks[Int(lock)].resource
        refusePending(lock, status: status, into: &effects)
        grantPending(resource, into: &effects)
        freeResourceIfUnused(resource)
    }

    /// Completes a pending request or conversion with `status`: a new request is dropped, a conversion
    /// returns to its granted mode (the lock keeps what it holds).
    mutating func refusePending(_ lock: Int32, status: DLMStatus, into effects: inout [Effect]) {
        let record = locks[Int(lock)]
        var completion = Completion(
            lock: LockID(slot: lock), owner: owners[Int(record.owner)].id, status: status,
            flags: record.pendingFlags, mode: nil,
            valueBlockSequence: resources[Int(record.resource)].valueBlockSequence)
        if record.queue == QueueKind.convert.rawValue {
            revertConversion(lock)
            completion.mode = LockMode(rawValue: locks[Int(lock)].grantedMode)
            effects.append(.completion(completion))
        } else {
            effects.append(.completion(completion))
            removeLock(lock)
        }
    }

    /// Runs the timeouts and deadlock searches that are due at `now`.
    mutating func tick(now: Instant, into effects: inout [Effect]) {
        if now > self.now { self.now = now }
        expireTimeouts(into: &effects)
        searchDueDeadlocks(into: &effects)
    }

    /// Handles one input, appending what came of it (see `Input`). The engine's one way in and out.
    public mutating func handle(_ input: Input, into effects: inout [Effect]) {
        do throws(DLMError) {
            switch input {
            case .lock(let request):
                // The acceptance goes first: the completion of a request granted at once follows it. A refused request
                // appends nothing before it throws, so the placeholder is the last effect then.
                let mark = effects.count
                effects.append(.accepted(LockID(rawValue: 0)))
                do throws(DLMError) {
                    effects[mark] = .accepted(try lock(request, into: &effects))
                } catch {
                    effects.removeLast()
                    throw error
                }
            case .convert(let request): try convert(request, into: &effects)
            case .unlock(let request): try unlock(request, into: &effects)
            case .ownerExited(let owner): ownerExited(owner, into: &effects)
            case .tick(let now): tick(now: now, into: &effects)
            case .openLockspace(let name, let length, let create, let creator):
                let existing = lockspace(named: name)
                if existing == nil && !create { throw .noEntry("no lockspace \(name.displayName)") }
                let id: LockspaceID
                if let existing, length == nil {
                    id = existing
                } else {
                    id = try createLockspace(name: name, valueBlockLength: length)
                }
                let slot = Int(id.rawValue & LockEngine.lockspaceSlotMask)
                let claimed = create && creator != nil && lockspaces[slot].access == nil
                if claimed { lockspaces[slot].access = creator }
                effects.append(.lockspace(lockspaceInfo(id)!, created: existing == nil || claimed))
            case .releaseLockspace(let id, let force, let requester, let context):
                let finished = try releaseLockspace(
                    id, force: force, requester: requester, context: context, into: &effects)
                if finished { effects.append(.finished(Finished(owner: requester, context: context, count: 0))) }
            case .purge(let lockspace, let pid, let node, let user, let requester, let context):
                try beginPurge(
                    lockspace: lockspace, pid: pid, node: node, user: user, requester: requester, context: context,
                    into: &effects)
            case .cancelForDeadlock(let lock): try cancelForDeadlock(lock, into: &effects)
            case .deadlockVictim(let lock, let sequence):
                refuseDeadlockVictim(lock, waitSequence: sequence, into: &effects)
            case .setProcess(let pid, let uid, let owner): setProcess(pid: pid, uid: uid, of: owner)
            case .continueBulkWork: continueBulkWork(into: &effects)
            case .restore(let stored): try restoreStored(stored)
            case .recover(let snapshot):
                for id in try recoverResource(snapshot) { effects.append(.accepted(id)) }
            case .grantAfterRecovery(let lockspace): grantPendingAfterRecovery(lockspace, into: &effects)
            }
        } catch {
            effects.append(.refused(error))
        }
        if hasReplicas { drainReplicas(into: &effects) }
        if hasJournal {
            var entries: [JournalEntry] = []
            drainJournal(into: &entries)
            for entry in entries { effects.append(.persist(entry)) }
        }
    }

    /// Handles one input and returns its effects.
    public mutating func handle(_ input: Input) -> [Effect] {
        var effects: [Effect] = []
        handle(input, into: &effects)
        return effects
    }

    // MARK: Queries

    /// How many locks the engine holds, in any state.
    public var lockCount: Int { liveLocks }

    /// Set while the node's store is full (its alarm): a new persistent lock is refused with ENOSPC, since it
    /// would be stored. Adopting an orphan, conversions and unlocks go on (they add nothing).
    public var refusesNewPersistentLocks = false
    /// How many resources exist.
    public var resourceCount: Int { resourceIndex.count }
    /// How many locks wait on a convert or wait queue (requests and conversions not granted yet).
    public var waiterCount: Int { waitingCount }

    /// What a lock looks like now, or nil if it does not exist.
    public func lockState(_ id: LockID) -> LockSnapshot? {
        let slot = id.slot
        guard slot >= 0, slot < locks.count, !locks[slot].isFree else { return nil }
        return snapshot(lock: Int32(slot))
    }

    /// The grant of a lock that is granted with no conversion waiting, as a completion would tell it now: its mode,
    /// VALNOTVALID if the value block is invalid, the value block (with VALBLK) and its sequence, the lock's
    /// fencing token. nil for a lock that waits or converts, or does not exist. (A rebuilt master tells a holder
    /// again what it granted, when the completion may have been lost: `RecoveredBinding.grant`.)
    public func standingGrant(_ id: LockID) -> Completion? {
        let slot = id.slot
        guard slot >= 0, slot < locks.count, !locks[slot].isFree, locks[slot].queueKind == .grant,
            locks[slot].requestedMode == noMode, let mode = LockMode(rawValue: locks[slot].grantedMode)
        else { return nil }
        let record = locks[slot]
        let resource = record.resource
        var completion = Completion(
            lock: id, owner: owners[Int(record.owner)].id, status: .granted, mode: mode,
            valueBlockSequence: resources[Int(resource)].valueBlockSequence, fencingToken: record.fencingToken)
        if record.flags.contains(.valueBlock) { completion.valueBlock = readValueBlock(resource: resource) }
        if resources[Int(resource)].valueBlockInvalid { completion.flags.insert(.valueNotValid) }
        return completion
    }

    // MARK: Helpers

    static func options(of request: LockRequest) -> LockOptions {
        var options: LockOptions = []
        if request.wantsBlockingCallbacks { options.insert(.wantsBlockingCallbacks) }
        if request.alwaysFencingToken { options.insert(.alwaysFencingToken) }
        return options
    }

    /// The slot of a live lock of this owner, or ENOENT.
    func ownedLock(_ id: LockID, _ owner: OwnerID, _ what: String) throws(DLMError) -> Int32 {
        let slot = id.slot
        guard slot >= 0, slot < locks.count, !locks[slot].isFree, let ownerSlot = ownerIndex[owner],
            locks[slot].owner == ownerSlot
        else { throw .noEntry("no \(what) \(id) of \(owner)") }
        return Int32(slot)
    }

    /// Room for `more` resources and `moreLocks` locks beyond those held now (a recovery about to rebuild many here):
    /// the tables grow once, in this step, instead of doubling in the middle of the work, each doubling a copy of
    /// every record in one step.
    public mutating func reserveCapacity(resources more: Int, locks moreLocks: Int) {
        // (Free slots are taken first; the arrays grow by what is left.)
        let resourceTotal = resources.count + max(0, more - freeResources.count)
        if resourceTotal > resources.capacity { resources.reserveCapacity(resourceTotal) }
        resourceIndex.reserve(resourceIndex.count + more)
        let lockTotal = locks.count + max(0, moreLocks - freeLocks.count)
        if lockTotal > locks.capacity {
            locks.reserveCapacity(lockTotal)
            orphanProcessIDs.reserveCapacity(lockTotal)
            orphanUserIDs.reserveCapacity(lockTotal)
            orphanNodes.reserveCapacity(lockTotal)
        }
    }

    mutating func allocateLock() -> Int32 {
        liveLocks += 1
        while let slot = freeLocks.popLast() {
            if locks[Int(slot)].isFree { return slot }  // slots taken by restore stay on the list
        }
        locks.append(LockRecord())
        orphanProcessIDs.append(0)
        orphanUserIDs.append(LockEngine.unknownUser)
        orphanNodes.append(0)
        return Int32(locks.count - 1)
    }

    /// Frees a resource that has no locks and no resources in its namespace; its value block goes with it,
    /// its fencing-token counter is remembered in the lockspace's floor.
    mutating func freeResourceIfUnused(_ slot: Int32) {
        let record = resources[Int(slot)]
        guard !record.isFree, record.lockCount == 0, record.childResources == 0 else { return }
        if record.marks & ResourceMark.stored != 0 {
            journal.append(.delete(lockspace: lockspaces[Int(record.lockspace)].name, path: path(of: slot)))
        }
        if record.marks & ResourceMark.tracked != 0 {
            resources[Int(slot)].marks &= ~(ResourceMark.tracked | ResourceMark.dirty | ResourceMark.stored)
            storedLockCounts[slot] = nil
        }
        if record.marks & ResourceMark.replicated != 0 { replicaFreed(slot) }
        if config.reportsFreedResources && record.parent == none {
            freedResources.append((lockspaces[Int(record.lockspace)].name, record.name, now, record.fencingToken))
        }
        removeFromResourceIndex(slot)
        let ls = Int(record.lockspace)
        if record.fencingToken > lockspaces[ls].fencingTokenFloor {
            lockspaces[ls].fencingTokenFloor = record.fencingToken
        }
        lockspaces[ls].resourceCount -= 1
        resources[Int(slot)].lockspace = UInt32.max
        resources[Int(slot)].storedName = .empty
        resources[Int(slot)].valueBlock = nil
        freeResources.append(slot)
        if record.parent != none {
            resources[Int(record.parent)].childResources -= 1
            freeResourceIfUnused(record.parent)
        }
    }

    /// Takes a lock off its queue, its owner and its parent, and frees its slot. The resource is left for
    /// the caller to free.
    mutating func removeLock(_ lock: Int32) {
        let record = locks[Int(lock)]
        if record.queue == QueueKind.convert.rawValue { pendingValueBlocks[lock] = nil }
        if let queue = record.queueKind { unlinkFromQueue(lock, queue) }
        if record.options.contains(.stored) { forgetStoredLock(lock) }
        unlinkFromOwner(lock)
        if record.parent != none { removeSubLock(lock, from: record.parent) }
        let resource = record.resource
        resources[Int(resource)].lockCount -= 1
        lockspaces[Int(resources[Int(resource)].lockspace)].lockCount -= 1
        locks[Int(lock)] = LockRecord()
        freeLocks.append(lock)
        liveLocks -= 1
    }
}

extension LockEngine {
    mutating func addSubLock(_ lock: Int32, to parent: Int32) {
        locks[Int(parent)].children += 1
        subLocks[parent, default: []].insert(lock)
    }

    mutating func removeSubLock(_ lock: Int32, from parent: Int32) {
        locks[Int(parent)].children -= 1
        if locks[Int(parent)].children == 0 {
            subLocks[parent] = nil
        } else {
            subLocks[parent]?.remove(lock)
        }
    }
}
