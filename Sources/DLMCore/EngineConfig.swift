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
    /// How many locks a slice of bulk work (an owner's exit, a purge, a forced release) handles before the shell
    /// serves others (BulkWork.swift). A few milliseconds of work in a release build (bench/RESULTS.md).
    public var bulkSlice: Int
    /// How many steps a slice of a deadlock pass takes before the shell serves others (DeadlockSearch.swift); a
    /// step is a lock copied or an edge followed, some tens of nanoseconds in a release build.
    public var deadlockSlice: Int
    /// How many requests a tick gives up with ETIMEDOUT at most (the others at the next ticks).
    public var timeoutSlice: Int
    /// Value blocks in use are replicated (`.replicate` effects, ValueReplicas.swift): set by a node that masters
    /// resources across a cluster.
    public var replicatesValueBlocks = false
    /// Top-level resources that are freed are listed with the time (`takeFreedResources`), for a node that masters
    /// resources across a cluster to drop them from the directory once idle long enough.
    public var reportsFreedResources = false

    public static let maxNameLength = 64
    public static let maxValueBlockLength = 64

    public init(
        deadlockWait: UInt64 = 1_000_000_000, defaultValueBlockLength: Int = 32, maxLocks: Int = 1 << 30,
        fencingTokenBase: UInt64 = 0, bulkSlice: Int = 2048, deadlockSlice: Int = 50_000, timeoutSlice: Int = 2048
    ) {
        precondition(
            defaultValueBlockLength > 0 && defaultValueBlockLength % 8 == 0
                && defaultValueBlockLength <= EngineConfig.maxValueBlockLength,
            "the value block length must be a multiple of 8 between 8 and 64")
        precondition(maxLocks > 0 && maxLocks < Int(Int32.max), "maxLocks must fit a lock id")
        precondition(bulkSlice > 0, "a slice of bulk work does at least one lock")
        precondition(deadlockSlice > 0, "a slice of a deadlock pass takes at least one step")
        precondition(timeoutSlice > 0, "a tick gives up at least one request")
        self.deadlockWait = deadlockWait
        self.defaultValueBlockLength = defaultValueBlockLength
        self.maxLocks = maxLocks
        self.fencingTokenBase = fencingTokenBase
        self.bulkSlice = bulkSlice
        self.deadlockSlice = deadlockSlice
        self.timeoutSlice = timeoutSlice
    }
}
