import DLMCore
import DLMWire

/// The locks that this node's clients hold on resources mastered by other nodes: a process copy each (Linux's
/// lkid on the holder, remid on the master). The id a client sees for such a lock is this node's, with the high
/// bit set (the engine's own ids never have it); the master knows the lock by its own id.
struct ProcessCopies {
    static let idBit: UInt32 = 0x8000_0000

    struct Copy {
        /// The owner number of the holding connection on this node (0: a free entry).
        var owner: UInt64 = 0
        var master: UInt32 = 0
        /// The master's id, once it answered.
        var masterLock: LockID?
        /// What recovery resends if the master leaves (every live copy has one; nil for a free entry).
        var record: RecoveredLock?
        /// Resent to `master` by a recovery whose new id has not come yet (`recoverBindings`).
        var rebinding = false
        /// The mode of the last blocking callback the client got since the lock's last completion: a rebuilt
        /// master sends it again, and the client gets it once.
        var blocked: LockMode?
        /// The account of its owner's user (`LockEngine.account(ofUser:)`), or -1.
        var account: Int32 = -1
        /// The value block's sequence number at the lock's last grant (nil before its first): sent with each
        /// conversion and unlock, so that one sent again to a new master, which the departed master had done,
        /// writes nothing twice (`LockEngine.writeWasDone`).
        var grantSequence: UInt64?
    }

    /// A lock as its master knows it.
    struct MasterLock: Hashable {
        var node: UInt32
        var lock: UInt32

        /// (KeyHash: looked up for every remote operation, and twice for every lock a recovery moves.)
        func _rawHashValue(seed: Int) -> Int { KeyHash.mix(UInt64(node) << 32 | UInt64(lock), seed: seed) }
    }

    /// (Chunked and sharded: a node whose clients hold a million locks of other masters grows them without a step
    /// that moves or rehashes them all.)
    var copies = ChunkedArray<Copy>()
    var free: [Int] = []
    /// How many copies wait to be bound again (`rebinding`): at the end of a recovery, those left are walked for
    /// requests their departed master had ended (`LockService.endedByDepartedMasters`), only when there are some.
    var rebindingCount = 0
    var byMaster = ShardedDictionary<MasterLock, Int>()
    /// The copies of each owner of this node.
    var byOwner: [UInt64: Set<Int>] = [:]
    /// Every master each owner of this node sent a lock to since it connected, or that a recovery rebuilt one of its
    /// locks on, whether or not it holds a lock there now: each keeps a record of the owner until told of its exit
    /// (`beginExit`).
    var mastersUsed: [UInt64: Set<UInt32>] = [:]
    /// Owners that exited, and their copies still to forget (`forgetExited`, in slices): an owner holding a million
    /// locks of other masters is forgotten between turns of the event loop, as its local locks are released.
    var exiting = ForgetQueue<UInt64, Int>()
    /// The copies of each account's owners (for the per-user quota).
    var accountCounts: [Int] = []

    /// How many copies an owner has.
    func count(of owner: UInt64) -> Int { byOwner[owner]?.count ?? 0 }

    /// How many copies the owners of an account have.
    func count(ofAccount account: Int32) -> Int {
        account >= 0 && Int(account) < accountCounts.count ? accountCounts[Int(account)] : 0
    }

    static func isCopy(_ id: UInt32) -> Bool { id & idBit != 0 }

    static func lockID(_ index: Int) -> LockID { LockID(rawValue: idBit | UInt32(index + 1)) }

    /// The copy of a client-visible id, if it is a live copy of `owner`.
    func index(of id: UInt32, owner: UInt64) -> Int? {
        guard Self.isCopy(id) else { return nil }
        let index = Int(id & ~Self.idBit) - 1
        guard index >= 0, index < copies.count, copies[index].owner == owner, copies[index].owner != 0 else {
            return nil
        }
        return index
    }

    /// How many copies are mastered by this node itself (rebuilt here by recovery): their completions come from
    /// the local engine and are translated to the copy's id.
    var masteredHere = 0
    var localNode: UInt32 = 0

    /// The live copy of a client-visible id, whoever owns it.
    func index(ofCopy id: UInt32) -> Int? {
        guard Self.isCopy(id) else { return nil }
        let index = Int(id & ~Self.idBit) - 1
        guard index >= 0, index < copies.count, copies[index].owner != 0 else { return nil }
        return index
    }

    /// How many copies there are of locks on each top-level resource (those with a record), and the resources
    /// whose last copy went since `takeUnusedKeys`.
    var perKey = ShardedDictionary<DirectoryKey, Int>()
    var unusedKeys: [DirectoryKey] = []

    func usesKey(_ key: DirectoryKey) -> Bool { perKey[key] != nil }

    /// How many copies there are of locks in each lockspace (those with a record).
    var perLockspace: [[UInt8]: Int] = [:]

    mutating func takeUnusedKeys() -> [DirectoryKey] {
        defer { unusedKeys.removeAll(keepingCapacity: true) }
        return unusedKeys
    }

    mutating func add(owner: UInt64, master: UInt32, record: RecoveredLock? = nil, account: Int32 = -1) -> Int {
        let index: Int
        if let reused = free.popLast() {
            index = reused
        } else {
            index = copies.count
            copies.append(Copy())
        }
        copies[index] = Copy(owner: owner, master: master, masterLock: nil, record: record, account: account)
        byOwner[owner, default: []].insert(index)
        mastersUsed[owner, default: []].insert(master)
        if account >= 0 {
            while accountCounts.count <= Int(account) { accountCounts.append(0) }
            accountCounts[Int(account)] += 1
        }
        if let record {
            perKey[DirectoryKey(lockspace: record.lockspace, name: record.name), default: 0] += 1
            perLockspace[record.lockspace, default: 0] += 1
        }
        return index
    }

    mutating func bind(_ index: Int, masterLock: LockID) {
        copies[index].masterLock = masterLock
        if copies[index].rebinding { rebindingCount -= 1 }
        copies[index].rebinding = false
        byMaster[MasterLock(node: copies[index].master, lock: masterLock.rawValue)] = index
        if copies[index].master == localNode { masteredHere += 1 }
    }

    /// Whether a blocking callback for `mode` is news to the client (and notes it).
    mutating func blockingIsNew(_ index: Int, mode: LockMode) -> Bool {
        guard copies[index].blocked != mode else { return false }
        copies[index].blocked = mode
        return true
    }

    /// Forgets the copy's master (recovery sends it to `master` now).
    mutating func unbind(_ index: Int, newMaster master: UInt32) {
        let copy = copies[index]
        if let lock = copy.masterLock {
            let key = MasterLock(node: copy.master, lock: lock.rawValue)
            if byMaster[key] == index { byMaster[key] = nil }
            if copy.master == localNode { masteredHere -= 1 }
        }
        copies[index].masterLock = nil
        // (Not noted in `mastersUsed`: until the new master binds it, the exit reads this off the copy.)
        copies[index].master = master
        if !copy.rebinding { rebindingCount += 1 }
        copies[index].rebinding = true
    }

    /// `master` holds a lock of `owner` now: the owner's exit goes there too, whatever becomes of the lock.
    mutating func noteMaster(_ master: UInt32, of owner: UInt64) {
        mastersUsed[owner, default: []].insert(master)
    }

    /// What a completion from the master says of the lock: its mode, the value block it read, its token.
    mutating func apply(_ completion: Completion, to index: Int) {
        copies[index].blocked = nil
        guard copies[index].record != nil else { return }
        copies[index].record!.grantedMode = completion.mode
        copies[index].record!.requestedMode = nil
        if completion.status == .granted { copies[index].grantSequence = completion.valueBlockSequence }
        if let block = completion.valueBlock {
            copies[index].record!.valueBlock = block
            copies[index].record!.valueBlockSequence = completion.valueBlockSequence
        }
        if completion.fencingToken != 0 { copies[index].record!.fencingToken = completion.fencingToken }
    }

    func index(master: UInt32, lock: LockID) -> Int? { byMaster[MasterLock(node: master, lock: lock.rawValue)] }

    /// The copy of `owner`'s lock `lock` of `master`. (A lock id of a master may name another owner's lock while
    /// the answer that ends this copy is still on its way: on this node itself, the engine reuses an id at once.)
    func index(master: UInt32, lock: LockID, owner: OwnerID) -> Int? {
        guard owner.node == localNode, let index = byMaster[MasterLock(node: master, lock: lock.rawValue)],
            copies[index].owner == owner.rawValue
        else { return nil }
        return index
    }

    /// The copies below copy `index` (its sub-locks, theirs, ...) that wait to be bound again, parents before their
    /// sub-locks: resent with it by a recovery, and bound by none.
    func unboundSubLocks(of index: Int) -> [Int] {
        var children: [UInt32: [Int]] = [:]
        for sub in (byOwner[copies[index].owner] ?? []).sorted() where copies[sub].rebinding {
            if let parent = copies[sub].record?.parentCopy, parent != 0 { children[parent, default: []].append(sub) }
        }
        var below: [Int] = []
        var next = children[Self.lockID(index).rawValue] ?? []
        while let sub = next.popLast() {
            below.append(sub)
            next += children[Self.lockID(sub).rawValue] ?? []
        }
        return below
    }

    mutating func remove(_ index: Int) {
        let copy = copies[index]
        guard copy.owner != 0 else { return }
        if let lock = copy.masterLock {
            // (The master may have given its id to another lock of this node since, when this copy is one of an
            // exited owner forgotten in slices: that lock's entry stays.)
            let key = MasterLock(node: copy.master, lock: lock.rawValue)
            if byMaster[key] == index { byMaster[key] = nil }
            if copy.master == localNode { masteredHere -= 1 }
        }
        if copy.rebinding { rebindingCount -= 1 }
        byOwner[copy.owner]?.remove(index)
        if byOwner[copy.owner]?.isEmpty == true { byOwner[copy.owner] = nil }
        if copy.account >= 0 { accountCounts[Int(copy.account)] -= 1 }
        if let record = copy.record {
            let key = DirectoryKey(lockspace: record.lockspace, name: record.name)
            if let count = perKey[key], count > 1 {
                perKey[key] = count - 1
            } else {
                perKey[key] = nil
                unusedKeys.append(key)
            }
            if let count = perLockspace[record.lockspace], count > 1 {
                perLockspace[record.lockspace] = count - 1
            } else {
                perLockspace[record.lockspace] = nil
            }
        }
        copies[index] = Copy()
        free.append(index)
    }

    /// The owner exited: its copies are forgotten in slices from now on (`forgetExited`), and nothing may act on
    /// them meanwhile (`isExiting`). Returns the masters that hold its locks or ever did since it connected (its
    /// exit goes to them: a master keeps its record of the owner until then, also once its last lock there went).
    mutating func beginExit(of owner: UInt64) -> [UInt32] {
        var masters = mastersUsed.removeValue(forKey: owner) ?? []
        guard let indices = byOwner.removeValue(forKey: owner) else { return masters.sorted() }
        let list = Array(indices)
        exiting.append(owner, list)
        // (One pass over the owner's copies, reading a field each: the slices do the costly part.)
        for index in list { masters.insert(copies[index].master) }
        return masters.sorted()
    }

    func isExiting(_ owner: UInt64) -> Bool { exiting.contains(owner) }

    var hasExiting: Bool { !exiting.isEmpty }

    /// Forgets up to `budget` copies of owners that exited.
    mutating func forgetExited(budget: Int) {
        // (A copy that ended meanwhile, a completion of its master, may be another owner's by now.)
        for (owner, index) in exiting.take(upTo: budget) where copies[index].owner == owner { remove(index) }
    }
}
