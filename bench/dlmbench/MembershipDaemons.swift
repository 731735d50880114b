import Foundation

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
        let cluster = BenchCluster(dlmd: dlmd, nodes: count)
        var failover: [Double] = []
        let victim = count
        for round in 1...rounds {
            cluster.skipLogs()
            let killed = cluster.kill(victim)
            var latest = killed
            let survivors = Array(cluster.names.dropLast())
            for node in 1..<count {
                latest = max(latest, cluster.waitForView(at: node, of: survivors))
            }
            failover.append(MembershipScenarios.seconds(latest - killed))
            // Back as its next incarnation.
            cluster.restart(victim, incarnation: round + 1)
            for node in 1...count { cluster.waitForView(at: node, of: cluster.names) }
        }
        return """
            {"scenario": "membership-kill", "nodes": \(count), "rounds": \(rounds), \
            "kill_to_view_ms": \(MembershipScenarios.stats(failover)), \
            "what": "kill -9 of a dlmd member to a primary view without it printed by every survivor", \
            "timeouts": "defaults (heartbeat 200 ms, suspect 1000 ms, view change 500 ms)", \
            "fence": "/bin/true", "transport": "TCP loopback, HMAC-SHA256"}
            """
    }
}
