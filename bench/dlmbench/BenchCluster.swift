import DLMTestSupport
import Foundation
import GroupNode

/// Real `dlmd` cluster members on loopback for the benchmarks, each a process of its own with its own store and
/// socket: one config (default timeouts, fence command /bin/true), nodes 1...N started and waited for until every
/// one installed the first primary view. Node numbers are 1-based. With a `network`, node N runs in its namespace
/// and listens on its address; with `corosyncPort` too, the nodes take membership from the corosync running there.
final class BenchCluster {
    let dlmd: String
    let directory: String
    let count: Int
    private(set) var members: [Daemon] = []
    /// Each node's name in a view line: "3", then "3#2" once restarted.
    private(set) var names: [String]

    /// `arguments`: more for every dlmd (e.g. `--deadlock-wait 0`).
    let extraArguments: [String]
    let network: Network?

    init(
        dlmd: String, nodes count: Int, logLevel: String = "error", arguments: [String] = [],
        network: Network? = nil, corosyncPort: Int? = nil
    ) {
        extraArguments = arguments
        self.network = network
        guard !dlmd.isEmpty else { fail("--dlmd PATH: the dlmd to run") }
        self.dlmd = dlmd
        self.count = count
        names = (1...count).map(String.init)
        directory = NSTemporaryDirectory() + "dlmbench-cluster-\(getpid())"
        try? FileManager.default.removeItem(atPath: directory)
        try? FileManager.default.createDirectory(atPath: directory, withIntermediateDirectories: true)
        do {
            try ClusterKey.generate().write(to: directory + "/authkey")
        } catch {
            fail("cannot write the key: \(error)")
        }
        var config = """
            [cluster]
            name = "bench"
            key_file = "authkey"
            \(corosyncPort.map { "provider = \"corosync\"\nport = \($0)" } ?? "")
            [fencing]
            command = "/bin/true"
            [timeouts]
            # An idle resource keeps its master for the whole run: the scenarios make a node master of their
            # resources by taking and releasing a lock on each, and the default toss delay (10 s) would let the
            # holders' own nodes master them again before the measurement (minutes later, for a million locks).
            toss_ms = 3600000

            """
        if corosyncPort == nil {
            config += "[quorum]\nexpected_votes = \(count)\n"
            for node in 1...count {
                let address: String
                if let network {
                    address = "\(network.addresses[node - 1]):7100"
                } else {
                    do { address = "127.0.0.1:\(try freePort())" } catch { fail("\(error)") }
                }
                config += "[[node]]\nid = \(node)\naddress = \"\(address)\"\n"
            }
        }
        do {
            try config.write(toFile: directory + "/cluster.toml", atomically: false, encoding: .utf8)
        } catch {
            fail("cannot write the config: \(error)")
        }
        members = (1...count).map { start($0, logLevel: logLevel) }
        for node in 1...count { waitForView(at: node, of: names) }
    }

    deinit {
        for member in members { member.kill() }
        try? FileManager.default.removeItem(atPath: directory)
    }

    private func start(_ node: Int, logLevel: String) -> Daemon {
        do {
            return try Daemon(
                executable: dlmd, directory: directory + "/node\(node)",
                arguments: ["--config", directory + "/cluster.toml", "--node-id", "\(node)"] + extraArguments,
                launcher: network?.launcher(node) ?? [], logLevel: logLevel)
        } catch {
            fail("cannot start node \(node): \(error)")
        }
    }

    func member(_ node: Int) -> Daemon { members[node - 1] }

    /// The CPU time (user and system) that `node`'s dlmd has used so far, in milliseconds, from /proc (10 ms steps):
    /// the work a step cost a node, which the other processes of a noisy machine do not stretch as they stretch
    /// the wall-clock time.
    func cpuMilliseconds(_ node: Int) -> Double {
        let pid = members[node - 1].process.processIdentifier
        guard let stat = try? String(contentsOfFile: "/proc/\(pid)/stat", encoding: .utf8),
            let end = stat.lastIndex(of: ")")
        else { return 0 }
        // After the command's closing parenthesis: state (field 3) first; utime and stime are fields 14 and 15.
        let fields = stat[stat.index(after: end)...].split(separator: " ")
        guard fields.count > 12, let user = Double(fields[11]), let system = Double(fields[12]) else { return 0 }
        return (user + system) * 1000 / Double(sysconf(Int32(_SC_CLK_TCK)))
    }

    func socket(_ node: Int) -> String { members[node - 1].socketPath }

    /// SIGKILL of `node`, waiting for its end; the time of the kill.
    @discardableResult
    func kill(_ node: Int) -> ContinuousClock.Instant {
        let killed = ContinuousClock.now
        members[node - 1].kill()
        return killed
    }

    /// Starts `node` again, as its next incarnation `round` (2, 3, ...).
    func restart(_ node: Int, incarnation: Int, logLevel: String = "error") {
        members[node - 1] = start(node, logLevel: logLevel)
        names[node - 1] = "\(node)#\(incarnation)"
    }

    /// The time `node` printed the first line after the last one matched that satisfies `predicate`, waiting for it
    /// (at most `timeout` seconds: a hang detector).
    @discardableResult
    func wait(
        _ node: Int, _ what: String, timeout: TimeInterval = 600, _ predicate: (String) -> Bool
    ) -> ContinuousClock.Instant {
        do { return try members[node - 1].log.wait(for: what, timeout: timeout, predicate).at } catch {
            fail("\(error)")
        }
    }

    /// Waits until `node` prints a primary view of exactly `members` (view-line names); its time.
    @discardableResult
    func waitForView(at node: Int, of members: [String]) -> ContinuousClock.Instant {
        let suffix = " members \(members.joined(separator: ",")) primary"
        return wait(node, "a view of \(members) at node \(node)") { $0.hasSuffix(suffix) }
    }

    /// Waits until `node` prints that recovery's phase 2 begins ("recovery phase 2 view V": every member rebuilt the
    /// directory and resent its locks); its time.
    func waitForRecoveryPhase2(at node: Int) -> ContinuousClock.Instant {
        wait(node, "phase 2 of a recovery at node \(node)") { $0.contains(" recovery phase 2 view ") }
    }

    /// Waits until `node` prints the end of a recovery ("recovery done view V"); its time and V.
    func waitForRecoveryDone(at node: Int) -> (at: ContinuousClock.Instant, view: String) {
        var view = ""
        let at = wait(node, "the end of a recovery at node \(node)") { line in
            guard let range = line.range(of: " recovery done view ") else { return false }
            view = String(line[range.upperBound...])
            return true
        }
        return (at, view)
    }

    /// Skips what every node printed so far.
    func skipLogs() {
        for member in members { member.log.skipToEnd() }
    }
}
