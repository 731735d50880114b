/// The deadlock search that runs on the engine's ticks: a pass looks at every request that has waited at least
/// `deadlockWait`, and refuses one victim (EDEADLK) for each cycle of the wait-for graph through such a request.
///
/// The graph of DeadlockDetection.swift, between participants, can have as many edges as the square of the
/// waiting requests: in a queue of W requests for EX, each waits for every request ahead of it. A pass builds an
/// equivalent graph of linear size instead, with nodes that stand for sets of locks:
///
/// - `held(i, m)`: the first i holders of a resource (grant queue, then convert queue) whose granted mode blocks
///   mode m; `heldAfter(i, m)`: those after the i-th, so that a converting lock can leave itself out;
/// - `ahead(i, m)`: what a request for mode m waits for among the first i locks of the resource's convert queue
///   then wait queue: each that blocks m, and for each that does not, what that one waits for;
/// - `blockers(L)`: what the queued lock L waits for, the two above for its position and mode;
/// - each participant points to `blockers(L)` of each of its waiting locks.
///
/// Every path between two participants in this graph is an edge of the participants' graph, or a participant
/// that waits for one of its own locks, which is no wait at all. So a participant is on a cycle exactly when its
/// strongly connected component (Tarjan's algorithm, linear) holds another participant. For each due request
/// on such a component, the pass takes the shortest cycle that leaves through that request, checks each step of
/// it against the queues as they are now (`waits`), and refuses its victim: the lowest priority, then the
/// youngest request. After a victim, the component is left to the next pass; so is a cycle that a refusal
/// created.
///
/// A pass is done in slices of `deadlockSlice` steps, one a tick, so that no client waits long behind it; the
/// queues may change between slices, which is why a cycle is checked against the queues before its victim is
/// refused (a cycle the graph missed is found by the next pass). Passes start at most every `deadlockWait / 4`
/// (longer for a pass of more than a million steps, in proportion), and not at all while the queues are unchanged
/// since a pass that found no cycle, so that thousands of requests waiting on a busy lock cost next to nothing.
/// A cycle is found between `deadlockWait` and `deadlockWait` plus a pass interval and a pass's slices after its
/// last request started waiting.
struct WaitForGraph {
    /// Whether each node is a participant (else it stands for a set of locks).
    var isParticipant: [Bool] = []
    var participantNode: [DeadlockParticipant: Int32] = [:]
    var nodeCount: Int32 { Int32(isParticipant.count) }
    /// Each node's edges as a list: its first edge, then each edge's next (-1 ends it). An edge goes to `target`;
    /// an edge out of a participant carries the waiting lock behind it in `label`.
    var firstEdge: [Int32] = []
    var nextEdge: [Int32] = []
    var target: [Int32] = []
    var label: [Int32] = []

    /// Room for about the nodes and edges `waiting` queued requests make, so that the arrays do not grow (and
    /// copy themselves) in the middle of a slice.
    mutating func reserve(waiting: Int) {
        // Growing the dictionary rehashes every participant in one go.
        participantNode.reserveCapacity(2 * waiting + 1024)
        isParticipant.reserveCapacity(4 * waiting + 1024)
        firstEdge.reserveCapacity(4 * waiting + 1024)
        for array in [\Self.nextEdge, \.target, \.label] { self[keyPath: array].reserveCapacity(8 * waiting + 1024) }
    }

    /// Room for `edges` more edges and about `nodes` more nodes (a part of another master being joined, perhaps
    /// in many pieces: the room at least doubles when it grows, so that joining stays linear).
    mutating func reserve(edges: Int, nodes: Int) {
        func room<T>(_ array: inout [T], _ more: Int) {
            let needed = array.count + more
            if array.capacity < needed { array.reserveCapacity(max(needed, array.capacity * 2)) }
        }
        room(&target, edges)
        room(&label, edges)
        room(&nextEdge, edges)
        room(&isParticipant, nodes)
        room(&firstEdge, nodes)
    }

    mutating func newNode(participant: Bool = false) -> Int32 {
        isParticipant.append(participant)
        firstEdge.append(-1)
        return nodeCount - 1
    }

    mutating func participant(_ who: DeadlockParticipant) -> Int32 {
        if let node = participantNode[who] { return node }
        let node = newNode(participant: true)
        participantNode[who] = node
        if recordsParticipants { participantsInOrder.append((node, who)) }
        return node
    }

    /// For a part of the cluster-wide graph handed out in slices: the participants in the order of their nodes.
    var recordsParticipants = false
    var participantsInOrder: [(node: Int32, who: DeadlockParticipant)] = []

    mutating func edge(_ from: Int32, _ to: Int32, lock: Int32 = none) {
        nextEdge.append(firstEdge[Int(from)])
        firstEdge[Int(from)] = Int32(target.count)
        target.append(to)
        label.append(lock)
    }

    /// A node for the union of two sets (-1: empty): one of them if the other is empty, else a new node.
    mutating func union(_ a: Int32, _ b: Int32) -> Int32 {
        if a < 0 { return b }
        if b < 0 || a == b { return a }
        let node = newNode()
        edge(node, a)
        edge(node, b)
        return node
    }
}

/// Tarjan's strongly connected components, without recursion and in slices: `run` goes on
/// where the last call stopped. Afterwards `component` holds each node's component and `cyclic` whether a
/// component holds two participants or more.
struct StrongComponents {
    var index: [Int32]
    var low: [Int32]
    var onStack: [Bool]
    var component: [Int32]
    var cyclic: [Bool] = []
    var stack: [Int32] = []
    var calls: [(node: Int32, edge: Int32)] = []
    var counter: Int32 = 0
    var nextRoot: Int32 = 0

    init(nodes: Int) {
        index = []
        low = []
        onStack = []
        component = []
        for array in [\Self.index, \.low, \.component] { self[keyPath: array].reserveCapacity(nodes) }
        onStack.reserveCapacity(nodes)
    }

    /// Goes on for at most `budget` steps; true when every node has its component.
    mutating func run(_ graph: WaitForGraph, budget: inout Int) -> Bool {
        // The per-node arrays are filled a slice at a time too: writing a few megabytes at once is a pause.
        while index.count < graph.isParticipant.count {
            guard budget > 0 else { return false }
            let chunk = min(graph.isParticipant.count - index.count, 16_384)
            budget -= chunk / 4
            index.append(contentsOf: repeatElement(-1, count: chunk))
            low.append(contentsOf: repeatElement(0, count: chunk))
            onStack.append(contentsOf: repeatElement(false, count: chunk))
            component.append(contentsOf: repeatElement(-1, count: chunk))
        }
        while true {
            if calls.isEmpty {
                while nextRoot < graph.nodeCount && index[Int(nextRoot)] >= 0 { nextRoot += 1 }
                guard nextRoot < graph.nodeCount else { return true }
                visit(nextRoot, graph)
            }
            guard budget > 0 else { return false }
            budget -= 1
            let (node, edge) = calls[calls.count - 1]
            let n = Int(node)
            if edge >= 0 {
                calls[calls.count - 1].edge = graph.nextEdge[Int(edge)]
                let next = graph.target[Int(edge)]
                if index[Int(next)] < 0 {
                    visit(next, graph)
                } else if onStack[Int(next)] {
                    low[n] = min(low[n], index[Int(next)])
                }
                continue
            }
            calls.removeLast()
            if let parent = calls.last { low[Int(parent.node)] = min(low[Int(parent.node)], low[n]) }
            if low[n] == index[n] {
                let id = Int32(cyclic.count)
                var participants = 0
                while let member = stack.popLast() {
                    onStack[Int(member)] = false
                    component[Int(member)] = id
                    if graph.isParticipant[Int(member)] { participants += 1 }
                    if member == node { break }
                }
                cyclic.append(participants >= 2)
            }
        }
    }

    private mutating func visit(_ node: Int32, _ graph: WaitForGraph) {
        index[Int(node)] = counter
        low[Int(node)] = counter
        counter += 1
        stack.append(node)
        onStack[Int(node)] = true
        calls.append((node, graph.firstEdge[Int(node)]))
    }
}

/// A deadlock pass in progress.
struct DeadlockPass {
    /// The requests that have waited `deadlockWait`, oldest first, and the resources with queued locks.
    var due: [Int32] = []
    var resources: [Int32] = []
    var graph = WaitForGraph()
    /// The resource being added to the graph and how far: its locks as they were when it was first looked at.
    var building: ResourceBuild?
    var nextResource = 0
    var components: StrongComponents?
    var nextDue = 0
    var settled = Set<Int32>()
    var steps = 0
    /// Scratch space of `shortestCycle`, reset after each use.
    var reachedBy: [Int32] = []
    var previous: [Int32] = []
}

extension DeadlockPass {
    /// The shortest cycle that leaves participant `from` through its waiting lock `first` and comes back to it
    /// past another participant, inside its component: the waiting locks behind the participants' edges, `first`
    /// first. A search over (node, whether another participant was passed), so that a participant waiting for
    /// its own lock does not count.
    mutating func shortestCycle(from: Int32, through first: Int32, budget: inout Int) -> [Int32]? {
        let graph = graph
        let component = components!.component
        let home = component[Int(from)]
        if reachedBy.count < Int(graph.nodeCount) * 2 {
            reachedBy = [Int32](repeating: -1, count: Int(graph.nodeCount) * 2)
            previous = [Int32](repeating: -1, count: Int(graph.nodeCount) * 2)
        }
        var queue: [Int32] = [from * 2]
        reachedBy[Int(from) * 2] = Int32.max
        defer { for state in queue { reachedBy[Int(state)] = -1 } }
        var head = 0
        while head < queue.count {
            let state = queue[head]
            head += 1
            budget -= 1
            let node = state / 2
            let passed = state % 2
            if node == from && head > 1 { continue }
            var edge = graph.firstEdge[Int(node)]
            while edge >= 0 {
                defer { edge = graph.nextEdge[Int(edge)] }
                if head == 1 && graph.label[Int(edge)] != first { continue }
                let next = graph.target[Int(edge)]
                guard component[Int(next)] == home else { continue }
                let nextPassed = passed == 1 || (graph.isParticipant[Int(next)] && next != from) ? 1 : 0
                let nextState = next * 2 + Int32(nextPassed)
                guard reachedBy[Int(nextState)] == -1 else { continue }
                reachedBy[Int(nextState)] = edge
                previous[Int(nextState)] = state
                queue.append(nextState)
                if next == from && nextPassed == 1 {
                    // Walk back, collecting the waiting locks of the participants' edges.
                    var locks: [Int32] = []
                    var cursor = nextState
                    while cursor != from * 2 {
                        let lock = graph.label[Int(reachedBy[Int(cursor)])]
                        if lock != none { locks.append(lock) }
                        cursor = previous[Int(cursor)]
                    }
                    return locks.reversed()
                }
            }
        }
        return nil
    }
}

/// One resource on its way into the graph: the slots of its holders and queued locks as they were when it was
/// first looked at (each lock is read when its turn comes, and left out if it has gone), and the set nodes made
/// so far (-1: the empty set).
struct ResourceBuild {
    var resource: Int32
    var holderSlots: [Int32] = []
    /// Where each converting lock is among the holders.
    var holderIndex: [Int32: Int] = [:]
    var holderModes: [UInt8] = []
    /// The holders' participant nodes (-1 for a holder that blocks no one: an orphan, NODLCKBLK, or gone).
    var holderNodes: [Int32] = []
    var queuedSlots: [Int32] = []
    var position = 0
    var modes: UInt8 = 0
    /// `ahead[m]`: `ahead(i, m)` at the current position i.
    var ahead = [Int32](repeating: -1, count: 6)
    /// `held[m][i]`: the first i holders whose granted mode blocks m; `heldAfter[m][i]`: those after the i-th.
    var held: [[Int32]?] = Array(repeating: nil, count: 6)
    var heldAfter: [[Int32]?] = Array(repeating: nil, count: 6)

    /// The set node of the holders whose granted mode blocks `mode`, without the holder at `except` (-1: none).
    mutating func heldBlocking(_ mode: UInt8, except: Int, _ graph: inout WaitForGraph) -> Int32 {
        let count = holderModes.count
        if held[Int(mode)] == nil {
            var prefix = [Int32](repeating: -1, count: count + 1)
            for i in 0..<count {
                let blocks = holderNodes[i] >= 0 && !ModeTable.compatible(holderModes[i], mode)
                prefix[i + 1] = blocks ? graph.union(prefix[i], holderNodes[i]) : prefix[i]
            }
            held[Int(mode)] = prefix
        }
        guard except >= 0 else { return held[Int(mode)]![count] }
        if heldAfter[Int(mode)] == nil {
            var suffix = [Int32](repeating: -1, count: count + 1)
            for i in stride(from: count - 1, through: 0, by: -1) {
                let blocks = holderNodes[i] >= 0 && !ModeTable.compatible(holderModes[i], mode)
                suffix[i] = blocks ? graph.union(suffix[i + 1], holderNodes[i]) : suffix[i + 1]
            }
            heldAfter[Int(mode)] = suffix
        }
        return graph.union(held[Int(mode)]![except], heldAfter[Int(mode)]![except + 1])
    }
}

extension LockEngine {
    /// Whether a deadlock pass is in progress (the next ticks go on with it).
    public var isSearchingDeadlocks: Bool { deadlockPass != nil }

    /// Starts a deadlock pass when one is due (see the top of this file), or goes on with the one in progress.
    mutating func searchDueDeadlocks(into effects: inout [Effect]) {
        guard config.deadlockWait > 0 else { return }
        if deadlockPass == nil {
            guard now >= nextDeadlockPass, waiting.head != none else { return }
            if deadlockGraphVersion == queueVersion && !deadlockLastPassFoundCycle { return }
            guard let pass = startDeadlockPass() else { return }
            deadlockPass = pass
            // The walk over every waiting request was this tick's slice.
            if pass.due.count + pass.resources.count >= config.deadlockSlice / 4 { return }
        }
        var budget = config.deadlockSlice
        if continueDeadlockPass(budget: &budget, into: &effects) { endDeadlockPass() }
    }

    /// Whether a queued lock's request has waited `deadlockWait` and takes part in deadlock detection (not NODLCKWT,
    /// not an orphan): a search, here or across nodes, starts from it.
    func isDueForDeadlockSearch(_ record: LockRecord) -> Bool {
        record.waitingSince &+ config.deadlockWait <= now && !record.flags.contains(.noDeadlockWait)
            && record.owner != orphanOwner
    }

    /// The due requests and the resources with queued locks; nil when no request is due.
    mutating func startDeadlockPass() -> DeadlockPass? {
        var pass = DeadlockPass()
        var seen = Set<Int32>()
        var cursor = waiting.head
        while cursor != none {
            let record = locks[Int(cursor)]
            if isDueForDeadlockSearch(record) {
                pass.due.append(cursor)
            }
            if seen.insert(record.resource).inserted { pass.resources.append(record.resource) }
            cursor = record.waitNext
        }
        guard !pass.due.isEmpty else { return nil }
        pass.graph.reserve(waiting: waitingCount)
        pass.steps = pass.due.count + pass.resources.count
        deadlockGraphVersion = queueVersion
        probe.deadlockPasses += 1
        return pass
    }

    /// The next pass waits a quarter of `deadlockWait`, more after a large pass.
    mutating func endDeadlockPass() {
        guard let pass = deadlockPass else { return }
        deadlockPass = nil
        probe.deadlockSteps += pass.steps
        let scale = UInt64(max(1, pass.steps / 1_000_000))
        nextDeadlockPass = now &+ max(config.deadlockWait / 4, 1) &* scale
        deadlockLastPassFoundCycle = pass.components?.cyclic.contains(true) ?? false
    }

    /// Runs the pass for at most `budget` steps; true when it is over.
    mutating func continueDeadlockPass(budget: inout Int, into effects: inout [Effect]) -> Bool {
        guard var pass = deadlockPass else { return true }
        deadlockPass = nil
        defer { deadlockPass = pass }
        let before = budget
        defer { pass.steps += before - budget }
        // The graph, a resource at a time.
        while pass.components == nil {
            if pass.building == nil {
                guard pass.nextResource < pass.resources.count else {
                    pass.components = StrongComponents(nodes: Int(pass.graph.nodeCount))
                    break
                }
                let resource = pass.resources[pass.nextResource]
                pass.nextResource += 1
                guard !resources[Int(resource)].isFree else { continue }
                pass.building = slotsForGraph(resource)
                budget -= pass.building!.holderSlots.count + pass.building!.queuedSlots.count
                if budget <= 0 { return false }
            }
            guard build(&pass.building!, &pass.graph, budget: &budget) else { return false }
            pass.building = nil
        }
        guard pass.components!.run(pass.graph, budget: &budget) else { return false }
        guard pass.components!.cyclic.contains(true) else { return true }
        // The victims.
        while pass.nextDue < pass.due.count {
            guard budget > 0 else { return false }
            let lock = pass.due[pass.nextDue]
            pass.nextDue += 1
            let record = locks[Int(lock)]
            guard !record.isFree, record.queue != QueueKind.grant.rawValue, let who = participant(lock),
                let node = pass.graph.participantNode[who]
            else { continue }
            let component = pass.components!.component[Int(node)]
            guard pass.components!.cyclic[Int(component)], !pass.settled.contains(component) else { continue }
            guard let cycle = pass.shortestCycle(from: node, through: lock, budget: &budget),
                isCurrentCycle(cycle)
            else { continue }
            pass.settled.insert(component)
            finishPending(victim(of: cycle), status: .deadlock, into: &effects)
        }
        return true
    }

    /// The slots of a resource's holders and queued locks, for the graph.
    func slotsForGraph(_ resource: Int32) -> ResourceBuild {
        var build = ResourceBuild(resource: resource)
        for queue in [QueueKind.grant, .convert] {
            var cursor = queueEnds(resource, queue).head
            while cursor != none {
                if queue == .convert { build.holderIndex[cursor] = build.holderSlots.count }
                build.holderSlots.append(cursor)
                cursor = locks[Int(cursor)].next
            }
        }
        for queue in [QueueKind.convert, .wait] {
            var cursor = queueEnds(resource, queue).head
            while cursor != none {
                build.queuedSlots.append(cursor)
                build.modes |= 1 << locks[Int(cursor)].requestedMode
                cursor = locks[Int(cursor)].next
            }
        }
        return build
    }

    /// Adds a resource's holders, then its queued locks, to the graph, for at most `budget` steps; true when all
    /// are in. A lock that has gone since `slotsForGraph`, or moved, is left out.
    func build(_ build: inout ResourceBuild, _ graph: inout WaitForGraph, budget: inout Int) -> Bool {
        let resource = build.resource
        while build.holderModes.count < build.holderSlots.count {
            guard budget > 0 else { return false }
            budget -= 2
            let slot = build.holderSlots[build.holderModes.count]
            let record = locks[Int(slot)]
            if !record.isFree, record.resource == resource, record.isGranted,
                !record.flags.contains(.noDeadlockBlock), let who = participant(slot)
            {
                build.holderModes.append(record.grantedMode)
                build.holderNodes.append(graph.participant(who))
            } else {
                build.holderModes.append(LockMode.nl.rawValue)
                build.holderNodes.append(-1)
            }
        }
        while build.position < build.queuedSlots.count {
            guard budget > 0 else { return false }
            budget -= 8
            let lock = build.queuedSlots[build.position]
            build.position += 1
            let record = locks[Int(lock)]
            guard !record.isFree, record.resource == resource,
                record.queue == QueueKind.convert.rawValue || record.queue == QueueKind.wait.rawValue,
                build.modes & (1 << record.requestedMode) != 0, let who = participant(lock)
            else { continue }
            let node = graph.participant(who)
            let mode = record.requestedMode
            // blockers(L): the holders that block its mode (itself left out), and unless NOORDER what is ahead.
            var blockers = build.heldBlocking(mode, except: build.holderIndex[lock] ?? -1, &graph)
            if !record.flags.contains(.noOrder) { blockers = graph.union(blockers, build.ahead[Int(mode)]) }
            if blockers >= 0, !record.flags.contains(.noDeadlockWait) { graph.edge(node, blockers, lock: lock) }
            // ahead(i + 1, m) for each mode m asked here: this lock itself if its mode blocks m (unless
            // NODLCKBLK), else what it waits for.
            let mine: Int32 = record.flags.contains(.noDeadlockBlock) ? -1 : node
            var remaining = build.modes
            while remaining != 0 {
                let m = UInt8(remaining.trailingZeroBitCount)
                remaining &= remaining - 1
                let contribution = !ModeTable.compatible(mode, m) && mine >= 0 ? mine : blockers
                build.ahead[Int(m)] = graph.union(build.ahead[Int(m)], contribution)
            }
        }
        return true
    }

    /// The victim of a cycle: the lowest priority, then the youngest request.
    func victim(of cycle: [Int32]) -> Int32 {
        cycle.min { a, b in
            let x = locks[Int(a)]
            let y = locks[Int(b)]
            return (x.priority, ~x.waitingSince, ~x.waitSequence) < (y.priority, ~y.waitingSince, ~y.waitSequence)
        }!
    }

    /// Whether each waiting lock of a cycle still waits for a lock of the next one's participant, as the queues
    /// are now.
    func isCurrentCycle(_ cycle: [Int32]) -> Bool {
        for (i, lock) in cycle.enumerated() {
            let next = cycle[(i + 1) % cycle.count]
            guard !locks[Int(lock)].isFree, locks[Int(lock)].queue != QueueKind.grant.rawValue,
                !locks[Int(next)].isFree, let blocker = participant(next), participant(lock) != blocker,
                waits(lock, for: blocker)
            else { return false }
        }
        return true
    }

    /// Whether the queued lock `lock` waits for a lock of `who` (the rule at the top of DeadlockDetection.swift),
    /// looking at each lock of its resource at most once.
    func waits(_ lock: Int32, for who: DeadlockParticipant) -> Bool {
        var seen = Set<Int32>()
        return waits(lock, for: who, seen: &seen)
    }

    private func waits(_ lock: Int32, for who: DeadlockParticipant, seen: inout Set<Int32>) -> Bool {
        guard seen.insert(lock).inserted else { return false }
        let record = locks[Int(lock)]
        let requested = record.requestedMode
        for queue in [QueueKind.grant, .convert] {
            var cursor = queueEnds(record.resource, queue).head
            while cursor != none {
                let other = locks[Int(cursor)]
                if cursor != lock, !other.flags.contains(.noDeadlockBlock),
                    !ModeTable.compatible(other.grantedMode, requested), participant(cursor) == who
                {
                    return true
                }
                cursor = other.next
            }
        }
        guard !record.flags.contains(.noOrder) else { return false }
        for queue in [QueueKind.convert, .wait] {
            if queue == .wait && record.queue != QueueKind.wait.rawValue { break }
            var cursor = queueEnds(record.resource, queue).head
            while cursor != none && cursor != lock {
                let other = locks[Int(cursor)]
                if !ModeTable.compatible(other.requestedMode, requested) && !other.flags.contains(.noDeadlockBlock) {
                    if participant(cursor) == who { return true }
                } else if waits(cursor, for: who, seen: &seen) {
                    return true
                }
                cursor = other.next
            }
        }
        return false
    }

    /// A whole pass's graph and (unless told not to) its components at once, for `findDeadlock` and a cluster-wide
    /// search's part.
    func wholeDeadlockPass(components withComponents: Bool = true) -> DeadlockPass {
        var pass = DeadlockPass()
        var seen = Set<Int32>()
        var cursor = waiting.head
        while cursor != none {
            if seen.insert(locks[Int(cursor)].resource).inserted { pass.resources.append(locks[Int(cursor)].resource) }
            cursor = locks[Int(cursor)].waitNext
        }
        for resource in pass.resources {
            var resourceBuild = slotsForGraph(resource)
            var budget = Int.max
            _ = build(&resourceBuild, &pass.graph, budget: &budget)
        }
        guard withComponents else { return pass }
        var components = StrongComponents(nodes: Int(pass.graph.nodeCount))
        var budget = Int.max
        _ = components.run(pass.graph, budget: &budget)
        pass.components = components
        return pass
    }
}
