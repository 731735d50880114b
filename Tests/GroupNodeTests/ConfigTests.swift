import Foundation
import GroupNode
import GroupServices
import Testing

let exampleConfig = """
    [cluster]
    name = "demo"
    key_file = "/etc/dlm/authkey"

    [quorum]
    expected_votes = 3

    [fencing]
    command = "/usr/local/sbin/fence-node"   # called with the node id; exit 0 = fenced

    [[node]]
    id = 1
    address = "127.0.0.1:7101"

    [[node]]
    id = 2
    address = "127.0.0.1:7102"

    [[node]]
    id = 3
    address = "127.0.0.1:7103"
    """

@Suite struct ConfigTests {
    let file = "/etc/dlm/cluster.toml"

    func error(_ text: String) -> String? {
        do {
            _ = try ClusterConfig.parse(text, file: file)
            return nil
        } catch let error as ClusterConfigError {
            return error.description
        } catch {
            return "unexpected \(error)"
        }
    }

    /// The example with `replace` replaced by `with`.
    func variant(_ replace: String, _ with: String) -> String {
        precondition(exampleConfig.contains(replace))
        return exampleConfig.replacingOccurrences(of: replace, with: with)
    }

    /// `provider = "corosync"`: no node list or quorum in the file (corosync's), a lock-traffic port; the nodes,
    /// and the name when the file has none, come from corosync's nodelist (`completed(with:)`).
    @Test func theCorosyncProvider() throws {
        let text = """
            [cluster]
            provider = "corosync"
            port = 7400
            key_file = "authkey"

            [fencing]
            command = "/usr/local/sbin/dlm-fence"
            """
        let config = try ClusterConfig.parse(text, file: file)
        #expect(config.provider == .corosync(port: 7400) && config.nodes.isEmpty && config.name.isEmpty)
        #expect(config.keyFile == "/etc/dlm/authkey")
        let nodelist = CorosyncNodelist(
            nodes: [
                .init(id: 1, address: "10.0.0.1", name: "a", votes: 1),
                .init(id: 7, address: "10.0.0.7", name: "b", votes: 2),
            ], localNode: 7, clusterName: "prod")
        let completed = try config.completed(with: nodelist, file: file)
        #expect(completed.name == "prod")
        #expect(completed.nodes.map(\.address) == ["10.0.0.1:7400", "10.0.0.7:7400"])
        #expect(completed.nodes.map(\.votes) == [1, 2] && completed.node(7) != nil)
        // A name in the file wins; with neither, an error.
        let named = try ClusterConfig.parse(
            text.replacingOccurrences(of: "port = 7400", with: "port = 7400\nname = \"x\""), file: file)
        #expect(try named.completed(with: nodelist, file: file).name == "x")
        var unnamed = nodelist
        unnamed.clusterName = ""
        #expect(throws: ClusterConfigError.self) { try config.completed(with: unnamed, file: file) }
        // A built-in config is left as it is.
        let builtIn = try ClusterConfig.parse(exampleConfig, file: file)
        #expect(try builtIn.completed(with: nodelist, file: file) == builtIn)

        #expect(error(text.replacingOccurrences(of: "port = 7400\n", with: "")) == "\(file): cluster.port: missing")
        #expect(
            error(text.replacingOccurrences(of: "port = 7400", with: "port = 70000"))
                == "\(file): cluster.port: must be an integer from 1 to 65535")
        #expect(
            error(text.replacingOccurrences(of: "\"corosync\"", with: "\"heartbeat\""))
                == "\(file): cluster.provider: must be \"builtin\" or \"corosync\"")
        #expect(
            error(text + "\n[[node]]\nid = 1\naddress = \"127.0.0.1:1\"\n")
                == "\(file): node: not with provider = \"corosync\" (the node list and quorum come from corosync)")
        #expect(
            error(text + "\n[quorum]\nexpected_votes = 3\n")
                == "\(file): quorum: not with provider = \"corosync\" (the node list and quorum come from corosync)")
        #expect(
            error(variant("name = \"demo\"", "name = \"demo\"\nport = 7400"))
                == "\(file): cluster.port: only with provider = \"corosync\"")
        #expect(
            try ClusterConfig.parse(variant("name = \"demo\"", "name = \"demo\"\nprovider = \"builtin\""), file: file)
                == builtIn)
    }

    /// dlmd's own `[dlmd]` table: its keys as given, none without the table; an unknown key, a value of the wrong
    /// type, a `dlmd` that is not a table and malformed TOML are errors naming the file (and the place).
    @Test func theDaemonTable() throws {
        let text =
            exampleConfig
            + "\n[dlmd]\nsocket = \"/run/dlm/x.sock\"\nmax_queued_requests = 64\ntls_cert = \"/etc/dlm/dlmd.crt\"\n"
        var expected = DaemonSettings()
        expected.socket = "/run/dlm/x.sock"
        expected.max_queued_requests = 64
        expected.tls_cert = "/etc/dlm/dlmd.crt"
        #expect(try DaemonSettings.parse(text, file: file) == expected)
        #expect(try DaemonSettings.parse(exampleConfig, file: file) == DaemonSettings())
        func refusal(_ text: String) -> String? {
            do throws(DaemonSettings.Invalid) {
                _ = try DaemonSettings.parse(text, file: file)
                return nil
            } catch {
                return error.description
            }
        }
        #expect(refusal("[dlmd]\nsockt = \"x\"\n")?.hasPrefix("\(file): unknown key dlmd.sockt (known: ") == true)
        #expect(refusal("[dlmd]\nmax_connections = \"many\"\n") == "\(file): dlmd.max_connections must be an integer")
        #expect(refusal("[dlmd]\nsocket = 7\n") == "\(file): dlmd.socket must be a string")
        #expect(refusal("[dlmd]\ndeadlock_wait = \"soon\"\n") == "\(file): dlmd.deadlock_wait must be a number")
        #expect(
            DaemonSettings.types.count == 22 && DaemonSettings.types["tls_client_ca"] == "string"
                && DaemonSettings.types["node_id"] == "integer")
        #expect(refusal("dlmd = 3\n") == "\(file): [dlmd] must be a table")
        #expect(refusal("[/") == "\(file):1:2: a table header must start with a key, not '/'")
        #expect(refusal("[dlmd]\nsocket = \n")?.hasPrefix("\(file):2:") == true)
    }

    /// A table header whose key starts with a character no key can start with made the TOML parser abort dlmd
    /// (an assertion in toml++; found by `make fuzz`, input `[/`). It is an error naming the line and column; a `[`
    /// inside a string, a comment or an array value is no header.
    @Test func aTableHeaderWithoutAKeyIsAnErrorNotAnAbort() throws {
        #expect(error("[/") == "\(file): line 1, column 2: a table header must start with a key, not '/'")
        #expect(error("# a comment\n\n  [[ {x = 1}]]\n")?.contains("line 3, column 6") == true)
        let valid =
            exampleConfig + """

                [timeouts]
                # [/ not a header
                """
        #expect(throws: Never.self) { try ConfigText.checkTableHeaders(valid) }
        for text in [
            "a = [\n[ {b = 1} ],\n]\n", "s = \"[/\"\n", "m = \"\"\"\n[/\n\"\"\"\n", "l = '''\n[/\n'''\n",
            "t = { a = [ [ ] ] }\n[x]\n", "[\"q\"]\n[ 'r' ]\n[[s]]\n",
        ] {
            #expect(throws: Never.self, "\(text)") { try ConfigText.checkTableHeaders(text) }
        }
    }

    @Test func theExampleParses() throws {
        let config = try ClusterConfig.parse(exampleConfig, file: file)
        #expect(config.name == "demo")
        #expect(config.keyFile == "/etc/dlm/authkey")
        #expect(config.expectedVotes == 3)
        #expect(!config.twoNode && !config.waitForAll)
        #expect(config.fenceCommand == "/usr/local/sbin/fence-node")
        #expect(config.fenceTimeout == 60)
        #expect(
            config.nodes == [
                .init(id: 1, host: "127.0.0.1", port: 7101, votes: 1),
                .init(id: 2, host: "127.0.0.1", port: 7102, votes: 1),
                .init(id: 3, host: "127.0.0.1", port: 7103, votes: 1),
            ])
        #expect(config.node(2)?.port == 7102)
        #expect(config.node(4) == nil)
        let settings = config.settings
        #expect(settings == Settings(nodes: 3))
        #expect(settings.detectionTime == 1500 * Settings.millisecond)
    }

    @Test func optionalKeys() throws {
        let text =
            exampleConfig.replacingOccurrences(
                of: "expected_votes = 3", with: "expected_votes = 5\nwait_for_all = true"
            )
            .replacingOccurrences(of: "address = \"127.0.0.1:7103\"", with: "address = \"[::1]:7103\"\nvotes = 2")
                + """

                [timeouts]
                heartbeat_ms = 50
                suspect_ms = 300
                view_change_ms = 250
                flush_ms = 150
                retransmit_ms = 20
                fence_retry_ms = 100
                join_delay_ms = 0
                toss_ms = 2500
                """
        let config = try ClusterConfig.parse(
            text.replacingOccurrences(of: "[fencing]", with: "[fencing]\ntimeout = 2.5"), file: file)
        #expect(config.waitForAll)
        #expect(config.fenceTimeout == 2.5)
        #expect(config.node(3) == .init(id: 3, host: "::1", port: 7103, votes: 2))
        #expect(config.node(3)?.address == "[::1]:7103")
        let ms = Settings.millisecond
        #expect(
            config.settings
                == Settings(
                    votes: [1: 1, 2: 1, 3: 2], expectedVotes: 5, waitForAll: true, heartbeatInterval: 50 * ms,
                    suspectTimeout: 300 * ms, viewChangeTime: 250 * ms, flushTimeout: 150 * ms,
                    retransmitInterval: 20 * ms, fenceRetryInterval: 100 * ms, joinDelay: 0))
        #expect(config.tossDelay == 2500)
    }

    @Test func aDlmdTableIsIgnored() throws {
        let text = exampleConfig + "\n\n[dlmd]\nsocket = \"/run/dlm/dlmd.sock\"\nwhatever = 3\n"
        #expect(try ClusterConfig.parse(text, file: file).name == "demo")
    }

    @Test func aRelativeKeyFileIsResolvedAgainstTheConfigDirectory() throws {
        let text = variant("key_file = \"/etc/dlm/authkey\"", "key_file = \"keys/authkey\"")
        #expect(try ClusterConfig.parse(text, file: "/srv/dlm/cluster.toml").keyFile == "/srv/dlm/keys/authkey")
        let up = variant("key_file = \"/etc/dlm/authkey\"", "key_file = \"../authkey\"")
        #expect(try ClusterConfig.parse(up, file: "/srv/dlm/cluster.toml").keyFile == "/srv/authkey")
    }

    @Test func loadReadsTheFile() throws {
        let directory = FileManager.default.temporaryDirectory.appendingPathComponent("cfg-\(UUID().uuidString)")
        try FileManager.default.createDirectory(at: directory, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(at: directory) }
        let path = directory.appendingPathComponent("cluster.toml").path
        try variant("key_file = \"/etc/dlm/authkey\"", "key_file = \"authkey\"")
            .write(toFile: path, atomically: false, encoding: .utf8)
        #expect(try ClusterConfig.load(path: path).keyFile == directory.appendingPathComponent("authkey").path)
        #expect(throws: ClusterConfigError.self) { try ClusterConfig.load(path: path + ".missing") }
    }

    /// The config names the fence command, which dlmd runs: a file that its group or every user may change, or
    /// that another user owns, is refused (owner root or dlmd's user, no group or other write bit).
    @Test func aConfigOthersMayChangeIsRefused() throws {
        let directory = FileManager.default.temporaryDirectory.appendingPathComponent("cfg-\(UUID().uuidString)")
        try FileManager.default.createDirectory(at: directory, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(at: directory) }
        let path = directory.appendingPathComponent("cluster.toml").path
        try exampleConfig.write(toFile: path, atomically: false, encoding: .utf8)
        func refusal() -> String? {
            do {
                _ = try ClusterConfig.load(path: path)
                return nil
            } catch {
                return "\(error)"
            }
        }
        for mode in [0o666, 0o664, 0o646] as [mode_t] {
            chmod(path, mode)
            #expect(refusal()?.contains("may be changed by its group or by every user") == true, "mode \(mode)")
        }
        chmod(path, 0o644)
        #expect(refusal() == nil)
        if geteuid() == 0 {
            chown(path, 65534, 65534)
            #expect(refusal()?.contains("is owned by user 65534") == true)
        }
    }

    @Test func errorsNameTheKey() {
        let cases: [(String, String)] = [
            (variant("127.0.0.1:7103", "127.0.0.1"), "node[2].address: \"127.0.0.1\" is not HOST:PORT"),
            (variant("127.0.0.1:7103", "127.0.0.1:70000"), "node[2].address: \"127.0.0.1:70000\" is not HOST:PORT"),
            (
                variant("expected_votes = 3", "expected_votes = 2"),
                "quorum.expected_votes: must be an integer >= 3 (the sum of the nodes' votes)"
            ),
            (variant("expected_votes = 3", "expected_votes = \"3\""), "quorum.expected_votes: must be an integer"),
            (variant("name = \"demo\"", "nmae = \"demo\""), "unknown key cluster.nmae"),
            (variant("[quorum]", "[quorom]"), "unknown table or key quorom"),
            (variant("id = 3", "id = 2"), "node[2].id: 2 is also the id of node[1]"),
            (variant("id = 3", "id = 0"), "node[2].id: must be an integer from 1 to 4294967295"),
            (variant("id = 3", "id = 3\nvote = 2"), "unknown key node[2].vote"),
            (variant("id = 3", "id = 3\nvotes = 0"), "node[2].votes: must be an integer from 1 to 1000000"),
            (
                variant("127.0.0.1:7103", "127.0.0.1:7102"),
                "node[2].address: 127.0.0.1:7102 is also the address of node[1]"
            ),
            (variant("command = \"/usr/local/sbin/fence-node\"", ""), "fencing.command: missing"),
            (
                variant("command = \"/usr/local/sbin/fence-node\"", "command = \"\""),
                "fencing.command: must not be empty"
            ),
            (variant("[fencing]", "[fencing]\ntimeout = 0"), "fencing.timeout: must be a number of seconds > 0"),
            (variant("[fencing]", "[fencing]\ntimeout = \"1\""), "fencing.timeout: must be a number of seconds"),
            (variant("name = \"demo\"", ""), "cluster.name: missing"),
            (variant("key_file = \"/etc/dlm/authkey\"", ""), "cluster.key_file: missing"),
            (variant("expected_votes = 3", "two_node = true"), "quorum.two_node: needs exactly two nodes"),
            (variant("expected_votes = 3", "wait_for_all = 1"), "quorum.wait_for_all: must be true or false"),
            (exampleConfig.components(separatedBy: "[[node]]")[0], "node: the node list is empty"),
            (
                exampleConfig + "\n[timeouts]\nheartbeat_ms = 600\n",
                "timeouts.suspect_ms: must be at least twice timeouts.heartbeat_ms (1200)"
            ),
            (
                exampleConfig + "\n[timeouts]\nflush_ms = 600\n",
                "timeouts.flush_ms: must be at most timeouts.view_change_ms (500)"
            ),
            (
                exampleConfig + "\n[timeouts]\nretransmit_ms = 200\n",
                "timeouts.flush_ms: must be at least twice timeouts.retransmit_ms (400)"
            ),
            (exampleConfig + "\n[timeouts]\nheartbeat_ms = 0\n", "timeouts.heartbeat_ms: must be an integer from 1"),
            (exampleConfig + "\n[timeouts]\nsuspect = 3\n", "unknown key timeouts.suspect"),
            (exampleConfig + "\n[timeouts]\nsuspect_ms = 99999999999\n", "timeouts.suspect_ms: must be an integer"),
            ("[cluster\nname = 1", "line 1"),
        ]
        for (text, expected) in cases {
            let message = error(text)
            #expect(message?.hasPrefix("\(file): ") == true, "\(expected)")
            #expect(message?.contains(expected) == true, "\(message ?? "no error") should contain \(expected)")
        }
    }

    @Test func twoNode() throws {
        let text = exampleConfig.replacingOccurrences(of: "expected_votes = 3", with: "two_node = true")
            .components(separatedBy: "[[node]]\nid = 3")[0]
        let config = try ClusterConfig.parse(text, file: file)
        #expect(config.twoNode)
        #expect(config.settings.waitForAll)
        #expect(config.settings.quorumVotes == 1)
        #expect(
            error(text.replacingOccurrences(of: "two_node = true", with: "two_node = true\nauto_tie_breaker = true"))?
                .contains("quorum.auto_tie_breaker: not with two_node (choose one)") == true)
    }

    /// `auto_tie_breaker`: of four nodes (one vote each), two are quorate only with node 1 among them.
    @Test func autoTieBreaker() throws {
        let text = exampleConfig.replacingOccurrences(
            of: "expected_votes = 3", with: "expected_votes = 4\nauto_tie_breaker = true")
        let config = try ClusterConfig.parse(text, file: file)
        #expect(config.autoTieBreaker && config.settings.tieBreakerNode == 1)
        #expect(config.settings.isQuorate([1, 2]) && config.settings.isQuorate([1, 3]))
        #expect(!config.settings.isQuorate([2, 3]) && !config.settings.isQuorate([1]))
        #expect(!(try ClusterConfig.parse(exampleConfig, file: file)).settings.isQuorate([1]))
    }
}
