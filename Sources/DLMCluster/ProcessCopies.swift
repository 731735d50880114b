import DLMCore

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
    }

    /// A lock as its master knows it.
    struct MasterLock: Hashable {
        var node: UInt32
        var lock: UInt32
    }

    var copies: [Copy] = []
    var free: [Int] = []
    var byMaster: [MasterLock: Int] = [:]
    /// The copies of each owner of this node.
    var byOwner: [UInt64: Set<Int>] = [:]

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

    mutating func add(owner: UInt64, master: UInt32) -> Int {
        let index: Int
        if let reused = free.popLast() {
            index = reused
        } else {
            index = copies.count
            copies.append(Copy())
        }
        copies[index] = Copy(owner: owner, master: master, masterLock: nil)
        byOwner[owner, default: []].insert(index)
        return index
    }

    mutating func bind(_ index: Int, masterLock: LockID) {
        copies[index].masterLock = masterLock
        byMaster[MasterLock(node: copies[index].master, lock: masterLock.rawValue)] = index
    }

    func index(master: UInt32, lock: LockID) -> Int? { byMaster[MasterLock(node: master, lock: lock.rawValue)] }

    mutating func remove(_ index: Int) {
        let copy = copies[index]
        guard copy.owner != 0 else { return }
        if let lock = copy.masterLock { byMaster[MasterLock(node: copy.master, lock: lock.rawValue)] = nil }
        byOwner[copy.owner]?.remove(index)
        if byOwner[copy.owner]?.isEmpty == true { byOwner[copy.owner] = nil }
        copies[index] = Copy()
        free.append(index)
    }

    /// Forgets every copy of an owner; returns the masters that held any of them.
    mutating func removeAll(of owner: UInt64) -> [UInt32] {
        guard let indices = byOwner[owner] else { return [] }
        var masters: Set<UInt32> = []
        for index in indices.sorted() {
            masters.insert(copies[index].master)
            remove(index)
        }
        return masters.sorted()
    }
}
