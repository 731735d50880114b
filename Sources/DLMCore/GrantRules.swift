/// The grant decision of the VMS / Linux DLM (REFERENCE.md §2; Linux `fs/dlm/lock.c`, after "VAXcluster
/// Principles" ch. 6), and what follows a grant: value block, fencing token, blocking callbacks.
extension LockEngine {
    /// The ten rules of "can this lock be granted in `mode`" (Linux `_can_be_granted`). `now` is true while
    /// the request is being made, false for a request already queued.
    func rulesAllowGrant(_ lock: Int32, mode: UInt8, now: Bool, recovering: Bool = false) -> Bool {
        let record = locks[Int(lock)]
        let resource = resources[Int(record.resource)]
        let conversion = record.isGranted
        // 1. EXPEDITE (new NL requests only) is granted at once.
        if !conversion && record.flags.contains(.expedite) { return true }
        // 2, 3. No conflict with a lock on the grant queue, nor with the granted mode of a lock on the convert
        // queue (the lock itself excepted).
        if resource.granted.conflict(with: mode, excluding: record.grantedMode) { return false }
        // 4. During recovery, a conversion is granted regardless of order.
        if conversion && recovering { return true }
        if now && conversion {
            // 5. A conversion being requested now may overtake queued conversions and waiters,
            // 6. unless it asks to queue (QUECVT): then only if no conversion is queued.
            return !record.flags.contains(.queueConversion) || resource.convertQueue.isEmpty
        }
        // 7. NOORDER ignores the order of the queues.
        if record.flags.contains(.noOrder) { return true }
        // 8. A queued conversion must be first on the convert queue.
        if conversion { return resource.convertQueue.head == lock }
        // 9. A new request made now needs both queues empty.
        if now { return resource.convertQueue.isEmpty && resource.waitQueue.isEmpty }
        // 10. A queued new request needs an empty convert queue and the head of the wait queue.
        return resource.convertQueue.isEmpty && resource.waitQueue.head == lock
    }

    enum GrantDecision {
        case grant(mode: UInt8, alternate: Bool)
        case blocked
        /// A conversion deadlock without CONVDEADLK.
        case deadlock
        /// A conversion deadlock resolved by demoting the granted mode to NL (CONVDEADLK); not granted yet.
        case demoted
    }

    /// Linux `can_be_granted`: the rules, then conversion deadlock detection, then ALTPR / ALTCW.
    mutating func decideGrant(_ lock: Int32, now: Bool, recovering: Bool = false) -> GrantDecision {
        let record = locks[Int(lock)]
        // A sub-lock whose parent a FORCEUNLOCK is releasing goes with it: its request or conversion is not
        // granted while its siblings go (the grant would reach its owner after the parent's release, and another
        // owner may take the resource when it goes a moment later).
        if record.parent != none, locks[Int(record.parent)].options.contains(.unlocking) { return .blocked }
        let requested = record.requestedMode
        if rulesAllowGrant(lock, mode: requested, now: now, recovering: recovering) {
            return .grant(mode: requested, alternate: false)
        }
        if record.isGranted && !record.flags.contains(.noQueue) && isConversionDeadlock(lock, now: now) {
            guard record.flags.contains(.conversionDeadlockDemote) else { return .deadlock }
            if record.grantedMode != LockMode.nl.rawValue {
                setGrantedMode(lock, LockMode.nl.rawValue)
                locks[Int(lock)].pendingFlags.insert(.demoted)
                return .demoted
            }
        }
        var alternate = noMode
        if requested != LockMode.pr.rawValue && record.flags.contains(.alternatePR) {
            alternate = LockMode.pr.rawValue
        } else if requested != LockMode.cw.rawValue && record.flags.contains(.alternateCW) {
            alternate = LockMode.cw.rawValue
        }
        if alternate != noMode && rulesAllowGrant(lock, mode: alternate, now: now, recovering: recovering) {
            return .grant(mode: alternate, alternate: true)
        }
        return .blocked
    }

    /// Linux `conversion_deadlock_detect`: the conversion of `lock` is in a deadlock when its granted mode
    /// blocks a conversion ahead of it on the convert queue, or when it and a conversion behind it block
    /// each other.
    func isConversionDeadlock(_ lock: Int32, now: Bool) -> Bool {
        let record = locks[Int(lock)]
        // A conversion being requested now joins the tail, so all queued ones are ahead of it (with
        // HEADQUE, all are behind).
        var ahead = !(now && record.flags.contains(.headOfQueue))
        var cursor = resources[Int(record.resource)].convertQueue.head
        while cursor != none {
            let other = locks[Int(cursor)]
            if cursor == lock {
                ahead = false
            } else if ahead {
                if !ModeTable.compatible(record.grantedMode, other.requestedMode) { return true }
            } else if !ModeTable.compatible(record.grantedMode, other.requestedMode)
                && !ModeTable.compatible(other.grantedMode, record.requestedMode)
            {
                return true
            }
            cursor = other.next
        }
        return false
    }

    // MARK: Requests

    /// Linux `do_request` and its effects: grant now, fail with EAGAIN (NOQUEUE), or queue and tell the
    /// holders in the way.
    mutating func requestNew(_ lock: Int32, timeout: UInt64?, into effects: inout [Effect]) {
        let record = locks[Int(lock)]
        if case .grant(let mode, let alternate) = decideGrant(lock, now: true) {
            grant(lock, mode: mode, alternate: alternate, valueBlock: nil, into: &effects)
            // Granted past waiting requests (NOORDER): tell it whom it now blocks.
            revisitIfQueued(record.resource, into: &effects)
            return
        }
        if record.flags.contains(.noQueue) {
            effects.append(
                .completion(
                    Completion(
                        lock: LockID(slot: lock), owner: owners[Int(record.owner)].id, status: .tryAgain, mode: nil)))
            if record.flags.contains(.noQueueBlockingCallback) {
                sendBlockingCallbacks(for: lock, includingConversions: true, into: &effects)
            }
            let resource = record.resource
            removeLock(lock)
            freeResourceIfUnused(resource)
            return
        }
        linkToQueue(lock, .wait, atHead: record.flags.contains(.headOfQueue))
        startWaiting(lock, timeout: timeout)
        sendBlockingCallbacks(for: lock, includingConversions: false, into: &effects)
        if record.flags.contains(.headOfQueue) || record.flags.contains(.noOrder) {
            // Queued out of order: as a queued request, the rules may already grant it (rule 7 or 10).
            grantPending(record.resource, into: &effects)
        }
    }

    /// A walk of the queues when requests wait: grants what the rules allow and tells the holders in the way.
    mutating func revisitIfQueued(_ resource: Int32, into effects: inout [Effect]) {
        if !resources[Int(resource)].convertQueue.isEmpty || !resources[Int(resource)].waitQueue.isEmpty {
            grantPending(resource, into: &effects)
        }
    }

    /// Linux `do_convert` and its effects.
    mutating func requestConversion(
        _ lock: Int32, valueBlock: [UInt8]?, timeout: UInt64?, into effects: inout [Effect]
    ) {
        locks[Int(lock)].pendingFlags = []
        let resource = locks[Int(lock)].resource
        var decision = decideGrant(lock, now: true)
        if case .deadlock = decision, locks[Int(lock)].flags.contains(.noDeadlockWait) {
            // NODLCKWT: no EDEADLK; the lock waits and is told (a blocking callback) to give way.
            sendSelfBlockingCallback(lock, into: &effects)
            decision = .blocked
        }
        switch decision {
        case .grant(let mode, let alternate):
            grant(lock, mode: mode, alternate: alternate, valueBlock: valueBlock, into: &effects)
            grantPending(resource, into: &effects)
            return
        case .deadlock:
            finishConversionAtOnce(lock, status: .deadlock, into: &effects)
            return
        case .demoted:
            // The demotion to NL may let other conversions, and then this one, through.
            grantPendingConversions(resource, into: &effects)
            if rulesAllowGrant(lock, mode: locks[Int(lock)].requestedMode, now: true) {
                grant(lock, mode: locks[Int(lock)].requestedMode, alternate: false, valueBlock: nil, into: &effects)
                grantPending(resource, into: &effects)
                return
            }
        case .blocked:
            break
        }
        let record = locks[Int(lock)]
        if record.flags.contains(.noQueue) {
            finishConversionAtOnce(lock, status: .tryAgain, into: &effects)
            if record.flags.contains(.noQueueBlockingCallback) {
                // The refusal cleared the requested mode: the callbacks are for the mode that was refused.
                sendBlockingCallbacks(
                    for: lock, mode: record.requestedMode, includingConversions: true, into: &effects)
            }
            return
        }
        unlinkFromQueue(lock, .grant)
        linkToQueue(lock, .convert, atHead: record.flags.contains(.headOfQueue))
        if let valueBlock, record.flags.contains(.valueBlock), record.grantedMode >= LockMode.pw.rawValue {
            pendingValueBlocks[lock] = valueBlock
        }
        startWaiting(lock, timeout: timeout)
        sendBlockingCallbacks(for: lock, includingConversions: false, into: &effects)
        if case .demoted = decision {
            // The demotion, and the conversions it let through, change the queues like a grant: walk them and
            // tell the holders (REFERENCE.md §2), or a conversion granted above blocks waiters without knowing it.
            grantPending(resource, into: &effects)
        } else if record.flags.contains(.headOfQueue) || record.flags.contains(.noOrder) {
            // Queued out of order: as a queued conversion, the rules may already grant it (rule 7 or 8).
            grantPending(resource, into: &effects)
        }
    }

    /// A conversion refused while being requested: the lock keeps its granted mode.
    mutating func finishConversionAtOnce(_ lock: Int32, status: DLMStatus, into effects: inout [Effect]) {
        let record = locks[Int(lock)]
        locks[Int(lock)].requestedMode = noMode
        effects.append(
            .completion(
                Completion(
                    lock: LockID(slot: lock), owner: owners[Int(record.owner)].id, status: status,
                    flags: record.pendingFlags, mode: LockMode(rawValue: record.grantedMode),
                    valueBlockSequence: resources[Int(record.resource)].valueBlockSequence)))
        locks[Int(lock)].pendingFlags = []
    }

    /// A queued conversion returns to the grant queue in its granted mode.
    mutating func revertConversion(_ lock: Int32) {
        pendingValueBlocks[lock] = nil
        unlinkFromQueue(lock, .convert)
        linkToQueue(lock, .grant)
        locks[Int(lock)].requestedMode = noMode
        locks[Int(lock)].pendingFlags = []
        locks[Int(lock)].deadline = 0
    }

    // MARK: Granting

    /// Grants a new request or a conversion in `mode`, and completes it.
    mutating func grant(
        _ lock: Int32, mode: UInt8, alternate: Bool, valueBlock: [UInt8]?, into effects: inout [Effect]
    ) {
        let record = locks[Int(lock)]
        let from = record.grantedMode
        switch record.queueKind {
        case .wait?:
            unlinkFromQueue(lock, .wait)
            locks[Int(lock)].grantedMode = mode
            linkToQueue(lock, .grant)
        case .convert?:
            unlinkFromQueue(lock, .convert)
            locks[Int(lock)].grantedMode = mode
            linkToQueue(lock, .grant)
        case .grant?:
            setGrantedMode(lock, mode)
        case nil:
            locks[Int(lock)].grantedMode = mode
            linkToQueue(lock, .grant)
        }
        locks[Int(lock)].requestedMode = noMode
        locks[Int(lock)].deadline = 0
        if alternate { locks[Int(lock)].pendingFlags.insert(.alternateMode) }
        var completion = Completion(
            lock: LockID(slot: lock), owner: owners[Int(record.owner)].id, status: .granted,
            mode: LockMode(rawValue: mode))
        finishGrant(lock, from: from, valueBlock: valueBlock, completion: &completion)
        effects.append(.completion(completion))
    }

    /// What every grant does: the value block read or write (VALBLK), the fencing token, the invalid mark,
    /// and a fresh start for blocking callbacks.
    mutating func finishGrant(_ lock: Int32, from: UInt8, valueBlock: [UInt8]?, completion: inout Completion) {
        let record = locks[Int(lock)]
        let resource = record.resource
        let operation = ValueBlockOperation(from: from, to: record.grantedMode)
        if operation == .write && record.flags.contains(.invalidateValueBlock) {
            // IVVALBLK invalidates wherever the value block would be written, with or without VALBLK, as on
            // unlock (and as Linux `set_lvb_lock` does).
            resources[Int(resource)].valueBlockInvalid = true
            replicate(resource)
            touch(resource)
        } else if record.flags.contains(.valueBlock) {
            // A holder that may write the value block: it is replicated from now on.
            if record.grantedMode >= LockMode.pw.rawValue { replicate(resource) }
            switch operation {
            case .read:
                completion.valueBlock = readValueBlock(resource: resource)
            case .write:
                if let valueBlock { writeValueBlock(valueBlock, resource: resource) }
            case .nothing:
                break
            }
        }
        if record.grantedMode >= LockMode.pw.rawValue || record.options.contains(.alwaysFencingToken) {
            resources[Int(resource)].fencingToken &+= 1
            locks[Int(lock)].fencingToken = resources[Int(resource)].fencingToken
            completion.fencingToken = resources[Int(resource)].fencingToken
        }
        completion.valueBlockSequence = resources[Int(resource)].valueBlockSequence
        completion.flags = record.pendingFlags
        if resources[Int(resource)].valueBlockInvalid { completion.flags.insert(.valueNotValid) }
        locks[Int(lock)].pendingFlags = []
        locks[Int(lock)].blockingSent = 0
    }

    /// Linux `grant_pending_locks`: after an unlock, a granted conversion or a cancel, walk the convert
    /// queue (from its head again after every grant), then the wait queue, granting what the rules allow;
    /// then send blocking callbacks for the strongest mode still blocked.
    mutating func grantPending(_ resource: Int32, recovering: Bool = false, into effects: inout [Effect]) {
        let record = resources[Int(resource)]
        if record.convertQueue.isEmpty && record.waitQueue.isEmpty { return }
        var blocked = grantPendingConversions(resource, recovering: recovering, into: &effects)
        var cursor = resources[Int(resource)].waitQueue.head
        while cursor != none {
            let next = locks[Int(cursor)].next
            if case .grant(let mode, let alternate) = decideGrant(cursor, now: false) {
                grant(cursor, mode: mode, alternate: alternate, valueBlock: nil, into: &effects)
            } else {
                blocked |= 1 << locks[Int(cursor)].requestedMode
            }
            cursor = next
        }
        if blocked != 0 { sendPendingBlockingCallbacks(resource, blocked: blocked, into: &effects) }
    }

    /// Linux `grant_pending_convert`. Returns the modes still blocked, one bit each.
    @discardableResult
    mutating func grantPendingConversions(
        _ resource: Int32, recovering: Bool = false, into effects: inout [Effect]
    ) -> UInt8 {
        var blocked: UInt8 = 0
        var cursor = resources[Int(resource)].convertQueue.head
        while cursor != none {
            let next = locks[Int(cursor)].next
            switch decideGrant(cursor, now: false, recovering: recovering) {
            case .grant(let mode, let alternate):
                let valueBlock = pendingValueBlocks.removeValue(forKey: cursor)
                grant(cursor, mode: mode, alternate: alternate, valueBlock: valueBlock, into: &effects)
                blocked = 0
                cursor = resources[Int(resource)].convertQueue.head
                continue
            case .demoted:
                // The demotion may let a conversion ahead through: start again from the head.
                blocked = 0
                cursor = resources[Int(resource)].convertQueue.head
                continue
            case .deadlock:
                if locks[Int(cursor)].flags.contains(.noDeadlockWait) {
                    sendSelfBlockingCallback(cursor, into: &effects)
                    blocked |= 1 << locks[Int(cursor)].requestedMode
                } else {
                    refusePending(cursor, status: .deadlock, into: &effects)
                    blocked = 0
                    cursor = resources[Int(resource)].convertQueue.head
                    continue
                }
            case .blocked:
                blocked |= 1 << locks[Int(cursor)].requestedMode
            }
            cursor = next
        }
        return blocked
    }

    // MARK: Blocking callbacks

    /// Whether a blocking callback for `mode` would repeat one already sent since the last grant: a mode
    /// no stronger than one sent.
    func alreadyTold(_ lock: Int32, _ mode: UInt8) -> Bool {
        var sent = locks[Int(lock)].blockingSent
        while sent != 0 {
            let told = UInt8(sent.trailingZeroBitCount)
            if ModeTable.dominates(told, mode) { return true }
            sent &= sent - 1
        }
        return false
    }

    mutating func sendBlockingCallback(_ lock: Int32, mode: UInt8, into effects: inout [Effect]) {
        // An owner that went away, whose locks an exit is releasing in slices, is told nothing.
        guard owners[Int(locks[Int(lock)].owner)].isLive else { return }
        locks[Int(lock)].blockingSent |= 1 << mode
        effects.append(
            .blockingCallback(
                BlockingCallback(
                    lock: LockID(slot: lock), owner: owners[Int(locks[Int(lock)].owner)].id,
                    mode: LockMode(rawValue: mode)!)))
    }

    /// A request blocked on arrival tells the holders whose granted mode blocks it (Linux
    /// `send_blocking_asts`, and `send_blocking_asts_all` for NOQUEUEBAST). `mode` defaults to the lock's
    /// requested mode.
    mutating func sendBlockingCallbacks(
        for lock: Int32, mode: UInt8? = nil, includingConversions: Bool, into effects: inout [Effect]
    ) {
        let resource = locks[Int(lock)].resource
        let mode = mode ?? locks[Int(lock)].requestedMode
        for queue in includingConversions ? [QueueKind.grant, .convert] : [.grant] {
            var cursor = queueEnds(resource, queue).head
            while cursor != none {
                let holder = locks[Int(cursor)]
                if cursor != lock && holder.owner != orphanOwner
                    && holder.options.contains(.wantsBlockingCallbacks)
                    && !ModeTable.compatible(holder.grantedMode, mode) && !alreadyTold(cursor, mode)
                {
                    sendBlockingCallback(cursor, mode: mode, into: &effects)
                }
                cursor = holder.next
            }
        }
    }

    /// After a pass over the queues, each holder on the grant queue whose mode blocks a waiting mode is
    /// told the strongest such mode it has not been told yet.
    mutating func sendPendingBlockingCallbacks(_ resource: Int32, blocked: UInt8, into effects: inout [Effect]) {
        var cursor = resources[Int(resource)].grantQueue.head
        while cursor != none {
            let holder = locks[Int(cursor)]
            if holder.owner != orphanOwner && holder.options.contains(.wantsBlockingCallbacks) {
                var candidates = blocked & ModeTable.incompatible[Int(holder.grantedMode)]
                while candidates != 0 {
                    let strongest = UInt8(7 - candidates.leadingZeroBitCount)
                    if !alreadyTold(cursor, strongest) {
                        sendBlockingCallback(cursor, mode: strongest, into: &effects)
                        break
                    }
                    candidates &= ~(1 << strongest)
                }
            }
            cursor = holder.next
        }
    }

    /// NODLCKWT in a conversion deadlock: the lock is told to give way for the mode it asks.
    mutating func sendSelfBlockingCallback(_ lock: Int32, into effects: inout [Effect]) {
        let mode = locks[Int(lock)].requestedMode
        if locks[Int(lock)].options.contains(.wantsBlockingCallbacks) && !alreadyTold(lock, mode) {
            sendBlockingCallback(lock, mode: mode, into: &effects)
        }
    }
}
