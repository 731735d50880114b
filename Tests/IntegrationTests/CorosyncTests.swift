import DLMClient
import DLMTestSupport
import Foundation
import Testing

/// dlmd on corosync (`[cluster] provider = "corosync"`): three corosync 3 instances, each in a network namespace of
/// its own on one bridge (with its own /run and /var/lib/corosync), and one dlmd per namespace taking membership,
/// quorum and its node list from its corosync. Needs root, `ip netns` and corosync; skipped otherwise.
@Suite(.serialized, .timeLimit(.minutes(3)))
struct CorosyncTests {
    static let canRun: Bool = {
        PartitionTests.canMakeNamespaces && FileManager.default.isExecutableFile(atPath: CorosyncRing.executable)
    }()

    /// corosync on three nodes in network namespaces, then dlmd on each, agreed on a primary view of all three,
    /// for `body`; everything stopped and removed after it.
    static func withCluster(_ body: (Network, CorosyncRing, TestCluster) async throws -> Void) async throws {
        let network = try Network(nodes: 3)
        defer { network.remove() }
        let ring = try CorosyncRing(network: network)
        defer { ring.stopAll() }
        let cluster = try PartitionTests.startCluster(on: network, corosyncPort: 7100)
        defer { cluster.stopAll() }
        try await body(network, ring, cluster)
    }

    /// Views come from corosync's group; a killed dlmd is fenced before the survivors' primary view, and its EX goes
    /// to a waiter on another node with a higher fencing token; restarted, it joins as its next incarnation.
    @Test(.enabled(if: CorosyncTests.canRun, "skipped: needs root, ip netns and corosync"))
    func viewsFencingAndExclusionWhileANodeIsKilled() async throws {
        try await Self.withCluster { network, _, cluster in
            // The node list is corosync's, with the lock traffic port.
            let status = try await ClusterDaemonTests.status(cluster, 1)
            #expect(status.cluster?.nodes.map(\.address) == network.addresses.map { "\($0):7100" })
            #expect(status.quorate && status.view?.members == [1, 2, 3])

            let one = try await DLMConnection.connect(socketPath: cluster.socket(1)).openLockspace("cs")
            let three = try await DLMConnection.connect(socketPath: cluster.socket(3)).openLockspace("cs")
            let (told, teller) = AsyncStream<Void>.makeStream()
            let held = try await three.lock(
                "a", mode: .ex, alwaysFencingToken: true, onBlocking: { _ in teller.yield() })
            #expect(try await DistributedLockTests.tryLock(one, "a", .ex) == .tryAgain)
            let waiter = Task { try await one.lock("a", mode: .ex) }
            for await _ in told { break }  // the holder was told that node 1's request waits

            cluster.kill(3)
            for node in 1...2 { try cluster.waitForView(at: node, members: "1,2", primary: true) }
            #expect(cluster.fenced == [3])
            let granted = try await waiter.value
            #expect(granted.mode == .ex && granted.fencingToken > held.fencingToken)

            try cluster.start(3)
            for node in 1...3 { try cluster.waitForView(at: node, members: "1,2,3#2", primary: true) }
            #expect(cluster.fenced == [3])
            try await granted.unlock()
        }
    }

    /// corosync itself goes on two nodes: their dlmd lose their connection and hold every request; node 1 loses
    /// quorum (votequorum's) and holds too. One corosync back gives node 1 quorum again: it fences the two lost
    /// nodes before its primary view. The lost dlmd restarted joins as its next incarnation.
    @Test(.enabled(if: CorosyncTests.canRun, "skipped: needs root, ip netns and corosync"))
    func quorumLostAndRegained() async throws {
        try await Self.withCluster { _, ring, cluster in
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
    /// Without a corosync to ask, dlmd refuses to start and says why.
    @Test(.enabled(if: CorosyncTests.canRun, "skipped: needs root, ip netns and corosync"))
    func withoutCorosyncDlmdSaysSoAndExits() throws {
        let network = try Network(nodes: 1)
        defer { network.remove() }
        let cluster = try TestCluster(nodes: 1, timeouts: nil, corosyncPort: 7100)
        let process = Process()
        process.executableURL = URL(fileURLWithPath: "/usr/sbin/ip")
        process.arguments = [
            "netns", "exec", network.namespace(1), Daemon.executable, "--config", cluster.configPath, "--socket",
            cluster.directory + "/dlmd.sock", "--data-dir", cluster.directory + "/data",
        ]
        let error = Pipe()
        process.standardError = error
        process.standardOutput = FileHandle.nullDevice
        try process.run()
        let text = String(decoding: error.fileHandleForReading.readDataToEndOfFile(), as: UTF8.self)
        process.waitUntilExit()
        #expect(process.terminationStatus != 0)
        #expect(text.contains("reading corosync's nodelist (cmap)") && text.contains("is corosync running?"), "\(text)")
    }
}

/// corosync 3 in each namespace of a `Network`, with a tuned token (1 s: a dropped node leaves the membership in
/// about 2.5 s instead of 8) and its own /run and /var/lib/corosync, bind-mounted inside the namespace.
final class CorosyncRing: @unchecked Sendable {
    static let executable = "/usr/sbin/corosync"
    let network: Network
    let directory: String
    private(set) var processes: [Int: (process: Process, log: LineLog)] = [:]

    init(network: Network) throws {
        self.network = network
        directory = Daemon.temporaryDirectory("dlm-corosync")
        let nodes = network.addresses.enumerated().map {
            "  node {\n    ring0_addr: \($0.element)\n    nodeid: \($0.offset + 1)\n  }\n"
        }.joined()
        let config = """
            totem {
              version: 2
              cluster_name: test
              transport: knet
              crypto_cipher: none
              crypto_hash: none
              token: 1000
            }
            nodelist {
            \(nodes)}
            quorum {
              provider: corosync_votequorum
            }
            logging {
              to_stderr: yes
              to_syslog: no
              to_logfile: no
            }

            """
        for node in 1...network.count {
            for sub in ["run", "lib"] {
                try FileManager.default.createDirectory(
                    atPath: "\(directory)/node\(node)/\(sub)", withIntermediateDirectories: true)
            }
            try config.write(toFile: "\(directory)/node\(node)/corosync.conf", atomically: true, encoding: .utf8)
        }
        do {
            for node in 1...network.count { try start(node) }
        } catch {
            stopAll()
            throw error
        }
    }

    /// Starts node `node`'s corosync and returns once it provides service.
    func start(_ node: Int) throws {
        let folder = "\(directory)/node\(node)"
        let process = Process()
        process.executableURL = URL(fileURLWithPath: "/usr/sbin/ip")
        process.arguments = [
            "netns", "exec", network.namespace(node), "sh", "-c",
            "mount --bind \(folder)/run /run && mount --bind \(folder)/lib /var/lib/corosync && "
                + "exec \(Self.executable) -f -c \(folder)/corosync.conf",
        ]
        let output = Pipe()
        process.standardOutput = output
        process.standardError = output
        let log = LineLog()
        try process.run()
        log.read(output.fileHandleForReading)
        processes[node] = (process, log)
        try log.wait(for: "corosync of node \(node) ready") { $0.contains("ready to provide service") }
    }

    /// kill -9 of node `node`'s corosync; returns once it is gone.
    func kill(_ node: Int) {
        guard let (process, _) = processes[node], process.isRunning else { return }
        Foundation.kill(process.processIdentifier, SIGKILL)
        process.waitUntilExit()
    }

    func stopAll() {
        for node in processes.keys { kill(node) }
    }

    deinit {
        stopAll()
        try? FileManager.default.removeItem(atPath: directory)
    }
}
