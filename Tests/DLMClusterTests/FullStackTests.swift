import DLMCore
import DLMTestSupport
import DLMWire
import Foundation
import GroupServices
import Testing

@testable import DLMCluster

/// The whole stack of a node in one loop: group services' own core (`GroupMember`, the built-in provider) decides
/// the views from heartbeats over a simulated network that delays, loses, duplicates and reorders its messages and
/// is cut into partitions; it fences a node before a primary view leaves it out (the fence stops the node, as a
/// power switch does); each view it installs goes to that node's `LockService`, whose lock traffic goes point to
/// point in order per pair of lives (held across a partition, as the peer transport holds it until the link is
/// back; lost with a life). Clients on every node lock and unlock a few shared names. After every step no two
/// clients believe they hold incompatible modes of one name (a client on a cut-off node keeps believing until its
/// node is fenced); at the end, the partitions healed and the views settled, every request was answered.
///
/// DLM_STACK_SEEDS sets how many seeds (default 20; `make test` runs 200, `make sim` SEEDS); DLM_STACK_SEED replays one, and
/// DLM_STACK_TRACE=1 prints what the group layer and the clients do.
@Suite struct FullStackTests {
    @Test func groupServicesDecideTheViewsAndExclusionHolds() {
        let environment = ProcessInfo.processInfo.environment
        let seeds: [UInt64]
        if let one = environment["DLM_STACK_SEED"].flatMap(UInt64.init) {
            seeds = [one]
        } else {
            let count = environment["DLM_STACK_SEEDS"].flatMap(UInt64.init) ?? 20
            let first = environment["DLM_STACK_FIRST_SEED"].flatMap(UInt64.init) ?? 1
            seeds = Array(first..<first + count)
        }
        var views = 0
        var fences = 0
        var grants = 0
        for seed in seeds {
            var run = FullStackRun(seed: seed)
            do {
                try run.go()
            } catch {
                let replay = "DLM_STACK_SEED=\(seed) DLM_STACK_TRACE=1 swift test --filter FullStackTests"
                Issue.record("\(error)\nreplay: \(replay)")
                return
            }
            views += run.viewsInstalled
            fences += run.fences
            grants += run.grants
        }
        // The seeds did what they are for: views changed, nodes were fenced, locks were granted.
        if seeds.count >= 10 {
            #expect(views > 0 && fences > 0 && grants > 0, "\(views) views, \(fences) fences, \(grants) grants")
        }
    }
}

struct FullStackRun {
    struct Failure: Error, CustomStringConvertible { var description: String }

    /// A message of group services on its way, or a fence that completes.
    enum Event {
        case deliver(GroupMessage, from: Member, to: UInt32)
        case fence(by: Member, target: UInt32)
    }

    /// A client: at most one lock at a time, on one name.
    struct Client {
        var node: UInt32
        var id: ConnectionID
        var name: String
        var gone = false
        /// The request or unlock it waits for an answer to.
        var waiting: (tag: UInt32, unlock: Bool)?
        /// The name and the lock id it asked for or holds, and the mode once granted (nil while it waits).
        var lock: (name: String, id: UInt32?, mode: LockMode?)?
        var nextTag: UInt32 = 10
    }

    static let ms = Settings.millisecond
    let seed: UInt64
    var random: SplitMix64
    let settings: Settings
    var cluster: ClusterHarness
    var members: [UInt32: GroupMember] = [:]
    var persisted: [UInt32: PersistentState] = [:]
    var events: [(at: UInt64, order: UInt64, event: Event)] = []
    var order: UInt64 = 0
    var now: UInt64 = 0
    /// The partition each node is in (0 when whole).
    var component: [UInt32: Int] = [:]
    var clients: [Client] = []
    var framesRead = 0
    let names: [String]
    let trace = ProcessInfo.processInfo.environment["DLM_STACK_TRACE"] != nil
    var viewsInstalled = 0
    var fences = 0
    var grants = 0

    init(seed: UInt64) {
        self.seed = seed
        random = SplitMix64(seed: seed)
        let count = 3 + random.below(3)
        // Group services' timers shortened tenfold, so that a run of a few simulated seconds sees several views.
        var votes: [NodeID: Int] = [:]
        for node in 1...count { votes[NodeID(UInt32(node))] = 1 }
        settings = Settings(
            votes: votes, heartbeatInterval: 20 * Self.ms, suspectTimeout: 100 * Self.ms,
            viewChangeTime: 50 * Self.ms, flushTimeout: 30 * Self.ms, retransmitInterval: 5 * Self.ms,
            fenceRetryInterval: 25 * Self.ms)
        cluster = ClusterHarness(nodes: UInt32(count), installsView: false)
        names = (0..<(1 + random.below(3))).map { "s\($0)" }
        for node in 1...UInt32(count) { start(node) }
    }

    func log(_ line: @autoclosure () -> String) {
        if trace { print("[\(now / Self.ms) ms] \(line())") }
    }

    // MARK: Group services

    /// A node's life begins in both layers, with the same incarnation; its clients connect.
    mutating func start(_ node: UInt32) {
        if cluster.nodes[node] == nil { cluster.start(node) }
        let incarnation = cluster.incarnations[node]!
        members[node] = GroupMember(id: NodeID(node), settings: settings)
        log("start \(node)#\(incarnation)")
        group(node, .start(incarnation: incarnation, persisted: persisted[node] ?? PersistentState(), now: now))
        for letter in ["a", "b"] {
            let client = cluster.client(node, letter)
            clients.append(Client(node: node, id: client.id, name: "\(node)\(letter)"))
        }
    }

    /// The node stops in both layers: its clients are gone, and so is what it believed it held.
    mutating func stop(_ node: UInt32) {
        guard members[node] != nil else { return }
        log("stop \(node)")
        members[node] = nil
        cluster.crash(node)
        for index in clients.indices where clients[index].node == node { clients[index].gone = true }
    }

    mutating func group(_ node: UInt32, _ input: GroupInput) {
        guard members[node] != nil else { return }
        var effects: [GroupEffect] = []
        members[node]!.handle(input, into: &effects)
        let me = members[node]!.me
        for effect in effects {
            switch effect {
            case .send(let message, let to):
                let target = to.rawValue
                guard component[node, default: 0] == component[target, default: 0], !random.percent(5) else { continue }
                push(now + UInt64(1 + random.below(5)) * Self.ms, .deliver(message, from: me, to: target))
                if random.percent(3) {
                    push(now + UInt64(1 + random.below(8)) * Self.ms, .deliver(message, from: me, to: target))
                }
            case .persist(let state):
                persisted[node] = state
            case .viewInstalled(let view, let primary):
                log("\(node) installs \(view)\(primary ? " primary" : "")")
                viewsInstalled += 1
                cluster.withNode(node) { $0.handle(.viewInstalled(view, primary: primary)) }
            case .fence(let target):
                log("\(node) fences \(target)")
                push(now + 10 * Self.ms, .fence(by: me, target: target.rawValue))
            case .fenceFailed, .deliver, .barrierCompleted, .barrierAborted, .groupEvent, .multicastToProvider:
                break
            }
        }
    }

    mutating func push(_ at: UInt64, _ event: Event) {
        order += 1
        events.append((at, order, event))
    }

    /// Group services' messages and fences due by `now`, in time order.
    mutating func runGroupEvents() {
        func earlier(_ a: Int, _ b: Int) -> Bool { (events[a].at, events[a].order) < (events[b].at, events[b].order) }
        while let next = events.indices.min(by: earlier), events[next].at <= now {
            let event = events.remove(at: next).event
            switch event {
            case .deliver(let message, let from, let to):
                guard component[from.node.rawValue, default: 0] == component[to, default: 0] else { continue }
                group(to, .received(message, from: from))
            case .fence(let fencer, let target):
                guard members[fencer.node.rawValue]?.me == fencer else { continue }
                // The fence stops its target: a power switch.
                if members[target] != nil { fences += 1 }
                stop(target)
                group(fencer.node.rawValue, .fenced(NodeID(target), ok: true))
            }
        }
    }

    // MARK: The run

    mutating func go() throws {
        var restartAt: [UInt32: UInt64] = [:]
        let faultsUntil: UInt64 = 5_000 * Self.ms
        for step in 0..<1_200 {
            now += 5 * Self.ms
            runGroupEvents()
            for node in members.keys.sorted() { group(node, .tick(now: now)) }
            cluster.tick(by: 5 * Self.ms)
            if now < faultsUntil && random.percent(1) { fault(&restartAt) }
            for (node, at) in restartAt where at <= now && members[node] == nil {
                restartAt[node] = nil
                start(node)
            }
            if now >= faultsUntil && !component.values.allSatisfy({ $0 == 0 }) { heal() }
            for _ in 0..<random.below(3) { clientStep() }
            _ = cluster.run(limit: random.below(40))
            try read()
            if cluster.endless { throw Failure(description: "seed \(seed) step \(step): the messages never stop") }
        }
        // The end: whole again, every stopped node back, the views settled; every holder lets go, and every
        // request is answered.
        heal()
        for node in restartAt.keys.sorted() where members[node] == nil { start(node) }
        for _ in 0..<400 {
            now += 5 * Self.ms
            runGroupEvents()
            for node in members.keys.sorted() { group(node, .tick(now: now)) }
            cluster.tick(by: 5 * Self.ms)
            for index in clients.indices where !clients[index].gone && clients[index].waiting == nil {
                if clients[index].lock?.mode != nil { release(index) }
            }
            _ = cluster.run()
            try read()
        }
        let unanswered = clients.filter { !$0.gone && $0.waiting != nil }.map(\.name)
        if !unanswered.isEmpty {
            throw Failure(description: "seed \(seed): requests never answered: \(unanswered)")
        }
    }

    /// A node crashes, or a partition cuts one or two nodes off (group services fence them), or the partitions
    /// heal. A stopped node comes back a while later, as a new life.
    mutating func fault(_ restartAt: inout [UInt32: UInt64]) {
        let live = members.keys.sorted()
        let quorum = settings.quorumVotes
        if !component.values.allSatisfy({ $0 == 0 }) {
            heal()
        } else if live.count > quorum && random.bool() {
            let node = random.element(live)
            log("crash \(node)")
            stop(node)
            restartAt[node] = now + UInt64(200 + random.below(800)) * Self.ms
        } else if live.count > quorum {
            let cut = Array(live.shuffled(using: &random).prefix(min(live.count - quorum, 1 + random.below(2))))
            log("partition \(cut) from the others")
            for node in cut {
                component[node] = 1
                restartAt[node] = now + UInt64(600 + random.below(800)) * Self.ms
            }
            cluster.paused = Set(
                cluster.incarnations.keys.flatMap { from in
                    cluster.incarnations.keys.filter { component[$0, default: 0] != component[from, default: 0] }.map {
                        ClusterHarness.Link(from: from, to: $0)
                    }
                })
        }
    }

    mutating func heal() {
        log("heal")
        component = [:]
        cluster.paused = []
    }

    // MARK: Clients

    mutating func clientStep() {
        let ready = clients.indices.filter { !clients[$0].gone && clients[$0].waiting == nil }
        guard !ready.isEmpty else { return }
        let index = random.element(ready)
        if clients[index].lock?.mode != nil {
            release(index)
        } else if clients[index].lock == nil {
            let tag = clients[index].nextTag
            clients[index].nextTag += 1
            let target = (node: clients[index].node, id: clients[index].id)
            let name = random.element(names)
            let mode = random.element([LockMode.nl, .cr, .pr, .pw, .ex, .ex])
            let flags: LockFlags = random.percent(30) ? .noQueue : []
            log("\(clients[index].name) asks \(mode) of \(name)")
            clients[index].lock = (name, nil, nil)
            clients[index].waiting = (tag, false)
            cluster.send(target, ServiceHarness.lock(tag, name, mode, flags))
        }
    }

    /// The client unlocks what it holds: it stops relying on the lock as it asks.
    mutating func release(_ index: Int) {
        guard let lock = clients[index].lock, let id = lock.id else { return }
        let tag = clients[index].nextTag
        clients[index].nextTag += 1
        log("\(clients[index].name) unlocks \(lock.name)")
        clients[index].lock = nil
        clients[index].waiting = (tag, true)
        cluster.send((clients[index].node, clients[index].id), ServiceHarness.unlock(tag, id))
    }

    /// The client frames since the last read: each client learns its answers; a grant is checked against what every
    /// other client believes it holds.
    mutating func read() throws {
        let frames = cluster.framesSeen
        defer { framesRead = frames.count }
        for (name, message) in frames[framesRead...] {
            guard let index = clients.firstIndex(where: { $0.name == name && !$0.gone }) else { continue }
            switch message {
            case .ok(let tag, let lock):
                // Queued: it waits for its grant.
                guard clients[index].waiting?.tag == tag, clients[index].lock != nil else { continue }
                clients[index].lock!.id = lock
            case .error(let tag, let status, _):
                guard clients[index].waiting?.tag == tag else { continue }
                throw Failure(description: "seed \(seed): \(name) got \(status.name) for its request \(tag)")
            case .completion(let c):
                if c.tag != 0 && clients[index].waiting?.tag != c.tag { continue }
                if clients[index].waiting?.unlock == true {
                    if c.status == .unlocked { clients[index].waiting = nil }
                    continue
                }
                guard clients[index].lock != nil else { continue }
                if c.status == .granted, let mode = c.mode {
                    clients[index].lock!.id = c.lock
                    clients[index].lock!.mode = mode
                    clients[index].waiting = nil
                    grants += 1
                    try checkExclusion(index)
                } else if c.mode == nil {
                    // Refused (EAGAIN for NOQUEUE): nothing held.
                    clients[index].lock = nil
                    clients[index].waiting = nil
                }
            default:
                break
            }
        }
    }

    func checkExclusion(_ index: Int) throws {
        guard let held = clients[index].lock, let mode = held.mode else { return }
        for other in clients.indices where other != index && !clients[other].gone {
            guard let theirs = clients[other].lock, theirs.name == held.name, let their = theirs.mode else { continue }
            if !mode.isCompatible(with: their) {
                throw Failure(
                    description: "seed \(seed): \(clients[index].name) holds \(mode) and \(clients[other].name) "
                        + "holds \(their) of \(held.name)")
            }
        }
    }
}
