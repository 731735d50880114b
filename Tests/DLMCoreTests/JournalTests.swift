import Testing

@testable import DLMCore

/// The journal tells a store exactly the persistent state, and nothing for locks that are not persistent.
@Suite struct JournalTests {
    var engine = LockEngine(config: EngineConfig(deadlockWait: 0))
    var effects: [Effect] = []
    let ls: LockspaceID

    init() throws {
        ls = try engine.createLockspace(name: Array("ls".utf8), valueBlockLength: 8)
    }

    mutating func lock(_ owner: UInt64, _ name: String, _ mode: LockMode, _ flags: LockFlags = []) throws -> LockID {
        try engine.lock(
            LockRequest(lockspace: ls, owner: OwnerID(owner), name: Array(name.utf8), mode: mode, flags: flags),
            into: &effects)
    }

    mutating func drain() -> [JournalEntry] {
        var entries: [JournalEntry] = []
        engine.drainJournal(into: &entries)
        return entries
    }

    @Test mutating func locksThatAreNotPersistentAreNeverJournaled() throws {
        let id = try lock(1, "r", .ex)
        try engine.unlock(
            UnlockRequest(lock: id, owner: OwnerID(1), flags: .valueBlock, valueBlock: [1]), into: &effects)
        #expect(!engine.hasJournal)
        #expect(drain().isEmpty)
    }

    @Test mutating func aPersistentLockIsPutWithItsValueBlockAndDeletedWhenItGoes() throws {
        let id = try lock(1, "r", .ex, .persistent)
        guard case .put(let first)? = drain().first else { Issue.record("no put"); return }
        #expect(first.resource.locks.map(\.id) == [id] && first.resource.locks[0].grantedMode == .ex)
        try engine.convert(
            ConvertRequest(lock: id, owner: OwnerID(1), mode: .nl, flags: .valueBlock, valueBlock: [7]), into: &effects)
        guard case .put(let second)? = drain().first else { Issue.record("no put"); return }
        #expect(second.resource.valueBlock == [7, 0, 0, 0, 0, 0, 0, 0] && second.resource.valueBlockSequence == 1)
        #expect(second.resource.locks[0].grantedMode == .nl)
        try engine.unlock(UnlockRequest(lock: id, owner: OwnerID(1)), into: &effects)
        #expect(drain() == [.delete(lockspace: Array("ls".utf8), path: [Array("r".utf8)])])
        #expect(!engine.hasJournal)
    }

    @Test mutating func aVolatileWriterIsRecordedWhileItHoldsPWOrEX() throws {
        _ = try lock(1, "r", .nl, .persistent)
        _ = drain()
        let writer = try lock(2, "r", .ex)
        guard case .put(let held)? = drain().first else { Issue.record("no put"); return }
        #expect(held.hasVolatileWriter)
        #expect(held.resource.locks.isEmpty)  // the persistent lock is stored already; the writer never is
        try engine.unlock(UnlockRequest(lock: writer, owner: OwnerID(2)), into: &effects)
        guard case .put(let released)? = drain().first else { Issue.record("no put"); return }
        #expect(!released.hasVolatileWriter)
    }

    @Test mutating func whatWasStoredComesBackAsOrphansWithTheSameIdsAndHigherTokens() throws {
        let keeper = try lock(1, "r", .pw, [.persistent, .valueBlock])
        try engine.convert(
            ConvertRequest(lock: keeper, owner: OwnerID(1), mode: .pw, flags: .valueBlock, valueBlock: [9]),
            into: &effects)
        _ = try lock(2, "r", .cr)
        let other = try lock(3, "q", .ex)  // not persistent: gone after the restart
        _ = other
        let entries = drain()
        var restarted = LockEngine(config: EngineConfig(deadlockWait: 0, fencingTokenBase: 2 << 40))
        _ = try restarted.createLockspace(name: Array("ls".utf8), valueBlockLength: 8)
        for case .put(let stored) in entries { try restarted.restoreStored(stored) }
        #expect(restarted.lockCount == 1)
        let state = restarted.lockState(keeper)
        #expect(state?.owner == nil && state?.grantedMode == .pw)
        var effects: [Effect] = []
        let adopted = try restarted.lock(
            LockRequest(
                lockspace: ls, owner: OwnerID(9), name: Array("r".utf8), mode: .pw, flags: [.orphan, .valueBlock]),
            into: &effects)
        #expect(adopted == keeper)
        guard case .completion(let completion)? = effects.first else { Issue.record("no completion"); return }
        #expect(completion.valueBlock == [9, 0, 0, 0, 0, 0, 0, 0] && completion.valueBlockSequence == 1)
        #expect(completion.fencingToken > 2 << 40)
        #expect(!completion.flags.contains(.valueNotValid))
    }

    @Test mutating func aValueBlockWithAVolatileWriterComesBackInvalid() throws {
        _ = try lock(1, "r", .nl, .persistent)
        _ = try lock(2, "r", .ex)
        let entries = drain()
        var restarted = LockEngine(config: EngineConfig(deadlockWait: 0))
        _ = try restarted.createLockspace(name: Array("ls".utf8), valueBlockLength: 8)
        for case .put(let stored) in entries { try restarted.restoreStored(stored) }
        var effects: [Effect] = []
        _ = try restarted.lock(
            LockRequest(lockspace: ls, owner: OwnerID(5), name: Array("r".utf8), mode: .pr, flags: .valueBlock),
            into: &effects)
        guard case .completion(let completion)? = effects.first else { Issue.record("no completion"); return }
        #expect(completion.flags.contains(.valueNotValid))
        // The restored resource is journaled again, whole: the store learns the volatile writer is gone.
        var again: [JournalEntry] = []
        restarted.drainJournal(into: &again)
        try #require(again.count == 2)
        #expect(again[0] == .delete(lockspace: Array("ls".utf8), path: [Array("r".utf8)]))
        guard case .put(let rewritten) = again[1] else { Issue.record("no put"); return }
        #expect(!rewritten.hasVolatileWriter && rewritten.resource.valueBlockInvalid)
        #expect(rewritten.resource.locks.count == 1)
    }

    @Test mutating func aRestoredResourceIsWrittenBackOnlyWhenTheStoreMustLearnSomething() throws {
        let kept = try lock(1, "r", .pr, .persistent)
        let entries = drain()
        var restarted = LockEngine(config: EngineConfig(deadlockWait: 0))
        _ = try restarted.createLockspace(name: Array("ls".utf8), valueBlockLength: 8)
        for case .put(let stored) in entries { try restarted.restoreStored(stored) }
        // Nothing changed: nothing to write (a start on a million such resources writes none back).
        var none: [JournalEntry] = []
        restarted.drainJournal(into: &none)
        #expect(none.isEmpty)
        // Still journaled: the orphan's release reaches the store.
        var effects: [Effect] = []
        #expect(try restarted.purgeOrphans(lockspace: ls, pid: 0, into: &effects) == 1)
        var after: [JournalEntry] = []
        restarted.drainJournal(into: &after)
        #expect(after == [.delete(lockspace: Array("ls".utf8), path: [Array("r".utf8)])])
        _ = kept
    }

    @Test mutating func aStoredChildWhoseParentResourceWasNotKeptIsDeleted() throws {
        let parent = try lock(1, "p", .pr, .persistent)
        _ = try engine.lock(
            LockRequest(
                lockspace: ls, owner: OwnerID(1), name: Array("c".utf8), mode: .pr, flags: .persistent,
                parent: parent),
            into: &effects)
        let child = drain().compactMap { entry -> StoredResource? in
            guard case .put(let stored) = entry, stored.resource.path.count == 2 else { return nil }
            return stored
        }
        try #require(child.count == 1)
        // Only the child's record comes back (its parent's was lost): it is dropped, and deleted from the store.
        var restarted = LockEngine(config: EngineConfig(deadlockWait: 0))
        _ = try restarted.createLockspace(name: Array("ls".utf8), valueBlockLength: 8)
        #expect(try restarted.restoreStored(child[0]) == 0)
        var entries: [JournalEntry] = []
        restarted.drainJournal(into: &entries)
        #expect(entries == [.delete(lockspace: Array("ls".utf8), path: child[0].resource.path)])
    }

    @Test mutating func aPersistentLockGrantedAfterWaitingIsJournaled() throws {
        let holder = try lock(1, "r", .ex)
        let waiter = try lock(2, "r", .ex, .persistent)
        _ = drain()
        try engine.unlock(UnlockRequest(lock: holder, owner: OwnerID(1)), into: &effects)
        let stored = drain().compactMap { entry -> StoredResource? in
            guard case .put(let stored) = entry else { return nil }
            return stored
        }
        #expect(stored.last?.resource.locks.map(\.id) == [waiter])
    }

    @Test mutating func aChangeToOneOfManyPersistentLocksWritesThatLockAlone() throws {
        // A resource holding many persistent locks: each change writes one lock record and the resource's own
        // record, never the others (before, the whole resource was written again: quadratic in its locks).
        var ids: [LockID] = []
        for owner in 1...2_000 { ids.append(try lock(UInt64(owner), "r", .pr, .persistent)) }
        var written = drain().reduce(0) { total, entry in
            guard case .put(let stored) = entry else { return total }
            return total + stored.resource.locks.count
        }
        #expect(written == 2_000)
        try engine.convert(ConvertRequest(lock: ids[7], owner: OwnerID(8), mode: .nl), into: &effects)
        let converted = drain()
        guard case .put(let one)? = converted.first, converted.count == 1 else {
            Issue.record("not one put: \(converted.count)")
            return
        }
        #expect(one.resource.locks.map(\.id) == [ids[7]] && one.resource.locks[0].grantedMode == .nl)
        try engine.unlock(UnlockRequest(lock: ids[9], owner: OwnerID(10)), into: &effects)
        let unlocked = drain()
        #expect(unlocked.first == .deleteLock(lockspace: Array("ls".utf8), path: [Array("r".utf8)], lock: ids[9]))
        written = unlocked.reduce(0) { total, entry in
            guard case .put(let stored) = entry else { return total }
            return total + stored.resource.locks.count
        }
        #expect(written == 0)
    }
}
