import DLMCore
import DLMWire
import NIOCore
import NIOEmbedded
import Testing

/// `ClientMessageDecoder` and `ServerMessageDecoder` in a pipeline, fed one byte at a time.
@Suite("Frame decoders in a channel")
struct FrameDecoderTests {
    /// The good vectors of one direction, in name order, and the messages they hold.
    static func vectors(_ direction: Direction) -> [(Vector, Golden)] {
        Vector.good.filter { $0.direction == direction }.compactMap { vector in
            Golden.messages[vector.name].map { (vector, $0) }
        }
    }

    /// Writes `bytes` one byte at a time; after each byte, collects what the decoder produced.
    /// Returns the messages and, for each, the number of bytes written when it came out.
    static func feed<Message>(_ bytes: [UInt8], into channel: EmbeddedChannel, as: Message.Type) throws
        -> [(message: Message, after: Int)]
    {
        var out: [(Message, Int)] = []
        for (index, byte) in bytes.enumerated() {
            try channel.writeInbound(ByteBuffer(bytes: [byte]))
            while let message = try channel.readInbound(as: Message.self) { out.append((message, index + 1)) }
        }
        return out
    }

    @Test func clientMessagesOneByteAtATime() throws {
        let channel = EmbeddedChannel(handler: ByteToMessageHandler(ClientMessageDecoder()))
        let vectors = Self.vectors(.client)
        let stream = vectors.flatMap(\.0.bytes)
        let out = try Self.feed(stream, into: channel, as: ClientMessage.self)
        try #require(out.count == vectors.count)
        var end = 0
        for ((vector, golden), (message, after)) in zip(vectors, out) {
            end += vector.bytes.count
            guard case .client(let expected) = golden else { continue }
            #expect(message == expected, "\(vector.name)")
            #expect(after == end, "\(vector.name) came out after byte \(after), its last is byte \(end)")
        }
        #expect(try channel.finish().isClean)
    }

    @Test func serverMessagesOneByteAtATime() throws {
        let channel = EmbeddedChannel(handler: ByteToMessageHandler(ServerMessageDecoder()))
        let vectors = Self.vectors(.server)
        let stream = vectors.flatMap(\.0.bytes)
        let out = try Self.feed(stream, into: channel, as: ServerMessage.self)
        try #require(out.count == vectors.count)
        var end = 0
        for ((vector, golden), (message, after)) in zip(vectors, out) {
            end += vector.bytes.count
            guard case .server(let expected) = golden else { continue }
            #expect(message == expected, "\(vector.name)")
            #expect(after == end, "\(vector.name) came out after byte \(after), its last is byte \(end)")
        }
        #expect(try channel.finish().isClean)
    }

    /// A good frame, then a malformed one: the good one comes out, the bad one is an error (EPROTO) on
    /// its last byte, not before.
    @Test func malformedFrameIsAnError() throws {
        let channel = EmbeddedChannel(handler: ByteToMessageHandler(ClientMessageDecoder()))
        let good = try #require(Vector.all.first { $0.name == "client-lock-ex" })
        let bad = try #require(Vector.all.first { $0.name == "bad-mode-6" })
        let stream = good.bytes + bad.bytes
        var error: WireError?
        var received: [ClientMessage] = []
        for (index, byte) in stream.enumerated() {
            do {
                try channel.writeInbound(ByteBuffer(bytes: [byte]))
            } catch let wire as WireError {
                error = wire
                #expect(index == stream.count - 1, "the error came at byte \(index + 1) of \(stream.count)")
                break
            }
            while let message = try channel.readInbound(as: ClientMessage.self) { received.append(message) }
        }
        #expect(received == [.lock(LockMessage(tag: 2, lockspace: 0, mode: .ex, name: Array("r1".utf8)))])
        #expect(error?.status == .protocolError)
        _ = try? channel.finish()
    }

    /// A length over the limit is an error (EMSGSIZE) on the fourth byte, before the frame's body arrives.
    @Test func overlongFrameIsAnErrorOnItsLengthBytes() throws {
        let channel = EmbeddedChannel(handler: ByteToMessageHandler(ClientMessageDecoder()))
        let stream: [UInt8] = [0x00, 0x00, 0x04, 0x01, 0x02, 0x00, 0x00, 0x00, 0x01]
        var error: WireError?
        for (index, byte) in stream.enumerated() {
            do {
                try channel.writeInbound(ByteBuffer(bytes: [byte]))
            } catch let wire as WireError {
                error = wire
                #expect(index == 3, "the error came at byte \(index + 1)")
                break
            }
        }
        #expect(error?.status == .messageTooLong)
        _ = try? channel.finish()
    }

    /// A stream that ends inside a frame: nothing comes out, not even when the channel closes.
    @Test func incompleteFrameAtTheEnd() throws {
        let channel = EmbeddedChannel(handler: ByteToMessageHandler(ServerMessageDecoder()))
        let vector = try #require(Vector.all.first { $0.name == "server-completion-lvb" })
        let out = try Self.feed(Array(vector.bytes.dropLast()), into: channel, as: ServerMessage.self)
        #expect(out.isEmpty)
        #expect(try channel.finish().isClean)
    }
}
