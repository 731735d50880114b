import GroupServices
import Testing

/// The pure machines driven step by step over a simulated network with a fixed delay of 1 ms and no loss, and what
/// they did, as a reader would tell it (after etcd raft's interaction tests).
@Suite struct TranscriptTests {
    func cluster(_ settings: Settings) -> SimulatedCluster {
        let cluster = SimulatedCluster(settings: settings, seed: 1, tickInterval: 10 * ms)
        cluster.recordsTranscript = true
        return cluster
    }

    /// Every node started and in one view, with fences that report success but leave their node running.
    func runningWithLyingFences(_ nodes: Int) -> SimulatedCluster {
        let cluster = cluster(Settings(nodes: nodes))
        cluster.fenceStopsNode = false
        for node in cluster.settings.nodes { cluster.start(node) }
        cluster.run(for: 300 * ms)
        _ = take(cluster)
        return cluster
    }

    /// The view lines of other nodes that name the first life of `node` (printed "3", where a later one is "3#2").
    func viewsNaming(firstLifeOf node: NodeID, _ lines: [String]) -> [String] {
        lines.filter { line in
            guard !line.hasPrefix("\(node):"), let open = line.firstIndex(of: "{"), let close = line.firstIndex(of: "}")
            else { return false }
            return line[line.index(after: open)..<close].split(separator: ",").contains("\(node)")
        }
    }

    func take(_ cluster: SimulatedCluster, _ matching: (String) -> Bool = { _ in true }) -> [String] {
        defer { cluster.transcript = [] }
        #expect(cluster.checker.violation == nil)
        return cluster.transcript.filter(matching)
    }

    @Test func threeNodesFormAViewAndDropASilentNode() {
        let cluster = cluster(Settings(nodes: 3))
        for node in cluster.settings.nodes { cluster.start(node) }
        cluster.run(for: 300 * ms)
        #expect(
            take(cluster) == [
                "1: view 1@1 {1,2,3} primary", "2: view 1@1 {1,2,3} primary", "3: view 1@1 {1,2,3} primary",
            ])

        // Node 3 falls silent: suspected after 1 s, fenced (it was in the primary view), then view 2.
        cluster.crash(3)
        cluster.run(for: 700 * ms)
        #expect(take(cluster).isEmpty)
        cluster.run(for: 800 * ms)
        #expect(take(cluster) == ["1: fence 3", "3 fenced", "1: view 2@1 {1,2} primary", "2: view 2@1 {1,2} primary"])

        // It comes back as a new incarnation, a new member.
        cluster.start(3)
        cluster.run(for: 300 * ms)
        #expect(
            take(cluster) == [
                "1: view 3@1 {1,2,3#2} primary", "2: view 3@1 {1,2,3#2} primary", "3: view 3@1 {1,2,3#2} primary",
            ])
    }

    /// Lock traffic shows a node alive as its heartbeats do (they travel behind it on one connection): nodes
    /// whose group messages are held up while their frames of lock traffic keep arriving suspect nobody. Frames
    /// from a life that is not the one known do not count: once only those come, the silent node is fenced.
    @Test func lockTrafficKeepsANodeAlive() {
        let cluster = cluster(Settings(nodes: 3))
        for node in cluster.settings.nodes { cluster.start(node) }
        cluster.run(for: 300 * ms)
        _ = take(cluster)
        cluster.partition([[1, 2], [3]])
        let lives = [1, 2, 3].map { cluster.nodes[$0]!.machine.me }
        func lockTraffic(from third: Member) {
            cluster.input(1, .heard(from: third))
            cluster.input(2, .heard(from: third))
            cluster.input(3, .heard(from: lives[0]))
            cluster.input(3, .heard(from: lives[1]))
        }
        for _ in 0..<30 {
            lockTraffic(from: lives[2])
            cluster.run(for: 100 * ms)
        }
        #expect(take(cluster).isEmpty, "no suspicion in 3 s of lock traffic alone")

        for _ in 0..<15 {
            lockTraffic(from: Member(node: 3, incarnation: lives[2].incarnation + 1))
            cluster.run(for: 100 * ms)
        }
        let lines = take(cluster)
        #expect(lines.contains("1: fence 3") && lines.contains("1: view 2@1 {1,2} primary"), "\(lines)")
    }

    @Test func aMinorityKnowsItIsNotPrimaryAndIsFenced() {
        let cluster = cluster(Settings(nodes: 3))
        for node in cluster.settings.nodes { cluster.start(node) }
        cluster.run(for: 300 * ms)
        _ = take(cluster)
        cluster.partition([[1, 2], [3]])
        cluster.run(for: 1500 * ms)
        let lines = take(cluster)
        // Node 3 alone forms a view that is not primary; nodes 1 and 2 fence it before their primary view.
        #expect(lines.contains("3: view 2@3 {3}"))
        #expect(Array(lines.drop { $0 != "1: fence 3" }.prefix(2)) == ["1: fence 3", "3 fenced"])
        #expect(lines.suffix(2) == ["1: view 2@1 {1,2} primary", "2: view 2@1 {1,2} primary"])
    }

    /// A node cut off and fenced, whose fence left it running, is not taken back when the network heals: its
    /// state is stale. It comes back only as a new incarnation, after a restart.
    @Test func aFencedNodeThatKeepsRunningComesBackOnlyAfterARestart() {
        let cluster = runningWithLyingFences(3)
        cluster.partition([[1, 2], [3]])
        cluster.run(for: 1500 * ms)
        let cut = take(cluster)
        #expect(cut.contains("3 fenced") && cut.contains("1: view 2@1 {1,2} primary"))
        #expect(cut.contains("3: view 2@3 {3}"))

        cluster.heal()
        cluster.run(for: 5000 * ms)
        let healed = take(cluster)
        #expect(viewsNaming(firstLifeOf: 3, healed).isEmpty, "\(healed)")
        #expect(!healed.contains { $0.hasPrefix("3:") && $0.hasSuffix("primary") }, "\(healed)")

        cluster.crash(3)
        cluster.start(3)
        cluster.run(for: 500 * ms)
        let restarted = take(cluster)
        #expect(restarted.contains { $0.hasPrefix("1: view") && $0.hasSuffix("{1,2,3#2} primary") }, "\(restarted)")
        #expect(restarted.contains { $0.hasPrefix("3: view") && $0.hasSuffix("{1,2,3#2} primary") }, "\(restarted)")
    }

    /// The fenced life stays out when the members that fenced it restart one by one: each keeps it in its stored
    /// state, not only in memory.
    @Test func aFencedLifeStaysOutAcrossRestartsOfTheOthers() {
        let cluster = runningWithLyingFences(3)
        cluster.partition([[1, 2], [3]])
        cluster.run(for: 1500 * ms)
        #expect(take(cluster).contains("3 fenced"))
        cluster.heal()
        for node: NodeID in [1, 2] {
            cluster.crash(node)
            cluster.start(node)
            cluster.run(for: 3000 * ms)
        }
        let lines = take(cluster)
        #expect(viewsNaming(firstLifeOf: 3, lines).isEmpty, "\(lines)")
        #expect(lines.contains { $0.hasPrefix("1: view") && $0.hasSuffix("{1#2,2#2} primary") }, "\(lines)")
    }

    @Test func orderedMessagesBarriersAndGroups() {
        let cluster = cluster(Settings(nodes: 3))
        for node in cluster.settings.nodes { cluster.start(node) }
        cluster.run(for: 300 * ms)
        _ = take(cluster)

        cluster.input(2, .multicast(payload: Array("a".utf8), group: nil))
        cluster.input(3, .multicast(payload: Array("b".utf8), group: nil))
        cluster.run(for: 50 * ms)
        // Total order, the sender included: "a" then "b" everywhere.
        #expect(
            take(cluster).sorted() == [
                "1: deliver a from 2", "1: deliver b from 3", "2: deliver a from 2", "2: deliver b from 3",
                "3: deliver a from 2", "3: deliver b from 3",
            ])

        cluster.input(1, .joinGroup("locks"))
        cluster.input(3, .joinGroup("locks"))
        cluster.run(for: 50 * ms)
        #expect(take(cluster).filter { $0.hasPrefix("2:") } == ["2: 1 joined locks", "2: 3 joined locks"])
        cluster.input(2, .multicast(payload: Array("c".utf8), group: "locks"))
        cluster.run(for: 50 * ms)
        #expect(take(cluster) == ["1: deliver c from 2", "3: deliver c from 2"])

        // A barrier completes once all three entered, at all three.
        cluster.input(1, .enterBarrier("start"))
        cluster.input(2, .enterBarrier("start"))
        cluster.run(for: 50 * ms)
        #expect(take(cluster).isEmpty)
        cluster.input(3, .enterBarrier("start"))
        cluster.run(for: 50 * ms)
        #expect(take(cluster).count == 3)

        // A view change aborts a pending barrier; node 3 leaves group "locks" with the view.
        cluster.input(1, .enterBarrier("stop"))
        cluster.run(for: 50 * ms)
        cluster.crash(3)
        cluster.run(for: 1500 * ms)
        #expect(
            take(cluster) == [
                "1: fence 3", "3 fenced", "1: barrier stop aborted in 1@1", "1: view 2@1 {1,2} primary",
                "1: 3 left locks (view change)", "2: view 2@1 {1,2} primary", "2: 3 left locks (view change)",
            ])
    }

    /// `auto_tie_breaker`: four nodes split two and two. Without it neither half is primary; with it the half with
    /// node 1 fences the other half and goes on, and the other half knows it is not primary.
    @Test func aTieBreakerKeepsTheHalfWithTheLowestNode() {
        for tieBreaker in [false, true] {
            let cluster = cluster(Settings(nodes: 4, autoTieBreaker: tieBreaker))
            for node in cluster.settings.nodes { cluster.start(node) }
            cluster.run(for: 300 * ms)
            #expect(cluster.nodes[1]!.machine.isPrimary)
            _ = take(cluster)
            cluster.partition([[1, 2], [3, 4]])
            cluster.run(for: 2000 * ms)
            let lines = take(cluster)
            #expect(
                cluster.nodes[1]!.machine.isPrimary == tieBreaker && cluster.nodes[2]!.machine.isPrimary == tieBreaker)
            #expect(!cluster.nodes[3]!.machine.isPrimary && !cluster.nodes[4]!.machine.isPrimary)
            #expect(lines.contains("1: fence 3") == tieBreaker && lines.contains("1: fence 4") == tieBreaker)
            #expect(cluster.nodes[1]!.machine.view?.members.map(\.node) == [1, 2], "\(lines)")
            #expect(cluster.checker.violation == nil)
        }
    }

    @Test func twoNodeClusterSurvivesOneNodeAfterSeeingBoth() {
        let cluster = cluster(Settings(nodes: 2, twoNode: true))
        cluster.start(1)
        // Alone, it waits for the suspect timeout to hear from node 2 before it forms a view without it.
        cluster.run(for: cluster.settings.suspectTimeout - 10 * ms)
        #expect(take(cluster) == [])
        cluster.run(for: 300 * ms)
        // wait_for_all (implied by two_node): alone at first start, node 1 is not primary.
        #expect(take(cluster) == ["1: view 1@1 {1}"])
        cluster.start(2)
        cluster.run(for: 300 * ms)
        #expect(take(cluster) == ["1: view 2@1 {1,2} primary", "2: view 2@1 {1,2} primary"])
        cluster.crash(2)
        cluster.run(for: 1500 * ms)
        #expect(take(cluster) == ["1: fence 2", "2 fenced", "1: view 3@1 {1} primary"])
    }

    @Test func aFailingFenceIsRetriedNeverSkipped() {
        let cluster = cluster(Settings(nodes: 3))
        for node in cluster.settings.nodes { cluster.start(node) }
        cluster.run(for: 300 * ms)
        _ = take(cluster)
        cluster.fenceFailure = 1
        cluster.crash(3)
        cluster.run(for: 2000 * ms)
        let lines = take(cluster)
        #expect(lines.contains("1: fence 3 failed"))
        #expect(!lines.contains { $0.contains("view 2") })
        cluster.fenceFailure = 0
        cluster.run(for: 500 * ms)
        #expect(take(cluster).suffix(3) == ["3 fenced", "1: view 2@1 {1,2} primary", "2: view 2@1 {1,2} primary"])
    }

    /// `waitingFor` names what the membership waits on, for status reports: view agreement, fencing, quorum,
    /// barriers.
    @Test func waitingForNamesWhatMembershipWaitsOn() {
        let cluster = cluster(Settings(nodes: 3))
        cluster.start(1)
        #expect(cluster.nodes[1]!.machine.waitingFor == ["view agreement"])
        cluster.run(for: cluster.settings.suspectTimeout + 300 * ms)
        // Alone: a view of one, not primary.
        #expect(cluster.nodes[1]!.machine.waitingFor == ["quorum"])
        cluster.start(2)
        cluster.start(3)
        cluster.run(for: 300 * ms)
        #expect(cluster.nodes[1]!.machine.isPrimary)
        #expect(cluster.nodes[1]!.machine.waitingFor == [])
        cluster.input(2, .enterBarrier("b"))
        #expect(cluster.nodes[2]!.machine.waitingFor == ["barrier b"])
        cluster.input(1, .enterBarrier("b"))
        cluster.input(3, .enterBarrier("b"))
        cluster.run(for: 50 * ms)
        #expect(cluster.nodes[2]!.machine.waitingFor == [])

        cluster.fenceFailure = 1
        cluster.crash(3)
        cluster.run(for: 2000 * ms)
        #expect(cluster.nodes[1]!.machine.waitingFor == ["fencing node 3"])
        #expect(cluster.nodes[1]!.machine.fencing == [3])
        #expect(cluster.nodes[2]!.machine.waitingFor == ["view agreement"])
        cluster.fenceFailure = 0
        cluster.run(for: 500 * ms)
        #expect(cluster.nodes[1]!.machine.waitingFor == [])
        #expect(cluster.nodes[1]!.machine.fencing == [])
        #expect(cluster.nodes[2]!.machine.waitingFor == [])
    }
}
