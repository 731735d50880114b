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
