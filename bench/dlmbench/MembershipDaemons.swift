import DLMTestSupport
import Foundation
import GroupNode

/// `dlmbench membership-kill --dlmd PATH [--nodes N] [--rounds N]`: real `dlmd` cluster members on loopback, each
/// a process of its own with its own store. Each round kills (SIGKILL) the highest node and times from the kill to
/// the moment every survivor printed a primary view without it (the "view ... primary" line dlmd prints on
/// standard output, stamped when read); then restarts the node and waits until every node installed a view with
/// it again. Default timeouts (detection budget 1.5 s), fence command /bin/true. One JSON object.
enum MembershipDaemons {
    static let optionNames = ["dlmd", "nodes", "rounds"]

    static func run(_ options: Options) -> String {
        let dlmd = options.string("dlmd", "")
        guard !dlmd.isEmpty else { fail("--dlmd PATH: the dlmd to run") }
        let count = options.int("nodes", 3)
        let rounds = options.int("rounds", 10)
        guard count >= 3 else { fail("--nodes: at least 3, so that the survivors keep quorum") }
        let directory = NSTemporaryDirectory() + "dlmbench-members-\(getpid())"
        try? FileManager.default.createDirectory(atPath: directory, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(atPath: directory) }
        do {
            try ClusterKey.generate().write(to: directory + "/authkey")
        } catch {
            fail("cannot write the key: \(error)")
        }
        var config = """
            [cluster]
            name = "bench"
            key_file = "authkey"
            [quorum]
            expected_votes = \(count)
            [fencing]
            command = "/bin/true"

            """
        for node in 1...count {
            let port: Int
            do { port = try freePort() } catch { fail("\(error)") }
            config += "[[node]]\nid = \(node)\naddress = \"127.0.0.1:\(port)\"\n"
        }
        do {
            try config.write(toFile: directory + "/cluster.toml", atomically: true, encoding: .utf8)
        } catch {
            fail("cannot write the config: \(error)")
        }
        func start(_ node: Int) -> Daemon {
            do {
                return try Daemon(
                    executable: dlmd, directory: directory + "/node\(node)",
                    arguments: ["--config", directory + "/cluster.toml", "--node-id", "\(node)"], logLevel: "error")
            } catch {
                fail("cannot start node \(node): \(error)")
            }
        }
        /// The first line from the last one seen on that satisfies `predicate`, waiting for it (at most 60 s).
        func wait(_ member: Daemon, _ what: String, _ predicate: (String) -> Bool) -> ContinuousClock.Instant {
            do { return try member.log.wait(for: what, predicate).at } catch { fail("\(error)") }
        }
        func isView(_ line: String, of members: [String]) -> Bool {
            line.hasSuffix(" members \(members.joined(separator: ",")) primary")
        }
        var members = (1...count).map(start)
        var names = (1...count).map(String.init)
        for member in members { _ = wait(member, "the first view") { isView($0, of: names) } }
        var failover: [Double] = []
        let victim = count
        for round in 1...rounds {
            let survivors = members.dropLast()
            for member in survivors { member.log.skipToEnd() }
            let killed = ContinuousClock.now
            members[victim - 1].kill()
            var latest = killed
            for member in survivors {
                let seen = wait(member, "a view without node \(victim)") { isView($0, of: Array(names.dropLast())) }
                latest = max(latest, seen)
            }
            failover.append(MembershipScenarios.seconds(latest - killed))
            // Back as its next incarnation.
            members[victim - 1] = start(victim)
            names[victim - 1] = "\(victim)#\(round + 1)"
            for member in members {
                _ = wait(member, "a view with node \(victim) back") { isView($0, of: names) }
            }
        }
        for member in members { member.kill() }
        return """
            {"scenario": "membership-kill", "nodes": \(count), "rounds": \(rounds), \
            "kill_to_view_ms": \(MembershipScenarios.stats(failover)), \
            "what": "kill -9 of a dlmd member to a primary view without it printed by every survivor", \
            "timeouts": "defaults (heartbeat 200 ms, suspect 1000 ms, view change 500 ms)", \
            "fence": "/bin/true", "transport": "TCP loopback, HMAC-SHA256"}
            """
    }
}
