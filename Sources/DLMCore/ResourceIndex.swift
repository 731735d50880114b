/// A resource name as a resource record keeps it: up to 24 bytes inline, so that most resources cost no
/// allocation of their own (GFS2 names have 24 bytes); longer names (up to 64 bytes) in an array.
enum ResourceName {
    static let inlineCapacity = 24

    case inline((UInt64, UInt64, UInt64), count: UInt8)
    case outOfLine([UInt8])

    static let empty = ResourceName.inline((0, 0, 0), count: 0)

    init(_ bytes: [UInt8]) {
        guard bytes.count <= ResourceName.inlineCapacity else {
            self = .outOfLine(bytes)
            return
        }
        var words: (UInt64, UInt64, UInt64) = (0, 0, 0)
        withUnsafeMutableBytes(of: &words) { destination in
            bytes.withUnsafeBytes { destination.copyMemory(from: $0) }
        }
        self = .inline(words, count: UInt8(bytes.count))
    }

    var bytes: [UInt8] { withUnsafeBytes { Array($0) } }

    func withUnsafeBytes<Result>(_ body: (UnsafeRawBufferPointer) -> Result) -> Result {
        switch self {
        case .inline(var words, let count):
            return Swift.withUnsafeBytes(of: &words) { body(UnsafeRawBufferPointer(rebasing: $0[..<Int(count)])) }
        case .outOfLine(let bytes):
            return bytes.withUnsafeBytes(body)
        }
    }

    /// Whether two names have the same bytes: the same case, as a name's length chooses its case.
    @inline(__always)
    func sameBytes(as other: ResourceName) -> Bool {
        switch (self, other) {
        case (.inline(let a, let m), .inline(let b, let n)): m == n && a.0 == b.0 && a.1 == b.1 && a.2 == b.2
        case (.outOfLine(let a), .outOfLine(let b)): a == b
        default: false
        }
    }
}

/// The index of resources by lockspace, parent resource and name: an open-addressing table of resource slots
/// with linear probing, each bucket also holding 32 bits of the key's hash so that a probe rarely reads a
/// resource record and the table grows and deletes without hashing any name again. The keys themselves are
/// the resource records' own fields, so a resource costs 8 bytes here (at most 16 with the table half full).
///
/// The hash is Swift's `Hasher` (SipHash, seeded per process), so client-chosen names cannot be made to collide
/// on purpose. Where a name lands in the table is never visible outside it: the engine stays deterministic.
struct ResourceIndex {
    struct Bucket {
        /// The resource's slot, or `none` for an empty bucket.
        var slot: Int32
        /// The low 32 bits of the key's hash; its low bits are the bucket the key starts probing from.
        var hash: UInt32
    }

    private(set) var buckets: ContiguousArray<Bucket> = []
    /// How many resources the index holds.
    private(set) var count = 0

    /// The hash of a resource key.
    @inline(__always)
    static func hash(lockspace: UInt32, parent: Int32, name: ResourceName) -> UInt32 {
        var hasher = Hasher()
        hasher.combine(lockspace)
        hasher.combine(parent)
        name.withUnsafeBytes { hasher.combine(bytes: $0) }
        return UInt32(truncatingIfNeeded: hasher.finalize())
    }

    /// The slot whose resource `matches`, among those with this hash.
    @inline(__always)
    func find(hash: UInt32, where matches: (Int32) -> Bool) -> Int32? {
        guard count > 0 else { return nil }
        let mask = buckets.count - 1
        var index = Int(hash) & mask
        while true {
            let bucket = buckets[index]
            if bucket.slot == none { return nil }
            if bucket.hash == hash && matches(bucket.slot) { return bucket.slot }
            index = (index + 1) & mask
        }
    }

    /// Adds a resource that the index does not hold. The table grows at three quarters full.
    mutating func insert(slot: Int32, hash: UInt32) {
        if (count + 1) * 4 > buckets.count * 3 { grow() }
        place(Bucket(slot: slot, hash: hash))
        count += 1
    }

    /// Removes a resource, found by its slot and its hash, shifting back the buckets after it that would
    /// otherwise no longer be reached from where they start probing.
    mutating func remove(slot: Int32, hash: UInt32) {
        guard count > 0 else { return }
        let mask = buckets.count - 1
        var hole = Int(hash) & mask
        while buckets[hole].slot != slot {
            guard buckets[hole].slot != none else { return }
            hole = (hole + 1) & mask
        }
        var index = hole
        while true {
            index = (index + 1) & mask
            let bucket = buckets[index]
            if bucket.slot == none { break }
            // The bucket stays if its start lies cyclically in (hole, index]; otherwise it fills the hole.
            let start = Int(bucket.hash) & mask
            let stays = hole <= index ? (hole < start && start <= index) : (hole < start || start <= index)
            if !stays {
                buckets[hole] = bucket
                hole = index
            }
        }
        buckets[hole] = Bucket(slot: none, hash: 0)
        count -= 1
    }

    private mutating func place(_ bucket: Bucket) {
        let mask = buckets.count - 1
        var index = Int(bucket.hash) & mask
        while buckets[index].slot != none { index = (index + 1) & mask }
        buckets[index] = bucket
    }

    private mutating func grow() { resize(to: max(16, buckets.count * 2)) }

    /// Room for `total` resources without growing (one rehash now, if the index is smaller).
    mutating func reserve(_ total: Int) {
        var size = max(16, buckets.count)
        while total * 4 > size * 3 { size *= 2 }
        if size > buckets.count { resize(to: size) }
    }

    private mutating func resize(to size: Int) {
        let old = buckets
        buckets = ContiguousArray(repeating: Bucket(slot: none, hash: 0), count: size)
        for bucket in old where bucket.slot != none { place(bucket) }
    }
}

extension LockEngine {
    /// The slot of the resource with this key, if it exists.
    func findResource(_ key: ResourceKey) -> Int32? {
        let name = ResourceName(key.name)
        return findResource(
            key, name: name, hash: ResourceIndex.hash(lockspace: key.lockspace, parent: key.parent, name: name))
    }

    @inline(__always)
    func findResource(_ key: ResourceKey, name: ResourceName, hash: UInt32) -> Int32? {
        resourceIndex.find(hash: hash) { slot in
            let record = resources[Int(slot)]
            return record.lockspace == key.lockspace && record.parent == key.parent
                && record.storedName.sameBytes(as: name)
        }
    }

    /// The slot of the resource with this key, created (with no locks) if it does not exist. The key's name is
    /// hashed once.
    mutating func findOrCreateResource(_ key: ResourceKey) -> Int32 {
        let name = ResourceName(key.name)
        let hash = ResourceIndex.hash(lockspace: key.lockspace, parent: key.parent, name: name)
        if let slot = findResource(key, name: name, hash: hash) { return slot }
        let floor = lockspaces[Int(key.lockspace)].fencingTokenFloor
        let record = ResourceRecord(lockspace: key.lockspace, parent: key.parent, name: name, fencingToken: floor)
        let slot: Int32
        if let free = freeResources.popLast() {
            slot = free
            resources[Int(slot)] = record
        } else {
            slot = Int32(resources.count)
            resources.append(record)
        }
        resourceIndex.insert(slot: slot, hash: hash)
        lockspaces[Int(key.lockspace)].resourceCount += 1
        if key.parent != none { resources[Int(key.parent)].childResources += 1 }
        return slot
    }

    /// Takes a resource that is being freed out of the index.
    mutating func removeFromResourceIndex(_ slot: Int32) {
        let record = resources[Int(slot)]
        let hash = ResourceIndex.hash(lockspace: record.lockspace, parent: record.parent, name: record.storedName)
        resourceIndex.remove(slot: slot, hash: hash)
    }
}
