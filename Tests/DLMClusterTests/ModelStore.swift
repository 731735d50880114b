import DLMCore

/// A node's store as NodeStore holds it after the store changes a lock service wrote (puts and deletes of resource
/// and lock records, lockspaces, the recovered view): what a restarted life of the node finds in it.
struct ModelStore {
    struct Key: Hashable {
        var lockspace: [UInt8]
        var path: [[UInt8]]
    }

    var resources: [Key: StoredResource] = [:]
    var lockspaces: [[UInt8]: Int] = [:]
    var recoveredView: UInt64 = 0

    mutating func apply(_ changes: [StoreChange]) {
        for change in changes {
            switch change {
            case .journal(.put(let stored)):
                // A put writes the resource's record and those of the locks it lists; other lock records stay.
                let key = Key(lockspace: stored.lockspace, path: stored.resource.path)
                var merged = stored
                if let old = resources[key] {
                    let listed = Set(stored.resource.locks.map(\.id))
                    merged.resource.locks =
                        (old.resource.locks.filter { !listed.contains($0.id) } + stored.resource.locks)
                        .sorted { $0.id.rawValue < $1.id.rawValue }
                }
                resources[key] = merged
            case .journal(.deleteLock(let lockspace, let path, let lock)):
                resources[Key(lockspace: lockspace, path: path)]?.resource.locks.removeAll { $0.id == lock }
            case .journal(.delete(let lockspace, let path)):
                resources[Key(lockspace: lockspace, path: path)] = nil
            case .putLockspace(let name, let length, _):
                lockspaces[name] = length
            case .deleteLockspace(let name):
                lockspaces[name] = nil
            case .view:
                break
            case .recoveredView(let view):
                recoveredView = view
            }
        }
    }

    /// The resource records in the store's order: by lockspace, parents before their sub-resources.
    var records: [StoredResource] {
        resources.values.sorted {
            ($0.lockspace.lexicographicallyPrecedes($1.lockspace))
                || ($0.lockspace == $1.lockspace
                    && $0.resource.path.map(\.displayName).joined(separator: "/")
                        < $1.resource.path.map(\.displayName).joined(separator: "/"))
        }
    }
}
