import DLMWire
import Testing

@testable import DLMCluster

/// The master cache forgets departed masters at once (no walk) and exactly: what it held of them reads as absent,
/// what it holds of others and what is written afterwards does not.
struct MasterCacheTests {
    func key(_ name: String) -> DirectoryKey { DirectoryKey(lockspace: Array("ls".utf8), name: Array(name.utf8)) }

    @Test func aForgottenMastersEntriesReadAsAbsentAndLaterOnesDoNot() {
        var cache = MasterCache()
        cache[key("a")] = 1
        cache[key("b")] = 2
        cache[key("c")] = 3
        cache.forget([2, 3])
        #expect(cache[key("a")] == 1)
        #expect(cache[key("b")] == nil)
        #expect(cache[key("c")] == nil)
        #expect(cache.keys(masteredBy: 2).isEmpty)
        // Written after the forget (node 2 back, or the entry rebuilt): current, also across a later forget of
        // another node.
        cache[key("b")] = 2
        cache[key("d")] = 3
        cache.forget([1])
        #expect(cache[key("a")] == nil)
        #expect(cache[key("b")] == 2)
        #expect(cache[key("d")] == 3)
        #expect(cache.keys(masteredBy: 3) == [key("d")])
        #expect(cache.keys(masteredBy: 1).isEmpty)
        // Stale entries stay stored until dropped.
        #expect(cache.storedCount == 4)
        cache.dropIfStale(key("a"))
        cache.dropIfStale(key("b"))
        #expect(cache.storedCount == 3)
        #expect(cache[key("b")] == 2)
        cache[key("c")] = nil
        #expect(cache.storedCount == 2)
    }

    /// A resource that a recovery rebuilt here counts as rebuilt until that recovery ends (its requests wait), also
    /// when its master is written again (a local holder's binding), and no longer once another node masters it, its
    /// entry goes, or the recovery ends; a later recovery marks anew.
    @Test func aRebuiltMarkLastsUntilTheRecoveryEnds() {
        var cache = MasterCache()
        cache[key("plain")] = 1
        cache.markRebuilt(key("a"), by: 1)
        cache.markRebuilt(key("b"), by: 1)
        cache.markRebuilt(key("c"), by: 1)
        #expect(cache[key("a")] == 1)
        #expect(!cache.isRebuilt(key("plain")))
        #expect(cache.isRebuilt(key("a")) && cache.isRebuilt(key("b")) && cache.isRebuilt(key("c")))
        cache[key("a")] = 1
        cache[key("b")] = 2
        cache[key("c")] = nil
        #expect(cache.isRebuilt(key("a")))
        #expect(!cache.isRebuilt(key("b")) && !cache.isRebuilt(key("c")))
        cache.endRebuilds()
        #expect(!cache.isRebuilt(key("a")))
        #expect(cache[key("a")] == 1)
        cache.markRebuilt(key("d"), by: 1)
        #expect(cache.isRebuilt(key("d")) && !cache.isRebuilt(key("a")))
        // A mark of a master since forgotten is gone with its entry.
        cache.markRebuilt(key("e"), by: 2)
        cache.forget([2])
        #expect(!cache.isRebuilt(key("e")))
        cache[key("e")] = 2
        #expect(!cache.isRebuilt(key("e")))
    }
}
