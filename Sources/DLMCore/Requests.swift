/// A new lock request (libdlm `dlm_ls_lock` without CONVERT).
public struct LockRequest: Sendable, Hashable {
    public var lockspace: LockspaceID
    public var owner: OwnerID
    /// The resource name, 1 to 64 bytes, binary allowed.
    public var name: [UInt8]
    public var mode: LockMode
    public var flags: LockFlags
    /// A granted lock of the same owner whose resource is the namespace of this one (OpenVMS sub-locks).
    public var parent: LockID?
    /// With TIMEOUT: give up after this many nanoseconds of waiting, status ETIMEDOUT.
    public var timeout: UInt64?
    /// The transaction this request belongs to for deadlock detection (libdlm `dlm_ls_lockx`'s xid).
    public var transaction: UInt64?
    /// Deadlock priority: the lowest priority in a cycle is the victim.
    public var priority: UInt8
    /// Whether the holder wants blocking callbacks (a libdlm caller that passes no bast function does not).
    public var wantsBlockingCallbacks: Bool
    /// Return a fencing token with every grant, not only grants of PW and EX.
    public var alwaysFencingToken: Bool

    public init(
        lockspace: LockspaceID, owner: OwnerID, name: [UInt8], mode: LockMode, flags: LockFlags = [],
        parent: LockID? = nil, timeout: UInt64? = nil, transaction: UInt64? = nil, priority: UInt8 = 0,
        wantsBlockingCallbacks: Bool = true, alwaysFencingToken: Bool = false
    ) {
        self.lockspace = lockspace
        self.owner = owner
        self.name = name
        self.mode = mode
        self.flags = flags
        self.parent = parent
        self.timeout = timeout
        self.transaction = transaction
        self.priority = priority
        self.wantsBlockingCallbacks = wantsBlockingCallbacks
        self.alwaysFencingToken = alwaysFencingToken
    }
}

/// A conversion of a granted lock (libdlm `dlm_ls_lock` with CONVERT).
public struct ConvertRequest: Sendable, Hashable {
    public var lock: LockID
    public var owner: OwnerID
    public var mode: LockMode
    /// Must include CONVERT.
    public var flags: LockFlags
    /// With VALBLK, the value to write when converting down from PW or EX.
    public var valueBlock: [UInt8]?
    public var timeout: UInt64?
    public var priority: UInt8?
    /// The value block's sequence number when the lock was last granted, as its holder knows it: a sequence above it
    /// means the write was done already (`LockEngine.writeWasDone`). Nil: written (a local client's request).
    public var valueBlockBase: UInt64?

    public init(
        lock: LockID, owner: OwnerID, mode: LockMode, flags: LockFlags = .convert, valueBlock: [UInt8]? = nil,
        timeout: UInt64? = nil, priority: UInt8? = nil, valueBlockBase: UInt64? = nil
    ) {
        self.lock = lock
        self.owner = owner
        self.mode = mode
        self.flags = flags.union(.convert)
        self.valueBlock = valueBlock
        self.timeout = timeout
        self.priority = priority
        self.valueBlockBase = valueBlockBase
    }
}

/// An unlock or cancel (libdlm `dlm_ls_unlock`).
public struct UnlockRequest: Sendable, Hashable {
    public var lock: LockID
    public var owner: OwnerID
    /// CANCEL, FORCEUNLOCK, VALBLK, IVVALBLK.
    public var flags: LockFlags
    /// With VALBLK, the value to write when unlocking from PW or EX.
    public var valueBlock: [UInt8]?
    /// The value block's sequence number when the lock was last granted, as its holder knows it: a sequence above it
    /// means the write was done already (`LockEngine.writeWasDone`). Nil: written (a local client's request).
    public var valueBlockBase: UInt64?

    public init(
        lock: LockID, owner: OwnerID, flags: LockFlags = [], valueBlock: [UInt8]? = nil, valueBlockBase: UInt64? = nil
    ) {
        self.lock = lock
        self.owner = owner
        self.flags = flags
        self.valueBlock = valueBlock
        self.valueBlockBase = valueBlockBase
    }
}

/// Everything that can happen to a lock engine: the one way in (`LockEngine.handle`). What came of it comes out as
/// effects, in order: the input's own outcome first (`refused`, `accepted`, `lockspace`, a completion), then what
/// it let through, then the changes for the store (`persist`).
public enum Input: Sendable, Hashable {
    case lock(LockRequest)
    case convert(ConvertRequest)
    case unlock(UnlockRequest)
    /// The owner went away: release its locks, orphan its persistent ones.
    case ownerExited(OwnerID)
    /// Time passed: run timeouts and deadlock searches that are due.
    case tick(now: Instant)
    /// Opens a lockspace, creating it if it does not exist and `create` says so. A length of nil opens it whatever
    /// its length, and creates it with the default. A lockspace created, or one that no client of this node had
    /// created (it existed for other nodes' locks), is given `creator` when `create` says so; its `lockspace` effect
    /// then says `created`.
    case openLockspace(name: [UInt8], valueBlockLength: Int?, create: Bool, creator: LockspaceAccess? = nil)
    /// Releases a lockspace (with `force`, with its locks); ends with `finished` for `requester` and `context`.
    case releaseLockspace(LockspaceID, force: Bool, requester: OwnerID, context: UInt64)
    /// Removes the orphans of a lockspace whose former owner had `pid` (and, unless `node` is nil, was of that node)
    /// and that `user` may take over (root, 0: all of them); ends with `finished`.
    case purge(
        lockspace: LockspaceID, pid: UInt32, node: UInt32? = nil, user: UInt32 = 0, requester: OwnerID,
        context: UInt64)
    /// Refuses a waiting request or conversion with EDEADLK (a cluster-wide search's decision).
    case cancelForDeadlock(LockID)
    /// A cluster-wide search's victim (ClusterDeadlocks.swift): refused with EDEADLK if it still waits in the wait
    /// numbered `waitSequence`, else nothing.
    case deadlockVictim(LockID, waitSequence: UInt32)
    /// The owner's process id and user, given to the locks it takes and kept by its orphans.
    case setProcess(pid: UInt32, uid: UInt32 = LockEngine.unknownUser, owner: OwnerID)
    /// Runs a slice of the work done in slices (`hasBulkWork`).
    case continueBulkWork
    /// Gives back what a store kept after a restart (`restoreStored`).
    case restore(StoredResource)
    /// Rebuilds a resource whose master died from its survivors' locks (`recoverResource`): an `accepted` effect
    /// per lock, in the snapshot's order, with its new id.
    case recover(ResourceSnapshot)
    /// Recovery is over: every resource of the lockspace grants what it can, conversions regardless of their
    /// order (rule 4).
    case grantAfterRecovery(LockspaceID)
}
