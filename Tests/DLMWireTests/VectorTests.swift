import DLMCore
import DLMWire
import Foundation
import NIOCore
import Testing

/// The message each good vector of Protocol/vectors holds, written from the vector's header.
enum Golden: Sendable {
    case client(ClientMessage)
    case server(ServerMessage)
    /// Protocol/PEER.md (its vectors' table is PeerVectorTests.messages).
    case peer(PeerMessage)

    /// 1, 2, ... 32.
    static let lvb32: [UInt8] = Array(1...32)
    /// 0xa0, 0xa1, ... 0xdf.
    static let lvb64: [UInt8] = Array(0xA0...0xDF)
    /// "n00n01...n20X": 64 bytes.
    static let name64: [UInt8] = Array(
        ((0..<21).map { $0 < 10 ? "n0\($0)" : "n\($0)" }.joined() + "X").utf8)
    static let json: [UInt8] = Array(
        #"{"lockspaces":[{"name":"demo","id":0,"lvb_length":32,"resources":1,"locks":1}]}"#.utf8)

    static let messages: [String: Golden] = [
        // Client
        "client-hello": .client(.hello(Hello(minVersion: 2, maxVersion: 2, pid: 0x1234, clientName: "test"))),
        "client-hello-versions": .client(
            .hello(Hello(minVersion: 1, maxVersion: 3, pid: 0xFFFF_FFFF, clientName: "w\u{F6}rker-\u{3BB}"))),
        "client-hello-empty-name": .client(.hello(Hello(minVersion: 1, maxVersion: 1, pid: 1, clientName: ""))),
        "client-ping": .client(.ping(tag: 7)),
        "client-bye": .client(.bye(tag: 0xFFFF_FFFE)),
        "client-lockspace-open-create": .client(
            .openLockspace(tag: 1, name: Array("demo".utf8), valueBlockLength: 0, create: true, mode: 0o600)),
        "client-lockspace-open-existing": .client(
            .openLockspace(tag: 2, name: Array("demo".utf8), valueBlockLength: 64, create: false, mode: 0o660)),
        "client-lockspace-release": .client(.releaseLockspace(tag: 4, lockspace: 0, force: false)),
        "client-lockspace-release-force": .client(.releaseLockspace(tag: 5, lockspace: 3, force: true)),
        "client-purge": .client(.purge(tag: 16, lockspace: 2, nodeID: 0, pid: 0x2A3B)),
        "client-purge-node": .client(.purge(tag: 17, lockspace: 5, nodeID: 3, pid: 0xFFFF_FFFF)),
        "client-fence-ack": .client(.fenceAck(tag: 18, nodeID: 3)),
        "client-lock-ex": .client(
            .lock(
                LockMessage(
                    tag: 2, lockspace: 0, flags: [], mode: .ex, options: .blockingCallbacks, name: Array("r1".utf8)))),
        "client-lock-pr-noqueue": .client(
            .lock(
                LockMessage(
                    tag: 10, lockspace: 1, flags: [.noQueue, .valueBlock], mode: .pr, options: [],
                    name: Array("config".utf8)))),
        "client-lock-all-fields": .client(
            .lock(
                LockMessage(
                    tag: 0xDEAD_BEEF, lockspace: 0x0102_0304,
                    flags: [.valueBlock, .persistent, .noDeadlockWait, .timeout], mode: .pw, options: .all,
                    priority: 200, parent: 0x11, timeoutNanoseconds: 1_500_000_000,
                    transaction: 0x0102_0304_0506_0708, name: [0x00, 0xFF] + Array("sub/lock".utf8) + [0x7F]))),
        "client-lock-name-64": .client(
            .lock(LockMessage(tag: 11, lockspace: 0, mode: .nl, options: .blockingCallbacks, name: name64))),
        "client-lock-orphan": .client(
            .lock(
                LockMessage(
                    tag: 12, lockspace: 2, flags: [.orphan, .persistent], mode: .cw, options: .blockingCallbacks,
                    name: Array("jobs".utf8)))),
        "client-convert-keep-priority": .client(
            .convert(ConvertMessage(tag: 5, lock: 1, flags: .convert, mode: .pr, priority: 255))),
        "client-convert-lvb": .client(
            .convert(
                ConvertMessage(
                    tag: 6, lock: 1, flags: [.convert, .valueBlock], mode: .nl, priority: 255, valueBlock: lvb32))),
        "client-convert-priority-timeout": .client(
            .convert(
                ConvertMessage(
                    tag: 7, lock: 2, flags: [.convert, .queueConversion, .timeout], mode: .ex, priority: 7,
                    timeoutNanoseconds: 250_000_000))),
        "client-unlock": .client(.unlock(UnlockMessage(tag: 3, lock: 1))),
        "client-unlock-lvb": .client(
            .unlock(UnlockMessage(tag: 8, lock: 0x12345, flags: .valueBlock, valueBlock: lvb64))),
        "client-unlock-cancel": .client(.unlock(UnlockMessage(tag: 9, lock: 4, flags: .cancel))),
        "client-unlock-force": .client(.unlock(UnlockMessage(tag: 10, lock: 4, flags: .forceUnlock))),
        "client-deadlock-cancel": .client(.deadlockCancel(tag: 11, lock: 6)),
        "client-query-status": .client(.query(tag: 12, kind: .status, argument: [])),
        "client-query-lockspaces": .client(.query(tag: 13, kind: .lockspaces, argument: [])),
        "client-query-lockdebug": .client(.query(tag: 14, kind: .lockdebug, argument: Array("demo".utf8))),
        "client-query-lockdump": .client(.query(tag: 15, kind: .lockdump, argument: Array("demo".utf8))),
        "client-query-log": .client(.query(tag: 17, kind: .log, argument: [])),
        "client-query-config": .client(.query(tag: 18, kind: .config, argument: [])),
        "client-query-lockdebug-page": .client(
            .query(
                tag: 16, kind: .lockdebugPage,
                argument: QueryKind.pageArgument(cursor: 0x0000_0007_0000_0002, lockspace: Array("demo".utf8)))),
        // Server
        "server-hello-reply": .server(
            .helloReply(HelloReply(version: 2, nodeID: 1, maxName: 64, maxValueBlock: 64, server: "dlmd 0.1.0"))),
        "server-pong": .server(.pong(tag: 7)),
        "server-lockspace-created": .server(.lockspace(tag: 1, lockspace: 0, valueBlockLength: 32, created: true)),
        "server-lockspace-existing": .server(.lockspace(tag: 2, lockspace: 2, valueBlockLength: 64, created: false)),
        "server-purged": .server(.purged(tag: 16, count: 3)),
        "server-purged-none": .server(.purged(tag: 17, count: 0)),
        "server-ok": .server(.ok(tag: 2, lock: 1)),
        "server-ok-bye": .server(.ok(tag: 0xFFFF_FFFE, lock: 0)),
        "server-error": .server(.error(tag: 5, status: .invalid, message: "bad flag combination")),
        "server-error-protocol": .server(
            .error(tag: 0, status: .protocolError, message: "the first frame must be HELLO")),
        "server-completion-granted": .server(
            .completion(CompletionMessage(tag: 2, lock: 1, status: .granted, mode: .ex, fencingToken: 1))),
        "server-completion-lvb": .server(
            .completion(
                CompletionMessage(
                    tag: 0, lock: 7, status: .granted, mode: .pr, valueBlockSequence: 42, valueBlock: lvb32))),
        "server-completion-flags": .server(
            .completion(
                CompletionMessage(
                    tag: 9, lock: 3, status: .granted, flags: [.valueNotValid, .alternateMode], mode: .cw,
                    valueBlockSequence: 0x0102_0304_0506_0708, fencingToken: 0x1112_1314_1516_1718,
                    valueBlock: [UInt8](repeating: 0, count: 8)))),
        "server-completion-unlock": .server(
            .completion(CompletionMessage(tag: 3, lock: 1, status: .unlocked, mode: nil))),
        "server-completion-cancel": .server(
            .completion(CompletionMessage(tag: 9, lock: 4, status: .cancelled, mode: .pr))),
        "server-completion-refused": .server(
            .completion(CompletionMessage(tag: 10, lock: 8, status: .tryAgain, mode: nil))),
        "server-completion-demoted": .server(
            .completion(
                CompletionMessage(
                    tag: 0, lock: 5, status: .granted, flags: .demoted, mode: .ex, valueBlockSequence: 3,
                    fencingToken: 17))),
        "server-blocking": .server(.blocking(lock: 1, mode: .ex)),
        "server-query-reply": .server(.queryReply(tag: 13, json: json)),
        "server-goodbye": .server(.goodbye(reason: "dlmd is shutting down")),
    ]
}

/// Decodes a frame's body the way `direction`'s receiver does; a client message is reported as `.client`.
func decode(_ direction: Direction, type: UInt8, body: ByteBuffer) throws(WireError) -> Golden {
    var body = body
    switch direction {
    case .client: return .client(try ClientMessage.decode(type: type, body: &body))
    case .server: return .server(try ServerMessage.decode(type: type, body: &body))
    case .peer: return .peer(try PeerMessage.decode(type: type, body: &body))
    }
}

func encoded(_ message: ClientMessage) -> [UInt8] {
    var buffer = ByteBuffer()
    message.encode(into: &buffer)
    return Array(buffer.readableBytesView)
}

func encoded(_ message: ServerMessage) -> [UInt8] {
    var buffer = ByteBuffer()
    message.encode(into: &buffer)
    return Array(buffer.readableBytesView)
}

@Suite("Protocol/vectors")
struct VectorTests {
    @Test func theFolderHoldsVectors() {
        #expect(Vector.good.count >= 40, "looked in \(Vector.folder.path)")
        #expect(Vector.bad.count >= 20)
    }

    @Test func everyGoodVectorHasAnExpectedMessageAndEveryMessageAVector() {
        let files = Set(Vector.good.map(\.name))
        let table = Set(Golden.messages.keys)
        #expect(files.subtracting(table).sorted() == [], "vectors without an expected message")
        #expect(table.subtracting(files).sorted() == [], "expected messages without a vector")
    }

    @Test func everyMessageCaseHasAVector() {
        var clientTypes = Set<UInt8>()
        var serverTypes = Set<UInt8>()
        for golden in Golden.messages.values {
            switch golden {
            case .peer: continue
            case .client(let m): clientTypes.insert(m.typeCode)
            case .server(let m): serverTypes.insert(m.typeCode)
            }
        }
        #expect(clientTypes == [0x01, 0x02, 0x03, 0x10, 0x11, 0x12, 0x13, 0x20, 0x21, 0x22, 0x23, 0x30])
        #expect(serverTypes == [0x81, 0x82, 0x90, 0x91, 0xA0, 0xA1, 0xA2, 0xA3, 0xB0, 0xFE])
    }

    @Test(arguments: Vector.good)
    func goodVectorDecodesAndReencodes(_ vector: Vector) throws {
        let golden = try #require(Golden.messages[vector.name], "no expected message for \(vector.name)")
        var buffer = ByteBuffer(bytes: vector.bytes)
        let (type, body) = try #require(try nextFrame(from: &buffer, maxLength: vector.direction.maxLength))
        #expect(buffer.readableBytes == 0, "bytes after the frame")
        switch (golden, try decode(vector.direction, type: type, body: body)) {
        case (.client(let expected), .client(let decoded)):
            #expect(decoded == expected)
            #expect(encoded(expected).hexString == vector.bytes.hexString)
        case (.server(let expected), .server(let decoded)):
            #expect(decoded == expected)
            #expect(encoded(expected).hexString == vector.bytes.hexString)
        default:
            Issue.record("the vector's direction is \(vector.direction), its expected message is not")
        }
    }

    /// The type codes of the two directions are disjoint: a frame of one is refused by the other.
    @Test(arguments: Vector.good)
    func goodVectorIsRefusedInTheOtherDirection(_ vector: Vector) throws {
        var buffer = ByteBuffer(bytes: vector.bytes)
        let (type, body) = try #require(try nextFrame(from: &buffer, maxLength: WireLimits.maxServerFrame))
        let other: Direction = vector.direction == .client ? .server : .client
        #expect(throws: WireError.self) { try decode(other, type: type, body: body) }
    }

    /// The bad vectors of both protocols (Protocol/vectors, Protocol/peer-vectors).
    @Test(arguments: Vector.bad + Vector.peer.filter(\.isBad))
    func badVectorIsRefused(_ vector: Vector) throws {
        let expect = try #require(vector.expect)
        var buffer = ByteBuffer(bytes: vector.bytes)
        do throws(WireError) {
            guard let (type, body) = try nextFrame(from: &buffer, maxLength: vector.direction.maxLength) else {
                Issue.record("the splitter waits for more bytes instead of refusing the frame")
                return
            }
            #expect(buffer.readableBytes == 0, "bytes after the frame")
            let decoded = try decode(vector.direction, type: type, body: body)
            Issue.record("decoded \(decoded) from a malformed frame")
        } catch {
            #expect(error.status.rawValue == expect.value, "\(error)")
            #expect(error.status.name == expect.name)
        }
    }

    /// The session of CLIENT.md §11 is made of vectors, byte for byte.
    @Test func sessionOfTheSpecIsMadeOfVectors() throws {
        let spec = try String(
            contentsOf: Vector.folder.deletingLastPathComponent().appendingPathComponent("CLIENT.md"), encoding: .utf8)
        let section = try #require(spec.range(of: "## 11. A session, byte by byte"))
        var frames: [[UInt8]] = []
        for line in spec[section.upperBound...].split(separator: "\n") where line.hasPrefix("   ") {
            frames.append(try Vector(name: "§11", text: "# direction: client\n" + line).bytes)
        }
        let names = [
            "client-hello", "server-hello-reply", "client-lockspace-open-create", "server-lockspace-created",
            "client-lock-ex", "server-completion-granted", "client-unlock", "server-completion-unlock",
        ]
        let vectors = try names.map { name in try #require(Vector.all.first { $0.name == name }).bytes }
        #expect(frames.map(\.hexString) == vectors.map(\.hexString))
    }

    /// A length out of bounds is refused on the 4 length bytes alone, before the rest arrives (§9).
    @Test func lengthIsCheckedOnTheLengthBytesAlone() {
        for (length, direction) in [(0, Direction.client), (1025, .client), (0x0100_0001, .server), (0, .server)] {
            var buffer = ByteBuffer()
            buffer.writeInteger(UInt32(length))
            #expect(throws: WireError.self) { try nextFrame(from: &buffer, maxLength: direction.maxLength) }
        }
        for (length, direction) in [(1024, Direction.client), (0x0100_0000, .server)] {
            var buffer = ByteBuffer()
            buffer.writeInteger(UInt32(length))
            buffer.writeInteger(UInt8(0x02))
            var waits = false
            if case .some(.none) = try? nextFrame(from: &buffer, maxLength: direction.maxLength) { waits = true }
            #expect(waits, "a frame of \(length) bytes is within the \(direction) limit")
        }
    }
}
