import DLMClient
import DLMCore
import DLMTestSupport
import Foundation
import Testing

/// Clients on every node of a real 3-node cluster lock shared names while one node at a time is killed with
/// `kill -9` and restarted, several rounds; an independent checker over every hold the clients recorded finds no
/// two incompatible holds at once (the exclusion a holder relies on, across deaths and recoveries), and every
/// client keeps getting its locks (none is lost or left waiting for ever).
@Suite(.serialized) struct KillRoundsTests {
    /// One hold as its client saw it: from the grant's reply to just before the unlock was sent.
    struct Hold: Sendable {
        var name: String
        var mode: LockMode
        var client: Int
        var node: Int
        var start: ContinuousClock.Instant
        var end: ContinuousClock.Instant
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
    static let origin = ContinuousClock.now

    static func milliseconds(_ instant: ContinuousClock.Instant) -> Int {
        Int((instant - origin) / .milliseconds(1))
    }

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
            let start = ContinuousClock.now
            try? await Task.sleep(for: .milliseconds(random.below(4)))  // the work done under the lock
            // The holder lets go when it asks for the unlock (it relies on the lock no longer): if its node dies
            // meanwhile, the unlock may have reached the master or not; either way the hold ended here.
            let end = ContinuousClock.now
            let unlocked = (try? await lock.unlock()) != nil
            await ledger.record(Hold(name: name, mode: mode, client: id, node: node, start: start, end: end))
            if !unlocked { return }
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
        let cluster = try TestCluster(nodes: 3)
        defer { cluster.stopAll() }
        do { try await Self.rounds(cluster) } catch {
            let prefix = FileManager.default.temporaryDirectory.path + "/dlm-kill-rounds-node"
            cluster.saveLogs(to: prefix)
            Issue.record("\(error); every node's log is in \(prefix)N.log")
        }
    }

    static func rounds(_ cluster: TestCluster) async throws {
        var events: [String] = []
        try cluster.startAll()
        for node in 1...3 { try await Self.waitForPrimaryView(cluster, at: node, members: 3) }
        let ledger = Ledger()
        let stop = Flag()
        var clientsOf: [Int: [Int]] = [:]
        var tasks: [Task<Void, Never>] = []
        var nextClient = 0
        func startClients(on node: Int) {
            clientsOf[node] = []
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
        for node in 1...3 { startClients(on: node) }
        try await Self.waitForProgress(ledger, clients: clientsOf.values.flatMap { $0 }, more: 5, what: "at start")
        var random = SplitMix64(seed: 2026)
        for round in 1...10 {
            let victim = 1 + random.below(3)
            events.append("node \(victim) killed at \(milliseconds(cluster.kill(victim))) ms")
            let survivors = (1...3).filter { $0 != victim }
            for node in survivors { try await Self.waitForPrimaryView(cluster, at: node, members: 2) }
            try await Self.waitForProgress(
                ledger, clients: survivors.flatMap { clientsOf[$0]! }, more: 5,
                what: "after killing node \(victim) in round \(round)")
            try cluster.start(victim)
            events.append("node \(victim) restarted at \(milliseconds(.now)) ms")
            for node in 1...3 { try await Self.waitForPrimaryView(cluster, at: node, members: 3) }
            startClients(on: victim)
            try await Self.waitForProgress(
                ledger, clients: clientsOf.values.flatMap { $0 }, more: 5,
                what: "after restarting node \(victim) in round \(round)")
        }
        stop.set()
        for task in tasks { await task.value }
        let overlaps = await ledger.overlaps()
        for (first, second) in overlaps.prefix(5) {
            Issue.record("\(first.name): \(describe(first)) overlaps \(describe(second)); \(events)")
        }
        let holds = await ledger.holds.count
        print("kill rounds: \(holds) holds, \(overlaps.count) overlaps")
        #expect(holds > 100, "only \(holds) holds recorded")
    }
}
