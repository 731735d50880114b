/// What `CorosyncMember`s multicast to their CPG group (docs/GROUPS.md, "The corosync provider"). CPG delivers
/// every message to every member in one total order, this node's own included, and a configuration change at the
/// same place in that order for every member that stays: what a member decides from what was delivered, every
/// other member decides alike.
public enum CorosyncMessage: Hashable, Sendable {
    /// Sent by every member after each configuration change or quorum change (a *round*): the life it is and what it
    /// knows of earlier views. A member decides the round's view once every process of the configuration announced.
    case announce(Announcement)
    /// The sender's quorum changed: a new round.
    case quorumChanged(quorate: Bool)
    /// The coordinator of a round fenced this node (the fence command succeeded).
    case fenced(NodeID)
    /// The coordinator of a round persisted the number of the view the round decided: install it.
    case install(view: UInt64)
    /// Application data to every member of the view (`group` nil) or to a process group's members.
    case data(localSeq: UInt64, group: String?, payload: [UInt8])
    /// The sender entered a barrier in the view numbered `view`.
    case barrier(String, view: UInt64)
    case join(String)
    case leave(String)

    public struct Announcement: Hashable, Sendable {
        /// The round: the configuration the sender saw last and the quorum changes delivered since.
        public var configuration: [ProcessAddress]
        public var quorumChanges: UInt32
        public var incarnation: UInt64
        public var highestViewNumber: UInt64
        public var quorate: Bool
        /// The nodes that may hold a primary view the sender knows of (its persisted fence candidates), the lives
        /// of its last primary view, and the lives it knows a primary view left out.
        public var fenceCandidates: [NodeID]
        public var lastPrimary: [Member]
        public var fenced: [Member]
        /// The process groups the sender is in.
        public var groups: [String]
        /// Configured nodes that corosync does not count as members now and that the sender does not know to be fenced
        /// since it last counted them: a life there may hold a primary view no member knows of.
        public var absentUnfenced: [NodeID]
        /// The nodes the sender fenced while corosync did not count them, since its views were last without quorum
        /// (`CorosyncMember.fencedAbsent`): none of them needs a fence again.
        public var fencedAbsent: [NodeID]
        public init(
            configuration: [ProcessAddress], quorumChanges: UInt32, incarnation: UInt64, highestViewNumber: UInt64,
            quorate: Bool, fenceCandidates: [NodeID], lastPrimary: [Member], fenced: [Member], groups: [String],
            absentUnfenced: [NodeID] = [], fencedAbsent: [NodeID] = []
        ) {
            self.absentUnfenced = absentUnfenced
            self.fencedAbsent = fencedAbsent
            self.configuration = configuration
            self.quorumChanges = quorumChanges
            self.incarnation = incarnation
            self.highestViewNumber = highestViewNumber
            self.quorate = quorate
            self.fenceCandidates = fenceCandidates
            self.lastPrimary = lastPrimary
            self.fenced = fenced
            self.groups = groups
        }
    }

    /// A message that cannot be read (from another build, or damaged): dropped.
    public struct DecodeError: Error, Hashable, Sendable {}

    // Little-endian: a tag byte, then the fields in order; lists as a u32 count; strings as a u16 length and UTF-8.
    public func encoded() -> [UInt8] {
        var out: [UInt8] = []
        func u8(_ v: UInt8) { out.append(v) }
        func u16(_ v: UInt16) { withUnsafeBytes(of: v.littleEndian) { out += $0 } }
        func u32(_ v: UInt32) { withUnsafeBytes(of: v.littleEndian) { out += $0 } }
        func u64(_ v: UInt64) { withUnsafeBytes(of: v.littleEndian) { out += $0 } }
        func text(_ s: String) {
            let bytes = Array(s.utf8.prefix(Int(UInt16.max)))
            u16(UInt16(bytes.count))
            out += bytes
        }
        func lives(_ list: [Member]) {
            u32(UInt32(list.count))
            for life in list {
                u32(life.node.rawValue)
                u64(life.incarnation)
            }
        }
        switch self {
        case .announce(let a):
            u8(1)
            u32(UInt32(a.configuration.count))
            for address in a.configuration {
                u32(address.node.rawValue)
                u32(address.pid)
            }
            u32(a.quorumChanges)
            u64(a.incarnation)
            u64(a.highestViewNumber)
            u8(a.quorate ? 1 : 0)
            u32(UInt32(a.fenceCandidates.count))
            for node in a.fenceCandidates { u32(node.rawValue) }
            lives(a.lastPrimary)
            lives(a.fenced)
            u32(UInt32(a.groups.count))
            for group in a.groups { text(group) }
            u32(UInt32(a.absentUnfenced.count))
            for node in a.absentUnfenced { u32(node.rawValue) }
            u32(UInt32(a.fencedAbsent.count))
            for node in a.fencedAbsent { u32(node.rawValue) }
        case .quorumChanged(let quorate):
            u8(2)
            u8(quorate ? 1 : 0)
        case .fenced(let node):
            u8(3)
            u32(node.rawValue)
        case .data(let localSeq, let group, let payload):
            u8(4)
            u64(localSeq)
            u8(group == nil ? 0 : 1)
            if let group { text(group) }
            out += payload
        case .barrier(let name, let view):
            u8(5)
            u64(view)
            text(name)
        case .join(let name):
            u8(6)
            text(name)
        case .leave(let name):
            u8(7)
            text(name)
        case .install(let view):
            u8(8)
            u64(view)
        }
        return out
    }

    public init(decoding bytes: [UInt8]) throws {
        var at = 0
        func take(_ n: Int) throws -> ArraySlice<UInt8> {
            guard n >= 0, bytes.count - at >= n else { throw DecodeError() }
            defer { at += n }
            return bytes[at..<at + n]
        }
        func integer<T: FixedWidthInteger>(_: T.Type) throws -> T {
            var value: T = 0
            for (shift, byte) in try take(MemoryLayout<T>.size).enumerated() { value |= T(byte) << (8 * shift) }
            return value
        }
        func count() throws -> Int {
            let n = Int(try integer(UInt32.self))
            // Every element takes at least a byte: a count past what is left is damage, not a huge allocation.
            guard n <= bytes.count - at else { throw DecodeError() }
            return n
        }
        func text() throws -> String {
            let n = Int(try integer(UInt16.self))
            guard let s = String(validating: try take(n), as: UTF8.self) else { throw DecodeError() }
            return s
        }
        func lives() throws -> [Member] {
            try (0..<count()).map { _ in
                Member(node: NodeID(try integer(UInt32.self)), incarnation: try integer(UInt64.self))
            }
        }
        switch try integer(UInt8.self) {
        case 1:
            let configuration = try (0..<count()).map { _ in
                ProcessAddress(node: NodeID(try integer(UInt32.self)), pid: try integer(UInt32.self))
            }
            let quorumChanges = try integer(UInt32.self)
            let incarnation = try integer(UInt64.self)
            let highest = try integer(UInt64.self)
            let quorate = try integer(UInt8.self) != 0
            let candidates = try (0..<count()).map { _ in NodeID(try integer(UInt32.self)) }
            let lastPrimary = try lives()
            let fenced = try lives()
            let groups = try (0..<count()).map { _ in try text() }
            let absent = try (0..<count()).map { _ in NodeID(try integer(UInt32.self)) }
            let fencedAbsent = try (0..<count()).map { _ in NodeID(try integer(UInt32.self)) }
            self = .announce(
                Announcement(
                    configuration: configuration, quorumChanges: quorumChanges, incarnation: incarnation,
                    highestViewNumber: highest, quorate: quorate, fenceCandidates: candidates,
                    lastPrimary: lastPrimary, fenced: fenced, groups: groups, absentUnfenced: absent,
                    fencedAbsent: fencedAbsent))
        case 2:
            self = .quorumChanged(quorate: try integer(UInt8.self) != 0)
        case 3:
            self = .fenced(NodeID(try integer(UInt32.self)))
        case 4:
            let localSeq = try integer(UInt64.self)
            let group = try integer(UInt8.self) == 0 ? nil : try text()
            self = .data(localSeq: localSeq, group: group, payload: Array(bytes[at...]))
            at = bytes.count
        case 5:
            let view = try integer(UInt64.self)
            self = .barrier(try text(), view: view)
        case 6:
            self = .join(try text())
        case 7:
            self = .leave(try text())
        case 8:
            self = .install(view: try integer(UInt64.self))
        default:
            throw DecodeError()
        }
        guard at == bytes.count else { throw DecodeError() }
    }
}
