import DLMTestSupport
import GroupServices

let ms = Settings.millisecond

/// N nodes' `GroupMember`s over a simulated network and clock: delays, losses, duplicates, reordering
/// (independent delays), partitions, crashes and restarts (a restart is a new incarnation that keeps only the
/// persisted state). Every effect goes through `InvariantChecker`; `transcript` records what a reader wants to see.
final class SimulatedCluster {
    enum Event {
        case tick(NodeID, incarnation: UInt64)
        case deliver(GroupMessage, from: Member, to: NodeID)
        case fence(by: Member, target: NodeID)
        case fenced(by: Member, target: NodeID, ok: Bool)
    }

    struct Node {
        var machine: GroupMember
        var alive: Bool
        var persisted = PersistentState()
    }

    let settings: Settings
    var rng: SplitMix64
    var now: UInt64 = 0
    var nodes: [NodeID: Node] = [:]
    var incarnations: [NodeID: UInt64] = [:]
    var queue = EventQueue<Event>()
    /// The component of each node; messages cross no component boundary.
    var component: [NodeID: Int] = [:]
    var loss = 0.0
    var duplication = 0.0
    var delay: ClosedRange<UInt64> = 1 * ms...1 * ms
    var fenceFailure = 0.0
    var fenceDelay: ClosedRange<UInt64> = 10 * ms...10 * ms
    /// Whether a successful fence stops its target (a power switch does); false: a fence device that reports
    /// success but leaves the node running, cut off.
    var fenceStopsNode = true
    let tickInterval: UInt64
    var checker: InvariantChecker
    var transcript: [String] = []
    var recordsTranscript = false
    /// The last events, for a failure report.
    var trace: [String] = []
    var tracesEverything = false

    init(settings: Settings, seed: UInt64, tickInterval: UInt64 = 25 * ms) {
        self.settings = settings
        self.rng = SplitMix64(seed: seed)
        self.tickInterval = tickInterval
        self.checker = InvariantChecker(settings: settings, checksPrimaryQuorum: true)
        for node in settings.nodes {
            nodes[node] = Node(machine: GroupMember(id: node, settings: settings), alive: false)
            component[node] = 0
        }
    }

    var liveNodes: [NodeID] { settings.nodes.filter { nodes[$0]!.alive } }

    func note(_ line: String) {
        if recordsTranscript { transcript.append(line) }
    }

    func log(_ line: String) {
        if tracesEverything { print("[\(now / ms) ms] \(line)") }
        trace.append("[\(now / ms) ms] \(line)")
        if trace.count > 60 { trace.removeFirst(trace.count - 40) }
    }

    // MARK: Scripted actions

    func start(_ node: NodeID) {
        precondition(!nodes[node]!.alive)
        let incarnation = (incarnations[node] ?? 0) + 1
        incarnations[node] = incarnation
        nodes[node]!.machine = GroupMember(id: node, settings: settings)
        nodes[node]!.alive = true
        checker.started(Member(node: node, incarnation: incarnation))
        log("start \(node)#\(incarnation)")
        input(node, .start(incarnation: incarnation, persisted: nodes[node]!.persisted, now: now))
        queue.push(now + tickInterval, .tick(node, incarnation: incarnation))
    }

    func crash(_ node: NodeID) {
        guard nodes[node]!.alive else { return }
        nodes[node]!.alive = false
        checker.crashed(node, at: now)
        log("crash \(node)")
    }

    func partition(_ groups: [[NodeID]]) {
        for (index, group) in groups.enumerated() { for node in group { component[node] = index } }
        log("partition \(groups)")
    }

    func heal() {
        for node in settings.nodes { component[node] = 0 }
        log("heal")
    }

    func input(_ node: NodeID, _ input: GroupInput) {
        guard nodes[node]!.alive else { return }
        var effects: [GroupEffect] = []
        if case .enterBarrier(let name) = input { checker.entered(name, by: nodes[node]!.machine.me) }
        nodes[node]!.machine.handle(input, into: &effects)
        let member = nodes[node]!.machine.me
        for effect in effects { carryOut(effect, by: member) }
        checker.afterStep(nodes, stepped: member, now: now)
    }

    func carryOut(_ effect: GroupEffect, by member: Member) {
        let node = member.node
        checker.effect(effect, by: member, now: now)
        switch effect {
        case .send(let message, let to):
            guard component[node] == component[to], Double.random(in: 0..<1, using: &rng) >= loss else { return }
            queue.push(now + UInt64.random(in: delay, using: &rng), .deliver(message, from: member, to: to))
            if Double.random(in: 0..<1, using: &rng) < duplication {
                queue.push(now + UInt64.random(in: delay, using: &rng), .deliver(message, from: member, to: to))
            }
        case .persist(let state):
            nodes[node]!.persisted = state
        case .viewInstalled(let view, let primary):
            log("\(node): \(view)\(primary ? " primary" : "")")
            note("\(node): \(view)\(primary ? " primary" : "")")
        case .fence(let target):
            log("\(node): fence \(target)")
            note("\(node): fence \(target)")
            queue.push(now + UInt64.random(in: fenceDelay, using: &rng), .fence(by: member, target: target))
        case .fenceFailed(let target):
            note("\(node): fence \(target) failed")
        case .deliver(let delivery):
            note("\(node): deliver \(String(decoding: delivery.payload, as: UTF8.self)) from \(delivery.sender)")
        case .barrierCompleted(let name, let view):
            note("\(node): barrier \(name) completed in \(view)")
        case .barrierAborted(let name, let view):
            note("\(node): barrier \(name) aborted in \(view.map(\.description) ?? "no view")")
        case .groupEvent(let event):
            note("\(node): \(event)")
        case .multicastToProvider:
            break  // a GroupMember asks for none
        }
    }

    /// Runs every event due up to `time`.
    func run(until time: UInt64) {
        while let (at, event) = queue.popFirst(notAfter: time) {
            now = max(now, at)
            switch event {
            case .tick(let node, let incarnation):
                guard nodes[node]!.alive, incarnations[node] == incarnation else { continue }
                input(node, .tick(now: now))
                queue.push(now + tickInterval, .tick(node, incarnation: incarnation))
            case .deliver(let message, let from, let to):
                guard component[from.node] == component[to] else { continue }
                input(to, .received(message, from: from))
            case .fence(let fencer, let target):
                guard nodes[fencer.node]!.alive, incarnations[fencer.node] == fencer.incarnation else { continue }
                let ok = Double.random(in: 0..<1, using: &rng) >= fenceFailure
                log("fence \(target) by \(fencer): \(ok ? "ok" : "failed")")
                if ok && fenceStopsNode { crash(target) }
                queue.push(now + 1 * ms, .fenced(by: fencer, target: target, ok: ok))
            case .fenced(let fencer, let target, let ok):
                guard incarnations[fencer.node] == fencer.incarnation else { continue }
                if ok { note("\(target) fenced") }
                input(fencer.node, .fenced(target, ok: ok))
            }
        }
        now = max(now, time)
    }

    func run(for duration: UInt64) { run(until: now + duration) }
}

/// A priority queue of timed events, first by time, then in the order pushed (so runs are deterministic).
struct EventQueue<Element> {
    private var heap: [(time: UInt64, order: UInt64, element: Element)] = []
    private var pushed: UInt64 = 0

    private func less(_ i: Int, _ j: Int) -> Bool {
        (heap[i].time, heap[i].order) < (heap[j].time, heap[j].order)
    }

    mutating func push(_ time: UInt64, _ element: Element) {
        pushed += 1
        heap.append((time, pushed, element))
        var child = heap.count - 1
        while child > 0 {
            let parent = (child - 1) / 2
            guard less(child, parent) else { break }
            heap.swapAt(child, parent)
            child = parent
        }
    }

    mutating func popFirst(notAfter time: UInt64) -> (UInt64, Element)? {
        guard let first = heap.first, first.time <= time else { return nil }
        heap.swapAt(0, heap.count - 1)
        heap.removeLast()
        var parent = 0
        while true {
            let left = 2 * parent + 1
            let right = left + 1
            var smallest = parent
            if left < heap.count && less(left, smallest) { smallest = left }
            if right < heap.count && less(right, smallest) { smallest = right }
            if smallest == parent { break }
            heap.swapAt(parent, smallest)
            parent = smallest
        }
        return (first.time, first.element)
    }
}
