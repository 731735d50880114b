/// A node of the static node list (corosync's `nodeid`).
public struct NodeID: RawRepresentable, Hashable, Comparable, Sendable, ExpressibleByIntegerLiteral,
    CustomStringConvertible
{
    public var rawValue: UInt32
    public init(rawValue: UInt32) { self.rawValue = rawValue }
    public init(_ rawValue: UInt32) { self.rawValue = rawValue }
    public init(integerLiteral value: UInt32) { self.rawValue = value }
    public static func < (a: NodeID, b: NodeID) -> Bool { a.rawValue < b.rawValue }
    public var description: String { "\(rawValue)" }
}

/// One life of a node: its id and its incarnation, a number the node's shell counts up (and persists) at every
/// start. A node that was removed from a view comes back only as a new incarnation, that is a new member: its
/// old state is never merged.
public struct Member: Hashable, Comparable, Sendable, CustomStringConvertible {
    public var node: NodeID
    public var incarnation: UInt64
    public init(node: NodeID, incarnation: UInt64) {
        self.node = node
        self.incarnation = incarnation
    }
    public static func < (a: Member, b: Member) -> Bool {
        (a.node, a.incarnation) < (b.node, b.incarnation)
    }
    /// `2` for node 2, incarnation 1; `2#3` for its third incarnation.
    public var description: String { incarnation == 1 ? "\(node)" : "\(node)#\(incarnation)" }
}

/// The identity of a view: its number and the node that proposed (and coordinates) it. Numbers increase at every
/// node, across restarts (the last one is persisted); two partitions may form views with the same number, so the
/// coordinator is part of the identity.
public struct ViewID: Hashable, Comparable, Sendable, CustomStringConvertible {
    public var number: UInt64
    public var coordinator: NodeID
    public init(number: UInt64, coordinator: NodeID) {
        self.number = number
        self.coordinator = coordinator
    }
    public static func < (a: ViewID, b: ViewID) -> Bool {
        (a.number, a.coordinator) < (b.number, b.coordinator)
    }
    public var description: String { "\(number)@\(coordinator)" }
}

/// An agreed membership: every member that installs a view installs the same members under the same id.
public struct View: Hashable, Sendable, CustomStringConvertible {
    public var id: ViewID
    /// The members, by node id (one incarnation per node).
    public var members: [Member]
    public init(id: ViewID, members: [Member]) {
        self.id = id
        self.members = members.sorted()
    }
    public func contains(_ member: Member) -> Bool { members.contains(member) }
    public var nodes: [NodeID] { members.map(\.node) }
    /// `view 2@1 {1,2}`.
    public var description: String {
        "view \(id) {\(members.map(\.description).joined(separator: ","))}"
    }
}

/// What a node keeps on disk for group services: the highest view number it promised or installed (so that its
/// views keep increasing after a restart), the nodes that may hold a primary view it knows of (the members of
/// its last primary view and of every proposal it reported to since), which a new primary view must fence, and the
/// lives its primary views left out (fenced), which never come back, also after this node restarts.
public struct PersistentState: Hashable, Sendable, Codable {
    public var highestViewNumber: UInt64
    public var fenceCandidates: [UInt32]
    /// Per node, the latest incarnation that a primary view left out: only a later one may join again.
    public var fencedIncarnations: [UInt32: UInt64]

    public init(
        highestViewNumber: UInt64 = 0, fenceCandidates: [UInt32] = [], fencedIncarnations: [UInt32: UInt64] = [:]
    ) {
        self.highestViewNumber = highestViewNumber
        self.fenceCandidates = fenceCandidates
        self.fencedIncarnations = fencedIncarnations
    }

    enum CodingKeys: String, CodingKey {
        case highestViewNumber, fenceCandidates, fencedIncarnations
    }

    /// Records written before fenced lives were kept have none.
    public init(from decoder: any Decoder) throws {
        let container = try decoder.container(keyedBy: CodingKeys.self)
        highestViewNumber = try container.decode(UInt64.self, forKey: .highestViewNumber)
        fenceCandidates = try container.decode([UInt32].self, forKey: .fenceCandidates)
        fencedIncarnations =
            try container.decodeIfPresent([UInt32: UInt64].self, forKey: .fencedIncarnations) ?? [:]
    }
}

extension PersistentState {
    /// Whether `life` is one that a primary view left out (so fenced): it never comes back.
    public func isFenced(_ life: Member) -> Bool {
        guard let fenced = fencedIncarnations[life.node.rawValue] else { return false }
        return life.incarnation <= fenced
    }

    /// Records a life that a primary view left out; false if it (or a later life of its node) was known already.
    @discardableResult
    public mutating func recordFenced(_ life: Member) -> Bool {
        guard !isFenced(life) else { return false }
        fencedIncarnations[life.node.rawValue] = life.incarnation
        return true
    }

    /// The latest fenced life of each node.
    public var fencedLives: [Member] {
        fencedIncarnations.map { Member(node: NodeID($0.key), incarnation: $0.value) }.sorted()
    }
}
