import DLMCore
import DLMTestSupport
import DLMWire
import NIOCore
import Testing

#if canImport(Glibc)
    import Glibc
#elseif canImport(Darwin)
    import Darwin
#endif

/// Millions of damaged streams through `nextFrame` and both decoders. Every call must return or throw
/// (no trap), every frame taken must move the stream forward, the splitter must agree with a model of
/// §2.1, and whatever decodes must encode to exactly the bytes it came from (so it decodes to itself).
///
/// `DLM_FUZZ_FRAMES` sets the number of streams (each of one to a few frames, then damaged), `DLM_FUZZ_SEED`
/// replays a run; a failure names the seed that replays just the failing stream. The streams are shared
/// among `parts` test cases, which run in parallel.
@Suite("Randomized decoder")
struct DecoderFuzzTests {
    /// About 40 s of one core in a debug build (25,000 streams, 37,000 frames a second), half that on two.
    static let defaultStreams = 1_000_000
    static let parts = 4
    /// One seed for every part of the run.
    static let seed = FuzzSettings.seed()

    @Test(arguments: 0..<parts)
    func mutatedStreams(part: Int) {
        let seed = Self.seed
        let count = FuzzSettings.count(default: Self.defaultStreams)
        if part == 0 {
            print(
                "DLMWire fuzz: \(count) streams from seed \(FuzzSettings.hex(seed)); "
                    + "replay with DLM_FUZZ_SEED=\(FuzzSettings.hex(seed)) DLM_FUZZ_FRAMES=\(count)")
        }
        TrapReporter.install
        defer { TrapReporter.current[part] = 0 }
        var fuzzer = Fuzzer(vectors: Vector.all.map(\.bytes))
        var failures = 0
        let clock = ContinuousClock()
        let start = clock.now
        for index in stride(from: part, to: count, by: Self.parts) {
            let streamSeed = seed &+ UInt64(index) &* 0xD1B5_4A32_D192_ED03
            TrapReporter.current[part] = streamSeed
            if let failure = fuzzer.run(seed: streamSeed) {
                Issue.record(
                    """
                    \(failure)
                    stream \(index) of the run of seed \(FuzzSettings.hex(seed)); replay this stream alone with \
                    DLM_FUZZ_SEED=\(FuzzSettings.hex(streamSeed)) DLM_FUZZ_FRAMES=1
                    """)
                failures += 1
                if failures == 10 { break }
            }
        }
        let elapsed = (clock.now - start).components
        let seconds = Double(elapsed.seconds) + Double(elapsed.attoseconds) / 1e18
        let streams = (count - part + Self.parts - 1) / Self.parts
        print(
            "DLMWire fuzz, part \(part + 1) of \(Self.parts): \(streams) streams (\(fuzzer.frames) frames split, "
                + "\(fuzzer.decoded) decoded) in \(Int(seconds * 1000)) ms: \(Int(Double(streams) / max(seconds, 1e-9))) "
                + "streams/s")
        // The damage must leave enough valid frames to test the decoders, not only the splitter.
        if streams >= 10_000 {
            #expect(fuzzer.decoded > streams / 10)
            #expect(fuzzer.refusals == [DLMStatus.protocolError.rawValue, DLMStatus.messageTooLong.rawValue])
        }
    }
}

/// What a splitter makes of a stream: frames, then a refusal or a wait for more bytes.
enum SplitEvent: Equatable, CustomStringConvertible {
    /// A whole frame at `at` in the stream, of `length` bytes after its 4 length bytes.
    case frame(at: Int, length: Int)
    case refused(Int32)
    case incomplete(left: Int)

    var description: String {
        switch self {
        case .frame(let at, let length): "a frame at \(at) of length \(length)"
        case .refused(let status): "refused (\(DLMStatus(rawValue: status)))"
        case .incomplete(let left): "waits with \(left) bytes"
        }
    }
}

struct Fuzzer {
    /// Starting points: the vectors of Protocol/vectors (good and bad, either direction), and valid frames
    /// of random messages drawn from a fixed seed, the same in every run, so that a stream's seed alone
    /// replays it. (Encoding is most of the cost of a stream in a debug build: the pools make it cheap.)
    let vectors: [[UInt8]]
    let clientFrames: [[UInt8]]
    let serverFrames: [[UInt8]]
    var frames = 0
    var decoded = 0
    var refusals: Set<Int32> = []

    init(vectors: [[UInt8]]) {
        self.vectors = vectors
        var random = SplitMix64(seed: 0x444C_4D50)
        clientFrames = (0..<2048).map { _ in encoded(random.clientMessage()) }
        serverFrames = (0..<2048).map { _ in encoded(random.serverMessage()) }
    }

    static let types: [UInt8] = [
        0x01, 0x02, 0x03, 0x10, 0x11, 0x12, 0x20, 0x21, 0x22, 0x23, 0x30, 0x81, 0x82, 0x90, 0x91, 0xA0, 0xA1, 0xA2,
        0xA3, 0xB0, 0xFE,
    ]
    static let bytes: [UInt8] = [0, 1, 2, 5, 6, 0x3F, 0x40, 0x41, 0x7F, 0x80, 0xFE, 0xFF]
    static let lengths: [UInt32] = [
        0, 1, 2, 4, 5, 9, 64, 1023, 1024, 1025, 0xFFFF, 0x0100_0000, 0x0100_0001, 0x7FFF_FFFF, 0xFFFF_FFFF,
    ]

    /// One stream: a few frames, damaged, then split and decoded. Returns what went wrong.
    mutating func run(seed: UInt64) -> String? {
        var random = SplitMix64(seed: seed)
        let direction: Direction = random.bool() ? .client : .server
        var stream: [UInt8] = []
        var starts: [Int] = []
        for _ in 0..<(1 + random.below(3)) {
            starts.append(stream.count)
            stream += frame(direction, &random)
        }
        if !random.percent(5) {
            for _ in 0..<(1 + random.below(3)) { mutate(&stream, starts: starts, &random) }
        }
        let other: Direction = direction == .client ? .server : .client
        let limit = random.percent(90) ? direction.maxLength : other.maxLength
        let whole: [SplitEvent]
        do throws(Failure) {
            whole = try split(stream, limit: limit, pieces: nil)
        } catch {
            return "\(error.text)\nstream: \(stream.hexString)"
        }
        if random.percent(10) {
            // The same bytes delivered in pieces: the same frames, the same end.
            do throws(Failure) {
                let pieced = try split(stream, limit: limit, pieces: random)
                if pieced != whole {
                    return "in pieces: \(pieced)\nwhole: \(whole)\nstream: \(stream.hexString)"
                }
            } catch {
                return "in pieces: \(error.text)\nstream: \(stream.hexString)"
            }
        }
        return nil
    }

    /// A valid frame of `direction` (usually), or a vector of either direction.
    func frame(_ direction: Direction, _ random: inout SplitMix64) -> [UInt8] {
        switch random.below(40) {
        case 0..<6: vectors[random.below(vectors.count)]
        case 6: direction == .client ? encoded(random.clientMessage()) : encoded(random.serverMessage())
        default:
            direction == .client
                ? clientFrames[random.below(clientFrames.count)] : serverFrames[random.below(serverFrames.count)]
        }
    }

    func mutate(_ stream: inout [UInt8], starts: [Int], _ random: inout SplitMix64) {
        let count = stream.count
        switch random.below(10) {
        case 0 where count > 0:
            stream[random.below(count)] ^= 1 << random.below(8)
        case 1 where count > 0:
            stream[random.below(count)] =
                random.percent(50) ? Self.bytes[random.below(Self.bytes.count)] : random.byte()
        case 2:
            stream.removeLast(random.below(min(count, 16) + 1))
        case 3:
            stream += random.bytes(1 + random.below(16))
        case 4:
            stream.insert(contentsOf: random.bytes(1 + random.below(8)), at: random.below(count + 1))
        case 5 where count > 0:
            let from = random.below(count)
            stream.removeSubrange(from..<min(count, from + 1 + random.below(8)))
        case 6:
            // A length field: a boundary, a near miss, or anything.
            let at = starts[random.below(starts.count)]
            guard at + 4 <= count else { return }
            let old =
                UInt32(stream[at]) << 24 | UInt32(stream[at + 1]) << 16 | UInt32(stream[at + 2]) << 8
                | UInt32(stream[at + 3])
            let new: UInt32 =
                switch random.below(3) {
                case 0: Self.lengths[random.below(Self.lengths.count)]
                case 1: old &+ UInt32(random.below(9)) &- 4
                default: random.integer()
                }
            for i in 0..<4 { stream[at + i] = UInt8(truncatingIfNeeded: new >> (24 - 8 * i)) }
        case 7:
            // A type byte: another message's, or anything.
            let at = starts[random.below(starts.count)] + 4
            guard at < count else { return }
            stream[at] = random.percent(70) ? Self.types[random.below(Self.types.count)] : random.byte()
        case 8:
            // Splicing: the start of this stream, the end of another frame.
            let other = frame(random.bool() ? .client : .server, &random)
            stream = Array(stream[..<random.below(count + 1)]) + other[random.below(other.count + 1)...]
        default:
            // Another whole frame of either direction, before or after.
            let other = frame(random.bool() ? .client : .server, &random)
            stream = random.bool() ? stream + other : other + stream
        }
    }

    struct Failure: Error {
        var text: String
    }

    /// Splits `stream` with `nextFrame`, checking each step against the rules of §2.1: the whole stream at
    /// once (and then each frame is decoded, see `checkDecoders`), or (`pieces`) delivered in random
    /// pieces, splitting again after each.
    mutating func split(_ stream: [UInt8], limit: Int, pieces: SplitMix64?) throws(Failure) -> [SplitEvent] {
        var events: [SplitEvent] = []
        var buffer = ByteBufferAllocator().buffer(capacity: stream.count)
        var delivered = 0
        var cutter = pieces
        while true {
            if cutter != nil {
                let piece = cutter!.percent(30) ? 1 : 1 + cutter!.below(40)
                let end = min(stream.count, delivered + piece)
                buffer.writeBytes(stream[delivered..<end])
                delivered = end
            } else {
                buffer.writeBytes(stream)
                delivered = stream.count
            }
            // Take every frame the buffer holds; each must move the stream forward, and by its length.
            while true {
                let before = buffer.readerIndex
                let available = buffer.readableBytes
                let length = buffer.getInteger(at: before, as: UInt32.self).map { Int($0) }
                let result: (UInt8, ByteBuffer)?
                do throws(WireError) {
                    result = try nextFrame(from: &buffer, maxLength: limit)
                } catch {
                    let expected: DLMStatus? =
                        switch length {
                        case 0: .protocolError
                        case .some(let n) where n > limit: .messageTooLong
                        default: nil
                        }
                    guard error.status == expected else {
                        throw Failure(text: "nextFrame refused a frame of length \(length ?? -1): \(error)")
                    }
                    guard buffer.readerIndex == before else { throw Failure(text: "nextFrame moved, then threw") }
                    refusals.insert(error.status.rawValue)
                    events.append(.refused(error.status.rawValue))
                    return events
                }
                guard let (type, body) = result else {
                    guard buffer.readerIndex == before else { throw Failure(text: "nextFrame moved, then waited") }
                    guard let length else { break }
                    guard (1...limit).contains(length) else {
                        throw Failure(text: "nextFrame waits on a frame of length \(length), limit \(limit)")
                    }
                    guard available < 4 + length else {
                        throw Failure(text: "nextFrame waits with \(available) bytes for a frame of length \(length)")
                    }
                    break
                }
                guard let length, buffer.readerIndex == before + 4 + length, body.readableBytes == length - 1 else {
                    throw Failure(
                        text: "nextFrame took \(buffer.readerIndex - before) bytes, a body of \(body.readableBytes), "
                            + "for a frame of length \(length ?? -1)")
                }
                frames += 1
                events.append(.frame(at: before, length: length))
                if pieces == nil,
                    let failure = checkDecoders(type: type, body: body, frame: stream[before..<before + 4 + length])
                {
                    throw Failure(text: "\(failure)\nframe: \(Array(stream[before..<before + 4 + length]).hexString)")
                }
            }
            if delivered == stream.count {
                events.append(.incomplete(left: buffer.readableBytes))
                return events
            }
        }
    }

    /// Decodes a frame with both decoders: a success must encode to exactly `frame` again (and so decode to
    /// itself), a refusal must be EPROTO.
    mutating func checkDecoders(type: UInt8, body: ByteBuffer, frame: ArraySlice<UInt8>) -> String? {
        var clientBody = body
        do throws(WireError) {
            let message = try ClientMessage.decode(type: type, body: &clientBody)
            decoded += 1
            guard Self.encodes(frame, message.encode) else { return "\(message) encodes to other bytes" }
        } catch {
            guard error.status == .protocolError else { return "ClientMessage.decode: \(error)" }
        }
        var serverBody = body
        do throws(WireError) {
            let message = try ServerMessage.decode(type: type, body: &serverBody)
            decoded += 1
            guard Self.encodes(frame, message.encode) else { return "\(message) encodes to other bytes" }
        } catch {
            guard error.status == .protocolError else { return "ServerMessage.decode: \(error)" }
        }
        return nil
    }

    static func encodes(_ frame: ArraySlice<UInt8>, _ encode: (inout ByteBuffer) -> Void) -> Bool {
        var buffer = ByteBufferAllocator().buffer(capacity: frame.count)
        encode(&buffer)
        guard buffer.readableBytes == frame.count else { return false }
        return buffer.withUnsafeReadableBytes { encoded in
            frame.withUnsafeBytes { original in memcmp(encoded.baseAddress!, original.baseAddress!, frame.count) == 0 }
        }
    }
}

/// Prints the seed of the stream being fuzzed when the process dies of a trap (the one failure a test
/// cannot record), then dies of the same signal. Signal-safe: no allocation, only `write(2)`.
enum TrapReporter {
    /// The seed of the stream each part is at, 0 when none.
    nonisolated(unsafe) static let current: UnsafeMutablePointer<UInt64> = {
        let slots = UnsafeMutablePointer<UInt64>.allocate(capacity: DecoderFuzzTests.parts)
        slots.initialize(repeating: 0, count: DecoderFuzzTests.parts)
        return slots
    }()
    nonisolated(unsafe) static let digits = UnsafeMutablePointer<UInt8>.allocate(capacity: 16)

    static let install: Void = {
        _ = current
        _ = digits
        for number in [SIGILL, SIGTRAP, SIGSEGV, SIGBUS, SIGFPE, SIGABRT] { _ = signal(number, trapped) }
    }()
}

private func trapped(_ number: Int32) {
    let before: StaticString =
        "\nDLMWire fuzz: the process died while decoding a stream; replay it with DLM_FUZZ_SEED=0x"
    let after: StaticString = " DLM_FUZZ_FRAMES=1\n"
    let hex: StaticString = "0123456789abcdef"
    for part in 0..<DecoderFuzzTests.parts {
        let seed = TrapReporter.current[part]
        guard seed != 0 else { continue }
        for i in 0..<16 { TrapReporter.digits[i] = hex.utf8Start[Int(seed >> (60 - 4 * UInt64(i)) & 15)] }
        _ = write(2, before.utf8Start, before.utf8CodeUnitCount)
        _ = write(2, TrapReporter.digits, 16)
        _ = write(2, after.utf8Start, after.utf8CodeUnitCount)
    }
    _ = signal(number, SIG_DFL)
    _ = raise(number)
}
