import DLMCore
import DLMWire
import DequeModule

/// The holds of deadlock decisions across nodes (docs/SEMANTICS.md, "Deadlocks across nodes"): no false victim.
///
/// A master that confirms to a decider that steps of a cycle still wait (DEADLOCK_CHECKED) holds their resources
/// until the decider is done (DEADLOCK_RELEASE): nothing that could end a wait of the cycle or free what it waits
/// for runs on them meanwhile, so that the cycle the decider saw whole is whole when its victim is refused. Held
/// here, in arrival order, while any resource is held:
/// - a client's LOCK on a held resource, its CONVERT, UNLOCK or DEADLOCK_CANCEL of a lock on one, and every PURGE
///   and LOCKSPACE_RELEASE; then everything else of that connection (its replies keep their order);
/// - another node's REQUEST, CONVERT, UNLOCK or DEADLOCK_CANCEL on a held resource, and every OWNER_EXITED and PURGE; then every
///   later operation of that node (they arrive in order);
/// - every disconnection (its owner's exit could release a lock of the cycle), the engine's timers (a timeout or a
///   local deadlock pass could end a wait) and work in slices.
/// The rest runs: other resources' requests, lookups, replies, value replicas, recovery and deadlock messages.
/// Decisions are short (a round of checks and the victim), so this costs a few milliseconds once per deadlock.
/// A decision meeting a resource that another one holds does not wait for it (two decisions could then wait for
/// each other): that step answers *busy*, the decision chooses no one, and its decider searches again a little
/// later (how much later depends on its node id, so that two deciders that met do not meet again). A view change
/// ends every hold (its decider may be gone; recovery holds what it must).
struct DeadlockHolds {
    /// A decision holding resources here: its decider and that node's check number.
    struct Decision: Hashable {
        var decider: UInt32
        var check: UInt64
    }

    /// What waits for the holds to end, in arrival order.
    enum Waiting {
        case frame(ClientMessage, ConnectionID, Instant?, ReportEnvironment?)
        case exited(ConnectionID)
        case peer(PeerMessage, from: UInt32)
    }

    /// The resources held (top-level), each with the decisions that hold it, and each decision's resources.
    var resources: [DirectoryKey: Set<Decision>] = [:]
    var decisions: [Decision: [DirectoryKey]] = [:]
    var waiting: Deque<Waiting> = []
    /// The connections and nodes with something waiting: what they send next waits behind it.
    var waitingConnections: Set<ConnectionID> = []
    var waitingNodes: Set<UInt32> = []
    /// The latest time a tick brought while the engine's timers waited.
    var clockBehind: Instant?

    var isHolding: Bool { !decisions.isEmpty }
}

extension LockService {
    var isHoldingForDeadlock: Bool { mastering.deadlocks.holds.isHolding }

    /// The top-level resource of a lock of this node's engine (a process copy's id names no resource here).
    func heldResource(ofLock lock: UInt32) -> Bool {
        guard !ProcessCopies.isCopy(lock), let top = engine.topLevelResource(of: LockID(rawValue: lock)) else {
            return false
        }
        return mastering.deadlocks.holds.resources[DirectoryKey(lockspace: top.lockspace, name: top.name)] != nil
    }

    /// Whether a client's frame waits for the holds to end.
    func waitsForDeadlockDecision(_ message: ClientMessage, from id: ConnectionID) -> Bool {
        let holds = mastering.deadlocks.holds
        guard holds.isHolding else { return false }
        if holds.waitingConnections.contains(id) { return true }
        switch message {
        case .lock(let m):
            if m.parent != 0 { return heldResource(ofLock: m.parent) }
            guard let info = engine.lockspaceInfo(LockspaceID(rawValue: m.lockspace)) else { return false }
            return holds.resources[DirectoryKey(lockspace: info.name, name: m.name)] != nil
        case .convert(let m): return heldResource(ofLock: m.lock)
        case .unlock(let m): return heldResource(ofLock: m.lock)
        case .deadlockCancel(_, let lock): return heldResource(ofLock: lock)
        case .purge, .releaseLockspace: return true
        default: return false
        }
    }

    /// Whether another node's message waits for the holds to end.
    func waitsForDeadlockDecision(_ message: PeerMessage, from node: UInt32) -> Bool {
        let holds = mastering.deadlocks.holds
        guard holds.isHolding else { return false }
        switch message {
        case .request(_, let remote):
            if holds.waitingNodes.contains(node) { return true }
            if let parent = remote.request.parent { return heldResource(ofLock: parent.rawValue) }
            return holds.resources[DirectoryKey(lockspace: remote.lockspace, name: remote.request.name)] != nil
        case .convert(_, let request):
            return holds.waitingNodes.contains(node) || heldResource(ofLock: request.lock.rawValue)
        case .unlock(_, let request):
            return holds.waitingNodes.contains(node) || heldResource(ofLock: request.lock.rawValue)
        case .deadlockCancel(_, let lock, _):
            return holds.waitingNodes.contains(node) || heldResource(ofLock: lock.rawValue)
        case .ownerExited, .purge:
            return true
        default:
            return false
        }
    }

    mutating func waitForDeadlockDecision(_ input: DeadlockHolds.Waiting) {
        switch input {
        case .frame(_, let id, _, _), .exited(let id):
            mastering.deadlocks.holds.waitingConnections.insert(id)
        case .peer(_, let node): mastering.deadlocks.holds.waitingNodes.insert(node)
        }
        mastering.deadlocks.holds.waiting.append(input)
    }

    /// A check's steps all wait: their resources are held for `decision` until its decider releases it.
    mutating func holdForDeadlockDecision(_ decision: DeadlockHolds.Decision, locks: [LockID]) {
        var keys: [DirectoryKey] = []
        for lock in locks {
            guard let top = engine.topLevelResource(of: lock) else { continue }
            let key = DirectoryKey(lockspace: top.lockspace, name: top.name)
            keys.append(key)
            mastering.deadlocks.holds.resources[key, default: []].insert(decision)
        }
        mastering.deadlocks.holds.decisions[decision] = keys
    }

    /// Whether another decision holds the resource of `lock` now.
    func isHeldByAnotherDecision(_ lock: LockID, than decision: DeadlockHolds.Decision) -> Bool {
        guard let top = engine.topLevelResource(of: lock),
            let holders = mastering.deadlocks.holds.resources[DirectoryKey(lockspace: top.lockspace, name: top.name)]
        else { return false }
        return !holders.subtracting([decision]).isEmpty
    }

    /// The decider is done with `decision`: its resources are free again; once none is held, what waited runs.
    mutating func releaseDeadlockDecision(_ decision: DeadlockHolds.Decision) {
        guard let keys = mastering.deadlocks.holds.decisions.removeValue(forKey: decision) else { return }
        for key in keys {
            mastering.deadlocks.holds.resources[key]?.remove(decision)
            if mastering.deadlocks.holds.resources[key]?.isEmpty == true {
                mastering.deadlocks.holds.resources[key] = nil
            }
        }
        if !isHoldingForDeadlock { runWhatWaitedForDeadlockDecisions() }
    }

    /// Every hold ends (a view change): what waited runs, by the rules of the moment (recovery holds its part).
    mutating func endDeadlockHolds() {
        mastering.deadlocks.holds.resources = [:]
        mastering.deadlocks.holds.decisions = [:]
        runWhatWaitedForDeadlockDecisions()
    }

    /// What waited runs in arrival order, then the engine's clock catches up.
    mutating func runWhatWaitedForDeadlockDecisions() {
        let waiting = mastering.deadlocks.holds.waiting
        let clock = mastering.deadlocks.holds.clockBehind
        mastering.deadlocks.holds.waiting = []
        mastering.deadlocks.holds.waitingConnections = []
        mastering.deadlocks.holds.waitingNodes = []
        mastering.deadlocks.holds.clockBehind = nil
        for input in waiting {
            switch input {
            case .frame(let message, let id, let now, let environment):
                receive(message, from: id, now: now, environment: environment)
            case .exited(let id):
                if isLive(id) { exitOrWait(id) }
            case .peer(let message, let node):
                receive(message, from: node)
            }
        }
        if let clock { advanceClock(to: clock) }
    }
}
