import DLMClient
import DLMCore
import DLMTestSupport
import DLMWire
import Foundation
import Testing

/// Deadlocks whose cycle spans several masters, with real `dlmd` processes (docs/SEMANTICS.md, "Deadlocks across
/// nodes"): each resource is mastered by the node of its first holder, so a cycle of holders on different nodes
/// waits on resources of different masters, which no single node sees; the search across nodes refuses exactly
/// one request with EDEADLK.
@Suite(.serialized) struct ClusterDeadlockTests {
    /// The C deadlocker (Tests/CDLMTests/deadlocker.c), compiled once.
    static let deadlocker = CPrograms.compile("deadlocker")

    /// A running deadlocker: its lines, and a line on its standard input to go on.
    final class Deadlocker: @unchecked Sendable {
        let process = Process()
        let input = Pipe()
        let log = LineLog()

        init(socket: String, lockspace: String, first: String, second: String) throws {
            process.executableURL = URL(fileURLWithPath: try ClusterDeadlockTests.deadlocker.get())
            process.arguments = [lockspace, first, second]
            process.environment = ["DLM_SOCKET": socket]
            let output = Pipe()
            process.standardOutput = output
            process.standardInput = input
            try process.run()
            log.read(output.fileHandleForReading)
        }

        func goOn() throws {
            try input.fileHandleForWriting.write(contentsOf: Data("go\n".utf8))
        }

        /// Its answer to SECOND: "granted", "deadlock", or another line (a hang detector ends the wait).
        func result() throws -> String {
            try log.wait(for: "the result of the second request") { !$0.hasPrefix("held") }.text
        }
    }

    /// Two C processes (the library's `dlm_ls_lock_wait`) on two nodes of a three-node cluster: each holds one
    /// name, then asks for the other's. Exactly one gets EDEADLK (and lets its name go); the other is granted.
    @Test func twoCProcessesOnTwoNodesGetExactlyOneDeadlock() throws {
        let cluster = try TestCluster(nodes: 3)
        defer { cluster.stopAll() }
        try cluster.startAll()
        for node in 1...3 { try cluster.waitForView(at: node, members: "1,2,3", primary: true) }
        let a = try Deadlocker(socket: cluster.socket(1), lockspace: "dl", first: "r1", second: "r2")
        let b = try Deadlocker(socket: cluster.socket(2), lockspace: "dl", first: "r2", second: "r1")
        defer {
            for side in [a, b] where side.process.isRunning { side.process.terminate() }
        }
        try a.log.wait(for: "r1 held") { $0 == "held" }
        try b.log.wait(for: "r2 held") { $0 == "held" }
        try a.goOn()
        try b.goOn()
        let results = [try a.result(), try b.result()].sorted()
        #expect(results == ["deadlock", "granted"], "results \(results)")
        try a.goOn()
        try b.goOn()
        for side in [a, b] {
            side.process.waitUntilExit()
            #expect(side.process.terminationStatus == 0)
        }
    }

    /// Four Swift clients on four nodes, each holding the name the one before it wants: a cycle of four hops, each
    /// on another master. Exactly one request gets EDEADLK; once its client lets go, the others are granted in turn.
    @Test func aCycleOfFourNodesGetsExactlyOneDeadlock() async throws {
        let cluster = try TestCluster(nodes: 4)
        defer { cluster.stopAll() }
        try cluster.startAll()
        for node in 1...4 { try cluster.waitForView(at: node, members: "1,2,3,4", primary: true) }
        var connections: [DLMConnection] = []
        var held: [DLMLock] = []
        var spaces: [DLMLockspace] = []
        for node in 1...4 {
            let connection = try await DLMConnection.connect(socketPath: cluster.socket(node))
            connections.append(connection)
            let space = try await connection.openLockspace("cycle")
            spaces.append(space)
            // The first holder's node masters the name.
            held.append(try await space.lock("hop\(node)", mode: .ex))
        }
        let outcomes = try await withThrowingTaskGroup(of: (Int, DLMStatus?)?.self) { group in
            for i in 0..<4 {
                let space = spaces[i]
                let mine = held[i]
                group.addTask {
                    do {
                        let next = try await space.lock("hop\((i + 1) % 4 + 1)", mode: .ex)
                        try await next.unlock()
                        try await mine.unlock()
                        return (i, nil)
                    } catch let error as DLMError {
                        // The victim lets its own name go, so that the one waiting for it gets through.
                        try await mine.unlock()
                        return (i, error.status)
                    }
                }
            }
            // A hang detector: a cycle nobody breaks would wait for ever.
            group.addTask {
                try await Task.sleep(for: .seconds(120))
                return nil
            }
            var outcomes: [(Int, DLMStatus?)] = []
            while outcomes.count < 4, let outcome = try await group.next() {
                guard let outcome else { throw SupportError("the four requests did not end within 120 s") }
                outcomes.append(outcome)
            }
            group.cancelAll()
            return outcomes
        }
        let refused = outcomes.compactMap { $0.1 }
        #expect(refused == [.deadlock], "outcomes \(outcomes)")
        // `dlmtool status` counts the victim once, on the node that decided it.
        var victims = 0
        for node in 1...4 {
            let result = try await ToolRun.run(arguments: ["status", "--json", "--socket", cluster.socket(node)])
            let work = try JSONDecoder().decode(StatusReport.self, from: result.output).work
            victims += work?.clusterDeadlockVictims ?? 0
        }
        #expect(victims == 1)
        for connection in connections { await connection.close() }
    }
}
