import Foundation
import GroupServices

/// One authenticated peer frame (docs/GROUPS.md, "Shell"). On the wire, all integers big-endian:
///
/// ```
/// length   u32   the bytes after this field (at most PeerEnvelope.maximumLength)
/// magic    4     "DLMG"
/// version  u8    7
/// cluster  8     the first 8 bytes of SHA-256(cluster name)
/// sender   u32   node id
///          u64   incarnation
///          u64   frame counter: one more for every frame the sender seals in this incarnation
/// dest     u32   node id
/// body     ...   a kind byte, then (PeerCodec, varints):
///                  1  a GroupMessage
///                  2  lock traffic (LockTrafficFrame): the destination's incarnation the stream is with, the
///                     sequence number of the first payload, the cumulative acknowledgement of the stream the other
///                     way, a count, then the payloads, each a length and its bytes
///                  3  the opening of a connection: a zero byte. The first frame a sender writes on each
///                     connection, so that the receiver, which takes at most `maximumFirstLength` bytes for a
///                     frame until one has authenticated the connection, never buffers more for a stranger
/// hmac     32    HMAC-SHA256 with the cluster key over the connection's challenge, then magic ... body
/// ```
///
/// The challenge is 16 random bytes that the receiving end of a connection sends first, in a challenge frame
/// (`length` u32 = 29, "DLMC", version u8, cluster 8, challenge 16); the sender seals every frame of that
/// connection with it. A frame recorded on one connection therefore fails its HMAC on any other, also after the
/// receiver restarts; within a connection, the counter refuses it (`PeerReplayGuard`). Both kinds of body are
/// sealed, checked and guarded against replays alike. (Version 3 had no kind byte: its body was the GroupMessage;
/// version 4 had no opening frame; version 5 carried version 1 of the lock protocol, Protocol/PEER.md, whose
/// locks had no uid, version 6 its version 2, without a whole cluster's restart, version 7 its version 3, and
/// version 8 its version 4, without lockspace groups: a node of another version is refused, so that nodes never
/// misread each other's lock traffic.)
public struct PeerEnvelope: Hashable, Sendable {
    public var sender: Member
    /// The sender's frame counter: it seals its frames (to every destination, over every connection) with 1, 2, 3,
    /// ... for the life of its incarnation; receivers refuse a frame that is not past the last one they accepted
    /// (`PeerReplayGuard`).
    public var counter: UInt64
    public var destination: NodeID
    public var body: PeerBody

    public init(sender: Member, counter: UInt64, destination: NodeID, body: PeerBody) {
        self.sender = sender
        self.counter = counter
        self.destination = destination
        self.body = body
    }

    /// An envelope of a group services message.
    public init(sender: Member, counter: UInt64, destination: NodeID, message: GroupMessage) {
        self.init(sender: sender, counter: counter, destination: destination, body: .group(message))
    }

    /// The group services message, if the body is one.
    public var message: GroupMessage? {
        if case .group(let message) = body { return message }
        return nil
    }

    public static let magic: [UInt8] = Array("DLMG".utf8)
    public static let challengeMagic: [UInt8] = Array("DLMC".utf8)
    public static let version: UInt8 = 15
    /// The random bytes a receiver challenges a connection with.
    public static let challengeLength = 16
    /// A challenge frame after its length field: magic, version, cluster, challenge.
    public static let challengeFrameLength = 4 + 1 + 8 + challengeLength
    /// The largest frame accepted (after the length field): 16 MiB.
    public static let maximumLength = 16 << 20
    /// The largest frame accepted on an inbound connection before a frame has authenticated it: the opening frame
    /// takes `minimumLength`. A stranger cannot make a node buffer more than this per connection.
    public static let maximumFirstLength = 256
    static let headerLength = 4 + 1 + 8 + 4 + 8 + 8 + 4
    static let macLength = 32
    /// The shortest frame after the length field: a header, a two-byte body (a kind, a message tag) and the MAC.
    static let minimumLength = headerLength + 2 + macLength

    public static func clusterHash(_ name: String) -> [UInt8] { Array(HMACSHA256.sha256(Array(name.utf8)).prefix(8)) }
}

/// What a peer frame carries: a group services message, or lock traffic.
public enum PeerBody: Hashable, Sendable {
    /// Kind 1: a message of the group services core.
    case group(GroupMessage)
    /// Kind 2: payloads of the reliable point-to-point channel (`GroupNode.sendLockTraffic`).
    case lockTraffic(LockTrafficFrame)
    /// Kind 3: the first frame on every connection, small (see `PeerEnvelope.maximumFirstLength`). It carries
    /// nothing.
    case opening
}

/// A frame of lock traffic (docs/GROUPS.md, "Lock traffic"): from the sender's life (the envelope's sender and
/// incarnation) to one life of the destination, `receiverIncarnation`. The payloads of such a stream are numbered
/// 1, 2, 3, ...; this frame carries those from `first` on, and acknowledges the stream the other way (from that
/// life of the destination to the sender's) up to `acknowledged`. A frame without payloads only acknowledges.
public struct LockTrafficFrame: Hashable, Sendable {
    /// The destination's incarnation the stream is with; a node drops the frames for another life of itself.
    public var receiverIncarnation: UInt64
    /// The sequence number of the first payload (at least 1 when there are payloads).
    public var first: UInt64
    /// Every payload of the stream the other way up to this number was delivered (0: none yet).
    public var acknowledged: UInt64
    public var payloads: [[UInt8]]

    public init(receiverIncarnation: UInt64, first: UInt64, acknowledged: UInt64, payloads: [[UInt8]]) {
        self.receiverIncarnation = receiverIncarnation
        self.first = first
        self.acknowledged = acknowledged
        self.payloads = payloads
    }

    /// What a lock-traffic frame takes besides its payloads, at most: the length field, the header, the kind, four
    /// varints and the MAC.
    public static let overhead = 4 + PeerEnvelope.headerLength + 1 + 4 * 10 + PeerEnvelope.macLength
    /// What a payload takes in a frame besides its bytes, at most: its length varint.
    public static let payloadOverhead = 10
    /// The largest payload: one that fills a frame of `PeerEnvelope.maximumLength` alone.
    public static let maximumPayloadLength = PeerEnvelope.maximumLength + 4 - overhead - payloadOverhead
}

/// Why a frame was refused.
public enum PeerFrameError: Error, Hashable, Sendable, CustomStringConvertible {
    case oversized(Int)
    /// Longer than `PeerEnvelope.maximumFirstLength` before a frame authenticated the connection.
    case oversizedFirst(Int)
    case tooShort(Int)
    case badMagic
    case badVersion(UInt8)
    case wrongCluster
    case badMAC
    case unknownSender(NodeID)
    case wrongDestination(NodeID)
    case malformed(String)
    /// An authenticated frame whose (incarnation, counter) is not past the last one accepted from its sender: a
    /// replay of a recorded frame (or a bug).
    case replayed(Member, counter: UInt64, accepted: Member, acceptedCounter: UInt64)

    public var description: String {
        switch self {
        case .oversized(let length): "a frame of \(length) bytes (at most \(PeerEnvelope.maximumLength))"
        case .oversizedFirst(let length):
            "a first frame of \(length) bytes (at most \(PeerEnvelope.maximumFirstLength) before one authenticated)"
        case .tooShort(let length): "a frame of \(length) bytes is too short"
        case .badMagic: "not a peer frame (bad magic)"
        case .badVersion(let version): "peer protocol version \(version) (this node speaks \(PeerEnvelope.version))"
        case .wrongCluster: "a frame of another cluster"
        case .badMAC: "a frame with a bad HMAC (another cluster key?)"
        case .unknownSender(let node): "a frame from node \(node), which is not in the config"
        case .wrongDestination(let node): "a frame for node \(node)"
        case .malformed(let reason): "a malformed message: \(reason)"
        case .replayed(let sender, let counter, let accepted, let acceptedCounter):
            "a replayed frame from node \(sender.node) (incarnation \(sender.incarnation), counter \(counter); "
                + "already accepted incarnation \(accepted.incarnation), counter \(acceptedCounter))"
        }
    }

    /// A short name per kind, for rate-limited logging.
    var kind: String {
        switch self {
        case .oversized, .oversizedFirst: "oversized"
        case .tooShort: "too short"
        case .badMagic: "bad magic"
        case .badVersion: "bad version"
        case .wrongCluster: "wrong cluster"
        case .badMAC: "bad HMAC"
        case .unknownSender: "unknown sender"
        case .wrongDestination: "wrong destination"
        case .malformed: "malformed"
        case .replayed: "replayed"
        }
    }
}

/// Seals and opens peer frames of one cluster for one node.
public struct PeerFrameCodec: Sendable {
    public let key: ClusterKey
    let hmac: HMACSHA256
    public let clusterHash: [UInt8]
    public let localNode: NodeID
    public let knownNodes: Set<NodeID>

    public init(key: ClusterKey, clusterName: String, localNode: NodeID, knownNodes: Set<NodeID>) {
        self.key = key
        self.hmac = HMACSHA256(key: key.bytes)
        self.clusterHash = PeerEnvelope.clusterHash(clusterName)
        self.localNode = localNode
        self.knownNodes = knownNodes
    }

    /// The whole frame for a connection with `challenge`, length field included.
    public func seal(_ envelope: PeerEnvelope, challenge: [UInt8]) -> [UInt8] {
        sign(unsigned(envelope), challenge: challenge)
    }

    /// A frame without its HMAC and length: what waits for a connection's challenge (`sign`).
    public func unsigned(_ envelope: PeerEnvelope) -> [UInt8] {
        var frame: [UInt8] = [0, 0, 0, 0]
        if case .lockTraffic(let lock) = envelope.body {
            frame.reserveCapacity(
                LockTrafficFrame.overhead + lock.payloads.reduce(0) { $0 + $1.count + LockTrafficFrame.payloadOverhead }
            )
        } else {
            frame.reserveCapacity(64)
        }
        frame += PeerEnvelope.magic
        frame.append(PeerEnvelope.version)
        frame += clusterHash
        append(envelope.sender.node.rawValue, to: &frame)
        append(envelope.sender.incarnation, to: &frame)
        append(envelope.counter, to: &frame)
        append(envelope.destination.rawValue, to: &frame)
        PeerCodec.encode(envelope.body, into: &frame)
        return frame
    }

    /// Completes an `unsigned` frame for a connection with `challenge`: its HMAC and its length field.
    public func sign(_ unsigned: consuming [UInt8], challenge: [UInt8]) -> [UInt8] {
        var frame = consume unsigned
        frame += mac(challenge, frame[4...])
        let length = UInt32(frame.count - 4)
        for index in 0..<4 { frame[index] = UInt8(truncatingIfNeeded: length >> (24 - 8 * UInt32(index))) }
        return frame
    }

    /// HMAC-SHA256 with the cluster key of a connection's `challenge` followed by `data`: a frame's MAC (of
    /// magic ... body).
    public func mac<D: Collection<UInt8>>(_ challenge: [UInt8], _ data: D) -> [UInt8] {
        hmac.mac(challenge, data)
    }

    /// The challenge frame a receiver sends first on a connection, length field included.
    public func challengeFrame(_ challenge: [UInt8]) -> [UInt8] {
        var frame: [UInt8] = []
        append(UInt32(PeerEnvelope.challengeFrameLength), to: &frame)
        frame += PeerEnvelope.challengeMagic
        frame.append(PeerEnvelope.version)
        frame += clusterHash
        frame += challenge
        return frame
    }

    /// The challenge of a challenge frame (without its length field).
    public func openChallenge(_ frame: UnsafeRawBufferPointer) throws(PeerFrameError) -> [UInt8] {
        guard frame.count == PeerEnvelope.challengeFrameLength else {
            throw .malformed("a challenge of \(frame.count) bytes (\(PeerEnvelope.challengeFrameLength) expected)")
        }
        guard frame.prefix(4).elementsEqual(PeerEnvelope.challengeMagic) else { throw .badMagic }
        guard frame[4] == PeerEnvelope.version else { throw .badVersion(frame[4]) }
        guard frame[5..<13].elementsEqual(clusterHash) else { throw .wrongCluster }
        return Array(frame[13...])
    }

    /// A random challenge.
    public static func makeChallenge() -> [UInt8] { secureRandomBytes(PeerEnvelope.challengeLength) }

    /// Opens a frame without its length field, of a connection with `challenge`; checks, in order: length, magic,
    /// version, cluster, HMAC, sender, destination, body. Pure: whether the frame is a replay is
    /// `PeerReplayGuard`'s business.
    public func open(_ frame: UnsafeRawBufferPointer, challenge: [UInt8]) throws(PeerFrameError) -> PeerEnvelope {
        guard frame.count <= PeerEnvelope.maximumLength else { throw .oversized(frame.count) }
        guard frame.count >= PeerEnvelope.minimumLength else { throw .tooShort(frame.count) }
        guard frame.prefix(4).elementsEqual(PeerEnvelope.magic) else { throw .badMagic }
        guard frame[4] == PeerEnvelope.version else { throw .badVersion(frame[4]) }
        guard frame[5..<13].elementsEqual(clusterHash) else { throw .wrongCluster }
        let signed = UnsafeRawBufferPointer(rebasing: frame[..<(frame.count - PeerEnvelope.macLength)])
        let mac = UnsafeRawBufferPointer(rebasing: frame[(frame.count - PeerEnvelope.macLength)...])
        guard HMACSHA256.equal(self.mac(challenge, signed), mac) else { throw .badMAC }
        let sender = NodeID(read(UInt32.self, frame, at: 13))
        let incarnation = read(UInt64.self, frame, at: 17)
        let counter = read(UInt64.self, frame, at: 25)
        let destination = NodeID(read(UInt32.self, frame, at: 33))
        guard knownNodes.contains(sender) else { throw .unknownSender(sender) }
        guard destination == localNode else { throw .wrongDestination(destination) }
        let body = UnsafeRawBufferPointer(rebasing: signed[PeerEnvelope.headerLength...])
        do {
            let body = try PeerCodec.decodeBody(body.assumingMemoryBound(to: UInt8.self))
            return PeerEnvelope(
                sender: Member(node: sender, incarnation: incarnation), counter: counter, destination: destination,
                body: body)
        } catch {
            throw .malformed("\(error)")
        }
    }

    /// Opens a frame given as bytes, its length field included, of a connection with `challenge`.
    public func open(frame bytes: [UInt8], challenge: [UInt8]) throws(PeerFrameError) -> PeerEnvelope {
        guard bytes.count >= 4 else { throw .tooShort(bytes.count) }
        let length = Int(read(UInt32.self, bytes, at: 0))
        guard length == bytes.count - 4 else { throw .malformed("the length field says \(length)") }
        let result = bytes.withUnsafeBytes { raw -> Result<PeerEnvelope, PeerFrameError> in
            do throws(PeerFrameError) {
                return .success(try open(UnsafeRawBufferPointer(rebasing: raw[4...]), challenge: challenge))
            } catch {
                return .failure(error)
            }
        }
        return try result.get()
    }

    func append<T: FixedWidthInteger>(_ value: T, to bytes: inout [UInt8]) {
        var big = value.bigEndian
        withUnsafeBytes(of: &big) { bytes.append(contentsOf: $0) }
    }

    func read<T: FixedWidthInteger, C: Collection<UInt8>>(_ type: T.Type, _ bytes: C, at offset: Int) -> T
    where C.Index == Int {
        var value: T = 0
        for index in offset..<offset + MemoryLayout<T>.size {
            value = value << 8 | T(bytes[bytes.startIndex + index])
        }
        return value
    }
}

/// What a node accepted last from each peer, to refuse replayed frames (docs/GROUPS.md, "Shell"). A frame is
/// accepted only if its (incarnation, counter) is strictly greater than the last accepted from its sender: a higher
/// incarnation (a new life of the sender) starts over at any counter; a lower one is an earlier life. Frames may be
/// lost on the way but are never reordered (one TCP connection at a time per sender and destination, and the counter
/// keeps growing across reconnects), so nothing legitimate is refused. Check only authenticated frames.
public struct PeerReplayGuard: Sendable {
    public private(set) var accepted: [NodeID: (incarnation: UInt64, counter: UInt64)] = [:]

    public init() {}

    /// Accepts `envelope` and records it as the last from its sender, or throws `.replayed`.
    public mutating func admit(_ envelope: PeerEnvelope) throws(PeerFrameError) {
        let sender = envelope.sender
        if let last = accepted[sender.node],
            (sender.incarnation, envelope.counter) <= (last.incarnation, last.counter)
        {
            throw .replayed(
                sender, counter: envelope.counter, accepted: Member(node: sender.node, incarnation: last.incarnation),
                acceptedCounter: last.counter)
        }
        accepted[sender.node] = (sender.incarnation, envelope.counter)
    }
}
