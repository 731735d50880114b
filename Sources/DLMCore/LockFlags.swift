/// The libdlm `LKF_*` request flags, with the values of `linux/dlmconstants.h` (REFERENCE.md §3).
public struct LockFlags: OptionSet, Sendable, Hashable, Codable, CustomStringConvertible {
    public var rawValue: UInt32
    public init(rawValue: UInt32) { self.rawValue = rawValue }

    public static let noQueue = LockFlags(rawValue: 0x1)
    public static let cancel = LockFlags(rawValue: 0x2)
    public static let convert = LockFlags(rawValue: 0x4)
    public static let valueBlock = LockFlags(rawValue: 0x8)
    public static let queueConversion = LockFlags(rawValue: 0x10)
    public static let invalidateValueBlock = LockFlags(rawValue: 0x20)
    public static let conversionDeadlockDemote = LockFlags(rawValue: 0x40)
    public static let persistent = LockFlags(rawValue: 0x80)
    public static let noDeadlockWait = LockFlags(rawValue: 0x100)
    public static let noDeadlockBlock = LockFlags(rawValue: 0x200)
    public static let expedite = LockFlags(rawValue: 0x400)
    public static let noQueueBlockingCallback = LockFlags(rawValue: 0x800)
    public static let headOfQueue = LockFlags(rawValue: 0x1000)
    public static let noOrder = LockFlags(rawValue: 0x2000)
    public static let orphan = LockFlags(rawValue: 0x4000)
    public static let alternatePR = LockFlags(rawValue: 0x8000)
    public static let alternateCW = LockFlags(rawValue: 0x10000)
    public static let forceUnlock = LockFlags(rawValue: 0x20000)
    public static let timeout = LockFlags(rawValue: 0x40000)

    /// Flags a lock or convert request may carry.
    public static let requestFlags: LockFlags = [
        .noQueue, .convert, .valueBlock, .queueConversion, .invalidateValueBlock, .conversionDeadlockDemote,
        .persistent, .noDeadlockWait, .noDeadlockBlock, .expedite, .noQueueBlockingCallback, .headOfQueue,
        .noOrder, .orphan, .alternatePR, .alternateCW, .timeout,
    ]
    /// Flags an unlock or cancel may carry.
    public static let unlockFlags: LockFlags = [.cancel, .valueBlock, .invalidateValueBlock, .forceUnlock]

    /// The libdlm names, in bit order, as dlm_tool prints them.
    public static let names: [(LockFlags, String)] = [
        (.noQueue, "NOQUEUE"), (.cancel, "CANCEL"), (.convert, "CONVERT"), (.valueBlock, "VALBLK"),
        (.queueConversion, "QUECVT"), (.invalidateValueBlock, "IVVALBLK"), (.conversionDeadlockDemote, "CONVDEADLK"),
        (.persistent, "PERSISTENT"), (.noDeadlockWait, "NODLCKWT"), (.noDeadlockBlock, "NODLCKBLK"),
        (.expedite, "EXPEDITE"), (.noQueueBlockingCallback, "NOQUEUEBAST"), (.headOfQueue, "HEADQUE"),
        (.noOrder, "NOORDER"), (.orphan, "ORPHAN"), (.alternatePR, "ALTPR"), (.alternateCW, "ALTCW"),
        (.forceUnlock, "FORCEUNLOCK"), (.timeout, "TIMEOUT"),
    ]

    public var description: String {
        LockFlags.names.filter { contains($0.0) }.map(\.1).joined(separator: "|")
    }
}

/// The `sb_flags` a completion carries (REFERENCE.md §3).
public struct CompletionFlags: OptionSet, Sendable, Hashable, Codable, CustomStringConvertible {
    public var rawValue: UInt8
    public init(rawValue: UInt8) { self.rawValue = rawValue }

    /// A conversion deadlock was resolved by demoting the granted mode to NL (CONVDEADLK).
    public static let demoted = CompletionFlags(rawValue: 0x1)
    /// The lock value block is marked invalid.
    public static let valueNotValid = CompletionFlags(rawValue: 0x2)
    /// The lock was granted in the alternate mode of ALTPR / ALTCW.
    public static let alternateMode = CompletionFlags(rawValue: 0x4)

    public var description: String {
        [(CompletionFlags.demoted, "DEMOTED"), (.valueNotValid, "VALNOTVALID"), (.alternateMode, "ALTMODE")]
            .filter { contains($0.0) }.map(\.1).joined(separator: "|")
    }
}
