import DLMCore
import DLMWire

/// FENCE_ACK (`dlmtool fence-ack NODE`, dlm_tool's `fence_ack`): an operator who made sure that a node is off tells
/// a cluster member, whose group services wait for a fence of it that keeps failing, to count that fence as done.
/// The service checks who asks (root only) and hands the acknowledgement to the shell, whose group services decide
/// whether such a fence is under way; the connection's later requests wait for the answer.
extension LockService {
    mutating func acknowledgeFence(of node: UInt32, tag: UInt32, from id: ConnectionID) {
        guard configuration.isClusterMember else {
            deliver(
                id, .error(tag: tag, status: .invalid, message: "this dlmd is not a cluster member: it fences no node"))
            return
        }
        guard clients[Int(id.slot)].isRoot else {
            deliver(
                id,
                .error(
                    tag: tag, status: .notPermitted,
                    message: "only root may acknowledge a fence (uid \(userID(id))): a node taken for off that is not "
                        + "can hold the same lock as another"))
            return
        }
        clients[Int(id.slot)].awaitingReply = true
        output.fenceAcks.append((id, tag, node))
    }

    /// The shell's answer: OK, or ENOENT when no fence of the node was under way here.
    mutating func fenceAcknowledged(_ id: ConnectionID, tag: UInt32, refusal: String?) {
        guard isLive(id) else { return }
        if let refusal {
            deliver(id, .error(tag: tag, status: .noEntry, message: refusal))
        } else {
            deliver(id, .ok(tag: tag, lock: 0))
        }
        replyDelivered(id)
    }
}
