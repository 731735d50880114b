import DLMCore
import DLMWire

/// The replies of work done in slices (DLMCore's BulkWork.swift): a purge, a forced release of a lockspace, a
/// FORCEUNLOCK of a lock with many sub-locks. Each answers at its end, and the requests its connection sent after
/// it wait until then (`Client.deferredRequests`), so that replies keep the order of requests.
extension LockService {
    enum BulkReply {
        case purged(tag: UInt32, pid: UInt32)
        case released(tag: UInt32, lockspace: [UInt8])
        /// This node's part of a purge across nodes (LockService+Purges.swift), and a part done for another member.
        case clusterPurge(UInt64)
        case peerPurge(node: UInt32, reference: UInt64)
    }

    /// A release or purge ended: its reply (after what it let through), and for a release, the store forgets the
    /// lockspace.
    mutating func finishBulk(_ finished: Finished) {
        guard let pending = bulkReplies.removeValue(forKey: finished.context) else { return }
        let connection = self.connection(of: finished.owner)
        let ready = connection.map { clients[Int($0.slot)].state == .ready } ?? false
        holdForEarlierSlices()
        switch pending {
        case .purged(let tag, let pid):
            if ready {
                deliver(connection!, purgeReply(tag: tag, pid: pid, count: finished.count, skipped: finished.skipped))
            }
        case .released(let tag, let lockspace):
            record(.deleteLockspace(name: lockspace))
            if ready { deliver(connection!, .ok(tag: tag, lock: 0)) }
            if mastersAcrossNodes, mastering.isGroupMember(lockspace, configuration.nodeID) {
                mastering.released.insert(lockspace)
                leaveReleasedGroups()
            }
        case .clusterPurge(let reference):
            purgePartDone(reference, count: finished.count, skipped: finished.skipped, from: nil)
            return
        case .peerPurge(let node, let reference):
            send(.purged(ref: reference, count: UInt32(finished.count), skipped: UInt32(finished.skipped)), to: node)
            return
        }
        if let connection { replyDelivered(connection) }
    }

    /// The reply that a connection's later requests waited for went out: they run now, in order, until one of them
    /// waits again.
    mutating func replyDelivered(_ id: ConnectionID) {
        guard isLive(id) else { return }
        clients[Int(id.slot)].awaitingReply = false
        // Not from inside the engine's effects (this is called while they are sent): the requests run once this
        // input is done, from `drainDeferred`.
        if !queues[Int(id.slot)].deferredRequests.isEmpty { connectionsWithDeferredRequests.append(id) }
    }

    /// Runs the requests that waited behind a reply done in slices.
    mutating func drainDeferred() {
        while let id = connectionsWithDeferredRequests.popLast() {
            guard isLive(id) else { continue }
            while isLive(id), !clients[Int(id.slot)].awaitingReply,
                let (message, environment) = queues[Int(id.slot)].deferredRequests.popFirst()
            {
                receive(message, from: id, now: nil, environment: environment)
            }
        }
    }
}
