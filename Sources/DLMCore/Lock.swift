/// Which of a resource's queues a lock is on.
public enum QueueKind: UInt8, Sendable, Hashable, Codable, CustomStringConvertible {
    /// Granted, no operation pending.
    case grant = 1
    /// Granted, with a conversion to another mode pending.
    case convert = 2
    /// A new request not granted yet.
    case wait = 3

    public var description: String {
        switch self {
        case .grant: "granted"
        case .convert: "converting"
        case .wait: "waiting"
        }
    }
}

/// Sentinel for "no slot" in the intrusive links.
@usableFromInline let none: Int32 = -1
/// Sentinel for "no mode" (libdlm's DLM_LOCK_IV).
@usableFromInline let noMode: UInt8 = 0xFF

/// One lock, stored in the engine's lock slab; its id is its slot plus one. Links are slots, not
/// references, so that a held lock costs a few dozen bytes and no allocation.
struct LockRecord {
    /// The resource's slot, or `none` when the slot is free.
    var resource: Int32 = none
    /// Neighbours on the resource queue the lock is on.
    var prev: Int32 = none
    var next: Int32 = none
    /// Neighbours in the owner's list of locks.
    var ownerPrev: Int32 = none
    var ownerNext: Int32 = none
    /// Neighbours in the engine's list of waiting and converting locks (for deadlock search).
    var waitPrev: Int32 = none
    var waitNext: Int32 = none
    /// The owner's slot; slot 0 holds the orphans.
    var owner: Int32 = none
    /// The parent lock's slot.
    var parent: Int32 = none
    /// How many granted or pending locks name this one as their parent.
    var children: Int32 = 0
    /// The flags of the last request, with PERSISTENT kept once given.
    var flags: LockFlags = []
    var grantedMode: UInt8 = noMode
    var requestedMode: UInt8 = noMode
    var queue: UInt8 = 0
    /// Blocking callbacks sent since the last grant: one bit per mode.
    var blockingSent: UInt8 = 0
    var priority: UInt8 = 0
    var options: LockOptions = []
    /// Completion flags collected while the request is pending (DEMOTED).
    var pendingFlags: CompletionFlags = []
    /// Order of the last time the lock started waiting; younger requests have larger numbers.
    var waitSequence: UInt32 = 0
    var waitingSince: Instant = 0
    /// With TIMEOUT, when the pending request gives up; zero otherwise.
    var deadline: Instant = 0
    /// The transaction (xid) for deadlock detection; zero for none.
    var transaction: UInt64 = 0
    /// The fencing token of the last grant, zero if none.
    var fencingToken: UInt64 = 0

    @inlinable var isFree: Bool { resource == none }
    @inlinable var isGranted: Bool { grantedMode != noMode }
    @inlinable var queueKind: QueueKind? { QueueKind(rawValue: queue) }
}

/// Per-lock settings that are not libdlm flags.
struct LockOptions: OptionSet {
    var rawValue: UInt8
    static let wantsBlockingCallbacks = LockOptions(rawValue: 1)
    static let alwaysFencingToken = LockOptions(rawValue: 2)
    /// A FORCEUNLOCK of this lock (or of a parent) is releasing its sub-locks in slices: no new sub-lock under
    /// it, no other operation on it.
    static let unlocking = LockOptions(rawValue: 4)
    /// The store holds a record of this lock (Journal.swift), and with PW or EX.
    static let stored = LockOptions(rawValue: 8)
    static let storedWriter = LockOptions(rawValue: 16)
    /// Changed since the last drain of the journal, on a tracked resource.
    static let journalDirty = LockOptions(rawValue: 32)
    /// The journal's bits, which a request's options never replace.
    static let journalState: LockOptions = [.stored, .storedWriter, .journalDirty]
}
