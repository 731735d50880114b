import DLMCore
import DLMWire
import Foundation

/// What only the shell knows, for a QUERY's report: the process, its sockets, the store's file, the cluster's
/// view as group services see it, the event loop's polling. A class: it rides in every input and held request,
/// and as a struct (over 300 bytes) it was copied with each of them (`memmove` was about 5 % of a pipelined dlmd's
/// time in `LockService.handle`).
public final class ReportEnvironment: Sendable {
    public let pid: Int32
    public let uptimeSeconds: Double
    public let socket: String?
    public let listen: String?
    public let dataDirectory: String?
    public let store: StatusReport.Store?
    /// For a cluster member: the view, what a view change waits for, and the cluster's nodes.
    public let cluster: (view: StatusReport.View?, waitingFor: [String], cluster: StatusReport.Cluster)?
    public let busyPoll: StatusReport.BusyPollStatus?
    /// The output limits of client connections, and how many are paused or were closed for them.
    public let output: (pauseBytes: Int, limitBytes: Int, paused: Int, closed: Int)?
    /// TLS for TCP clients, when dlmd takes them.
    public let tls: StatusReport.TLSStatus?
    /// dlmd's most recent log lines and how many it keeps (QUERY kind 7); the shell reads them only for that query
    /// (nil otherwise, and when no log is kept).
    public let recentLog: (lines: [String], capacity: Int)?
    /// The settings dlmd runs with (QUERY kind 8); the shell gives them only for that query.
    public let settings: [(key: String, value: String)]?

    public init(
        pid: Int32 = 0, uptimeSeconds: Double = 0, socket: String? = nil, listen: String? = nil,
        dataDirectory: String? = nil, store: StatusReport.Store? = nil,
        cluster: (view: StatusReport.View?, waitingFor: [String], cluster: StatusReport.Cluster)? = nil,
        busyPoll: StatusReport.BusyPollStatus? = nil,
        output: (pauseBytes: Int, limitBytes: Int, paused: Int, closed: Int)? = nil,
        tls: StatusReport.TLSStatus? = nil,
        recentLog: (lines: [String], capacity: Int)? = nil, settings: [(key: String, value: String)]? = nil
    ) {
        self.recentLog = recentLog
        self.settings = settings
        self.tls = tls
        self.output = output
        self.pid = pid
        self.uptimeSeconds = uptimeSeconds
        self.socket = socket
        self.listen = listen
        self.dataDirectory = dataDirectory
        self.store = store
        self.cluster = cluster
        self.busyPoll = busyPoll
    }
}

/// The answers to QUERY (Protocol/CLIENT.md §8).
extension LockService {
    /// The report of `kind` as `who` may see it: the lockspaces it may open, and the locks of a lockspace it may
    /// read (EACCES otherwise).
    func report(
        _ kind: QueryKind, argument: [UInt8], for who: ClientCredentials, environment: ReportEnvironment
    ) throws(DLMError) -> [UInt8] {
        let encoder = JSONEncoder()
        encoder.outputFormatting = [.sortedKeys]
        do {
            switch kind {
            case .status:
                return Array(try encoder.encode(statusReport(environment)))
            case .lockspaces:
                return Array(
                    try encoder.encode(lockspacesReport(for: who, groupWaits: environment.cluster?.waitingFor)))
            case .log:
                // (Log lines name lockspaces, resources and nodes, whoever may open them.)
                guard who.uid == 0 else {
                    throw DLMError(.notPermitted, "only root may read dlmd's log (uid \(who.uid))")
                }
                let log = environment.recentLog ?? (lines: [], capacity: 0)
                return Array(try encoder.encode(LogReport(lines: log.lines, capacity: log.capacity)))
            case .config:
                // (Key files' and fence commands' paths, the nodes' addresses.)
                guard who.uid == 0 else {
                    throw DLMError(.notPermitted, "only root may read dlmd's settings (uid \(who.uid))")
                }
                let settings = (environment.settings ?? []).map {
                    ConfigReport.Setting(key: $0.key, value: $0.value)
                }
                return Array(try encoder.encode(ConfigReport(settings: settings)))
            case .lockdebug, .lockdump, .lockdebugPage, .lockdumpPage:
                // A page at a time (at most 2,048 locks): a report of a million locks would hold the loop and
                // overflow a frame. The reply's `next` asks for the next page.
                var cursor: UInt64 = 0
                var name = argument
                if kind == .lockdebugPage || kind == .lockdumpPage {
                    guard let page = QueryKind.parsePageArgument(argument) else {
                        throw DLMError(.invalid, "a page query's argument is a cursor and a lockspace name")
                    }
                    (cursor, name) = page
                }
                guard let id = engine.lockspace(named: name) else {
                    throw DLMError(.noEntry, "no lockspace \(name.displayName)")
                }
                let access = engine.lockspaceInfo(id)?.access
                guard who.permits(LockspaceAccess.read, on: access) else {
                    throw DLMError(.permissionDenied, Self.denial(of: "read", name, access, who))
                }
                return Array(try encoder.encode(lockDebugReport(id, from: cursor)))
            }
        } catch let error as DLMError {
            throw error
        } catch {
            throw DLMError(.invalid, "cannot encode the report: \(error)")
        }
    }

    func statusReport(_ environment: ReportEnvironment) -> StatusReport {
        let cluster = environment.cluster
        return StatusReport(
            nodeID: configuration.nodeID, version: LockService.version, pid: environment.pid,
            uptimeSeconds: environment.uptimeSeconds, socket: environment.socket, listen: environment.listen,
            dataDirectory: environment.dataDirectory, lockspaces: engine.allLockspaces.count,
            resources: engine.resourceCount, locks: engine.lockCount, connections: connectionCount,
            store: environment.store, incarnation: configuration.incarnation, quorate: !isStopped,
            view: cluster?.view,
            recovery: recoveryReport(groupWaits: cluster?.waitingFor),
            cluster: cluster?.cluster, busyPoll: environment.busyPoll,
            work: .init(
                bulkJobs: engine.bulkJobCount, deadlockPasses: engine.probe.deadlockPasses,
                deadlockPassRunning: engine.isSearchingDeadlocks,
                clusterDeadlockSearches: mastersAcrossNodes ? mastering.deadlocks.searches : nil,
                clusterDeadlockVictims: mastersAcrossNodes ? mastering.deadlocks.victims : nil),
            limits: .init(
                maxConnections: configuration.maxConnections, maxLockspaces: configuration.maxLockspaces,
                connectionsRefused: limitRefusals.connections, lockspacesRefused: limitRefusals.lockspaces,
                maxLocksPerConnection: configuration.maxLocksPerConnection,
                maxLocksPerUser: configuration.maxLocksPerUser, locksRefused: limitRefusals.locks,
                outputPauseBytes: environment.output?.pauseBytes, outputLimitBytes: environment.output?.limitBytes,
                readsPaused: environment.output?.paused, closedForOutput: environment.output?.closed,
                maxQueuedRequests: configuration.maxQueuedRequests, readsPausedForQueue: queuePausedCount,
                queuePauses: queuePauses),
            tls: environment.tls)
    }

    /// What the node waits for while it is stopped (group services' reasons first, else the lock service's own,
    /// such as recovery), and, in a cluster, the recovery run under way.
    func recoveryReport(groupWaits: [String]?) -> StatusReport.Recovery {
        var waits: [String] = []
        if isStopped { waits = (groupWaits ?? []).isEmpty ? stopReasons : groupWaits! }
        guard configuration.mastersAcrossNodes else {
            return .init(waitingFor: waits, heldRequests: heldInputs.count)
        }
        let run = mastering.recovery
        let waitingForNodes = run.map { run in
            mastering.members.filter { !(run.done[run.phase] ?? []).contains($0) }
        }
        if let run, let nodes = waitingForNodes, !nodes.isEmpty {
            waits.append(
                "recovery phase \(run.phase) of view \(RecoveryRun.describe(run.view)) from node"
                    + (nodes.count == 1 ? " " : "s ") + nodes.map(String.init).joined(separator: ","))
        }
        return .init(
            waitingFor: waits, heldRequests: heldInputs.count, view: run.map { RecoveryRun.view($0.view) },
            phase: run.map { Int($0.phase) }, waitingForNodes: waitingForNodes,
            recoveredView: RecoveryRun.view(mastering.recoveredView))
    }

    /// The lockspaces `who` may open (read and write permission).
    func lockspacesReport(for who: ClientCredentials, groupWaits: [String]? = nil) -> LockspacesReport {
        let cluster = configuration.mastersAcrossNodes
        let rw = LockspaceAccess.read | LockspaceAccess.write
        return LockspacesReport(
            lockspaces: engine.allLockspaces.filter { who.permits(rw, on: $0.access) }.map {
                .init(
                    name: $0.name.displayName, id: $0.id.rawValue, lvbLength: $0.valueBlockLength,
                    resources: $0.resourceCount, locks: $0.lockCount,
                    members: cluster ? mastering.groups[$0.name]?.members ?? mastering.members : nil,
                    mode: $0.access.map { "0" + String($0.mode, radix: 8) }, uid: $0.access?.uid,
                    gid: $0.access?.gid)
            },
            recovery: cluster ? recoveryReport(groupWaits: groupWaits) : nil)
    }

    /// This node's clients' locks on resources of `lockspace` that other nodes master (at most `limit`).
    func remoteLocks(_ lockspace: LockspaceID, limit: Int = 2048) -> (locks: [LockDebugReport.RemoteLock], more: Bool) {
        guard let name = engine.lockspaceInfo(lockspace)?.name else { return ([], false) }
        var locks: [LockDebugReport.RemoteLock] = []
        for (index, copy) in mastering.copies.copies.enumerated()
        where copy.owner != 0 && !mastering.copies.isExiting(copy.owner) {
            guard copy.master != configuration.nodeID, let record = copy.record, record.lockspace == name else {
                continue
            }
            if locks.count == limit { return (locks, true) }
            let own = record.subPath.last ?? record.name
            locks.append(
                .init(
                    name: own.displayName, nameHex: own.hexString, master: copy.master,
                    id: ProcessCopies.lockID(index).description, grantedMode: record.grantedMode?.description,
                    requestedMode: record.requestedMode?.description, owner: String(copy.owner),
                    uid: slotsByOwner[copy.owner].flatMap { clients[Int($0)].credentials?.uid },
                    path: record.subPath.isEmpty ? nil : record.path.map(\.displayName)))
        }
        return (locks, false)
    }

    func lockDebugReport(_ lockspace: LockspaceID, from cursor: UInt64) -> LockDebugReport {
        let now = engine.now
        let cluster = configuration.mastersAcrossNodes && !mastering.members.isEmpty
        let lockspaceName = engine.lockspaceInfo(lockspace)?.name ?? []
        let page = engine.snapshotLockspacePage(lockspace, from: cursor)
        let resources = page.resources.map { snapshot in
            func entry(_ lock: LockSnapshot) -> LockDebugReport.Lock {
                // An orphan shows the pid and uid of the process that held it; a lock of another node's client
                // the uid its node sent.
                LockDebugReport.Lock(
                    id: lock.id.description, grantedMode: lock.grantedMode?.description,
                    requestedMode: lock.requestedMode?.description,
                    owner: lock.owner.map { String($0.rawValue) } ?? "orphan",
                    pid: Int32(bitPattern: lock.pid),
                    flags: lock.flags.description,
                    waitingMilliseconds: lock.queue == .grant
                        ? nil : Double(now > lock.waitingSince ? now - lock.waitingSince : 0) / 1e6,
                    parent: lock.parent?.description, fencingToken: lock.fencingToken,
                    node: cluster ? lock.owner?.node : nil,
                    uid: lock.uid != LockEngine.unknownUser ? lock.uid : lock.owner.flatMap(userID(of:)))
            }
            let lvb =
                snapshot.valueBlock
                ?? [UInt8](repeating: 0, count: engine.lockspaceInfo(lockspace)?.valueBlockLength ?? 0)
            return LockDebugReport.Resource(
                name: snapshot.name.displayName, nameHex: snapshot.name.hexString,
                path: snapshot.path.map(\.displayName), master: configuration.nodeID, lvbHex: lvb.hexString,
                lvbSequence: snapshot.valueBlockSequence, lvbValid: !snapshot.valueBlockInvalid,
                fencingToken: snapshot.fencingToken,
                granted: snapshot.locks.filter { $0.queue == .grant }.map(entry),
                converting: snapshot.locks.filter { $0.queue == .convert }.map(entry),
                waiting: snapshot.locks.filter { $0.queue == .wait }.map(entry),
                directory: cluster && snapshot.path.count == 1
                    ? mastering.directoryNode(of: DirectoryKey(lockspace: lockspaceName, name: snapshot.name)) : nil)
        }
        let remote = cluster && cursor == 0 ? remoteLocks(lockspace) : nil
        return LockDebugReport(
            lockspace: lockspaceName.displayName, resources: resources, next: page.next, remote: remote?.locks,
            remoteTruncated: remote.map { $0.more ? true : nil } ?? nil)
    }
}
