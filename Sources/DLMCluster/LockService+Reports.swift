import DLMCore
import DLMWire
import Foundation

/// What only the shell knows, for a QUERY's report: the process, its sockets, the store's file, the cluster's
/// view as group services see it, the event loop's polling.
public struct ReportEnvironment: Sendable {
    public var pid: Int32 = 0
    public var uptimeSeconds: Double = 0
    public var socket: String?
    public var listen: String?
    public var dataDirectory: String?
    public var store: StatusReport.Store?
    /// For a cluster member: the view, what a view change waits for, and the cluster's nodes.
    public var cluster: (view: StatusReport.View?, waitingFor: [String], cluster: StatusReport.Cluster)?
    public var busyPoll: StatusReport.BusyPollStatus?

    public init(
        pid: Int32 = 0, uptimeSeconds: Double = 0, socket: String? = nil, listen: String? = nil,
        dataDirectory: String? = nil, store: StatusReport.Store? = nil,
        cluster: (view: StatusReport.View?, waitingFor: [String], cluster: StatusReport.Cluster)? = nil,
        busyPoll: StatusReport.BusyPollStatus? = nil
    ) {
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
    func report(_ kind: QueryKind, argument: [UInt8], environment: ReportEnvironment) throws(DLMError) -> [UInt8] {
        let encoder = JSONEncoder()
        encoder.outputFormatting = [.sortedKeys]
        do {
            switch kind {
            case .status:
                return Array(try encoder.encode(statusReport(environment)))
            case .lockspaces:
                return Array(try encoder.encode(lockspacesReport()))
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
            recovery: .init(
                waitingFor: isStopped ? (cluster?.waitingFor ?? stopReasons) : [], heldRequests: heldInputs.count),
            cluster: cluster?.cluster, busyPoll: environment.busyPoll,
            work: .init(
                bulkJobs: engine.bulkJobCount, deadlockPasses: engine.probe.deadlockPasses,
                deadlockPassRunning: engine.isSearchingDeadlocks))
    }

    func lockspacesReport() -> LockspacesReport {
        LockspacesReport(
            lockspaces: engine.allLockspaces.map {
                .init(
                    name: $0.name.displayName, id: $0.id.rawValue, lvbLength: $0.valueBlockLength,
                    resources: $0.resourceCount, locks: $0.lockCount)
            })
    }

    func lockDebugReport(_ lockspace: LockspaceID, from cursor: UInt64) -> LockDebugReport {
        let now = engine.now
        let page = engine.snapshotLockspacePage(lockspace, from: cursor)
        let resources = page.resources.map { snapshot in
            func entry(_ lock: LockSnapshot) -> LockDebugReport.Lock {
                // An orphan shows the pid of the process that held it.
                LockDebugReport.Lock(
                    id: lock.id.description, grantedMode: lock.grantedMode?.description,
                    requestedMode: lock.requestedMode?.description,
                    owner: lock.owner.map { String($0.rawValue) } ?? "orphan",
                    pid: Int32(bitPattern: lock.pid),
                    flags: lock.flags.description,
                    waitingMilliseconds: lock.queue == .grant
                        ? nil : Double(now > lock.waitingSince ? now - lock.waitingSince : 0) / 1e6,
                    parent: lock.parent?.description, fencingToken: lock.fencingToken)
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
                waiting: snapshot.locks.filter { $0.queue == .wait }.map(entry))
        }
        return LockDebugReport(
            lockspace: engine.lockspaceInfo(lockspace)?.name.displayName ?? "", resources: resources, next: page.next)
    }
}
