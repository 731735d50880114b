/// The end of a request, a conversion, an unlock or a cancel: libdlm's completion AST with its lksb.
public struct Completion: Sendable, Hashable {
    public var lock: LockID
    public var owner: OwnerID
    public var status: DLMStatus
    public var flags: CompletionFlags
    /// The mode the lock holds after this completion: nil when it holds none (a refused or cancelled new
    /// request, an unlock).
    public var mode: LockMode?
    /// With VALBLK on a grant or up-conversion, the value read (length of the lockspace's value block).
    public var valueBlock: [UInt8]?
    /// The resource's value block sequence number when it was read or written.
    public var valueBlockSequence: UInt64
    /// For a grant of PW or EX (or any grant when asked), a token that increases strictly per resource. Zero
    /// when no token was issued.
    public var fencingToken: UInt64

    public init(
        lock: LockID, owner: OwnerID, status: DLMStatus, flags: CompletionFlags = [], mode: LockMode?,
        valueBlock: [UInt8]? = nil, valueBlockSequence: UInt64 = 0, fencingToken: UInt64 = 0
    ) {
        self.lock = lock
        self.owner = owner
        self.status = status
        self.flags = flags
        self.mode = mode
        self.valueBlock = valueBlock
        self.valueBlockSequence = valueBlockSequence
        self.fencingToken = fencingToken
    }
}

/// A blocking callback (libdlm's bast): another request waits for a mode this lock's granted mode blocks.
public struct BlockingCallback: Sendable, Hashable {
    public var lock: LockID
    public var owner: OwnerID
    /// The mode that is blocked.
    public var mode: LockMode

    public init(lock: LockID, owner: OwnerID, mode: LockMode) {
        self.lock = lock
        self.owner = owner
        self.mode = mode
    }
}

/// The end of an operation done in slices (a purge, a forced release of a lockspace; BulkWork.swift).
public struct Finished: Sendable, Hashable {
    /// Who asked for it.
    public var owner: OwnerID
    /// What the shell passed when it started the operation (e.g. the request's tag).
    public var context: UInt64
    /// How many locks it removed.
    public var count: Int
    /// A purge: how many orphans it left because they were another user's.
    public var skipped: Int

    public init(owner: OwnerID, context: UInt64, count: Int, skipped: Int = 0) {
        self.owner = owner
        self.context = context
        self.count = count
        self.skipped = skipped
    }
}

/// What came of an input, and what the engine asks its shell to do, in the order it must be done.
public enum Effect: Sendable, Hashable {
    /// The input was refused and changed nothing (EINVAL, ENOENT, EBUSY, EAGAIN, ...); the first effect.
    case refused(DLMError)
    /// A new request was taken as this lock; its completion follows, now or later.
    case accepted(LockID)
    /// A lockspace was opened (`created`: by this input).
    case lockspace(LockspaceInfo, created: Bool)
    case completion(Completion)
    case blockingCallback(BlockingCallback)
    /// The end of a release or purge (done in slices when large), for its requester.
    case finished(Finished)
    /// The value-block state of a replicated resource, for a second node, after the effects of the input that
    /// changed it and before its `persist` effects (ValueReplicas.swift).
    case replicate(ValueReplica)
    /// A change for the store, after the effects of the input that made it (Journal.swift).
    case persist(JournalEntry)
}
