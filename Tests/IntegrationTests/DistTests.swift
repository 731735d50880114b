import DLMTestSupport
import Foundation
import Testing

/// What dist/ ships for the Linux HA stack (docs/OPERATIONS.md, "Running under systemd and Pacemaker"): the OCF
/// resource agent against the built dlmd and dlmtool (Debian's ocf-tester from resource-agents, `make deps`), the
/// systemd unit (systemd-analyze verify), the tmpfiles entry (systemd-tmpfiles), and `make install-daemon`'s layout
/// from the binaries this build already has.
@Suite(.serialized, .timeLimit(.minutes(3)))
struct DistTests {
    /// The repository's root: this file is Tests/IntegrationTests/DistTests.swift.
    static let root = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent()
        .deletingLastPathComponent().path
    static let agent = root + "/dist/ocf/dlmd"
    static let dlmtool = Daemon.productsDirectory.appendingPathComponent("dlmtool").path

    /// Runs a program to its end: its exit status and what it printed (standard output and error together).
    /// The program starts with no descriptor but 0, 1 and 2, as Pacemaker starts an agent: Foundation's Process
    /// leaks the test's descriptors to its children, among them the socket by which it learns that the child
    /// exited, and a dlmd that the agent leaves running would hold them (the child's end would never be seen to
    /// close, nor its output to end).
    static func run(_ arguments: [String], environment: [String: String] = [:], directory: String? = nil) throws
        -> (status: Int32, output: String)
    {
        let process = Process()
        process.executableURL = URL(fileURLWithPath: "/bin/bash")
        process.arguments =
            [
                "-c",
                #"for fd in /proc/$$/fd/*; do n=${fd##*/}; [ "$n" -gt 2 ] && eval "exec $n>&-"; done; exec "$@""#,
                "run",
            ] + arguments
        process.environment = ProcessInfo.processInfo.environment.merging(environment) { $1 }
        if let directory { process.currentDirectoryURL = URL(fileURLWithPath: directory) }
        let output = Pipe()
        process.standardInput = FileHandle.nullDevice
        process.standardOutput = output
        process.standardError = output
        try process.run()
        let text = String(decoding: output.fileHandleForReading.readDataToEndOfFile(), as: UTF8.self)
        process.waitUntilExit()
        return (process.terminationStatus, text)
    }

    /// The agent's parameters for a dlmd of its own in `directory`.
    static func parameters(_ directory: String) -> [String: String] {
        [
            "socket": directory + "/run/dlmd.sock", "data_dir": directory + "/data", "binary": Daemon.executable,
            "dlmtool": dlmtool, "pid_file": directory + "/dlmd.pid", "log_file": directory + "/dlmd.log",
        ]
    }

    /// Runs the agent's `action` as Pacemaker would: parameters as OCF_RESKEY_ variables.
    static func agent(_ action: String, _ parameters: [String: String], interval: Int? = nil) throws
        -> (status: Int32, output: String)
    {
        var environment = ["OCF_ROOT": "/usr/lib/ocf", "OCF_RESOURCE_INSTANCE": "dlmd-test"]
        for (name, value) in parameters { environment["OCF_RESKEY_\(name)"] = value }
        if let interval { environment["OCF_RESKEY_CRM_meta_interval"] = "\(interval)" }
        return try run([agent, action], environment: environment)
    }

    /// Whether process `pid` exists and is not a zombie (the agent's dlmd is reparented to PID 1, which may reap it
    /// late).
    static func isRunning(_ pid: Int32) -> Bool {
        guard let stat = try? String(contentsOfFile: "/proc/\(pid)/stat", encoding: .utf8),
            let end = stat.range(of: ") ", options: .backwards)
        else { return false }
        return !stat[end.upperBound...].hasPrefix("Z")
    }

    static let success: Int32 = 0
    static let failed: Int32 = 1
    static let notInstalled: Int32 = 5
    static let misconfigured: Int32 = 6
    static let notRunning: Int32 = 7

    @Test func ocfTesterPassesTheAgentAgainstARealDlmd() throws {
        let directory = Daemon.temporaryDirectory("dlmd-ocf")
        try FileManager.default.createDirectory(atPath: directory, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(atPath: directory) }
        let options = Self.parameters(directory).sorted { $0.key < $1.key }.flatMap { ["-o", "\($0.key)=\($0.value)"] }
        let result = try Self.run(["ocf-tester", "-n", "dlmd"] + options + [Self.agent])
        #expect(result.status == 0, "ocf-tester: \(result.output)")
        #expect(result.output.contains("passed all tests"), "ocf-tester: \(result.output)")
        // It started and stopped a real dlmd: the log shows both, and nothing is left running.
        let log = (try? String(contentsOfFile: directory + "/dlmd.log", encoding: .utf8)) ?? ""
        #expect(log.contains("listening on"), "dlmd's log: \(log)")
        #expect(!FileManager.default.fileExists(atPath: directory + "/dlmd.pid"))
        #expect(!FileManager.default.fileExists(atPath: directory + "/run/dlmd.sock"))
    }

    /// monitor asks dlmd: a dlmd that runs but does not answer (stopped with SIGSTOP) fails the monitor, and
    /// answers again once continued; stop then stops it with SIGTERM.
    @Test func monitorAsksDlmdNotOnlyThePid() throws {
        let directory = Daemon.temporaryDirectory("dlmd-ocf")
        try FileManager.default.createDirectory(atPath: directory, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(atPath: directory) }
        let parameters = Self.parameters(directory)
        #expect(try Self.agent("monitor", parameters, interval: 0).status == Self.notRunning)
        let start = try Self.agent("start", parameters)
        #expect(start.status == Self.success, "start: \(start.output)")
        // Started means serving: dlmtool status answers at once.
        let status = try Self.run([Self.dlmtool, "status", "--socket", parameters["socket"]!])
        #expect(status.status == 0, "dlmtool status: \(status.output)")
        let pidText = try String(contentsOfFile: parameters["pid_file"]!, encoding: .utf8)
        let pid = try #require(Int32(pidText.trimmingCharacters(in: .whitespacesAndNewlines)))
        #expect(try Self.agent("monitor", parameters, interval: 10000).status == Self.success)

        kill(pid, SIGSTOP)
        let hung = try Self.agent("monitor", parameters, interval: 10000)
        kill(pid, SIGCONT)
        #expect(hung.status == Self.failed, "monitor of a dlmd that does not answer: \(hung.output)")
        #expect(hung.output.contains("does not answer"), "\(hung.output)")
        #expect(try Self.agent("monitor", parameters, interval: 10000).status == Self.success)

        let stop = try Self.agent("stop", parameters)
        #expect(stop.status == Self.success, "stop: \(stop.output)")
        #expect(!Self.isRunning(pid), "dlmd (pid \(pid)) is gone after stop")
        let log = try String(contentsOfFile: parameters["log_file"]!, encoding: .utf8)
        #expect(log.contains("shut down"), "stop was dlmd's clean stop (SIGTERM): \(log)")
        #expect(try Self.agent("monitor", parameters, interval: 10000).status == Self.notRunning)
    }

    /// Exit codes a cluster acts on: a dlmd that exits at start fails the start at once, with dlmd's own reason;
    /// a missing binary is "not installed", an unreadable config file "not configured".
    @Test func startAndValidateReportWhatIsWrong() throws {
        let directory = Daemon.temporaryDirectory("dlmd-ocf")
        try FileManager.default.createDirectory(atPath: directory, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(atPath: directory) }
        var parameters = Self.parameters(directory)
        parameters["extra_args"] = "--durability sometimes"
        let start = try Self.agent("start", parameters)
        #expect(start.status == Self.failed, "start: \(start.output)")
        #expect(start.output.contains("dlmd exited during start"), "\(start.output)")
        #expect(start.output.contains("sometimes"), "dlmd's complaint is passed on: \(start.output)")
        #expect(try Self.agent("monitor", parameters, interval: 0).status == Self.notRunning)

        parameters["extra_args"] = nil
        parameters["config"] = directory + "/missing.toml"
        #expect(try Self.agent("validate-all", parameters).status == Self.misconfigured)
        parameters["config"] = nil
        parameters["binary"] = directory + "/no-dlmd"
        #expect(try Self.agent("validate-all", parameters).status == Self.notInstalled)
        #expect(try Self.agent("start", parameters).status == Self.notInstalled)
        // A probe on a node without dlmd: not running there (a recurring monitor would say not installed).
        #expect(try Self.agent("monitor", parameters, interval: 0).status == Self.notRunning)
        #expect(try Self.agent("monitor", parameters, interval: 10000).status == Self.notInstalled)
    }

    /// `make install-daemon` with the binaries already built: every file where the docs say, the unit's ExecStart and
    /// the agent's defaults naming the installed binaries, and the installed unit passing `systemd-analyze verify`.
    @Test func installLayoutAndTheUnitVerifies() throws {
        let destination = Daemon.temporaryDirectory("dlmd-install")
        defer { try? FileManager.default.removeItem(atPath: destination) }
        let make = try Self.run(
            [
                "make", "--no-print-directory", "install-daemon", "DESTDIR=\(destination)", "PREFIX=/usr/local",
                "DAEMON_BIN=\(Daemon.productsDirectory.path)",
            ], directory: Self.root)
        #expect(make.status == 0, "make install-daemon: \(make.output)")
        let files = FileManager.default
        for (path, mode) in [
            "/usr/local/sbin/dlmd": 0o755, "/usr/local/bin/dlmtool": 0o755,
            "/usr/local/lib/systemd/system/dlmd.service": 0o644, "/usr/local/lib/tmpfiles.d/dlmd.conf": 0o644,
            "/usr/local/lib/ocf/resource.d/swift-dlm/dlmd": 0o755,
        ] {
            let attributes = try files.attributesOfItem(atPath: destination + path)
            #expect((attributes[.posixPermissions] as? Int) == mode, "\(path): \(attributes)")
        }
        let unit = try String(
            contentsOfFile: destination + "/usr/local/lib/systemd/system/dlmd.service", encoding: .utf8)
        #expect(unit.contains("\nExecStart=/usr/local/sbin/dlmd $DLMD_OPTS\n"))
        #expect(unit.contains("\nType=notify\n"))
        let agent = try String(
            contentsOfFile: destination + "/usr/local/lib/ocf/resource.d/swift-dlm/dlmd", encoding: .utf8)
        #expect(agent.contains("\nOCF_RESKEY_binary_default=/usr/local/sbin/dlmd\n"))
        #expect(agent.contains("\nOCF_RESKEY_dlmtool_default=/usr/local/bin/dlmtool\n"))
        // systemd-analyze verify checks that ExecStart's binary exists: the unit is verified as installed, with
        // ExecStart under DESTDIR (--root would need a whole system's units).
        let staged = destination + "/dlmd.service"
        try unit.replacingOccurrences(
            of: "ExecStart=/usr/local/sbin/", with: "ExecStart=\(destination)/usr/local/sbin/"
        )
        .write(toFile: staged, atomically: false, encoding: .utf8)
        let verify = try Self.run(["systemd-analyze", "verify", staged])
        #expect(verify.status == 0 && verify.output.isEmpty, "systemd-analyze verify: \(verify.output)")
    }

    /// The tmpfiles entry creates /run/dlm for clients (0755) and /var/lib/dlm for root alone (0700).
    @Test func tmpfilesCreatesTheSocketAndDataDirectories() throws {
        let root = Daemon.temporaryDirectory("dlmd-tmpfiles")
        try FileManager.default.createDirectory(atPath: root, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(atPath: root) }
        let created = try Self.run(
            ["systemd-tmpfiles", "--create", "--root=\(root)", Self.root + "/dist/systemd/dlmd.tmpfiles.conf"])
        #expect(created.status == 0, "systemd-tmpfiles: \(created.output)")
        for (path, mode) in ["/run/dlm": 0o755, "/var/lib/dlm": 0o700] {
            let attributes = try FileManager.default.attributesOfItem(atPath: root + path)
            #expect(attributes[.type] as? FileAttributeType == .typeDirectory)
            #expect((attributes[.posixPermissions] as? Int) == mode, "\(path): \(attributes)")
        }
    }
}
