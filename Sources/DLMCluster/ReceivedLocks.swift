import DLMCore
import DLMWire

/// The locks that holders resent to this node, their new master, in a recovery's phase 1, for phase 2 to rebuild
/// their resources from (LockService+Recovery.swift): in order of arrival, each resource's locks chained from its
/// first. (A table of one array per resource was an allocation for each of hundreds of thousands of resources,
/// and a second lookup of each when phase 2 came to it.)
struct ReceivedLocks {
    struct Entry {
        var key: DirectoryKey
        var node: UInt32
        var lock: RecoveredLock
        /// The resource's next lock (-1: none).
        var next = -1
        /// Whether this is the resource's first lock.
        var isFirst: Bool
    }

    private(set) var entries = ChunkedArray<Entry>()
    /// Per resource, its last lock.
    private var last = ShardedDictionary<DirectoryKey, Int>()
    /// How many resources the locks are of.
    private(set) var resourceCount = 0

    var count: Int { entries.count }

    func contains(_ key: DirectoryKey) -> Bool { last[key] != nil }

    mutating func append(_ lock: RecoveredLock, from node: UInt32) {
        let key = DirectoryKey(lockspace: lock.lockspace, name: lock.name)
        let index = entries.count
        // (One lookup: the previous last lock, if any, and this one in its place.)
        let previous = Self.replace(&last[key, default: -1], with: index)
        if previous >= 0 {
            entries[previous].next = index
        } else {
            resourceCount += 1
        }
        entries.append(Entry(key: key, node: node, lock: lock, isFirst: previous < 0))
    }

    private static func replace(_ value: inout Int, with new: Int) -> Int {
        defer { value = new }
        return value
    }

    /// Takes the locks of the resource whose first lock is at `first` out, in order of arrival (into `holders`,
    /// emptied first): phase 2 rebuilds each resource once. (Moved out, not copied: a copy retained each of a lock's
    /// names, and the table released them again when it went.) Their entries keep their key and chain.
    mutating func takeHolders(from first: Int, into holders: inout [(node: UInt32, lock: RecoveredLock)]) {
        holders.removeAll(keepingCapacity: true)
        var index = first
        while index >= 0 {
            var lock = Self.taken
            swap(&lock, &entries[index].lock)
            holders.append((entries[index].node, lock))
            index = entries[index].next
        }
    }

    /// What a taken entry holds instead of its lock (no storage of its own).
    private static let taken = RecoveredLock(
        lockspace: [], valueBlockLength: 0, name: [], copy: 0, owner: OwnerID(node: 0, incarnation: 0, local: 0),
        pid: 0, uid: 0, grantedMode: nil, requestedMode: nil, flags: [], priority: 0, wantsBlockingCallbacks: false,
        alwaysFencingToken: false, transaction: nil, valueBlock: nil, valueBlockSequence: 0, fencingToken: 0,
        timeout: nil, subPath: [], parentCopy: 0)
}

extension ReceivedLocks: Sendable {}
extension ReceivedLocks.Entry: Sendable {}
