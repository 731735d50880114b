import DLMCluster
import DLMCore
import DLMTLS
import DLMWire
import NIOCore

#if canImport(Glibc)
    import Glibc
#endif

/// One client connection's channel, for the shell: the service's id for it and the frames being written. Touched
/// only on the node's event loop.
final class ClientConnection {
    let id: ConnectionID
    let channel: Channel
    /// Frames encoded since the last write.
    var outbound: ByteBuffer
    var isDirty = false
    /// Closed (by the service, or the channel went): nothing more is written.
    var isClosed = false
    /// When its requests in flight arrived, for the latency histograms (only with `--metrics`).
    let requestTimes: RequestTimes?
    /// The service said that `max_queued_requests` of its requests wait to run: not read from until it says
    /// otherwise (`ServiceOutput.readPauses`), whatever its output does.
    var queuePaused = false

    init(id: ConnectionID, channel: Channel, timed: Bool = false) {
        self.id = id
        self.channel = channel
        self.requestTimes = timed ? RequestTimes() : nil
        self.outbound = channel.allocator.buffer(capacity: 256)
    }
}

/// Who the kernel says the process at the other end of a Unix-socket channel is (`SO_PEERCRED`, as it was when
/// it connected); nil for TCP. Called on the channel's event loop, where the option is read at once.
func peerCredentials(of channel: Channel) -> ClientCredentials? {
    guard case .unixDomainSocket = channel.localAddress, let provider = channel as? SocketOptionProvider else {
        return nil
    }
    /// `struct ucred` of <sys/socket.h>.
    struct UCred: Sendable {
        var pid: Int32 = 0
        var uid: UInt32 = 0
        var gid: UInt32 = 0
    }
    var credentials: ClientCredentials?
    let option: EventLoopFuture<UCred> = provider.unsafeGetSocketOption(
        level: SocketOptionLevel(SOL_SOCKET), name: SocketOptionName(SO_PEERCRED))
    option.assumeIsolated().whenSuccess {
        credentials = ClientCredentials(
            pid: UInt32(bitPattern: $0.pid), uid: $0.uid, gid: $0.gid, groups: peerGroups(provider))
    }
    return credentials
}

/// `SO_PEERGROUPS` (Linux 4.13) on <sys/socket.h>'s level `SOL_SOCKET`.
private let peerGroupsOption: CInt = 59

/// The supplementary groups of the peer, as the kernel says (`SO_PEERGROUPS`); empty if it says none or more than
/// 256 (then only the primary group counts: a refusal, never a wrong grant). NIO's getter gives the value but
/// not the length the kernel wrote, so: a zero-length read succeeds only when there are no groups; otherwise the
/// kernel's list is sorted ascending (`groups_sort`), so the groups are the strictly ascending prefix of the
/// zero-filled buffer.
private func peerGroups(_ provider: SocketOptionProvider) -> [UInt32] {
    struct Nothing: Sendable {}
    var none = false
    let empty: EventLoopFuture<Nothing> = provider.unsafeGetSocketOption(
        level: SocketOptionLevel(SOL_SOCKET), name: SocketOptionName(peerGroupsOption))
    empty.assumeIsolated().whenSuccess { _ in none = true }
    if none { return [] }
    var groups: [UInt32] = []
    let list: EventLoopFuture<InlineArray<256, UInt32>> = provider.unsafeGetSocketOption(
        level: SocketOptionLevel(SOL_SOCKET), name: SocketOptionName(peerGroupsOption))
    list.assumeIsolated().whenSuccess { buffer in
        for index in buffer.indices {
            if let last = groups.last, buffer[index] <= last { break }
            groups.append(buffer[index])
        }
    }
    return groups
}

/// The pipeline's only handler: splits the byte stream into frames, decodes each and hands it to the node
/// (no `ByteToMessageHandler` in between, and no message boxed for the pipeline), and turns a malformed frame
/// into an ERROR and a close of this connection only.
final class ClientChannelHandler: ChannelInboundHandler {
    typealias InboundIn = ByteBuffer

    let node: LockNode
    var connection: ClientConnection?
    var frames = FrameAccumulator()
    /// A malformed frame was refused: the rest of the stream is dropped.
    var refused = false
    /// Not read from while its unread output is past the pause mark (`channelWritabilityChanged`).
    var readsPaused = false

    init(node: LockNode) {
        self.node = node
    }

    func channelActive(context: ChannelHandlerContext) {
        connection = node.connected(context.channel)
        node.flush()
        context.fireChannelActive()
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        guard let connection, !refused else { return }
        let node = self.node
        node.busyPoll?.activity()
        do throws(WireError) {
            try frames.process(unwrapInboundIn(data), maxLength: WireLimits.maxClientFrame) {
                type, body throws(WireError) in
                node.receive(try ClientMessage.decode(type: type, body: &body), from: connection)
            }
        } catch {
            refuse(connection, error)
        }
    }

    func refuse(_ connection: ClientConnection, _ error: WireError) {
        refused = true
        node.handle(.malformed(connection.id, error.status, error.message))
    }

    func channelReadComplete(context: ChannelHandlerContext) {
        node.flush()
    }

    /// Back-pressure: while the client's unread output is past the pause mark, nothing more is read from it (its
    /// requests wait in its socket, and it blocks in its writes), so a client that sends without reading cannot
    /// grow dlmd's memory; reading resumes once it has read down to half the mark.
    func channelWritabilityChanged(context: ChannelHandlerContext) {
        let writable = context.channel.isWritable
        guard writable == readsPaused else { return context.fireChannelWritabilityChanged() }
        readsPaused = !writable
        node.readsPaused += writable ? -1 : 1
        let read = writable && !(connection?.queuePaused ?? false)
        context.channel.setOption(.autoRead, value: read).whenFailure { _ in }
        context.fireChannelWritabilityChanged()
    }

    func errorCaught(context: ChannelHandlerContext, error: Error) {
        guard let connection else {
            context.close(promise: nil)
            return
        }
        if let wire = error as? WireError {
            refuse(connection, wire)
        } else if let refusal = error as? TLSError {
            // TLSHandler has sent its alert and closes the channel; nothing can be said in the protocol.
            if refusal.inHandshake {
                node.tlsRefusals += 1
                node.lastTLSRefusal = refusal.description
                node.metrics?.tlsRefusalsCount += 1
            }
            context.close(promise: nil)
        } else if error is ChannelError || error is IOError {
            context.close(promise: nil)
        } else {
            node.handle(.malformed(connection.id, .protocolError, "\(error)"))
        }
    }

    /// The client shut down its sending side: answer what it sent, then close. A frame cut short by the end
    /// of the stream is malformed.
    func userInboundEventTriggered(context: ChannelHandlerContext, event: Any) {
        if case ChannelEvent.inputClosed = event {
            if let connection, !refused, frames.bufferedBytes > 0 {
                refuse(
                    connection,
                    WireError(
                        .protocolError, "the stream ended inside a frame (\(frames.bufferedBytes) bytes left)"))
                return
            }
            if let connection { node.handle(.inputEnded(connection.id)) } else { context.close(promise: nil) }
            return
        }
        context.fireUserInboundEventTriggered(event)
    }

    func channelInactive(context: ChannelHandlerContext) {
        if readsPaused {
            readsPaused = false
            node.readsPaused -= 1
        }
        if let connection { node.disconnected(connection) }
        connection = nil
        context.fireChannelInactive()
    }
}
