import Testing

@testable import DLMCore

// The resource index (ResourceIndex.swift): the open-addressing table and the inline names, against a
// Dictionary as the model.

/// A table whose keys are strings named by slot, with the hashes a test chooses.
private struct IndexModel {
    var index = ResourceIndex()
    var keys: [Int32: String] = [:]
    var hashes: [Int32: UInt32] = [:]

    mutating func insert(_ slot: Int32, _ key: String, hash: UInt32) {
        index.insert(slot: slot, hash: hash)
        keys[slot] = key
        hashes[slot] = hash
    }

    mutating func remove(_ slot: Int32) {
        index.remove(slot: slot, hash: hashes[slot]!)
        keys[slot] = nil
        hashes[slot] = nil
    }

    func find(_ key: String, hash: UInt32) -> Int32? {
        index.find(hash: hash) { keys[$0] == key }
    }

    /// Every key is found from its hash, and the count is right.
    func check() {
        #expect(index.count == keys.count)
        for (slot, key) in keys { #expect(find(key, hash: hashes[slot]!) == slot) }
    }
}

@Test func indexFindsEveryKeyThroughCollisionsRemovalsAndGrowth() {
    var model = IndexModel()
    var random = SystemRandomNumberGenerator()
    // Few distinct hashes, so that probe runs are long, wrap round the table's end and removals shift back.
    for round in 0..<4000 {
        let slot = Int32(Int.random(in: 0..<300, using: &random))
        if model.keys[slot] != nil {
            model.remove(slot)
        } else {
            let hash = UInt32.random(in: 0..<40, using: &random) | (round % 2 == 0 ? 0 : 0xFFFF_FFF0)
            model.insert(slot, "key \(slot)", hash: hash)
        }
        if round % 97 == 0 { model.check() }
    }
    model.check()
    for slot in Array(model.keys.keys) { model.remove(slot) }
    model.check()
    #expect(model.find("key 1", hash: 1) == nil)
}

@Test func indexTellsKeysWithTheSameHashApart() {
    var model = IndexModel()
    for slot in Int32(0)..<20 { model.insert(slot, "key \(slot)", hash: 7) }
    model.check()
    #expect(model.find("key 21", hash: 7) == nil)
    model.remove(0)
    model.remove(10)
    model.check()
}

@Test func namesUpTo24BytesAreInlineAndLongerOnesAreNot() {
    for length in [0, 1, 8, 23, 24, 25, 64] {
        let bytes = (0..<length).map { UInt8(truncatingIfNeeded: $0 &* 37) }
        let name = ResourceName(bytes)
        #expect(name.bytes == bytes)
        if case .inline = name { #expect(length <= 24) } else { #expect(length > 24) }
        #expect(name.sameBytes(as: ResourceName(bytes)))
        #expect(!name.sameBytes(as: ResourceName(bytes + [0])))
        if length > 0 { #expect(!name.sameBytes(as: ResourceName(Array(bytes.dropLast())))) }
    }
    // A name with trailing zero bytes is not the shorter name.
    #expect(!ResourceName([1, 0]).sameBytes(as: ResourceName([1])))
}

/// The memory a held lock costs (bench/RESULTS.md): these strides are the budget.
@Test func recordsKeepTheirSize() {
    #expect(MemoryLayout<ResourceRecord>.stride <= 120)
    #expect(MemoryLayout<LockRecord>.stride <= 88)
    #expect(MemoryLayout<ResourceIndex.Bucket>.stride == 8)
}

@Test func engineFindsResourcesOfEveryNameLengthAndFreesThem() throws {
    var engine = LockEngine()
    let ls1 = try engine.createLockspace(name: Array("one".utf8))
    let ls2 = try engine.createLockspace(name: Array("two".utf8))
    var effects: [Effect] = []
    var names: [[UInt8]] = []
    for length in 1...64 {
        names.append([UInt8](repeating: 0, count: length))
        names.append((0..<length).map { UInt8($0 + 1) })
    }
    var held: [(LockID, [UInt8], LockspaceID)] = []
    for name in names {
        for ls in [ls1, ls2] {
            let id = try engine.lock(
                LockRequest(lockspace: ls, owner: OwnerID(1), name: name, mode: .pr), into: &effects)
            held.append((id, name, ls))
        }
    }
    #expect(engine.resourceCount == names.count * 2)
    // A second lock on each name finds the same resource.
    for name in names {
        _ = try engine.lock(LockRequest(lockspace: ls1, owner: OwnerID(2), name: name, mode: .pr), into: &effects)
    }
    #expect(engine.resourceCount == names.count * 2)
    for name in names {
        let snapshot = try #require(engine.snapshotResource(ls1, path: [name]))
        #expect(snapshot.name == name && snapshot.locks.count == 2)
        #expect(engine.snapshotResource(ls2, path: [name])?.locks.count == 1)
    }
    for (id, _, _) in held { try engine.unlock(UnlockRequest(lock: id, owner: OwnerID(1)), into: &effects) }
    #expect(engine.resourceCount == names.count)
    #expect(engine.snapshotResource(ls2, path: [names[0]]) == nil)
    engine.ownerExited(OwnerID(2), into: &effects)
    #expect(engine.resourceCount == 0 && engine.lockCount == 0)
}

@Test func subResourcesAreKeyedByTheirParent() throws {
    var engine = LockEngine()
    let ls = try engine.createLockspace(name: Array("ls".utf8))
    var effects: [Effect] = []
    let a = try engine.lock(
        LockRequest(lockspace: ls, owner: OwnerID(1), name: Array("a".utf8), mode: .ex), into: &effects)
    let b = try engine.lock(
        LockRequest(lockspace: ls, owner: OwnerID(1), name: Array("b".utf8), mode: .ex), into: &effects)
    let name = Array("child".utf8)
    _ = try engine.lock(LockRequest(lockspace: ls, owner: OwnerID(1), name: name, mode: .ex, parent: a), into: &effects)
    _ = try engine.lock(LockRequest(lockspace: ls, owner: OwnerID(1), name: name, mode: .ex, parent: b), into: &effects)
    _ = try engine.lock(LockRequest(lockspace: ls, owner: OwnerID(1), name: name, mode: .ex), into: &effects)
    #expect(engine.resourceCount == 5)
    #expect(engine.snapshotResource(ls, path: [Array("a".utf8), name])?.locks.count == 1)
    #expect(engine.snapshotResource(ls, path: [Array("b".utf8), name])?.locks.count == 1)
    #expect(engine.snapshotResource(ls, path: [name])?.locks.count == 1)
}
