/// A cheap hash for keys that the lock service looks up millions of times in a large recovery (lock ids, holders'
/// copies, directory keys): a dictionary hashes a key for every lookup, and Swift's default hashing (SipHash, its
/// state seeded and finalized for every key) was a fifth of a recovery's CPU here. These keys are numbers the
/// nodes assign, or (a directory key) a hash of the names already taken with Swift's own seeded hasher, so a
/// client cannot choose them to collide; the table's seed is mixed in, as Swift's hashing does, so that two tables
/// do not order the same keys alike.
public enum KeyHash {
    /// `value` and `seed` mixed into a hash whose every bit depends on every bit of both (the 64-bit finalizer of
    /// MurmurHash3).
    @inlinable
    public static func mix(_ value: UInt64, seed: Int) -> Int {
        var x = value ^ UInt64(bitPattern: Int64(seed))
        x ^= x >> 33
        x &*= 0xff51_afd7_ed55_8ccd
        x ^= x >> 33
        x &*= 0xc4ce_b9fe_1a85_ec53
        x ^= x >> 33
        return Int(truncatingIfNeeded: x)
    }

    /// Several numbers as one, for `mix`.
    @inlinable
    public static func combine(_ a: UInt64, _ b: UInt64) -> UInt64 {
        (a &* 0x9e37_79b9_7f4a_7c15) ^ (b &+ 0x632b_e59b_d9b4_e019 &+ (a << 6) &+ (a >> 2))
    }
}
