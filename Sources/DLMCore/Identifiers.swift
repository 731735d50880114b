/// A lock's id, unique among the live locks of a node (libdlm's `sb_lkid`). Zero is never a lock.
public struct LockID: RawRepresentable, Sendable, Hashable, Codable, Comparable, CustomStringConvertible {
    public var rawValue: UInt32
    public init(rawValue: UInt32) { self.rawValue = rawValue }
    public static func < (lhs: LockID, rhs: LockID) -> Bool { lhs.rawValue < rhs.rawValue }
    public var description: String { String(rawValue, radix: 16) }

    @inlinable var slot: Int { Int(rawValue) - 1 }
    @inlinable init(slot: Int32) { self.rawValue = UInt32(slot) + 1 }

    /// (KeyHash: the hash a dictionary takes of a key; `hash(into:)`, for a key that contains a lock id, stays
    /// Swift's own.)
    public func _rawHashValue(seed: Int) -> Int { KeyHash.mix(UInt64(rawValue), seed: seed) }
}

/// Whoever a lock belongs to: a client connection of some node, as that node numbers them. The node and its life
/// (incarnation) are part of the identity, so that owners of different nodes, and of a node before and after a
/// restart, never collide in a master's queues or in a deadlock search. When the owner goes away its locks are
/// released or orphaned (`LockEngine.ownerExited`).
public struct OwnerID: Sendable, Hashable, Codable, Comparable, CustomStringConvertible {
    /// The node whose client this owner is; 0 outside a cluster (and in the engine's tests).
    public var node: UInt32
    /// The life of that node (its incarnation).
    public var incarnation: UInt64
    /// The owner's number on its node (the shell's connection number).
    public var rawValue: UInt64

    public init(node: UInt32, incarnation: UInt64, local: UInt64) {
        self.node = node
        self.incarnation = incarnation
        self.rawValue = local
    }

    /// An owner of node 0.
    public init(rawValue: UInt64) { self.init(node: 0, incarnation: 0, local: rawValue) }
    public init(_ rawValue: UInt64) { self.init(rawValue: rawValue) }

    public static func < (lhs: OwnerID, rhs: OwnerID) -> Bool {
        (lhs.node, lhs.incarnation, lhs.rawValue) < (rhs.node, rhs.incarnation, rhs.rawValue)
    }

    public var description: String {
        node == 0 ? "owner \(rawValue)" : "owner \(rawValue) of node \(node)#\(incarnation)"
    }
}

/// A lockspace's id within one engine.
public struct LockspaceID: RawRepresentable, Sendable, Hashable, Codable, CustomStringConvertible {
    public var rawValue: UInt32
    public init(rawValue: UInt32) { self.rawValue = rawValue }
    public var description: String { "lockspace \(rawValue)" }
}

/// Who waits for whom in deadlock detection: the owner, or the transaction (libdlm's `xid`) when the
/// request named one.
public enum DeadlockParticipant: Sendable, Hashable, Codable, Comparable, CustomStringConvertible {
    case owner(OwnerID)
    /// A transaction id (xid) is scoped like its owner: the node and its life that the request came from.
    case transaction(TransactionID)

    public var description: String {
        switch self {
        case .owner(let o): o.description
        case .transaction(let x): x.description
        }
    }
}

/// A transaction of deadlock detection (libdlm `dlm_ls_lockx`'s xid) on one node in one of its lives.
public struct TransactionID: Sendable, Hashable, Codable, Comparable, CustomStringConvertible {
    public var node: UInt32
    public var incarnation: UInt64
    public var xid: UInt64

    public init(node: UInt32 = 0, incarnation: UInt64 = 0, xid: UInt64) {
        self.node = node
        self.incarnation = incarnation
        self.xid = xid
    }

    public static func < (lhs: TransactionID, rhs: TransactionID) -> Bool {
        (lhs.node, lhs.incarnation, lhs.xid) < (rhs.node, rhs.incarnation, rhs.xid)
    }

    public var description: String { node == 0 ? "xid \(xid)" : "xid \(xid) of node \(node)#\(incarnation)" }
}

/// Monotonic time in nanoseconds, as the shell passes it in. The engine never reads a clock.
public typealias Instant = UInt64
