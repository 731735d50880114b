import DLMCore
import DLMWire
import DequeModule
import NIOCore

/// One client connection: one owner of locks. Touched only on the node's event loop.
final class ClientConnection {
    enum State {
        case awaitingHello
        case ready
        case closing
    }

    let owner: OwnerID
    let channel: Channel
    var state = State.awaitingHello
    var pid: UInt32 = 0
    var clientName = ""
    /// Frames written since the last flush.
    var outbound: ByteBuffer
    /// Frames waiting for a store commit (`--durability`), by the generation they wait for, oldest first.
    var held: [(generation: UInt64, frames: ByteBuffer)] = []
    var isDirty = false
    /// Requests of this connection held while the node is stopped (LockNode+Gate.swift).
    var heldRequests = 0
    /// A request of this connection is done in slices (a purge, a forced release, a FORCEUNLOCK of a parent with
    /// many sub-locks): its reply comes at the end, and the requests after it wait here, so that replies keep
    /// the order of the requests (Protocol/CLIENT.md §5).
    var awaitingReply = false
    var deferredRequests: Deque<ClientMessage> = []

    init(owner: OwnerID, channel: Channel) {
        self.owner = owner
        self.channel = channel
        self.outbound = channel.allocator.buffer(capacity: 256)
    }

    func send(_ message: ServerMessage) {
        message.encode(into: &outbound)
    }

    func hold(_ message: ServerMessage, generation: UInt64) {
        if held.last?.generation != generation {
            held.append((generation, channel.allocator.buffer(capacity: 128)))
        }
        message.encode(into: &held[held.count - 1].frames)
    }
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

    init(node: LockNode) {
        self.node = node
    }

    func channelActive(context: ChannelHandlerContext) {
        connection = node.connected(context.channel)
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
        node.refuse(connection, status: error.status, message: error.message)
    }

    func channelReadComplete(context: ChannelHandlerContext) {
        node.flush()
    }

    func errorCaught(context: ChannelHandlerContext, error: Error) {
        guard let connection else {
            context.close(promise: nil)
            return
        }
        if let wire = error as? WireError {
            refuse(connection, wire)
        } else if error is ChannelError || error is IOError {
            context.close(promise: nil)
        } else {
            node.refuse(connection, status: .protocolError, message: "\(error)")
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
            node.flush()
            if let connection { node.close(connection) } else { context.close(promise: nil) }
            return
        }
        context.fireUserInboundEventTriggered(event)
    }

    func channelInactive(context: ChannelHandlerContext) {
        if let connection { node.disconnected(connection) }
        connection = nil
        context.fireChannelInactive()
    }
}
