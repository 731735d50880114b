import DLMClient
import DLMTestSupport
import Foundation
import Testing

/// The cluster tests that hold for both membership providers, run against each: three nodes, each in a network
/// namespace of its own on one bridge; with the corosync provider, a corosync 3 in each namespace too (with its
/// own /run and /var/lib/corosync, `token: 1000`), and dlmd taking membership, quorum and its node list from it.
/// Killing a node kills its dlmd and, with corosync, its corosync: a node failure. Needs root and `ip netns`
/// (and corosync for its runs); skipped otherwise.
@Suite(.serialized, .timeLimit(.minutes(3)))
struct ProviderTests {
    enum Provider: String, CaseIterable, CustomTestStringConvertible, Sendable {
        case builtIn = "built-in", corosync
        var testDescription: String { rawValue }
    }

    static let canRunCorosync: Bool = {
        Network.canBeMade && FileManager.default.isExecutableFile(atPath: CorosyncRing.executable)
    }()

    /// A running cluster of three nodes on `provider`.
    final class Nodes: @unchecked Sendable {
        let network: Network
        let ring: CorosyncRing?
        let cluster: TestCluster

        init(_ provider: Provider) throws {
            network = try Network(nodes: 3)
            do {
                ring = provider == .corosync ? try CorosyncRing(network: network) : nil
                do {
                    cluster = try PartitionTests.startCluster(
                        on: network, corosyncPort: provider == .corosync ? 7100 : nil)
                } catch {
                    ring?.stopAll()
                    throw error
                }
            } catch {
                network.remove()
                throw error
            }
        }

        /// The node fails: its dlmd and its corosync are killed.
        func kill(_ node: Int) {
            cluster.kill(node)
            ring?.kill(node)
        }

        /// The node comes back: corosync, then dlmd.
        func start(_ node: Int) throws {
            try ring?.start(node)
            try cluster.start(node)
        }

        func stop() {
            cluster.stopAll()
            ring?.stopAll()
            network.remove()
        }
    }

    static func run(_ provider: Provider, _ body: (Nodes) async throws -> Void) async throws {
        if provider == .corosync && !canRunCorosync {
            print("skipped on corosync: needs corosync (\(CorosyncRing.executable))")
            return
        }
        let nodes = try Nodes(provider)
        defer { nodes.stop() }
        try await body(nodes)
    }

    /// A failed node is fenced before the survivors' primary view, and its EX goes to a waiter on another node with
    /// a higher fencing token; back, it joins as its next incarnation. A dlmd killed alone (its node's corosync
    /// running on) is a node failure too.
    @Test(
        .enabled(if: Network.canBeMade, "skipped: needs root and ip netns"), arguments: Provider.allCases)
    func aFailedNodeIsFencedAndItsLockGoesToAWaiter(_ provider: Provider) async throws {
        try await Self.run(provider) { nodes in
            let cluster = nodes.cluster
            let status = try await ClusterDaemonTests.status(cluster, 1)
            #expect(status.cluster?.nodes.map(\.address) == nodes.network.addresses.map { "\($0):7100" })
            #expect(status.quorate && status.view?.members == [1, 2, 3])

            let one = try await DLMConnection.connect(socketPath: cluster.socket(1)).openLockspace("p")
            let three = try await DLMConnection.connect(socketPath: cluster.socket(3)).openLockspace("p")
            let (told, teller) = AsyncStream<Void>.makeStream()
            let held = try await three.lock(
                "a", mode: .ex, alwaysFencingToken: true, onBlocking: { _ in teller.yield() })
            #expect(try await DistributedLockTests.tryLock(one, "a", .ex) == .tryAgain)
            let waiter = Task { try await one.lock("a", mode: .ex) }
            for await _ in told { break }  // the holder was told that node 1's request waits

            nodes.kill(3)
            for node in 1...2 { try cluster.waitForView(at: node, members: "1,2", primary: true) }
            #expect(cluster.fenced == [3])
            let granted = try await waiter.value
            #expect(granted.mode == .ex && granted.fencingToken > held.fencingToken)

            try nodes.start(3)
            for node in 1...3 { try cluster.waitForView(at: node, members: "1,2,3#2", primary: true) }
            #expect(cluster.fenced == [3])

            cluster.kill(2)
            for node in [1, 3] { try cluster.waitForView(at: node, members: "1,3#2", primary: true) }
            #expect(cluster.fenced == [3, 2])
            try cluster.start(2)
            for node in 1...3 { try cluster.waitForView(at: node, members: "1,2#2,3#2", primary: true) }
            try await granted.unlock()
        }
    }

    /// Two of three nodes fail: the survivor has no quorum and holds a request (neither granted nor refused); once a
    /// node is back, the other is fenced before the primary view, and the request is granted.
    @Test(
        .enabled(if: Network.canBeMade, "skipped: needs root and ip netns"), arguments: Provider.allCases)
    func quorumLostAndRegained(_ provider: Provider) async throws {
        try await Self.run(provider) { nodes in
            let cluster = nodes.cluster
            let one = try await DLMConnection.connect(socketPath: cluster.socket(1)).openLockspace("q")
            nodes.kill(2)
            nodes.kill(3)
            try cluster.waitForView(at: 1, members: "1", primary: false)
            let held = Task { try await one.lock("r", mode: .ex, flags: .noQueue) }
            var status = try await ClusterDaemonTests.status(cluster, 1)
            while status.recovery.heldRequests < 1 { status = try await ClusterDaemonTests.status(cluster, 1) }
            #expect(!status.quorate && status.recovery.waitingFor == ["quorum"])

            try nodes.start(2)
            // Node 3 is fenced. Node 2 is too on corosync, whose quorum comes back with node 2's corosync, before its
            // dlmd: node 1 forms a primary view alone first. On the built-in provider node 2's next life in the view
            // says its last one is over.
            for node in 1...2 { try cluster.waitForView(at: node, members: "1,2#2", primary: true) }
            #expect(cluster.fenced.contains(3) && Set(cluster.fenced).isSubset(of: [2, 3]), "\(cluster.fenced)")
            if provider == .builtIn { #expect(cluster.fenced == [3]) }
            let granted = try await held.value
            #expect(granted.mode == .ex)
            try await granted.unlock()
        }
    }
}

/// What only the corosync provider has: dlmd's connection to corosync.
@Suite(.serialized, .timeLimit(.minutes(3)))
struct CorosyncTests {
    static let canRun = ProviderTests.canRunCorosync

    /// corosync itself goes on two nodes: their dlmd lose their connection and hold every request; node 1 loses
    /// quorum (votequorum's) and holds too. One corosync back gives node 1 quorum again: it fences the two lost
    /// nodes before its primary view. The lost dlmd restarted joins as its next incarnation.
    @Test(.enabled(if: CorosyncTests.canRun, "skipped: needs root, ip netns and corosync"))
    func corosyncGoingAwayHoldsItsDaemons() async throws {
        try await ProviderTests.run(.corosync) { nodes in
            let (ring, cluster) = (nodes.ring!, nodes.cluster)
            ring.kill(2)
            ring.kill(3)
            try cluster.waitForView(at: 1, members: "1", primary: false)
            for node in 2...3 { try cluster.waitForView(at: node, members: "\(node)", primary: false) }
            let lost = try await ClusterDaemonTests.status(cluster, 2)
            #expect(!lost.quorate && lost.recovery.waitingFor.contains { $0.hasPrefix("corosync (") })
            #expect(cluster.fenced.isEmpty)

            try ring.start(2)
            try cluster.waitForView(at: 1, members: "1", primary: true)
            #expect(Set(cluster.fenced) == [2, 3])

            cluster.kill(2)
            try cluster.start(2)
            for node in 1...2 { try cluster.waitForView(at: node, members: "1,2#2", primary: true) }
        }
    }
}

extension CorosyncTests {
    /// Node 3's link is cut: corosync forms two rings. Each side waits for votequorum to drop the other before it
    /// believes its quorum: node 3 has none (a view of itself, not primary), the majority fences node 3 and goes on.
    /// Healed, corosync merges the rings and puts node 3's dlmd (the same process) back in the group, but that life
    /// was fenced: it is not taken back, and it says it must be restarted. Restarted, it joins as its next life.
    @Test(.enabled(if: CorosyncTests.canRun, "skipped: needs root, ip netns and corosync"))
    func aFencedLifeIsNotTakenBackWhenCorosyncMergesAgain() async throws {
        try await ProviderTests.run(.corosync) { nodes in
            let (network, cluster) = (nodes.network, nodes.cluster)
            try network.cut(3)
            for node in 1...2 { try cluster.waitForView(at: node, members: "1,2", primary: true) }
            try cluster.waitForView(at: 3, members: "3", primary: false)
            #expect(cluster.fenced == [3])

            try network.heal(3)
            // The merged group's next view at the majority leaves the fenced life out.
            for node in 1...2 { try cluster.waitForView(at: node, members: "1,2", primary: true) }
            // Node 3 says so when it learns it (a line on its standard output), then in its status.
            try cluster.log(3).wait(for: "node 3's life fenced", timeout: 30) { $0.contains("this life was fenced") }
            let isolated = try await ClusterDaemonTests.status(cluster, 3)
            #expect(isolated.recovery.waitingFor.contains("restart (this life was fenced)"), "\(isolated.recovery)")
            #expect(!isolated.quorate)
            #expect(isolated.view?.members == [3])

            cluster.kill(3)
            try cluster.start(3)
            for node in 1...3 { try cluster.waitForView(at: node, members: "1,2,3#2", primary: true) }
            #expect(cluster.fenced == [3])
        }
    }

    /// A corosync that stops answering (SIGSTOP) does not hold dlmd's clean stop: dlmd gives up leaving the CPG group
    /// after a few seconds and exits.
    @Test(.enabled(if: CorosyncTests.canRun, "skipped: needs root, ip netns and corosync"))
    func aHungCorosyncDoesNotHoldDlmdsStop() throws {
        let network = try Network(nodes: 1)
        defer { network.remove() }
        let ring = try CorosyncRing(network: network)
        defer { ring.stopAll() }
        let cluster = try TestCluster(nodes: 1, timeouts: nil, corosyncPort: 7100, launcher: network.launcher)
        defer { cluster.stopAll() }
        try cluster.start(1)
        try cluster.waitForView(at: 1, members: "1", primary: true)
        let corosync = ring.processes[1]!.process.processIdentifier
        kill(corosync, SIGSTOP)
        defer { kill(corosync, SIGCONT) }
        let daemon = cluster.daemons[1]!
        let exited = DispatchSemaphore(value: 0)
        daemon.process.terminationHandler = { _ in exited.signal() }
        kill(daemon.pid, SIGTERM)
        #expect(exited.wait(timeout: .now() + 60) == .success, "dlmd did not exit while corosync was stopped")
    }

    /// dlmd in `network`'s node `node` with `cluster`'s config and `arguments`, run to its end: its exit status and
    /// what it printed on standard error.
    static func runToEnd(in network: Network, node: Int, _ cluster: TestCluster, _ arguments: [String] = []) throws
        -> (status: Int32, error: String)
    {
        let run = try network.runToEnd(
            in: node,
            [
                Daemon.executable, "--config", cluster.configPath, "--socket", cluster.directory + "/refused.sock",
                "--data-dir", cluster.directory + "/refused",
            ] + arguments)
        return (run.status, run.error)
    }

    /// Without a corosync to ask, dlmd refuses to start and says why; with one, a `--node-id` that is not corosync's
    /// id of the node is refused too.
    @Test(.enabled(if: CorosyncTests.canRun, "skipped: needs root, ip netns and corosync"))
    func dlmdRefusesToStartWithoutCorosyncOrWithAnotherNodeID() throws {
        let network = try Network(nodes: 1)
        defer { network.remove() }
        let cluster = try TestCluster(nodes: 1, timeouts: nil, corosyncPort: 7100)
        let alone = try Self.runToEnd(in: network, node: 1, cluster)
        #expect(alone.status != 0)
        #expect(
            alone.error.contains("reading corosync's nodelist (cmap)") && alone.error.contains("is corosync running?"),
            "\(alone.error)")

        let ring = try CorosyncRing(network: network)
        defer { ring.stopAll() }
        let other = try Self.runToEnd(in: network, node: 1, cluster, ["--node-id", "2"])
        #expect(other.status != 0)
        #expect(
            other.error.contains("--node-id 2 (or dlmd.node_id) is not corosync's id of this node, 1"), "\(other.error)"
        )
    }
}

extension CorosyncTests {
    /// Each lockspace's group is a CPG group too, `dlmd:CLUSTER:ls:NAME` (as dlm_controld's `dlm:ls:NAME`), so that
    /// corosync's tools show which nodes use a lockspace: nodes 1 and 2 open `shared`, node 3 `solo`; node 2 releases
    /// `shared` and leaves its CPG group; a failed node leaves every group, and back as its next life it joins the
    /// groups of the lockspace its store kept and of one its client opens.
    @Test(.enabled(if: CorosyncTests.canRun, "skipped: needs root, ip netns and corosync"))
    func eachLockspaceIsACPGGroup() async throws {
        try await ProviderTests.run(.corosync) { nodes in
            let cluster = nodes.cluster
            var connections: [Int: DLMConnection] = [:]
            for node in 1...3 { connections[node] = try await DLMConnection.connect(socketPath: cluster.socket(node)) }
            _ = try await connections[1]!.openLockspace("shared")
            let shared = try await connections[2]!.openLockspace("shared")
            _ = try await connections[3]!.openLockspace("solo")
            try Self.waitForGroups(
                nodes, ["dlmd:test": [1, 2, 3], "dlmd:test:ls:shared": [1, 2], "dlmd:test:ls:solo": [3]])

            try await connections[2]!.releaseLockspace(shared)
            try Self.waitForGroups(
                nodes, ["dlmd:test": [1, 2, 3], "dlmd:test:ls:shared": [1], "dlmd:test:ls:solo": [3]])

            await connections[3]!.close()
            nodes.kill(3)
            for node in 1...2 { try cluster.waitForView(at: node, members: "1,2", primary: true) }
            try Self.waitForGroups(nodes, ["dlmd:test": [1, 2], "dlmd:test:ls:shared": [1]])

            try nodes.start(3)
            for node in 1...3 { try cluster.waitForView(at: node, members: "1,2,3#2", primary: true) }
            let again = try await DLMConnection.connect(socketPath: cluster.socket(3))
            _ = try await again.openLockspace("shared")
            try Self.waitForGroups(
                nodes, ["dlmd:test": [1, 2, 3], "dlmd:test:ls:shared": [1, 3], "dlmd:test:ls:solo": [3]])
            await again.close()
            for connection in connections.values { await connection.close() }
        }
    }

    /// `ClusterDaemonTests.aFenceAcknowledgedByAnOperatorEndsTheWait` on corosync: node 3 fails (dlmd and corosync),
    /// its fence keeps failing, and `dlmtool fence-ack 3` to node 1, which fences it, ends the wait.
    @Test(.enabled(if: CorosyncTests.canRun, "skipped: needs root, ip netns and corosync"))
    func aFenceAcknowledgedByAnOperatorEndsTheWait() async throws {
        try await ProviderTests.run(.corosync) { nodes in
            try await ClusterDaemonTests.fenceAcknowledgedByAnOperator(nodes.cluster) { nodes.kill($0) }
        }
    }

    /// The CPG groups and their nodes, as `corosync-cpgtool` in node 1's namespace lists them.
    static func cpgGroups(_ nodes: ProviderTests.Nodes) throws -> [String: [Int]] {
        let run = try nodes.network.runToEnd(in: 1, ["corosync-cpgtool"])
        guard run.status == 0 else { throw SupportError("corosync-cpgtool failed: \(run.error)") }
        let text = run.output
        // A group's name on a line of its own, then a line per process: pid, node id (and its address).
        var groups: [String: [Int]] = [:]
        var current: String?
        for line in text.split(separator: "\n") where !line.hasPrefix("Group Name") {
            if line.first?.isWhitespace == false {
                current = String(line)
                groups[current!] = []
            } else if let current,
                let node = line.split(whereSeparator: \.isWhitespace).dropFirst().first.flatMap({
                    Int($0)
                })
            {
                groups[current]!.append(node)
            }
        }
        return groups.mapValues { $0.sorted() }
    }

    /// Polls corosync-cpgtool until it lists `expected`, for at most 30 s (a hang detector): a change to a CPG group
    /// follows the run that decides it on dlmd's corosync thread, and a failed node leaves once corosync drops it,
    /// neither with an event a test can await. The polls are 100 ms apart: a tool started back to back would take a
    /// vCPU from the corosync and dlmd whose change it waits for (and a starved corosync misses its token).
    static func waitForGroups(_ nodes: ProviderTests.Nodes, _ expected: [String: [Int]]) throws {
        let deadline = Date().addingTimeInterval(30)
        var groups = try cpgGroups(nodes)
        while groups != expected && Date() < deadline {
            Thread.sleep(forTimeInterval: 0.1)
            groups = try cpgGroups(nodes)
        }
        #expect(groups == expected)
    }
}
