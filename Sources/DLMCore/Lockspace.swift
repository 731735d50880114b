/// A lockspace: a namespace of resources with its own value block length (REFERENCE.md §4).
struct LockspaceRecord {
    var name: [UInt8]
    var valueBlockLength: Int
    /// The highest fencing token of any resource of this lockspace that was freed, so that a resource
    /// created again never issues a token lower than before.
    var fencingTokenFloor: UInt64 = 0
    var resourceCount = 0
    var lockCount = 0
    var isLive = true
    /// Released, with locks still being dropped (a forced release in slices): not reused until they are gone.
    var isDraining = false
    /// How many lockspaces held this slot before: part of the lockspace's id, so that an id of a released
    /// lockspace never names a later one in the same slot (`LockEngine.liveSlot`).
    var generation: UInt32 = 0
    /// Who created it on this node and with which mode; nil while no client of this node has (it exists here only
    /// for other nodes' locks that this node masters).
    var access: LockspaceAccess?
}

/// What an operator sees of a lockspace.
public struct LockspaceInfo: Sendable, Hashable, Codable {
    public var id: LockspaceID
    public var name: [UInt8]
    public var valueBlockLength: Int
    public var resourceCount: Int
    public var lockCount: Int
    public var access: LockspaceAccess?
}

/// Who may use a lockspace on a node: the uid and gid of the client that created it there, and the permission
/// bits it gave (`dlm_create_lockspace(name, mode)`), read as a file's are: the owner's bits for the creator's uid,
/// the group's for a member of its gid, the others' for everyone else; root may do anything. Opening a lockspace
/// and locking in it need read and write permission (upstream's libdlm opens the lockspace's device node for
/// reading and writing); reading its locks (lockdebug, lockdump) needs read permission. Only the creator and
/// root may release it.
public struct LockspaceAccess: Sendable, Hashable, Codable {
    public var uid: UInt32
    public var gid: UInt32
    /// Permission bits, 0 to 0o777.
    public var mode: UInt16

    /// The mode a client asks for when it gives none: the creator only, as upstream's `dlm_tool join`.
    public static let defaultMode: UInt16 = 0o600
    /// Read and write, as `permits` takes them.
    public static let read: UInt16 = 0o4
    public static let write: UInt16 = 0o2

    public init(uid: UInt32, gid: UInt32, mode: UInt16) {
        self.uid = uid
        self.gid = gid
        self.mode = mode & 0o777
    }

    /// Whether a client with this uid, primary gid and supplementary groups has every bit of `needed` (`read`,
    /// `write`, or both). Only the first class that matches decides, as for a file: an owner without the bit
    /// does not fall back to the group's.
    public func permits(_ needed: UInt16, uid client: UInt32, gid: UInt32, groups: [UInt32]) -> Bool {
        if client == 0 { return true }
        let bits: UInt16
        if client == uid {
            bits = mode >> 6
        } else if gid == self.gid || groups.contains(self.gid) {
            bits = mode >> 3
        } else {
            bits = mode
        }
        return bits & needed == needed
    }

    /// `0640 uid 1000 gid 1000`, for messages and reports.
    public var description: String {
        "0\(String(mode, radix: 8)) uid \(uid) gid \(gid)"
    }
}
