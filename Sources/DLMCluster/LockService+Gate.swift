import DLMCore
import DLMWire

/// While a cluster member is outside a primary view it grants nothing new: like the kernel DLM's stopped
/// lockspaces during recovery, requests that change lock state are held (not refused), and so are disconnections
/// (whose released locks could grant waiters) and the engine's timers. Once the node is in a primary view again,
/// everything held runs in the order it arrived. A standalone node is never stopped. While it recovers from a
/// membership change, only what the failure touched waits (LockService+Recovery.swift, `runsDuringRecovery`).
extension LockService {
    /// An input received while the node was stopped.
    enum HeldInput {
        case request(ClientMessage, ConnectionID, ReportEnvironment?)
        case exited(ConnectionID)
    }

    public var isStopped: Bool { !stopReasons.isEmpty }

    /// What a stopped node waits for ("view agreement", "quorum"); empty while it serves.
    public var waitingFor: [String] { stopReasons }

    /// How many inputs wait for the node to serve again.
    public var heldInputCount: Int { heldInputs.count }

    /// Stops serving lock requests; `reasons` say what the node waits for.
    mutating func stop(waitingFor reasons: [String]) {
        precondition(!reasons.isEmpty)
        if !isStopped {
            output.notices.append(("lock requests held", ["waiting for": reasons.joined(separator: ", ")]))
        }
        stopReasons = reasons
    }

    /// Serves requests again, first the held ones in the order they came.
    mutating func resume() {
        guard isStopped else { return }
        stopReasons = []
        output.notices.append(("lock requests served again", ["held": "\(heldInputs.count)"]))
        advanceClock(to: engine.now)
        while !isStopped, let input = heldInputs.popFirst() {
            switch input {
            case .request(let message, let id, let environment):
                guard isLive(id) else { continue }
                clients[Int(id.slot)].heldRequests -= 1
                guard clients[Int(id.slot)].state == .ready else { continue }
                if clients[Int(id.slot)].awaitingReply {
                    // An earlier held request of the connection went to another node: this one waits for its
                    // answer, as it would have without the stop.
                    queues[Int(id.slot)].deferredRequests.append((message, environment))
                    continue
                }
                handleRequest(message, from: id, now: nil, environment: environment)
            case .exited(let id):
                if isLive(id) { ownerExited(id) }
            }
        }
    }

    /// Whether a request must wait: the node is stopped and the request could change lock state, or earlier
    /// requests of its connection wait (a connection's replies keep their order). (`mutating` to pass the service by
    /// reference: on the path of every frame, a call copied the whole service, 2.8 KB, to pass it, even inlined.)
    mutating func mustHold(_ message: ClientMessage, from id: ConnectionID) -> Bool {
        let heldRequests = clients[Int(id.slot)].heldRequests
        guard isStopped || heldRequests > 0 else { return false }
        if heldRequests > 0 { return true }
        switch message {
        // (A fence acknowledgement is what a node stopped for a fence that keeps failing waits for.)
        case .ping, .query, .bye, .hello, .fenceAck: return false
        case .lock, .convert, .unlock: return !runsDuringRecovery(message, from: id)
        default: return true
        }
    }

    mutating func hold(_ message: ClientMessage, from id: ConnectionID, environment: ReportEnvironment?) {
        clients[Int(id.slot)].heldRequests += 1
        heldInputs.append(.request(message, id, environment))
    }
}
