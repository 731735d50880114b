import DLMCluster
import DLMStore
import GroupNode

extension NodeConfiguration {
    /// The settings dlmd runs with, for `dlmtool dump-config` (QUERY kind 8; dlm_tool's `dump_config`): each under
    /// the key the config file gives it (`dlmd.` for the `[dlmd]` table, the cluster file's tables for the rest),
    /// defaults and command-line options included, in a fixed order.
    public func settingsInEffect() -> [(key: String, value: String)] {
        var settings: [(key: String, value: String)] = [
            ("dlmd.node_id", "\(nodeID)"),
            ("dlmd.socket", socketPath ?? "none"),
            ("dlmd.socket_mode", "0" + String(socketMode, radix: 8)),
            ("dlmd.socket_group", socketGroup ?? "dlmd's group"),
            ("dlmd.listen", listenAddress ?? "none"),
            ("dlmd.tls", clientTLS == nil ? "off" : "on (client certificate required)"),
            ("dlmd.data_dir", dataDirectory),
            ("dlmd.durability", durability.rawValue),
            ("dlmd.map_size", "\(mapSize >> 20)"),
            ("dlmd.deadlock_wait", "\(Double(engine.deadlockWait) / 1e9)"),
            ("dlmd.busy_poll", "\(busyPoll.nanoseconds / 1_000)"),
            ("dlmd.metrics", metricsAddress ?? "none"),
            ("dlmd.max_connections", "\(maxConnections)"),
            ("dlmd.max_lockspaces", "\(maxLockspaces)"),
            ("dlmd.max_locks_per_connection", "\(maxLocksPerConnection)"),
            ("dlmd.max_locks_per_user", "\(maxLocksPerUser)"),
            ("dlmd.max_queued_requests", "\(maxQueuedRequests)"),
            ("dlmd.output_pause_kib", "\(outputPauseBytes >> 10)"),
            ("dlmd.output_limit_kib", "\(outputLimitBytes >> 10)"),
        ]
        if let logLevel { settings.append(("dlmd.log_level", logLevel)) }
        guard let cluster else {
            settings.append(("cluster", "none (standalone)"))
            return settings
        }
        switch cluster.provider {
        case .builtIn:
            settings.append(("cluster.provider", "builtin"))
        case .corosync(let port):
            settings += [("cluster.provider", "corosync"), ("cluster.port", "\(port)")]
        }
        settings += [
            ("cluster.name", cluster.name), ("cluster.key_file", cluster.keyFile),
            ("fencing.command", cluster.fenceCommand), ("fencing.timeout", "\(cluster.fenceTimeout)"),
        ]
        // (With corosync, quorum is votequorum's and failure detection corosync's: of the timeouts only these two
        // count.)
        let builtIn = cluster.provider == .builtIn
        if builtIn {
            settings += [
                ("quorum.expected_votes", cluster.expectedVotes.map(String.init) ?? "the nodes' votes"),
                ("quorum.two_node", "\(cluster.twoNode)"), ("quorum.wait_for_all", "\(cluster.waitForAll)"),
                ("quorum.auto_tie_breaker", "\(cluster.autoTieBreaker)"),
            ]
        }
        for timeout in cluster.timeouts where builtIn || ["fence_retry_ms", "toss_ms"].contains(timeout.key) {
            settings.append(("timeouts.\(timeout.key)", "\(timeout.milliseconds)"))
        }
        for node in cluster.nodes {
            settings += [("node.\(node.id).address", node.address), ("node.\(node.id).votes", "\(node.votes)")]
        }
        return settings
    }
}
