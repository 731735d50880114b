import Testing

@testable import DLMCore

@Test func grantsAnUncontendedLock() throws {
    var engine = LockEngine()
    let ls = try engine.createLockspace(name: Array("ls".utf8))
    var effects: [Effect] = []
    let id = try engine.lock(
        LockRequest(lockspace: ls, owner: OwnerID(1), name: Array("r".utf8), mode: .ex), into: &effects)
    #expect(effects.count == 1)
    guard case .completion(let c) = effects[0] else { Issue.record("no completion"); return }
    #expect(c.lock == id && c.status == .granted && c.fencingToken == 1)
}
