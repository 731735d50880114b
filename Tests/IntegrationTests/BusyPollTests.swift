import DLMClient
import DLMCore
import DLMTestSupport
import DLMWire
import Foundation
import NIOCore
import NIOPosix
import Testing

/// `dlmd --busy-poll` and `DLMConnection.connect(busyPoll:)`: event loops that poll for a while after their
/// I/O serve exactly as before, and stop polling (and spending CPU) once idle.
@Suite struct BusyPollTests {
    @Test func aPollingDaemonAndPollingClientsServeAsUsual() async throws {
        let daemon = try Daemon(arguments: ["--busy-poll", "500"])
        defer { daemon.stop() }
        let group = MultiThreadedEventLoopGroup(numberOfThreads: 1)
        let loop = group.next()
        let a = try await DLMConnection.connect(
            socketPath: daemon.socketPath, eventLoopGroup: group, busyPoll: .microseconds(500))
        let b = try await DLMConnection.connect(
            socketPath: daemon.socketPath, eventLoopGroup: group, busyPoll: .microseconds(500))
        let lsA = try await a.openLockspace("poll")
        let lsB = try await b.openLockspace("poll")
        // EX handed from one client to the other, with its blocking callback.
        let (told, continuation) = AsyncStream<LockMode>.makeStream()
        let holder = try await lsA.lock("r", mode: .ex, onBlocking: { mode in continuation.yield(mode) })
        async let waiter = lsB.lock("r", mode: .ex)
        var modes = told.makeAsyncIterator()
        #expect(await modes.next() == .ex)
        try await holder.unlock()
        let next = try await waiter
        #expect(next.mode == .ex)
        try await next.unlock()
        for index in 0..<200 { try await lsA.lock("p\(index % 10)", mode: .pr).unlock() }
        // The two connections on the one loop share one poller, and it went round while replies came.
        let poller = BusyPoll.shared(on: loop, window: .microseconds(500))
        #expect(try await loop.submit { poller.polls }.get() > 0)
        await a.close()
        await b.close()
        try await group.shutdownGracefully()
    }

    /// Polling that never stopped would keep a CPU busy: after the window, neither dlmd nor the client's
    /// event loop may spend more than a sliver of the idle time. (No event marks "idle for a while", so this
    /// test waits half a second and measures the CPU time spent in it.)
    @Test func pollingStopsOnceIdle() async throws {
        let daemon = try Daemon(arguments: ["--busy-poll", "5000"])
        defer { daemon.stop() }
        let group = MultiThreadedEventLoopGroup(numberOfThreads: 1)
        let loop = group.next()
        let connection = try await DLMConnection.connect(
            socketPath: daemon.socketPath, eventLoopGroup: group, busyPoll: .milliseconds(5))
        let lockspace = try await connection.openLockspace("idle")
        for index in 0..<100 { try await lockspace.lock("r\(index)", mode: .ex).unlock() }
        let poller = BusyPoll.shared(on: loop, window: .milliseconds(5))
        let daemonBefore = try processCPUSeconds(daemon.process.processIdentifier)
        let loopBefore = try await loop.submit { threadCPUSeconds() }.get()

        try await Task.sleep(for: .milliseconds(500))

        let daemonSpent = try processCPUSeconds(daemon.process.processIdentifier) - daemonBefore
        let (loopAfter, polling, polls) = try await loop.submit { (threadCPUSeconds(), poller.isPolling, poller.polls) }
            .get()
        #expect(daemonSpent < 0.1, "dlmd spent \(daemonSpent) s of CPU in 0.5 s idle")
        #expect(loopAfter - loopBefore < 0.1, "the client's loop spent \(loopAfter - loopBefore) s of CPU idle")
        #expect(!polling)
        #expect(polls > 0)
        await connection.close()
        try await group.shutdownGracefully()
    }

    /// A polling dlmd polls after a peer node's lock messages too, as after its own clients' frames: node 2 masters
    /// ten resources and its client sits idle, while a client of node 1 locks and unlocks them 100 times. Node 2's
    /// loop goes round polling far more meanwhile than in the window that one status query opens.
    @Test func aMasterPollsAfterItsPeersRequests() async throws {
        let cluster = try TestCluster(nodes: 2)
        cluster.arguments = { _ in ["--busy-poll", "1000"] }
        defer { cluster.stopAll() }
        try cluster.startAll()
        for node in 1...2 { try cluster.waitForView(at: node, members: "1,2", primary: true) }
        // The first node to ask masters a resource, and an idle one keeps its master.
        let owner = try await DLMConnection.connect(socketPath: cluster.socket(2))
        let owned = try await owner.openLockspace("poll")
        for index in 0..<10 { try await owned.lock("r\(index)", mode: .nl).unlock() }
        func polls() async throws -> UInt64 {
            try #require(try await ClusterDaemonTests.status(cluster, 2).busyPoll?.polls)
        }
        // Between two queries, node 2 polls in the window the first one opened, and nothing else.
        let first = try await polls()
        let oneWindow = try await polls() - first
        let client = try await DLMConnection.connect(socketPath: cluster.socket(1))
        let lockspace = try await client.openLockspace("poll")
        let before = try await polls()
        for index in 0..<100 { try await lockspace.lock("r\(index % 10)", mode: .ex).unlock() }
        let remote = try await polls() - before
        #expect(remote > 4 * oneWindow + 100, "polls: \(remote) with 100 remote pairs, \(oneWindow) after one query")
        await client.close()
        await owner.close()
    }

    @Test func theSettingIsCheckedAndTakenFromTheConfigFile() async throws {
        let directory = FileManager.default.temporaryDirectory
            .appendingPathComponent("dlmd-poll-\(UUID().uuidString.prefix(8))").path
        try FileManager.default.createDirectory(atPath: directory, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(atPath: directory) }
        let refused = try Daemon.runToEnd([
            "--data-dir", directory, "--socket", directory + "/s.sock", "--busy-poll", "2000000",
        ])
        #expect(refused.status != 0)
        #expect(refused.error.contains("--busy-poll is a number of microseconds from 0 to 1000000"))

        // Taken from the config file: the status report shows the window, and the loop polled after a request.
        let config = directory + "/dlmd.toml"
        try "[dlmd]\nbusy_poll = 300\n".write(toFile: config, atomically: false, encoding: .utf8)
        let daemon = try Daemon(arguments: ["--config", config])
        defer { daemon.stop() }
        let connection = try await DLMConnection.connect(socketPath: daemon.socketPath)
        let lockspace = try await connection.openLockspace("config")
        try await lockspace.lock("r", mode: .ex).unlock()
        let status = try JSONDecoder().decode(StatusReport.self, from: Data(try await connection.query(.status)))
        #expect(status.busyPoll?.windowMicroseconds == 300)
        #expect((status.busyPoll?.polls ?? 0) > 0)
        // Without the setting: nothing in the report.
        let plain = try Daemon()
        defer { plain.stop() }
        let other = try await DLMConnection.connect(socketPath: plain.socketPath)
        let report = try JSONDecoder().decode(StatusReport.self, from: Data(try await other.query(.status)))
        #expect(report.busyPoll == nil)
        await other.close()
        await connection.close()
    }
}
