/// A dictionary kept in 64 shards by its keys' hash. A Swift dictionary grows by doubling, which rehashes every
/// entry in one step: at half a million entries that is a step of 150 to 370 ms here (the master cache, the
/// directory and a recovery's received locks of a node with a million locks), a pause for every client of the
/// node, and at a few million entries long enough for its peers to suspect it. A shard grows alone, at 1/64 of
/// the cost. Lookups hash the key twice (once for the shard): for the keys that hash with `KeyHash` (a
/// `DirectoryKey`, whose names are hashed once when it is made, lock ids, master locks), each is a cheap mix of one
/// number.
struct ShardedDictionary<Key: Hashable, Value> {
    static var shardBits: Int { 6 }
    static var shardCount: Int { 1 << shardBits }
    private var shards: [[Key: Value]]

    init(minimumCapacity: Int = 0) {
        shards = Array(repeating: [:], count: Self.shardCount)
        if minimumCapacity > 0 { reserveCapacity(minimumCapacity) }
    }

    /// (The hash's top bits: a shard's own table takes its buckets from the low bits of a hash of the same key,
    /// with its own seed; for a key whose hash is a cheap mix of the seed, the two could otherwise agree.)
    @inline(__always)
    private static func shard(of key: Key) -> Int {
        Int(UInt(bitPattern: key.hashValue) >> (UInt.bitWidth - shardBits))
    }

    subscript(key: Key) -> Value? {
        get { shards[Self.shard(of: key)][key] }
        set { shards[Self.shard(of: key)][key] = newValue }
        _modify { yield &shards[Self.shard(of: key)][key] }
    }

    subscript(key: Key, default value: @autoclosure () -> Value) -> Value {
        get { shards[Self.shard(of: key)][key, default: value()] }
        _modify { yield &shards[Self.shard(of: key)][key, default: value()] }
    }

    @discardableResult
    mutating func updateValue(_ value: Value, forKey key: Key) -> Value? {
        shards[Self.shard(of: key)].updateValue(value, forKey: key)
    }

    @discardableResult
    mutating func removeValue(forKey key: Key) -> Value? { shards[Self.shard(of: key)].removeValue(forKey: key) }

    /// Room for about `count` entries in all, so that the shards do not grow while they are added (an eighth more
    /// in each: the keys do not fall evenly).
    mutating func reserveCapacity(_ count: Int) {
        let each = (count + Self.shardCount - 1) / Self.shardCount
        for shard in shards.indices { shards[shard].reserveCapacity(each + each / 8) }
    }

    var count: Int { shards.reduce(0) { $0 + $1.count } }
    var isEmpty: Bool { shards.allSatisfy(\.isEmpty) }
    var values: [Value] { shards.flatMap(\.values) }
    /// The non-nil results of `transform` over every entry, shard by shard.
    func compactMap<T>(_ transform: (Key, Value) -> T?) -> [T] {
        (0..<Self.shardCount).flatMap { compactMap(inShard: $0, transform) }
    }

    /// The non-nil results of `transform` over the entries of one shard (0 to `shardCount` - 1): a walk of a large
    /// dictionary in slices, each a shard.
    func compactMap<T>(inShard shard: Int, _ transform: (Key, Value) -> T?) -> [T] {
        var results: [T] = []
        for (key, value) in shards[shard] { if let result = transform(key, value) { results.append(result) } }
        return results
    }

    /// Removes the entries for which `shouldBeRemoved` is true.
    mutating func removeAll(where shouldBeRemoved: (Key, Value) -> Bool) {
        for shard in shards.indices where !shards[shard].isEmpty {
            shards[shard] = shards[shard].filter { !shouldBeRemoved($0.key, $0.value) }
        }
    }

    /// Lets `update` change the value of every entry, in place.
    mutating func updateAll(_ update: (Key, inout Value) -> Void) {
        for shard in shards.indices where !shards[shard].isEmpty {
            var index = shards[shard].startIndex
            while index != shards[shard].endIndex {
                update(shards[shard].keys[index], &shards[shard].values[index])
                shards[shard].formIndex(after: &index)
            }
        }
    }

    /// How many entries one shard holds.
    func count(inShard shard: Int) -> Int { shards[shard].count }
}

extension ShardedDictionary: Sendable where Key: Sendable, Value: Sendable {}
