import DLMCore
import DLMWire

/// Back-pressure on a connection's queued requests (`ServiceConfiguration.maxQueuedRequests`): requests that were
/// read but cannot run yet wait in memory, behind an earlier request's reply (`ClientQueues.deferredRequests`) or
/// held while the node is stopped (`Client.heldRequests`). A client that pipelines without bound would grow them
/// without bound, so at the cap the shell stops reading from it (its requests wait in its socket, and it blocks in
/// its writes); once half of them have run, reading resumes. Nothing is refused or reordered. (The frames of the
/// read that reached the cap are still handled, so the queue may pass the cap by one read's worth.)
extension LockService {
    /// How many of the connection's requests wait to run.
    func queuedRequests(_ id: ConnectionID) -> Int {
        clients[Int(id.slot)].heldRequests + queues[Int(id.slot)].deferredRequests.count
    }

    /// A request of the connection was queued: at the cap, the shell stops reading from it.
    mutating func requestQueued(_ id: ConnectionID) {
        guard queuedRequests(id) >= configuration.maxQueuedRequests, !queuePausedConnections.contains(id) else {
            return
        }
        queuePausedConnections.append(id)
        queuePauses += 1
        output.readPauses.append((id, true))
    }

    /// After each input: the paused connections whose queue is down to half the cap are read again; those that
    /// went are forgotten.
    mutating func resumeReadsOfDrainedQueues() {
        let resumeAt = configuration.maxQueuedRequests / 2
        var stillPaused: [ConnectionID] = []
        for id in queuePausedConnections {
            guard isLive(id), !clients[Int(id.slot)].isGone else { continue }
            if queuedRequests(id) > resumeAt {
                stillPaused.append(id)
            } else {
                output.readPauses.append((id, false))
            }
        }
        queuePausedConnections = stillPaused
    }

    /// Connections not read from now because of their queued requests (the status report).
    var queuePausedCount: Int { queuePausedConnections.count }
}
