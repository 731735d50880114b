import CDLMSystem
import Glibc
import NIOCore
import NIOPosix

/// Wakes a node's event loop for its next slice of bulk work (recovery's phases, an owner's exit, a purge) without
/// letting it sleep: a byte written to a pipe whose read end the loop polls with its sockets. The slice runs in the
/// loop's next turn, beside whatever the sockets had ready in it, so clients are still served between two slices.
///
/// A task scheduled a little later (`LockNode.bulkSliceDelay`) waits as well for a turn between two slices, but
/// the loop sleeps in the poll until it is due; on a busy machine each such sleep gives the CPU to another process
/// for up to a scheduler's time slice. With a million locks to recover, in slices of 1,024, those sleeps made a
/// recovery about a second longer (bench/RESULTS.md).
final class SliceWake: @unchecked Sendable {
    private let writer: CInt
    private let channel: Channel
    private var isClosed = false

    private init(writer: CInt, channel: Channel) {
        self.writer = writer
        self.channel = channel
    }

    /// A pipe polled by `eventLoop`, whose byte calls `onWake` on it.
    static func make(on eventLoop: EventLoop, onWake: @escaping () -> Void) -> EventLoopFuture<SliceWake> {
        var ends: [CInt] = [0, 0]
        guard dlm_wake_pipe(&ends) == 0 else {
            return eventLoop.makeFailedFuture(IOError(errnoCode: errno, reason: "pipe2"))
        }
        let (reader, writer) = (ends[0], ends[1])
        let handler = WakeHandler(onWake: onWake)
        return NIOPipeBootstrap(group: eventLoop)
            // (One read per turn: a slice's own wake is taken in the next turn, after the sockets are polled.)
            .channelOption(.maxMessagesPerRead, value: 1)
            .channelInitializer { channel in
                channel.eventLoop.makeCompletedFuture { try channel.pipeline.syncOperations.addHandler(handler) }
            }
            .takingOwnershipOfDescriptor(input: reader)
            .map { SliceWake(writer: writer, channel: $0) }
            .flatMapErrorThrowing { error in
                Glibc.close(reader)
                Glibc.close(writer)
                throw error
            }
    }

    /// Asks for a wake; false when it cannot be given (closed), and the caller waits another way.
    func wake() -> Bool {
        guard !isClosed else { return false }
        var byte: UInt8 = 1
        return write(writer, &byte, 1) == 1
    }

    func close() {
        guard !isClosed else { return }
        isClosed = true
        channel.close(promise: nil)
        _ = Glibc.close(writer)
    }

    private final class WakeHandler: ChannelInboundHandler, @unchecked Sendable {
        typealias InboundIn = ByteBuffer
        let onWake: () -> Void

        init(onWake: @escaping () -> Void) { self.onWake = onWake }

        func channelRead(context: ChannelHandlerContext, data: NIOAny) {
            // (One byte is written per wake, and the next only once it was taken.)
            onWake()
        }
    }
}
