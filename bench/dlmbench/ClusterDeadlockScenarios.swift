import DLMCore
import DLMWire
import Foundation
import Glibc

/// `dlmbench cluster --scenarios deadlock`: deadlock detection across nodes (docs/SEMANTICS.md, "Deadlocks across
/// nodes") with real `dlmd` nodes on loopback.
///
///   cost    what the search costs when nothing deadlocks. On each of 3 nodes a client holds a name for the whole
///           run and another waits for it, so each node always has a due request and searches (asking the other
///           two for their graphs) every quarter of the deadlock wait whenever its queues changed; meanwhile C
///           clients on every node do lock+unlock pairs, 50 % on the next node's resources. The same run with
///           `--deadlock-wait 0` (no search), 1 s (the default) and 0.02 s (a search every 5 ms a node), one
///           fresh cluster each; the ratio of each to the first.
///   victim  the time from the moment a cycle's last request has waited the deadlock wait (1 s) to the victim's
///           EDEADLK, for cycles of 2 and of 8 requests by clients spread over the 3 nodes (each name mastered by
///           its first holder's node), 5 cycles each; every cycle must have exactly one victim.
enum ClusterDeadlockScenarios {
    static func run(dlmd: String, clients: Int, duration: Double, warmup: Double) -> [JSON] {
        var results: [JSON] = []
        var rates: [(String, Double)] = []
        for wait in ["0", "1", "0.02"] {
            let cluster = BenchCluster(dlmd: dlmd, nodes: 3, arguments: ["--deadlock-wait", wait])
            let (result, rate) = cost(cluster, wait: wait, clients: clients, duration: duration, warmup: warmup)
            results.append(result)
            rates.append((wait, rate))
        }
        results.append(
            .object(
                [("scenario", .string("cluster-deadlock-cost-ratio"))]
                    + rates.dropFirst().map { ("wait_\($0.0)_over_off", .number2($0.1 / rates[0].1)) } + [
                        ("ceiling", .string("at most 5 % less throughput than without the search (ratio >= 0.95)"))
                    ]))
        let cluster = BenchCluster(dlmd: dlmd, nodes: 3)
        for length in [2, 8] { results.append(victim(cluster, length: length, rounds: 5)) }
        return results
    }

    // MARK: cost

    static func cost(_ cluster: BenchCluster, wait: String, clients: Int, duration: Double, warmup: Double)
        -> (JSON, Double)
    {
        let lockspace = "bench-deadlock-cost"
        // A holder and a waiter on each node, for the whole run.
        var keep: [RawClient] = []
        for node in 1...cluster.count {
            let holder = RawClient(socket: cluster.socket(node), lockspace: lockspace)
            _ = holder.lock(resourceName(9_000_000 + node, length: 24))
            let waiter = RawClient(socket: cluster.socket(node), lockspace: lockspace)
            waiter.send(
                .lock(
                    LockMessage(
                        tag: waiter.tag(), lockspace: waiter.lockspace, mode: .ex, options: [],
                        name: resourceName(9_000_000 + node, length: 24))))
            guard case .ok = waiter.receive() else { fail("the waiter was not queued") }
            keep += [holder, waiter]
        }
        let workingSet = 100
        func own(_ node: Int, _ client: Int) -> [[UInt8]] {
            ClusterScenarios.names(10_000_000 + (node * clients + client) * 2 * workingSet, workingSet)
        }
        func other(_ node: Int, _ client: Int) -> [[UInt8]] {
            ClusterScenarios.names(10_000_000 + (node * clients + client) * 2 * workingSet + workingSet, workingSet)
        }
        for node in 1...cluster.count {
            let next = node % cluster.count + 1
            ClusterScenarios.master(
                (0..<clients).flatMap { own(node, $0) }, at: node, cluster, lockspace: lockspace)
            ClusterScenarios.master(
                (0..<clients).flatMap { other(node, $0) }, at: next, cluster, lockspace: lockspace)
        }
        let window = Window(warmup: warmup + 0.5, duration: duration)
        let threads = (1...cluster.count).flatMap { node in
            (0..<clients).map { client in
                BenchThread {
                    let mine = own(node, client)
                    let theirs = other(node, client)
                    return RawClient(socket: cluster.socket(node), lockspace: lockspace)
                        .pairs(names: (0..<workingSet).flatMap { [mine[$0], theirs[$0]] }, window: window)
                }.start()
            }
        }
        let result = ClientResult.merged(threads.map { $0.join() })
        // The searches the nodes ran meanwhile (dlmtool status's cluster_deadlock_searches).
        var searches = 0
        for node in 1...cluster.count {
            let client = keep[2 * (node - 1)]
            client.send(.query(tag: client.tag(), kind: .status, argument: []))
            guard case .queryReply(_, let json) = client.receive(),
                let report = try? JSONDecoder().decode(StatusReport.self, from: Data(json))
            else { fail("no status report from node \(node)") }
            searches += report.work?.clusterDeadlockSearches ?? 0
        }
        withExtendedLifetime(keep) {}
        let rate = Double(result.ops) / duration
        return (
            .object(
                [
                    ("scenario", .string("cluster-deadlock-cost")),
                    ("deadlock_wait_s", .string(wait)),
                    ("ops_per_sec", .number(rate)),
                    ("searches_across_nodes", .int(searches)),
                ] + result.samples.summary() + [
                    ("clients", .int(cluster.count * clients)),
                    (
                        "operation",
                        .string(
                            "lock+unlock pairs (EX, granted at once), 50 % remote, beside a request waiting on every node"
                        )
                    ),
                    ("load_average", .string(loadAverage())),
                ]),
            rate
        )
    }

    // MARK: victim

    static func victim(_ cluster: BenchCluster, length: Int, rounds: Int) -> JSON {
        let lockspace = "bench-deadlock-victim"
        let wait: UInt64 = 1_000_000_000
        var delays: [UInt64] = []
        var sinceClosed: [UInt64] = []
        var closingTimes: [UInt64] = []
        for round in 0..<rounds {
            let names = (0..<length).map { resourceName(20_000_000 + round * 100 + $0, length: 24) }
            let members = (0..<length).map {
                RawClient(socket: cluster.socket($0 % cluster.count + 1), lockspace: lockspace)
            }
            let held = (0..<length).map { members[$0].lock(names[$0]) }
            // Each asks for the next one's name; the last request closes the cycle.
            var requestTags: [UInt32] = []
            let opened = nowNanoseconds()
            var closed: UInt64 = 0
            for i in 0..<length {
                let tag = members[i].tag()
                requestTags.append(tag)
                members[i].send(
                    .lock(
                        LockMessage(
                            tag: tag, lockspace: members[i].lockspace, mode: .ex, options: [],
                            name: names[(i + 1) % length])))
                guard case .ok = members[i].receive() else { fail("a request of the cycle was not queued") }
                closed = nowNanoseconds()
            }
            // Wait for every request to end: the victim's EDEADLK, then the others' grants as each lets go.
            var victims = 0
            var firstVictim: UInt64 = 0
            var open = Set(0..<length)
            while !open.isEmpty {
                var fds = open.sorted().map { pollfd(fd: members[$0].fd, events: Int16(POLLIN), revents: 0) }
                let ready = fds.withUnsafeMutableBufferPointer { poll($0.baseAddress, nfds_t($0.count), 60_000) }
                guard ready > 0 else { fail("a cycle of \(length) was not resolved within 60 s of polling") }
                for entry in fds where entry.revents != 0 {
                    let i = (0..<length).first { members[$0].fd == entry.fd }!
                    guard case .completion(let completion) = members[i].receive() else { continue }
                    guard completion.lock != held[i] else { continue }  // an unlock of its held lock
                    if completion.status == .deadlock {
                        victims += 1
                        if firstVictim == 0 { firstVictim = nowNanoseconds() }
                        members[i].send(.unlock(UnlockMessage(tag: members[i].tag(), lock: held[i])))
                    } else if completion.status == .granted {
                        members[i].send(.unlock(UnlockMessage(tag: members[i].tag(), lock: completion.lock)))
                        members[i].send(.unlock(UnlockMessage(tag: members[i].tag(), lock: held[i])))
                    } else {
                        continue  // the completion of an unlock
                    }
                    open.remove(i)
                }
            }
            guard victims == 1 else { fail("a cycle of \(length) had \(victims) victims") }
            // A search can start once a request of the cycle has waited the deadlock wait: the first one's.
            let due = max(opened + wait, closed)
            delays.append(firstVictim > due ? firstVictim - due : 0)
            sinceClosed.append(firstVictim - closed)
            closingTimes.append(closed - opened)
        }
        delays.sort()
        sinceClosed.sort()
        return .object([
            ("scenario", .string("cluster-deadlock-victim")),
            ("cycle_length", .int(length)),
            ("nodes", .int(cluster.count)),
            ("rounds", .int(rounds)),
            ("deadlock_wait_ms", .number2(Double(wait) / 1e6)),
            ("after_due_p50_ms", .number2(Double(delays[delays.count / 2]) / 1e6)),
            ("after_due_max_ms", .number2(Double(delays.last!) / 1e6)),
            ("since_closed_p50_ms", .number2(Double(sinceClosed[sinceClosed.count / 2]) / 1e6)),
            ("closing_ms", .number2(Double(closingTimes.max() ?? 0) / 1e6)),
            (
                "measured",
                .string(
                    "after_due: from the first request of the cycle having waited the deadlock wait (or the cycle closing, if later) to the victim's EDEADLK; since_closed: from the last request; closing: the longest time from the first request to the last"
                )
            ),
            ("load_average", .string(loadAverage())),
        ])
    }
}
