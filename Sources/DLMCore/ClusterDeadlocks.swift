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

/// This engine's part of the cluster-wide wait-for graph, built and handed out in slices of the loop's ticks, as a
/// local deadlock pass is (`LockEngine.continueGraphPart`): first the graph, a resource at a time, then its
/// participants, then its edges by node. The queues may change between slices, so a part may mix moments: a
/// cycle it shows that is not there is caught by the decider's checks (a step that does not wait chooses no
/// victim), and one it misses is found by a later search.
public struct GraphPartBuilder {
    var pass = DeadlockPass()
    var nextParticipant = 0
    var nextNode = 0
    /// Whether the graph is built and being handed out (what is handed out cannot be handed again).
    public internal(set) var isHandingOut = false
    /// Whether everything was handed out.
    public internal(set) var isDone = false
}

extension LockEngine {
    /// A part to build: the resources with queued locks now (a walk over the waiting requests).
    public func startGraphPart() -> GraphPartBuilder {
        var builder = GraphPartBuilder()
        var seen = Set<Int32>()
        var cursor = waiting.head
        while cursor != none {
            if seen.insert(locks[Int(cursor)].resource).inserted {
                builder.pass.resources.append(locks[Int(cursor)].resource)
            }
            cursor = locks[Int(cursor)].waitNext
        }
        builder.pass.graph.recordsParticipants = true
        builder.pass.graph.reserve(waiting: waitingCount)
        return builder
    }

    /// Goes on with a part for about `budget` steps: what this slice hands out (participants before the edges
    /// that use them, possibly nothing while the graph is built).
    public func continueGraphPart(_ builder: inout GraphPartBuilder, budget: Int) -> WaitForGraphPart {
        var budget = budget
        var piece = WaitForGraphPart()
        while !builder.isHandingOut {
            if builder.pass.building == nil {
                guard builder.pass.nextResource < builder.pass.resources.count else {
                    builder.isHandingOut = true
                    break
                }
                let resource = builder.pass.resources[builder.pass.nextResource]
                builder.pass.nextResource += 1
                guard !resources[Int(resource)].isFree else { continue }
                builder.pass.building = slotsForGraph(resource)
                budget -= builder.pass.building!.holderSlots.count + builder.pass.building!.queuedSlots.count
                if budget <= 0 { return piece }
            }
            guard build(&builder.pass.building!, &builder.pass.graph, budget: &budget) else { return piece }
            builder.pass.building = nil
        }
        let count = builder.pass.graph.participantsInOrder.count
        while builder.nextParticipant < count {
            guard budget > 0 else { return piece }
            let (node, who) = builder.pass.graph.participantsInOrder[builder.nextParticipant]
            piece.participants.append(GraphParticipant(index: UInt32(node), participant: who))
            builder.nextParticipant += 1
            budget -= 1
        }
        let nodes = Int(builder.pass.graph.nodeCount)
        while builder.nextNode < nodes {
            guard budget > 0 else { return piece }
            let from = builder.nextNode
            var edge = builder.pass.graph.firstEdge[from]
            while edge >= 0 {
                let label = builder.pass.graph.label[Int(edge)]
                piece.edges.append(
                    GraphEdge(
                        from: UInt32(from), to: UInt32(builder.pass.graph.target[Int(edge)]),
                        lock: label == none ? LockID(rawValue: 0) : LockID(slot: label),
                        waitSequence: label == none ? 0 : locks[Int(label)].waitSequence))
                edge = builder.pass.graph.nextEdge[Int(edge)]
                budget -= 1
            }
            builder.nextNode += 1
        }
        builder.isDone = true
        return piece
    }

    /// This engine's whole part at once (tests, and small graphs).
    public func waitForGraphPart() -> WaitForGraphPart {
        var builder = startGraphPart()
        var part = WaitForGraphPart()
        while !builder.isDone {
            let piece = continueGraphPart(&builder, budget: Int.max)
            part.participants += piece.participants
            part.edges += piece.edges
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
        var search = CycleSearch()
        var found: [[DeadlockStep]]?
        while found == nil { found = findCycles(&search, through: due, of: master, budget: Int.max) }
        return found!
    }

    /// The cycle search of `cyclesAcrossMasters` in slices of about `budget` steps: nil until it is over.
    public mutating func findCycles(
        _ search: inout CycleSearch, through due: [(lock: LockID, waitSequence: UInt32)], of master: UInt32,
        budget: Int
    ) -> [[DeadlockStep]]? {
        var budget = budget
        if pass.components == nil { pass.components = StrongComponents(nodes: Int(pass.graph.nodeCount)) }
        guard pass.components!.run(pass.graph, budget: &budget) else { return nil }
        guard pass.components!.cyclic.contains(true) else { return [] }
        // The label of each of this master's steps, by lock.
        while search.nextLabel < steps.count {
            guard budget > 0 else { return nil }
            let step = steps[search.nextLabel]
            if step.master == master { search.labels[step.lock.rawValue] = Int32(search.nextLabel) }
            search.nextLabel += 1
            budget -= 1
        }
        while search.nextDue < due.count {
            guard budget > 0 else { return nil }
            let request = due[search.nextDue]
            search.nextDue += 1
            budget -= 1
            guard let label = search.labels[request.lock.rawValue],
                steps[Int(label)].waitSequence == request.waitSequence,
                let node = pass.graph.participantNode[steps[Int(label)].waiter]
            else { continue }
            let component = pass.components!.component[Int(node)]
            guard pass.components!.cyclic[Int(component)], !search.settled.contains(component) else { continue }
            // A search within one component is not cut (it would be lost): its steps count against this slice.
            var unlimited = Int.max
            let cycle = pass.shortestCycle(from: node, through: label, budget: &unlimited)
            budget -= Int.max - unlimited
            guard let cycle else { continue }
            let cycleSteps = cycle.map { steps[Int($0)] }
            guard Set(cycleSteps.map(\.master)).count > 1 else { continue }
            search.settled.insert(component)
            search.cycles.append(cycleSteps)
        }
        return search.cycles
    }
}

/// Where a cycle search of a cluster-wide graph is (`ClusterWaitForGraph.findCycles`).
public struct CycleSearch {
    var nextLabel = 0
    var labels: [UInt32: Int32] = [:]
    var nextDue = 0
    var settled = Set<Int32>()
    var cycles: [[DeadlockStep]] = []

    public init() {}
}
