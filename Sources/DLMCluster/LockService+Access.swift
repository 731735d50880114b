import DLMCore

/// Who may do what with a lockspace (`LockspaceAccess`): opening it, locking in it and purging its orphans need
/// read and write permission, releasing it needs to be its creator or root, cancelling another user's request
/// needs root. A
/// client's permission on a lockspace is checked once, when it opens it or first locks in it, and remembered on
/// its connection, so that a LOCK pays a short scan at most (and root nothing).
extension LockService {
    /// Who a connection is: the kernel's credentials, or user `nobody` for a client without (TCP).
    func identity(_ id: ConnectionID) -> ClientCredentials {
        clients[Int(id.slot)].credentials ?? .nobody
    }

    /// A connection's uid (`identity`'s), without copying its credentials and their list of groups: on the path
    /// of every remote LOCK.
    func userID(_ id: ConnectionID) -> UInt32 {
        clients[Int(id.slot)].credentials?.uid ?? ClientCredentials.nobody.uid
    }

    /// The access a lockspace this connection creates gets: its uid and gid and `mode`.
    func creator(_ id: ConnectionID, mode: UInt16) -> LockspaceAccess {
        let who = identity(id)
        return LockspaceAccess(uid: who.uid, gid: who.gid, mode: mode)
    }

    /// Remembers that the connection may use the lockspace.
    mutating func admit(_ id: ConnectionID, to lockspace: UInt32) {
        if !clients[Int(id.slot)].lockspaces.contains(lockspace) { clients[Int(id.slot)].lockspaces.append(lockspace) }
    }

    /// Why the connection may not open the lockspace, if it may not: an existing lockspace needs read and write
    /// permission; one that no client of this node created is taken by the first that opens it with `create`.
    func openRefusal(_ id: ConnectionID, name: [UInt8], create: Bool) -> String? {
        guard let existing = engine.lockspace(named: name) else { return nil }
        let access = engine.lockspaceInfo(existing)?.access
        if access == nil, create { return nil }
        let who = identity(id)
        guard !who.permits(LockspaceAccess.read | LockspaceAccess.write, on: access) else { return nil }
        return Self.denial(of: "read and write", name, access, who)
    }

    /// Why the connection may not lock in the lockspace, if it may not (not root: the caller checks).
    mutating func lockRefusal(_ id: ConnectionID, lockspace: UInt32) -> String? {
        if clients[Int(id.slot)].lockspaces.contains(lockspace) { return nil }
        // An unknown lockspace is the engine's ENOENT.
        guard let info = engine.lockspaceInfo(LockspaceID(rawValue: lockspace)) else { return nil }
        let who = identity(id)
        guard who.permits(LockspaceAccess.read | LockspaceAccess.write, on: info.access) else {
            return Self.denial(of: "read and write", info.name, info.access, who)
        }
        clients[Int(id.slot)].lockspaces.append(lockspace)
        return nil
    }

    /// Why the connection may not release the lockspace, if it may not: only its creator (its uid) and root may.
    func releaseRefusal(_ id: ConnectionID, lockspace: LockspaceID) -> String? {
        let who = identity(id)
        guard who.uid != 0, let info = engine.lockspaceInfo(lockspace) else { return nil }
        if let access = info.access, access.uid == who.uid { return nil }
        let creator = info.access.map { "its creator (uid \($0.uid))" } ?? "no client of this node created it, so"
        return "only \(creator) or root may release lockspace \(info.name.displayName); this client is uid \(who.uid)"
    }

    /// Why the connection may not cancel the lock's request with EDEADLK, if it may not: root may cancel any, a
    /// user the requests of its own uid's connections on this node.
    func deadlockCancelRefusal(_ id: ConnectionID, lock: LockID) -> String? {
        let who = identity(id)
        guard who.uid != 0 else { return nil }
        let owner: OwnerID?
        if let copy = mastering.copies.index(ofCopy: lock.rawValue) {
            // A lock of this node's client on a resource mastered elsewhere.
            owner = self.owner(local: mastering.copies.copies[copy].owner)
        } else if let state = engine.lockState(lock) {
            owner = state.owner
        } else {
            return nil
        }
        if let owner, userID(of: owner) == who.uid { return nil }
        return "lock \(lock.rawValue) is not a lock of uid \(who.uid) on this node: only root may cancel it"
    }

    /// The message of an EACCES.
    static func denial(
        of needed: String, _ name: [UInt8], _ access: LockspaceAccess?, _ who: ClientCredentials
    ) -> String {
        guard let access else {
            return "no client of this node created lockspace \(name.displayName): open it with create first"
        }
        return "lockspace \(name.displayName) (\(access.description)) gives uid \(who.uid) gid \(who.gid) "
            + "no \(needed) permission"
    }
}
