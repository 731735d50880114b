import DLMCore
import DLMWire

/// PURGE across nodes (`dlm_ls_purge`, `dlmtool purge LS NODE PID`): when resources are mastered across nodes, the
/// orphans a process left are on the masters of their resources, anywhere. The node of the client that asks sends
/// PURGE to every other member of the view and purges its own engine; each member removes the orphans of that
/// lockspace whose former owner was process `pid` of node `node` (done in slices, as on one node) and answers
/// PURGED with how many locks it removed; the client gets the sum once every member answered. A member that
/// leaves the view meanwhile is not waited for (what it mastered is rebuilt elsewhere without orphans, which do not
/// survive their master yet: docs/RECOVERY.md).
struct ClusterPurge {
    var connection: ConnectionID
    var tag: UInt32
    var pid: UInt32
    /// The members not answered yet, with the life each had when asked.
    var waitingFor: [UInt32: UInt64]
    var localDone = false
    var count = 0
    /// Orphans of the process left for being another user's (`LockEngine.mayTakeOver`).
    var skipped = 0
}

extension LockService {
    /// A client's PURGE on a node mastering across nodes: `nodeID` 0 is this node.
    mutating func purgeAcrossNodes(
        _ id: ConnectionID, tag: UInt32, lockspace: UInt32, nodeID: UInt32, pid: UInt32, user: UInt32
    ) {
        guard let info = engine.lockspaceInfo(LockspaceID(rawValue: lockspace)) else {
            deliver(id, .error(tag: tag, status: .noEntry, message: "no such lockspace"))
            return
        }
        let node = nodeID == 0 ? configuration.nodeID : nodeID
        let reference = mastering.nextPurge
        mastering.nextPurge += 1
        var waitingFor: [UInt32: UInt64] = [:]
        for member in mastering.members where member != configuration.nodeID {
            waitingFor[member] = mastering.viewMembers[member] ?? 0
        }
        mastering.purges[reference] = ClusterPurge(connection: id, tag: tag, pid: pid, waitingFor: waitingFor)
        clients[Int(id.slot)].awaitingReply = true
        for member in waitingFor.keys.sorted() {
            send(.purge(ref: reference, lockspace: info.name, node: node, pid: pid, uid: user), to: member)
        }
        let context = nextBulkContext
        nextBulkContext += 1
        bulkReplies[context] = .clusterPurge(reference)
        run(
            .purge(lockspace: info.id, pid: pid, node: node, user: user, requester: owner(id), context: context),
            reply: nil)
    }

    /// Another member's PURGE: this node's part, answered at its end (`finishBulk`).
    mutating func purgeForPeer(
        reference: UInt64, lockspace name: [UInt8], node: UInt32, pid: UInt32, user: UInt32, from: UInt32
    ) {
        guard let lockspace = engine.lockspace(named: name) else {
            send(.purged(ref: reference, count: 0, skipped: 0), to: from)
            return
        }
        let context = nextBulkContext
        nextBulkContext += 1
        bulkReplies[context] = .peerPurge(node: from, reference: reference)
        let requester = owner(local: 0)
        run(
            .purge(lockspace: lockspace, pid: pid, node: node, user: user, requester: requester, context: context),
            reply: nil)
    }

    /// A part of a purge is done: this node's (`from` nil) or a member's.
    mutating func purgePartDone(_ reference: UInt64, count: Int, skipped: Int, from: UInt32?) {
        guard var purge = mastering.purges[reference] else { return }
        purge.count += count
        purge.skipped += skipped
        if let from {
            guard purge.waitingFor.removeValue(forKey: from) != nil else { return }
        } else {
            purge.localDone = true
        }
        mastering.purges[reference] = purge
        finishPurgeIfDone(reference)
    }

    mutating func finishPurgeIfDone(_ reference: UInt64) {
        guard let purge = mastering.purges[reference], purge.localDone, purge.waitingFor.isEmpty else { return }
        mastering.purges[reference] = nil
        let id = purge.connection
        guard isLive(id) else { return }
        // As on one node, PURGED goes out once the removal is stored (this node's part may be in a generation not
        // committed yet; the other members' answers waited for their own stores).
        holdForEarlierSlices()
        if clients[Int(id.slot)].state == .ready {
            deliver(id, purgeReply(tag: purge.tag, pid: purge.pid, count: purge.count, skipped: purge.skipped))
        }
        replyDelivered(id)
    }

    /// A purge's answer to its client: PURGED with the number of locks removed, or EPERM if it left orphans of the
    /// process for being another user's (it removed the caller's own all the same, and says how many).
    func purgeReply(tag: UInt32, pid: UInt32, count: Int, skipped: Int) -> ServerMessage {
        guard skipped > 0 else { return .purged(tag: tag, count: UInt32(count)) }
        let stayed =
            skipped == 1 ? "1 orphan lock of pid \(pid) belongs" : "\(skipped) orphan locks of pid \(pid) belong"
        return .error(
            tag: tag, status: .notPermitted,
            message: "\(stayed) to another user: only that user or root may purge them (\(count) locks of this "
                + "user's removed)")
    }

    /// A new view: members that left (or came back as a new life) are not waited for.
    mutating func purgesLoseDepartedMembers(_ members: [UInt32: UInt64]) {
        for reference in mastering.purges.keys.sorted() {
            mastering.purges[reference]!.waitingFor = mastering.purges[reference]!.waitingFor.filter {
                members[$0.key] == $0.value
            }
            finishPurgeIfDone(reference)
        }
    }
}
