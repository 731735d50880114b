import DLMCore
import DLMTestSupport
import DLMWire
import NIOCore
import Testing

/// Property: every valid message encodes to one frame within its direction's limit, that frame decodes to
/// the same message, and a stream of frames cut anywhere decodes to the same messages in order.
@Suite("Round trips of random valid messages")
struct RoundTripTests {
    static let count = 20_000

    func replay(_ seed: UInt64) -> Comment {
        "seed \(FuzzSettings.hex(seed)); replay with DLM_FUZZ_SEED=\(FuzzSettings.hex(seed))"
    }

    @Test func clientMessages() throws {
        let seed = FuzzSettings.seed()
        var random = SplitMix64(seed: seed)
        for _ in 0..<Self.count {
            let message = random.clientMessage()
            let bytes = encoded(message)
            var buffer = ByteBuffer(bytes: bytes)
            let frame = try nextFrame(from: &buffer, maxLength: WireLimits.maxClientFrame)
            let (type, body) = try #require(frame, "\(message) encodes to an incomplete frame; \(replay(seed))")
            var rest = body
            let decoded = try ClientMessage.decode(type: type, body: &rest)
            #expect(decoded == message, replay(seed))
            #expect(buffer.readableBytes == 0, replay(seed))
            #expect(encoded(decoded) == bytes, replay(seed))
        }
    }

    @Test func serverMessages() throws {
        let seed = FuzzSettings.seed()
        var random = SplitMix64(seed: seed)
        for _ in 0..<Self.count {
            let message = random.serverMessage(large: true)
            let bytes = encoded(message)
            var buffer = ByteBuffer(bytes: bytes)
            let frame = try nextFrame(from: &buffer, maxLength: WireLimits.maxServerFrame)
            let (type, body) = try #require(frame, "\(message) encodes to an incomplete frame; \(replay(seed))")
            var rest = body
            let decoded = try ServerMessage.decode(type: type, body: &rest)
            #expect(decoded == message, replay(seed))
            #expect(buffer.readableBytes == 0, replay(seed))
            #expect(encoded(decoded) == bytes, replay(seed))
        }
    }

    /// Many frames in one stream, delivered in pieces of random sizes (often one byte).
    @Test func streamsCutAnywhere() throws {
        let seed = FuzzSettings.seed()
        var random = SplitMix64(seed: seed)
        for _ in 0..<50 {
            let direction: Direction = random.bool() ? .client : .server
            var sent: [Golden] = []
            var stream: [UInt8] = []
            for _ in 0..<(1 + random.below(100)) {
                if direction == .client {
                    let message = random.clientMessage()
                    sent.append(.client(message))
                    stream += encoded(message)
                } else {
                    let message = random.serverMessage()
                    sent.append(.server(message))
                    stream += encoded(message)
                }
            }
            var received: [Golden] = []
            var buffer = ByteBuffer()
            var offset = 0
            while offset < stream.count {
                let piece = random.percent(50) ? 1 : 1 + random.below(64)
                buffer.writeBytes(stream[offset..<min(stream.count, offset + piece)])
                offset += piece
                while let (type, body) = try nextFrame(from: &buffer, maxLength: direction.maxLength) {
                    received.append(try decode(direction, type: type, body: body))
                }
            }
            #expect(buffer.readableBytes == 0, replay(seed))
            #expect(received.count == sent.count, replay(seed))
            for (got, want) in zip(received, sent) {
                switch (got, want) {
                case (.client(let a), .client(let b)): #expect(a == b, replay(seed))
                case (.server(let a), .server(let b)): #expect(a == b, replay(seed))
                case (.peer(let a), .peer(let b)): #expect(a == b, replay(seed))
                default: Issue.record("a message of the wrong direction; \(replay(seed))")
                }
            }
        }
    }

    /// The longest frames: a LOCK with everything at its maximum fits easily in 1024 bytes, a HELLO with
    /// a 1009-byte name takes exactly 1024.
    @Test func longestClientFrames() throws {
        let hello = ClientMessage.hello(Hello(pid: 1, clientName: String(repeating: "x", count: 1009)))
        #expect(encoded(hello).count == 4 + WireLimits.maxClientFrame)
        var buffer = ByteBuffer(bytes: encoded(hello))
        #expect(try nextFrame(from: &buffer, maxLength: WireLimits.maxClientFrame) != nil)
        let tooLong = ClientMessage.hello(Hello(pid: 1, clientName: String(repeating: "x", count: 1010)))
        buffer = ByteBuffer(bytes: encoded(tooLong))
        #expect(throws: WireError(.messageTooLong, "a frame of 1025 bytes, at most 1024 allowed")) {
            try nextFrame(from: &buffer, maxLength: WireLimits.maxClientFrame)
        }
    }
}
