import Foundation

/// corosync 3 in each namespace of a `Network`, by default with a tuned token (1 s: a failed node leaves the
/// membership in about 3.6 s instead of 8), each with its own /run and /var/lib/corosync, bind-mounted inside the
/// namespace, and no blackbox (a corosync killed with `kill -9` would leave its 8 MB flight recorder in /dev/shm;
/// `kill` removes its IPC connections' shared memory).
public final class CorosyncRing: @unchecked Sendable {
    public static let executable = "/usr/sbin/corosync"
    public let network: Network
    public let directory: String
    public private(set) var processes: [Int: (process: Process, log: LineLog)] = [:]

    /// corosync on every node of `network`, each started and providing service. `token` is totem's token timeout
    /// in milliseconds (nil: corosync's default, 3000).
    public init(network: Network, token: Int? = 1000) throws {
        self.network = network
        directory = Daemon.temporaryDirectory("dlm-corosync")
        let nodes = network.addresses.enumerated().map {
            "  node {\n    ring0_addr: \($0.element)\n    nodeid: \($0.offset + 1)\n    name: node\($0.offset + 1)\n  }\n"
        }.joined()
        let tokenLine = token.map { "  token: \($0)\n" } ?? ""
        let config = """
            totem {
              version: 2
              cluster_name: test
              transport: knet
              crypto_cipher: none
              crypto_hash: none
            \(tokenLine)}
            nodelist {
            \(nodes)}
            quorum {
              provider: corosync_votequorum
            }
            logging {
              blackbox: off
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
            try config.write(toFile: "\(directory)/node\(node)/corosync.conf", atomically: false, encoding: .utf8)
        }
        do {
            for node in 1...network.count { try start(node) }
        } catch {
            stopAll()
            throw error
        }
    }

    /// Starts node `node`'s corosync and returns once its ring holds every corosync that runs. A corosync started
    /// right after a `kill -9` of the node's last one stayed out of the ring once in about 180 kill rounds
    /// (`KillRoundsTests`), before any dlmd of its node ran: one that has not joined within 30 s is killed and
    /// started once more, and the error names the tail of both logs.
    public func start(_ node: Int) throws {
        do {
            try launch(node, timeout: 30)
        } catch {
            let tail = processes[node]?.log.all.suffix(20) ?? []
            kill(node)
            print(
                "corosync of node \(node) did not join its ring within 30 s; started again. Its log ended: \(Array(tail))"
            )
            do {
                try launch(node, timeout: 60)
            } catch {
                throw SupportError(
                    "\(error); a first start before it did not join either, its log ending \(Array(tail))")
            }
        }
    }

    private func launch(_ node: Int, timeout: TimeInterval) throws {
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
        // Until its ring has every corosync that runs: a dlmd started before would fence the nodes not counted yet
        // (CorosyncMember fences nodes corosync does not count before a first primary view).
        let running = processes.values.filter { $0.process.isRunning }.count
        try log.wait(for: "corosync of node \(node) in a ring of \(running)", timeout: timeout) {
            $0.contains("[QUORUM] Members[\(running)]:")
        }
    }

    /// kill -9 of node `node`'s corosync; returns once it is gone. The shared memory of its IPC connections
    /// (libqb's `/dev/shm/qb-PID-...`, a few MB each), which only a corosync that exits cleanly removes, goes too.
    public func kill(_ node: Int) {
        guard let (process, _) = processes[node], process.isRunning else { return }
        let pid = process.processIdentifier
        Foundation.kill(pid, SIGKILL)
        process.waitUntilExit()
        let shm = "/dev/shm"
        for name in (try? FileManager.default.contentsOfDirectory(atPath: shm)) ?? [] where name.hasPrefix("qb-\(pid)-")
        {
            try? FileManager.default.removeItem(atPath: "\(shm)/\(name)")
        }
    }

    public func stopAll() {
        for node in processes.keys { kill(node) }
    }

    deinit {
        stopAll()
        try? FileManager.default.removeItem(atPath: directory)
    }
}
