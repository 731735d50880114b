/// A lock's id, unique among the live locks of a node (libdlm's `sb_lkid`). Zero is never a lock.
public struct LockID: RawRepresentable, Sendable, Hashable, Codable, Comparable, CustomStringConvertible {
    public var rawValue: UInt32
    public init(rawValue: UInt32) { self.rawValue = rawValue }
    public static func < (lhs: LockID, rhs: LockID) -> Bool { lhs.rawValue < rhs.rawValue }
    public var description: String { String(rawValue, radix: 16) }

    @inlinable var slot: Int { Int(rawValue) - 1 }
    @inlinable init(slot: Int32) { self.rawValue = UInt32(slot) + 1 }
}

/// Whoever a lock belongs to: a client connection, as the shell numbers them. When the owner goes away
/// its locks are released or orphaned (`LockEngine.ownerExited`).
public struct OwnerID: RawRepresentable, Sendable, Hashable, Codable, Comparable, CustomStringConvertible {
    public var rawValue: UInt64
    public init(rawValue: UInt64) { self.rawValue = rawValue }
    public init(_ rawValue: UInt64) { self.rawValue = rawValue }
    public static func < (lhs: OwnerID, rhs: OwnerID) -> Bool { lhs.rawValue < rhs.rawValue }
    public var description: String { "owner \(rawValue)" }
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
    case transaction(UInt64)

    public var description: String {
        switch self {
        case .owner(let o): "owner \(o.rawValue)"
        case .transaction(let x): "xid \(x)"
        }
    }
}

/// Monotonic time in nanoseconds, as the shell passes it in. The engine never reads a clock.
public typealias Instant = UInt64
