import Foundation
import GroupNode

/// `dlmbench membership-kill --dlmd PATH [--nodes N] [--rounds N]`: real `dlmd` cluster members on loopback, each
/// a process of its own with its own store. Each round kills (SIGKILL) the highest node and times from the kill to
/// the moment every survivor printed a primary view without it (the "view ... primary" line dlmd prints on
/// standard output, stamped when read); then restarts the node and waits until every node installed a view with
/// it again. Default timeouts (detection budget 1.5 s), fence command /bin/true. One JSON object.
enum MembershipDaemons {
    static let optionNames = ["dlmd", "nodes", "rounds"]

    /// A dlmd process and the lines it printed, each with the time it was read.
    final class Member: @unchecked Sendable {
        let process = Process()
        let condition = NSCondition()
        var lines: [(text: String, at: ContinuousClock.Instant)] = []

        init(dlmd: String, arguments: [String]) {
            process.executableURL = URL(fileURLWithPath: dlmd)
            process.arguments = arguments
            let pipe = Pipe()
            process.standardOutput = pipe
            process.standardError = FileHandle.nullDevice
            do { try process.run() } catch { fail("cannot start \(dlmd): \(error)") }
            let handle = pipe.fileHandleForReading
            Thread.detachNewThread { [self] in
                var pending = Data()
                while true {
                    let chunk = handle.availableData
                    if chunk.isEmpty { return }
                    let now = ContinuousClock.now
                    pending.append(chunk)
                    condition.lock()
                    while let newline = pending.firstIndex(of: UInt8(ascii: "\n")) {
                        lines.append((String(decoding: pending[pending.startIndex..<newline], as: UTF8.self), now))
                        pending = Data(pending[pending.index(after: newline)...])
                    }
                    condition.broadcast()
                    condition.unlock()
                }
            }
        }

        /// The first line from index `from` on that satisfies `predicate`, waiting for it (at most 60 s).
        func wait(from: Int, _ what: String, _ predicate: (String) -> Bool) -> (index: Int, at: ContinuousClock.Instant)
        {
            let deadline = Date().addingTimeInterval(60)
            condition.lock()
            defer { condition.unlock() }
            var index = from
            while true {
                while index < lines.count {
                    if predicate(lines[index].text) { return (index, lines[index].at) }
                    index += 1
                }
                if !condition.wait(until: deadline) { fail("no \(what) within 60 s: \(lines.map(\.text))") }
            }
        }

        var count: Int {
            condition.lock()
            defer { condition.unlock() }
            return lines.count
        }

        func kill() {
            Foundation.kill(process.processIdentifier, SIGKILL)
            process.waitUntilExit()
        }
    }

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
            do { port = try freeTCPPort() } catch { fail("\(error)") }
            config += "[[node]]\nid = \(node)\naddress = \"127.0.0.1:\(port)\"\n"
        }
        do {
            try config.write(toFile: directory + "/cluster.toml", atomically: true, encoding: .utf8)
        } catch {
            fail("cannot write the config: \(error)")
        }
        func start(_ node: Int) -> Member {
            Member(
                dlmd: dlmd,
                arguments: [
                    "--config", directory + "/cluster.toml", "--node-id", "\(node)", "--data-dir",
                    directory + "/node\(node)", "--socket", directory + "/node\(node).sock", "--log-level", "error",
                ])
        }
        func isView(_ line: String, of members: [String]) -> Bool {
            line.hasSuffix(" members \(members.joined(separator: ",")) primary")
        }
        var members = (1...count).map(start)
        var names = (1...count).map(String.init)
        for member in members { _ = member.wait(from: 0, "the first view") { isView($0, of: names) } }
        var failover: [Double] = []
        let victim = count
        for round in 1...rounds {
            let survivors = members.dropLast()
            let marks = survivors.map(\.count)
            let killed = ContinuousClock.now
            members[victim - 1].kill()
            var latest = killed
            for (member, mark) in zip(survivors, marks) {
                let seen = member.wait(from: mark, "a view without node \(victim)") {
                    isView($0, of: Array(names.dropLast()))
                }
                latest = max(latest, seen.at)
            }
            failover.append(MembershipScenarios.seconds(latest - killed))
            // Back as its next incarnation.
            members[victim - 1] = start(victim)
            names[victim - 1] = "\(victim)#\(round + 1)"
            for member in members {
                _ = member.wait(from: 0, "a view with node \(victim) back") { isView($0, of: names) }
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

    /// A TCP port on 127.0.0.1 that nothing listens on right now.
    static func freeTCPPort() throws -> Int {
        let fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
        defer { close(fd) }
        var address = sockaddr_in()
        address.sin_family = sa_family_t(AF_INET)
        address.sin_addr.s_addr = inet_addr("127.0.0.1")
        var length = socklen_t(MemoryLayout<sockaddr_in>.size)
        let bound = withUnsafeMutablePointer(to: &address) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) {
                bind(fd, $0, length) == 0 && getsockname(fd, $0, &length) == 0
            }
        }
        guard fd >= 0, bound else { fail("cannot find a free TCP port") }
        return Int(UInt16(bigEndian: address.sin_port))
    }
}
