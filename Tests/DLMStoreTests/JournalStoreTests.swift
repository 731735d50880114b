import DLMCore
import DLMStore
import DLMTestSupport
import Foundation
import Testing

/// What the engine journals, committed to a real store and read back, is exactly the engine's persistent state
/// (every persistent granted lock, each resource's value block, sequence, invalid mark, fencing-token mark and
/// volatile writer), checked along a random workload: locks and conversions in every mode, with and without
/// PERSISTENT and VALBLK, sub-locks, unlocks that write the value block, exits that orphan, purges and adoptions.
/// The journal writes a lock's own record, not its resource's locks, so a lock it forgets is a lock lost.
@Suite struct JournalStoreTests {
    static let lockspace = Array("ls".utf8)

    /// The persistent state, by resource path: the resource's own fields and its locks in id order, as a store
    /// keeps them (granted mode only, no owner: a restart makes every stored lock an orphan).
    struct Persistent: Equatable, CustomStringConvertible {
        var valueBlock: [UInt8]?
        var valueBlockSequence: UInt64
        var valueBlockInvalid: Bool
        var fencingToken: UInt64
        var hasVolatileWriter: Bool
        var locks: [String]

        var description: String {
            "lvb \(valueBlock ?? []) seq \(valueBlockSequence) invalid \(valueBlockInvalid) token \(fencingToken) "
                + "volatile \(hasVolatileWriter) locks \(locks)"
        }
    }

    static func lockText(_ lock: LockSnapshot) -> String {
        // Of the flags, PERSISTENT is state; the others are those of the lock's last request, written with its
        // next change (a refused NOQUEUE conversion leaves them changed and the lock as it was).
        "\(lock.id) \(lock.grantedMode.map { "\($0)" } ?? "-") persistent \(lock.flags.contains(.persistent)) "
            + "parent \(lock.parent.map { "\($0)" } ?? "-") xid \(lock.transaction ?? 0) prio \(lock.priority) "
            + "bast \(lock.wantsBlockingCallbacks) always \(lock.alwaysFencingToken) token \(lock.fencingToken) "
            + "pid \(lock.pid)"
    }

    static func expected(_ engine: LockEngine, _ ls: LockspaceID) -> [[[UInt8]]: Persistent] {
        var state: [[[UInt8]]: Persistent] = [:]
        for resource in engine.snapshotLockspace(ls) {
            let kept = resource.locks.filter { $0.flags.contains(.persistent) && $0.grantedMode != nil }
            guard !kept.isEmpty else { continue }
            let volatile = resource.locks.contains {
                !$0.flags.contains(.persistent) && ($0.grantedMode.map { $0 >= .pw } ?? false)
            }
            state[resource.path] = Persistent(
                valueBlock: resource.valueBlock, valueBlockSequence: resource.valueBlockSequence,
                valueBlockInvalid: resource.valueBlockInvalid, fencingToken: resource.fencingToken,
                hasVolatileWriter: volatile, locks: kept.sorted { $0.id < $1.id }.map(lockText))
        }
        return state
    }

    static func stored(_ store: NodeStore) throws -> [[[UInt8]]: Persistent] {
        var state: [[[UInt8]]: Persistent] = [:]
        for stored in try store.load().resources {
            let resource = stored.resource
            state[resource.path] = Persistent(
                valueBlock: resource.valueBlock, valueBlockSequence: resource.valueBlockSequence,
                valueBlockInvalid: resource.valueBlockInvalid, fencingToken: resource.fencingToken,
                hasVolatileWriter: stored.hasVolatileWriter,
                locks: resource.locks.sorted { $0.id < $1.id }.map(lockText))
        }
        return state
    }

    /// A random input on a lockspace of four resources and four owners.
    static func input(_ random: inout SplitMix64, _ engine: LockEngine, _ ls: LockspaceID) -> Input {
        let modes: [LockMode] = [.nl, .cr, .cw, .pr, .pw, .ex]
        let owner = OwnerID(UInt64(1 + random.below(4)))
        let held = engine.snapshotLockspace(ls).flatMap(\.locks)
        let mine = held.filter { $0.owner == owner }
        var flags: LockFlags = []
        if random.percent(50) { flags.insert(.persistent) }
        if random.percent(50) { flags.insert(.valueBlock) }
        let value = [random.byte()]
        switch random.below(100) {
        case 0..<35:
            if random.percent(60) { flags.insert(.noQueue) }
            let parent = mine.filter { $0.grantedMode != nil && $0.parent == nil }
            let under = !parent.isEmpty && random.percent(20) ? random.element(parent).id : nil
            return .lock(
                LockRequest(
                    lockspace: ls, owner: owner, name: [UInt8(ascii: "a") + UInt8(random.below(4))],
                    mode: random.element(modes), flags: flags, parent: under,
                    transaction: random.percent(20) ? UInt64(random.below(3)) + 1 : nil,
                    priority: UInt8(random.below(3)), alwaysFencingToken: random.bool()))
        case 35..<55 where !mine.isEmpty:
            let lock = random.element(mine)
            flags.formUnion([.convert, .noQueue])
            return .convert(
                ConvertRequest(
                    lock: lock.id, owner: owner, mode: random.element(modes), flags: flags,
                    valueBlock: flags.contains(.valueBlock) ? value : nil))
        case 55..<75 where !mine.isEmpty:
            let lock = random.element(mine)
            var unlock: LockFlags = random.percent(50) ? .valueBlock : []
            if random.percent(10) { unlock.insert(.invalidateValueBlock) }
            if random.percent(10) { unlock.insert(.forceUnlock) }
            return .unlock(
                UnlockRequest(
                    lock: lock.id, owner: owner, flags: unlock,
                    valueBlock: unlock.contains(.valueBlock) ? value : nil))
        case 75..<83:
            return .ownerExited(owner)
        case 83..<88:
            return .purge(lockspace: ls, pid: UInt32(100 + random.below(4)), requester: owner, context: 0)
        case 88..<96:
            // Adoption of an orphan (refused when there is none in that mode).
            return .lock(
                LockRequest(
                    lockspace: ls, owner: owner, name: [UInt8(ascii: "a") + UInt8(random.below(4))],
                    mode: random.element(modes), flags: [.orphan, .persistent, .noQueue]))
        default:
            return .tick(now: Instant(random.below(1_000_000)))
        }
    }

    @Test(arguments: 0..<20 as Range<UInt64>)
    func theStoreHoldsThePersistentStateAfterEveryStep(seed: UInt64) throws {
        var random = SplitMix64(seed: seed)
        // A quarter of the runs through the write-ahead log (`sync`), which `load` applies first.
        let store = try NodeStore(
            directory: temporaryDirectory("journal-\(seed)"), nodeID: 1, durability: seed % 4 == 0 ? .sync : .batch,
            mapSize: 1 << 26)
        var engine = LockEngine(config: EngineConfig(deadlockWait: 0))
        guard
            case .lockspace(let info, _)? = engine.handle(
                .openLockspace(name: Self.lockspace, valueBlockLength: 8, create: true)
            ).first
        else {
            Issue.record("no lockspace")
            return
        }
        try store.commit([.putLockspace(name: Self.lockspace, valueBlockLength: 8)])
        for owner in 1...4 { _ = engine.handle(.setProcess(pid: UInt32(99 + owner), owner: OwnerID(UInt64(owner)))) }
        for step in 0..<600 {
            var effects = engine.handle(Self.input(&random, engine, info.id))
            while engine.hasBulkWork { effects += engine.handle(.continueBulkWork) }
            var changes: [StoreChange] = []
            for case .persist(let entry) in effects { changes.append(.journal(entry)) }
            try store.commit(changes)
            if step % 10 == 9 {
                let expected = Self.expected(engine, info.id)
                let stored = try Self.stored(store)
                let differing = Set(stored.keys).union(expected.keys).filter { stored[$0] != expected[$0] }
                let report = differing.map {
                    "\($0): stored \(stored[$0].map { "\($0)" } ?? "nothing"), engine \(expected[$0].map { "\($0)" } ?? "nothing")"
                }
                #expect(differing.isEmpty, "seed \(seed), step \(step): \(report)")
                if stored != expected { return }
            }
        }
        #expect(!Self.expected(engine, info.id).isEmpty, "the workload left no persistent lock to check")
    }
}
