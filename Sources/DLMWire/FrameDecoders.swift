import NIOCore

/// Splits a client's byte stream into `ClientMessage`s (for the server's pipeline).
public struct ClientMessageDecoder: ByteToMessageDecoder {
    public typealias InboundOut = ClientMessage
    public init() {}

    public mutating func decode(context: ChannelHandlerContext, buffer: inout ByteBuffer) throws -> DecodingState {
        guard let (type, frame) = try nextFrame(from: &buffer, maxLength: WireLimits.maxClientFrame) else {
            return .needMoreData
        }
        var body = frame
        context.fireChannelRead(wrapInboundOut(try ClientMessage.decode(type: type, body: &body)))
        return .continue
    }

    /// The client closed its side: whole frames are still handled, a partial one is malformed.
    public mutating func decodeLast(
        context: ChannelHandlerContext, buffer: inout ByteBuffer, seenEOF: Bool
    ) throws -> DecodingState {
        while try decode(context: context, buffer: &buffer) == .continue {}
        if buffer.readableBytes > 0 {
            let count = buffer.readableBytes
            buffer.moveReaderIndex(forwardBy: count)
            throw WireError(.protocolError, "the stream ended inside a frame (\(count) bytes left)")
        }
        return .needMoreData
    }
}

/// Splits the server's byte stream into `ServerMessage`s (for the client's pipeline).
public struct ServerMessageDecoder: ByteToMessageDecoder {
    public typealias InboundOut = ServerMessage
    public init() {}

    public mutating func decode(context: ChannelHandlerContext, buffer: inout ByteBuffer) throws -> DecodingState {
        guard let (type, frame) = try nextFrame(from: &buffer, maxLength: WireLimits.maxServerFrame) else {
            return .needMoreData
        }
        var body = frame
        context.fireChannelRead(wrapInboundOut(try ServerMessage.decode(type: type, body: &body)))
        return .continue
    }
}
