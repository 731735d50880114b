import DLMCore

/// What one node's lock service says to another's about locks (Protocol/PEER.md) (point to point, in order per pair of nodes): the
/// resource directory (`lookup`), requests of a holder node to a resource's master, and what the master answers
/// and sends later. Lock ids in these messages are the master's; owners are cluster-wide (`OwnerID`).
public enum PeerMessage: Sendable, Hashable {
    /// To the directory node of a resource: who masters it? The first node to ask becomes its master.
    case lookup(DirectoryKey)
    /// The directory's answer.
    case lookupReply(DirectoryKey, master: UInt32)
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
    public var lockspace: [UInt8]
    public var name: [UInt8]

    public init(lockspace: [UInt8], name: [UInt8]) {
        self.lockspace = lockspace
        self.name = name
    }

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
/// ids are per node) and the owner's process id (kept by an orphan, for purges).
public struct RemoteLockRequest: Sendable, Hashable {
    public var lockspace: [UInt8]
    public var valueBlockLength: Int
    public var pid: UInt32
    /// The request; its `lockspace` is ignored (the master's is found by name), its `parent` is the master's id.
    public var request: LockRequest

    public init(lockspace: [UInt8], valueBlockLength: Int, pid: UInt32, request: LockRequest) {
        self.lockspace = lockspace
        self.valueBlockLength = valueBlockLength
        self.pid = pid
        self.request = request
    }
}
