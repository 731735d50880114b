/// Deadlock detection across nodes: the engine's part of it. A cycle of the wait-for graph can pass through
/// resources of several masters, which no single engine sees. A search (DLMCluster's LockService+Deadlocks.swift)
/// gathers each master's part of the graph (`waitForGraphPart`), joins the parts at their participants
/// (`ClusterWaitForGraph`), and finds the cycles through its own due requests; each step of a cycle is then
/// checked again on its master (`checkDeadlockStep`) before the victim is refused (`Input.deadlockVictim`).
///
/// A part is the linear-size graph of DeadlockSearch.swift: participants, nodes that stand for sets of locks,
/// and edges, those out of a participant labelled with the waiting lock behind them. Set nodes are private to
/// the part; participants (an owner or a transaction, with its node and life) are the same in every part.

/// A participant of a graph part: the part's node `index` stands for it.
public struct GraphParticipant: Sendable, Hashable {
    public var index: UInt32
    public var participant: DeadlockParticipant

    public init(index: UInt32, participant: DeadlockParticipant) {
        self.index = index
        self.participant = participant
    }
}

/// An edge of a graph part, between two of its node indexes. An edge out of a participant carries the waiting
/// lock behind it (the master's id, 0 for none) and that wait's sequence number, which a later check compares so
/// that a lock that stopped waiting and waits again is not taken for the same wait.
public struct GraphEdge: Sendable, Hashable {
    public var from: UInt32
    public var to: UInt32
    public var lock: LockID
    public var waitSequence: UInt32

    public init(from: UInt32, to: UInt32, lock: LockID = LockID(rawValue: 0), waitSequence: UInt32 = 0) {
        self.from = from
        self.to = to
        self.lock = lock
        self.waitSequence = waitSequence
    }
}

/// One master's part of the cluster-wide wait-for graph: participants first (every edge's participant is among
/// them), then edges.
public struct WaitForGraphPart: Sendable, Hashable {
    public var participants: [GraphParticipant] = []
    public var edges: [GraphEdge] = []
    public init(participants: [GraphParticipant] = [], edges: [GraphEdge] = []) {
        self.participants = participants
        self.edges = edges
    }
}

/// One step of a cycle across masters: the waiting lock (on `master`), that wait's sequence number, and who
/// waits. The step waits for the next step's participant (the last for the first's).
public struct DeadlockStep: Sendable, Hashable, Comparable {
    public var master: UInt32
    public var lock: LockID
    public var waitSequence: UInt32
    public var waiter: DeadlockParticipant

    public init(master: UInt32, lock: LockID, waitSequence: UInt32, waiter: DeadlockParticipant) {
        self.master = master
        self.lock = lock
        self.waitSequence = waitSequence
        self.waiter = waiter
    }

    public static func < (a: DeadlockStep, b: DeadlockStep) -> Bool {
        (a.master, a.lock.rawValue, a.waitSequence) < (b.master, b.lock.rawValue, b.waitSequence)
    }
}

/// What a master says of one step of a cycle when it is checked: whether the lock still waits, in the same wait,
/// for the next participant; and its deadlock priority and how long it has waited, to choose the victim.
public struct DeadlockStepState: Sendable, Hashable {
    public var waits: Bool
    public var priority: UInt8
    public var waited: UInt64
    /// The step's resource is held for another decision now: this one cannot be made (it does not wait, for the
    /// rule; the decider searches again later).
    public var busy: Bool

    /// A step that does not wait (unknown lock, another wait, or a node in another view).
    public static let notWaiting = DeadlockStepState(waits: false, priority: 0, waited: 0)
    /// A step whose resource another decision holds.
    public static let busy = DeadlockStepState(waits: false, priority: 0, waited: 0, busy: true)

    public init(waits: Bool, priority: UInt8, waited: UInt64, busy: Bool = false) {
        self.waits = waits
        self.priority = priority
        self.waited = waited
        self.busy = busy
    }

    /// The victim of a checked cycle, by the rule of one node (DeadlockSearch.swift): the lowest priority, then the
    /// youngest request (the shortest wait); between equals, the highest step, so that every node would choose
    /// the same. Nil if any step no longer waits: the cycle is broken and no one is refused.
    public static func victim(of steps: [(step: DeadlockStep, state: DeadlockStepState)]) -> DeadlockStep? {
        guard !steps.isEmpty, steps.allSatisfy(\.state.waits) else { return nil }
        return steps.min { a, b in
            if a.state.priority != b.state.priority { return a.state.priority < b.state.priority }
            if a.state.waited != b.state.waited { return a.state.waited < b.state.waited }
            return b.step < a.step
        }!.step
    }
}

extension LockEngine {
    /// This engine's part of the cluster-wide wait-for graph: every queued lock of every resource, as the queues
    /// are now (one step: its cost is linear in the queued locks).
    public func waitForGraphPart() -> WaitForGraphPart {
        let pass = wholeDeadlockPass(components: false)
        let graph = pass.graph
        var part = WaitForGraphPart()
        part.participants.reserveCapacity(graph.participantNode.count)
        for (participant, node) in graph.participantNode {
            part.participants.append(GraphParticipant(index: UInt32(node), participant: participant))
        }
        part.participants.sort { $0.index < $1.index }
        part.edges.reserveCapacity(graph.target.count)
        for from in 0..<Int(graph.nodeCount) {
            var edge = graph.firstEdge[from]
            while edge >= 0 {
                let label = graph.label[Int(edge)]
                part.edges.append(
                    GraphEdge(
                        from: UInt32(from), to: UInt32(graph.target[Int(edge)]),
                        lock: label == none ? LockID(rawValue: 0) : LockID(slot: label),
                        waitSequence: label == none ? 0 : locks[Int(label)].waitSequence))
                edge = graph.nextEdge[Int(edge)]
            }
        }
        return part
    }

    /// Whether the request that has waited longest has waited `deadlockWait` (the waiting list is in the order
    /// requests started waiting): a test of one lock, for every tick.
    public var hasDueDeadlockWaiter: Bool {
        config.deadlockWait > 0 && waiting.head != none
            && locks[Int(waiting.head)].waitingSince &+ config.deadlockWait <= now
    }

    /// The requests that have waited `deadlockWait` and take part in deadlock detection, with their waits'
    /// sequence numbers.
    public func dueDeadlockWaiters() -> [(lock: LockID, waitSequence: UInt32)] {
        guard config.deadlockWait > 0 else { return [] }
        var due: [(LockID, UInt32)] = []
        var cursor = waiting.head
        while cursor != none {
            let record = locks[Int(cursor)]
            if isDueForDeadlockSearch(record) {
                due.append((LockID(slot: cursor), record.waitSequence))
            }
            cursor = record.waitNext
        }
        return due
    }

    /// A number that changes whenever a queue changes (a search that found no cycle need not run again before).
    public var waitForVersion: UInt64 { queueVersion }

    /// Whether `lock` still waits, in the wait numbered `waitSequence`, for a lock of `blocker`; its priority and
    /// how long it has waited.
    public func checkDeadlockStep(_ lock: LockID, waitSequence: UInt32, blocker: DeadlockParticipant)
        -> DeadlockStepState
    {
        let slot = lock.slot
        guard slot >= 0, slot < locks.count else { return .notWaiting }
        let record = locks[slot]
        guard !record.isFree, record.queue != QueueKind.grant.rawValue, record.waitSequence == waitSequence,
            !record.flags.contains(.noDeadlockWait), let waiter = participant(Int32(slot)), waiter != blocker
        else { return DeadlockStepState(waits: false, priority: record.priority, waited: 0) }
        return DeadlockStepState(
            waits: waits(Int32(slot), for: blocker), priority: record.priority,
            waited: now >= record.waitingSince ? now - record.waitingSince : 0)
    }

    /// A cluster-wide search's victim: refused with EDEADLK if it still waits in the wait the search saw (else
    /// nothing happens: the cycle was broken meanwhile). It keeps what it holds.
    mutating func refuseDeadlockVictim(_ lock: LockID, waitSequence: UInt32, into effects: inout [Effect]) {
        let slot = lock.slot
        guard slot >= 0, slot < locks.count, !locks[slot].isFree, locks[slot].queue != QueueKind.grant.rawValue,
            locks[slot].waitSequence == waitSequence
        else { return }
        finishPending(Int32(slot), status: .deadlock, into: &effects)
    }
}

/// The cluster-wide wait-for graph of one search: the parts of every master joined at their participants. Joining
/// is linear with small constants (arrays indexed by node, no hashing per edge): a part of a million waiting
/// requests has five million edges.
public struct ClusterWaitForGraph {
    var pass = DeadlockPass()
    /// Per master, its part's node indexes in this graph (-1: not seen yet), by the part's index.
    var nodes: [UInt32: [Int32]] = [:]
    /// The labelled edges' steps; an edge's label is its step's index.
    public private(set) var steps: [DeadlockStep] = []
    /// The participant of each node of the graph (nil for a set node).
    var participantOfNode: [DeadlockParticipant?] = []

    public init() {}

    /// Joins `master`'s part (or a piece of it: a part may come in several, participants before the edges that
    /// use them).
    public mutating func add(_ part: WaitForGraphPart, of master: UInt32) {
        var map = nodes.removeValue(forKey: master) ?? []
        defer { nodes[master] = map }
        pass.graph.reserve(edges: part.edges.count, nodes: part.participants.count + part.edges.count / 2)
        func grow(to index: UInt32) {
            if Int(index) >= map.count { map.append(contentsOf: repeatElement(-1, count: Int(index) + 1 - map.count)) }
        }
        for entry in part.participants {
            let node = pass.graph.participant(entry.participant)
            while participantOfNode.count < Int(pass.graph.nodeCount) { participantOfNode.append(nil) }
            participantOfNode[Int(node)] = entry.participant
            grow(to: entry.index)
            map[Int(entry.index)] = node
        }
        for edge in part.edges {
            grow(to: max(edge.from, edge.to))
            var from = map[Int(edge.from)]
            if from < 0 {
                from = pass.graph.newNode()
                map[Int(edge.from)] = from
            }
            var to = map[Int(edge.to)]
            if to < 0 {
                to = pass.graph.newNode()
                map[Int(edge.to)] = to
            }
            guard edge.lock.rawValue != 0, Int(from) < participantOfNode.count,
                let waiter = participantOfNode[Int(from)]
            else {
                pass.graph.edge(from, to)
                continue
            }
            // A lock waits once in a part (one labelled edge out of its participant).
            let label = Int32(steps.count)
            steps.append(DeadlockStep(master: master, lock: edge.lock, waitSequence: edge.waitSequence, waiter: waiter))
            pass.graph.edge(from, to, lock: label)
        }
    }

    /// The cycles through the given requests (of `master`) that pass through resources of more than one master
    /// (a cycle on one master's resources is that engine's own to find): at most one per strongly connected
    /// component, each a list of steps starting with the given request's.
    public mutating func cyclesAcrossMasters(through due: [(lock: LockID, waitSequence: UInt32)], of master: UInt32)
        -> [[DeadlockStep]]
    {
        var components = StrongComponents(nodes: Int(pass.graph.nodeCount))
        var budget = Int.max
        _ = components.run(pass.graph, budget: &budget)
        pass.components = components
        guard components.cyclic.contains(true) else { return [] }
        var cycles: [[DeadlockStep]] = []
        var settled = Set<Int32>()
        // The label of each of this master's steps, by lock (once, not per edge).
        var labels: [UInt32: Int32] = [:]
        for (label, step) in steps.enumerated() where step.master == master {
            labels[step.lock.rawValue] = Int32(label)
        }
        for request in due {
            guard let label = labels[request.lock.rawValue], steps[Int(label)].waitSequence == request.waitSequence,
                let node = pass.graph.participantNode[steps[Int(label)].waiter]
            else { continue }
            let component = components.component[Int(node)]
            guard components.cyclic[Int(component)], !settled.contains(component) else { continue }
            guard let cycle = pass.shortestCycle(from: node, through: label, budget: &budget) else { continue }
            let cycleSteps = cycle.map { steps[Int($0)] }
            guard Set(cycleSteps.map(\.master)).count > 1 else { continue }
            settled.insert(component)
            cycles.append(cycleSteps)
        }
        return cycles
    }
}
