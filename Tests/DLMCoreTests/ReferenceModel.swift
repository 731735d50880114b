@testable import DLMCore

// The reference model of the randomized model test (issue #2): one lockspace of the lock engine, written again
// from REFERENCE.md §1-4 (and the conversion deadlock of §5) as plainly as possible. Plain arrays of lock ids for
// the grant, convert and wait queues of each resource, the tables of the reference written out literally, and
// the ten grant rules of §2 transcribed one by one. Speed does not matter here; being obviously right does.
//
// It uses only the value types of DLMCore (modes, flags, statuses), never its logic.
//
// Choices where REFERENCE.md is silent (each agrees with Linux `fs/dlm/lock.c` unless noted):
// - The order of synchronous checks: flags, then the lock id (ENOENT), then the lock's state (EBUSY), then QUECVT,
//   then the value (EINVAL: a value longer than the value block with VALBLK on a conversion, or on an unlock that
//   writes; no value where a conversion or unlock from PW or EX writes).
// - The value handed in with a conversion is the one written when the conversion is granted in a mode that writes,
//   even later from the convert queue (ALTPR / ALTCW can turn PW -> EX, a read, into PW -> PR or CW, a write).
// - CANCEL of a lock with nothing pending is EBUSY (Linux: a silent no-op).
// - A queued conversion found in a conversion deadlock while the queues are walked is refused with EDEADLK, or
//   demoted with CONVDEADLK (Linux only logs it).
// - NODLCKWT: a conversion deadlock leaves the conversion queued (the lock is told, see the test's bast checks).
// - IVVALBLK invalidates the value block where a write would happen (conversion from PW or EX, unlock from PW or
//   EX), with or without VALBLK, as Linux `set_lvb_lock` / `set_lvb_unlock` do.
// - While the value block is invalid every grant reports VALNOTVALID (§4), refusals and unlocks do not.
// - Blocking callbacks are not predicted exactly; the test checks their rules as invariants instead.

/// One completion as the model predicts it, and as the test reduces the engine's completions for comparison.
struct ModelCompletion: Hashable, CustomStringConvertible {
    var lock: UInt32
    var owner: UInt64
    var status: DLMStatus
    var flags: CompletionFlags
    /// The mode held after the completion.
    var mode: LockMode?
    /// The value read, for a grant with VALBLK that reads.
    var valueBlock: [UInt8]?
    /// The value block's sequence number after the operation, for grants and unlocks only.
    var sequence: UInt64?

    var description: String {
        var text = "lock \(lock) owner \(owner) \(status.name)"
        if let mode { text += " \(mode)" }
        if !flags.isEmpty { text += " [\(flags)]" }
        if let valueBlock { text += " lvb=\(ModelFormat.hex(valueBlock))" }
        if let sequence { text += " seq=\(sequence)" }
        return text
    }

    /// Sort key, so that a step's completions compare as a multiset.
    var key: String { description }
}

enum ModelFormat {
    static func hex(_ bytes: [UInt8]) -> String {
        let digits = Array("0123456789abcdef")
        var text = ""
        for byte in bytes {
            text.append(digits[Int(byte >> 4)])
            text.append(digits[Int(byte & 15)])
        }
        return text
    }
}

/// One lock of the model.
struct ModelLock {
    let id: UInt32
    /// nil for an orphan (a PERSISTENT lock whose owner exited).
    var owner: UInt64?
    let resource: Int
    /// nil for a new request not granted yet.
    var granted: LockMode?
    /// The mode a pending request or conversion asks for; nil when nothing is pending.
    var requested: LockMode?
    /// The flags of the last request or conversion, PERSISTENT kept once given.
    var flags: LockFlags
    /// The value handed in with the pending conversion.
    var value: [UInt8]?
    /// CONVDEADLK demoted the granted mode to NL during the pending conversion.
    var demoted = false
    /// TIMEOUT: when the pending request gives up.
    var deadline: UInt64?
    /// When it started waiting (a counter): timeouts due at the same instant fire oldest first.
    var queuedAt: UInt64 = 0
    var wantsBlockingCallbacks: Bool
}

/// One resource of the model: three plain arrays of lock ids, head first, and the value block.
struct ModelResource {
    var grant: [UInt32] = []
    var convert: [UInt32] = []
    var wait: [UInt32] = []
    var valueBlock: [UInt8]
    var sequence: UInt64 = 0
    var invalid = false
    /// A request was queued that the rules would let through (or that left a conversion deadlock behind): the
    /// queues are walked only after an unlock, a grant or a cancel, so this waits for the next walk. Cleared
    /// by the next walk. (Linux behaves the same way.)
    var unsettledByQueueing = false

    var isEmpty: Bool { grant.isEmpty && convert.isEmpty && wait.isEmpty }
}

extension LockFlags {
    /// `contains`, without the generic SetAlgebra path that makes a debug build slow.
    @inline(__always) func has(_ flag: LockFlags) -> Bool { rawValue & flag.rawValue == flag.rawValue }
}

struct ReferenceModel {
    // MARK: The tables of REFERENCE.md, written out

    /// §1: 1 when a lock in the row mode and one in the column mode may be granted together (NL CR CW PR PW EX).
    static let compatibility: [[Int]] = [
        [1, 1, 1, 1, 1, 1],  // NL
        [1, 1, 1, 1, 1, 0],  // CR
        [1, 1, 1, 0, 0, 0],  // CW
        [1, 1, 0, 1, 0, 0],  // PR
        [1, 1, 0, 0, 0, 0],  // PW
        [1, 0, 0, 0, 0, 0],  // EX
    ]

    /// §2: 1 when the row mode is at least as strong as the column mode: NL < CR < CW, PR < PW < EX, with CW and
    /// PR not comparable ("a mode no stronger than one it was already sent").
    static let atLeastAsStrong: [[Int]] = [
        [1, 0, 0, 0, 0, 0],  // NL
        [1, 1, 0, 0, 0, 0],  // CR
        [1, 1, 1, 0, 0, 0],  // CW
        [1, 1, 0, 1, 0, 0],  // PR
        [1, 1, 1, 1, 1, 0],  // PW
        [1, 1, 1, 1, 1, 1],  // EX
    ]

    /// §2: QUECVT is legal only for up-conversions, PR <-> CW counting as one. Row granted, column requested.
    static let queuedConversionLegal: [[Int]] = [
        [0, 1, 1, 1, 1, 1],  // NL
        [0, 0, 1, 1, 1, 1],  // CR
        [0, 0, 0, 1, 1, 1],  // CW
        [0, 0, 1, 0, 1, 1],  // PR
        [0, 0, 0, 0, 0, 1],  // PW
        [0, 0, 0, 0, 0, 0],  // EX
    ]

    /// §4, row granted, column requested: R the value block is read into the caller, W written from the caller,
    /// "-" nothing. Read on a conversion to an equal or higher mode; written from PW or EX, but PW -> EX reads;
    /// PR <-> CW does nothing. A new request reads.
    static let valueBlockOperations: [String] = [
        "RRRRRR",  // NL
        "-RRRRR",  // CR
        "--R-RR",  // CW
        "---RRR",  // PR
        "WWWWWR",  // PW
        "WWWWWW",  // EX
    ]

    static func compatible(_ a: LockMode, _ b: LockMode) -> Bool {
        compatibility[Int(a.rawValue)][Int(b.rawValue)] == 1
    }

    static func stronger(_ a: LockMode, orEqual b: LockMode) -> Bool {
        atLeastAsStrong[Int(a.rawValue)][Int(b.rawValue)] == 1
    }

    enum ValueBlockOperation { case read, write, nothing }

    static func valueBlockOperation(from granted: LockMode?, to requested: LockMode) -> ValueBlockOperation {
        guard let granted else { return .read }
        let row = Array(valueBlockOperations[Int(granted.rawValue)])
        switch row[Int(requested.rawValue)] {
        case "R": return .read
        case "W": return .write
        default: return .nothing
        }
    }

    // MARK: State

    let valueBlockLength: Int
    var locks: [UInt32: ModelLock] = [:]
    var resources: [ModelResource]
    var now: UInt64 = 0
    var queueCounter: UInt64 = 0
    /// The completions of the current operation, in the order the model produced them.
    var completions: [ModelCompletion] = []
    /// Set when the model cannot follow the engine (an adopted orphan the model does not know).
    var divergence: String?
    /// Requests queued where a walk would grant something or find a conversion deadlock, by what was queued:
    /// the queues are walked only after an unlock, a grant or a cancel (§2), so this waits for the next walk.
    var queueingsLeftUnsettled: [String: Int] = [:]
    /// Grants by where they came from: made at once, or from the convert or the wait queue.
    var grantOrigins: [String: Int] = [:]

    init(resourceCount: Int, valueBlockLength: Int) {
        self.valueBlockLength = valueBlockLength
        resources = Array(
            repeating: ModelResource(valueBlock: [UInt8](repeating: 0, count: valueBlockLength)), count: resourceCount)
    }

    // MARK: Operations (each returns the synchronous error, or nil)

    /// A new request (§2, §3). `newID` is the id the engine gave the lock.
    mutating func lock(
        owner: UInt64, resource: Int, mode: LockMode, flags: LockFlags, timeout: UInt64?, wantsBlockingCallbacks: Bool,
        newID: UInt32
    ) -> DLMStatus? {
        completions = []
        defer { endOperation() }
        // §3: the flags a lock request may not carry.
        if flags.has(.cancel) || flags.has(.forceUnlock) { return .invalid }
        if flags.has(.convert) { return .invalid }
        if flags.has(.queueConversion) { return .invalid }  // QUECVT is for conversions
        if flags.has(.conversionDeadlockDemote) { return .invalid }  // CONVDEADLK needs CONVERT
        if flags.has(.expedite) && (flags.has(.noQueue) || mode != .nl) { return .invalid }
        if !timeoutIsValid(flags, timeout) { return .invalid }
        if flags.has(.orphan) {
            return adoptOrphan(
                owner: owner, resource: resource, mode: mode, flags: flags,
                wantsBlockingCallbacks: wantsBlockingCallbacks, chosen: newID)
        }
        let lock = ModelLock(
            id: newID, owner: owner, resource: resource, granted: nil, requested: mode, flags: flags,
            wantsBlockingCallbacks: wantsBlockingCallbacks)
        locks[newID] = lock
        switch decide(newID, now: true) {
        case .grant(let granted, let alternate):
            grant(newID, mode: granted, alternate: alternate)
            // Granted past waiters (NOORDER): a walk follows, which tells it whom it blocks.
            walk(resource)
        case .blocked, .deadlock, .demote:
            if flags.has(.noQueue) {
                complete(newID, .tryAgain, mode: nil, flags: [])
                locks[newID] = nil
            } else {
                enqueue(newID, onto: \.wait, timeout: timeout)
                // Queued out of order: a walk follows at once (rules 7 and 10 may grant it).
                if flags.has(.headOfQueue) || flags.has(.noOrder) { walk(resource) }
            }
        }
        return nil
    }

    /// ORPHAN: adopt an orphan of the same name and mode; EAGAIN if orphans of other modes only, ENOENT if none.
    mutating func adoptOrphan(
        owner: UInt64, resource: Int, mode: LockMode, flags: LockFlags, wantsBlockingCallbacks: Bool, chosen: UInt32
    ) -> DLMStatus? {
        let orphans = resources[resource].grant.filter { locks[$0]!.owner == nil }
        if orphans.isEmpty { return .noEntry }
        let sameMode = orphans.filter { locks[$0]!.granted == mode }
        if sameMode.isEmpty { return .tryAgain }
        // Any orphan of that mode will do; the engine picks one.
        var id = chosen
        if !sameMode.contains(chosen) {
            divergence = "the engine adopted lock \(chosen), not one of the orphans \(sameMode) in mode \(mode)"
            id = sameMode[0]
        }
        locks[id]!.owner = owner
        // An adoption is a grant: the lock moves to the end of the grant queue.
        resources[resource].grant.removeAll { $0 == id }
        resources[resource].grant.append(id)
        locks[id]!.flags = flags.union(.persistent).subtracting(.orphan)
        locks[id]!.wantsBlockingCallbacks = wantsBlockingCallbacks
        var completion = ModelCompletion(
            lock: id, owner: owner, status: .granted, flags: [], mode: mode, sequence: resources[resource].sequence)
        if flags.has(.valueBlock) { completion.valueBlock = resources[resource].valueBlock }
        if resources[resource].invalid { completion.flags.insert(.valueNotValid) }
        completions.append(completion)
        // The adopter is told whom it blocks: a walk follows.
        walk(resource)
        return nil
    }

    /// A conversion of a granted lock (§2, §3, §4, §5).
    mutating func convert(
        owner: UInt64, lock id: UInt32, mode: LockMode, flags: LockFlags, value: [UInt8]?, timeout: UInt64?
    ) -> DLMStatus? {
        completions = []
        defer { endOperation() }
        if flags.has(.cancel) || flags.has(.forceUnlock) { return .invalid }
        if flags.has(.expedite) { return .invalid }  // EXPEDITE is invalid with CONVERT
        if flags.has(.orphan) { return .invalid }  // ORPHAN adopts with a new request
        if flags.has(.conversionDeadlockDemote) && flags.has(.noQueue) { return .invalid }
        if !timeoutIsValid(flags, timeout) { return .invalid }
        guard let lock = locks[id], lock.owner == owner else { return .noEntry }
        guard lock.requested == nil, let granted = lock.granted else { return .busy }
        if flags.has(.queueConversion)
            && ReferenceModel.queuedConversionLegal[Int(granted.rawValue)][Int(mode.rawValue)] == 0
        {
            return .invalid
        }
        // With VALBLK, a value must fit the value block (ALTPR / ALTCW may grant a mode that writes it even when the
        // requested mode reads), and a conversion that writes needs one.
        if flags.has(.valueBlock), let value, value.count > valueBlockLength { return .invalid }
        if flags.has(.valueBlock) && !flags.has(.invalidateValueBlock)
            && ReferenceModel.valueBlockOperation(from: granted, to: mode) == .write && value == nil
        {
            return .invalid
        }
        locks[id]!.flags = flags.union(lock.flags.intersection(.persistent))
        locks[id]!.requested = mode
        locks[id]!.value = value
        locks[id]!.demoted = false
        let resource = lock.resource

        var decision = decide(id, now: true)
        if case .deadlock = decision, flags.has(.noDeadlockWait) { decision = .blocked }
        switch decision {
        case .grant(let granted, let alternate):
            grant(id, mode: granted, alternate: alternate)
            walk(resource)
            return nil
        case .deadlock:
            complete(id, .deadlock, mode: granted, flags: [])
            locks[id]!.requested = nil
            locks[id]!.value = nil
            return nil
        case .demote:
            demote(id)
            // The demotion may let other conversions through, and then this one (rules only, no ALTPR / ALTCW).
            walkConversions(resource)
            if canBeGranted(id, mode: mode, now: true) {
                grant(id, mode: mode, alternate: false)
                walk(resource)
                return nil
            }
        case .blocked:
            break
        }
        if flags.has(.noQueue) {
            complete(id, .tryAgain, mode: locks[id]!.granted, flags: [])
            locks[id]!.requested = nil
            locks[id]!.value = nil
            return nil
        }
        resources[resource].grant.removeAll { $0 == id }
        enqueue(id, onto: \.convert, timeout: timeout)
        // The demotion, and what it let through, changed the queues like a grant: walk them (§2). A conversion
        // queued out of order is walked at once too (rules 7 and 8 may grant it).
        if decision == .demote || flags.has(.headOfQueue) || flags.has(.noOrder) { walk(resource) }
        return nil
    }

    /// An unlock, CANCEL or FORCEUNLOCK (§3, §4).
    mutating func unlock(owner: UInt64, lock id: UInt32, flags: LockFlags, value: [UInt8]?) -> DLMStatus? {
        completions = []
        defer { endOperation() }
        let allowed: LockFlags = [.cancel, .valueBlock, .invalidateValueBlock, .forceUnlock]
        if !flags.isSubset(of: allowed) { return .invalid }
        if flags.has(.cancel) && flags.has(.forceUnlock) { return .invalid }
        guard let lock = locks[id], lock.owner == owner else { return .noEntry }
        let resource = lock.resource
        if flags.has(.cancel) {
            guard lock.requested != nil else { return .busy }
            refuse(id, .cancelled)
            walk(resource)
            return nil
        }
        if !flags.has(.forceUnlock) && lock.requested != nil { return .busy }
        let writes = lock.granted != nil && lock.granted! >= .pw
        if writes && flags.has(.valueBlock) && !flags.has(.invalidateValueBlock) {
            guard let value, value.count <= valueBlockLength else { return .invalid }
        }
        if writes {
            if flags.has(.invalidateValueBlock) {
                resources[resource].invalid = true
            } else if flags.has(.valueBlock) {
                write(value!, resource: resource)
            }
        }
        completions.append(
            ModelCompletion(
                lock: id, owner: owner, status: .unlocked, flags: [], mode: nil,
                sequence: resources[resource].sequence))
        remove(id)
        walk(resource)
        return nil
    }

    /// The owner went away: granted PERSISTENT locks become orphans (a pending conversion is dropped), everything
    /// else is released (a PW or EX holder's value block becomes invalid, §4); no completions to the owner.
    mutating func ownerExited(_ owner: UInt64) {
        completions = []
        defer { endOperation() }
        let mine = locks.values.filter { $0.owner == owner }.map(\.id).sorted()
        var touched: [Int] = []
        for id in mine {
            let lock = locks[id]!
            if !touched.contains(lock.resource) { touched.append(lock.resource) }
            if lock.flags.has(.persistent) && lock.granted != nil {
                if lock.requested != nil { returnToGrantQueue(id) }
                locks[id]!.owner = nil
            } else {
                if let granted = lock.granted, granted >= .pw { resources[lock.resource].invalid = true }
                remove(id)
            }
        }
        for resource in touched.sorted() { walk(resource) }
    }

    /// Time passes: pending requests with TIMEOUT whose deadline has come give up with ETIMEDOUT, earliest
    /// deadline first (then the one that waited first), each followed by the walk it allows.
    mutating func tick(_ time: UInt64) {
        completions = []
        defer { endOperation() }
        if time > now { now = time }
        while true {
            var due: ModelLock?
            for lock in locks.values where lock.requested != nil {
                guard let deadline = lock.deadline, deadline <= now else { continue }
                if let best = due, (best.deadline!, best.queuedAt) <= (deadline, lock.queuedAt) { continue }
                due = lock
            }
            guard let lock = due else { break }
            refuse(lock.id, .timedOut)
            walk(lock.resource)
        }
    }

    // MARK: The grant decision

    /// §2, "can this lock be granted now" in `mode`: the ten rules in order (4, recovery, does not arise here).
    /// `now` is true while the request or conversion is being made, false once it is queued.
    func canBeGranted(_ id: UInt32, mode: LockMode, now: Bool) -> Bool {
        let lock = locks[id]!
        let queues = resources[lock.resource]
        let conversion = lock.granted != nil
        // 1. EXPEDITE (new NL requests only) is granted at once.
        if !conversion && lock.flags.has(.expedite) { return true }
        // 2. It conflicts with any lock on the grant queue: no.
        for other in queues.grant where other != id {
            if !ReferenceModel.compatible(locks[other]!.granted!, mode) { return false }
        }
        // 3. It conflicts with the granted mode of any lock on the convert queue: no.
        for other in queues.convert where other != id {
            if !ReferenceModel.compatible(locks[other]!.granted!, mode) { return false }
        }
        // 5. A conversion being requested now, without QUECVT: yes.
        if now && conversion && !lock.flags.has(.queueConversion) { return true }
        // 6. A conversion being requested now, with QUECVT: only if the convert queue is empty.
        if now && conversion && lock.flags.has(.queueConversion) { return queues.convert.isEmpty }
        // 7. NOORDER: yes.
        if lock.flags.has(.noOrder) { return true }
        // 8. A conversion already queued: only if it is first on the convert queue.
        if conversion { return queues.convert.first == id }
        // 9. A new request being made now: only if both convert and wait queues are empty.
        if now { return queues.convert.isEmpty && queues.wait.isEmpty }
        // 10. A new request already queued: only if the convert queue is empty and it is first on the wait queue.
        return queues.convert.isEmpty && queues.wait.first == id
    }

    /// §5, Linux: the conversion of `id` is in a conversion deadlock when its granted mode blocks the requested
    /// mode of a conversion ahead of it on the convert queue, or when it and a conversion behind it block each
    /// other. A conversion being requested now is looked at where it would be queued (the tail, or the head with
    /// HEADQUE).
    func inConversionDeadlock(_ id: UInt32, now: Bool) -> Bool {
        let lock = locks[id]!
        var queue = resources[lock.resource].convert
        if now {
            if lock.flags.has(.headOfQueue) { queue.insert(id, at: 0) } else { queue.append(id) }
        }
        let position = queue.firstIndex(of: id)!
        for (index, otherID) in queue.enumerated() where otherID != id {
            let other = locks[otherID]!
            let mineBlocksTheirs = !ReferenceModel.compatible(lock.granted!, other.requested!)
            let theirsBlocksMine = !ReferenceModel.compatible(other.granted!, lock.requested!)
            if index < position && mineBlocksTheirs { return true }
            if index > position && mineBlocksTheirs && theirsBlocksMine { return true }
        }
        return false
    }

    enum Decision: Equatable {
        case grant(LockMode, alternate: Bool)
        case blocked
        /// A conversion deadlock: EDEADLK (or NODLCKWT: stay queued).
        case deadlock
        /// A conversion deadlock with CONVDEADLK: demote the granted mode to NL.
        case demote
    }

    /// The rules for the requested mode, then (conversions that may queue) conversion deadlock, then ALTPR / ALTCW.
    func decide(_ id: UInt32, now: Bool) -> Decision {
        let lock = locks[id]!
        let requested = lock.requested!
        if canBeGranted(id, mode: requested, now: now) { return .grant(requested, alternate: false) }
        if lock.granted != nil && !lock.flags.has(.noQueue) && inConversionDeadlock(id, now: now) {
            return lock.flags.has(.conversionDeadlockDemote) ? .demote : .deadlock
        }
        var alternate: LockMode?
        if requested != .pr && lock.flags.has(.alternatePR) {
            alternate = .pr
        } else if requested != .cw && lock.flags.has(.alternateCW) {
            alternate = .cw
        }
        if let alternate, canBeGranted(id, mode: alternate, now: now) { return .grant(alternate, alternate: true) }
        return .blocked
    }

    // MARK: Walking the queues

    /// §2: after an unlock, a granted conversion or a cancel, walk the convert queue (from its head again after
    /// every grant, demotion or refusal), then the wait queue once, head first.
    mutating func walk(_ resource: Int) {
        walkConversions(resource)
        for id in resources[resource].wait where locks[id] != nil {
            if case .grant(let mode, let alternate) = decide(id, now: false) {
                grant(id, mode: mode, alternate: alternate)
            }
        }
        resources[resource].unsettledByQueueing = false
    }

    mutating func walkConversions(_ resource: Int) {
        var changed = true
        while changed {
            changed = false
            for id in resources[resource].convert {
                switch decide(id, now: false) {
                case .grant(let mode, let alternate):
                    grant(id, mode: mode, alternate: alternate)
                    changed = true
                case .demote:
                    demote(id)
                    changed = true
                case .deadlock:
                    if locks[id]!.flags.has(.noDeadlockWait) { continue }
                    refuse(id, .deadlock)
                    changed = true
                case .blocked:
                    continue
                }
                break
            }
        }
    }

    /// Whether a walk of the queues would change nothing (no grant, no demotion, no refusal).
    func isSettled(_ resource: Int) -> Bool {
        for id in resources[resource].convert {
            switch decide(id, now: false) {
            case .grant, .demote: return false
            case .deadlock: if !locks[id]!.flags.has(.noDeadlockWait) { return false }
            case .blocked: break
            }
        }
        for id in resources[resource].wait {
            if case .grant = decide(id, now: false) { return false }
        }
        return true
    }

    // MARK: Effects on one lock

    mutating func enqueue(_ id: UInt32, onto queue: WritableKeyPath<ModelResource, [UInt32]>, timeout: UInt64?) {
        let resource = locks[id]!.resource
        if locks[id]!.flags.has(.headOfQueue) {
            resources[resource][keyPath: queue].insert(id, at: 0)
        } else {
            resources[resource][keyPath: queue].append(id)
        }
        queueCounter += 1
        locks[id]!.queuedAt = queueCounter
        locks[id]!.deadline = timeout.map { now + max($0, 1) }
        if !resources[resource].unsettledByQueueing && !isSettled(resource) {
            resources[resource].unsettledByQueueing = true
            let flags = locks[id]!.flags
            var cause = queue == \.convert ? "conversion" : "request"
            let names: [(LockFlags, String)] = [
                (.headOfQueue, "HEADQUE"), (.queueConversion, "QUECVT"), (.noOrder, "NOORDER"),
                (.noDeadlockWait, "NODLCKWT"), (.alternatePR, "ALTPR"), (.alternateCW, "ALTCW"),
            ]
            for (flag, name) in names where flags.has(flag) {
                cause += " " + name
            }
            if locks[id]!.demoted { cause += " DEMOTED" }
            queueingsLeftUnsettled[cause, default: 0] += 1
        }
    }

    mutating func grant(_ id: UInt32, mode: LockMode, alternate: Bool) {
        let lock = locks[id]!
        let resource = lock.resource
        let origin =
            resources[resource].convert.contains(id)
            ? "from the convert queue" : resources[resource].wait.contains(id) ? "from the wait queue" : "at once"
        grantOrigins[origin, default: 0] += 1
        resources[resource].convert.removeAll { $0 == id }
        resources[resource].wait.removeAll { $0 == id }
        if !resources[resource].grant.contains(id) { resources[resource].grant.append(id) }
        locks[id]!.granted = mode
        locks[id]!.requested = nil
        locks[id]!.deadline = nil
        locks[id]!.value = nil
        locks[id]!.demoted = false
        var completion = ModelCompletion(lock: id, owner: lock.owner!, status: .granted, flags: [], mode: mode)
        if lock.demoted { completion.flags.insert(.demoted) }
        if alternate { completion.flags.insert(.alternateMode) }
        switch ReferenceModel.valueBlockOperation(from: lock.granted, to: mode) {
        case .read:
            if lock.flags.has(.valueBlock) { completion.valueBlock = resources[resource].valueBlock }
        case .write:
            if lock.flags.has(.invalidateValueBlock) {
                resources[resource].invalid = true
            } else if lock.flags.has(.valueBlock), let value = lock.value {
                write(value, resource: resource)
            }
        case .nothing:
            break
        }
        if resources[resource].invalid { completion.flags.insert(.valueNotValid) }
        completion.sequence = resources[resource].sequence
        completions.append(completion)
    }

    /// CONVDEADLK: the granted mode becomes NL; the completion will say DEMOTED.
    mutating func demote(_ id: UInt32) {
        locks[id]!.granted = .nl
        locks[id]!.demoted = true
    }

    /// Ends a pending request or conversion with `status`: a new request goes away, a conversion keeps its
    /// granted mode and returns to the grant queue.
    mutating func refuse(_ id: UInt32, _ status: DLMStatus) {
        let lock = locks[id]!
        let flags: CompletionFlags = lock.demoted ? [.demoted] : []
        if lock.granted != nil {
            returnToGrantQueue(id)
            complete(id, status, mode: lock.granted, flags: flags)
        } else {
            complete(id, status, mode: nil, flags: flags)
            remove(id)
        }
    }

    mutating func returnToGrantQueue(_ id: UInt32) {
        let resource = locks[id]!.resource
        resources[resource].convert.removeAll { $0 == id }
        resources[resource].grant.append(id)
        locks[id]!.requested = nil
        locks[id]!.deadline = nil
        locks[id]!.value = nil
        locks[id]!.demoted = false
    }

    mutating func complete(_ id: UInt32, _ status: DLMStatus, mode: LockMode?, flags: CompletionFlags) {
        completions.append(
            ModelCompletion(lock: id, owner: locks[id]!.owner!, status: status, flags: flags, mode: mode))
    }

    mutating func remove(_ id: UInt32) {
        let resource = locks[id]!.resource
        resources[resource].grant.removeAll { $0 == id }
        resources[resource].convert.removeAll { $0 == id }
        resources[resource].wait.removeAll { $0 == id }
        locks[id] = nil
    }

    /// §4: a write pads the value to the block's length, bumps the sequence number, clears the invalid mark.
    mutating func write(_ value: [UInt8], resource: Int) {
        resources[resource].valueBlock = value + [UInt8](repeating: 0, count: valueBlockLength - value.count)
        resources[resource].sequence += 1
        resources[resource].invalid = false
    }

    func timeoutIsValid(_ flags: LockFlags, _ timeout: UInt64?) -> Bool {
        flags.has(.timeout) ? (timeout ?? 0) > 0 : timeout == nil
    }

    /// §4: a resource with no locks left is freed, its value block with it.
    mutating func endOperation() {
        for index in resources.indices where resources[index].isEmpty {
            resources[index] = ModelResource(valueBlock: [UInt8](repeating: 0, count: valueBlockLength))
        }
    }
}
