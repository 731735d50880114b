import DLMClient
import DLMTestSupport
import DLMWire
import Foundation
import Testing

/// Who may connect to dlmd's Unix socket: its mode and group (`--socket-mode`, `--socket-group`), and a directory
/// in which another user could replace the socket is refused.
@Suite struct SocketPermissionTests {
    /// Tests/CDLMTests/claim_pid.c, compiled once.
    static let claimPID = CPrograms.compile("claim_pid")

    /// A process that runs `command` as the user and group nobody (setpriv), or as this test's user; not started.
    static func process(_ command: [String], asNobody: Bool = true) -> Process {
        let process = Process()
        let line = (asNobody ? ["/usr/bin/setpriv", "--reuid=65534", "--regid=65534", "--clear-groups"] : []) + command
        process.executableURL = URL(fileURLWithPath: line[0])
        process.arguments = Array(line.dropFirst())
        return process
    }

    /// `dlmtool status` as nobody, against `socket`: its exit status and error.
    static func statusAsNobody(_ socket: String) throws -> (status: Int32, error: String) {
        let process = Self.process([ToolRun.executable, "status", "--socket", socket])
        let error = Pipe()
        process.standardOutput = FileHandle.nullDevice
        process.standardError = error
        try process.run()
        let text = String(decoding: error.fileHandleForReading.readDataToEndOfFile(), as: UTF8.self)
        process.waitUntilExit()
        return (process.terminationStatus, text)
    }

    /// dlmtool run as `uid` with primary group `gid` and supplementary `groups` (setpriv): exit status, output
    /// and error.
    static func tool(
        uid: UInt32, gid: UInt32, groups: [UInt32] = [], _ arguments: [String]
    ) throws -> (status: Int32, output: String, error: String) {
        let process = Process()
        process.executableURL = URL(fileURLWithPath: "/usr/bin/setpriv")
        process.arguments =
            ["--reuid=\(uid)", "--regid=\(gid)"]
            + (groups.isEmpty ? ["--clear-groups"] : ["--groups=" + groups.map(String.init).joined(separator: ",")])
            + [ToolRun.executable] + arguments
        let (output, error) = (Pipe(), Pipe())
        process.standardOutput = output
        process.standardError = error
        try process.run()
        let text = String(decoding: output.fileHandleForReading.readDataToEndOfFile(), as: UTF8.self)
        let message = String(decoding: error.fileHandleForReading.readDataToEndOfFile(), as: UTF8.self)
        process.waitUntilExit()
        return (process.terminationStatus, text, message)
    }

    /// A lockspace's creator and mode decide, for real clients whose identity dlmd takes from the kernel: a
    /// lockspace created as uid 1000 with mode 0660 may be opened by uid 1001 only while 1001 has group 1000 among
    /// its supplementary groups (SO_PEERGROUPS); it is listed only for those who may open it; only its creator
    /// may release it; and creator and mode survive a restart of dlmd.
    @Test(.enabled(if: geteuid() == 0, "runs dlmtool as other users (setpriv): needs root"))
    func lockspacePermissionsHoldForRealClientsAndSurviveARestart() throws {
        var daemon = try Daemon(arguments: ["--socket-mode", "0666"])
        let directory = daemon.directory
        defer { daemon.stop() }
        let socket = ["--socket", daemon.socketPath]
        let created = try Self.tool(uid: 1000, gid: 1000, ["join", "team", "--mode", "0660"] + socket)
        #expect(created.status == 0 && created.output.contains("created lockspace"), "\(created)")
        let member = try Self.tool(uid: 1001, gid: 1001, groups: [1001, 1000], ["join", "team"] + socket)
        #expect(member.status == 0 && member.output.contains("exists already"), "\(member)")
        let stranger = try Self.tool(uid: 1001, gid: 1001, ["join", "team"] + socket)
        #expect(stranger.status == 1 && stranger.error.contains("(EACCES)"), "\(stranger)")
        let notCreator = try Self.tool(uid: 1001, gid: 1001, groups: [1000], ["leave", "team"] + socket)
        #expect(notCreator.status == 1 && notCreator.error.contains("(EPERM)"), "\(notCreator)")

        daemon.stop()
        daemon = try Daemon(directory: directory, arguments: ["--socket-mode", "0666"])
        let listed = try Self.tool(
            uid: 1001, gid: 1001, groups: [1000], ["ls", "--json"] + ["--socket", daemon.socketPath])
        let report = try JSONDecoder().decode(LockspacesReport.self, from: Data(listed.output.utf8))
        let team = try #require(report.lockspaces.first { $0.name == "team" }, "\(listed)")
        #expect(team.mode == "0660" && team.uid == 1000 && team.gid == 1000)
        let hidden = try Self.tool(uid: 1001, gid: 1001, ["ls", "--json"] + ["--socket", daemon.socketPath])
        #expect(try JSONDecoder().decode(LockspacesReport.self, from: Data(hidden.output.utf8)).lockspaces.isEmpty)
        let released = try Self.tool(uid: 1000, gid: 1000, ["leave", "team"] + ["--socket", daemon.socketPath])
        #expect(released.status == 0, "\(released)")
    }

    /// An orphan keeps its user, for real clients and across a restart of dlmd: uid 1000's dlmtool dies holding a
    /// persistent lock in a lockspace everyone may use; lockdebug shows the orphan's pid and uid; uid 1001 may not
    /// purge it (EPERM), before and after a restart (the uid is in the store); uid 1000 may.
    @Test(.enabled(if: geteuid() == 0, "runs dlmtool as other users (setpriv): needs root"))
    func anOrphanIsItsUsersToPurgeAcrossARestart() throws {
        var daemon = try Daemon(arguments: ["--socket-mode", "0666"])
        let directory = daemon.directory
        defer { daemon.stop() }
        var socket = ["--socket", daemon.socketPath]
        let created = try Self.tool(uid: 1000, gid: 1000, ["join", "shared", "--mode", "0666"] + socket)
        #expect(created.status == 0, "\(created)")
        // dlmtool's command kills dlmtool: its persistent lock stays as an orphan.
        _ = try Self.tool(
            uid: 1000, gid: 1000,
            ["lock", "--lockspace", "shared", "--persistent", "r"] + socket + ["--", "sh", "-c", "kill -9 $PPID"])
        let debug = try Self.tool(uid: 0, gid: 0, ["lockdebug", "shared", "--json"] + socket)
        let report = try JSONDecoder().decode(LockDebugReport.self, from: Data(debug.output.utf8))
        let orphan = try #require(report.resources.first { $0.name == "r" }?.granted.first, "\(debug)")
        #expect(orphan.owner == "orphan" && orphan.uid == 1000 && orphan.pid > 0, "\(orphan)")
        let purge = ["purge", "shared", "0", String(orphan.pid)]
        let refused = try Self.tool(uid: 1001, gid: 1001, purge + socket)
        #expect(refused.status == 1 && refused.error.contains("(EPERM)"), "\(refused)")

        daemon.stop()
        daemon = try Daemon(directory: directory, arguments: ["--socket-mode", "0666"])
        socket = ["--socket", daemon.socketPath]
        let again = try Self.tool(uid: 1001, gid: 1001, purge + socket)
        #expect(again.status == 1 && again.error.contains("(EPERM)"), "\(again)")
        let purged = try Self.tool(uid: 1000, gid: 1000, purge + socket)
        #expect(purged.status == 0 && purged.output.contains("purged 1 lock"), "\(purged)")
    }

    static func modeAndGroup(_ path: String) -> (mode: UInt32, group: UInt32) {
        var info = stat()
        guard stat(path, &info) == 0 else { return (0, 0) }
        return (UInt32(info.st_mode & 0o7777), UInt32(info.st_gid))
    }

    /// By default the socket is 0660 with dlmd's group: another user (nobody) cannot connect. Given 0666 and a
    /// group, the socket has them, and that user is served.
    @Test(.enabled(if: geteuid() == 0, "runs dlmtool as another user (setpriv): needs root"))
    func theSocketsModeAndGroupDecideWhoConnects() throws {
        let closed = try Daemon()
        defer { closed.stop() }
        #expect(Self.modeAndGroup(closed.socketPath) == (0o660, UInt32(getegid())))
        let refused = try Self.statusAsNobody(closed.socketPath)
        #expect(refused.status != 0)
        #expect(refused.error.contains("Permission denied") || refused.error.contains("EACCES"), "\(refused.error)")

        let open = try Daemon(arguments: ["--socket-mode", "0666", "--socket-group", "daemon"])
        defer { open.stop() }
        #expect(Self.modeAndGroup(open.socketPath) == (0o666, 1))
        let served = try Self.statusAsNobody(open.socketPath)
        #expect(served.status == 0, "\(served.error)")
    }

    /// The kernel says who a client is (SO_PEERCRED): a client running as nobody that claims pid 4242 in HELLO
    /// has its lock carry its own pid and uid 65534; root may name another process's pid (as in SCM_CREDENTIALS),
    /// and its lock shows uid 0.
    @Test(.enabled(if: geteuid() == 0, "runs a client as another user (setpriv): needs root"))
    func thePidAndUidOfALockComeFromTheKernel() async throws {
        let daemon = try Daemon(arguments: ["--socket-mode", "0666"])
        defer { daemon.stop() }
        func run(asNobody: Bool) throws -> (Process, Pipe, LineLog) {
            let process = Self.process([try Self.claimPID.get(), daemon.socketPath, "4242"], asNobody: asNobody)
            let input = Pipe()
            let output = Pipe()
            let log = LineLog()
            process.standardInput = input
            process.standardOutput = output
            try process.run()
            log.read(output.fileHandleForReading)
            try log.wait(for: "held") { $0 == "held" }
            return (process, input, log)
        }
        let (nobody, nobodyInput, _) = try run(asNobody: true)
        let (root, rootInput, _) = try run(asNobody: false)
        defer {
            for (process, input) in [(nobody, nobodyInput), (root, rootInput)] {
                try? input.fileHandleForWriting.close()
                process.waitUntilExit()
            }
        }
        let client = try await DLMConnection.connect(socketPath: daemon.socketPath)
        let json = try await client.query(.lockdebug, argument: Array("ids".utf8))
        let report = try JSONDecoder().decode(LockDebugReport.self, from: Data(json))
        let holders = try #require(report.resources.first { $0.name == "who" }).granted
        let seen = Set(holders.map { "pid \($0.pid) uid \($0.uid.map(String.init) ?? "-")" })
        #expect(seen == ["pid \(nobody.processIdentifier) uid 65534", "pid 4242 uid 0"])
        await client.close()
    }

    /// A socket directory that every user may write (without the sticky bit) is refused before dlmd serves, saying
    /// why; so is a mode that is not octal permission bits, or a group that does not exist.
    @Test func anUnsafeDirectoryOrBadSettingIsRefused() throws {
        let directory = Daemon.temporaryDirectory("dlmd-socket-dir")
        try FileManager.default.createDirectory(atPath: directory, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(atPath: directory) }
        chmod(directory, 0o777)
        let socket = directory + "/dlmd.sock"
        let unsafe = try Daemon.runToEnd(["--socket", socket, "--data-dir", directory + "/data"])
        #expect(unsafe.status != 0)
        #expect(unsafe.error.contains("another user could replace the socket"), "\(unsafe.error)")
        #expect(!FileManager.default.fileExists(atPath: socket))
        chmod(directory, 0o755)
        for (option, value, message) in [
            ("--socket-mode", "0999", "octal permission bits"), ("--socket-group", "no-such-group-x", "no such group"),
        ] {
            let bad = try Daemon.runToEnd(["--socket", socket, "--data-dir", directory + "/data", option, value])
            #expect(bad.status != 0)
            #expect(bad.error.contains(message), "\(bad.error)")
            #expect(!FileManager.default.fileExists(atPath: socket))
        }
    }
}
