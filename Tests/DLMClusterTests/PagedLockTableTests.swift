import DLMCore
import DLMTestSupport
import Testing

@testable import DLMCluster

/// The table of rebuilt locks by lock id holds what a dictionary would: random writes and removals over ids close
/// together and far apart, checked entry by entry against one, and it frees a page once its last entry goes.
struct PagedLockTableTests {
    @Test(arguments: [1, 2, 3])
    func agreesWithADictionary(seed: UInt64) {
        var random = SplitMix64(seed: seed)
        var paged = PagedLockTable<Int>()
        var plain: [LockID: Int] = [:]
        // Mostly ids in a run, as a recovery hands them out, and some far apart.
        func id() -> LockID {
            LockID(rawValue: 1 + (random.below(4) == 0 ? UInt32(random.below(1 << 24)) : UInt32(random.below(5_000))))
        }
        for step in 0..<20_000 {
            let lock = id()
            if random.below(3) == 0 {
                #expect(paged.removeValue(forKey: lock) == plain.removeValue(forKey: lock))
            } else {
                #expect(paged.updateValue(step, forKey: lock) == plain.updateValue(step, forKey: lock))
            }
            #expect(paged.count == plain.count)
        }
        for (lock, value) in plain { #expect(paged[lock] == value) }
        for _ in 0..<1_000 {
            let lock = id()
            #expect(paged[lock] == plain[lock])
        }
        // Emptied, it holds nothing (and no page: a table that held a million ids once is small again).
        for lock in plain.keys { paged[lock] = nil }
        #expect(paged.isEmpty)
        #expect(paged.pageCount == 0)
    }

    @Test func idZeroIsNoLock() {
        var paged = PagedLockTable<Int>()
        paged[LockID(rawValue: 0)] = 1
        #expect(paged.isEmpty && paged[LockID(rawValue: 0)] == nil)
    }
}
