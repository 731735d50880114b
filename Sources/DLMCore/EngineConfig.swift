/// Every tunable of the lock engine, checked on construction.
public struct EngineConfig: Sendable, Hashable, Codable {
    /// How long a request waits before a multi-resource deadlock search starts for it, in nanoseconds.
    /// Zero disables the search (conversion deadlocks are still found at once). OpenVMS calls this
    /// DEADLOCK_WAIT; its default is 10 s, ours is 1 s.
    public var deadlockWait: UInt64
    /// The default value block length of a new lockspace in bytes.
    public var defaultValueBlockLength: Int
    /// The most locks the engine holds at once (each lock id is a slot below this bound).
    public var maxLocks: Int
    /// Every lockspace's fencing tokens start above this. A node that persists its state passes its incarnation
    /// shifted left by 40 bits, so that tokens after a restart are greater than any before it without a write
    /// per token.
    public var fencingTokenBase: UInt64 = 0

    public static let maxNameLength = 64
    public static let maxValueBlockLength = 64

    public init(
        deadlockWait: UInt64 = 1_000_000_000, defaultValueBlockLength: Int = 32, maxLocks: Int = 1 << 30,
        fencingTokenBase: UInt64 = 0
    ) {
        precondition(
            defaultValueBlockLength > 0 && defaultValueBlockLength % 8 == 0
                && defaultValueBlockLength <= EngineConfig.maxValueBlockLength,
            "the value block length must be a multiple of 8 between 8 and 64")
        precondition(maxLocks > 0 && maxLocks < Int(Int32.max), "maxLocks must fit a lock id")
        self.deadlockWait = deadlockWait
        self.defaultValueBlockLength = defaultValueBlockLength
        self.maxLocks = maxLocks
        self.fencingTokenBase = fencingTokenBase
    }
}
