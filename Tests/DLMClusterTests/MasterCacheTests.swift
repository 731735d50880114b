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

    /// A resource that a recovery rebuilt here counts as rebuilt until that recovery ends (its requests wait),
    /// whatever is written of its master meanwhile: the same master again (a local holder's binding), another one, a
    /// removal (it then reads as absent), a forget of its master; the end of the recovery clears every mark, and a
    /// later recovery marks anew.
    @Test func aRebuiltMarkLastsUntilTheRecoveryEnds() {
        var cache = MasterCache()
        cache[key("plain")] = 1
        for name in ["a", "b", "c", "e"] { cache.markRebuilt(key(name), by: 1) }
        #expect(cache[key("a")] == 1)
        #expect(!cache.isRebuilt(key("plain")))
        cache[key("a")] = 1
        cache[key("b")] = 2
        cache[key("c")] = nil
        cache.forget([1])
        #expect(cache[key("a")] == nil && cache[key("b")] == 2 && cache[key("c")] == nil)
        #expect(["a", "b", "c", "e"].allSatisfy { cache.isRebuilt(key($0)) })
        // A stale entry keeps its mark; an entry kept only for its mark is not a master.
        cache.dropIfStale(key("a"))
        cache.dropIfStale(key("c"))
        #expect(cache.isRebuilt(key("a")) && cache.isRebuilt(key("c")))
        #expect(cache.keys(masteredBy: 0).isEmpty)
        cache.endRebuilds()
        #expect(["a", "b", "c", "e"].allSatisfy { !cache.isRebuilt(key($0)) })
        #expect(cache[key("b")] == 2)
        // Once the recovery ended, the entries kept for their marks go like stale ones.
        cache.dropIfStale(key("a"))
        cache.dropIfStale(key("c"))
        #expect(cache.storedCount == 3)
        cache.markRebuilt(key("d"), by: 1)
        #expect(cache.isRebuilt(key("d")) && !cache.isRebuilt(key("b")))
    }
}
