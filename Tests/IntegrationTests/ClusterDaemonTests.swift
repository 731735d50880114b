import DLMClient
import DLMCore
import DLMTestSupport
import DLMWire
import Foundation
import Testing

/// Real `dlmd` cluster members on loopback: views, detection, rejoining as a new incarnation, quorum, fencing,
/// and what `dlmtool status` and `dlmtool members` say of them.
@Suite(.serialized, .timeLimit(.minutes(3)))
struct ClusterDaemonTests {
    static func status(_ cluster: TestCluster, _ node: Int) async throws -> StatusReport {
        let result = try await ToolRun.run(arguments: ["status", "--json", "--socket", cluster.socket(node)])
        #expect(result.status == 0, "\(result.stderr)")
        return try JSONDecoder().decode(StatusReport.self, from: result.output)
    }

    /// The default timeouts: a killed node is out of the survivors' view within the detection time (1.5 s);
    /// it was fenced first; restarted, it rejoins as its next incarnation.
    @Test func threeNodesKillOneAndRestartIt() async throws {
        let cluster = try TestCluster(nodes: 3, timeouts: nil)
        defer { cluster.stopAll() }
        try cluster.startAll()
        for node in 1...3 { try cluster.waitForView(at: node, members: "1,2,3", primary: true) }

        let status = try await Self.status(cluster, 1)
        #expect(status.nodeID == 1 && status.incarnation == 1 && status.quorate)
        #expect(status.view?.members == [1, 2, 3] && status.view?.primary == true)
        #expect(status.recovery.waitingFor.isEmpty && status.recovery.heldRequests == 0)
        #expect(status.cluster?.name == "test" && status.cluster?.quorumVotes == 2)
        #expect(status.cluster?.nodes.map(\.state) == ["self", "member", "member"])

        let killed = cluster.kill(3)
        let survivors = try [1, 2].map { try cluster.waitForView(at: $0, members: "1,2", primary: true) }
        let detection = survivors.map { killed.duration(to: $0) }.max()!
        // 1.5 s is the configured detection time; bench/ measures it (`make bench-membership`). This bound only
        // catches a node that never notices, with slack for a loaded 2-vCPU machine.
        #expect(detection < .seconds(10), "the new view came \(detection) after the kill")
        // The fence command ran for node 3 alone (perhaps more than once, if a loaded machine made the view change
        // start over: fencing is idempotent).
        #expect(!cluster.fenced.isEmpty && Set(cluster.fenced) == [3], "fenced: \(cluster.fenced)")

        let afterKill = try await Self.status(cluster, 2)
        #expect(afterKill.view?.members == [1, 2] && afterKill.quorate)
        let view2 = try #require(afterKill.view?.id)
        #expect(view2 > status.view!.id)

        try cluster.start(3)
        for node in 1...3 { try cluster.waitForView(at: node, members: "1,2,3#2", primary: true) }
        let rejoined = try await Self.status(cluster, 3)
        #expect(rejoined.incarnation == 2 && rejoined.quorate)
        #expect(rejoined.view!.id > view2)

        // dlmtool members: every node, its state and incarnation.
        let members = try await ToolRun.run(arguments: ["members", "--json", "--socket", cluster.socket(1)])
        #expect(members.status == 0, "\(members.stderr)")
        let report = try JSONDecoder().decode(StatusReport.Cluster.self, from: members.output)
        #expect(report.nodes.map(\.nodeID) == [1, 2, 3])
        #expect(report.nodes.map(\.incarnation) == [1, 1, 2])
        #expect(report.nodes[1].lastHeardMilliseconds != nil)
        let text = try await ToolRun.run(arguments: ["members", "--socket", cluster.socket(1)])
        #expect(text.status == 0 && text.stdout.contains("quorate: yes"))
        #expect(text.lines.count == 5, "a heading, a header and three nodes: \(text.stdout)")

        // A quorate member serves locks.
        let lock = try await ToolRun.run(arguments: ["lock", "--socket", cluster.socket(3), "job", "--", "true"])
        #expect(lock.status == 0, "\(lock.stderr)")

        // dlmtool dump-config: the cluster file's settings as node 2 runs with them (the timeouts' defaults here).
        let config = try await ToolRun.run(arguments: ["dump-config", "--socket", cluster.socket(2)])
        #expect(config.status == 0, "\(config.stderr)")
        let settings = Set(config.lines)
        for line in [
            "dlmd.node_id=2", "cluster.provider=builtin", "timeouts.suspect_ms=1000", "timeouts.heartbeat_ms=200",
            "quorum.two_node=false", "node.3.votes=1",
        ] {
            #expect(settings.contains(line), "\(line) not in \(config.stdout)")
        }
        #expect(config.lines.contains { $0.hasPrefix("fencing.command=") && $0.hasSuffix("fence-node") })
    }

    /// `auto_tie_breaker`: of four nodes, nodes 3 and 4 die at once. Nodes 1 and 2 have half of the votes, and node 1:
    /// they fence both, form a primary view and serve locks (without the tie breaker they would wait for quorum).
    /// `dlmtool status` (and its `--json`) names the tie breaker.
    @Test func aTieBreakerKeepsTheHalfWithNodeOne() async throws {
        let cluster = try TestCluster(nodes: 4, quorum: "auto_tie_breaker = true\n")
        defer { cluster.stopAll() }
        try cluster.startAll()
        for node in 1...4 { try cluster.waitForView(at: node, members: "1,2,3,4", primary: true) }
        _ = cluster.kill(3)
        _ = cluster.kill(4)
        for node in 1...2 { try cluster.waitForView(at: node, members: "1,2", primary: true) }
        #expect(Set(cluster.fenced) == [3, 4], "fenced: \(cluster.fenced)")
        let status = try await Self.status(cluster, 2)
        #expect(status.quorate && status.cluster?.tieBreakerNode == 1 && status.cluster?.quorumVotes == 3)
        let lock = try await ToolRun.run(arguments: ["lock", "--socket", cluster.socket(2), "job", "--", "true"])
        #expect(lock.status == 0, "\(lock.stderr)")
        let text = try await ToolRun.run(arguments: ["status", "--socket", cluster.socket(1)])
        #expect(
            text.stdout.contains("3 of 4 expected needed, or 2 with node 1 (auto_tie_breaker)"), "\(text.stdout)")
    }

    /// A fence that keeps failing holds the survivors (the fence retried, nothing granted) until an operator who
    /// knows the node is off says so with `dlmtool fence-ack` to the node that fences it: the fence counts as done,
    /// the view is installed and the dead node's EX goes to the waiter. Node 2, which fences nothing, refuses the
    /// acknowledgement (ENOENT) and says so.
    @Test func aFenceAcknowledgedByAnOperatorEndsTheWait() async throws {
        let cluster = try TestCluster(nodes: 3)
        defer { cluster.stopAll() }
        try cluster.startAll()
        for node in 1...3 { try cluster.waitForView(at: node, members: "1,2,3", primary: true) }
        try await Self.fenceAcknowledgedByAnOperator(cluster) { _ = cluster.kill($0) }
    }

    /// The body of `aFenceAcknowledgedByAnOperatorEndsTheWait` on a cluster of three in a primary view of them all,
    /// whose node 3 `kill` makes fail (with the corosync provider too: `CorosyncTests`).
    static func fenceAcknowledgedByAnOperator(_ cluster: TestCluster, kill: (Int) -> Void) async throws {
        let one = try await DLMConnection.connect(socketPath: cluster.socket(1)).openLockspace("p")
        let three = try await DLMConnection.connect(socketPath: cluster.socket(3)).openLockspace("p")
        let (told, teller) = AsyncStream<Void>.makeStream()
        let held = try await three.lock("a", mode: .ex, alwaysFencingToken: true, onBlocking: { _ in teller.yield() })
        let waiter = Task { try await one.lock("a", mode: .ex) }
        for await _ in told { break }  // node 1's request waits

        try cluster.failFences()
        kill(3)
        try cluster.log(1).wait(for: "a failed fence of node 3", timeout: 60) { $0.contains("fencing node 3 failed") }
        let waiting = try await Self.status(cluster, 1)
        #expect(waiting.cluster?.nodes.first { $0.nodeID == 3 }?.state == "fencing", "\(waiting.cluster?.nodes ?? [])")
        // What the operator needs to decide: which node fences which, and why it fails.
        #expect(
            waiting.cluster?.waitingFor?.contains { $0.hasPrefix("fencing node 3 (last run failed: exit status 1") }
                == true, "\(waiting.cluster?.waitingFor ?? [])")

        let refused = try await ToolRun.run(arguments: ["fence-ack", "--socket", cluster.socket(2), "3"])
        #expect(refused.status != 0 && refused.stderr.contains("node 2 is not fencing node 3"), "\(refused.stderr)")
        #expect(refused.stderr.contains("(ENOENT)"), "\(refused.stderr)")
        let acknowledged = try await ToolRun.run(arguments: ["fence-ack", "--socket", cluster.socket(1), "3"])
        #expect(acknowledged.status == 0 && acknowledged.stdout == "fence of node 3 acknowledged\n", "\(acknowledged)")

        try cluster.log(1).wait(for: "the acknowledgement announced") {
            $0.hasSuffix("fenced node 3 (acknowledged by an operator)")
        }
        for node in 1...2 { try cluster.waitForView(at: node, members: "1,2", primary: true) }
        let granted = try await waiter.value
        #expect(granted.mode == .ex && granted.fencingToken > held.fencingToken)
        try await granted.unlock()
    }

    /// dlmd announces views and recoveries on standard output; a reader that goes away (a closed pipe) stops
    /// nothing: node 1's standard output is closed after its first line, and it goes on serving through the view
    /// changes it announces (before, the first write after the close killed it).
    @Test func aClosedStandardOutputStopsNothing() async throws {
        let cluster = try TestCluster(nodes: 3) { node in
            node == 1 ? ["/bin/bash", "-c", "exec > >(head -n 1); exec \"$@\"", "bash"] : []
        }
        defer { cluster.stopAll() }
        try cluster.startAll()
        try cluster.waitForView(at: 2, members: "1,2,3", primary: true)
        _ = cluster.kill(3)
        try cluster.waitForView(at: 2, members: "1,2", primary: true)
        let connection = try await DLMConnection.connect(socketPath: cluster.socket(1))
        let space = try await connection.openLockspace("announced")
        let lock = try await space.lock("still-serving", mode: .ex)
        #expect(lock.mode == .ex)
        try await lock.unlock()
        await connection.close()
    }

    /// A client on node 2 exits holding 200,000 locks: dlmd releases them in slices between its heartbeats, so
    /// with the default timeouts (suspect after 1 s) no node is suspected, the view stays and nobody is fenced.
    /// A waiter on the lock released last times the release. No node may run its tasks for half the suspect timeout
    /// without reading a socket (it logs so): before slices waited for the loop to poll between them, the slices and
    /// the lock traffic they wrote kept node 2 from reading for 0.6 to 1 s in every run, and it formed a view alone
    /// in about one run in four.
    @Test func anExitWithManyLocksSuspectsNobody() async throws {
        let cluster = try TestCluster(nodes: 3, timeouts: nil)
        defer { cluster.stopAll() }
        try cluster.startAll()
        for node in 1...3 { try cluster.waitForView(at: node, members: "1,2,3", primary: true) }
        let before = try await Self.status(cluster, 2)

        let holder = try await DLMConnection.connect(socketPath: cluster.socket(2))
        let ls = try await holder.openLockspace("many")
        let count = 200_000
        let names = (0..<count).map { Array("lock-\($0)".utf8) }
        #expect(try await Self.takeLocks(ls, names) == count)
        // The exit walks the owner's list from its newest lock: the first one taken is released last.
        let other = try await DLMConnection.connect(socketPath: cluster.socket(2))
        let waiter = Task { try await other.openLockspace("many").lock(names[0], mode: .ex) }
        var report = try await Self.status(cluster, 2)
        while report.locks < count + 1 { report = try await Self.status(cluster, 2) }
        for node in 1...3 { cluster.log(node).skipToEnd() }

        await holder.close()
        // A hang detector: if the grant never comes (a node was suspected and the view changed under the release),
        // closing `other` ends the waiter with an error; the time limit alone cannot end an await of a task.
        let watchdog = Task {
            try await Task.sleep(for: .seconds(100))
            await other.close()
        }
        defer { watchdog.cancel() }
        let granted = try await waiter.value
        #expect(granted.mode == .ex)
        let after = try await Self.status(cluster, 2)
        #expect(after.locks == 1)
        #expect(after.view?.id == before.view?.id, "the view changed: \(String(describing: after.view))")
        for node in [1, 3] {
            let status = try await Self.status(cluster, node)
            #expect(status.view?.id == before.view?.id)
            #expect(status.cluster?.nodes.allSatisfy { $0.state == "member" || $0.state == "self" } == true)
        }
        #expect(cluster.fenced.isEmpty, "fenced: \(cluster.fenced)")
        for node in 1...3 {
            let starved = cluster.log(node).all.filter { $0.contains("without reading a socket") }
            #expect(starved.isEmpty, "node \(node) read no socket while its slices ran: \(starved)")
        }
        await other.close()
    }

    /// Takes EX on every name through the callback API, up to 1,024 requests in flight; returns how many were
    /// granted.
    static func takeLocks(_ ls: DLMLockspace, _ names: [[UInt8]]) async throws -> Int {
        final class Flood: @unchecked Sendable {
            var next = 0
            var granted = 0
            var answered = 0
        }
        let flood = Flood()
        return try await withCheckedThrowingContinuation { continuation in
            ls.connection.eventLoop.execute {
                @Sendable func submit() {
                    let index = flood.next
                    flood.next += 1
                    ls.submitLock(names[index], mode: .ex) { result in
                        flood.answered += 1
                        if case .success(let lock) = result, lock.status == .granted { flood.granted += 1 }
                        if flood.next < names.count {
                            submit()
                        } else if flood.answered == names.count {
                            continuation.resume(returning: flood.granted)
                        }
                    }
                }
                for _ in 0..<min(1024, names.count) { submit() }
            }
        }
    }

    /// Without a majority a node grants nothing new: requests are held, not refused, and run once quorum is
    /// back.
    @Test func losingTheMajorityHoldsRequests() async throws {
        let cluster = try TestCluster(nodes: 3)
        defer { cluster.stopAll() }
        try cluster.startAll()
        for node in 1...3 { try cluster.waitForView(at: node, members: "1,2,3", primary: true) }

        let connection = try await DLMConnection.connect(socketPath: cluster.socket(1))
        let ls = try await connection.openLockspace("q")
        let held = try await ls.lock("kept", mode: .ex)

        cluster.kill(2)
        cluster.kill(3)
        try cluster.waitForView(at: 1, members: "1", primary: false)
        let stopped = try await Self.status(cluster, 1)
        #expect(!stopped.quorate && stopped.view?.primary == false)
        #expect(stopped.recovery.waitingFor.contains("quorum"), "\(stopped.recovery.waitingFor)")
        #expect(stopped.locks == 1, "the lock granted before is kept")

        // A new request, even NOQUEUE, waits: nothing is granted and nothing refused.
        let request = Task { try await ls.lock("new", mode: .ex, flags: [.noQueue]) }
        var report = try await Self.status(cluster, 1)
        while report.recovery.heldRequests < 1 { report = try await Self.status(cluster, 1) }
        #expect(report.locks == 1 && !report.quorate)
        let text = try await ToolRun.run(arguments: ["status", "--socket", cluster.socket(1)])
        #expect(text.fields["quorate"] == "no" && text.fields["waiting for"] == "quorum", "\(text.stdout)")

        try cluster.start(2)
        try cluster.waitForView(at: 1, members: "1,2#2", primary: true)
        let granted = try await request.value
        #expect(granted.mode == .ex)
        let resumed = try await Self.status(cluster, 1)
        #expect(resumed.quorate && resumed.recovery.heldRequests == 0 && resumed.locks == 2)
        try await granted.unlock()
        try await held.unlock()
        await connection.close()
    }

    /// Five nodes: losing two keeps a primary view of three; losing a third leaves two without quorum.
    @Test func fiveNodes() async throws {
        let cluster = try TestCluster(nodes: 5)
        defer { cluster.stopAll() }
        try cluster.startAll()
        for node in 1...5 { try cluster.waitForView(at: node, members: "1,2,3,4,5", primary: true) }
        cluster.kill(4)
        cluster.kill(5)
        for node in 1...3 { try cluster.waitForView(at: node, members: "1,2,3", primary: true) }
        #expect(Set(cluster.fenced) == [4, 5])
        cluster.kill(1)
        for node in 2...3 { try cluster.waitForView(at: node, members: "2,3", primary: false) }
        let status = try await Self.status(cluster, 2)
        #expect(!status.quorate && status.recovery.waitingFor.contains("quorum"))
        #expect(Set(cluster.fenced) == [4, 5], "a view without quorum fences nobody")
    }

    /// View numbers come from the store: after every node restarts, the new views still number above the old.
    @Test func viewNumbersKeepIncreasingWhenEveryNodeRestarts() async throws {
        let cluster = try TestCluster(nodes: 3)
        defer { cluster.stopAll() }
        try cluster.startAll()
        for node in 1...3 { try cluster.waitForView(at: node, members: "1,2,3", primary: true) }
        let before = try #require(try await Self.status(cluster, 1).view?.id)
        cluster.stopAll()
        try cluster.startAll()
        for node in 1...3 { try cluster.waitForView(at: node, members: "1#2,2#2,3#2", primary: true) }
        let after = try await Self.status(cluster, 2)
        #expect(after.incarnation == 2)
        #expect(try #require(after.view?.id) > before)
        #expect(try #require(after.cluster?.highestView) > before)
    }

    /// Configuration errors name the key; a node id outside the node list is refused.
    @Test func configErrors() async throws {
        let cluster = try TestCluster(nodes: 3)
        let bad = cluster.directory + "/bad.toml"
        try
            "[cluster]\nname = \"x\"\nkey_file = \"k\"\n[fencing]\ncommand = \"/bin/true\"\n[[node]]\nid = 1\naddress = \"nowhere\"\n"
            .write(toFile: bad, atomically: false, encoding: .utf8)
        let result = try Daemon.runToEnd(["--config", bad, "--node-id", "1", "--data-dir", cluster.directory + "/x"])
        #expect(result.status != 0)
        #expect(result.error.contains("address"), "\(result.error)")

        let outside = try Daemon.runToEnd([
            "--config", cluster.configPath, "--node-id", "9", "--data-dir", cluster.directory + "/y", "--socket",
            cluster.directory + "/y.sock",
        ])
        #expect(outside.status != 0)
        #expect(outside.error.contains("node id 9 is not in the cluster"), "\(outside.error)")
    }
}
