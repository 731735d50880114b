import DLMCore
import DLMWire
import Foundation
import NIOCore

/// The answers to QUERY (Protocol/CLIENT.md §8).
extension LockNode {
    func report(_ kind: QueryKind, argument: [UInt8]) throws(DLMError) -> [UInt8] {
        let encoder = JSONEncoder()
        encoder.outputFormatting = [.sortedKeys]
        do {
            switch kind {
            case .status:
                return Array(try encoder.encode(statusReport()))
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

    func statusReport() -> StatusReport {
        let lockspaces = engine.allLockspaces
        let cluster = self.cluster?.report()
        return StatusReport(
            nodeID: configuration.nodeID, version: dlmVersion, pid: getpid(),
            uptimeSeconds: Double((NIODeadline.now() - startedAt).nanoseconds) / 1e9,
            socket: configuration.socketPath, listen: configuration.listenAddress,
            dataDirectory: configuration.dataDirectory, lockspaces: lockspaces.count,
            resources: engine.resourceCount, locks: engine.lockCount, connections: connections.count,
            store: storeReport, incarnation: persistence?.store.incarnation ?? 0, quorate: !isStopped,
            view: cluster?.view,
            recovery: .init(
                waitingFor: isStopped ? (cluster?.waitingFor ?? stopReasons) : [], heldRequests: heldInputs.count),
            cluster: cluster?.cluster,
            busyPoll: busyPoll.map {
                .init(windowMicroseconds: $0.window.nanoseconds / 1000, polls: $0.polls)
            },
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
                return LockDebugReport.Lock(
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
