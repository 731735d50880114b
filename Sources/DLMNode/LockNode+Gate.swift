import DLMCore
import DLMWire

/// While a cluster member is not quorate it grants nothing new: like the kernel DLM's stopped lockspaces during
/// recovery, requests that change lock state are held (not refused), and so are disconnections (whose released
/// locks could grant waiters) and the engine's timers. Once the node is in a primary view again, everything held
/// runs in the order it arrived. A standalone node is never stopped.
extension LockNode {
    /// An input received while the node was stopped.
    enum HeldInput {
        case request(ClientMessage, ClientConnection)
        case exited(ClientConnection)
    }

    var isStopped: Bool { !stopReasons.isEmpty }

    /// Stops serving lock requests; `reasons` say what the node waits for ("quorum", "view agreement", ...).
    public func stop(waitingFor reasons: [String]) {
        eventLoop.preconditionInEventLoop()
        precondition(!reasons.isEmpty)
        if !isStopped {
            logger.notice("lock requests held", metadata: ["waiting for": "\(reasons.joined(separator: ", "))"])
        }
        stopReasons = reasons
    }

    /// Serves requests again, first the held ones in the order they came.
    public func resume() {
        eventLoop.preconditionInEventLoop()
        guard isStopped else { return }
        stopReasons = []
        logger.notice("lock requests served again", metadata: ["held": "\(heldInputs.count)"])
        advanceClock()
        while !heldInputs.isEmpty && !isStopped {
            let input = heldInputs.removeFirst()
            switch input {
            case .request(let message, let connection):
                connection.heldRequests -= 1
                guard connection.state == .ready else { continue }
                handleRequest(message, from: connection)
            case .exited(let connection):
                effects.removeAll(keepingCapacity: true)
                engine.ownerExited(connection.owner, into: &effects)
                dispatch(reply: nil)
                holdingGeneration = nil
            }
        }
        flush()
    }

    /// Whether a request must wait: the node is stopped and the request could change lock state, or earlier
    /// requests of its connection wait (a connection's replies keep their order).
    func mustHold(_ message: ClientMessage, from connection: ClientConnection) -> Bool {
        guard isStopped || connection.heldRequests > 0 else { return false }
        if connection.heldRequests > 0 { return true }
        switch message {
        case .ping, .query, .bye, .hello: return false
        default: return true
        }
    }

    func hold(_ message: ClientMessage, from connection: ClientConnection) {
        connection.heldRequests += 1
        heldInputs.append(.request(message, connection))
    }
}
