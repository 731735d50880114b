import DLMCore
import DLMWire

/// Deadlock detection across nodes (docs/SEMANTICS.md, "Deadlocks across nodes"). Each engine finds the cycles
/// among its own resources (DeadlockSearch.swift); a cycle that passes through resources of several masters is
/// found here, in three steps:
///
/// 1. **Search.** A master with a request that has waited `deadlockWait` (and whose queues changed since its last
///    search found nothing, or whose last search found a cycle) asks every other member for its part of the
///    wait-for graph (DEADLOCK_SEARCH, answered by DEADLOCK_GRAPH), joins the parts at their participants and
///    looks for the shortest cycle through each of its due requests that spans more than one master: at most
///    every `deadlockWait / 4`, one search at a time. Each node builds its part, and the searcher looks for the
///    cycles, in slices of `deadlockSlice` steps, one a tick, as a local pass does: a million waiting requests
///    never stop the loop for long. One part in progress serves every search that asked before it was handed
///    out; the searches that ask later get the next one.
/// 2. **Decision.** A cycle found goes to the master of its lowest step (DEADLOCK_CYCLE), which alone decides
///    it, so that searches started on several nodes at once choose one victim: it asks each master of the
///    cycle whether each step still waits, in the same wait, for the next step's participant (DEADLOCK_CHECK,
///    DEADLOCK_CHECKED), and drops a cycle whose steps are being decided already. A master that confirms its
///    steps holds their resources until the decision is over (LockService+DeadlockHolds.swift), so that nothing
///    breaks the cycle between the check and the victim.
/// 3. **Victim.** If every step still waits, the victim (lowest priority, then the shortest wait) gets EDEADLK
///    from its master (DEADLOCK_VICTIM), and keeps what it holds; if any step stopped waiting (an unlock, a
///    cancel, a timeout broke the cycle) no one is refused. Once the victim is refused (its master ends its own
///    hold and answers DEADLOCK_REFUSED), or at once without a victim, every master asked is told the decision is
///    over (DEADLOCK_RELEASE): what its hold kept waiting runs.
///
/// Every message carries the view of the last completed recovery; a view change abandons the searches and
/// decisions in progress (the next search starts after the recovery), and a node in another view refuses.
struct ClusterDeadlocks {
    var search: Search?
    var nextSearchID: UInt64 = 1
    /// No search starts before this time.
    var nextSearchAt: Instant = 0
    /// The engine's queue version at the last search, and whether that search found a cycle.
    var searchedVersion: UInt64?
    var lastSearchFoundCycle = false
    /// Decisions in progress here (as a cycle's decider), by check number, and the steps they hold.
    var decisions: [UInt64: Decision] = [:]
    /// Decisions whose victim's master has not answered yet, with the masters to release then.
    var refusing: [UInt64: [UInt32]] = [:]
    var deciding: Set<DeadlockStep> = []
    var nextCheck: UInt64 = 1
    /// Counts for the status report and metrics.
    var searches = 0
    var victims = 0
    /// The resources this node holds for decisions (as a master of their steps), and what waits for them.
    var holds = DeadlockHolds()
    /// This node's part of the graph being built and handed out, for the searches that asked for it, and the
    /// searches that asked once it was being handed out (they get the next one).
    var part: Part?
    var laterAskers: [Asker] = []

    /// A search that asked for this node's part: its node, number and view.
    struct Asker {
        var node: UInt32
        var search: UInt64
        var view: UInt64
    }

    struct Part {
        var builder: GraphPartBuilder
        var askers: [Asker]
    }

    struct Search {
        var id: UInt64
        var view: UInt64
        var version: UInt64
        var due: [(lock: LockID, waitSequence: UInt32)]
        var waitingFor: Set<UInt32>
        var graph = ClusterWaitForGraph()
        /// Once every part is in: the cycle search, in slices.
        var cycles: CycleSearch?
    }

    struct Decision {
        var view: UInt64
        var steps: [DeadlockStep]
        /// The state of each step, as its master answered.
        var states: [DeadlockStepState?]
        /// The masters that have not answered yet.
        var waitingFor: Set<UInt32>
        /// Every master asked (each is told when the decision is over).
        var asked: [UInt32]
    }

    /// A view change: everything in progress is given up.
    mutating func abandon() {
        search = nil
        part = nil
        laterAskers = []
        decisions = [:]
        refusing = [:]
        deciding = []
        searchedVersion = nil
    }
}

extension LockService {
    /// The deadlock searches across nodes this node started, and the victims it decided (status, metrics).
    public var clusterDeadlockSearches: Int { mastering.deadlocks.searches }
    public var clusterDeadlockVictims: Int { mastering.deadlocks.victims }

    /// The view that deadlock messages are made in: the last completed recovery's.
    var deadlockView: UInt64 { mastering.recoveredView }

    /// On a tick: goes on with this node's part and its search's cycles, and starts a search when one is due.
    mutating func searchDeadlocksAcrossNodes(now: Instant) {
        if mastering.deadlocks.part != nil { continueDeadlockPart() }
        if mastering.deadlocks.search?.cycles != nil { continueCycleSearch() }
        let wait = configuration.engine.deadlockWait
        guard wait > 0, !isStopped, !isRecovering, mastering.members.count > 1, mastering.deadlocks.search == nil,
            now >= mastering.deadlocks.nextSearchAt, engine.hasDueDeadlockWaiter
        else { return }
        let version = engine.waitForVersion
        if mastering.deadlocks.searchedVersion == version && !mastering.deadlocks.lastSearchFoundCycle { return }
        let due = engine.dueDeadlockWaiters()
        guard !due.isEmpty else { return }
        let me = configuration.nodeID
        let id = mastering.deadlocks.nextSearchID
        mastering.deadlocks.nextSearchID += 1
        mastering.deadlocks.searches += 1
        let search = ClusterDeadlocks.Search(
            id: id, view: deadlockView, version: version, due: due, waitingFor: Set(mastering.members))
        mastering.deadlocks.search = search
        for node in mastering.members where node != me {
            send(.deadlockSearch(search: id, view: deadlockView), to: node)
        }
        // This node's own part comes like the others' (to itself).
        askForDeadlockPart(ClusterDeadlocks.Asker(node: me, search: id, view: deadlockView))
    }

    /// A search asks for this node's part: it joins the part being built, or waits for the next one.
    mutating func askForDeadlockPart(_ asker: ClusterDeadlocks.Asker) {
        if mastering.deadlocks.part == nil {
            mastering.deadlocks.part = ClusterDeadlocks.Part(builder: engine.startGraphPart(), askers: [asker])
            continueDeadlockPart()
        } else if !mastering.deadlocks.part!.builder.isHandingOut {
            mastering.deadlocks.part!.askers.append(asker)
        } else {
            mastering.deadlocks.laterAskers.append(asker)
        }
    }

    /// One slice of this node's part: what it hands out goes to every search that asked, participants first
    /// (in messages of at most `messageListLimit` entries), the last message flagged.
    mutating func continueDeadlockPart() {
        guard var part = mastering.deadlocks.part else { return }
        mastering.deadlocks.part = nil
        let piece = engine.continueGraphPart(&part.builder, budget: configuration.engine.deadlockSlice)
        var pieces = Self.pieces(piece.participants).filter { !$0.isEmpty }.map { WaitForGraphPart(participants: $0) }
        pieces += Self.pieces(piece.edges).filter { !$0.isEmpty }.map { WaitForGraphPart(edges: $0) }
        if part.builder.isDone && pieces.isEmpty { pieces = [WaitForGraphPart()] }
        for asker in part.askers {
            for (i, message) in pieces.enumerated() {
                let last = part.builder.isDone && i == pieces.count - 1
                send(
                    .deadlockGraph(search: asker.search, view: asker.view, last: last, refused: false, message),
                    to: asker.node)
            }
        }
        if !part.builder.isDone {
            mastering.deadlocks.part = part
        } else if !mastering.deadlocks.laterAskers.isEmpty {
            // The searches that asked meanwhile: a part of the queues as they are now, from the next tick.
            mastering.deadlocks.part = ClusterDeadlocks.Part(
                builder: engine.startGraphPart(), askers: mastering.deadlocks.laterAskers)
            mastering.deadlocks.laterAskers = []
        }
    }

    /// One slice of the search's cycle search, once every part is in; at its end the cycles go to their deciders.
    mutating func continueCycleSearch() {
        guard var search = mastering.deadlocks.search, var cycleSearch = search.cycles else { return }
        mastering.deadlocks.search = nil
        guard
            let cycles = search.graph.findCycles(
                &cycleSearch, through: search.due, of: configuration.nodeID,
                budget: configuration.engine.deadlockSlice)
        else {
            search.cycles = cycleSearch
            mastering.deadlocks.search = search
            return
        }
        deadlockSearchEnded(foundCycle: !cycles.isEmpty, version: search.version)
        for cycle in cycles {
            send(.deadlockCycle(view: search.view, cycle), to: cycle.min()!.master)
        }
    }

    mutating func receiveDeadlockMessage(_ message: PeerMessage, from node: UInt32) {
        let inView = !isRecovering
        switch message {
        case .deadlockSearch(let search, let view):
            guard inView, view == deadlockView else {
                send(
                    .deadlockGraph(search: search, view: view, last: true, refused: true, WaitForGraphPart()), to: node)
                return
            }
            askForDeadlockPart(ClusterDeadlocks.Asker(node: node, search: search, view: view))
        case .deadlockGraph(let id, let view, let last, let refused, let part):
            guard var search = mastering.deadlocks.search, search.id == id, search.view == view else { return }
            mastering.deadlocks.search = nil
            guard inView, view == deadlockView, !refused else {
                deadlockSearchEnded(foundCycle: false, version: nil)
                return
            }
            search.graph.add(part, of: node)
            if last { search.waitingFor.remove(node) }
            if search.waitingFor.isEmpty { search.cycles = CycleSearch() }
            mastering.deadlocks.search = search
            if search.waitingFor.isEmpty { continueCycleSearch() }
        case .deadlockCycle(let view, let steps):
            guard inView, view == deadlockView, !steps.isEmpty, steps.min()!.master == configuration.nodeID,
                mastering.deadlocks.deciding.isDisjoint(with: steps)
            else { return }
            let check = mastering.deadlocks.nextCheck
            mastering.deadlocks.nextCheck += 1
            var byMaster: [UInt32: [DeadlockCheckItem]] = [:]
            for (i, step) in steps.enumerated() {
                let blocker = steps[(i + 1) % steps.count].waiter
                byMaster[step.master, default: []].append(
                    DeadlockCheckItem(lock: step.lock, waitSequence: step.waitSequence, blocker: blocker))
            }
            mastering.deadlocks.decisions[check] = ClusterDeadlocks.Decision(
                view: view, steps: steps, states: Array(repeating: nil, count: steps.count),
                waitingFor: Set(byMaster.keys), asked: byMaster.keys.sorted())
            mastering.deadlocks.deciding.formUnion(steps)
            for master in byMaster.keys.sorted() {
                send(.deadlockCheck(check: check, view: view, byMaster[master]!), to: master)
            }
        case .deadlockCheck(let check, let view, let items):
            let fresh = inView && view == deadlockView
            let decision = DeadlockHolds.Decision(decider: node, check: check)
            let states = items.map { item -> DeadlockStepState in
                guard fresh else { return .notWaiting }
                if isHeldByAnotherDecision(item.lock, than: decision) { return .busy }
                return engine.checkDeadlockStep(item.lock, waitSequence: item.waitSequence, blocker: item.blocker)
            }
            // Confirmed: held as they are until the decider says it is done.
            if fresh, !states.isEmpty, states.allSatisfy(\.waits) {
                holdForDeadlockDecision(decision, locks: items.map(\.lock))
            }
            send(.deadlockChecked(check: check, states), to: node)
        case .deadlockChecked(let check, let states):
            guard var decision = mastering.deadlocks.decisions.removeValue(forKey: check) else { return }
            var answered = states.makeIterator()
            for (i, step) in decision.steps.enumerated() where step.master == node {
                decision.states[i] = answered.next() ?? .notWaiting
            }
            decision.waitingFor.remove(node)
            guard decision.waitingFor.isEmpty else {
                mastering.deadlocks.decisions[check] = decision
                return
            }
            mastering.deadlocks.deciding.subtract(decision.steps)
            let checked = zip(decision.steps, decision.states).map {
                (step: $0, state: $1 ?? .notWaiting)
            }
            if inView, decision.view == deadlockView, let victim = DeadlockStepState.victim(of: checked) {
                // The holds end once the victim is refused (DEADLOCK_REFUSED): a step released before could let
                // the cycle go while the victim is still to be refused.
                mastering.deadlocks.victims += 1
                mastering.deadlocks.refusing[check] = decision.asked
                send(
                    .deadlockVictim(
                        view: decision.view, check: check, lock: victim.lock, waitSequence: victim.waitSequence),
                    to: victim.master)
            } else {
                for master in decision.asked { send(.deadlockRelease(check: check), to: master) }
            }
            if checked.contains(where: \.state.busy) {
                // Another decision held a step: searched again later, by how much depending on this node's id, so
                // that two deciders that met do not meet again.
                let wait = max(configuration.engine.deadlockWait / 4, 1)
                mastering.deadlocks.nextSearchAt = max(
                    mastering.deadlocks.nextSearchAt, engine.now &+ wait &* UInt64(1 + configuration.nodeID % 4))
            }
        case .deadlockVictim(let view, let check, let lock, let sequence):
            guard inView, view == deadlockView else { return }
            run(.deadlockVictim(lock, waitSequence: sequence), reply: nil)
            send(.deadlockRefused(check: check), to: node)
            releaseDeadlockDecision(DeadlockHolds.Decision(decider: node, check: check))
        case .deadlockRefused(let check):
            guard let masters = mastering.deadlocks.refusing.removeValue(forKey: check) else { return }
            for master in masters { send(.deadlockRelease(check: check), to: master) }
        case .deadlockRelease(let check):
            releaseDeadlockDecision(DeadlockHolds.Decision(decider: node, check: check))
        default:
            break
        }
    }

    /// The search is over (or given up): the next starts a quarter of `deadlockWait` later.
    mutating func deadlockSearchEnded(foundCycle: Bool, version: UInt64?) {
        mastering.deadlocks.searchedVersion = version
        mastering.deadlocks.lastSearchFoundCycle = foundCycle
        mastering.deadlocks.nextSearchAt = engine.now &+ max(configuration.engine.deadlockWait / 4, 1)
    }
}
