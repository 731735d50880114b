import DLMTestSupport
import DLMWire
import Foundation
import Testing

/// Pacemaker runs dlmd through the OCF agent (dist/ocf/dlmd): one node in a network namespace with corosync and
/// pacemakerd (their own /run, /var/lib/pacemaker, /var/log/pacemaker, and the agent as
/// /usr/lib/ocf/resource.d/swift-dlm/dlmd, bind-mounted inside the namespace), the resource in the CIB it starts
/// with. Needs root, `ip netns`, corosync and Pacemaker (Debian's pacemaker); skipped otherwise.
@Suite(.serialized, .timeLimit(.minutes(3)))
struct PacemakerTests {
    static let pacemakerd = "/usr/sbin/pacemakerd"
    static let canRun: Bool = {
        ProviderTests.canRunCorosync && FileManager.default.isExecutableFile(atPath: pacemakerd)
            && getpwnam("hacluster") != nil && getgrnam("haclient") != nil
    }()

    /// Pacemaker starts dlmd, its monitor finds a killed dlmd and Pacemaker starts it again, and a stop of the
    /// resource stops dlmd.
    @Test(.enabled(if: PacemakerTests.canRun, "skipped: needs root, ip netns, corosync and pacemaker"))
    func pacemakerStartsMonitorsAndRestartsDlmd() async throws {
        let network = try Network(nodes: 1)
        defer { network.remove() }
        let ring = try CorosyncRing(network: network)
        defer { ring.stopAll() }
        let pacemaker = try Pacemaker(ring: ring)
        defer { pacemaker.stop() }

        // Started: Pacemaker says so (its start action, which waits until dlmd answers, is over), and dlmd answers.
        try await pacemaker.waitUntil("dlm started") { $0.contains("Started node1") && !$0.contains("Starting") }
        let first = try await pacemaker.waitForDlmd { _ in true }
        #expect(try String(contentsOfFile: pacemaker.directory + "/dlmd.pid", encoding: .utf8).hasPrefix("\(first)"))

        // Killed: the monitor (every second) reports a failure, and Pacemaker starts a new one. The failure is
        // 'not running' once the killed process is gone, or 'error' (it runs but does not answer) if the monitor
        // came while it was still exiting: Pacemaker recovers from both (one CI run met the second).
        kill(first, SIGKILL)
        let second = try await pacemaker.waitForDlmd { $0 != first }
        try await pacemaker.waitUntil("dlm started again after a failed monitor") {
            $0.contains("Started node1")
                && ($0.contains("monitor on node1 returned 'not running'")
                    || $0.contains("monitor on node1 returned 'error'"))
        }

        // Stopped through Pacemaker: dlmd exits (SIGTERM, its clean stop) and its socket goes.
        _ = try pacemaker.run([
            "crm_resource", "--resource", "dlm", "--meta", "--set-parameter", "target-role", "--parameter-value",
            "Stopped",
        ])
        let deadline = ContinuousClock.now + .seconds(60)
        while Foundation.kill(second, 0) == 0 || FileManager.default.fileExists(atPath: pacemaker.socket) {
            // Pacemaker says nothing to a watcher but its log: polled, with a hang detector.
            guard ContinuousClock.now < deadline else { throw SupportError("dlmd \(second) still runs") }
            try await Task.sleep(for: .milliseconds(100))
        }
    }
}

/// pacemakerd in node 1's namespace of a `CorosyncRing`, with a CIB that holds the dlmd resource from the start
/// (stonith off, for this one-node test; dc-deadtime 2 s instead of 20).
final class Pacemaker: @unchecked Sendable {
    let ring: CorosyncRing
    let directory: String
    let process = Process()
    private let exited = DispatchSemaphore(value: 0)
    var socket: String { directory + "/dlmd.sock" }

    init(ring: CorosyncRing) throws {
        self.ring = ring
        directory = Daemon.temporaryDirectory("dlm-pacemaker")
        let manager = FileManager.default
        let state = directory + "/pacemaker"
        let owner: [FileAttributeKey: Any] = [
            .ownerAccountID: Int(getpwnam("hacluster")!.pointee.pw_uid),
            .groupOwnerAccountID: Int(getgrnam("haclient")!.pointee.gr_gid), .posixPermissions: 0o750,
        ]
        for folder in ["", "/cib", "/pengine", "/blackbox", "/cores"] {
            try manager.createDirectory(atPath: state + folder, withIntermediateDirectories: true)
            try manager.setAttributes(owner, ofItemAtPath: state + folder)
        }
        try manager.createDirectory(atPath: directory + "/log", withIntermediateDirectories: true)
        try manager.setAttributes(owner, ofItemAtPath: directory + "/log")
        try manager.createDirectory(atPath: directory + "/ocf/swift-dlm", withIntermediateDirectories: true)
        let agent = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent()
            .deletingLastPathComponent().appendingPathComponent("dist/ocf/dlmd").path
        try manager.copyItem(atPath: agent, toPath: directory + "/ocf/swift-dlm/dlmd")
        let parameters = [
            "binary": Daemon.executable, "dlmtool": ToolRun.executable, "socket": socket,
            "data_dir": directory + "/data", "pid_file": directory + "/dlmd.pid", "log_file": directory + "/dlmd.log",
        ]
        let pairs = parameters.sorted { $0.key < $1.key }.map {
            "<nvpair id=\"dlm-\($0.key)\" name=\"\($0.key)\" value=\"\($0.value)\"/>"
        }.joined()
        let cib = """
            <cib crm_feature_set="3.16.1" validate-with="pacemaker-3.9" epoch="1" num_updates="0" admin_epoch="0">
              <configuration>
                <crm_config>
                  <cluster_property_set id="options">
                    <nvpair id="options-stonith-enabled" name="stonith-enabled" value="false"/>
                    <nvpair id="options-dc-deadtime" name="dc-deadtime" value="2s"/>
                  </cluster_property_set>
                </crm_config>
                <nodes/>
                <resources>
                  <primitive id="dlm" class="ocf" provider="swift-dlm" type="dlmd">
                    <instance_attributes id="dlm-parameters">\(pairs)</instance_attributes>
                    <operations><op id="dlm-monitor" name="monitor" interval="1s" timeout="20s"/></operations>
                  </primitive>
                </resources>
                <constraints/>
              </configuration>
              <status/>
            </cib>

            """
        try cib.write(toFile: state + "/cib/cib.xml", atomically: false, encoding: .utf8)
        var file = owner
        file[.posixPermissions] = 0o600
        try manager.setAttributes(file, ofItemAtPath: state + "/cib/cib.xml")

        let run = ring.directory + "/node1/run"
        process.executableURL = URL(fileURLWithPath: "/usr/sbin/ip")
        process.arguments =
            ring.network.launcher(1).dropFirst() + [
                "sh", "-c",
                "mount --bind \(run) /run && mount --bind \(state) /var/lib/pacemaker && "
                    + "mount --bind \(directory)/log /var/log/pacemaker && "
                    + "mount --bind \(directory)/ocf /usr/lib/ocf/resource.d && exec \(PacemakerTests.pacemakerd) -f",
            ]
        process.standardOutput = FileHandle.nullDevice
        process.standardError = FileHandle.nullDevice
        process.terminationHandler = { [exited] _ in exited.signal() }
        try process.run()
    }

    /// Runs a Pacemaker tool in the node's namespace; its output.
    func run(_ command: [String]) throws -> String {
        let tool = Process()
        tool.executableURL = URL(fileURLWithPath: "/usr/sbin/ip")
        tool.arguments = Array(ring.network.launcher(1).dropFirst()) + command
        let output = Pipe()
        tool.standardOutput = output
        tool.standardError = output
        try tool.run()
        let text = String(decoding: output.fileHandleForReading.readDataToEndOfFile(), as: UTF8.self)
        tool.waitUntilExit()
        return text
    }

    /// Waits until `crm_mon -1` prints what `accept` takes. Polled every 100 ms, with a hang detector.
    func waitUntil(_ what: String, _ accept: (String) -> Bool) async throws {
        let deadline = ContinuousClock.now + .seconds(90)
        var status = ""
        while ContinuousClock.now < deadline {
            status = try run(["crm_mon", "-1"])
            if accept(status) { return }
            try await Task.sleep(for: .milliseconds(100))
        }
        throw SupportError("Pacemaker: no \(what) within 90 s; crm_mon says: \(status)")
    }

    /// Waits until a dlmd answers on the resource's socket with a pid that `accept` takes; that pid. Pacemaker says
    /// nothing to a watcher but its log: polled every 100 ms, with a hang detector.
    func waitForDlmd(_ accept: (Int32) -> Bool) async throws -> Int32 {
        let deadline = ContinuousClock.now + .seconds(90)
        while ContinuousClock.now < deadline {
            let result = try await ToolRun.run(arguments: ["status", "--json", "--socket", socket])
            if result.status == 0, let report = try? JSONDecoder().decode(StatusReport.self, from: result.output),
                accept(report.pid)
            {
                return report.pid
            }
            try await Task.sleep(for: .milliseconds(100))
        }
        let log = (try? String(contentsOfFile: directory + "/log/pacemaker.log", encoding: .utf8)) ?? ""
        throw SupportError("no dlmd under Pacemaker within 90 s; its log ends: \(log.suffix(3000))")
    }

    /// SIGTERM to pacemakerd, which stops the resource and its daemons; SIGKILL after 60 s.
    func stop() {
        defer { try? FileManager.default.removeItem(atPath: directory) }
        guard process.isRunning else { return }
        process.terminate()
        if exited.wait(timeout: .now() + 60) == .timedOut { kill(process.processIdentifier, SIGKILL) }
        process.waitUntilExit()
    }
}
