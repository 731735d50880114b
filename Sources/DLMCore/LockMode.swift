/// The six lock modes of the VMS / Linux DLM, numbered as libdlm's `LKM_*` constants.
public enum LockMode: UInt8, CaseIterable, Sendable, Hashable, Codable, Comparable, CustomStringConvertible {
    /// Null: no access, keeps the resource (and its value block) alive.
    case nl = 0
    /// Concurrent read.
    case cr = 1
    /// Concurrent write.
    case cw = 2
    /// Protected read.
    case pr = 3
    /// Protected write.
    case pw = 4
    /// Exclusive.
    case ex = 5

    /// Whether a lock granted in `self` and a lock granted in `other` may coexist.
    @inlinable
    public func isCompatible(with other: LockMode) -> Bool {
        // Byte `self` holds one bit per compatible mode (REFERENCE.md §1):
        // NL 0x3F (all), CR 0x1F (all but EX), CW 0x07 (NL CR CW), PR 0x0B (NL CR PR), PW 0x03 (NL CR), EX 0x01 (NL).
        let row: UInt64 = 0x01_03_0B_07_1F_3F
        return (row >> (UInt64(rawValue) * 8 + UInt64(other.rawValue))) & 1 == 1
    }

    /// Whether a queued conversion (QUECVT) from `self` to `target` is legal: only up-conversions,
    /// where PR <-> CW counts as one.
    public func allowsQueuedConversion(to target: LockMode) -> Bool {
        if (self == .pr && target == .cw) || (self == .cw && target == .pr) { return true }
        return target > self
    }

    public static func < (lhs: LockMode, rhs: LockMode) -> Bool { lhs.rawValue < rhs.rawValue }

    public var description: String {
        switch self {
        case .nl: "NL"
        case .cr: "CR"
        case .cw: "CW"
        case .pr: "PR"
        case .pw: "PW"
        case .ex: "EX"
        }
    }

    /// Parses "NL", "cr", ... as printed by `description`.
    public init?(name: String) {
        guard let mode = LockMode.allCases.first(where: { $0.description == name.uppercased() }) else { return nil }
        self = mode
    }
}
