import NIOConcurrencyHelpers
import NIOCore

/// Keeps an event loop polling its sockets, instead of sleeping, for a short window after its last I/O.
///
/// An event loop with nothing to do blocks in `epoll_wait`, and its CPU may halt. The next message then pays
/// for waking a sleeping thread on a halted CPU (in a VM with `guest_halt_poll_ns=0`, as here, tens of µs),
/// and its sender pays for the wake-up in its `write`. While a poller's window is open, the loop runs a task
/// every `step`, so it goes round its `epoll_wait` that often, and a message that arrives finds the loop
/// about to look. It is what the kernel's haltpoll idle governor does (`guest_halt_poll_ns`), done in user
/// space for one event loop.
///
/// It costs the loop's CPU for up to `window` after each burst of I/O, and it only helps where the loop has
/// a CPU of its own: a poller that shares its CPU with its peer (dlmd and a client pinned to one CPU) takes
/// turns from it and makes both slower. So it is off unless asked for (`dlmd --busy-poll`,
/// `DLMConnection.connect(busyPoll:)`). Touched only on its event loop (so `Sendable` only to be handed
/// there).
public final class BusyPoll: @unchecked Sendable {
    /// Weak, so that the pollers `shared(on:window:)` keeps do not keep event loops that were shut down.
    public private(set) weak var eventLoop: EventLoop?
    /// How long the loop keeps polling after the last I/O.
    public let window: TimeAmount
    var lastActivity = NIODeadline.uptimeNanoseconds(0)
    /// Whether the loop is polling now.
    public private(set) var isPolling = false
    /// How many times the loop went round polling, in all.
    public private(set) var polls: UInt64 = 0

    /// How often the loop goes round while polling. A task that is due again at once would run again in the
    /// same turn of the loop, which runs every task that is due before it polls its sockets: the step must
    /// outlast the rest of the turn, so that the loop polls between two runs.
    static let step = TimeAmount.microseconds(1)

    public init(eventLoop: EventLoop, window: TimeAmount) {
        self.eventLoop = eventLoop
        self.window = window
    }

    /// The loop did I/O: keep it polling for `window` from now.
    @inline(__always)
    public func activity() {
        lastActivity = .now()
        if !isPolling, window > .zero {
            isPolling = true
            poll()
        }
    }

    /// Ends the window now: the loop sleeps again from its next turn (before a shutdown, which would
    /// otherwise wait for the window to end).
    public func stop() {
        lastActivity = .uptimeNanoseconds(0)
    }

    func poll() {
        let now = NIODeadline.now()
        guard now - lastActivity < window else {
            isPolling = false
            return
        }
        polls &+= 1
        guard let eventLoop else {
            isPolling = false
            return
        }
        eventLoop.assumeIsolatedUnsafeUnchecked().scheduleTask(deadline: now + Self.step) { self.poll() }
    }

    /// The poller of `eventLoop` with `window`: one per event loop and window, shared by the connections on it,
    /// so that many connections on one loop poll it once. Pollers of event loops that are gone are dropped.
    public static func shared(on eventLoop: EventLoop, window: TimeAmount) -> BusyPoll {
        let key = Key(loop: ObjectIdentifier(eventLoop), window: window.nanoseconds)
        return registry.withLockedValue { pollers in
            // A poller's loop may be gone and its address taken by a new loop: only the same loop will do.
            if let poller = pollers[key], poller.eventLoop === eventLoop { return poller }
            pollers = pollers.filter { $0.value.eventLoop != nil }
            let poller = BusyPoll(eventLoop: eventLoop, window: window)
            pollers[key] = poller
            return poller
        }
    }

    struct Key: Hashable {
        var loop: ObjectIdentifier
        var window: Int64
    }

    static let registry = NIOLockedValueBox<[Key: BusyPoll]>([:])
}
