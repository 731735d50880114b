import DLMCore

/// Who a client is, as the kernel says (`SO_PEERCRED` on a Unix socket, taken when it connected): the pid its
/// locks and orphans carry (purges name it), and the uid that reports show. The pid a client states in
/// HELLO is not trusted: the kernel's is used, except that root may name another process (as root may in
/// `SCM_CREDENTIALS`: a supervisor acting for a process). A pid different from the kernel's is not refused, since
/// a client in another pid namespace legitimately sees itself under another number. A TCP client has no kernel
/// credentials: its HELLO pid is taken as stated and its uid is unknown (docs/SECURITY.md). The uid, gid and
/// supplementary groups decide what the client may do with lockspaces (`LockspaceAccess`).
public struct ClientCredentials: Sendable, Hashable {
    public var pid: UInt32
    public var uid: UInt32
    public var gid: UInt32
    /// Supplementary groups (`SO_PEERGROUPS`).
    public var groups: [UInt32]

    /// `gid` nil: the same number as `uid`.
    public init(pid: UInt32, uid: UInt32, gid: UInt32? = nil, groups: [UInt32] = []) {
        self.pid = pid
        self.uid = uid
        self.gid = gid ?? uid
        self.groups = groups
    }

    /// Who a client without kernel credentials (TCP) is for lockspace permissions: user and group `nobody`, so it
    /// may use lockspaces created over TCP and those whose mode lets others in, and no other.
    public static let nobody = ClientCredentials(pid: 0, uid: 65534, gid: 65534)
    /// Root: may do anything.
    public static let root = ClientCredentials(pid: 0, uid: 0, gid: 0)

    /// Whether these credentials have `needed` on a lockspace with `access`; nil access (no client of this node
    /// created it) only root.
    public func permits(_ needed: UInt16, on access: LockspaceAccess?) -> Bool {
        guard let access else { return uid == 0 }
        return access.permits(needed, uid: uid, gid: gid, groups: groups)
    }
}

extension LockService {
    /// The pid a client's locks carry: the kernel's, unless it is root naming another, or the kernel did not say.
    static func processID(claimed: UInt32, kernel: ClientCredentials?) -> UInt32 {
        guard let kernel else { return claimed }
        return kernel.uid == 0 && claimed != 0 ? claimed : kernel.pid
    }

    /// The uid of an owner of this node that is a live client with kernel credentials.
    func userID(of owner: OwnerID) -> UInt32? {
        connection(of: owner).flatMap { clients[Int($0.slot)].credentials?.uid }
    }
}
