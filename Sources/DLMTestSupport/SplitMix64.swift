/// SplitMix64 (Steele, Lea and Flood 2014): a small seeded generator, the only source of randomness of the
/// randomized tests, the simulations and the benchmarks, so that a seed replays a run exactly.
public struct SplitMix64: RandomNumberGenerator, Sendable {
    public var state: UInt64

    public init(seed: UInt64) { state = seed }

    public mutating func next() -> UInt64 {
        state &+= 0x9E37_79B9_7F4A_7C15
        var z = state
        z = (z ^ (z >> 30)) &* 0xBF58_476D_1CE4_E5B9
        z = (z ^ (z >> 27)) &* 0x94D0_49BB_1331_11EB
        return z ^ (z >> 31)
    }

    /// A number in 0..<n (n > 0); the modulo bias does not matter here.
    public mutating func below(_ n: Int) -> Int { Int(next() % UInt64(n)) }

    /// True `percent` times in a hundred.
    public mutating func percent(_ percent: Int) -> Bool { below(100) < percent }

    public mutating func bool() -> Bool { next() & 1 == 1 }

    public mutating func byte() -> UInt8 { UInt8(truncatingIfNeeded: next()) }

    /// One of `items` (not empty).
    public mutating func element<T>(_ items: [T]) -> T { items[below(items.count)] }

    public mutating func bytes(_ count: Int) -> [UInt8] {
        var out: [UInt8] = []
        out.reserveCapacity(count)
        while out.count < count {
            var word = next()
            for _ in 0..<min(8, count - out.count) {
                out.append(UInt8(truncatingIfNeeded: word))
                word >>= 8
            }
        }
        return out
    }

    /// Mostly the values that find bugs: 0, 1, the maximum, small numbers; sometimes anything.
    public mutating func integer<T: FixedWidthInteger & UnsignedInteger>(_: T.Type = T.self) -> T {
        switch below(8) {
        case 0: 0
        case 1: 1
        case 2: T.max
        case 3: T(truncatingIfNeeded: below(256))
        default: T(truncatingIfNeeded: next())
        }
    }
}
