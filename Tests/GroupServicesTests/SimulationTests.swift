import DLMTestSupport
import Foundation
import GroupServices
import Testing

// The deterministic simulation: each seed builds a cluster of 2 to 9 nodes and runs it through a chaotic phase
// (message loss, duplication, delays and reordering, partitions and heals, crashes and restarts, failing fences)
// while the nodes multicast, enter barriers and join and leave process groups; then the network heals and every
// node restarts; then one node crashes. `InvariantChecker` checks every effect and every step; at the end the
// cluster must have converged, detected the crash in time, and delivered every message of a live sender.
//
// - DLM_SIM_SEEDS: how many seeds (default 1000) from DLM_SIM_FIRST_SEED (default 1), DLM_SIM_SEED: replay one seed
//   (with DLM_SIM_TRACE=1 it prints every event).
// - `make sim SEEDS=20000` runs many.

enum SimulationRun {
    static let chunks = 8

    static var seeds: [UInt64] {
        let environment = ProcessInfo.processInfo.environment
        if let seed = environment["DLM_SIM_SEED"].flatMap(UInt64.init) { return [seed] }
        let count = environment["DLM_SIM_SEEDS"].flatMap(Int.init) ?? 1000
        let first = environment["DLM_SIM_FIRST_SEED"].flatMap(UInt64.init) ?? 1
        return (0..<UInt64(count)).map { $0 + first }
    }

    /// Runs one seed; returns the first violation, with the end of the trace.
    static func run(seed: UInt64, trace: Bool = false) -> String? {
        var rng = SplitMix64(seed: seed &* 0x2545_F491_4F6C_DD1D)
        let count = Int.random(in: 2...9, using: &rng)
        let twoNode = count == 2
        // (`auto_tie_breaker` on even clusters of four or more in a third of the seeds, drawn from the seed alone, so
        // that every other seed runs as it did before it existed.)
        let settings = Settings(
            nodes: count, twoNode: twoNode, waitForAll: !twoNode && Bool.random(using: &rng),
            autoTieBreaker: count >= 4 && count % 2 == 0 && seed % 3 == 0)
        let cluster = SimulatedCluster(settings: settings, seed: seed)
        cluster.tracesEverything = trace
        // In a third of the seeds a fence reports success but leaves its target running, cut off from nothing:
        // the fenced life goes on talking to the others, and no primary view may take it back.
        // Not with `two_node`: its two nodes race to fence each other and the fence decides (majorities do not
        // intersect), so a fence that lies leaves two primary views (seed 15325).
        cluster.fenceStopsNode = Int.random(in: 0..<3, using: &rng) != 0 || twoNode
        let nodes = settings.nodes
        var payload = 0
        var appOps = true

        func applicationStep() {
            guard appOps, let node = cluster.liveNodes.randomElement(using: &rng) else { return }
            let roll = Int.random(in: 0..<100, using: &rng)
            payload += 1
            switch roll {
            case 0..<55: cluster.input(node, .multicast(payload: Array("m\(payload)".utf8), group: nil))
            case 55..<65: cluster.input(node, .multicast(payload: Array("g\(payload)".utf8), group: "g\(roll % 2)"))
            case 65..<75: cluster.input(node, .joinGroup("g\(roll % 2)"))
            case 75..<80: cluster.input(node, .leaveGroup("g\(roll % 2)"))
            default: cluster.input(node, .enterBarrier("b\(roll % 2)"))
            }
        }

        // Start, with the nodes a little apart.
        for node in nodes {
            cluster.run(until: UInt64.random(in: 0...100, using: &rng) * ms)
            cluster.start(node)
        }
        // Chaos.
        let chaosEnd: UInt64 = 5000 * ms
        while cluster.now < chaosEnd {
            cluster.run(for: UInt64.random(in: 10...60, using: &rng) * ms)
            applicationStep()
            guard Int.random(in: 0..<100, using: &rng) < 4 else { continue }
            switch Int.random(in: 0..<8, using: &rng) {
            case 0:
                if cluster.liveNodes.count > 1, let node = cluster.liveNodes.randomElement(using: &rng) {
                    cluster.crash(node)
                }
            case 1:
                if let node = nodes.filter({ !cluster.nodes[$0]!.alive }).randomElement(using: &rng) {
                    cluster.start(node)
                }
            case 2:
                let shuffled = nodes.shuffled(using: &rng)
                let cut = Int.random(in: 1..<max(2, count), using: &rng)
                cluster.partition([Array(shuffled[..<cut]), Array(shuffled[cut...])])
            case 3: cluster.heal()
            case 4: cluster.loss = [0, 0.05, 0.2, 0.5].randomElement(using: &rng)!
            case 5: cluster.duplication = [0, 0.05, 0.3].randomElement(using: &rng)!
            case 6: cluster.delay = [1 * ms...5 * ms, 1 * ms...40 * ms, 5 * ms...200 * ms].randomElement(using: &rng)!
            default: cluster.fenceFailure = [0, 0.3, 0.8].randomElement(using: &rng)!
            }
            if cluster.checker.violation != nil { break }
        }
        // Healthy: every node up, the network whole and fast, fences work.
        cluster.heal()
        cluster.loss = 0
        cluster.delay = 1 * ms...20 * ms
        cluster.fenceFailure = 0
        cluster.fenceStopsNode = true
        cluster.fenceDelay = 1 * ms...30 * ms
        // Nodes fenced by view changes decided before the heal come back too (a fence reboots a node); a life whose
        // fence left it running is rebooted now: one the checker knows a primary view left out, and one that a live
        // member knows was fenced before a primary view.
        func knownFenced(_ life: Member) -> Bool {
            cluster.checker.fenced.contains(life)
                || cluster.liveNodes.contains { node in
                    cluster.nodes[node]!.machine.fencedIncarnation(of: life.node).map { life.incarnation <= $0 }
                        ?? false
                }
        }
        for node in cluster.liveNodes where knownFenced(cluster.nodes[node]!.machine.me) { cluster.crash(node) }
        let settleEnd = cluster.now + 4500 * ms
        while cluster.now < settleEnd && cluster.checker.violation == nil {
            if cluster.now + 2500 * ms < settleEnd {
                for node in nodes where !cluster.nodes[node]!.alive { cluster.start(node) }
            }
            cluster.run(for: UInt64.random(in: 10...60, using: &rng) * ms)
            applicationStep()
        }
        appOps = false
        cluster.run(for: 500 * ms)
        var problem = cluster.checker.violation
        if problem == nil { problem = converged(cluster, primary: cluster.liveNodes.count == count) }
        // Detection: a crashed node is out of every live node's view within the detection time.
        if problem == nil {
            let victim = nodes.randomElement(using: &rng)!
            let victimMember = cluster.nodes[victim]!.machine.me
            let wasPrimary = cluster.nodes[nodes.first { $0 != victim && cluster.nodes[$0]!.alive } ?? victim]!
                .machine.isPrimary
            cluster.crash(victim)
            let stillQuorate = InvariantChecker.hasQuorum(cluster.liveNodes, settings)
            cluster.run(for: settings.detectionTime)
            problem = cluster.checker.violation
            for node in cluster.liveNodes where problem == nil {
                if let view = cluster.nodes[node]!.machine.view, view.contains(victimMember) {
                    problem =
                        "detection: \(node) still has \(victimMember) in \(view) \(settings.detectionTime / ms) ms after its crash"
                }
            }
            cluster.run(for: 500 * ms)
            if problem == nil {
                problem = cluster.checker.violation ?? converged(cluster, primary: wasPrimary && stillQuorate)
            }
            if problem == nil { problem = selfDelivery(cluster) }
        }
        guard let problem else { return nil }
        return "\(problem)\n  last events:\n    \(cluster.trace.suffix(25).joined(separator: "\n    "))"
    }

    /// Every live node is in the same view, of every live node, primary if expected.
    static func converged(_ cluster: SimulatedCluster, primary: Bool) -> String? {
        let live = cluster.liveNodes.map { cluster.nodes[$0]!.machine }
        let expected = live.map(\.me).sorted()
        for machine in live {
            guard let view = machine.view, view.members == expected, !machine.isBlocked else {
                return "not converged: \(machine.me) has \(machine.view.map(\.description) ?? "no view")"
                    + "\(machine.isBlocked ? " (blocked)" : ""), live \(expected)"
            }
            if primary && !machine.isPrimary { return "not converged: \(machine.me) has \(view), not primary" }
        }
        return nil
    }

    /// Every message a live node multicast to the whole view was delivered to it.
    static func selfDelivery(_ cluster: SimulatedCluster) -> String? {
        for node in cluster.liveNodes {
            let machine = cluster.nodes[node]!.machine
            if machine.pendingSubmissions > 0 {
                return "self-delivery: \(machine.me) still has \(machine.pendingSubmissions) undelivered messages"
            }
        }
        return nil
    }
}

@Suite struct SimulationTests {
    @Test(arguments: 0..<SimulationRun.chunks)
    func simulation(chunk: Int) {
        let seeds = SimulationRun.seeds.enumerated().filter { $0.offset % SimulationRun.chunks == chunk }.map(\.element)
        let trace = ProcessInfo.processInfo.environment["DLM_SIM_TRACE"] == "1"
        for seed in seeds {
            if let problem = SimulationRun.run(seed: seed, trace: trace) {
                Issue.record(
                    "seed \(seed): \(problem)\n  replay: DLM_SIM_SEED=\(seed) swift test --filter GroupServicesTests.SimulationTests"
                )
                return
            }
        }
    }

    /// Seeds beyond `make test`'s range that found a fault, each run on every `make test`. 9605: two coordinators'
    /// primary views at once after a heal (lying fences); the later one fenced the other's members as candidates but
    /// did not count their lives as over, and the view after it took them back. 15325: the simulation's, a `two_node`
    /// cluster with fences that lied (both nodes went on, each in a primary view of its own).
    @Test(arguments: [9605, 15325] as [UInt64])
    func seedThatOnceFailed(_ seed: UInt64) {
        let problem = SimulationRun.run(seed: seed)
        #expect(problem == nil, "seed \(seed): \(problem ?? "")")
    }
}
