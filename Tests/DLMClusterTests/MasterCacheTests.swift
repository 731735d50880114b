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
}
