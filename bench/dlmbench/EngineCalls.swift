import DLMCore

/// The typed calls the benchmarks make, on the engine's one entry point (`LockEngine.handle`): a refusal is
/// thrown, and a new request's id returned. What else came of each call stays in `effects`.
extension LockEngine {
    mutating func call(_ input: Input, into effects: inout [Effect]) throws(DLMError) {
        let mark = effects.count
        handle(input, into: &effects)
        if effects.count > mark, case .refused(let error) = effects[mark] { throw error }
    }

    mutating func lock(_ request: LockRequest, into effects: inout [Effect]) throws(DLMError) -> LockID {
        let mark = effects.count
        try call(.lock(request), into: &effects)
        guard case .accepted(let id) = effects[mark] else { fail("a request without its lock id") }
        return id
    }

    mutating func unlock(_ request: UnlockRequest, into effects: inout [Effect]) throws(DLMError) {
        try call(.unlock(request), into: &effects)
    }

    mutating func createLockspace(name: [UInt8]) throws(DLMError) -> LockspaceID {
        var effects: [Effect] = []
        try call(.openLockspace(name: name, valueBlockLength: nil, create: true), into: &effects)
        guard case .lockspace(let info, _) = effects[0] else { fail("no lockspace") }
        return info.id
    }

    mutating func tick(now: Instant, into effects: inout [Effect]) { handle(.tick(now: now), into: &effects) }

    mutating func ownerExited(_ owner: OwnerID, into effects: inout [Effect]) {
        handle(.ownerExited(owner), into: &effects)
    }
}
