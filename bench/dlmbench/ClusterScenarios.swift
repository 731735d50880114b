import DLMCore
import DLMWire
import Foundation
import Glibc

/// `dlmbench cluster --dlmd PATH`: the lock space across real `dlmd` nodes on loopback (BenchCluster: 3 nodes,
/// default timeouts), clients of `RawClient` (blocking sockets, one request at a time unless said otherwise), one
/// JSON object per measurement:
///
///   remote      the raw TCP round trip (an echo process over loopback), then lock+unlock pairs of one client on
///               node 1 on resources mastered by node 1 (local) and on resources mastered by node 2 (remote), in
///               the same run; the bound of issue 11 is remote <= (local + 2 TCP round trips) * 1.2
///   throughput  C clients on node 1 on resources it masters (one node's local figure), then C clients on every
///               node (3C in all), each alternating between resources its node masters and resources the next
///               node masters (50 % remote)
///   recovery    for each N of --locks: a fresh cluster; node 3 masters N resources on which clients of nodes 1
///               and 2 hold N PR locks (it holds them all: `killed_node_locks`, from its status report just before
///               the kill); node 3 is killed (SIGKILL). Times from the kill to the survivors' view,
///               from the view to the start of recovery's phase 2 and to its end on every survivor ("recovery
///               phase 2" and "recovery done" lines), and to the first
///               grant on a rebuilt resource (a request of node 2 sent right after the kill); the CPU time each
///               survivor used from the kill to the end (`cpu_kill_to_done_per_node_ms`); and the longest
///               pause of a client of node 1 doing lock+unlock pairs on resources node 1 masters (untouched by
///               the failure) meanwhile. Then node 3 comes back (a new life): the time from its view to the end of
///               that recovery on every node, and each survivor's CPU time for it (`rejoin_*`: the recovery after
///               one of N locks). `--dlmd-log-level warning` runs the daemons at that level and prints
///               the survivors' long-step warnings (a step of the lock service of 100 ms or more) to stderr.
///   deadlock    deadlock detection across nodes (ClusterDeadlockScenarios.swift): its cost to throughput when
///               nothing deadlocks, and the time to a cycle's victim
enum ClusterScenarios {
    static let optionNames = [
        "dlmd", "scenarios", "duration", "warmup", "clients", "locks", "connections", "working-set", "dlmd-log-level",
        "dlmd-busy-poll",
    ]

    static func run(_ options: Options) {
        let dlmd = options.string("dlmd", "")
        let duration = options.seconds("duration", 3)
        let warmup = options.seconds("warmup", 0.5)
        // `--dlmd-busy-poll US`: every dlmd of the remote and throughput scenarios runs with `--busy-poll US`.
        let pollWindow = options.int("dlmd-busy-poll", 0, minimum: 0)
        let busyPoll = pollWindow > 0 ? ["--busy-poll", "\(pollWindow)"] : []
        for scenario in options.string("scenarios", "remote,throughput,recovery").split(separator: ",") {
            switch scenario {
            case "remote":
                let cluster = BenchCluster(dlmd: dlmd, nodes: 3, arguments: busyPoll)
                for result in remote(
                    cluster, duration: duration, warmup: warmup, workingSet: options.int("working-set", 1000))
                {
                    print(result.text)
                    fflush(nil)
                }
            case "throughput":
                let cluster = BenchCluster(dlmd: dlmd, nodes: 3, arguments: busyPoll)
                for result in throughput(
                    cluster, clients: options.int("clients", 8), duration: duration, warmup: warmup,
                    workingSet: options.int("working-set", 100))
                {
                    print(result.text)
                    fflush(nil)
                }
            case "recovery":
                for locks in options.ints("locks", [10_000, 100_000, 1_000_000]) {
                    let cluster = BenchCluster(
                        dlmd: dlmd, nodes: 3, logLevel: options.string("dlmd-log-level", "error"))
                    print(recovery(cluster, locks: locks, connections: options.int("connections", 16)).text)
                    for node in 1...2 {
                        for line in cluster.member(node).log.all where line.contains("one step of the lock service") {
                            FileHandle.standardError.write(Data("# node \(node): \(line)\n".utf8))
                        }
                    }
                    fflush(nil)
                }
            case "deadlock":
                for result in ClusterDeadlockScenarios.run(
                    dlmd: dlmd, clients: options.int("clients", 8), duration: duration, warmup: warmup)
                {
                    print(result.text)
                    fflush(nil)
                }
            default:
                fail("--scenarios: remote, throughput, recovery, deadlock")
            }
        }
    }

    /// `count` names from `first` on, disjoint from any other range used here.
    static func names(_ first: Int, _ count: Int) -> [[UInt8]] {
        (first..<first + count).map { resourceName($0, length: 24) }
    }

    /// Makes `node` the master of `names`: a client there takes and releases each (the first node to ask is the
    /// master, and an idle resource keeps its master).
    static func master(_ names: [[UInt8]], at node: Int, _ cluster: BenchCluster, lockspace: String) {
        let client = RawClient(socket: cluster.socket(node), lockspace: lockspace)
        client.unlockAll(client.lockAll(names, mode: .nl))
    }

    // MARK: remote

    static func remote(_ cluster: BenchCluster, duration: Double, warmup: Double, workingSet: Int) -> [JSON] {
        let lockspace = "bench-remote"
        let rtt = RTTScenario.run(
            Options(
                ["--transport", "tcp", "--echo", "process", "--duration", "\(duration)", "--warmup", "\(warmup)"],
                allowed: RTTScenario.optionNames))
        let local = names(0, workingSet)
        let remote = names(1_000_000, workingSet)
        master(local, at: 1, cluster, lockspace: lockspace)
        master(remote, at: 2, cluster, lockspace: lockspace)
        let client = RawClient(socket: cluster.socket(1), lockspace: lockspace)
        func pairs(_ names: [[UInt8]], _ master: String) -> (JSON, Double) {
            let result = client.pairs(names: names, window: Window(warmup: warmup, duration: duration))
            let sorted = result.samples.values.sorted()
            return (
                .object(
                    [
                        ("scenario", .string("cluster-pairs")),
                        ("master", .string(master)),
                        (
                            "operation",
                            .string(
                                "one lock+unlock pair (EX, granted at once) of a client of node 1, one request at a time"
                            )
                        ),
                        ("ops_per_sec", .number(Double(result.ops) / duration)),
                    ] + result.samples.summary() + [
                        ("resources", .int(names.count)), ("load_average", .string(loadAverage())),
                    ]),
                Samples.percentile(sorted, 0.5)
            )
        }
        let (localResult, localP50) = pairs(local, "node 1 (local)")
        let (remoteResult, remoteP50) = pairs(remote, "node 2 (remote)")
        let (againResult, againP50) = pairs(local, "node 1 (local, again after the remote run)")
        let rttP50 = rtt.field("p50_us") ?? .nan
        let localMedian = (localP50 + againP50) / 2
        let bound = (localMedian + 2 * rttP50) * 1.2
        let strictBound = localMedian + 2 * rttP50 + 0.2 * localMedian
        return [
            rtt, localResult, remoteResult, againResult,
            .object([
                ("scenario", .string("cluster-remote-bound")),
                ("tcp_rtt_p50_us", .number2(rttP50)),
                ("local_pair_p50_us", .number2(localMedian)),
                ("remote_pair_p50_us", .number2(remoteP50)),
                ("bound_us", .number2(bound)),
                ("bound", .string("(local + 2 TCP round trips) * 1.2")),
                ("strict_bound_us", .number2(strictBound)),
                ("strict_bound", .string("local + 2 TCP round trips + 20 % of local")),
                ("remote_over_local", .number2(remoteP50 / localMedian)),
                ("met", .bool(remoteP50 <= bound)),
                ("met_strict", .bool(remoteP50 <= strictBound)),
            ]),
        ]
    }

    // MARK: throughput

    static func throughput(
        _ cluster: BenchCluster, clients: Int, duration: Double, warmup: Double, workingSet: Int
    ) -> [JSON] {
        let lockspace = "bench-throughput"
        let count = cluster.count
        // Client k of node n: names of its own mastered by n, and as many mastered by the next node.
        func own(_ node: Int, _ client: Int) -> [[UInt8]] {
            names(2_000_000 + (node * clients + client) * 2 * workingSet, workingSet)
        }
        func other(_ node: Int, _ client: Int) -> [[UInt8]] {
            names(2_000_000 + (node * clients + client) * 2 * workingSet + workingSet, workingSet)
        }
        for node in 1...count {
            let next = node % count + 1
            master((0..<clients).flatMap { own(node, $0) }, at: node, cluster, lockspace: lockspace)
            master((0..<clients).flatMap { other(node, $0) }, at: next, cluster, lockspace: lockspace)
        }
        func run(_ placement: [(node: Int, names: [[UInt8]])]) -> ClientResult {
            let window = Window(warmup: warmup + 0.5, duration: duration)
            let threads = placement.map { client in
                BenchThread {
                    RawClient(socket: cluster.socket(client.node), lockspace: lockspace)
                        .pairs(names: client.names, window: window)
                }.start()
            }
            return ClientResult.merged(threads.map { $0.join() })
        }
        func describe(_ result: ClientResult, _ what: String, clients: Int) -> JSON {
            .object(
                [
                    ("scenario", .string("cluster-throughput")),
                    ("placement", .string(what)),
                    ("ops_per_sec", .number(Double(result.ops) / duration)),
                ] + result.samples.summary() + [
                    ("clients", .int(clients)),
                    ("operation", .string("lock+unlock pairs (EX, granted at once), one request at a time a client")),
                    ("load_average", .string(loadAverage())),
                ])
        }
        // One node's local figure: as many clients, all on node 1, all on resources node 1 masters.
        let single = (0..<count * clients).map { names(5_000_000 + $0 * workingSet, workingSet) }
        master(single.flatMap { $0 }, at: 1, cluster, lockspace: lockspace)
        let alone = run(single.map { (1, $0) })
        // Every node: half of each client's pairs on its node's resources, half on the next node's.
        let spread = run(
            (1...count).flatMap { node in
                (0..<clients).map { client in
                    let mine = own(node, client)
                    let theirs = other(node, client)
                    return (node, (0..<workingSet).flatMap { [mine[$0], theirs[$0]] })
                }
            })
        let singleRate = Double(alone.ops) / duration
        let spreadRate = Double(spread.ops) / duration
        return [
            describe(
                alone, "all \(count * clients) clients on node 1, resources mastered by node 1",
                clients: count * clients),
            describe(
                spread, "\(clients) clients on each of \(count) nodes, 50 % of pairs on the next node's resources",
                clients: count * clients),
            .object([
                ("scenario", .string("cluster-throughput-ratio")),
                ("cluster_over_one_node", .number2(spreadRate / singleRate)),
                ("floor", .number2(0.5)),
                ("met", .bool(spreadRate >= 0.5 * singleRate)),
            ]),
        ]
    }

    // MARK: recovery

    static func recovery(_ cluster: BenchCluster, locks: Int, connections: Int) -> JSON {
        let lockspace = "bench-recovery"
        let victim = 3
        let held = names(10_000_000, locks)
        let untouched = names(30_000_000, 1000)
        let setupStart = ContinuousClock.now
        // Node 3 masters the N resources; node 1 masters the untouched ones.
        let slices = stride(from: 0, to: locks, by: max(1, locks / connections)).map {
            Array(held[$0..<min(locks, $0 + max(1, locks / connections))])
        }
        let masters = slices.map { slice in
            BenchThread {
                master(slice, at: victim, cluster, lockspace: lockspace)
                return ClientResult()
            }.start()
        }
        for thread in masters { _ = thread.join() }
        master(untouched, at: 1, cluster, lockspace: lockspace)
        // Clients of nodes 1 and 2 hold a PR lock on each: one connection a slice, kept open.
        let holders = slices.enumerated().map { index, slice in
            RawClient(socket: cluster.socket(1 + index % 2), lockspace: lockspace)
        }
        let holding = zip(holders, slices).map { holder, slice in
            BenchThread {
                _ = holder.lockAll(slice, mode: .pr)
                return ClientResult()
            }.start()
        }
        for thread in holding { _ = thread.join() }
        let setup = MembershipScenarios.seconds(ContinuousClock.now - setupStart)
        // The locks the node to kill holds as their master: N, if no resource moved during the setup.
        let census = RawClient(socket: cluster.socket(victim), lockspace: lockspace)
        census.send(.query(tag: census.tag(), kind: .status, argument: []))
        guard case .queryReply(_, let json) = census.receive(),
            let census = try? JSONDecoder().decode(StatusReport.self, from: Data(json))
        else { fail("no status report from node \(victim)") }

        // Node 1's client of untouched resources runs until told to stop; each pair's end and latency.
        let worker = UntouchedWorker(socket: cluster.socket(1), lockspace: lockspace, names: untouched)
        worker.start()
        let probe = RawClient(socket: cluster.socket(2), lockspace: lockspace)
        cluster.skipLogs()
        // The worker's pairs before the failure are in the figures too.
        worker.wait(forPairs: 1000)
        let survivors = Array(cluster.names.prefix(victim - 1))
        let cpuBefore = (1..<victim).map { cluster.cpuMilliseconds($0) }
        let killed = cluster.kill(victim)
        let killedNanoseconds = nowNanoseconds()
        // A request on a resource the dead node mastered, of a survivor's client: granted once rebuilt.
        _ = probe.lock(held[locks / 2], mode: .pr)
        let granted = ContinuousClock.now
        let views = (1..<victim).map { cluster.waitForView(at: $0, of: survivors) }
        let phase2 = (1..<victim).map { cluster.waitForRecoveryPhase2(at: $0) }
        let done = (1..<victim).map { cluster.waitForRecoveryDone(at: $0).at }
        // (Read once both are done: the first to end may still answer the other.)
        let cpu = (1..<victim).map { cluster.cpuMilliseconds($0) - cpuBefore[$0 - 1] }
        // Some more untouched work after the end, then stop.
        worker.wait(forPairs: worker.completedPairs + 1000)
        let pairs = worker.stop()
        // Then node 3 comes back as a new life: the recovery of its joining, on every node, and the survivors' CPU
        // time for it (nothing is rebuilt: the locks stay where they are).
        let cpuBeforeRejoin = (1..<victim).map { cluster.cpuMilliseconds($0) }
        cluster.restart(victim, incarnation: 2)
        let rejoinViews = (1...victim).map { cluster.waitForView(at: $0, of: cluster.names) }
        let rejoinDone = (1...victim).map { cluster.waitForRecoveryDone(at: $0).at }
        let rejoinCPU = (1..<victim).map { cluster.cpuMilliseconds($0) - cpuBeforeRejoin[$0 - 1] }
        let view = views.min()!
        let end = done.max()!
        // The worker's pairs that ended after the kill; the longest, and the longest during recovery.
        let afterKill = pairs.filter { $0.end >= killedNanoseconds }
        let longest = afterKill.map(\.latency).max() ?? 0
        let before = pairs.filter { $0.end < killedNanoseconds }.map(\.latency).sorted()
        // The holders' connections stay open until the end: without this, they were released after their last use
        // (the setup), and their clients' locks with them, before the kill.
        withExtendedLifetime(holders) {}
        func milliseconds(_ duration: Duration) -> JSON { .number2(MembershipScenarios.seconds(duration) * 1000) }
        return .object([
            ("scenario", .string("cluster-recovery")),
            ("locks", .int(locks)),
            ("killed_node_locks", .int(census.locks)),
            (
                "what",
                .string(
                    "kill -9 of node 3, which masters N resources on which clients of nodes 1 and 2 hold N PR locks")
            ),
            ("kill_to_view_ms", milliseconds(view - killed)),
            ("view_to_recovery_done_ms", milliseconds(end - view)),
            ("view_to_first_grant_ms", milliseconds(granted - view)),
            ("recovery_done_per_node_ms", .array(done.map { milliseconds($0 - view) })),
            ("phase_2_per_node_ms", .array(phase2.map { milliseconds($0 - view) })),
            ("cpu_kill_to_done_per_node_ms", .array(cpu.map { .number2($0) })),
            ("rejoin_view_to_recovery_done_ms", milliseconds(rejoinDone.max()! - rejoinViews.min()!)),
            ("rejoin_cpu_per_survivor_ms", .array(rejoinCPU.map { .number2($0) })),
            ("untouched_longest_pause_ms", .number2(Double(longest) / 1e6)),
            ("untouched_pairs_after_kill", .int(afterKill.count)),
            ("untouched_p99_before_kill_us", .number2(Samples.percentile(before, 0.99))),
            ("setup_s", .number2(setup)),
            ("holder_connections", .int(slices.count)),
            ("load_average", .string(loadAverage())),
        ])
    }
}

/// A client doing lock+unlock pairs on its resources on a thread of its own until stopped: each pair's end
/// (monotonic nanoseconds) and latency. Another thread can wait until it has done a number of pairs.
final class UntouchedWorker: @unchecked Sendable {
    let client: RawClient
    let names: [[UInt8]]
    var pairs: [(end: UInt64, latency: UInt64)] = []
    var thread: BenchThread?
    /// Guards `done`, `stopping` and `awaited`.
    let condition = NSCondition()
    var done = 0
    var stopping = false
    var awaited = Int.max

    init(socket: String, lockspace: String, names: [[UInt8]]) {
        client = RawClient(socket: socket, lockspace: lockspace)
        self.names = names
        pairs.reserveCapacity(1 << 18)
    }

    func start() {
        thread = BenchThread { [self] in
            var index = 0
            while true {
                let start = nowNanoseconds()
                client.unlock(client.lock(names[index]))
                let end = nowNanoseconds()
                pairs.append((end, end - start))
                index = index + 1 == names.count ? 0 : index + 1
                condition.lock()
                done += 1
                if done >= awaited { condition.broadcast() }
                let stop = stopping
                condition.unlock()
                if stop { break }
            }
            return ClientResult()
        }.start()
    }

    /// The pairs done so far.
    var completedPairs: Int {
        condition.lock()
        defer { condition.unlock() }
        return done
    }

    /// Waits until the worker has done `count` pairs.
    func wait(forPairs count: Int) {
        condition.lock()
        awaited = count
        while done < count { condition.wait() }
        awaited = Int.max
        condition.unlock()
    }

    /// Stops the worker after its current pair; every pair it did.
    func stop() -> [(end: UInt64, latency: UInt64)] {
        condition.lock()
        stopping = true
        condition.unlock()
        _ = thread?.join()
        return pairs
    }
}
