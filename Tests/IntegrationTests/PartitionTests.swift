import DLMClient
import DLMTestSupport
import Foundation
import Testing

/// Three dlmd nodes, each in a network namespace of its own on one bridge; cutting one node's link partitions
/// the cluster for real (packets vanish, nothing is refused). Needs root and `ip netns`; skipped otherwise. The
/// fence command only records its argument, so the cut-off node keeps running, as with a fence device that
/// reports success without stopping the node.
@Suite(.serialized, .timeLimit(.minutes(3)))
struct PartitionTests {
    /// Three dlmd nodes, one in each namespace of `network`, started and agreed on a primary view of all three; with
    /// `corosyncPort`, on the corosync running in each namespace.
    static func startCluster(on network: Network, corosyncPort: Int? = nil) throws -> TestCluster {
        let cluster = try TestCluster(
            nodes: 3, timeouts: corosyncPort == nil ? TestCluster.quickTimeouts : nil,
            addresses: network.addresses.map { "\($0):7100" }, corosyncPort: corosyncPort,
            launcher: network.launcher)
        do {
            try cluster.startAll()
            for node in 1...3 { try cluster.waitForView(at: node, members: "1,2,3", primary: true) }
        } catch {
            cluster.stopAll()
            throw error
        }
        return cluster
    }

    @Test(
        .enabled(
            if: Network.canBeMade,
            "skipped: network namespaces cannot be made here (needs root and iproute2's ip netns)"))
    func partitionAndHeal() async throws {
        let network = try Network(nodes: 3)
        defer { network.remove() }
        let cluster = try Self.startCluster(on: network)
        defer { cluster.stopAll() }

        // Node 3 is cut off: the majority side goes on without it (after fencing it), node 3 loses quorum.
        try network.cut(3)
        for node in 1...2 { try cluster.waitForView(at: node, members: "1,2", primary: true) }
        try cluster.waitForView(at: 3, members: "3", primary: false)
        #expect(cluster.fenced.contains(3))
        let isolated = try await ClusterDaemonTests.status(cluster, 3)
        #expect(!isolated.quorate && isolated.recovery.waitingFor.contains("quorum"))
        let majority = try await ClusterDaemonTests.status(cluster, 1)
        #expect(majority.quorate && majority.view?.members == [1, 2])

        // Healed: node 3 hears the others again, but its life was fenced: it is not taken back (its state is
        // stale; a real fence would have stopped it), and it still says it has no quorum.
        try network.heal(3)
        var view = try await ClusterDaemonTests.status(cluster, 3)
        while (view.cluster?.nodes[0].lastHeardMilliseconds ?? .max) > 100 {
            view = try await ClusterDaemonTests.status(cluster, 3)
        }
        #expect(!view.quorate && view.view?.members == [3])
        #expect(try await ClusterDaemonTests.status(cluster, 1).view?.members == [1, 2])

        // Restarted, it comes back as a new incarnation: one primary view of all three.
        cluster.kill(3)
        try cluster.start(3)
        for node in 1...3 { try cluster.waitForView(at: node, members: "1,2,3#2", primary: true) }
    }

    /// Lock holders on both sides of a partition. The cut-off node grants nothing (its clients' new requests are
    /// held, neither granted nor refused); the majority, once it has fenced that node, gives the cut-off holders'
    /// locks to its own waiters: an EX whose master was cut off goes to the waiter with a higher fencing token (the
    /// token tells a resource which holder is current when, as here, the fence did not stop the node), and a PR
    /// held from the cut-off node on a majority master no longer blocks an EX there.
    @Test(
        .enabled(
            if: Network.canBeMade,
            "skipped: network namespaces cannot be made here (needs root and iproute2's ip netns)"))
    func holdersOnBothSidesOfAPartition() async throws {
        let network = try Network(nodes: 3)
        defer { network.remove() }
        let cluster = try Self.startCluster(on: network)
        defer { cluster.stopAll() }
        var spaces: [DLMLockspace] = []
        for node in 1...3 {
            let connection = try await DLMConnection.connect(socketPath: cluster.socket(node))
            spaces.append(try await connection.openLockspace("split"))
        }
        let (one, two, three) = (spaces[0], spaces[1], spaces[2])

        // Node 1 masters b (its client asked first), node 3 masters a. Node 3's client holds EX on a and PR on b;
        // node 1's waits for EX on a, node 2's for EX on b (behind both PRs); each holder was told.
        let (told, teller) = AsyncStream<String>.makeStream()
        let b1 = try await one.lock("b", mode: .pr, onBlocking: { _ in teller.yield("b") })
        let a3 = try await three.lock("a", mode: .ex, alwaysFencingToken: true, onBlocking: { _ in teller.yield("a") })
        _ = try await three.lock("b", mode: .pr)
        let a1 = Task { try await one.lock("a", mode: .ex) }
        let b2 = Task { try await two.lock("b", mode: .ex) }
        var blocked: Set<String> = []
        for await name in told {
            blocked.insert(name)
            if blocked.count == 2 { break }
        }

        try network.cut(3)
        for node in 1...2 { try cluster.waitForView(at: node, members: "1,2", primary: true) }
        try cluster.waitForView(at: 3, members: "3", primary: false)
        #expect(cluster.fenced.contains(3))

        // The majority: a goes to node 1's waiter, above every token of node 3's holder.
        let granted = try await a1.value
        #expect(granted.mode == .ex && granted.fencingToken > a3.fencingToken)
        // Node 3's PR on b went with its node: node 1's PR is all that blocks node 2's EX.
        try await b1.unlock()
        let exclusive = try await b2.value
        #expect(exclusive.mode == .ex && exclusive.fencingToken > 0)

        // The cut-off side: a new request waits; nothing is granted or refused there.
        let held = Task { try await three.lock("c", mode: .nl) }
        var isolated = try await ClusterDaemonTests.status(cluster, 3)
        while isolated.recovery.heldRequests < 1 { isolated = try await ClusterDaemonTests.status(cluster, 3) }
        #expect(!isolated.quorate && isolated.recovery.waitingFor.contains("quorum"))

        // Node 3 goes (as a real fence would make it): its held request ends with its connection.
        cluster.kill(3)
        await #expect(throws: (any Error).self) { try await held.value }
        try await granted.unlock()
        try await exclusive.unlock()
    }
}
