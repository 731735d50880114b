import DLMClient
import DLMCore
import DLMTestSupport
import DLMWire
import Foundation
import Testing

/// The real `dlmtool` against a real `dlmd`.
@Suite(.serialized, .timeLimit(.minutes(2)))
struct DlmtoolTests {
    // MARK: status, ls

    @Test func statusInTextAndJSON() async throws {
        let daemon = try Daemon()
        defer { daemon.stop() }
        let connection = try await DLMConnection.connect(socketPath: daemon.socketPath)
        let ls = try await connection.openLockspace("demo")
        let lock = try await ls.lock("r1", mode: .ex)

        let text = try await ToolRun.run(daemon, "status")
        #expect(text.status == 0, "\(text.stderr)")
        let fields = text.fields
        #expect(fields["node id"] == "1")
        #expect(fields["pid"] == "\(daemon.process.processIdentifier)")
        #expect(fields["socket"] == daemon.socketPath)
        #expect(fields["data dir"] == daemon.directory)
        #expect(fields["lockspaces"] == "1" && fields["resources"] == "1" && fields["locks"] == "1")
        #expect(fields["uptime"] != nil && fields["version"] != nil)
        #expect(fields["limits"] == "10000 connections (0 refused), 4096 lockspaces (0 refused)")
        #expect(
            fields["output limits"] == "pause reading at 1024 KiB unread, close at 65536 KiB; 0 paused now, 0 closed")

        let json = try await ToolRun.run(daemon, "status", "--json")
        #expect(json.status == 0, "\(json.stderr)")
        let report = try JSONDecoder().decode(StatusReport.self, from: json.output)
        #expect(report.nodeID == 1)
        #expect(report.pid == daemon.process.processIdentifier)
        #expect(report.socket == daemon.socketPath && report.dataDirectory == daemon.directory)
        #expect(report.lockspaces == 1 && report.resources == 1 && report.locks == 1)
        // This test's connection and dlmtool's own.
        #expect(report.connections == 2)
        #expect(report.uptimeSeconds >= 0)

        try await lock.unlock()
        await connection.close()
    }

    /// `dlmtool dump` prints what dlmd logged and announced lately, oldest first: its store opened, then where it
    /// listens (dlm_tool's `dump`).
    @Test func dumpPrintsWhatDlmdLogged() async throws {
        let daemon = try Daemon(logLevel: "info")
        defer { daemon.stop() }
        let text = try await ToolRun.run(daemon, "dump")
        #expect(text.status == 0, "\(text.stderr)")
        let lines = text.stdout.split(separator: "\n").map(String.init)
        let opened = lines.firstIndex { $0.contains("store opened") }
        let listening = lines.firstIndex { $0 == "dlmd: node 1 listening on unix:\(daemon.socketPath)" }
        #expect(opened != nil && listening != nil && opened! < listening!, "\(lines)")

        let json = try await ToolRun.run(daemon, "dump", "--json")
        #expect(json.status == 0, "\(json.stderr)")
        let report = try JSONDecoder().decode(LogReport.self, from: json.output)
        #expect(report.capacity == 2_000)
        #expect(report.lines.count >= 2 && report.lines.count <= report.capacity)
        #expect(report.lines.contains { $0.hasPrefix("dlmd: node 1 listening") })
    }

    /// `dlmtool dump-config` prints the settings dlmd runs with, command-line options and defaults alike.
    @Test func dumpConfigPrintsTheSettingsInEffect() async throws {
        let daemon = try Daemon(arguments: ["--durability", "sync", "--max-connections", "77"])
        defer { daemon.stop() }
        let text = try await ToolRun.run(daemon, "dump-config")
        #expect(text.status == 0, "\(text.stderr)")
        let lines = Set(text.stdout.split(separator: "\n").map(String.init))
        for line in [
            "dlmd.node_id=1", "dlmd.socket=\(daemon.socketPath)", "dlmd.data_dir=\(daemon.directory)",
            "dlmd.durability=sync", "dlmd.max_connections=77", "dlmd.log_level=warning",
            "dlmd.max_lockspaces=4096", "cluster=none (standalone)",
        ] {
            #expect(lines.contains(line), "\(line) not in \(lines)")
        }
        let json = try await ToolRun.run(daemon, "dump-config", "--json")
        let report = try JSONDecoder().decode(ConfigReport.self, from: json.output)
        #expect(report.settings.first == .init(key: "dlmd.node_id", value: "1"))
    }

    @Test func lsInTextAndJSON() async throws {
        let daemon = try Daemon()
        defer { daemon.stop() }
        let empty = try await ToolRun.run(daemon, "ls")
        #expect(empty.status == 0 && empty.stdout == "no lockspaces\n")

        let connection = try await DLMConnection.connect(socketPath: daemon.socketPath)
        let alpha = try await connection.openLockspace("alpha")
        _ = try await connection.openLockspace("beta", valueBlockLength: 64)
        let first = try await alpha.lock("a", mode: .pr)
        let second = try await alpha.lock("a", mode: .cr)
        let third = try await alpha.lock("b", mode: .ex)

        let text = try await ToolRun.run(daemon, "ls")
        #expect(text.status == 0, "\(text.stderr)")
        let rows = text.lines.map { $0.split(separator: " ", omittingEmptySubsequences: true).map(String.init) }
        #expect(rows.first == ["NAME", "ID", "LVB", "RESOURCES", "LOCKS", "MODE", "UID:GID"])
        #expect(rows.contains(["alpha", "\(alpha.id)", "32", "2", "3", "0600", "\(getuid()):\(getgid())"]))
        #expect(rows.contains { $0.first == "beta" && $0[2] == "64" && $0[3] == "0" && $0[4] == "0" })

        let json = try await ToolRun.run(daemon, "ls", "--json")
        #expect(json.status == 0, "\(json.stderr)")
        let report = try JSONDecoder().decode(LockspacesReport.self, from: json.output)
        let entry = try #require(report.lockspaces.first { $0.name == "alpha" })
        #expect(entry.id == alpha.id && entry.lvbLength == 32 && entry.resources == 2 && entry.locks == 3)
        #expect(entry.mode == "0600" && entry.uid == getuid() && entry.gid == getgid())
        #expect(report.lockspaces.first { $0.name == "beta" }?.lvbLength == 64)

        for lock in [first, second, third] { try await lock.unlock() }
        await connection.close()
    }

    // MARK: lockdebug, lockdump

    /// A resource with a lock on each queue, and one with a written value block.
    /// A lockspace of 5,000 locks, one resource of them holding 3,000: dlmd answers a page of at most 2,048
    /// locks a query, with `next`, and dlmtool asks for every page and merges them, the big resource whole.
    @Test func lockdebugOfAHugeLockspaceComesInPages() async throws {
        let daemon = try Daemon()
        defer { daemon.stop() }
        let connection = try await DLMConnection.connect(socketPath: daemon.socketPath)
        let ls = try await connection.openLockspace("huge")
        let names = (0..<2000).map { Array("r\($0)".utf8) } + Array(repeating: Array("shared".utf8), count: 3000)
        var granted = 0
        for chunk in stride(from: 0, to: names.count, by: 500) {
            try await withThrowingTaskGroup(of: Void.self) { group in
                for name in names[chunk..<min(chunk + 500, names.count)] {
                    group.addTask { _ = try await ls.lock(name, mode: name == Array("shared".utf8) ? .pr : .ex) }
                }
                for try await _ in group { granted += 1 }
            }
        }
        #expect(granted == 5000)

        let first = try JSONDecoder().decode(
            LockDebugReport.self, from: Data(try await connection.query(.lockdebug, argument: Array("huge".utf8))))
        let shown = first.resources.reduce(0) { $0 + $1.granted.count }
        #expect(
            shown <= 2048 && shown > 0 && first.next != nil, "\(shown) locks, next \(String(describing: first.next))")

        let json = try await ToolRun.run(daemon, "lockdebug", "huge", "--json")
        #expect(json.status == 0, "\(json.stderr)")
        let report = try JSONDecoder().decode(LockDebugReport.self, from: json.output)
        #expect(report.next == nil && report.resources.count == 2001)
        #expect(report.resources.reduce(0) { $0 + $1.granted.count } == 5000)
        #expect(report.resources.filter { $0.name == "shared" }.map(\.granted.count) == [3000])
        let dump = try await ToolRun.run(daemon, "lockdump", "huge")
        #expect(dump.status == 0 && dump.lines.count == 5001, "a header and a line a lock")
        await connection.close()
    }

    @Test func lockdebugAndLockdumpShowQueues() async throws {
        let daemon = try Daemon()
        defer { daemon.stop() }
        let holder = try await DLMConnection.connect(socketPath: daemon.socketPath)
        let converter = try await DLMConnection.connect(socketPath: daemon.socketPath)
        let waiter = try await DLMConnection.connect(socketPath: daemon.socketPath)
        let holderLS = try await holder.openLockspace("demo")
        let converterLS = try await converter.openLockspace("demo")
        let waiterLS = try await waiter.openLockspace("demo")
        var told = holder.blockingCallbacks.makeAsyncIterator()

        let held = try await holderLS.lock("r1", mode: .pr, onBlocking: { _ in })
        let null = try await converterLS.lock("r1", mode: .nl)
        let waiting = Task { try await waiterLS.lock("r1", mode: .pw, flags: .noDeadlockWait) }
        // The holder is told once the request is queued behind it.
        let toldWaiting = await told.next()
        #expect(toldWaiting?.mode == .pw)
        let converting = Task { try await null.convert(to: .ex) }
        let toldConverting = await told.next()
        #expect(toldConverting?.mode == .ex)

        // A value block written by an EX holder, kept alive by an NL lock.
        let keeper = try await holderLS.lock("lvb", mode: .nl)
        let writer = try await holderLS.lock("lvb", mode: .ex)
        try await writer.unlock(valueBlock: [1, 2, 3, 4, 5, 6, 7, 8])

        let pid = getpid()
        let json = try await ToolRun.run(daemon, "lockdebug", "demo", "--json")
        #expect(json.status == 0, "\(json.stderr)")
        let report = try JSONDecoder().decode(LockDebugReport.self, from: json.output)
        #expect(report.lockspace == "demo")
        let r1 = try #require(report.resources.first { $0.name == "r1" })
        #expect(r1.master == 1 && r1.nameHex == "7231")
        #expect(r1.granted.map(\.id) == [held.id.description])
        #expect(r1.granted.first?.grantedMode == "PR" && r1.granted.first?.pid == pid)
        // The kernel says who the client is (SO_PEERCRED): this test's process.
        #expect(r1.granted.first?.uid == getuid())
        #expect(r1.converting.map(\.id) == [null.id.description])
        #expect(r1.converting.first?.grantedMode == "NL" && r1.converting.first?.requestedMode == "EX")
        #expect(r1.converting.first?.pid == pid)
        let queued = try #require(r1.waiting.first)
        #expect(r1.waiting.count == 1)
        #expect(queued.grantedMode == nil && queued.requestedMode == "PW" && queued.pid == pid)
        #expect(queued.flags.contains("NODLCKWT") && queued.waitingMilliseconds != nil)
        let lvb = try #require(report.resources.first { $0.name == "lvb" })
        #expect(lvb.lvbHex == "0102030405060708" + String(repeating: "0", count: 48))
        #expect(lvb.lvbSequence == 1 && lvb.lvbValid)
        #expect(lvb.fencingToken == writer.fencingToken && writer.fencingToken > 0)

        let text = try await ToolRun.run(daemon, "lockdebug", "demo")
        #expect(text.status == 0, "\(text.stderr)")
        let lines = text.lines
        #expect(lines.contains("Resource r1 (len 2, hex 7231)"))
        #expect(lines.contains { $0.hasPrefix("LVB: 01020304 05060708 00000000") && $0.contains("sequence 1  valid") })
        #expect(lines.contains("Granted") && lines.contains("Convert") && lines.contains("Waiting"))
        let heldLine = try #require(lines.first { $0.contains(Self.paddedID(held.id)) })
        #expect(heldLine.contains(" PR ") && heldLine.contains("pid \(pid)") && heldLine.contains("uid \(getuid())"))
        let convertLine = try #require(lines.first { $0.contains(Self.paddedID(null.id)) })
        #expect(convertLine.contains("NL (EX)") && convertLine.contains("waiting "))
        let waitLine = try #require(lines.first { $0.contains(Self.paddedID(queued.id)) })
        #expect(waitLine.contains("-- (PW)") && waitLine.contains("flags NODLCKWT") && waitLine.contains("pid \(pid)"))
        // r1's block: the queues in order, one lock each.
        let block = try #require(
            text.stdout.components(separatedBy: "\n\n").first { $0.hasPrefix("Resource r1 ") }
        ).split(separator: "\n").map(String.init)
        #expect(Array(block.dropFirst(3)) == ["Granted", heldLine, "Convert", convertLine, "Waiting", waitLine])

        let dump = try await ToolRun.run(daemon, "lockdump", "demo")
        #expect(dump.status == 0, "\(dump.stderr)")
        let rows = dump.lines.map { $0.split(separator: " ", omittingEmptySubsequences: true).map(String.init) }
        #expect(rows.first == ["RESOURCE", "ID", "GRANTED", "REQUESTED", "QUEUE", "OWNER", "PID", "UID", "FLAGS"])
        #expect(rows.contains { $0.prefix(5) == ["r1", Self.paddedID(held.id), "PR", "-", "granted"] })
        #expect(rows.contains { $0.prefix(5) == ["r1", Self.paddedID(null.id), "NL", "EX", "convert"] })
        #expect(rows.contains { $0.prefix(5) == ["r1", Self.paddedID(queued.id), "-", "PW", "waiting"] })
        #expect(rows.contains { $0.prefix(5) == ["lvb", Self.paddedID(keeper.id), "NL", "-", "granted"] })
        #expect(rows.filter { $0.count > 7 && $0[6] == "\(pid)" && $0[7] == "\(getuid())" }.count == 4)

        let dumpJSON = try await ToolRun.run(daemon, "lockdump", "demo", "--json")
        #expect(dumpJSON.status == 0, "\(dumpJSON.stderr)")
        let dumped = try JSONDecoder().decode(LockDebugReport.self, from: dumpJSON.output)
        let dumpedLocks = dumped.resources.reduce(0) { $0 + $1.granted.count + $1.converting.count + $1.waiting.count }
        #expect(dumpedLocks == 4)

        let missing = try await ToolRun.run(daemon, "lockdebug", "nothing")
        #expect(missing.status == 1 && missing.stderr.hasPrefix("dlmtool: no lockspace nothing"))

        await waiter.close()
        await converter.close()
        _ = await waiting.result
        _ = await converting.result
        await holder.close()
    }

    // MARK: join, leave

    @Test func joinAndLeave() async throws {
        let daemon = try Daemon()
        defer { daemon.stop() }
        let created = try await ToolRun.run(daemon, "join", "ops")
        #expect(created.status == 0 && created.stdout.hasPrefix("created lockspace ops"), "\(created.stderr)")
        let again = try await ToolRun.run(daemon, "join", "ops", "--json")
        #expect(again.status == 0, "\(again.stderr)")
        let object = try JSONSerialization.jsonObject(with: again.output) as? [String: Any]
        #expect(object?["created"] as? Bool == false && object?["lockspace"] as? String == "ops")
        #expect(object?["lvb_length"] as? Int == 32)
        let wide = try await ToolRun.run(daemon, "join", "wide", "--lvb-length", "64", "--json")
        let wideObject = try JSONSerialization.jsonObject(with: wide.output) as? [String: Any]
        #expect(wideObject?["created"] as? Bool == true && wideObject?["lvb_length"] as? Int == 64)
        let conflict = try await ToolRun.run(daemon, "join", "wide", "--lvb-length", "32")
        #expect(conflict.status == 1 && conflict.stderr.hasPrefix("dlmtool: "))
        let badLength = try await ToolRun.run(daemon, "join", "odd", "--lvb-length", "12")
        #expect(badLength.status == 64)

        // A lockspace with a value block length other than the default is used as it is.
        let inWide = try await ToolRun.run(daemon, "lock", "--lockspace", "wide", "r", "--", "true")
        #expect(inWide.status == 0, "\(inWide.stderr)")

        var names = try await Self.lockspaceNames(daemon)
        #expect(names == ["ops", "wide"])

        // A lockspace with a lock is kept unless --force.
        let connection = try await DLMConnection.connect(socketPath: daemon.socketPath)
        let ops = try await connection.openLockspace("ops", create: false)
        _ = try await ops.lock("r", mode: .ex)
        let busy = try await ToolRun.run(daemon, "leave", "ops")
        #expect(busy.status == 1 && busy.stderr.contains("--force"))
        let forced = try await ToolRun.run(daemon, "leave", "ops", "--force")
        #expect(forced.status == 0 && forced.stdout == "released lockspace ops\n", "\(forced.stderr)")
        let left = try await ToolRun.run(daemon, "leave", "wide", "--json")
        let leftObject = try JSONSerialization.jsonObject(with: left.output) as? [String: Any]
        #expect(left.status == 0 && leftObject?["released"] as? Bool == true)
        names = try await Self.lockspaceNames(daemon)
        #expect(names.isEmpty)

        let unknown = try await ToolRun.run(daemon, "leave", "ops")
        #expect(unknown.status == 1 && unknown.stderr == "dlmtool: no lockspace ops (ENOENT)\n")
        await connection.close()
    }

    /// `dlmtool purge LS NODE PID` removes the orphans a process left (dlm_ls_purge), and says how many.
    @Test func purgeRemovesTheOrphansOfAProcess() async throws {
        let daemon = try Daemon()
        defer { daemon.stop() }
        let holder = try await DLMConnection.connect(socketPath: daemon.socketPath)
        let ls = try await holder.openLockspace("jobs")
        for name in ["a", "b"] { _ = try await ls.lock(name, mode: .pr, flags: .persistent) }
        await holder.close()
        let pid = "\(getpid())"
        let other = try await ToolRun.run(daemon, "purge", "jobs", "0", "1")
        #expect(
            other.status == 0 && other.stdout == "purged 0 locks of process 1 of node 0 in jobs\n", "\(other.stderr)")
        let purged = try await ToolRun.run(daemon, "purge", "jobs", "0", pid)
        #expect(purged.status == 0 && purged.stdout == "purged 2 locks of process \(pid) of node 0 in jobs\n")
        let again = try await ToolRun.run(daemon, "purge", "jobs", "0", pid, "--json")
        let object = try JSONSerialization.jsonObject(with: again.output) as? [String: Any]
        #expect(again.status == 0 && object?["purged"] as? Int == 0 && object?["pid"] as? Int == Int(getpid()))
        let checker = try await DLMConnection.connect(socketPath: daemon.socketPath)
        let free = try await checker.openLockspace("jobs").request(Array("a".utf8), mode: .ex, flags: .noQueue)
        #expect(free.status == .granted)
        let unknown = try await ToolRun.run(daemon, "purge", "nothing", "0", pid)
        #expect(unknown.status == 1 && unknown.stderr == "dlmtool: no lockspace nothing (ENOENT)\n")
        await checker.close()
    }

    // MARK: lock

    @Test func lockPassesTheExitStatusThrough() async throws {
        let daemon = try Daemon()
        defer { daemon.stop() }
        let seven = try await ToolRun.run(daemon, "lock", "job", "--", "sh", "-c", "exit 7")
        #expect(seven.status == 7 && seven.stderr.isEmpty, "\(seven.stderr)")
        let zero = try await ToolRun.run(daemon, "lock", "job", "--", "true")
        #expect(zero.status == 0)
        let killed = try await ToolRun.run(daemon, "lock", "job", "--", "sh", "-c", "kill -9 $$")
        #expect(killed.status == 128 + 9)
        let missing = try await ToolRun.run(daemon, "lock", "job", "--", "/nonexistent/command")
        #expect(missing.status == 127 && missing.stderr.hasPrefix("dlmtool: cannot run /nonexistent/command"))

        // The command's output and environment; the lock as the command sees it.
        let shown = try await ToolRun.run(
            daemon, "lock", "--mode", "pw", "--lockspace", "jobs", "job", "--", "sh", "-c",
            "echo \"$DLM_LOCKSPACE $DLM_LOCK_NAME $DLM_LOCK_MODE $DLM_FENCING_TOKEN\"; "
                + "dlmtool=$0; \"$dlmtool\" lockdump jobs --socket \"$1\"",
            ToolRun.executable, daemon.socketPath)
        #expect(shown.status == 0, "\(shown.stderr)")
        // The first token of a new daemon (incarnation 1, in the high bits).
        #expect(shown.lines.first == "jobs job PW \((1 << 40) + 1)")
        #expect(shown.lines.contains { $0.hasPrefix("job ") && $0.contains(" PW ") && $0.contains(" granted ") })

        // Released afterwards: the lockspace "default" exists, without resources.
        let after = try await ToolRun.run(daemon, "lockdebug", "default", "--json")
        let report = try JSONDecoder().decode(LockDebugReport.self, from: after.output)
        #expect(report.resources.isEmpty)

        let usage = try await ToolRun.run(daemon, "lock", "job")
        #expect(usage.status == 64)
    }

    /// Concurrent critical sections under one EX lock never overlap; each holder sees a larger fencing token.
    @Test func lockExcludesConcurrentCommands() async throws {
        let daemon = try Daemon()
        defer { daemon.stop() }
        let log = daemon.directory + "/sections.log"
        #expect(FileManager.default.createFile(atPath: log, contents: nil))
        let section =
            "echo \"start $$ $DLM_FENCING_TOKEN\" >> \(log); sleep 0.05; echo \"end $$ $DLM_FENCING_TOKEN\" >> \(log)"
        let rounds = 4
        let perRound = 3
        for _ in 0..<rounds {
            let commands = try (0..<perRound).map { _ in
                try ToolRun.start(daemon, "lock", "mutex", "--", "sh", "-c", section)
            }
            for command in commands {
                let result = await command.finish()
                #expect(result.status == 0, "\(result.stderr)")
            }
        }
        let lines = try String(contentsOfFile: log, encoding: .utf8).split(separator: "\n").map(String.init)
        #expect(lines.count == 2 * rounds * perRound)
        var lastToken = 0
        for pair in stride(from: 0, to: lines.count - 1, by: 2) {
            let start = lines[pair].split(separator: " ")
            let end = lines[pair + 1].split(separator: " ")
            #expect(start.first == "start" && end.first == "end", "interleaved at line \(pair): \(lines)")
            #expect(start.dropFirst() == end.dropFirst(), "another section ended inside this one: \(lines)")
            let token = Int(start.last ?? "") ?? 0
            #expect(token > lastToken)
            lastToken = token
        }
    }

    @Test func lockGivesUpOnTimeoutAndNonblock() async throws {
        let daemon = try Daemon()
        defer { daemon.stop() }
        let connection = try await DLMConnection.connect(socketPath: daemon.socketPath)
        let ls = try await connection.openLockspace("default")
        let held = try await ls.lock("busy", mode: .ex)
        let pid = getpid()

        let timedOut = try await ToolRun.run(daemon, "lock", "--timeout", "0.2", "busy", "--", "echo", "ran")
        #expect(timedOut.status == 1 && timedOut.stdout.isEmpty)
        #expect(timedOut.stderr.hasPrefix("dlmtool: timed out after 0.2 s waiting for the EX lock busy"))
        #expect(timedOut.stderr.contains("(ETIMEDOUT)") && timedOut.stderr.contains("held in EX by pid \(pid)"))

        let refused = try await ToolRun.run(daemon, "lock", "--nonblock", "busy", "--", "echo", "ran")
        #expect(refused.status == 1 && refused.stdout.isEmpty)
        #expect(
            refused.stderr.contains("(EAGAIN)") && refused.stderr.contains("held in EX by pid \(pid), uid \(getuid())"))

        let code = try await ToolRun.run(daemon, "lock", "-n", "-E", "75", "busy", "--", "echo", "ran")
        #expect(code.status == 75 && code.stdout.isEmpty)

        // A compatible mode is granted at once; a shared lock next to it too.
        try await held.unlock()
        let shared = try await ls.lock("busy", mode: .pr)
        let reader = try await ToolRun.run(daemon, "lock", "-n", "-m", "PR", "busy", "--", "echo", "ran")
        #expect(reader.status == 0 && reader.stdout == "ran\n", "\(reader.stderr)")
        try await shared.unlock()
        await connection.close()
    }

    /// A waiting `dlmtool lock` runs its command once the holder lets go.
    @Test func lockWaitsForTheHolder() async throws {
        let daemon = try Daemon()
        defer { daemon.stop() }
        let connection = try await DLMConnection.connect(socketPath: daemon.socketPath)
        let ls = try await connection.openLockspace("default")
        var told = connection.blockingCallbacks.makeAsyncIterator()
        let held = try await ls.lock("turn", mode: .ex, onBlocking: { _ in })
        let waiting = try ToolRun.start(daemon, "lock", "turn", "--", "echo", "ran")
        let toldWaiting = await told.next()
        #expect(toldWaiting?.mode == .ex)
        try await held.unlock()
        let result = await waiting.finish()
        #expect(result.status == 0 && result.stdout == "ran\n", "\(result.stderr)")
        await connection.close()
    }

    /// SIGTERM to dlmtool reaches the command; dlmtool exits with the command's status and releases the lock.
    @Test func lockForwardsSIGTERM() async throws {
        let daemon = try Daemon()
        defer { daemon.stop() }
        let running = try ToolRun.start(
            daemon, "lock", "guarded", "--", "sh", "-c",
            "trap 'echo terminated; exit 42' TERM; echo ready; while :; do sleep 0.02; done")
        try running.waitForOutput(line: "ready")
        running.process.terminate()
        let result = await running.finish()
        #expect(result.status == 42, "\(result.stderr)")
        #expect(result.stdout == "ready\nterminated\n")
        let again = try await ToolRun.run(daemon, "lock", "--nonblock", "guarded", "--", "true")
        #expect(again.status == 0, "\(again.stderr)")
    }

    /// dlmd dies while the command runs: the lock is gone, so the command is sent SIGTERM and dlmtool exits 75;
    /// with --on-loss warn the command runs on and its status is dlmtool's.
    @Test func aLostLockStopsTheCommandByDefault() async throws {
        let daemon = try Daemon()
        let running = try ToolRun.start(
            daemon, "lock", "guarded", "--", "sh", "-c",
            "trap 'echo stopped; exit 9' TERM; echo ready; while :; do sleep 0.02; done")
        try running.waitForOutput(line: "ready")
        daemon.kill()
        let result = await running.finish()
        #expect(result.status == 75, "\(result.stderr)")
        #expect(result.stdout == "ready\nstopped\n")
        #expect(result.stderr.contains("the lock guarded is no longer held; stopping the command (--on-loss TERM)"))

        let second = try Daemon()
        defer { second.stop() }
        let flag = second.directory + "/go-on"
        let warned = try ToolRun.start(
            second, "lock", "--on-loss", "warn", "guarded", "--", "sh", "-c",
            "echo ready; while [ ! -e \(flag) ]; do sleep 0.02; done; echo finished; exit 3")
        try warned.waitForOutput(line: "ready")
        second.kill()
        try warned.waitForError(containing: "is no longer held")
        _ = FileManager.default.createFile(atPath: flag, contents: nil)
        let finished = await warned.finish()
        #expect(finished.status == 3 && finished.stdout == "ready\nfinished\n", "\(finished.stderr)")
    }

    /// dlmd takes the lock away while the command runs (its lockspace is released with force): dlmd tells the
    /// holder, so the command is sent SIGTERM and dlmtool exits 75; the lock is free again.
    @Test func aLockTakenAwayByAForcedReleaseStopsTheCommand() async throws {
        let daemon = try Daemon()
        defer { daemon.stop() }
        let running = try ToolRun.start(
            daemon, "lock", "guarded", "--", "sh", "-c",
            "trap 'echo stopped; exit 9' TERM; echo ready; while :; do sleep 0.02; done")
        try running.waitForOutput(line: "ready")
        let connection = try await DLMConnection.connect(socketPath: daemon.socketPath)
        let lockspace = try await connection.openLockspace("default", create: false)
        try await connection.releaseLockspace(lockspace, force: true)
        await connection.close()
        let result = await running.finish()
        #expect(result.status == 75, "\(result.stderr)")
        #expect(result.stdout == "ready\nstopped\n")
        #expect(result.stderr.contains("dlmd took the lock away (EUNLOCK"), "\(result.stderr)")
        let again = try await ToolRun.run(daemon, "lock", "--nonblock", "guarded", "--", "true")
        #expect(again.status == 0, "\(again.stderr)")
    }

    /// dlmtool is killed (SIGKILL) while the command runs: dlmd releases the lock, and the command dies too
    /// (PR_SET_PDEATHSIG), so it never runs without its lock.
    @Test func theCommandDiesWithDlmtool() async throws {
        let daemon = try Daemon()
        defer { daemon.stop() }
        let running = try ToolRun.start(daemon, "lock", "guarded", "--", "sh", "-c", "echo $$; exec sleep 600")
        let line = try running.readLine()
        let pid = try #require(Int32(line))
        kill(running.process.processIdentifier, SIGKILL)
        _ = await running.finish()
        // A hang detector bounds the wait: the command is gone (or a zombie waiting for init to reap it).
        let deadline = ContinuousClock.now + .seconds(30)
        func isRunning() -> Bool {
            guard let stat = try? String(contentsOfFile: "/proc/\(pid)/stat", encoding: .utf8) else { return false }
            return !stat.contains(") Z ")
        }
        while isRunning() && ContinuousClock.now < deadline { try await Task.sleep(for: .milliseconds(10)) }
        #expect(!isRunning(), "the command (pid \(pid)) outlived dlmtool")
        let again = try await ToolRun.run(daemon, "lock", "--timeout", "20", "guarded", "--", "true")
        #expect(again.status == 0, "\(again.stderr)")
    }

    @Test func noDaemon() async throws {
        let path = FileManager.default.temporaryDirectory.appendingPathComponent("dlmtool-none-\(getpid()).sock").path
        for command in [["status"], ["ls"], ["lockdebug", "x"], ["join", "x"], ["lock", "x", "--", "true"]] {
            let result = try await ToolRun.run(arguments: [command[0], "--socket", path] + command.dropFirst())
            #expect(result.status == 1)
            #expect(result.stderr == "dlmtool: cannot connect to dlmd at \(path): No such file or directory\n")
        }
        // $DLM_SOCKET is the default.
        let fromEnvironment = try await ToolRun.run(arguments: ["status"], environment: ["DLM_SOCKET": path])
        #expect(fromEnvironment.stderr.contains("cannot connect to dlmd at \(path)"))
    }

    // MARK: Helpers

    static func paddedID(_ id: LockID) -> String { String(format: "%08x", id.rawValue) }
    static func paddedID(_ hex: String) -> String { String(repeating: "0", count: max(0, 8 - hex.count)) + hex }

    static func lockspaceNames(_ daemon: Daemon) async throws -> [String] {
        let result = try await ToolRun.run(daemon, "ls", "--json")
        return try JSONDecoder().decode(LockspacesReport.self, from: result.output).lockspaces.map(\.name).sorted()
    }
}

/// One run of the `dlmtool` built next to `dlmd`.
final class ToolRun: @unchecked Sendable {
    struct Result {
        var status: Int32
        var output: Data
        var stderr: String
        var stdout: String { String(decoding: output, as: UTF8.self) }
        var lines: [String] { stdout.split(separator: "\n").map(String.init) }
        /// The `key  value` lines of `dlmtool status`.
        var fields: [String: String] {
            var fields: [String: String] = [:]
            for line in lines {
                guard let gap = line.range(of: "  ") else { continue }
                fields[String(line[..<gap.lowerBound])] = line[gap.upperBound...].trimmingCharacters(in: .whitespaces)
            }
            return fields
        }
    }

    static var executable: String { Daemon.productsDirectory.appendingPathComponent("dlmtool").path }

    let process = Process()
    let stdout = Pipe()
    let stderr = Pipe()
    /// Standard output read so far by `waitForOutput` and `readLine`, standard error by `waitForError`.
    private var early = Data()
    private var earlyError = Data()

    init(arguments: [String], environment: [String: String] = [:]) throws {
        process.executableURL = URL(fileURLWithPath: ToolRun.executable)
        process.arguments = arguments
        process.environment = ProcessInfo.processInfo.environment.merging(environment) { $1 }
        process.standardInput = FileHandle.nullDevice
        process.standardOutput = stdout
        process.standardError = stderr
        try process.run()
    }

    /// Starts `dlmtool SUBCOMMAND --socket <daemon's> ARGUMENTS...`.
    static func start(_ daemon: Daemon, _ subcommand: String, _ arguments: String...) throws -> ToolRun {
        try ToolRun(arguments: [subcommand, "--socket", daemon.socketPath] + arguments)
    }

    /// Runs `dlmtool SUBCOMMAND --socket <daemon's> ARGUMENTS...` to its end.
    static func run(_ daemon: Daemon, _ subcommand: String, _ arguments: String...) async throws -> Result {
        try await ToolRun(arguments: [subcommand, "--socket", daemon.socketPath] + arguments).finish()
    }

    static func run(arguments: [String], environment: [String: String] = [:]) async throws -> Result {
        try await ToolRun(arguments: arguments, environment: environment).finish()
    }

    /// Reads standard output until a whole line equals `line`.
    func waitForOutput(line: String) throws {
        let handle = stdout.fileHandleForReading
        while !String(decoding: early, as: UTF8.self).split(separator: "\n").contains(Substring(line)) {
            let chunk = handle.availableData
            if chunk.isEmpty { throw SupportError("dlmtool ended before printing \(line)") }
            early.append(chunk)
        }
    }

    /// Reads standard output until its first whole line, and returns it.
    func readLine() throws -> String {
        let handle = stdout.fileHandleForReading
        while !early.contains(UInt8(ascii: "\n")) {
            let chunk = handle.availableData
            if chunk.isEmpty { throw SupportError("dlmtool ended before printing a line") }
            early.append(chunk)
        }
        return String(decoding: early.prefix { $0 != UInt8(ascii: "\n") }, as: UTF8.self)
    }

    /// Reads standard error until it contains `text`.
    func waitForError(containing text: String) throws {
        let handle = stderr.fileHandleForReading
        while !String(decoding: earlyError, as: UTF8.self).contains(text) {
            let chunk = handle.availableData
            if chunk.isEmpty { throw SupportError("dlmtool ended before saying \(text)") }
            earlyError.append(chunk)
        }
    }

    /// Reads both outputs to their end and waits for the exit, on threads of their own.
    func finish() async -> Result {
        await withCheckedContinuation { continuation in
            Thread.detachNewThread { [self] in
                let errors = ErrorOutput()
                let reader = Thread { errors.read(self.stderr) }
                reader.start()
                let output = early + stdout.fileHandleForReading.readDataToEndOfFile()
                errors.done.wait()
                process.waitUntilExit()
                continuation.resume(
                    returning: Result(
                        status: process.terminationStatus, output: output,
                        stderr: String(decoding: self.earlyError + errors.data, as: UTF8.self)))
            }
        }
    }

    private final class ErrorOutput: @unchecked Sendable {
        var data = Data()
        let done = DispatchSemaphore(value: 0)

        func read(_ pipe: Pipe) {
            data = pipe.fileHandleForReading.readDataToEndOfFile()
            done.signal()
        }
    }
}
