import DLMWire
import FuzzSupport
import NIOCore

/// The client protocol's frames as dlmd reads them from a client (at most 1024 bytes a frame) and as a client
/// reads dlmd's: the input's first byte picks the side, the rest is a byte stream, split into reads at the
/// positions its second byte gives. Every frame that decodes must encode to a frame that decodes to the same
/// message; a frame that does not decode must fail with an error, never a trap.
func fuzzOne(_ data: UnsafePointer<UInt8>, _ size: Int) -> CInt {
    let input = UnsafeBufferPointer(start: data, count: size)
    guard input.count >= 2 else { return 0 }
    let fromClient = input[0] & 1 == 0
    let cut = max(1, Int(input[1]))
    var accumulator = FrameAccumulator()
    let stream = input[2...]
    var start = stream.startIndex
    do throws(WireError) {
        while start < stream.endIndex {
            let end = min(stream.endIndex, start + cut)
            let read = ByteBuffer(bytes: stream[start..<end])
            start = end
            if fromClient {
                try accumulator.process(read, maxLength: WireLimits.maxClientFrame) { type, body throws(WireError) in
                    try roundTrip(type, &body, decode: ClientMessage.decode) { $0.encode(into: &$1) }
                }
            } else {
                try accumulator.process(read, maxLength: WireLimits.maxServerFrame) { type, body throws(WireError) in
                    try roundTrip(type, &body, decode: ServerMessage.decode) { $0.encode(into: &$1) }
                }
            }
        }
    } catch {
        // Refused: the connection would close with this error. Nothing else to check.
    }
    return 0
}

/// Decodes a frame; a message that decodes must encode to one frame that decodes to the same message.
func roundTrip<Message: Equatable>(
    _ type: UInt8, _ body: inout ByteBuffer,
    decode: (UInt8, inout ByteBuffer) throws(WireError) -> Message, encode: (Message, inout ByteBuffer) -> Void
) throws(WireError) {
    let message = try decode(type, &body)
    var encoded = ByteBuffer()
    encode(message, &encoded)
    guard let (type, frame) = try nextFrame(from: &encoded, maxLength: WireLimits.maxServerFrame),
        encoded.readableBytes == 0
    else { fatalError("\(message) encodes to no single frame") }
    var again = frame
    let decoded = try decode(type, &again)
    precondition(decoded == message, "\(message) came back as \(decoded)")
}

@_cdecl("LLVMFuzzerTestOneInput")
public func testOneInput(_ data: UnsafePointer<UInt8>, _ size: Int) -> CInt { fuzzOne(data, size) }

@_cdecl("FuzzClientFrames_main")
public func fuzzerMain(_ argc: CInt, _ argv: UnsafeMutablePointer<UnsafeMutablePointer<CChar>?>?) -> CInt {
    runLibFuzzer(argc, argv) { data, size in fuzzOne(data, size) }
}
