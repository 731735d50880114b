import DLMClient
import DLMCore
import DLMTestSupport
import Foundation
import Testing

/// Clients on every node of a real 3-node cluster (two through the Swift client, one C program through the
/// libdlm-compatible library, Tests/CDLMTests/holds.c) lock shared names while one node at a time is killed with
/// `kill -9` and restarted, several rounds (in a third of them, killed again as soon as the others take it back in);
/// an independent checker over every hold the clients recorded finds no two incompatible holds at once (the
/// exclusion a holder relies on, across deaths and recoveries), and every client keeps getting its locks (none is lost or left waiting for ever). Every hold is timed with
/// CLOCK_MONOTONIC, the one clock the Swift and the C clients share.
@Suite(.serialized) struct KillRoundsTests {
    /// One hold as its client saw it: from the grant's reply to just before the unlock was sent.
    struct Hold: Sendable {
        var name: String
        var mode: LockMode
        var client: Int
        var node: Int
        /// CLOCK_MONOTONIC nanoseconds.
        var start: UInt64
        var end: UInt64
    }

    /// Every hold, and waiters for the clients' progress.
    actor Ledger {
        private(set) var holds: [Hold] = []
        private(set) var completed: [Int: Int] = [:]
        private var waiters: [UUID: (counts: [Int: Int], continuation: CheckedContinuation<Bool, Never>)] = [:]

        func record(_ hold: Hold) {
            holds.append(hold)
            completed[hold.client, default: 0] += 1
            resumeWaiters()
        }

        private func reached(_ counts: [Int: Int]) -> Bool {
            counts.allSatisfy { completed[$0.key, default: 0] >= $0.value }
        }

        /// Returns true once every client of `counts` has recorded at least its count of holds in all, false if
        /// `give(up:)` comes first.
        func wait(for counts: [Int: Int], id: UUID) async -> Bool {
            if reached(counts) { return true }
            return await withCheckedContinuation { waiters[id] = (counts, $0) }
        }

        func give(up id: UUID) { waiters.removeValue(forKey: id)?.continuation.resume(returning: false) }

        /// For each of `clients`: its count of holds so far plus `more`.
        func counts(_ clients: [Int], plus more: Int) -> [Int: Int] {
            Dictionary(uniqueKeysWithValues: clients.map { ($0, completed[$0, default: 0] + more) })
        }

        private func resumeWaiters() {
            for (id, waiter) in waiters where reached(waiter.counts) {
                waiters[id] = nil
                waiter.continuation.resume(returning: true)
            }
        }

        /// Pairs of holds of one name whose times overlap in incompatible modes.
        func overlaps() -> [(Hold, Hold)] {
            var found: [(Hold, Hold)] = []
            for holds in Dictionary(grouping: holds, by: \.name).values {
                let sorted = holds.sorted { $0.start < $1.start }
                for (index, hold) in sorted.enumerated() {
                    for later in sorted[(index + 1)...] {
                        if later.start >= hold.end { break }
                        if !hold.mode.isCompatible(with: later.mode) { found.append((hold, later)) }
                    }
                }
            }
            return found
        }
    }

    static let names = ["alpha", "beta", "gamma", "delta"]

    /// CLOCK_MONOTONIC in nanoseconds (what holds.c reads too).
    static func monotonic() -> UInt64 {
        var now = timespec()
        clock_gettime(CLOCK_MONOTONIC, &now)
        return UInt64(now.tv_sec) * 1_000_000_000 + UInt64(now.tv_nsec)
    }

    static let origin = monotonic()

    static func milliseconds(_ nanoseconds: UInt64) -> Int { Int((Int64(nanoseconds) - Int64(origin)) / 1_000_000) }

    static func describe(_ hold: Hold) -> String {
        "client \(hold.client) on node \(hold.node) \(hold.mode) \(milliseconds(hold.start))-\(milliseconds(hold.end)) ms"
    }

    /// A client's loop on one connection to `node`: lock a random name in EX or PR, hold it a moment, unlock;
    /// until the connection fails (its node died) or the test ends.
    static func client(
        _ id: Int, node: Int, socket: String, seed: UInt64, ledger: Ledger, stop: Flag
    ) async {
        var random = SplitMix64(seed: seed)
        guard let connection = try? await DLMConnection.connect(socketPath: socket),
            let space = try? await connection.openLockspace("rounds")
        else { return }
        defer { Task { await connection.close() } }
        while !stop.isSet {
            let name = names[random.below(names.count)]
            let mode: LockMode = random.percent(60) ? .ex : .pr
            let lock: DLMLock
            do { lock = try await space.lock(name, mode: mode) } catch { return }
            let start = monotonic()
            try? await Task.sleep(for: .milliseconds(random.below(4)))  // the work done under the lock
            // The holder lets go when it asks for the unlock (it relies on the lock no longer): if its node dies
            // meanwhile, the unlock may have reached the master or not; either way the hold ended here.
            let end = monotonic()
            let unlocked = (try? await lock.unlock()) != nil
            await ledger.record(Hold(name: name, mode: mode, client: id, node: node, start: start, end: end))
            if !unlocked { return }
        }
    }

    /// The C client, Tests/CDLMTests/holds.c, compiled once.
    static let cProgram = CPrograms.compile("holds")

    /// A running holds.c on `socket`: its "hold" lines go to the ledger as client `id`; `stop()` asks it to end
    /// (a line on its standard input) and waits; it ends by itself when its dlmd dies.
    final class CClient: @unchecked Sendable {
        let process = Process()
        private let input = Pipe()
        private let exited = DispatchSemaphore(value: 0)

        init(_ id: Int, node: Int, socket: String, seed: UInt64, ledger: Ledger) throws {
            process.executableURL = URL(fileURLWithPath: try cProgram.get())
            process.arguments = [String(seed)]
            process.environment = ["DLM_SOCKET": socket]
            let output = Pipe()
            process.standardOutput = output
            process.standardInput = input
            process.terminationHandler = { [exited] _ in exited.signal() }
            try process.run()
            let handle = output.fileHandleForReading
            Thread.detachNewThread {
                var pending = Data()
                while true {
                    let chunk = handle.availableData
                    if chunk.isEmpty { break }
                    pending.append(chunk)
                    while let newline = pending.firstIndex(of: UInt8(ascii: "\n")) {
                        let line = String(decoding: pending[pending.startIndex..<newline], as: UTF8.self)
                        pending = Data(pending[pending.index(after: newline)...])
                        let fields = line.split(separator: " ")
                        guard fields.count == 5, fields[0] == "hold", let start = UInt64(fields[3]),
                            let end = UInt64(fields[4])
                        else { continue }
                        let hold = Hold(
                            name: String(fields[1]), mode: fields[2] == "EX" ? .ex : .pr, client: id, node: node,
                            start: start, end: end)
                        // Recorded in the order read: one task per line would let them overtake each other.
                        let semaphore = DispatchSemaphore(value: 0)
                        Task {
                            await ledger.record(hold)
                            semaphore.signal()
                        }
                        semaphore.wait()
                    }
                }
            }
        }

        /// Asks it to end and waits for its exit (a hang detector kills it after 60 s: a client that never gets
        /// the lock it waits for).
        func stop() throws {
            signal(SIGPIPE, SIG_IGN)  // it may end between the check and the write
            if process.isRunning { try? input.fileHandleForWriting.write(contentsOf: Data("stop\n".utf8)) }
            guard exited.wait(timeout: .now() + 60) == .success else {
                process.terminate()
                throw SupportError("a C client did not end within 60 s of being asked to (a lock it waits for?)")
            }
        }
    }

    final class Flag: @unchecked Sendable {
        private let lock = NSLock()
        private var value = false
        var isSet: Bool { lock.withLock { value } }
        func set() { lock.withLock { value = true } }
    }

    /// Waits on a thread of its own for `node` to install a primary view of `count` members (the test's tasks
    /// keep the cooperative threads).
    static func waitForPrimaryView(_ cluster: TestCluster, at node: Int, members count: Int) async throws {
        let log = cluster.log(node)
        try await withCheckedThrowingContinuation { (continuation: CheckedContinuation<Void, Error>) in
            Thread.detachNewThread {
                do {
                    try log.wait(for: "a primary view of \(count) at node \(node)", timeout: 60) { line in
                        guard line.hasSuffix(" primary"), let range = line.range(of: " members ") else {
                            return false
                        }
                        let members = line[range.upperBound...].split(separator: " ").first ?? ""
                        return members.split(separator: ",").count == count
                    }
                    continuation.resume()
                } catch { continuation.resume(throwing: error) }
            }
        }
    }

    /// Waits until each of `clients` has recorded `more` holds beyond what it has now (a hang detector ends the
    /// wait after 60 s).
    static func waitForProgress(_ ledger: Ledger, clients: [Int], more: Int, what: String) async throws {
        let counts = await ledger.counts(clients, plus: more)
        let id = UUID()
        let detector = Task {
            try await Task.sleep(for: .seconds(60))
            await ledger.give(up: id)
        }
        let reached = await ledger.wait(for: counts, id: id)
        detector.cancel()
        if !reached {
            let now = await ledger.counts(clients, plus: 0)
            throw SupportError("no progress \(what) within 60 s: holds per client \(now), wanted \(counts)")
        }
    }

    @Test func killAndRestartRounds() async throws {
        let cluster = try TestCluster(nodes: Settings.current.nodes)
        defer { cluster.stopAll() }
        try cluster.startAll()
        for node in 1...Settings.current.nodes {
            try await Self.waitForPrimaryView(cluster, at: node, members: Settings.current.nodes)
        }
        await Self.rounds(cluster, Settings.current, kill: { _ = cluster.kill($0) }, start: { try cluster.start($0) })
    }

    /// The same rounds with the corosync provider: three nodes in network namespaces with a corosync each
    /// (`ProviderTests`). A victim's node fails (its dlmd and its corosync killed), or, in a third of the rounds,
    /// its dlmd alone is killed (a node failure for the others too: they fence it). `make test` runs three rounds,
    /// `make soak PROVIDER=corosync` as many as asked.
    @Test(.enabled(if: CorosyncTests.canRun, "skipped: needs root, ip netns and corosync"))
    func killAndRestartRoundsOnCorosync() async throws {
        var settings = Settings.current(defaultRounds: 3)
        settings.nodes = 3
        try await ProviderTests.run(.corosync) { nodes in
            var dlmdOnly = SplitMix64(seed: settings.seed &+ 3)
            var corosyncDown = Set<Int>()
            await Self.rounds(
                nodes.cluster, settings,
                kill: { node in
                    if dlmdOnly.below(3) == 0 {
                        _ = nodes.cluster.kill(node)
                    } else {
                        nodes.kill(node)
                        corosyncDown.insert(node)
                    }
                },
                start: { node in
                    if corosyncDown.remove(node) != nil { try nodes.ring!.start(node) }
                    try nodes.cluster.start(node)
                })
        }
    }

    /// `make test` runs ten rounds of seed 2026 on three nodes; `make soak` as many as asked (DLM_KILL_ROUNDS), of
    /// other victims (DLM_KILL_SEED), on as many nodes (DLM_KILL_NODES, at least 3).
    struct Settings {
        var rounds = 10
        var seed: UInt64 = 2026
        var nodes = 3

        static var current: Settings { current(defaultRounds: 10) }

        static func current(defaultRounds: Int) -> Settings {
            let environment = ProcessInfo.processInfo.environment
            var settings = Settings(rounds: defaultRounds)
            if let rounds = environment["DLM_KILL_ROUNDS"].flatMap({ Int($0) }) { settings.rounds = max(1, rounds) }
            if let seed = environment["DLM_KILL_SEED"].flatMap({ UInt64($0) }) { settings.seed = seed }
            if let nodes = environment["DLM_KILL_NODES"].flatMap({ Int($0) }) { settings.nodes = max(3, nodes) }
            return settings
        }
    }

    /// Runs the rounds on a cluster whose nodes are all in a primary view, killing and starting nodes with `kill`
    /// and `start`; a failure is recorded with every node's log saved.
    static func rounds(
        _ cluster: TestCluster, _ settings: Settings, kill: (Int) -> Void, start: (Int) throws -> Void
    ) async {
        do { try await playRounds(cluster, settings, kill: kill, start: start) } catch {
            let prefix = FileManager.default.temporaryDirectory.path + "/dlm-kill-rounds-node"
            cluster.saveLogs(to: prefix)
            Issue.record("\(error); every node's log is in \(prefix)N.log")
        }
    }

    private static func playRounds(
        _ cluster: TestCluster, _ settings: Settings, kill killNode: (Int) -> Void,
        start startNode: (Int) throws -> Void
    ) async throws {
        let all = Array(1...settings.nodes)
        var events: [String] = []
        let ledger = Ledger()
        let stop = Flag()
        var clientsOf: [Int: [Int]] = [:]
        var tasks: [Task<Void, Never>] = []
        var cClients: [CClient] = []
        var cClientIDs: Set<Int> = []
        defer { for client in cClients where client.process.isRunning { client.process.terminate() } }
        var nextClient = 0
        func startClients(on node: Int) throws {
            clientsOf[node] = []
            nextClient += 1
            clientsOf[node]!.append(nextClient)
            cClientIDs.insert(nextClient)
            cClients.append(
                try CClient(
                    nextClient, node: node, socket: cluster.socket(node), seed: UInt64(nextClient), ledger: ledger))
            for _ in 0..<2 {
                nextClient += 1
                let id = nextClient
                clientsOf[node]!.append(id)
                let socket = cluster.socket(node)
                tasks.append(
                    Task {
                        await Self.client(
                            id, node: node, socket: socket, seed: UInt64(id), ledger: ledger, stop: stop)
                    })
            }
        }
        for node in all { try startClients(on: node) }
        try await Self.waitForProgress(ledger, clients: clientsOf.values.flatMap { $0 }, more: 5, what: "at start")
        let seed = settings.seed
        var random = SplitMix64(seed: seed)
        // (Generators of their own: the victims of a seed on three nodes stay what they were before the second
        // kills and the second victims.)
        var again = SplitMix64(seed: seed &+ 1)
        var second = SplitMix64(seed: seed &+ 2)
        print(
            "kill rounds: \(settings.rounds) rounds on \(all.count) nodes, victims of seed \(seed) "
                + "(DLM_KILL_ROUNDS, DLM_KILL_NODES, DLM_KILL_SEED)")
        for round in 1...settings.rounds {
            var victims = [1 + random.below(all.count)]
            // On five nodes or more, two die at once in half of the rounds (the other three keep quorum).
            if all.count >= 5, second.below(2) == 0 {
                let others = all.filter { $0 != victims[0] }
                victims.append(others[second.below(others.count)])
            }
            let survivors = all.filter { !victims.contains($0) }
            let named = victims.map(String.init).joined(separator: " and ")
            // In a third of the rounds the restarted nodes die again as soon as the others take them in: in the
            // recovery that adds them, or just after.
            for kill in 1...(again.below(3) == 0 ? 2 : 1) {
                let which = kill == 1 ? "" : " again"
                if kill > 1 {
                    for node in survivors { try await Self.waitForPrimaryView(cluster, at: node, members: all.count) }
                }
                for victim in victims { killNode(victim) }
                events.append("node \(named) killed\(which) at \(milliseconds(monotonic())) ms")
                for node in survivors {
                    try await Self.waitForPrimaryView(cluster, at: node, members: survivors.count)
                }
                try await Self.waitForProgress(
                    ledger, clients: survivors.flatMap { clientsOf[$0]! }, more: 5,
                    what: "after killing node \(named)\(which) in round \(round)")
                for victim in victims { try startNode(victim) }
                events.append("node \(named) restarted\(which) at \(milliseconds(monotonic())) ms")
            }
            for node in all { try await Self.waitForPrimaryView(cluster, at: node, members: all.count) }
            for victim in victims { try startClients(on: victim) }
            try await Self.waitForProgress(
                ledger, clients: clientsOf.values.flatMap { $0 }, more: 5,
                what: "after restarting node \(named) in round \(round)")
        }
        stop.set()
        for task in tasks { await task.value }
        for client in cClients { try client.stop() }
        let overlaps = await ledger.overlaps()
        for (first, second) in overlaps.prefix(5) {
            Issue.record(
                "\(first.name): \(describe(first)) overlaps \(describe(second)); victims of seed \(seed): \(events)")
        }
        let holds = await ledger.holds
        let cHolds = holds.filter { cClientIDs.contains($0.client) }
        print("kill rounds: \(holds.count) holds (\(cHolds.count) by C clients), \(overlaps.count) overlaps")
        #expect(holds.count > 100, "only \(holds.count) holds recorded")
        #expect(cHolds.count > 20, "only \(cHolds.count) holds recorded by the C clients")
    }
}
