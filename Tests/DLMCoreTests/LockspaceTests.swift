import Testing

@testable import DLMCore

/// Lockspaces (REFERENCE.md §4): a name of up to 64 bytes, a value block length that is a multiple of 8, each
/// its own namespace of resources.
@Suite struct LockspaceTests {
    @Test func lockspaceNameHasOneTo64Bytes() {
        var engine = LockEngine()
        let empty = #expect(throws: DLMError.self) { try engine.createLockspace(name: []) }
        #expect(empty?.status == .invalid)
        let long = #expect(throws: DLMError.self) {
            try engine.createLockspace(name: [UInt8](repeating: 0x61, count: 65))
        }
        #expect(long?.status == .invalid)
        #expect(throws: Never.self) { try engine.createLockspace(name: [UInt8](repeating: 0x61, count: 64)) }
    }

    @Test(arguments: [0, 4, 12, 63, 72, -8])
    func valueBlockLengthIsAMultipleOf8From8To64(length: Int) {
        var engine = LockEngine()
        let error = #expect(throws: DLMError.self) {
            try engine.createLockspace(name: bytes("ls"), valueBlockLength: length)
        }
        #expect(error?.status == .invalid)
        #expect(engine.allLockspaces.isEmpty)
    }

    @Test(arguments: [8, 16, 24, 32, 40, 48, 56, 64])
    func legalValueBlockLengths(length: Int) throws {
        var engine = LockEngine()
        let ls = try engine.createLockspace(name: bytes("ls"), valueBlockLength: length)
        #expect(engine.lockspaceInfo(ls)?.valueBlockLength == length)
    }

    @Test func defaultValueBlockLengthComesFromTheConfiguration() throws {
        var engine = LockEngine(config: EngineConfig(defaultValueBlockLength: 16))
        let ls = try engine.createLockspace(name: bytes("ls"))
        #expect(engine.lockspaceInfo(ls)?.valueBlockLength == 16)
    }

    @Test func creatingAnExistingLockspaceReturnsIt() throws {
        var engine = LockEngine()
        let ls = try engine.createLockspace(name: bytes("ls"), valueBlockLength: 32)
        #expect(try engine.createLockspace(name: bytes("ls")) == ls)
        #expect(try engine.createLockspace(name: bytes("ls"), valueBlockLength: 32) == ls)
        let error = #expect(throws: DLMError.self) {
            try engine.createLockspace(name: bytes("ls"), valueBlockLength: 64)
        }
        #expect(error?.status == .exists)
        #expect(engine.lockspace(named: bytes("ls")) == ls)
        #expect(engine.lockspace(named: bytes("other")) == nil)
    }

    /// A lockspace's id carries its slot's generation: after "a" is released and "b" takes its slot, a handle
    /// still holding a's id reaches nothing (ENOENT), rather than b.
    @Test func anIdOfAReleasedLockspaceNeverNamesALaterOne() throws {
        var engine = LockEngine()
        let a = try engine.createLockspace(name: bytes("a"))
        try engine.releaseLockspace(a)
        let b = try engine.createLockspace(name: bytes("b"))
        #expect(a != b)
        #expect(a.rawValue & 0xFFFF == b.rawValue & 0xFFFF)  // the same slot, reused
        #expect(engine.lockspaceInfo(a) == nil && engine.lockspaceInfo(b)?.name == bytes("b"))
        var effects: [Effect] = []
        let stale = #expect(throws: DLMError.self) {
            try engine.lock(LockRequest(lockspace: a, owner: OwnerID(1), name: bytes("r"), mode: .ex), into: &effects)
        }
        #expect(stale?.status == .noEntry)
        #expect(throws: DLMError.self) { try engine.releaseLockspace(a) }
        #expect(engine.snapshotLockspace(a).isEmpty)
        #expect(engine.lockspaceInfo(b) != nil)
    }

    @Test func sameResourceNameInTwoLockspacesIsTwoResources() throws {
        var h = Harness()
        let other = try h.engine.createLockspace(name: bytes("other"))
        #expect(h.lock("a", by: 1, on: "r", .ex) == ["a granted EX token=1"])
        #expect(h.lock("b", by: 2, on: "r", .ex, in: other) == ["b granted EX token=1"])
        #expect(h.engine.lockspaceInfo(h.ls)?.resourceCount == 1)
        #expect(h.engine.lockspaceInfo(other)?.lockCount == 1)
    }

    @Test func resourceNamesAreBinary() {
        var h = Harness()
        let name: [UInt8] = [0, 0xFF, 0x0A, 0]
        #expect(
            h.request("a", LockRequest(lockspace: h.ls, owner: OwnerID(1), name: name, mode: .ex))
                == ["a granted EX token=1"])
        #expect(
            h.request("b", LockRequest(lockspace: h.ls, owner: OwnerID(2), name: [0, 0xFF, 0x0A], mode: .ex))
                == ["b granted EX token=1"])
        #expect(h.engine.snapshotResource(h.ls, path: [name])?.locks.map(\.id) == [h.id("a")])
    }

    @Test func lockspaceInfoCountsResourcesAndLocks() {
        var h = Harness()
        _ = h.lock("a", by: 1, on: "r1", .ex)
        _ = h.lock("b", by: 2, on: "r1", .ex)
        _ = h.lock("c", by: 2, on: "r2", .nl)
        let info = h.engine.lockspaceInfo(h.ls)
        #expect(info?.name == bytes("ls") && info?.resourceCount == 2 && info?.lockCount == 3)
        #expect(h.engine.allLockspaces == [info!])
    }

    @Test func releaseOfALockspaceWithLocksIsEBUSY() throws {
        var h = Harness()
        _ = h.lock("a", by: 1, on: "r", .ex)
        let error = #expect(throws: DLMError.self) { try h.engine.releaseLockspace(h.ls) }
        #expect(error?.status == .busy)
        _ = h.unlock("a")
        try h.engine.releaseLockspace(h.ls)
        #expect(h.engine.lockspaceInfo(h.ls) == nil)
        #expect(h.lock("b", by: 1, on: "r", .ex) == ["error ENOENT"])
    }

    /// A forced release drops every lock of the lockspace and tells each owner: EUNLOCK for a lock that held a
    /// mode, ECANCEL for a request still waiting; no one is granted anything, and other lockspaces are untouched.
    @Test func forcedReleaseDropsEveryLockAndTellsItsOwners() throws {
        var h = Harness()
        let other = try h.engine.createLockspace(name: bytes("other"))
        _ = h.lock("p", by: 1, on: "p", .ex)
        _ = h.lock("c", by: 1, on: "c", .ex, parent: "p")
        _ = h.lock("w", by: 2, on: "p", .ex)
        _ = h.lock("o", by: 3, on: "r", .ex, in: other)
        var effects: [Effect] = []
        if try !h.engine.releaseLockspace(h.ls, force: true, into: &effects) {
            h.engine.finishBulkWork(into: &effects)
        }
        let told = effects.compactMap { effect -> String? in
            guard case .completion(let completion) = effect, completion.mode == nil else { return nil }
            return "owner \(completion.owner.rawValue) \(completion.status.name)"
        }
        #expect(told.sorted() == ["owner 1 EUNLOCK", "owner 1 EUNLOCK", "owner 2 ECANCEL"])
        // And the end, for the requester; nothing else (no grant).
        #expect(effects.count == told.count + 1)
        if case .finished = effects.last {} else { Issue.record("no finished effect: \(effects)") }
        #expect(h.engine.lockCount == 1)
        #expect(h.engine.resourceCount == 1)
        #expect(h.engine.allLockspaces.map(\.id) == [other])
        // nothing is left to fire later
        #expect(h.tick(100 * second) == [])
        let error = #expect(throws: DLMError.self) { try h.engine.releaseLockspace(h.ls) }
        #expect(error?.status == .noEntry)
    }

    @Test func releasedLockspaceNameCanBeCreatedAgain() throws {
        var engine = LockEngine()
        let first = try engine.createLockspace(name: bytes("one"))
        try engine.releaseLockspace(first)
        let again = try engine.createLockspace(name: bytes("one"), valueBlockLength: 64)
        #expect(engine.lockspaceInfo(again)?.valueBlockLength == 64)
        #expect(engine.allLockspaces.count == 1)
    }
}
