import NIOCore

/// Splits a byte stream into frames for a channel handler that decodes them itself, the way
/// `ClientMessageDecoder` and `ServerMessageDecoder` do in a `ByteToMessageHandler`, but without a handler in
/// between and without boxing each message for the pipeline: the node and the client use it on their hot
/// path. Frames that arrive whole in one read are handed out as slices of that read; only a partial frame
/// at the end is copied and kept for the next read.
public struct FrameAccumulator {
    private var partial: ByteBuffer?

    public init() {}

    /// The bytes of an incomplete frame kept from earlier reads.
    public var bufferedBytes: Int { partial?.readableBytes ?? 0 }

    /// Appends `incoming` to what was kept, and calls `body` with the type and body of each whole frame, in
    /// order. A length out of bounds (`nextFrame`) or an error from `body` stops it and is thrown; the rest
    /// of the stream is then dropped.
    public mutating func process(
        _ incoming: ByteBuffer, maxLength: Int, _ body: (UInt8, inout ByteBuffer) throws(WireError) -> Void
    ) throws(WireError) {
        var buffer: ByteBuffer
        if var kept = partial {
            partial = nil
            kept.writeImmutableBuffer(incoming)
            buffer = kept
        } else {
            buffer = incoming
        }
        while let (type, frame) = try nextFrame(from: &buffer, maxLength: maxLength) {
            var frame = frame
            try body(type, &frame)
        }
        if buffer.readableBytes > 0 {
            var kept = ByteBufferAllocator().buffer(capacity: max(1024, buffer.readableBytes))
            kept.writeBuffer(&buffer)
            partial = kept
        }
    }
}
