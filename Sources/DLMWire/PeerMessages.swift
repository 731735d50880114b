import DLMCore

/// What one node's lock service says to another's about locks (Protocol/PEER.md) (point to point, in order per pair of nodes): the
/// resource directory (`lookup`), requests of a holder node to a resource's master, and what the master answers
/// and sends later. Lock ids in these messages are the master's; owners are cluster-wide (`OwnerID`).
public enum PeerMessage: Sendable, Hashable {
    /// To the directory node of a resource: who masters it? The first node to ask becomes its master.
    case lookup(DirectoryKey)
    /// The directory's answer. `floor`: the highest fencing token that masters which dropped resources of the
    /// lockspace told the directory of (`remove`); a new master's resource starts above it.
    case lookupReply(DirectoryKey, master: UInt32, floor: UInt64)
    /// A new lock, to the resource's master (or, for a sub-lock, to its parent's master).
    case request(ref: UInt64, RemoteLockRequest)
    /// A conversion of a lock the master holds for the sender.
    case convert(ref: UInt64, ConvertRequest)
    /// An unlock or cancel of a lock the master holds for the sender.
    case unlock(ref: UInt64, UnlockRequest)
    /// The master's answer to `request`, `convert` or `unlock` with this `ref`: before anything else that the
    /// same operation caused.
    case reply(ref: UInt64, PeerReply)
    /// A completion for a lock of the receiver's owner (a grant, a refusal, a timeout, an unlock...).
    case completion(Completion)
    /// A blocking callback for a lock of the receiver's owner.
    case blockingCallback(BlockingCallback)
    /// The owner went away: the master releases its locks (and orphans its persistent ones).
    case ownerExited(OwnerID)
    /// Recovery for `view`, to a resource's new directory node: the sender masters these resources.
    case recoverMasters(view: UInt64, [DirectoryKey])
    /// Recovery for `view`, to the new master of resources whose master left: the sender's locks on them.
    case recoverLocks(view: UInt64, [RecoveredLock])
    /// Recovery for `view`, the new master's answer to `recoverLocks`: the id it gave each of the holder's locks.
    case recoverBindings(view: UInt64, [RecoveredBinding])
    /// Recovery for `view`: the sender has sent everything of `phase` (in order before this message). In phase 1
    /// (zero and empty in phase 2): `departed`, the nodes that left, as the sender counts them since its last
    /// completed recovery; `recovered`, the last view whose recovery completed on the sender in its present life
    /// (0: none, a new life); `stored`, for a new life, the last view whose recovery completed on it in its previous
    /// life, from its store (0: none, or it has no persistent locks stored).
    case recoveryDone(view: UInt64, phase: UInt8, departed: [UInt32], recovered: UInt64 = 0, stored: UInt64 = 0)
    /// To a resource's backup node: the value-block state of resources the sender masters, as of its generation
    /// `generation` in its life `incarnation` (a removal when a resource was freed). Sent ahead of messages held for
    /// a commit. `view`: the recovery run the sender last completed or runs now (a backup tells a master that a view
    /// it recovered left out from one of a view it has not installed yet).
    case valueReplicas(generation: UInt64, incarnation: UInt64, view: UInt64, [ValueReplica])
    /// The backup node keeps every replica the receiver sent it up to `generation`.
    case valueReplicasStored(generation: UInt64)
    /// Recovery for `view`, to the new master of resources whose master left: the replicas the sender kept of
    /// them.
    case recoverValues(view: UInt64, [ValueReplica])
    /// Recovery for `view`, from a new life that has persistent locks in its store, to the directory node of their
    /// resources: the resources as its previous life left them (its persistent locks as orphans, their value
    /// blocks). Taken only at a restart of the whole cluster, from the members whose `stored` view is the latest.
    case recoverStored(view: UInt64, [ValueReplica])
    /// To a resource's directory node, from its master: the resource has been idle for the toss delay and the
    /// sender no longer wants to master it. The directory forgets it (if it names the sender) and answers
    /// `removed`; until then the sender holds the requests for it. `floor`: the last fencing token the resource
    /// issued, so that its next master, wherever it is, issues larger ones. `view`: the view of the sender's last
    /// recovery; a REMOVE of an earlier view than the receiver's is stale (a recovery rebuilt the directory since,
    /// from the masters' own lists) and changes nothing.
    case remove(DirectoryKey, floor: UInt64, view: UInt64)
    /// The directory's answer to `remove`: it names no master for the resource now (unless another node asked
    /// first).
    case removed(DirectoryKey)
    /// Deadlock detection across nodes (docs/SEMANTICS.md, "Deadlocks across nodes"), to every other member: send
    /// your part of the wait-for graph for search `search` of the sender, made in the view of recovery `view`.
    case deadlockSearch(search: UInt64, view: UInt64)
    /// The answer to `deadlockSearch`, in one or more pieces (`last` on the last). `refused`: the sender is not in
    /// that view (recovering, or in another one): the search is given up.
    case deadlockGraph(search: UInt64, view: UInt64, last: Bool, refused: Bool, WaitForGraphPart)
    /// A cycle across masters that a search found, to the master of its lowest step, which alone decides it.
    case deadlockCycle(view: UInt64, [DeadlockStep])
    /// To the master of some steps of a cycle: does each still wait, in the same wait, for its blocker?
    case deadlockCheck(check: UInt64, view: UInt64, [DeadlockCheckItem])
    /// The answer to `deadlockCheck`: one state per item, in order.
    case deadlockChecked(check: UInt64, [DeadlockStepState])
    /// The victim of check `check` of the sender, to its master: refuse it with EDEADLK if it still waits in that
    /// wait; then answer `deadlockRefused`.
    case deadlockVictim(view: UInt64, check: UInt64, lock: LockID, waitSequence: UInt32)
    /// The decision of check `check` of the sender is over: what its `deadlockCheck` held here runs again.
    case deadlockRelease(check: UInt64)
    /// The answer to `deadlockVictim`: the victim of the receiver's check `check` was refused (or no longer
    /// waited); the receiver ends the holds of the other masters.
    case deadlockRefused(check: UInt64)
    /// A client's PURGE across nodes (`dlm_ls_purge`), to every other member: remove the orphans of `lockspace`
    /// that a process `pid` of node `node` left and that user `uid` (the asking client's; 0, root: any) may take
    /// over; answered by `purged` with the same `ref`.
    case purge(ref: UInt64, lockspace: [UInt8], node: UInt32, pid: UInt32, uid: UInt32)
    /// The answer to `purge`: how many locks the receiver removed (sub-locks included), and how many orphans of
    /// that process it left for being another user's.
    case purged(ref: UInt64, count: UInt32, skipped: UInt32)
    /// A client's DEADLOCK_CANCEL (`dlm_ls_deadlock_cancel`) of a lock mastered by the receiver: refuse its
    /// waiting request or conversion with EDEADLK. `lock` is the master's id, `owner` the lock's owner (the lock
    /// is not touched if the id now names another owner's lock). Answered by `reply` with the same `ref`: taken
    /// (never with a completion: the EDEADLK goes to the lock's owner as any completion) or refused.
    case deadlockCancel(ref: UInt64, lock: LockID, owner: OwnerID)
    /// Phase 0 of recovery run `run` (a view number times 2^20 plus the run's number within the view), to every
    /// other member: the lockspaces the sender belongs to or asks to join, and what it knows of the directory's
    /// state. The lockspaces' groups, and the lockspaces whose directory the run rebuilds, follow from every
    /// member's report alike (docs/RECOVERY.md, "Lockspace groups").
    case recoverLockspaces(run: UInt64, LockspaceReport)
    /// To the view's coordinator (its lowest node): a lockspace waits to be joined; start a recovery run in view
    /// `view` (a view number).
    case recoveryRequest(view: UInt64)
    /// From the view's coordinator to every other member: start recovery run `run` (of the view the receiver is in,
    /// with the same members).
    case recoveryStart(run: UInt64)
}

/// A node's phase-0 report.
public struct LockspaceReport: Sendable, Hashable {
    /// The sender's last completed run in its present life (0: none).
    public var recovered: UInt64
    /// The nodes the sender counts as departed since that run.
    public var departed: [UInt32]
    /// The lockspaces whose directory entries a run since then began to rebuild on the sender.
    public var unsettled: [[UInt8]]
    public var lockspaces: [LockspaceMembership]
    /// As a directory node: per lockspace, the highest last fencing token of the resources dropped from it (the
    /// floor a new master starts above), in name order. Every member takes the highest of each lockspace's.
    public var tokenFloors: [LockspaceTokenFloor]

    public init(
        recovered: UInt64 = 0, departed: [UInt32] = [], unsettled: [[UInt8]] = [], lockspaces: [LockspaceMembership],
        tokenFloors: [LockspaceTokenFloor] = []
    ) {
        self.recovered = recovered
        self.departed = departed
        self.unsettled = unsettled
        self.lockspaces = lockspaces
        self.tokenFloors = tokenFloors
    }
}

/// A lockspace's fencing-token floor as a directory node keeps it (RECOVER_LOCKSPACES).
public struct LockspaceTokenFloor: Sendable, Hashable {
    public var lockspace: [UInt8]
    public var floor: UInt64

    public init(lockspace: [UInt8], floor: UInt64) {
        self.lockspace = lockspace
        self.floor = floor
    }
}

/// One lockspace of a node's phase-0 list: its name and value-block length (0: any, for a join that named none),
/// and whether the node asks to join it (else it belongs to it already).
public struct LockspaceMembership: Sendable, Hashable {
    public var name: [UInt8]
    public var valueBlockLength: Int
    public var joining: Bool

    public init(name: [UInt8], valueBlockLength: Int, joining: Bool) {
        self.name = name
        self.valueBlockLength = valueBlockLength
        self.joining = joining
    }
}

/// One step of a cycle for its master to check: the lock, its wait, and the participant it should wait for.
public struct DeadlockCheckItem: Sendable, Hashable {
    public var lock: LockID
    public var waitSequence: UInt32
    public var blocker: DeadlockParticipant

    public init(lock: LockID, waitSequence: UInt32, blocker: DeadlockParticipant) {
        self.lock = lock
        self.waitSequence = waitSequence
        self.blocker = blocker
    }
}

/// A lock of a surviving holder on a resource whose master left, as its holder knows it (recovery's resend).
public struct RecoveredLock: Sendable, Hashable {
    public var lockspace: [UInt8]
    public var valueBlockLength: Int
    /// The name of the top-level resource (of the lock's own resource, or of the top of its parents' chain).
    public var name: [UInt8]
    /// For a sub-lock, the names of the resources below the top-level one, down to the lock's own (empty for a
    /// lock on a top-level resource).
    public var subPath: [[UInt8]]
    /// For a sub-lock, the holder's id of its parent lock (0: none).
    public var parentCopy: UInt32
    /// The holder's id for the lock (its process copy).
    public var copy: UInt32
    public var owner: OwnerID
    public var pid: UInt32
    /// The owner's user (`LockEngine.unknownUser` if unknown).
    public var uid: UInt32
    /// nil for a request that waits; else the granted mode.
    public var grantedMode: LockMode?
    /// A conversion's or waiting request's mode; nil when granted and not converting.
    public var requestedMode: LockMode?
    public var flags: LockFlags
    public var priority: UInt8
    public var wantsBlockingCallbacks: Bool
    public var alwaysFencingToken: Bool
    public var transaction: UInt64?
    /// The value block the holder last read or wrote, and its sequence number.
    public var valueBlock: [UInt8]?
    public var valueBlockSequence: UInt64
    public var fencingToken: UInt64
    /// The TIMEOUT of a waiting request or conversion, in nanoseconds (nil: none): it gives up that long after the
    /// new master rebuilt it (how long it had waited is not known across nodes).
    public var timeout: UInt64?
    /// An unlock or conversion of the lock that its holder sent to the departed master and that was not answered:
    /// that master may have done it, and granted other locks since (the holder sends the operation again once the
    /// recovery is done). Nil: none.
    public var inFlight: InFlightOperation?

    /// An operation on its way to a master that left (`inFlight`).
    public enum InFlightOperation: Sendable, Hashable {
        /// An unlock (also a FORCEUNLOCK): done, the lock holds nothing.
        case unlock
        /// A conversion to that mode.
        case conversion(LockMode)
    }

    public init(
        lockspace: [UInt8], valueBlockLength: Int, name: [UInt8], copy: UInt32, owner: OwnerID, pid: UInt32,
        uid: UInt32 = LockEngine.unknownUser, grantedMode: LockMode?, requestedMode: LockMode?, flags: LockFlags,
        priority: UInt8,
        wantsBlockingCallbacks: Bool, alwaysFencingToken: Bool, transaction: UInt64?, valueBlock: [UInt8]?,
        valueBlockSequence: UInt64, fencingToken: UInt64, timeout: UInt64? = nil, subPath: [[UInt8]] = [],
        parentCopy: UInt32 = 0, inFlight: InFlightOperation? = nil
    ) {
        self.inFlight = inFlight
        self.subPath = subPath
        self.parentCopy = parentCopy
        self.timeout = timeout
        self.lockspace = lockspace
        self.valueBlockLength = valueBlockLength
        self.name = name
        self.copy = copy
        self.owner = owner
        self.pid = pid
        self.uid = uid
        self.grantedMode = grantedMode
        self.requestedMode = requestedMode
        self.flags = flags
        self.priority = priority
        self.wantsBlockingCallbacks = wantsBlockingCallbacks
        self.alwaysFencingToken = alwaysFencingToken
        self.transaction = transaction
        self.valueBlock = valueBlock
        self.valueBlockSequence = valueBlockSequence
        self.fencingToken = fencingToken
    }
}

extension RecoveredLock {
    /// The fewest bytes a recovered lock takes on the wire (one-byte names, no value block, no sub-path).
    static let leastEncodedLength = 2 + 1 + 2 + 4 + 20 + 4 + 4 + 1 + 1 + 4 + 1 + 1 + 8 + 1 + 8 + 8 + 8 + 4 + 2 + 1

    /// The names from the top-level resource down to the lock's own.
    public var path: [[UInt8]] { [name] + subPath }
}

/// The new master's id for a holder's recovered lock.
public struct RecoveredBinding: Sendable, Hashable {
    public var copy: UInt32
    /// The owner of the copy, as its node numbers it (`OwnerID.rawValue`): a holder binds the lock only to a copy
    /// that this owner still holds (copy ids are reused).
    public var owner: UInt64
    public var lock: LockID
    /// The lock's grant as its master has it, in a binding sent again for a lock an earlier run rebuilt
    /// (`reboundBindings`) that is granted with no conversion waiting: the master may have granted it after that
    /// run ended, while the holder's copy still waited for this binding and dropped the completion. A holder whose
    /// copy still waits for that request or conversion delivers this grant. nil in a binding of a lock this run
    /// rebuilt (it is as the holder resent it), and for a lock that still waits.
    public var grant: RecoveredGrant?

    public init(copy: UInt32, owner: UInt64, lock: LockID, grant: RecoveredGrant? = nil) {
        self.copy = copy
        self.owner = owner
        self.lock = lock
        self.grant = grant
    }
}

/// What a completion says of a lock granted earlier, as its master tells it again (`RecoveredBinding.grant`): the
/// granted mode, the completion flags that still hold (VALNOTVALID), the value block as a grant reads it now (nil
/// without VALBLK), its sequence, and the lock's fencing token.
public struct RecoveredGrant: Sendable, Hashable {
    public var mode: LockMode
    public var flags: CompletionFlags
    public var valueBlock: [UInt8]?
    public var valueBlockSequence: UInt64
    public var fencingToken: UInt64

    public init(
        mode: LockMode, flags: CompletionFlags = [], valueBlock: [UInt8]? = nil, valueBlockSequence: UInt64 = 0,
        fencingToken: UInt64 = 0
    ) {
        self.mode = mode
        self.flags = flags
        self.valueBlock = valueBlock
        self.valueBlockSequence = valueBlockSequence
        self.fencingToken = fencingToken
    }

    /// The grant a completion tells (nil for one that grants no mode).
    public init?(_ completion: Completion) {
        guard let mode = completion.mode else { return nil }
        self.init(
            mode: mode, flags: completion.flags, valueBlock: completion.valueBlock,
            valueBlockSequence: completion.valueBlockSequence, fencingToken: completion.fencingToken)
    }
}

/// A master's answer to a request, conversion or unlock of another node.
public enum PeerReply: Sendable, Hashable {
    /// Refused, nothing changed (the same error as on one node).
    case refused(DLMError)
    /// The receiver of the request does not master the resource (a stale cached master): look it up again.
    case notMaster
    /// Taken as the master's lock `lock`; with the operation's own completion if it came at once.
    case taken(lock: LockID, completion: Completion?)
}

/// A resource of a lockspace, by name, as the directory knows it (top-level resources only: a sub-resource lives
/// with its parent's master).
public struct DirectoryKey: Sendable, Hashable {
    public let lockspace: [UInt8]
    public let name: [UInt8]
    /// The names' hash under this process's seed, taken once: a key goes through several tables (the master cache,
    /// the directory, a recovery's received locks, each sharded by the hash too), and hashing the names' bytes for
    /// each lookup was a seventh of a recovery's CPU. (Seeded, as every Swift hash: names that a client chooses
    /// cannot be made to collide.)
    private let hash: Int

    public init(lockspace: [UInt8], name: [UInt8]) {
        self.lockspace = lockspace
        self.name = name
        var hasher = Hasher()
        hasher.combine(lockspace.count)
        lockspace.withUnsafeBytes { hasher.combine(bytes: $0) }
        name.withUnsafeBytes { hasher.combine(bytes: $0) }
        hash = hasher.finalize()
    }

    public static func == (a: DirectoryKey, b: DirectoryKey) -> Bool {
        a.hash == b.hash && a.name == b.name && a.lockspace == b.lockspace
    }

    public func hash(into hasher: inout Hasher) { hasher.combine(hash) }

    /// (KeyHash: the names' hash, taken once with Swift's seeded hasher, mixed with the table's seed.)
    public func _rawHashValue(seed: Int) -> Int { KeyHash.mix(UInt64(bitPattern: Int64(hash)), seed: seed) }

    /// A hash that every node computes alike (FNV-1a, 64 bits, over the lockspace name, a zero byte and the
    /// resource name): the directory node of the resource is the member at this hash modulo the member count.
    public var directoryHash: UInt64 {
        var hash: UInt64 = 0xcbf2_9ce4_8422_2325
        for byte in lockspace {
            hash = (hash ^ UInt64(byte)) &* 0x0000_0100_0000_01b3
        }
        hash = (hash ^ 0) &* 0x0000_0100_0000_01b3
        for byte in name {
            hash = (hash ^ UInt64(byte)) &* 0x0000_0100_0000_01b3
        }
        return hash
    }
}

/// A new lock as a holder node asks its master for it: the engine's request, with the lockspace by name (lockspace
/// ids are per node) and the owner's process id and user (kept by an orphan, for purges and adoptions).
public struct RemoteLockRequest: Sendable, Hashable {
    public var lockspace: [UInt8]
    public var valueBlockLength: Int
    public var pid: UInt32
    /// The owner's user (`LockEngine.unknownUser` if unknown): an ORPHAN request adopts only an orphan it may take
    /// over (`LockEngine.mayTakeOver`).
    public var uid: UInt32
    /// The request; its `lockspace` is ignored (the master's is found by name), its `parent` is the master's id.
    public var request: LockRequest

    public init(
        lockspace: [UInt8], valueBlockLength: Int, pid: UInt32, uid: UInt32 = LockEngine.unknownUser,
        request: LockRequest
    ) {
        self.lockspace = lockspace
        self.valueBlockLength = valueBlockLength
        self.pid = pid
        self.uid = uid
        self.request = request
    }
}
