import DLMClient
import DLMCore
import DLMStore
import DLMWire
import Foundation

/// The store's benchmarks (bench/RESULTS.md, `make bench-durability`).
///
/// `dlmbench lmdb DIR`: the raw LMDB commit rate on this disk, for comparison: one synced put per commit (two
/// fsyncs: data, then meta), the same with the meta page unsynced (`MDB_NOMETASYNC`, one fsync: what `sync`
/// durability does under load), synced batches of 32 puts, and commits without sync.
///
/// `dlmbench durable --socket PATH --clients N`: N clients each take a PERSISTENT EX lock on a resource of
/// their own and release it, as fast as the daemon acknowledges; every grant and every unlock changes
/// persistent state, so each waits for the store as the daemon's `--durability` says. One operation = one
/// acknowledged grant (the unlocks are counted separately).
enum DurabilityScenarios {
    static func lmdb(directory: String, seconds: Double) -> String {
        func rate(noSync: Bool, noMetaSync: Bool = false, putsPerCommit: Int) -> (commits: Double, puts: Double) {
            let path = directory + "/lmdb-\(noSync ? "nosync" : "sync")-\(noMetaSync ? "nometa-" : "")\(putsPerCommit)"
            try? FileManager.default.removeItem(atPath: path)
            try? FileManager.default.createDirectory(atPath: path, withIntermediateDirectories: true)
            defer { try? FileManager.default.removeItem(atPath: path) }
            do {
                let env = try LMDBEnvironment(
                    path: path, options: .init(mapSize: 1 << 30, noSync: noSync, noMetaSync: noMetaSync))
                let db = try env.database("bench", create: true)
                let clock = ContinuousClock()
                let start = clock.now
                var commits = 0
                let value = [UInt8](repeating: 7, count: 64)
                while clock.now - start < .milliseconds(Int(seconds * 1000)) {
                    try env.write { txn in
                        for index in 0..<putsPerCommit {
                            try txn.put(db, withUnsafeBytes(of: UInt32(index).bigEndian) { Array($0) }, value)
                        }
                    }
                    commits += 1
                }
                let elapsed = (clock.now - start) / .seconds(1)
                return (Double(commits) / elapsed, Double(commits * putsPerCommit) / elapsed)
            } catch {
                return (0, 0)
            }
        }
        let one = rate(noSync: false, putsPerCommit: 1)
        let oneNoMeta = rate(noSync: false, noMetaSync: true, putsPerCommit: 1)
        let batch = rate(noSync: false, putsPerCommit: 32)
        let noSync = rate(noSync: true, putsPerCommit: 1)
        return """
            {"scenario": "lmdb", "directory": "\(directory)", "synced_commits_per_sec": \(Int(one.commits)), \
            "synced_nometasync_commits_per_sec": \(Int(oneNoMeta.commits)), \
            "synced_batch32_puts_per_sec": \(Int(batch.puts)), "nosync_commits_per_sec": \(Int(noSync.commits))}
            """
    }

    /// With `release`, each grant is followed by its unlock; without, every grant is of a new resource and the
    /// locks are kept (they become orphans when the client leaves), so that every acknowledgement is a grant.
    static func durable(socket: String, clients: Int, seconds: Double, warmup: Double, release: Bool) -> String {
        runBlocking {
            try await measure(socket: socket, clients: clients, seconds: seconds, warmup: warmup, release: release)
        }
    }

    /// Persistent CR lock+unlock pairs of one client on a resource that `holders` other persistent CR locks hold
    /// (taken first by a second connection, pipelined): the cost of a change to one lock of a resource holding
    /// many, which the store must not write whole (issue 16).
    static func shared(socket: String, holders: Int, seconds: Double) -> String {
        let name = Array("durable-shared-\(holders)".utf8)
        let holder = RawClient(socket: socket, lockspace: "bench-durable")
        let held = holder.lockAll(Array(repeating: name, count: holders), mode: .cr, flags: .persistent)
        let client = RawClient(socket: socket, lockspace: "bench-durable")
        let clock = ContinuousClock()
        var latencies: [Int64] = []
        let end = clock.now + .milliseconds(Int(seconds * 1000))
        while clock.now < end {
            let start = clock.now
            client.send(
                .lock(
                    LockMessage(
                        tag: client.tag(), lockspace: client.lockspace, flags: .persistent, mode: .cr, options: [],
                        name: name)))
            guard case .completion(let completion) = client.receive(), completion.status == .granted else {
                fail("the shared lock was not granted at once")
            }
            client.unlock(completion.lock)
            latencies.append((clock.now - start).nanoseconds)
        }
        holder.unlockAll(held)
        latencies.sort()
        let p50 = latencies.isEmpty ? 0 : Double(latencies[latencies.count / 2]) / 1000
        return """
            {"scenario": "durable-shared", "operation": "PERSISTENT CR lock+unlock on a resource held by N other \
            PERSISTENT CR locks", "holders": \(holders), "seconds": \(seconds), \
            "pairs_per_sec": \(Int(Double(latencies.count) / seconds)), "p50_us": \(p50)}
            """
    }

    static func measure(
        socket: String, clients: Int, seconds: Double, warmup: Double, release: Bool
    ) async throws -> String {
        let clock = ContinuousClock()
        let begin = clock.now + .milliseconds(Int(warmup * 1000))
        let end = begin + .milliseconds(Int(seconds * 1000))
        let perClient = try await withThrowingTaskGroup(of: [Int64].self) { group in
            for client in 0..<clients {
                group.addTask {
                    let connection = try await DLMConnection.connect(socketPath: socket)
                    let ls = try await connection.openLockspace("bench-durable")
                    let name = "durable-\(client)"
                    var latencies: [Int64] = []
                    latencies.reserveCapacity(100_000)
                    var iteration = 0
                    while true {
                        let now = clock.now
                        if now >= end { break }
                        iteration += 1
                        let lock = try await ls.lock(
                            release ? name : "\(name)-\(iteration)", mode: .ex, flags: .persistent)
                        let granted = clock.now
                        if release { try await lock.unlock() }
                        if now >= begin { latencies.append((granted - now).nanoseconds) }
                    }
                    await connection.close()
                    return latencies
                }
            }
            var all: [[Int64]] = []
            for try await latencies in group { all.append(latencies) }
            return all
        }
        var latencies = perClient.flatMap { $0 }
        latencies.sort()
        func percentile(_ p: Double) -> Double {
            guard !latencies.isEmpty else { return 0 }
            return Double(latencies[min(latencies.count - 1, Int(Double(latencies.count) * p))]) / 1000
        }
        let grants = Double(latencies.count) / seconds
        return """
            {"scenario": "durable", "operation": "an acknowledged grant of a PERSISTENT EX lock\(release
                ? " (each followed by its unlock, also persistent state)" : " (of a new resource each time, kept)")", \
            "clients": \(clients), "seconds": \(seconds), \
            "ops_per_sec": \(Int(grants)), "grants": \(latencies.count), \
            "p50_us": \(percentile(0.5)), "p99_us": \(percentile(0.99))}
            """
    }
}

extension Duration {
    var nanoseconds: Int64 {
        let (seconds, attoseconds) = components
        return seconds * 1_000_000_000 + attoseconds / 1_000_000_000
    }
}
