import DLMCore
import DLMTestSupport
import DLMWire
import Testing

@testable import DLMCluster

/// Lockspace groups under churn: one client per node opens and releases lockspaces "a", "b" and "c" at random (each
/// first open a join of the lockspace's group, each release one that leaves it, when nothing of it is left on the
/// node), and takes and lets go of EX locks (NOQUEUE) on a few resources of each, while messages are carried a few
/// at a time, idle resources are dropped, and nodes crash and restart with views installed. After every step no
/// two clients believe they hold the same resource, and every grant's fencing token is above every earlier token of
/// that resource; at the end every request was answered. A group ends when its last member releases the lockspace,
/// and the tokens of a later group of that name still grow (every member keeps the floors the leavers reported).
/// DLM_CHURN_SEEDS sets how many seeds (default 300); DLM_MASTERING_SEED replays one.
@Suite struct LockspaceChurnTests {
    static var seeds: [UInt64] { randomSeeds(count: "DLM_CHURN_SEEDS", default: 300) }

    @Test func joinsAndLeavesKeepExclusionAndFencingTokens() {
        var leaves = 0
        var grants = 0
        for seed in Self.seeds {
            var run = ChurnRun(seed: seed)
            do {
                try run.go()
            } catch {
                Issue.record(
                    "\(error)\nreplay: DLM_MASTERING_SEED=\(seed) swift test --filter DLMClusterTests.LockspaceChurnTests"
                )
                return
            }
            leaves += run.leaves
            grants += run.grants
        }
        // The traffic did what it is for: groups were left, and locks granted.
        if Self.seeds.count >= 100 {
            #expect(leaves > Self.seeds.count && grants > 10 * Self.seeds.count, "\(leaves) leaves, \(grants) grants")
        }
    }

    /// Seeds outside the default range that found a fault. 22424: a master dropped an idle resource after its
    /// client had released the lockspace, and told the directory the token of an older queue entry (the released
    /// lockspace's floor was not consulted): the next master issued a token this one had issued. 261824: the same
    /// resource's REMOVE reached the directory after a new run had begun there (dropped as stale), and the old
    /// master's phase-0 report left out the floor of the lockspace it had released: the next master issued its
    /// last token again (the report now carries the floors of released lockspaces too).
    @Test(arguments: [22424, 261824] as [UInt64])
    func seedThatOnceFailed(_ seed: UInt64) throws {
        var run = ChurnRun(seed: seed)
        try run.go()
    }
}

struct ChurnRun {
    struct Failure: Error, CustomStringConvertible {
        var description: String
    }

    enum Operation {
        case open(String)
        case release(String)
        case lock(String)
        case unlock
    }

    struct Client {
        var name: String
        var id: ConnectionID
        /// Lockspace ids by name.
        var lockspaces: [String: UInt32] = [:]
        /// The request it waits for (one at a time).
        var outstanding: (tag: UInt32, operation: Operation)?
        /// The locks it believes it holds: lock id to resource ("lockspace/name").
        var held: [UInt32: String] = [:]
    }

    static let lockspaces = ["a", "b", "c"]
    static let resources = ["r0", "r1", "r2", "r3"]

    let seed: UInt64
    var random: SplitMix64
    var cluster: ClusterHarness
    var clients: [UInt32: Client] = [:]
    var generation = 0
    var seenFrames = 0
    var nextTag: UInt32 = 1
    /// Who believes it holds each resource; the highest fencing token granted on it.
    var holders: [String: String] = [:]
    var lastToken: [String: UInt64] = [:]
    var step = 0
    var leaves = 0
    var grants = 0

    init(seed: UInt64) {
        self.seed = seed
        random = SplitMix64(seed: seed)
        let count = UInt32(3 + random.below(3))
        cluster = ClusterHarness(nodes: count, tossDelay: 1_000, everyNodeUsesLockspace: false)
        for node in 1...count { connect(node) }
    }

    mutating func connect(_ node: UInt32) {
        generation += 1
        let name = "\(node)c\(generation)"
        let id = cluster.nodes[node]!.service.connect(credentials: nil)
        cluster.nodes[node]!.names[id] = name
        cluster.send((node, id), .hello(Hello(pid: 100 + UInt32(generation), clientName: name)))
        clients[node] = Client(name: name, id: id)
    }

    mutating func go() throws {
        for _ in 0..<300 {
            step += 1
            switch random.below(100) {
            case 0..<45: _ = cluster.run(limit: 1 + random.below(20))
            case 45..<85: clientStep()
            case 85..<91: cluster.tick(by: 600)
            case 91..<96: crash()
            default: restart()
            }
            try absorb()
        }
        // Faults heal: every node is back, and everything in flight arrives.
        for node in cluster.incarnations.keys.sorted() where cluster.nodes[node] == nil {
            cluster.start(node)
            connect(node)
        }
        cluster.installView()
        for _ in 0..<4 {
            _ = cluster.run()
            cluster.tick(by: 600)
        }
        _ = cluster.run()
        try absorb()
        if cluster.endless { throw Failure(description: "seed \(seed): the traffic never ended") }
        for client in clients.values {
            if let outstanding = client.outstanding {
                throw Failure(description: "seed \(seed): \(client.name)'s request \(outstanding) was never answered")
            }
        }
        // Every client goes; idle past the toss delay, no node keeps anything of a resource or a client.
        let left = cluster.leftoversOnceEveryClientWent()
        if !left.isEmpty { throw Failure(description: "seed \(seed): idle, \(left.joined(separator: "; "))") }
    }

    mutating func clientStep() {
        let idle = clients.filter { $0.value.outstanding == nil && cluster.nodes[$0.key] != nil }.keys.sorted()
        guard !idle.isEmpty else { return }
        let node = random.element(idle)
        let client = clients[node]!
        let tag = nextTag
        nextTag += 1
        let closed = Self.lockspaces.filter { client.lockspaces[$0] == nil }
        let open = Self.lockspaces.filter { client.lockspaces[$0] != nil }
        switch random.below(10) {
        case 0..<2 where !closed.isEmpty:
            let name = random.element(closed)
            clients[node]!.outstanding = (tag, .open(name))
            cluster.send(
                (node, client.id), .openLockspace(tag: tag, name: Array(name.utf8), valueBlockLength: 0, create: true))
        case 2..<4 where !open.isEmpty:
            let name = random.element(open)
            clients[node]!.outstanding = (tag, .release(name))
            cluster.send(
                (node, client.id), .releaseLockspace(tag: tag, lockspace: client.lockspaces[name]!, force: false))
        case 4..<7 where !client.held.isEmpty:
            let (lock, resource) = random.element(client.held.sorted { $0.key < $1.key })
            // (From now on the client no longer relies on it.)
            clients[node]!.held[lock] = nil
            if holders[resource] == client.name { holders[resource] = nil }
            clients[node]!.outstanding = (tag, .unlock)
            cluster.send((node, client.id), .unlock(UnlockMessage(tag: tag, lock: lock, flags: [])))
        default:
            guard !open.isEmpty else { return }
            let name = random.element(open)
            let resource = random.element(Self.resources)
            guard !client.held.values.contains("\(name)/\(resource)") else { return }
            clients[node]!.outstanding = (tag, .lock("\(name)/\(resource)"))
            cluster.send(
                (node, client.id),
                .lock(
                    LockMessage(
                        tag: tag, lockspace: client.lockspaces[name]!, flags: .noQueue, mode: .ex,
                        name: Array(resource.utf8))))
        }
    }

    /// A node dies (never the last one); the others install a view without it.
    mutating func crash() {
        let live = cluster.nodes.keys.sorted()
        guard live.count > 2 else { return }
        let node = random.element(live)
        for (resource, holder) in holders where holder == clients[node]?.name { holders[resource] = nil }
        clients[node] = nil
        cluster.crash(node)
        cluster.installView()
    }

    mutating func restart() {
        let down = cluster.incarnations.keys.filter { cluster.nodes[$0] == nil }.sorted()
        guard !down.isEmpty else { return }
        let node = random.element(down)
        cluster.start(node)
        connect(node)
        cluster.installView()
    }

    /// The frames the clients got since the last call, checked.
    mutating func absorb() throws {
        let frames = cluster.framesSeen[seenFrames...]
        seenFrames = cluster.framesSeen.count
        for (name, message) in frames {
            guard let node = clients.first(where: { $0.value.name == name })?.key else { continue }
            try apply(message, to: node)
        }
        leaves = cluster.notices.filter { $0.message == "left lockspaces" }.count
    }

    mutating func apply(_ message: ServerMessage, to node: UInt32) throws {
        let client = clients[node]!
        func answered(_ tag: UInt32) -> Operation? {
            guard let outstanding = client.outstanding, outstanding.tag == tag else { return nil }
            clients[node]!.outstanding = nil
            return outstanding.operation
        }
        switch message {
        case .lockspace(let tag, let lockspace, _, _):
            if case .open(let name) = answered(tag) { clients[node]!.lockspaces[name] = lockspace }
        case .ok(let tag, _):
            if case .release(let name) = answered(tag) { clients[node]!.lockspaces[name] = nil }
        case .error(let tag, _, _):
            _ = answered(tag)
        case .completion(let completion):
            guard case .lock(let resource) = answered(completion.tag), completion.status == .granted else { return }
            if let other = holders[resource] {
                throw Failure(
                    description: "seed \(seed) step \(step): \(client.name) was granted EX on \(resource), which "
                        + "\(other) holds")
            }
            let token = completion.fencingToken
            if token <= lastToken[resource, default: 0] {
                throw Failure(
                    description: "seed \(seed) step \(step): \(client.name)'s EX on \(resource) has fencing token "
                        + "\(token), not above \(lastToken[resource]!)")
            }
            lastToken[resource] = token
            holders[resource] = client.name
            clients[node]!.held[completion.lock] = resource
            grants += 1
        default:
            break
        }
    }
}
