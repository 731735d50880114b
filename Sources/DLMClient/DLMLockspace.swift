import DLMCore
import DLMWire

/// A lockspace opened on a connection.
public struct DLMLockspace: Sendable {
    public let connection: DLMConnection
    public let id: UInt32
    public let name: [UInt8]
    public let valueBlockLength: Int
    /// Whether opening it created it.
    public let wasCreated: Bool

    /// Requests a lock and waits for its completion, whatever its status: granted (0), EAGAIN, EDEADLK,
    /// ETIMEDOUT or ECANCEL. A refused request (EINVAL, ENOENT, ...) throws `DLMError`.
    public func request(
        _ name: [UInt8], mode: LockMode, flags: LockFlags = [], parent: LockID? = nil, timeout: Duration? = nil,
        transaction: UInt64? = nil, priority: UInt8 = 0, alwaysFencingToken: Bool = false,
        onBlocking: (@Sendable (LockMode) -> Void)? = nil
    ) async throws -> LockResult {
        let (message, blocking) = lockMessage(
            name, mode: mode, flags: flags, parent: parent, timeout: timeout, transaction: transaction,
            priority: priority, alwaysFencingToken: alwaysFencingToken, onBlocking: onBlocking)
        let completion = try await connection.operation(blocking: blocking, message)
        return LockResult(completion, lockspace: self)
    }

    /// The LOCK frame (with tag 0) of a request, and its blocking-callback handler.
    func lockMessage(
        _ name: [UInt8], mode: LockMode, flags: LockFlags, parent: LockID?, timeout: Duration?,
        transaction: UInt64?, priority: UInt8, alwaysFencingToken: Bool, onBlocking: (@Sendable (LockMode) -> Void)?
    ) -> (ClientMessage, ClientHandler.BlockingHandler?) {
        var options: LockMessageOptions = []
        if onBlocking != nil { options.insert(.blockingCallbacks) }
        if alwaysFencingToken { options.insert(.alwaysFencingToken) }
        var flags = flags
        var nanoseconds: UInt64 = 0
        if let timeout {
            nanoseconds = timeout.nanoseconds
            flags.insert(.timeout)
        }
        var blocking: ClientHandler.BlockingHandler? = nil
        if let onBlocking {
            blocking = { @Sendable (_: LockID, mode: LockMode) in onBlocking(mode) }
        }
        let message = ClientMessage.lock(
            LockMessage(
                tag: 0, lockspace: id, flags: flags, mode: mode, options: options, priority: priority,
                parent: parent?.rawValue ?? 0, timeoutNanoseconds: nanoseconds, transaction: transaction ?? 0,
                name: name))
        return (message, blocking)
    }

    /// Takes a lock: returns when it is granted, throws `DLMError` with the status otherwise (EAGAIN for
    /// NOQUEUE, EDEADLK, ETIMEDOUT, ECANCEL, or a refusal such as EINVAL).
    public func lock(
        _ name: String, mode: LockMode, flags: LockFlags = [], parent: DLMLock? = nil, timeout: Duration? = nil,
        transaction: UInt64? = nil, priority: UInt8 = 0, alwaysFencingToken: Bool = false,
        onBlocking: (@Sendable (LockMode) -> Void)? = nil
    ) async throws -> DLMLock {
        try await lock(
            Array(name.utf8), mode: mode, flags: flags, parent: parent, timeout: timeout, transaction: transaction,
            priority: priority, alwaysFencingToken: alwaysFencingToken, onBlocking: onBlocking)
    }

    public func lock(
        _ name: [UInt8], mode: LockMode, flags: LockFlags = [], parent: DLMLock? = nil, timeout: Duration? = nil,
        transaction: UInt64? = nil, priority: UInt8 = 0, alwaysFencingToken: Bool = false,
        onBlocking: (@Sendable (LockMode) -> Void)? = nil
    ) async throws -> DLMLock {
        let result = try await request(
            name, mode: mode, flags: flags, parent: parent?.id, timeout: timeout, transaction: transaction,
            priority: priority, alwaysFencingToken: alwaysFencingToken, onBlocking: onBlocking)
        return try result.granted()
    }

    /// Runs `body` while holding the lock, and always unlocks afterwards.
    public func withLock<T: Sendable>(
        _ name: String, mode: LockMode = .ex, flags: LockFlags = [], timeout: Duration? = nil,
        _ body: (DLMLock) async throws -> T
    ) async throws -> T {
        let lock = try await self.lock(name, mode: mode, flags: flags, timeout: timeout)
        let result: T
        do {
            result = try await body(lock)
        } catch {
            try? await lock.unlock()
            throw error
        }
        try await lock.unlock()
        return result
    }

    /// Removes the orphans that process `pid` of node `nodeID` (0: dlmd's own node) left in this lockspace,
    /// each with its sub-locks, as a forced unlock would (libdlm's `dlm_ls_purge`); orphans of other processes
    /// stay. `pid` 0 names the orphans whose process is unknown. Returns how many locks went, sub-locks
    /// included: 0 for another node. Throws ENOENT if the lockspace was released, and EPERM if the process left
    /// orphans of another uid, which only that user or root may purge (this user's own went all the same).
    @discardableResult
    public func purge(nodeID: UInt32 = 0, pid: UInt32) async throws -> Int {
        let reply = try await connection.request(.purge(tag: 0, lockspace: id, nodeID: nodeID, pid: pid))
        guard case .purged(_, let count) = reply else { throw DLMError(.protocolError, "unexpected reply \(reply)") }
        return Int(count)
    }
}

/// The completion of a request or conversion.
public struct LockResult: Sendable {
    public let lockspace: DLMLockspace
    public let id: LockID
    public let status: DLMStatus
    public let flags: CompletionFlags
    /// The mode held now; nil if none.
    public let mode: LockMode?
    public let valueBlock: [UInt8]?
    public let valueBlockSequence: UInt64
    public let fencingToken: UInt64

    init(_ completion: CompletionMessage, lockspace: DLMLockspace) {
        self.lockspace = lockspace
        self.id = LockID(rawValue: completion.lock)
        self.status = completion.status
        self.flags = completion.flags
        self.mode = completion.mode
        self.valueBlock = completion.valueBlock.isEmpty ? nil : completion.valueBlock
        self.valueBlockSequence = completion.valueBlockSequence
        self.fencingToken = completion.fencingToken
    }

    /// The lock, if the status is granted; else the status as an error.
    public func granted() throws -> DLMLock {
        guard status == .granted, let mode else { throw DLMError(status, "the request ended with \(status.name)") }
        return DLMLock(
            lockspace: lockspace, id: id, mode: mode, flags: flags, valueBlock: valueBlock,
            valueBlockSequence: valueBlockSequence, fencingToken: fencingToken)
    }
}

/// A granted lock.
public struct DLMLock: Sendable {
    public let lockspace: DLMLockspace
    public let id: LockID
    public let mode: LockMode
    /// DEMOTED, VALNOTVALID, ALTMODE of the grant.
    public let flags: CompletionFlags
    /// The value block read with VALBLK.
    public let valueBlock: [UInt8]?
    public let valueBlockSequence: UInt64
    /// Non-zero for a grant of PW or EX: give it to storage so that it can refuse a stale holder.
    public let fencingToken: UInt64

    /// Converts to another mode and waits for the result, whatever its status; the lock keeps its old mode
    /// when the conversion fails.
    public func requestConversion(
        to mode: LockMode, flags: LockFlags = [], valueBlock: [UInt8]? = nil, timeout: Duration? = nil,
        priority: UInt8? = nil
    ) async throws -> LockResult {
        try await lockspace.requestConversion(
            of: id, to: mode, flags: flags, valueBlock: valueBlock, timeout: timeout, priority: priority)
    }

    /// Converts to another mode: returns the lock in its new mode, or throws with the status.
    public func convert(
        to mode: LockMode, flags: LockFlags = [], valueBlock: [UInt8]? = nil, timeout: Duration? = nil
    ) async throws -> DLMLock {
        try await requestConversion(to: mode, flags: flags, valueBlock: valueBlock, timeout: timeout).granted()
    }

    /// Unlocks; with `valueBlock`, a PW or EX holder writes it (VALBLK).
    public func unlock(valueBlock: [UInt8]? = nil, flags: LockFlags = []) async throws {
        try await lockspace.unlock(id, valueBlock: valueBlock, flags: flags)
    }
}

extension DLMLockspace {
    /// Unlocks (or with `.cancel` cancels, with `.forceUnlock` force-unlocks) a lock by id. Returns the
    /// status: EUNLOCK, or ECANCEL for a cancel.
    @discardableResult
    public func unlock(_ lock: LockID, valueBlock: [UInt8]? = nil, flags: LockFlags = []) async throws -> DLMStatus {
        let completion = try await connection.operation(
            blocking: nil, unlockMessage(lock, valueBlock: valueBlock, flags: flags))
        return completion.status
    }

    /// Cancels a waiting request or conversion of `lock`; it ends with ECANCEL.
    public func cancel(_ lock: LockID) async throws {
        try await unlock(lock, flags: .cancel)
    }
}

/// The CONVERT frame (with tag 0) of a conversion.
extension DLMLockspace {
    /// Converts the lock with this id (as libdlm's `dlm_ls_lock` with CONVERT does) and waits for the result,
    /// whatever its status. With `valueBlock`, VALBLK is set and the value is written when converting down from
    /// PW or EX.
    public func requestConversion(
        of id: LockID, to mode: LockMode, flags: LockFlags = [], valueBlock: [UInt8]? = nil, timeout: Duration? = nil,
        priority: UInt8? = nil
    ) async throws -> LockResult {
        let message = convertMessage(
            id, to: mode, flags: flags, valueBlock: valueBlock, timeout: timeout, priority: priority)
        let completion = try await connection.operation(blocking: nil, message)
        return LockResult(completion, lockspace: self)
    }
}

func convertMessage(
    _ lock: LockID, to mode: LockMode, flags: LockFlags, valueBlock: [UInt8]?, timeout: Duration?, priority: UInt8?
) -> ClientMessage {
    var flags = flags.union(.convert)
    var nanoseconds: UInt64 = 0
    if let timeout {
        nanoseconds = timeout.nanoseconds
        flags.insert(.timeout)
    }
    if valueBlock != nil { flags.insert(.valueBlock) }
    return .convert(
        ConvertMessage(
            tag: 0, lock: lock.rawValue, flags: flags, mode: mode, priority: priority ?? 255,
            timeoutNanoseconds: nanoseconds, valueBlock: valueBlock ?? []))
}

/// The UNLOCK frame (with tag 0) of an unlock, cancel or forced unlock.
func unlockMessage(_ lock: LockID, valueBlock: [UInt8]?, flags: LockFlags) -> ClientMessage {
    var flags = flags
    if valueBlock != nil { flags.insert(.valueBlock) }
    return .unlock(UnlockMessage(tag: 0, lock: lock.rawValue, flags: flags, valueBlock: valueBlock ?? []))
}

extension Duration {
    var nanoseconds: UInt64 {
        let (seconds, attoseconds) = components
        return UInt64(max(0, seconds)) * 1_000_000_000 + UInt64(max(0, attoseconds) / 1_000_000_000)
    }
}
