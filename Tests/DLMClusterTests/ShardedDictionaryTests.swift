import DLMTestSupport
import DLMWire
import Testing

@testable import DLMCluster

/// The sharded dictionary of the master cache, the directory and a recovery's received locks holds what a
/// dictionary would: random writes, removals and in-place appends, and a change of every value, checked entry by
/// entry against one.
struct ShardedDictionaryTests {
    @Test(arguments: [1, 2, 3])
    func agreesWithADictionary(seed: UInt64) {
        var random = SplitMix64(seed: seed)
        var sharded = ShardedDictionary<DirectoryKey, [Int]>(minimumCapacity: 100)
        var plain: [DirectoryKey: [Int]] = [:]
        func key(_ i: Int) -> DirectoryKey {
            DirectoryKey(lockspace: Array("ls\(i % 3)".utf8), name: Array("r\(i)".utf8))
        }
        for step in 0..<20_000 {
            let k = key(random.below(2_000))
            switch random.below(4) {
            case 0:
                sharded[k] = [step]
                plain[k] = [step]
            case 1:
                sharded[k] = nil
                plain[k] = nil
            case 2:
                sharded[k, default: []].append(step)
                plain[k, default: []].append(step)
            default:
                #expect(sharded[k] == plain[k])
            }
        }
        #expect(sharded.count == plain.count)
        #expect(sharded.isEmpty == plain.isEmpty)
        for (k, v) in plain { #expect(sharded[k] == v) }
        let listed = sharded.compactMap { key, value in (key, value) }
        #expect(listed.count == plain.count)
        #expect(listed.allSatisfy { plain[$0.0] == $0.1 })
        #expect(sharded.values.map(\.count).reduce(0, +) == plain.values.map(\.count).reduce(0, +))
        // Every value changed in place, each by its own key.
        sharded.updateAll { key, value in value.append(key.name.count) }
        for (k, v) in plain { #expect(sharded[k] == v + [k.name.count]) }
        #expect(sharded.count == plain.count)
    }

    /// Keys that a node numbers in sequence (lock ids of masters, resource names alike but for a number) spread over
    /// the shards evenly: each shard grows alone, by its share, and no shard takes most of them (the keys' cheap
    /// hashes, KeyHash, mixed well enough that sequences do not fall into a few shards).
    @Test func sequentialKeysSpreadOverTheShards() {
        let count = 64 * 1_024
        var masterLocks = ShardedDictionary<ProcessCopies.MasterLock, Int>()
        var names = ShardedDictionary<DirectoryKey, Int>()
        for i in 0..<count {
            masterLocks[ProcessCopies.MasterLock(node: 2, lock: UInt32(i + 1))] = i
            names[DirectoryKey(lockspace: Array("ls".utf8), name: Array("resource-\(i)".utf8))] = i
        }
        let share = count / ShardedDictionary<DirectoryKey, Int>.shardCount
        for shard in 0..<ShardedDictionary<DirectoryKey, Int>.shardCount {
            #expect(masterLocks.count(inShard: shard) < 2 * share)
            #expect(names.count(inShard: shard) < 2 * share)
        }
        #expect(masterLocks.count == count && names.count == count)
    }
}
