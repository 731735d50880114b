import DLMWire

/// The masters this node knows, by resource (this node's own resources too): what the directory answered, what
/// recovery rebuilt, what a holder was told.
///
/// When masters leave the view, their entries are forgotten at once without a walk over the cache (a node of a
/// cluster with a million locks spent about 0.4 s filtering it when recovery started, with its clients waiting):
/// each entry carries the epoch in which it was written, and an entry of a node forgotten in a later epoch reads
/// as absent. Such a stale entry is dropped when its resource is written again or tossed (`dropIfStale`), which
/// happens to every one: recovery rebinds the locks that used it, and a key no lock uses is in the toss queue.
///
/// An entry also says whether a recovery that has not ended rebuilt the resource here (`isRebuilt`), by the same
/// device: it carries the recovery's number, and ending a recovery makes every such mark old. The mark stays
/// through whatever is written meanwhile, a removal included (the entry stays, reading as absent, for its mark),
/// as the resource's key stayed in the set of rebuilt keys this replaces. (That set was one more table of a
/// million entries to fill in a recovery.)
struct MasterCache {
    private struct Entry {
        /// The master (0: none; an entry kept only for its mark).
        var node: UInt32
        var epoch: UInt32
        /// The `rebuilds` count when a recovery rebuilt the resource here (0: never).
        var rebuilt: UInt32 = 0
    }

    private var entries = ShardedDictionary<DirectoryKey, Entry>()
    /// Incremented by each `forget`; entries are written in the current one.
    private var epoch: UInt32 = 0
    /// Per node, the epoch in which its entries were last forgotten: its entries of earlier epochs read as absent.
    private var forgotten: [UInt32: UInt32] = [:]
    /// Incremented at the end of each recovery (`endRebuilds`): marks of earlier ones are old.
    private var rebuilds: UInt32 = 1

    private func isCurrent(_ entry: Entry) -> Bool { entry.node != 0 && entry.epoch >= forgotten[entry.node] ?? 0 }

    subscript(key: DirectoryKey) -> UInt32? {
        get {
            guard let entry = entries[key], isCurrent(entry) else { return nil }
            return entry.node
        }
        set { Self.write(&entries[key], node: newValue, epoch: epoch, rebuilds: rebuilds) }
    }

    /// (One lookup. A mark of the recovery under way stays, whatever is written.)
    private static func write(_ entry: inout Entry?, node: UInt32?, epoch: UInt32, rebuilds: UInt32) {
        let mark = entry?.rebuilt == rebuilds ? rebuilds : 0
        guard let node else {
            entry = mark == 0 ? nil : Entry(node: 0, epoch: epoch, rebuilt: mark)
            return
        }
        entry = Entry(node: node, epoch: epoch, rebuilt: mark)
    }

    /// `node` (this node) rebuilt the resource in a recovery that has not ended, and masters it.
    mutating func markRebuilt(_ key: DirectoryKey, by node: UInt32) {
        entries[key] = Entry(node: node, epoch: epoch, rebuilt: rebuilds)
    }

    /// Whether a recovery that has not ended rebuilt the resource here (`markRebuilt`), whatever its entry says of
    /// its master since.
    func isRebuilt(_ key: DirectoryKey) -> Bool { entries[key]?.rebuilt == rebuilds }

    /// The recovery ended: no resource counts as rebuilt any more. (0 is never a recovery's count.)
    mutating func endRebuilds() {
        rebuilds &+= 1
        if rebuilds == 0 { rebuilds = 1 }
    }

    /// Every entry naming one of `masters` reads as absent from now on (entries written later are current).
    mutating func forget(_ masters: Set<UInt32>) {
        guard !masters.isEmpty else { return }
        epoch += 1
        for node in masters { forgotten[node] = epoch }
    }

    /// The resources whose current entry names `node`, in the cache's order.
    func keys(masteredBy node: UInt32) -> [DirectoryKey] {
        (0..<Self.partCount).flatMap { keys(masteredBy: node, inPart: $0).keys }
    }

    /// The cache in parts (0 to `partCount` - 1), for a walk in slices.
    static var partCount: Int { ShardedDictionary<DirectoryKey, Entry>.shardCount }

    /// The resources of one part whose current entry names `node`, and how many entries the part holds.
    func keys(masteredBy node: UInt32, inPart part: Int) -> (keys: [DirectoryKey], looked: Int) {
        let floor = forgotten[node] ?? 0
        let keys = entries.compactMap(inShard: part) { key, entry in
            entry.node == node && node != 0 && entry.epoch >= floor ? key : nil
        }
        return (keys, entries.count(inShard: part))
    }

    /// Removes the entry of `key` if it reads as absent (and carries no mark of the recovery under way).
    mutating func dropIfStale(_ key: DirectoryKey) {
        if let entry = entries[key], !isCurrent(entry), entry.rebuilt != rebuilds { entries[key] = nil }
    }

    /// Entries held, stale ones included.
    var storedCount: Int { entries.count }
}
