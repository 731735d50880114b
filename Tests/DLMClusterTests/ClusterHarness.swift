import DLMWire
import Foundation
import GroupServices

@testable import DLMCluster
@testable import DLMCore

/// Several nodes' `LockService`s in one process, mastering across nodes, with the peer messages carried in order
/// per pair of nodes. Clients are named "1a" (client a of node 1); `run()` carries every message until none is
/// left and returns the frames that clients got meanwhile, one line each, as ServiceHarness writes them.
struct ClusterHarness {
    var nodes: [UInt32: ServiceHarness] = [:]
    /// Messages in flight, per (from, to), oldest first.
    var links: [Link: [PeerMessage]] = [:]
    /// How many peer messages were carried.
    var carried = 0
    /// Every completion a client got, by client name.
    var completions: [String: [CompletionMessage]] = [:]
    /// The last store generation each node wrote (its output's `commit`).
    var written: [UInt32: UInt64] = [:]
    /// What each node's store holds: the changes it wrote, once committed (kept across a crash).
    var storeContents: [UInt32: ModelStore] = [:]
    /// Changes each node wrote that its store has not committed yet, oldest first: lost if it crashes first.
    var uncommitted: [UInt32: [[StoreChange]]] = [:]
    /// The frames `run` saw, for a caller that models the clients.
    var framesSeen: [(client: String, message: ServerMessage)] = []
    /// Links whose messages `run` does not carry for now (they stay in flight, in order).
    var paused: Set<Link> = []
    /// Nodes whose output asked for a slice of work done in slices (recovery, an exit, a purge): `run` gives it
    /// between two messages, as the shell does between two turns of its event loop.
    var wantsSlice: Set<UInt32> = []
    /// Nodes that `run` gives no slice (they wait, as `paused` messages do) until the test removes them; and a node
    /// that joins them once it gives the notice `message`.
    var slicesWithheld: Set<UInt32> = []
    var withholdSlicesAfter: (node: UInt32, message: String)?
    /// The longest list a recovery message that `run` carried held.
    var longestRecoveryList = 0
    /// The directory registrations (`recoverMasters`) `run` carried, by lockspace.
    var registrationsCarried: [String: Int] = [:]
    /// The recoveries each node's output announced, in order.
    var recoveries: [UInt32: [RecoveryEvent]] = [:]
    /// Every notice a node gave (its log lines), in order.
    var notices: [(node: UInt32, message: String)] = []
    /// The client name under which `framesSeen` notes, in order with the frames, that a master freed a resource
    /// with its value block (its replica's removal went out): "!freed NAME".
    static let freedMark = "!freed "
    /// The notice `run` notes for each slice it gives a node, in order with the node's notices.
    static let sliceMark = "!slice"

    /// The removals among a node's outgoing messages, as marks in a stream of frames.
    static func removals(_ messages: [(to: UInt32, message: PeerMessage)]) -> [(String, ServerMessage)] {
        var marks: [(String, ServerMessage)] = []
        for case (_, .valueReplicas(_, _, _, let replicas)) in messages {
            for replica in replicas where replica.removed {
                marks.append((freedMark + replica.name.displayName, .pong(tag: 0)))
            }
        }
        return marks
    }

    struct Link: Hashable, Comparable {
        var from: UInt32
        var to: UInt32
        static func < (a: Link, b: Link) -> Bool { (a.from, a.to) < (b.from, b.to) }
    }

    /// Each node's life (a restart is a new one).
    var incarnations: [UInt32: UInt64] = [:]
    var viewNumber: UInt64 = 0
    let stores: Bool
    /// The simulated clock, and how long an idle resource stays known (ServiceConfiguration.tossDelay).
    var now: Instant = 0
    let tossDelay: UInt64
    let engine: EngineConfig
    /// How much of a recovery phase a node does per slice (ServiceConfiguration.recoverySlice).
    let recoverySlice: Int
    /// `maxLocksPerConnection` and `maxLocksPerUser` of every node; nil: the defaults.
    let lockLimits: (perConnection: Int, perUser: Int)?
    /// Whether each new life of a node joins lockspace "ls" in its first recovery run, as if a client had opened
    /// it: its group is every node, and its directory spread over them all (tests of mastering); else a node joins
    /// when a client first opens it (tests of groups).
    let everyNodeUsesLockspace: Bool

    /// `stores`: whether each node has a store whose commits replies wait for (the shell reports commits:
    /// `commit`).
    init(
        nodes count: UInt32, stores: Bool = false, tossDelay: UInt64 = 10_000_000_000, engine: EngineConfig = .init(),
        recoverySlice: Int = 4_096,
        lockLimits: (perConnection: Int, perUser: Int)? = nil, everyNodeUsesLockspace: Bool = true,
        installsView: Bool = true
    ) {
        self.lockLimits = lockLimits
        self.everyNodeUsesLockspace = everyNodeUsesLockspace
        self.stores = stores
        self.tossDelay = tossDelay
        self.engine = engine
        self.recoverySlice = recoverySlice
        for node in 1...count { start(node) }
        // (Without: a test's own group services decide the views.)
        if installsView { installView() }
    }

    /// `body` on a live node's harness, in place. (`nodes[node]!.mutatingCall()` copied the whole harness, a
    /// copy that grows with the node's state, at every message: most of the time of a run with many locks.)
    @discardableResult
    mutating func withNode<R>(_ node: UInt32, _ body: (inout ServiceHarness) -> R) -> R {
        body(&nodes.values[nodes.index(forKey: node)!])
    }

    /// Starts a node's new life (no view yet).
    mutating func start(_ node: UInt32) {
        let incarnation = (incarnations[node] ?? 0) + 1
        incarnations[node] = incarnation
        var configuration = ServiceConfiguration(
            nodeID: node, incarnation: incarnation, engine: engine, repliesWaitForCommits: stores, hasStore: stores,
            mastersAcrossNodes: true, tossDelay: tossDelay)
        configuration.recoverySlice = recoverySlice
        if let lockLimits {
            configuration.maxLocksPerConnection = lockLimits.perConnection
            configuration.maxLocksPerUser = lockLimits.perUser
        }
        nodes[node] = ServiceHarness(configuration: configuration)
        if everyNodeUsesLockspace { nodes[node]!.service.mastering.joining[Array("ls".utf8)] = 0 }
        written[node] = nil
    }

    /// Starts a node's new life with what its store holds, as dlmd does: it keeps its previous life's persistent
    /// locks to offer them at a restart of the whole cluster.
    mutating func restartFromStore(_ node: UInt32) {
        start(node)
        let store = storeContents[node] ?? ModelStore()
        _ = nodes[node]!.service.keepPreviousLife(
            recoveredView: store.recoveredView, resources: store.records, lengths: store.lockspaces)
    }

    /// The node stops at once: what it sent and was sent is lost, its clients with it.
    /// Time passes by `nanoseconds`: every node ticks.
    mutating func tick(by nanoseconds: UInt64) {
        now += nanoseconds
        let now = now
        for node in nodes.keys.sorted() { withNode(node) { $0.handle(.tick(now: now)) } }
    }

    mutating func crash(_ node: UInt32) {
        nodes[node] = nil
        wantsSlice.remove(node)
        written[node] = nil
        uncommitted[node] = nil
        for link in links.keys where link.from == node || link.to == node { links[link] = nil }
    }

    /// Group services agree on a view of the live nodes: each gets it (in `order`, if given).
    mutating func installView(order: [UInt32]? = nil) {
        viewNumber += 1
        let members = nodes.keys.sorted().map { Member(node: NodeID($0), incarnation: incarnations[$0]!) }
        let view = View(id: ViewID(number: viewNumber, coordinator: NodeID(members[0].node.rawValue)), members: members)
        for node in order ?? nodes.keys.sorted() where nodes.keys.contains(node) {
            withNode(node) { $0.handle(.viewInstalled(view, primary: true)) }
        }
    }

    /// A client of `node` that has said HELLO and opened lockspace "ls" (created with `mode` if it is the node's
    /// first; its replies dropped).
    mutating func client(
        _ node: UInt32, _ name: String, credentials: ClientCredentials? = nil,
        mode: UInt16 = LockspaceAccess.defaultMode
    ) -> (node: UInt32, id: ConnectionID) {
        // Not ServiceHarness.connect, which drops every frame waiting: the frames for others stay in `framesSeen`.
        let id = withNode(node) { harness in
            let id = harness.service.connect(credentials: credentials)
            harness.names[id] = "\(node)\(name)"
            harness.send(id, .hello(Hello(pid: 100, clientName: name)))
            harness.send(id, ServiceHarness.open(1, mode: mode))
            return id
        }
        _ = run()
        return (node, id)
    }

    /// A client of `node` ("m") that takes NL of `name` first, so that `node` masters it.
    mutating func master(_ name: String, on node: UInt32) -> (node: UInt32, id: ConnectionID) {
        let master = client(node, "m")
        send(master, ServiceHarness.lock(2, name, .nl))
        _ = run()
        return master
    }

    /// `node`'s store commits everything written so far; then every message is carried.
    mutating func commit(_ node: UInt32) -> [String] {
        let lines = run()
        commitStore(node)
        return lines + run()
    }

    /// The store changes of a node's output, written and not yet committed.
    mutating func noteWritten(_ node: UInt32, _ output: ServiceOutput) {
        guard let commit = output.commit else { return }
        written[node] = commit.generation
        uncommitted[node, default: []].append(commit.changes)
    }

    /// `node`'s store commits everything written so far, and its lock service hears of it.
    mutating func commitStore(_ node: UInt32) {
        guard let generation = written[node], nodes.keys.contains(node) else { return }
        for changes in uncommitted[node] ?? [] { storeContents[node, default: ModelStore()].apply(changes) }
        uncommitted[node] = nil
        withNode(node) { $0.handle(.committed(generation: generation)) }
    }

    mutating func send(_ client: (node: UInt32, id: ConnectionID), _ message: ClientMessage) {
        withNode(client.node) { $0.send(client.id, message) }
    }

    mutating func close(_ client: (node: UInt32, id: ConnectionID)) {
        withNode(client.node) { $0.handle(.closed(client.id)) }
    }

    /// Set when a `run` carried more than `messageLimit` messages without the traffic ending (a livelock).
    var endless = false
    var messageLimit = 200_000
    /// After how many messages of one `run` the links are carried in turn rather than the lowest first.
    static let fairAfter = 10_000
    let trace = ProcessInfo.processInfo.environment["DLM_MASTERING_TRACE"] != nil

    /// Carries every message (the lowest link first, each link in order) until there is none, or until the next
    /// message to carry is one `stop` names (it stays in flight); the client frames.
    mutating func run(until stop: ((Link, PeerMessage) -> Bool)? = nil, limit: Int? = nil) -> [String] {
        var lines: [String] = []
        var lastLink: Link?
        let start = carried
        var steps = 0
        var slices = 0
        var nextCommit = Self.fairAfter
        while true {
            if carried - start + slices > messageLimit {
                endless = true
                return lines
            }
            // Past `fairAfter` messages, every store commits what it was given, and again after as many more, as a
            // real store does while the traffic goes on: otherwise requests going back and forth between two nodes
            // (asking a directory that names a master, which answers "not master" until its own lookup's answer
            // comes) went on for ever while that answer waited for its sender's commit (seed 536299 of the timeout
            // traffic).
            if carried - start >= nextCommit {
                nextCommit = carried - start + Self.fairAfter
                for node in uncommitted.keys.sorted() { commitStore(node) }
            }
            for node in nodes.keys.sorted() {
                let output = withNode(node) { $0.service.takeOutput() }
                if trace { for n in output.notices { print("node \(node) notice: \(n)") } }
                notices.append(contentsOf: output.notices.map { (node, $0.message) })
                if let withhold = withholdSlicesAfter, withhold.node == node,
                    output.notices.contains(where: { $0.message == withhold.message })
                {
                    slicesWithheld.insert(node)
                }
                if output.wantsBulkSlice { wantsSlice.insert(node) }
                recoveries[node, default: []].append(contentsOf: output.recoveries)
                noteWritten(node, output)
                for (to, message) in withNode(node, { $0.takePeerMessages() }) where nodes.keys.contains(to) {
                    links[Link(from: node, to: to), default: []].append(message)
                }
                // (A removal is noted before the batch's frames: a frame of the same batch may come from a new
                // resource of that name.)
                framesSeen.append(contentsOf: Self.removals(output.peerMessages))
                let names = output.frames.isEmpty ? [:] : withNode(node) { $0.clientNames() }
                for (connection, message) in output.frames {
                    let name = names[connection] ?? "?"
                    if case .completion(let c) = message { completions[name, default: []].append(c) }
                    framesSeen.append((name, message))
                    lines.append("\(name): \(ServiceHarness.line(message))")
                }
                // A message to a node that is down is lost.
                for (to, message) in output.peerMessages where nodes.keys.contains(to) {
                    if trace { print("run: queued \(node) -> \(to): \(message)") }
                    links[Link(from: node, to: to), default: []].append(message)
                }
            }
            let ready = links.keys.filter { !(links[$0]?.isEmpty ?? true) && !paused.contains($0) }
            // The lowest link first (tests read their transcripts in that order); past `fairAfter` messages, each
            // link in turn, as a network carries them all at once: otherwise requests going back and forth between
            // some nodes, while they wait for an answer on another link, starved that link for ever (seed 264599
            // of the recovery traffic: the directory's answer to node 3 never went, and node 1 asked again and again).
            let link =
                carried - start < Self.fairAfter
                ? ready.min() : lastLink.flatMap { last in ready.filter { $0 > last }.min() } ?? ready.min()
            // A slice when no message is left to carry, and every other step otherwise (slices meet messages).
            if let node = wantsSlice.subtracting(slicesWithheld).min(), link == nil || steps % 2 == 0 {
                wantsSlice.remove(node)
                notices.append((node, Self.sliceMark))
                if trace { print("run: slice of node \(node)") }
                withNode(node) { $0.handle(.bulkSlice) }
                steps += 1
                slices += 1
                continue
            }
            guard let link else { return lines }
            if let stop, stop(link, links[link]![0]) { return lines }
            if let limit, carried - start >= limit { return lines }
            let message = links[link]!.removeFirst()
            lastLink = link
            carried += 1
            steps += 1
            switch message {
            case .recoverLocks(_, let list): longestRecoveryList = max(longestRecoveryList, list.count)
            case .recoverBindings(_, let list): longestRecoveryList = max(longestRecoveryList, list.count)
            case .recoverMasters(_, let list):
                longestRecoveryList = max(longestRecoveryList, list.count)
                for key in list { registrationsCarried[key.lockspace.displayName, default: 0] += 1 }
            default: break
            }
            if trace && carried - start < 40 { print("run: \(link.from) -> \(link.to): \(message)") }
            withNode(link.to) { $0.handle(.peer(from: link.from, message)) }
        }
    }

    /// Runs until the message next on one of `links` is one `isNext` names, then holds all of `links` back
    /// (`paused`): that message and every later one on them stay in flight until the test clears `paused`. A part
    /// of a recovery is held this way, to see what the other nodes do without it. Returns the run's client frames.
    @discardableResult
    mutating func hold(_ links: Link..., from isNext: @escaping (PeerMessage) -> Bool) -> [String] {
        let lines = run { link, message in links.contains(link) && isNext(message) }
        paused = Set(links)
        return lines
    }

    /// What each node still holds of resources no lock uses and of clients that went, one line per node that holds
    /// some (empty: nothing), once the toss delay passed with every message carried: a node keeps of a resource
    /// only what its orphans need.
    func leftoversOfIdleResources() -> [String] {
        var lines: [String] = []
        var inUse = Set<DirectoryKey>()
        var resourcesWithLocks: [UInt32: Int] = [:]
        for (node, harness) in nodes {
            let engine = harness.service.engine
            for info in engine.allLockspaces {
                for resource in engine.snapshotLockspace(info.id) where !resource.locks.isEmpty {
                    inUse.insert(DirectoryKey(lockspace: info.name, name: resource.path[0]))
                    resourcesWithLocks[node, default: 0] += 1
                }
            }
        }
        for (node, harness) in nodes.sorted(by: { $0.key < $1.key }) {
            let service = harness.service
            let mastering = service.mastering
            var left: [String] = []
            let engine = service.engine
            let resourcesWithLocks = resourcesWithLocks[node, default: 0]
            if engine.resourceCount != resourcesWithLocks {
                left.append("\(engine.resourceCount - resourcesWithLocks) resources without locks in the engine")
            }
            let directory = mastering.directory.compactMap { key, _ in inUse.contains(key) ? nil : key }
            if !directory.isEmpty { left.append("directory entries \(Self.describe(directory))") }
            let replicas = mastering.replicas.compactMap { key, _ in inUse.contains(key) ? nil : key }
            if !replicas.isEmpty { left.append("value-block replicas \(Self.describe(replicas))") }
            let cached = nodes.keys.flatMap { mastering.masters.keys(masteredBy: $0) }
                .filter { !inUse.contains($0) }
            if !cached.isEmpty { left.append("cached masters \(Self.describe(cached))") }
            let copies = mastering.copies
            if copies.copies.count != copies.free.count || !copies.byMaster.isEmpty || !copies.byOwner.isEmpty
                || !copies.exiting.isEmpty || copies.rebindingCount != 0 || !copies.mastersUsed.isEmpty
            {
                left.append(
                    "process copies: \(copies.copies.count - copies.free.count) live, \(copies.byMaster.count) bound, "
                        + "\(copies.byOwner.count) owners, \(copies.rebindingCount) rebinding")
            }
            if !mastering.removing.isEmpty { left.append("removals \(Self.describe(Array(mastering.removing)))") }
            if !mastering.awaitingLookup.isEmpty {
                left.append("requests awaiting lookups \(Self.describe(Array(mastering.awaitingLookup.keys)))")
            }
            if !mastering.peerRequestsAwaitingLookup.isEmpty {
                left.append(
                    "peer requests awaiting lookups \(Self.describe(Array(mastering.peerRequestsAwaitingLookup.keys)))")
            }
            if !mastering.pending.isEmpty { left.append("\(mastering.pending.count) pending remote operations") }
            if !mastering.heldMessages.isEmpty { left.append("\(mastering.heldMessages.count) held peer messages") }
            if !mastering.loopback.isEmpty { left.append("\(mastering.loopback.count) loopback messages") }
            if !mastering.purges.isEmpty { left.append("\(mastering.purges.count) purges") }
            if !service.forceUnlockReplies.isEmpty {
                left.append("\(service.forceUnlockReplies.count) force-unlock replies")
            }
            if !service.bulkReplies.isEmpty { left.append("\(service.bulkReplies.count) bulk replies") }
            if !mastering.rebuilt.isEmpty { left.append("\(mastering.rebuilt.count) rebuilt locks' holder ids") }
            let deadlocks = mastering.deadlocks
            if !deadlocks.decisions.isEmpty || !deadlocks.refusing.isEmpty || !deadlocks.deciding.isEmpty {
                left.append("deadlock decisions under way")
            }
            let owners = engine.ownerIndex.values.filter {
                $0 != orphanOwner && engine.owners[Int($0)].lockCount == 0
            }
            if !owners.isEmpty {
                left.append("engine owners without locks: \(owners.map { "\(engine.owners[Int($0)].id)" }.sorted())")
            }
            let queued = mastering.tossQueue.filter { !inUse.contains($0.key) }
            if !queued.isEmpty { left.append("toss queue \(Self.describe(queued.map(\.key)))") }
            if !left.isEmpty { lines.append("node \(node) still holds \(left.joined(separator: "; "))") }
        }
        return lines
    }

    /// Every client of every node goes, every message is carried and the toss delay passes (a few times: a drop
    /// may start another's delay); returns what the nodes still hold (`leftoversOfIdleResources`).
    mutating func leftoversOnceEveryClientWent() -> [String] {
        for node in nodes.keys.sorted() {
            withNode(node) { harness in
                let live = harness.service.slotsByOwner.map { ConnectionID(slot: $0.value, owner: $0.key) }
                for id in live.sorted(by: { $0.owner < $1.owner }) { harness.handle(.closed(id)) }
            }
        }
        for _ in 0..<4 {
            _ = run()
            tick(by: tossDelay + tossDelay / 2)
        }
        _ = run()
        return leftoversOfIdleResources()
    }

    static func describe(_ keys: [DirectoryKey]) -> String {
        let names = keys.map {
            String(decoding: $0.lockspace, as: UTF8.self) + "/" + String(decoding: $0.name, as: UTF8.self)
        }
        return names.sorted().joined(separator: ", ")
    }

    /// A resource name whose directory node is `node` among `count` members.
    static func name(directedTo node: UInt32, of count: UInt32, prefix: String = "r") -> String {
        name(directedTo: [(node, count)], prefix: prefix)
    }

    /// A resource name whose directory node is each `node` among its `count` members (the members 1 to `count`).
    static func name(directedTo placements: [(node: UInt32, count: UInt32)], prefix: String = "r") -> String {
        for i in 0... {
            let name = "\(prefix)\(i)"
            let hash = DirectoryKey(lockspace: Array("ls".utf8), name: Array(name.utf8)).directoryHash
            if placements.allSatisfy({ UInt32(hash % UInt64($0.count)) + 1 == $0.node }) { return name }
        }
        fatalError("unreachable")
    }
}
