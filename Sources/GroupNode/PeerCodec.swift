import GroupServices

/// A malformed peer message or frame: the decoder throws this, it never traps.
public struct PeerDecodingError: Error, CustomStringConvertible, Hashable, Sendable {
    public var message: String
    public init(_ message: String) { self.message = message }
    public var description: String { message }
}

/// The binary codec of `GroupMessage` (docs/GROUPS.md, "Shell"). Integers are unsigned LEB128 varints, booleans one
/// byte (0 or 1), optionals a presence byte then the value, strings and byte strings a varint length then the
/// bytes (strings are UTF-8), lists a varint count then the elements, maps a count then key-value pairs in key
/// order. A message is a tag byte, then its fields in declaration order:
///
/// | tag | message | fields |
/// |---|---|---|
/// | 1 | heartbeat | view ViewID?, promised ViewID?, highestViewNumber, sequenced |
/// | 2 | submit | view ViewID, [Submission] |
/// | 3 | ordered | view ViewID, [OrderedMessage] |
/// | 4 | nak | view ViewID, [seq] |
/// | 5 | propose | id ViewID, [Member] |
/// | 6 | reject | id ViewID, highestViewNumber |
/// | 7 | report | proposal ViewID, from ViewID?, delivered, groups {String: [Member]}, [OrderedMessage], fenceCandidates [node], wasQuorate Bool, lastPrimary [Member], fenced [Member] |
/// | 8 | install | view (ViewID, [Member]), primary Bool, tails [(ViewID, [OrderedMessage])], groups {String: [Member]}, fenced [Member] |
/// | 9 | installed | ViewID |
///
/// ViewID is number then coordinator; Member is node then incarnation; Submission is localSeq then Body;
/// OrderedMessage is seq, sender Member, localSeq, Body; Body is a tag byte (0 data: group String?, payload bytes;
/// 1 barrier, 2 join, 3 leave: name String). Nothing may follow the message.
///
/// A frame's body (`PeerBody`) is a kind byte, then: 1, the message as above; 2, lock traffic (`LockTrafficFrame`):
/// receiverIncarnation (at least 1), first, acknowledged, a count, then that many payloads (byte strings); `first`
/// is at least 1 when there are payloads, and the last payload's number, `first + count - 1`, fits in 64 bits; 3, the
/// opening of a connection, a zero byte. Nothing may follow the body.
public enum PeerCodec {
    public static func encode(_ message: GroupMessage) -> [UInt8] {
        var writer = ByteWriter()
        writer.message(message)
        return writer.bytes
    }

    public static func encode(_ message: GroupMessage, into bytes: inout [UInt8]) {
        var writer = ByteWriter(bytes: bytes)
        bytes = []
        writer.message(message)
        bytes = writer.bytes
    }

    /// A frame's body: a kind byte, then the message, the lock traffic, or the opening's zero byte.
    public static func encode(_ body: PeerBody, into bytes: inout [UInt8]) {
        var writer = ByteWriter(bytes: bytes)
        bytes = []
        writer.peerBody(body)
        bytes = writer.bytes
    }

    public static func encode(_ body: PeerBody) -> [UInt8] {
        var writer = ByteWriter()
        writer.peerBody(body)
        return writer.bytes
    }

    public static func decodeBody(_ bytes: [UInt8]) throws -> PeerBody {
        try bytes.withUnsafeBufferPointer { try decodeBody($0) }
    }

    public static func decodeBody(_ bytes: UnsafeBufferPointer<UInt8>) throws -> PeerBody {
        var reader = ByteReader(bytes)
        let body = try reader.peerBody()
        guard reader.isAtEnd else { throw PeerDecodingError("\(reader.remaining) bytes after the body") }
        return body
    }

    public static func decode(_ bytes: [UInt8]) throws -> GroupMessage {
        try bytes.withUnsafeBufferPointer { try decode($0) }
    }

    public static func decode(_ bytes: UnsafeBufferPointer<UInt8>) throws -> GroupMessage {
        var reader = ByteReader(bytes)
        let message = try reader.message()
        guard reader.isAtEnd else { throw PeerDecodingError("\(reader.remaining) bytes after the message") }
        return message
    }
}

struct ByteWriter {
    var bytes: [UInt8] = []

    mutating func byte(_ value: UInt8) { bytes.append(value) }

    mutating func varint(_ value: UInt64) {
        var value = value
        while value >= 0x80 {
            bytes.append(UInt8(truncatingIfNeeded: value) | 0x80)
            value >>= 7
        }
        bytes.append(UInt8(value))
    }

    mutating func bool(_ value: Bool) { bytes.append(value ? 1 : 0) }

    mutating func data(_ value: [UInt8]) {
        varint(UInt64(value.count))
        bytes.append(contentsOf: value)
    }

    mutating func string(_ value: String) {
        varint(UInt64(value.utf8.count))
        bytes.append(contentsOf: value.utf8)
    }

    mutating func optionalString(_ value: String?) {
        bool(value != nil)
        if let value { string(value) }
    }

    mutating func viewID(_ id: ViewID) {
        varint(id.number)
        varint(UInt64(id.coordinator.rawValue))
    }

    mutating func optionalViewID(_ id: ViewID?) {
        bool(id != nil)
        if let id { viewID(id) }
    }

    mutating func member(_ member: Member) {
        varint(UInt64(member.node.rawValue))
        varint(member.incarnation)
    }

    mutating func members(_ members: [Member]) {
        varint(UInt64(members.count))
        for member in members { self.member(member) }
    }

    mutating func body(_ body: Body) {
        switch body {
        case .data(let group, let payload):
            byte(0)
            optionalString(group)
            data(payload)
        case .barrier(let name):
            byte(1)
            string(name)
        case .join(let name):
            byte(2)
            string(name)
        case .leave(let name):
            byte(3)
            string(name)
        }
    }

    mutating func ordered(_ messages: [OrderedMessage]) {
        varint(UInt64(messages.count))
        for message in messages {
            varint(message.seq)
            member(message.sender)
            varint(message.localSeq)
            body(message.body)
        }
    }

    mutating func groups(_ groups: [String: [Member]]) {
        varint(UInt64(groups.count))
        for name in groups.keys.sorted() {
            string(name)
            members(groups[name]!)
        }
    }

    mutating func peerBody(_ body: PeerBody) {
        switch body {
        case .group(let message):
            byte(1)
            self.message(message)
        case .lockTraffic(let frame):
            byte(2)
            varint(frame.receiverIncarnation)
            varint(frame.first)
            varint(frame.acknowledged)
            varint(UInt64(frame.payloads.count))
            for payload in frame.payloads { data(payload) }
        case .opening:
            byte(3)
            byte(0)
        }
    }

    mutating func message(_ message: GroupMessage) {
        switch message {
        case .heartbeat(let heartbeat):
            byte(1)
            optionalViewID(heartbeat.view)
            optionalViewID(heartbeat.promised)
            varint(heartbeat.highestViewNumber)
            varint(heartbeat.sequenced)
        case .submit(let view, let submissions):
            byte(2)
            viewID(view)
            varint(UInt64(submissions.count))
            for submission in submissions {
                varint(submission.localSeq)
                body(submission.body)
            }
        case .ordered(let view, let messages):
            byte(3)
            viewID(view)
            ordered(messages)
        case .nak(let view, let seqs):
            byte(4)
            viewID(view)
            varint(UInt64(seqs.count))
            for seq in seqs { varint(seq) }
        case .propose(let id, let members):
            byte(5)
            viewID(id)
            self.members(members)
        case .reject(let id, let highest):
            byte(6)
            viewID(id)
            varint(highest)
        case .report(let report):
            byte(7)
            viewID(report.proposal)
            optionalViewID(report.from)
            varint(report.delivered)
            groups(report.groups)
            ordered(report.messages)
            varint(UInt64(report.fenceCandidates.count))
            for node in report.fenceCandidates { varint(UInt64(node.rawValue)) }
            bool(report.wasQuorate)
            members(report.lastPrimary)
            members(report.fenced)
        case .install(let installation):
            byte(8)
            viewID(installation.view.id)
            members(installation.view.members)
            bool(installation.primary)
            varint(UInt64(installation.tails.count))
            for tail in installation.tails {
                viewID(tail.view)
                ordered(tail.messages)
            }
            groups(installation.groups)
            members(installation.fenced)
        case .installed(let id):
            byte(9)
            viewID(id)
        }
    }
}

struct ByteReader {
    let bytes: UnsafeBufferPointer<UInt8>
    var offset = 0

    init(_ bytes: UnsafeBufferPointer<UInt8>) { self.bytes = bytes }

    var remaining: Int { bytes.count - offset }
    var isAtEnd: Bool { offset == bytes.count }

    mutating func byte() throws -> UInt8 {
        guard offset < bytes.count else { throw PeerDecodingError("truncated at byte \(offset)") }
        defer { offset += 1 }
        return bytes[offset]
    }

    mutating func varint() throws -> UInt64 {
        var value: UInt64 = 0
        var shift: UInt64 = 0
        while true {
            let byte = try self.byte()
            if shift == 63 && byte > 1 { throw PeerDecodingError("varint overflows 64 bits at byte \(offset - 1)") }
            value |= UInt64(byte & 0x7f) << shift
            if byte & 0x80 == 0 { return value }
            shift += 7
        }
    }

    mutating func uint32() throws -> UInt32 {
        let value = try varint()
        guard let result = UInt32(exactly: value) else { throw PeerDecodingError("\(value) is not a node id") }
        return result
    }

    mutating func bool() throws -> Bool {
        switch try byte() {
        case 0: return false
        case 1: return true
        case let other: throw PeerDecodingError("\(other) is not a boolean at byte \(offset - 1)")
        }
    }

    /// A count of elements of at least `minimumSize` bytes each: never more than the bytes left can hold.
    mutating func count(minimumSize: Int = 1) throws -> Int {
        let value = try varint()
        guard value <= UInt64(remaining / minimumSize) else {
            throw PeerDecodingError("a count of \(value) at byte \(offset) exceeds the \(remaining) bytes left")
        }
        return Int(value)
    }

    mutating func data() throws -> [UInt8] {
        let length = try count()
        defer { offset += length }
        return Array(bytes[offset..<offset + length])
    }

    mutating func string() throws -> String {
        let length = try count()
        let slice = UnsafeBufferPointer(rebasing: bytes[offset..<offset + length])
        guard let string = String(validating: slice, as: UTF8.self) else {
            throw PeerDecodingError("a string at byte \(offset) is not UTF-8")
        }
        offset += length
        return string
    }

    mutating func optionalString() throws -> String? { try bool() ? try string() : nil }

    mutating func viewID() throws -> ViewID {
        let number = try varint()
        return ViewID(number: number, coordinator: NodeID(try uint32()))
    }

    mutating func optionalViewID() throws -> ViewID? { try bool() ? try viewID() : nil }

    mutating func member() throws -> Member {
        let node = try uint32()
        return Member(node: NodeID(node), incarnation: try varint())
    }

    mutating func members() throws -> [Member] {
        let count = try count(minimumSize: 2)
        var members: [Member] = []
        members.reserveCapacity(count)
        for _ in 0..<count { members.append(try member()) }
        return members
    }

    mutating func body() throws -> Body {
        switch try byte() {
        case 0:
            let group = try optionalString()
            return .data(group: group, payload: try data())
        case 1: return .barrier(try string())
        case 2: return .join(try string())
        case 3: return .leave(try string())
        case let tag: throw PeerDecodingError("unknown body tag \(tag) at byte \(offset - 1)")
        }
    }

    mutating func ordered() throws -> [OrderedMessage] {
        let count = try count(minimumSize: 5)
        var messages: [OrderedMessage] = []
        messages.reserveCapacity(count)
        for _ in 0..<count {
            let seq = try varint()
            let sender = try member()
            let localSeq = try varint()
            messages.append(OrderedMessage(seq: seq, sender: sender, localSeq: localSeq, body: try body()))
        }
        return messages
    }

    mutating func groups() throws -> [String: [Member]] {
        let count = try count(minimumSize: 2)
        var groups: [String: [Member]] = [:]
        for _ in 0..<count {
            let name = try string()
            guard groups[name] == nil else { throw PeerDecodingError("group \(name) appears twice") }
            groups[name] = try members()
        }
        return groups
    }

    mutating func peerBody() throws -> PeerBody {
        switch try byte() {
        case 1:
            return .group(try message())
        case 3:
            guard try byte() == 0 else { throw PeerDecodingError("an opening frame with content") }
            return .opening
        case 2:
            let receiverIncarnation = try varint()
            guard receiverIncarnation > 0 else { throw PeerDecodingError("lock traffic for incarnation 0") }
            let first = try varint()
            let acknowledged = try varint()
            let count = try count()
            if count > 0 {
                guard first > 0 else { throw PeerDecodingError("lock traffic numbered from 0") }
                guard !first.addingReportingOverflow(UInt64(count - 1)).overflow else {
                    throw PeerDecodingError("lock traffic numbered past 64 bits")
                }
            }
            var payloads: [[UInt8]] = []
            payloads.reserveCapacity(count)
            for _ in 0..<count { payloads.append(try data()) }
            return .lockTraffic(
                LockTrafficFrame(
                    receiverIncarnation: receiverIncarnation, first: first, acknowledged: acknowledged,
                    payloads: payloads))
        case let kind:
            throw PeerDecodingError("unknown body kind \(kind)")
        }
    }

    mutating func message() throws -> GroupMessage {
        switch try byte() {
        case 1:
            let view = try optionalViewID()
            let promised = try optionalViewID()
            let highest = try varint()
            return .heartbeat(
                Heartbeat(view: view, promised: promised, highestViewNumber: highest, sequenced: try varint()))
        case 2:
            let view = try viewID()
            let count = try count(minimumSize: 2)
            var submissions: [Submission] = []
            submissions.reserveCapacity(count)
            for _ in 0..<count {
                let localSeq = try varint()
                submissions.append(Submission(localSeq: localSeq, body: try body()))
            }
            return .submit(view: view, submissions)
        case 3:
            let view = try viewID()
            return .ordered(view: view, try ordered())
        case 4:
            let view = try viewID()
            let count = try count()
            var seqs: [UInt64] = []
            seqs.reserveCapacity(count)
            for _ in 0..<count { seqs.append(try varint()) }
            return .nak(view: view, seqs)
        case 5:
            let id = try viewID()
            return .propose(id: id, members: try members())
        case 6:
            let id = try viewID()
            return .reject(id: id, highestViewNumber: try varint())
        case 7:
            let proposal = try viewID()
            let from = try optionalViewID()
            let delivered = try varint()
            let groups = try groups()
            let messages = try ordered()
            let count = try count()
            var fenceCandidates: [NodeID] = []
            fenceCandidates.reserveCapacity(count)
            for _ in 0..<count { fenceCandidates.append(NodeID(try uint32())) }
            return .report(
                FlushReport(
                    proposal: proposal, from: from, delivered: delivered, groups: groups, messages: messages,
                    fenceCandidates: fenceCandidates, wasQuorate: try bool(), lastPrimary: try members(),
                    fenced: try members()))
        case 8:
            let id = try viewID()
            let members = try members()
            let primary = try bool()
            let count = try count(minimumSize: 3)
            var tails: [Tail] = []
            tails.reserveCapacity(count)
            for _ in 0..<count {
                let view = try viewID()
                tails.append(Tail(view: view, messages: try ordered()))
            }
            return .install(
                Installation(
                    view: View(id: id, members: members), primary: primary, tails: tails, groups: try groups(),
                    fenced: try self.members()))
        case 9:
            return .installed(try viewID())
        case let tag:
            throw PeerDecodingError("unknown message tag \(tag)")
        }
    }
}
