import Logging
import NIOCore
import NIOPosix

/// Counts the turns of a node's event loop: each turn polls the sockets and handles what they have, then runs every
/// task that is due (NIO's "tick"; `processedTick` is called at its end). Work in slices waits for a turn between
/// two slices (`LockNode.scheduleBulkSlice`): NIO goes on running tasks for as long as one is due, so a slice
/// scheduled a little later is due again by the time the tasks its predecessor caused (writing its lock traffic)
/// have run, and a long job would otherwise run to its end without the node reading a socket, hearing no peer.
/// A turn whose tasks ran for `warnAfter` or more is logged: the node read no socket meanwhile.
///
/// Given to the node's one-thread event loop group: `processedTick` runs on the loop's thread, where `count` is
/// read.
final class LoopTurns: NIOEventLoopMetricsDelegate, @unchecked Sendable {
    private(set) var count: UInt64 = 0
    let warnAfter: TimeAmount
    let logger: Logger

    init(warnAfter: TimeAmount, logger: Logger) {
        self.warnAfter = warnAfter
        self.logger = logger
    }

    func processedTick(info: NIOEventLoopTickInfo) {
        count &+= 1
        let busy = info.endTime - info.startTime
        if busy >= warnAfter {
            logger.warning(
                "the event loop ran tasks for \(busy.nanoseconds / 1_000_000) ms without reading a socket",
                metadata: ["tasks": "\(info.numberOfTasks)"])
        }
    }
}
