import DLMCore
import DLMWire

/// The end of a connection's input waits behind the frames it sent before. Frames can wait: for the gate while the
/// node is stopped, behind a reply from another node or from work in slices, or for a deadlock decision's hold.
/// When the client half-closes or its connection goes while some of them wait, they still run in order, as they
/// would have without the wait (an UNLOCK of a persistent lock sent just before the exit still unlocks it, rather
/// than leaving an orphan); a half-closed client still gets their answers, then the close; a gone client's owner
/// exits after the last of them.
extension LockService {
    /// Whether frames this connection sent have not run yet.
    func hasWaitingFrames(_ id: ConnectionID) -> Bool {
        let client = clients[Int(id.slot)]
        return client.heldRequests > 0 || client.awaitingReply || !queues[Int(id.slot)].deferredRequests.isEmpty
            || mastering.deadlocks.holds.waitingConnections.contains(id)
    }

    /// The client half-closed: the connection closes once its frames have run and been answered.
    mutating func inputEnded(_ id: ConnectionID) {
        guard isLive(id) else { return }
        if clients[Int(id.slot)].state == .ready, hasWaitingFrames(id) {
            waitForFramesBeforeEnd(id)
        } else {
            close(id)
        }
    }

    mutating func waitForFramesBeforeEnd(_ id: ConnectionID) {
        guard !clients[Int(id.slot)].endsAfterWaitingFrames else { return }
        clients[Int(id.slot)].endsAfterWaitingFrames = true
        endedConnections.append(id)
    }

    /// Ends the connections whose waiting frames have all run: a gone one's owner exits (or waits for the gate or a
    /// deadlock decision's hold, as any exit does), a half-closed one closes. Whether any ended (which may cause
    /// more work in this input).
    mutating func finishEndedConnections() -> Bool {
        var ended = false
        var index = 0
        while index < endedConnections.count {
            let id = endedConnections[index]
            guard isLive(id), clients[Int(id.slot)].state == .ready else {
                endedConnections.remove(at: index)
                continue
            }
            if hasWaitingFrames(id) {
                index += 1
                continue
            }
            endedConnections.remove(at: index)
            ended = true
            clients[Int(id.slot)].endsAfterWaitingFrames = false
            if clients[Int(id.slot)].isGone {
                clients[Int(id.slot)].state = .closing
                exitOrWait(id)
            } else {
                close(id)
            }
        }
        return ended
    }
}
