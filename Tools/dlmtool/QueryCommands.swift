import ArgumentParser
import DLMClient
import DLMWire
import Foundation

struct Status: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Show the daemon: node id, version, pid, uptime, socket, data directory and counts.",
        discussion: "With --json, prints dlmd's status report (Protocol/CLIENT.md §8) as it is.")

    @OptionGroup var options: CommonOptions

    func run() async throws {
        try await options.withReport(.status, as: StatusReport.self) { report in
            var store: [[String]] = []
            if let s = report.store {
                let percent = s.mapSize > 0 ? Double(s.usedBytes) * 100 / Double(s.mapSize) : 0
                store = [
                    ["store", s.path],
                    ["durability", s.durability],
                    ["incarnation", "\(s.incarnation)"],
                    ["store size", "\(s.usedBytes) bytes used of \(s.mapSize) (\(String(format: "%.1f", percent))%)"],
                    [
                        "last commit",
                        s.lastCommit.map { Date(timeIntervalSince1970: $0).description } ?? "none since start",
                    ],
                    ["last transaction", "\(s.lastTransaction)"],
                ]
                switch s.alarm {
                case "full"?:
                    store.append([
                        "store alarm", "FULL: new persistent locks and lockspaces are refused (ENOSPC); raise map_size",
                    ])
                case "failed"?:
                    store.append([
                        "store alarm",
                        "FAILED: changes to persistent locks are not acknowledged (\(s.failure ?? "?")); restart dlmd",
                    ])
                default:
                    break
                }
            }
            print(
                Text.table(
                    [
                        ["node id", "\(report.nodeID)"],
                        ["version", report.version],
                        ["pid", "\(report.pid)"],
                        ["uptime", Text.uptime(report.uptimeSeconds)],
                        ["socket", report.socket ?? "-"],
                        ["listen", (report.listen ?? "-") + (report.tls != nil ? " (TLS, client certificates)" : "")],
                        ["data dir", report.dataDirectory ?? "-"],
                        ["lockspaces", "\(report.lockspaces)"],
                        ["resources", "\(report.resources)"],
                        ["locks", "\(report.locks)"],
                        ["connections", "\(report.connections)"],
                    ] + store + ClusterText.statusRows(report) + Self.limitRows(report)
                        + (report.busyPoll.map {
                            [["busy poll", "\($0.windowMicroseconds) us window, \($0.polls) polls"]]
                        }
                            ?? [])
                        + (report.work.map {
                            [
                                [
                                    "work in slices",
                                    "\($0.bulkJobs) bulk jobs, \($0.deadlockPasses) deadlock passes"
                                        + ($0.deadlockPassRunning ? " (one running)" : "")
                                        + ($0.clusterDeadlockSearches.map { ", \($0) searches across nodes" } ?? "")
                                        + ($0.clusterDeadlockVictims.map { ", \($0) victims decided" } ?? ""),
                                ]
                            ]
                        } ?? [])))
        }
    }
}

extension Status {
    /// `limits  10000 connections (2 refused), 4096 lockspaces (0 refused)`, `lock limits  4194304 per
    /// connection, 16777216 per user (0 refused)`, `request queue  pause reading at 1024 requests waiting to run; 0
    /// paused now, 0 times` and `output limits  pause reading at 1024 KiB unread, close at 65536 KiB; 0 paused now,
    /// 0 closed`.
    static func limitRows(_ report: StatusReport) -> [[String]] {
        guard let limits = report.limits else { return [] }
        let tls = report.tls.map { tls in
            [["tls", "\(tls.handshakesRefused) handshakes refused" + (tls.lastRefusal.map { ", last: \($0)" } ?? "")]]
        }
        var rows =
            (tls ?? []) + [
                [
                    "limits",
                    "\(limits.maxConnections) connections (\(limits.connectionsRefused) refused), "
                        + "\(limits.maxLockspaces) lockspaces (\(limits.lockspacesRefused) refused)",
                ]
            ]
        if let perConnection = limits.maxLocksPerConnection, let perUser = limits.maxLocksPerUser {
            rows.append([
                "lock limits",
                "\(perConnection) per connection, \(perUser) per user (\(limits.locksRefused ?? 0) refused)",
            ])
        }
        if let queued = limits.maxQueuedRequests {
            rows.append([
                "request queue",
                "pause reading at \(queued) requests waiting to run; \(limits.readsPausedForQueue ?? 0) paused now, "
                    + "\(limits.queuePauses ?? 0) times",
            ])
        }
        if let pause = limits.outputPauseBytes, let limit = limits.outputLimitBytes {
            rows.append([
                "output limits",
                "pause reading at \(pause >> 10) KiB unread, close at \(limit >> 10) KiB; "
                    + "\(limits.readsPaused ?? 0) paused now, \(limits.closedForOutput ?? 0) closed",
            ])
        }
        return rows
    }
}

struct Dump: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Print dlmd's most recent log lines, oldest first (root only).",
        discussion: """
            What dlmd wrote lately to standard error (its log) and standard output (its views, fences and \
            where it listens), kept in memory: the last 2,000 lines, each cut to 1,024 bytes. This is dlm_tool's \
            dump. With --json, prints dlmd's log report (Protocol/CLIENT.md §8) as it is.
            """)

    @OptionGroup var options: CommonOptions

    func run() async throws {
        try await options.withReport(.log, as: LogReport.self) { report in
            for line in report.lines { print(line) }
        }
    }
}

struct DumpConfig: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "dump-config",
        abstract: "Print the settings dlmd runs with, one KEY=VALUE a line (root only).",
        discussion: """
            Each setting under its config file key (dlmd.* for the [dlmd] table, the cluster file's tables for the \
            rest), with the defaults and command-line options in effect. This is dlm_tool's dump_config. With \
            --json, prints dlmd's settings report (Protocol/CLIENT.md §8) as it is.
            """)

    @OptionGroup var options: CommonOptions

    func run() async throws {
        try await options.withReport(.config, as: ConfigReport.self) { report in
            for setting in report.settings { print("\(setting.key)=\(setting.value)") }
        }
    }
}

struct Ls: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "List the lockspaces with their resource and lock counts.",
        discussion: """
            Lists the lockspaces this user may open, each with its mode and its creator's uid and gid on this \
            node ("-" while no client of this node has created it). With --json, prints dlmd's lockspaces \
            report (Protocol/CLIENT.md §8) as it is.
            """)

    @OptionGroup var options: CommonOptions

    func run() async throws {
        try await options.withReport(.lockspaces, as: LockspacesReport.self) { report in
            guard !report.lockspaces.isEmpty else { return print("no lockspaces") }
            let clustered = report.lockspaces.contains { $0.members != nil }
            let rows = report.lockspaces.map { ls -> [String] in
                let creator: String = ls.uid.map { "\($0):\(ls.gid ?? 0)" } ?? "-"
                var row: [String] = [Text.name(ls.name), String(ls.id), String(ls.lvbLength), String(ls.resources)]
                row += [String(ls.locks), ls.mode ?? "-", creator]
                if clustered { row.append((ls.members ?? []).map(String.init).joined(separator: ",")) }
                return row
            }
            var header = ["NAME", "ID", "LVB", "RESOURCES", "LOCKS", "MODE", "UID:GID"]
            if clustered { header.append("MEMBERS") }
            print(Text.table([header] + rows))
            if let recovery = report.recovery {
                print("recovery: \(ClusterText.recoveryText(recovery))")
            }
        }
    }
}

/// Every page of a lockdebug or lockdump report (dlmd answers at most 2,048 locks a query; `next` asks for the
/// rest), merged into one report: a resource cut between two pages is one resource again. The reply's own bytes
/// too when it had one page only, to print as dlmd wrote them.
func allPages(
    _ connection: DLMConnection, _ kind: QueryKind, _ lockspace: String
) async throws -> (report: LockDebugReport, json: [UInt8]?) {
    let name = Array(lockspace.utf8)
    let first = try await connection.query(kind, argument: name)
    var report = try decodeReport(LockDebugReport.self, first)
    guard report.next != nil else { return (report, first) }
    let pageKind: QueryKind = kind == .lockdump ? .lockdumpPage : .lockdebugPage
    while let cursor = report.next {
        let page = try decodeReport(
            LockDebugReport.self,
            try await connection.query(pageKind, argument: QueryKind.pageArgument(cursor: cursor, lockspace: name)))
        for resource in page.resources {
            if let last = report.resources.last, last.path == resource.path, last.nameHex == resource.nameHex {
                report.resources[report.resources.count - 1].granted += resource.granted
                report.resources[report.resources.count - 1].converting += resource.converting
                report.resources[report.resources.count - 1].waiting += resource.waiting
            } else {
                report.resources.append(resource)
            }
        }
        report.next = page.next
    }
    return (report, nil)
}

/// The argument of lockdebug and lockdump.
struct LockspaceArgument: ParsableArguments {
    @Argument(help: "The lockspace's name.")
    var lockspace: String

    func validate() throws {
        try checkLockspaceName(lockspace)
    }
}

struct LockDebug: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "lockdebug",
        abstract: "Show every resource of a lockspace with its queues.",
        discussion: """
            Per resource: its name, master node (and directory node, in a cluster), value block (hex), \
            sequence and validity, fencing token, then the Granted, Convert and Waiting queues, one lock a \
            line: lock id, granted mode and (requested mode), owner (a connection number on its node, or \
            "orphan"), pid, uid (the kernel's, for a client of any node; an orphan's is its former owner's), the holder's node in a cluster, flags and how long it has waited. In a cluster, \
            then the locks this node's clients hold on resources other nodes master. With \
            --json, prints dlmd's lockdebug report (Protocol/CLIENT.md §8) as it is.
            """)

    @OptionGroup var options: CommonOptions
    @OptionGroup var argument: LockspaceArgument

    func run() async throws {
        try await options.withConnection { connection in
            let (report, json) = try await allPages(connection, .lockdebug, argument.lockspace)
            if options.json { return try json.map(printJSONBytes) ?? printJSON(report) }
            print(Self.render(report))
        }
    }

    static func render(_ report: LockDebugReport) -> String {
        var parts = report.resources.map(render)
        if let remote = report.remote, !remote.isEmpty {
            // Locks of this node's clients on resources other nodes master (their queues are there).
            let rows = remote.map { lock -> [String] in
                var modes = lock.grantedMode ?? "--"
                if let requested = lock.requestedMode, requested != lock.grantedMode { modes += " (\(requested))" }
                return [
                    Text.lockID(lock.id), modes, "owner \(lock.owner)", lock.uid.map { "uid \($0)" } ?? "",
                    "master node \(lock.master)",
                    lock.path.map { $0.map(Text.name).joined(separator: "/") } ?? Text.name(lock.name),
                ]
            }
            parts.append(
                "Held here, mastered elsewhere" + (report.remoteTruncated == true ? " (first 2,048)" : "") + "\n"
                    + Text.table(rows, indent: "  "))
        }
        guard !parts.isEmpty else { return "no resources in lockspace \(Text.name(report.lockspace))" }
        return parts.joined(separator: "\n\n")
    }

    static func render(_ resource: LockDebugReport.Resource) -> String {
        var lines = [
            "Resource \(Text.resourceName(resource)) (len \(resource.nameHex.count / 2), hex \(resource.nameHex))",
            "Master: node \(resource.master)" + (resource.directory.map { "  Directory: node \($0)" } ?? "")
                + "  Fencing token: \(resource.fencingToken)",
            "LVB: \(Text.groupedHex(resource.lvbHex))  sequence \(resource.lvbSequence)  "
                + (resource.lvbValid ? "valid" : "INVALID"),
        ]
        for (title, locks) in [
            ("Granted", resource.granted), ("Convert", resource.converting), ("Waiting", resource.waiting),
        ] where !locks.isEmpty {
            lines.append(title)
            lines.append(Text.table(locks.map(row), indent: "  "))
        }
        return lines.joined(separator: "\n")
    }

    /// `00000003 NL (EX)  owner 4  pid 1234  uid 1000  flags NOQUEUE  waiting 12 ms  parent 00000001`.
    static func row(_ lock: LockDebugReport.Lock) -> [String] {
        var modes = lock.grantedMode ?? "--"
        if let requested = lock.requestedMode, requested != lock.grantedMode { modes += " (\(requested))" }
        var row = [Text.lockID(lock.id), modes, "owner \(lock.owner)", "pid \(lock.pid)"]
        if let uid = lock.uid { row.append("uid \(uid)") }
        if let node = lock.node { row.append("node \(node)") }
        if !lock.flags.isEmpty { row.append("flags \(lock.flags)") }
        if let waited = lock.waitingMilliseconds { row.append("waiting \(Text.waited(waited))") }
        if let parent = lock.parent { row.append("parent \(Text.lockID(parent))") }
        if lock.fencingToken != 0 { row.append("token \(lock.fencingToken)") }
        return row
    }
}

struct LockDump: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "lockdump",
        abstract: "List every lock of a lockspace, one a line.",
        discussion: """
            Columns: resource, lock id, granted and requested mode ("-" for none), queue (granted, convert, \
            waiting), owner, pid, uid (the kernel's, for a client of any node; an orphan's: its former owner's; "-" \
            when unknown: an orphan from a store written before uids were kept) \
            and flags. With --json, prints dlmd's lockdump report (Protocol/CLIENT.md \
            §8) as it is.
            """)

    @OptionGroup var options: CommonOptions
    @OptionGroup var argument: LockspaceArgument

    func run() async throws {
        try await options.withConnection { connection in
            let (report, json) = try await allPages(connection, .lockdump, argument.lockspace)
            if options.json { return try json.map(printJSONBytes) ?? printJSON(report) }
            var rows: [[String]] = []
            for resource in report.resources {
                for (queue, locks) in [
                    ("granted", resource.granted), ("convert", resource.converting), ("waiting", resource.waiting),
                ] {
                    for lock in locks {
                        rows.append([
                            Text.resourceName(resource), Text.lockID(lock.id), lock.grantedMode ?? "-",
                            lock.requestedMode ?? "-", queue, lock.owner, "\(lock.pid)",
                            lock.uid.map(String.init) ?? "-",
                            lock.flags,
                        ])
                    }
                }
            }
            guard !rows.isEmpty else { return print("no locks in lockspace \(Text.name(report.lockspace))") }
            print(
                Text.table(
                    [["RESOURCE", "ID", "GRANTED", "REQUESTED", "QUEUE", "OWNER", "PID", "UID", "FLAGS"]] + rows))
        }
    }
}
