/// A lockspace: a namespace of resources with its own value block length (REFERENCE.md §4).
struct LockspaceRecord {
    var name: [UInt8]
    var valueBlockLength: Int
    /// The highest fencing token of any resource of this lockspace that was freed, so that a resource
    /// created again never issues a token lower than before.
    var fencingTokenFloor: UInt64 = 0
    var resourceCount = 0
    var lockCount = 0
    var isLive = true
    /// Released, with locks still being dropped (a forced release in slices): not reused until they are gone.
    var isDraining = false
    /// How many lockspaces held this slot before: part of the lockspace's id, so that an id of a released
    /// lockspace never names a later one in the same slot (`LockEngine.liveSlot`).
    var generation: UInt32 = 0
}

/// What an operator sees of a lockspace.
public struct LockspaceInfo: Sendable, Hashable, Codable {
    public var id: LockspaceID
    public var name: [UInt8]
    public var valueBlockLength: Int
    public var resourceCount: Int
    public var lockCount: Int
}
