import Foundation
import GroupNode
import GroupServices
import Logging
import NIOCore
import NIOPosix

/// Group services over loopback TCP, N `GroupNode`s in this process (docs/GROUPS.md, "Shell"); each prints one JSON
/// object.
///
/// `dlmbench membership --scenario views`: for each cluster size, start every node and time until all of them
/// installed one primary view of all of them ("formation"); then crash one node (its channels close, it says
/// nothing) and time until every survivor installed a primary view without it ("failover": suspicion, proposal,
/// flush, fence, install). Median, minimum and maximum over the rounds. The failover figure with the default
/// timeouts is the "detection within 1.5 s" claim (suspect timeout 1 s + view change budget 500 ms); the fence
/// command is /bin/true and `persist` keeps the state in memory.
///
/// `dlmbench membership --scenario ordered`: 3 nodes each multicast to the view, keeping `window` of their own
/// messages in flight (the next goes when one comes back); messages per second ordered and delivered at every node.
enum MembershipScenarios {
    static let optionNames = [
        "scenario", "nodes", "rounds", "crash", "heartbeat-ms", "suspect-ms", "view-change-ms", "flush-ms",
        "retransmit-ms", "messages", "window", "size", "threads",
    ]

    static let usage = """
        usage: dlmbench membership [--scenario views|ordered|all] [--nodes N[,N...]] [--rounds N]
                                   [--crash member|coordinator] [--heartbeat-ms N] [--suspect-ms N]
                                   [--view-change-ms N] [--flush-ms N] [--retransmit-ms N]
                                   [--messages N] [--window N] [--size BYTES] [--threads N]
          views    (default sizes 3,5,9; 5 rounds): time to the first primary view of all nodes, and from the
                   crash of one node to a primary view without it at every survivor. Default timeouts (those of
                   Settings: heartbeat 200, suspect 1000, view change 500, flush 300, retransmit 50 ms).
          ordered  (3 nodes): each multicasts --messages (default 20000) of --size bytes (default 64), --window
                   (default 32) in flight per node; ordered deliveries per second at every node.
          --threads: event loop threads shared by the nodes (default 2, the machine's CPUs).
        """

    static func run(_ arguments: ArraySlice<String>) {
        if arguments.contains("--help") || arguments.contains("-h") {
            print(usage)
            return
        }
        let options = Options(arguments, allowed: optionNames)
        LoggingSystem.bootstrap { label in
            var handler = StreamLogHandler.standardError(label: label)
            handler.logLevel = .error
            return handler
        }
        let scenario = options.string("scenario", "all")
        guard ["views", "ordered", "all"].contains(scenario) else { fail("--scenario is views, ordered or all") }
        let d = ClusterConfig.defaultTimeouts
        let timeouts = Timeouts(
            heartbeat: options.int("heartbeat-ms", d.heartbeat), suspect: options.int("suspect-ms", d.suspect),
            viewChange: options.int("view-change-ms", d.viewChange), flush: options.int("flush-ms", d.flush),
            retransmit: options.int("retransmit-ms", d.retransmit))
        let threads = options.int("threads", 2)
        if scenario != "ordered" {
            let sizes = options.string("nodes", "3,5,9").split(separator: ",").compactMap { Int($0) }
            for size in sizes {
                guard size >= 2 else { fail("--nodes: at least 2") }
                print(
                    views(
                        nodes: size, rounds: options.int("rounds", 5),
                        crashCoordinator: options.string("crash", "member")
                            == "coordinator", timeouts: timeouts, threads: threads))
            }
        }
        if scenario != "views" {
            print(
                ordered(
                    nodes: 3, messages: options.int("messages", 20_000), window: options.int("window", 32),
                    size: options.int("size", 64, minimum: 0), timeouts: timeouts, threads: threads))
        }
    }

    struct Timeouts {
        var heartbeat, suspect, viewChange, flush, retransmit: Int
        var json: String {
            """
            {"heartbeat_ms": \(heartbeat), "suspect_ms": \(suspect), "view_change_ms": \(viewChange), \
            "flush_ms": \(flush), "retransmit_ms": \(retransmit)}
            """
        }
    }

    /// Events of every node, and a condition to wait on them.
    final class Observed: @unchecked Sendable {
        let condition = NSCondition()
        var views: [NodeID: [(View, Bool, ContinuousClock.Instant)]] = [:]
        var delivered: [NodeID: Int] = [:]
        var lastDelivery: ContinuousClock.Instant?

        func record(_ node: NodeID, _ event: GroupNodeEvent) {
            condition.lock()
            defer {
                condition.broadcast()
                condition.unlock()
            }
            switch event {
            case .viewInstalled(let view, let primary):
                views[node, default: []].append((view, primary, .now))
            case .delivered:
                delivered[node, default: 0] += 1
                lastDelivery = .now
            default: break
            }
        }

        /// Waits until `predicate` holds (checked under the lock at every event), at most `seconds`.
        func wait(_ what: String, seconds: Double = 120, _ predicate: () -> Bool) {
            let deadline = Date(timeIntervalSinceNow: seconds)
            condition.lock()
            defer { condition.unlock() }
            while !predicate() {
                if !condition.wait(until: deadline) { fail("timed out waiting for \(what)") }
            }
        }

        /// The primary view of exactly `nodes` newer than `after` installed by every one of them, and when the last
        /// of them installed it.
        func agreed(_ nodes: [NodeID], after: ViewID?) -> (ViewID, ContinuousClock.Instant)? {
            guard
                let candidate = views[nodes[0]]?.last(where: { view, primary, _ in
                    primary && view.nodes == nodes && (after.map { view.id > $0 } ?? true)
                })?.0.id
            else { return nil }
            var latest = ContinuousClock.Instant.now
            var first = true
            for node in nodes {
                guard let installed = views[node]?.first(where: { $0.0.id == candidate }) else { return nil }
                if first || installed.2 > latest { latest = installed.2 }
                first = false
            }
            return (candidate, latest)
        }
    }

    final class Cluster {
        let group: MultiThreadedEventLoopGroup
        let config: ClusterConfig
        let key = ClusterKey.generate()
        let observed = Observed()
        var nodes: [NodeID: GroupNode] = [:]

        init(nodes count: Int, timeouts: Timeouts, threads: Int) {
            group = MultiThreadedEventLoopGroup(numberOfThreads: threads)
            let ports = freeLoopbackPorts(count, group: group)
            config = ClusterConfig(
                name: "bench", keyFile: "/dev/null",
                nodes: (1...count).map { .init(id: NodeID(UInt32($0)), host: "127.0.0.1", port: ports[$0 - 1]) },
                fenceCommand: "/bin/true", fenceTimeout: 10, heartbeatInterval: timeouts.heartbeat,
                suspectTimeout: timeouts.suspect, viewChangeTime: timeouts.viewChange, flushTimeout: timeouts.flush,
                retransmitInterval: timeouts.retransmit)
            do {
                try config.validate(file: "dlmbench")
            } catch {
                fail("\(error)")
            }
        }

        func start(_ id: NodeID, onEvent: ((GroupNode, GroupNodeEvent) -> Void)? = nil) {
            var logger = Logger(label: "dlmbench.membership")
            logger.logLevel = .error
            let observed = self.observed
            var made: GroupNode?
            let node = GroupNode(
                config: config, nodeID: id, key: key, incarnation: 1, persisted: PersistentState(),
                eventLoop: group.next(), logger: logger, persist: { _ in }
            ) { event in
                observed.record(id, event)
                if let onEvent, let made { onEvent(made, event) }
            }
            made = node
            nodes[id] = node
            do {
                try node.start().wait()
            } catch {
                fail("node \(id): \(error)")
            }
        }

        func stop(_ id: NodeID) {
            try? nodes[id]?.stop().wait()
        }

        func shutdown() {
            for node in nodes.values { try? node.stop().wait() }
            try? group.syncShutdownGracefully()
        }
    }

    static func views(nodes count: Int, rounds: Int, crashCoordinator: Bool, timeouts: Timeouts, threads: Int)
        -> String
    {
        var formation: [Double] = []
        var failover: [Double] = []
        for _ in 0..<rounds {
            let cluster = Cluster(nodes: count, timeouts: timeouts, threads: threads)
            let all = cluster.config.nodes.map(\.id)
            let began = ContinuousClock.now
            for id in all { cluster.start(id) }
            var first: (ViewID, ContinuousClock.Instant)?
            cluster.observed.wait("a primary view of all \(count) nodes") {
                first = cluster.observed.agreed(all, after: nil)
                return first != nil
            }
            formation.append(seconds(first!.1 - began))

            let victim = crashCoordinator ? all.first! : all.last!
            let survivors = all.filter { $0 != victim }
            let crashed = ContinuousClock.now
            cluster.stop(victim)
            var second: (ViewID, ContinuousClock.Instant)?
            cluster.observed.wait("a primary view without node \(victim)") {
                second = cluster.observed.agreed(survivors, after: first!.0)
                return second != nil
            }
            failover.append(seconds(second!.1 - crashed))
            cluster.shutdown()
        }
        return """
            {"scenario": "membership-views", "nodes": \(count), "rounds": \(rounds), \
            "crashed": "\(crashCoordinator ? "coordinator" : "member")", "timeouts": \(timeouts.json), \
            "detection_budget_ms": \(timeouts.suspect + timeouts.viewChange), \
            "formation_ms": \(stats(formation)), "failover_ms": \(stats(failover)), \
            "transport": "TCP loopback, HMAC-SHA256", "fence": "/bin/true", "persist": "in memory", \
            "event_loop_threads": \(threads)}
            """
    }

    static func ordered(nodes count: Int, messages: Int, window: Int, size: Int, timeouts: Timeouts, threads: Int)
        -> String
    {
        let cluster = Cluster(nodes: count, timeouts: timeouts, threads: threads)
        let all = cluster.config.nodes.map(\.id)
        let payload = [UInt8](repeating: 0x61, count: size)
        let sent = NSLock()
        var sentBy: [NodeID: Int] = [:]
        var go = false
        // Each node sends its next message when one of its own comes back, keeping `window` in flight.
        let onEvent: (GroupNode, GroupNodeEvent) -> Void = { node, event in
            guard case .delivered(let delivery) = event, delivery.sender.node == node.nodeID else { return }
            let next = sent.withLock { () -> Bool in
                guard go, sentBy[node.nodeID, default: 0] < messages else { return false }
                sentBy[node.nodeID, default: 0] += 1
                return true
            }
            if next { node.multicast(payload, group: nil) }
        }
        for id in all { cluster.start(id, onEvent: onEvent) }
        cluster.observed.wait("a primary view of all \(count) nodes") {
            cluster.observed.agreed(all, after: nil) != nil
        }
        let began = ContinuousClock.now
        sent.withLock { go = true }
        for id in all {
            let node = cluster.nodes[id]!
            let initial = min(window, messages)
            sent.withLock { sentBy[id] = initial }
            for _ in 0..<initial { node.multicast(payload, group: nil) }
        }
        let total = messages * count
        cluster.observed.wait("\(total) deliveries at every node", seconds: 600) {
            all.allSatisfy { cluster.observed.delivered[$0, default: 0] >= total }
        }
        let elapsed = seconds(cluster.observed.lastDelivery! - began)
        let viewChanges = cluster.observed.views.values.map(\.count).max() ?? 0
        cluster.shutdown()
        return """
            {"scenario": "membership-ordered", "nodes": \(count), "messages": \(total), "payload_bytes": \(size), \
            "window_per_node": \(window), "seconds": \(JSON.number(elapsed).text), \
            "ordered_messages_per_sec": \(Int(Double(total) / elapsed)), \
            "deliveries_per_sec": \(Int(Double(total * count) / elapsed)), \
            "views_installed_since_start": \(viewChanges), "timeouts": \(timeouts.json), \
            "event_loop_threads": \(threads)}
            """
    }

    static func seconds(_ duration: Duration) -> Double {
        Double(duration.components.seconds) + Double(duration.components.attoseconds) / 1e18
    }

    /// `{"median": m, "min": a, "max": b}` in milliseconds.
    static func stats(_ values: [Double]) -> String {
        let sorted = values.sorted()
        let median =
            sorted.count % 2 == 1
            ? sorted[sorted.count / 2] : (sorted[sorted.count / 2 - 1] + sorted[sorted.count / 2]) / 2
        return """
            {"median": \(JSON.number(median * 1000).text), "min": \(JSON.number(sorted.first! * 1000).text), \
            "max": \(JSON.number(sorted.last! * 1000).text)}
            """
    }

    static func freeLoopbackPorts(_ count: Int, group: EventLoopGroup) -> [Int] {
        do {
            var channels: [Channel] = []
            for _ in 0..<count {
                channels.append(try ServerBootstrap(group: group).bind(host: "127.0.0.1", port: 0).wait())
            }
            let ports = channels.map { $0.localAddress!.port! }
            for channel in channels { try channel.close().wait() }
            return ports
        } catch {
            fail("cannot find free ports: \(error)")
        }
    }
}
