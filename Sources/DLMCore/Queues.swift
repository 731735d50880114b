/// The grant, convert and wait queues of a resource, as intrusive doubly-linked lists of lock slots.
extension LockEngine {
    func queueEnds(_ resource: Int32, _ queue: QueueKind) -> QueueEnds {
        switch queue {
        case .grant: resources[Int(resource)].grantQueue
        case .convert: resources[Int(resource)].convertQueue
        case .wait: resources[Int(resource)].waitQueue
        }
    }

    mutating func setQueueEnds(_ resource: Int32, _ queue: QueueKind, _ ends: QueueEnds) {
        switch queue {
        case .grant: resources[Int(resource)].grantQueue = ends
        case .convert: resources[Int(resource)].convertQueue = ends
        case .wait: resources[Int(resource)].waitQueue = ends
        }
    }

    /// Puts a lock on a queue of its resource, at the tail or (HEADQUE) at the head. A lock on the grant or
    /// convert queue counts with its granted mode; one on the convert or wait queue is waiting.
    mutating func linkToQueue(_ lock: Int32, _ queue: QueueKind, atHead: Bool = false) {
        let resource = locks[Int(lock)].resource
        var ends = queueEnds(resource, queue)
        if ends.isEmpty {
            locks[Int(lock)].prev = none
            locks[Int(lock)].next = none
            ends.head = lock
            ends.tail = lock
        } else if atHead {
            locks[Int(lock)].prev = none
            locks[Int(lock)].next = ends.head
            locks[Int(ends.head)].prev = lock
            ends.head = lock
        } else {
            locks[Int(lock)].prev = ends.tail
            locks[Int(lock)].next = none
            locks[Int(ends.tail)].next = lock
            ends.tail = lock
        }
        setQueueEnds(resource, queue, ends)
        locks[Int(lock)].queue = queue.rawValue
        queueVersion &+= 1
        touch(resource, lock: lock)
        if queue != .wait { resources[Int(resource)].granted.add(locks[Int(lock)].grantedMode) }
        if queue != .grant { linkToWaiting(lock) }
    }

    mutating func unlinkFromQueue(_ lock: Int32, _ queue: QueueKind) {
        let resource = locks[Int(lock)].resource
        var ends = queueEnds(resource, queue)
        let prev = locks[Int(lock)].prev
        let next = locks[Int(lock)].next
        if prev != none { locks[Int(prev)].next = next } else { ends.head = next }
        if next != none { locks[Int(next)].prev = prev } else { ends.tail = prev }
        setQueueEnds(resource, queue, ends)
        locks[Int(lock)].prev = none
        locks[Int(lock)].next = none
        locks[Int(lock)].queue = 0
        queueVersion &+= 1
        touch(resource, lock: lock)
        if queue != .wait { resources[Int(resource)].granted.remove(locks[Int(lock)].grantedMode) }
        if queue != .grant { unlinkFromWaiting(lock) }
    }

    /// Changes the granted mode of a lock on the grant or convert queue, keeping the mode counts true.
    mutating func setGrantedMode(_ lock: Int32, _ mode: UInt8) {
        let resource = locks[Int(lock)].resource
        resources[Int(resource)].granted.remove(locks[Int(lock)].grantedMode)
        resources[Int(resource)].granted.add(mode)
        locks[Int(lock)].grantedMode = mode
        queueVersion &+= 1
        touch(resource, lock: lock)
    }

    /// The locks of one queue, head first.
    func slots(_ resource: Int32, _ queue: QueueKind) -> [Int32] {
        var result: [Int32] = []
        var cursor = queueEnds(resource, queue).head
        while cursor != none {
            result.append(cursor)
            cursor = locks[Int(cursor)].next
        }
        return result
    }

    // MARK: The waiting list and its timers

    mutating func linkToWaiting(_ lock: Int32) {
        waitingCount += 1
        owners[Int(locks[Int(lock)].owner)].pendingCount += 1
        locks[Int(lock)].waitPrev = waiting.tail
        locks[Int(lock)].waitNext = none
        if waiting.tail != none { locks[Int(waiting.tail)].waitNext = lock } else { waiting.head = lock }
        waiting.tail = lock
    }

    mutating func unlinkFromWaiting(_ lock: Int32) {
        waitingCount -= 1
        owners[Int(locks[Int(lock)].owner)].pendingCount -= 1
        let prev = locks[Int(lock)].waitPrev
        let next = locks[Int(lock)].waitNext
        if prev != none { locks[Int(prev)].waitNext = next } else { waiting.head = next }
        if next != none { locks[Int(next)].waitPrev = prev } else { waiting.tail = prev }
        locks[Int(lock)].waitPrev = none
        locks[Int(lock)].waitNext = none
    }

    /// Stamps a lock that just started waiting and arms its timeout (deadlock passes look at how long each
    /// request waited, DeadlockSearch.swift).
    mutating func startWaiting(_ lock: Int32, timeout: UInt64?) {
        waitSequence &+= 1
        locks[Int(lock)].waitSequence = waitSequence
        locks[Int(lock)].waitingSince = now
        locks[Int(lock)].deadline = 0
        armTimers(lock, timeout: timeout)
    }

    mutating func armTimers(_ lock: Int32, timeout: UInt64?) {
        let sequence = locks[Int(lock)].waitSequence
        if let timeout {
            let deadline = now &+ max(timeout, 1)
            locks[Int(lock)].deadline = deadline
            timeouts.insert(TimerEntry(due: deadline, lock: lock, sequence: sequence))
        }
    }

    /// Whether a timer still refers to the same wait of the same lock.
    func isCurrent(_ entry: TimerEntry) -> Bool {
        let record = locks[Int(entry.lock)]
        return !record.isFree && record.waitSequence == entry.sequence
            && (record.queue == QueueKind.convert.rawValue || record.queue == QueueKind.wait.rawValue)
    }

    /// Gives up the requests whose timeout has come, at most `timeoutSlice` a tick (the rest at the next ticks),
    /// so that a million requests timing out together do not hold the shell's loop.
    mutating func expireTimeouts(into effects: inout [Effect]) {
        var budget = config.timeoutSlice
        while budget > 0, let first = timeouts.min, first.due <= now {
            budget -= 1
            timeouts.removeMin()
            if isCurrent(first) { finishPending(first.lock, status: .timedOut, into: &effects) }
        }
    }
}

/// A timer of a waiting lock: valid while the lock still waits with the same sequence number.
struct TimerEntry: Comparable {
    var due: Instant
    var lock: Int32
    var sequence: UInt32

    static func < (lhs: TimerEntry, rhs: TimerEntry) -> Bool {
        (lhs.due, lhs.sequence) < (rhs.due, rhs.sequence)
    }
}
