import DLMTestSupport
import Foundation

/// `dlmbench provider-failover --dlmd PATH [--rounds N]` (root, `ip netns`, corosync): three dlmd nodes, each in
/// a network namespace of its own, on the built-in provider and on corosync with its default token (3000 ms) and a
/// tuned one (1000 ms). Each round fails node 3 (its corosync killed, then its dlmd: a node that stops) and times
/// from the kill to the moment both survivors printed a primary view without it, and to the end of the recovery
/// that view started ("recovery done"); then node 3 comes back (corosync, then dlmd) and every node installs a view
/// with it. On corosync, a round also kills node 3's dlmd alone (corosync reports the process gone at once). Fence
/// command /bin/true. One JSON object.
enum ProviderFailover {
    static let optionNames = ["dlmd", "rounds"]

    enum Setup {
        case builtIn
        case corosync(token: Int?)

        var name: String {
            switch self {
            case .builtIn: "built-in (heartbeat 200 ms, suspect 1000 ms, view change 500 ms)"
            case .corosync(let token): "corosync, token \(token.map { "\($0) ms" } ?? "3000 ms (default)")"
            }
        }
    }

    static func run(_ options: Options) -> String {
        let dlmd = options.string("dlmd", "")
        guard !dlmd.isEmpty else { fail("--dlmd PATH: the dlmd to run") }
        let rounds = options.int("rounds", 5)
        guard Network.canBeMade else { fail("provider-failover needs root and ip netns") }
        let setups: [Setup] = [.builtIn, .corosync(token: nil), .corosync(token: 1000)]
        let results = setups.map { measure($0, dlmd: dlmd, rounds: rounds) }
        return """
            {"scenario": "provider-failover", "rounds": \(rounds), "nodes": 3, "fence": "/bin/true", \
            "what": "node 3 fails (corosync and dlmd killed): to a primary view without it at both survivors, and to \
            the end of its recovery", "setups": [\(results.joined(separator: ", "))]}
            """
    }

    static func measure(_ setup: Setup, dlmd: String, rounds: Int) -> String {
        let network: Network
        do { network = try Network(nodes: 3) } catch { fail("\(error)") }
        defer { network.remove() }
        var ring: CorosyncRing?
        if case .corosync(let token) = setup {
            do { ring = try CorosyncRing(network: network, token: token) } catch { fail("\(error)") }
        }
        defer { ring?.stopAll() }
        let cluster = BenchCluster(dlmd: dlmd, nodes: 3, network: network, corosyncPort: ring == nil ? nil : 7100)
        var toView: [Double] = []
        var toRecovery: [Double] = []
        var daemonToRecovery: [Double] = []
        var incarnation = 1
        /// Node 3 back: its corosync too if it went.
        func restart(corosync: Bool) {
            if corosync { do { try ring?.start(3) } catch { fail("\(error)") } }
            incarnation += 1
            cluster.restart(3, incarnation: incarnation)
            for node in 1...3 { cluster.waitForView(at: node, of: cluster.names) }
        }
        for _ in 1...rounds {
            cluster.skipLogs()
            let killed = ContinuousClock.now
            ring?.kill(3)
            cluster.kill(3)
            var view = killed
            var done = killed
            for node in 1...2 { view = max(view, cluster.waitForView(at: node, of: ["1", "2"])) }
            for node in 1...2 { done = max(done, cluster.waitForRecoveryDone(at: node).at) }
            toView.append(MembershipScenarios.seconds(view - killed))
            toRecovery.append(MembershipScenarios.seconds(done - killed))
            restart(corosync: true)
            if ring != nil {
                cluster.skipLogs()
                let killed = cluster.kill(3)
                var done = killed
                for node in 1...2 { cluster.waitForView(at: node, of: ["1", "2"]) }
                for node in 1...2 { done = max(done, cluster.waitForRecoveryDone(at: node).at) }
                daemonToRecovery.append(MembershipScenarios.seconds(done - killed))
                restart(corosync: false)
            }
        }
        var result = """
            {"provider": "\(setup.name)", "node_kill_to_view_ms": \(MembershipScenarios.stats(toView)), \
            "node_kill_to_recovery_done_ms": \(MembershipScenarios.stats(toRecovery))
            """
        if !daemonToRecovery.isEmpty {
            result += ", \"dlmd_kill_to_recovery_done_ms\": \(MembershipScenarios.stats(daemonToRecovery))"
        }
        return result + "}"
    }
}
