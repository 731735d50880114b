import DLMCore
import DLMStore
import Foundation
import Testing

/// The write-ahead log of `sync` durability: records made durable one by one, replayed into LMDB at the next
/// start above the applied mark, a torn tail ignored, damage in the middle refused.
@Suite struct WriteAheadLogTests {
    let ls = Array("ls".utf8)

    func stored(_ name: String, lockID: UInt32) -> StoredResource {
        let lock = LockSnapshot(
            id: LockID(rawValue: lockID), owner: OwnerID(7), queue: .grant, grantedMode: .ex, requestedMode: nil,
            flags: .persistent, parent: nil, transaction: nil, priority: 3, wantsBlockingCallbacks: true,
            alwaysFencingToken: false, blockingSent: 0, pendingFlags: [], waitingSince: 0, waitSequence: 0,
            deadline: 0, fencingToken: 42, pid: 4242)
        return StoredResource(
            lockspace: ls,
            resource: ResourceSnapshot(
                lockspace: LockspaceID(rawValue: 0), path: [Array(name.utf8)], valueBlock: nil, valueBlockSequence: 0,
                valueBlockInvalid: false, fencingToken: 42, locks: [lock]),
            hasVolatileWriter: false)
    }

    /// A new data directory (made in `batch` mode, so with no log yet) and the groups below, written to its log
    /// as a dlmd in `sync` mode would have before it was killed, none applied to LMDB. Returns each record's
    /// offset and size.
    func crashedDirectory(_ label: String, groups: [[NodeStore.Change]]) throws -> (String, [(Int, Int)]) {
        let path = temporaryDirectory(label)
        _ = try NodeStore(directory: path, nodeID: 1, durability: .batch, mapSize: 1 << 24)
        let log = try WriteAheadLog(directory: path, lastSequence: 0, capacity: 1 << 16)
        var placed: [(Int, Int)] = []
        for group in groups {
            let record = log.encodeNext(NodeStore.operations(group))
            placed.append((log.offset, record.count))
            try log.append(record)
        }
        return (path, placed)
    }

    var groups: [[NodeStore.Change]] {
        [
            [.putLockspace(name: ls, valueBlockLength: 8), .journal(.put(stored("a", lockID: 1)))],
            [.journal(.put(stored("b", lockID: 2)))],
            [.journal(.put(stored("c", lockID: 3))), .journal(.delete(lockspace: ls, path: [Array("a".utf8)]))],
        ]
    }

    func names(_ store: NodeStore) throws -> [String] {
        try store.load().resources.map { String(decoding: $0.resource.path[0], as: UTF8.self) }
    }

    func overwrite(_ path: String, at offset: Int, with bytes: [UInt8]) throws {
        let handle = try FileHandle(forWritingTo: URL(fileURLWithPath: path + "/wal"))
        try handle.seek(toOffset: UInt64(offset))
        try handle.write(contentsOf: Data(bytes))
        try handle.close()
    }

    @Test func recordsAreReadBackInOrderAboveTheAppliedMark() throws {
        let (path, _) = try crashedDirectory("wal-roundtrip", groups: groups)
        let all = try WriteAheadLog.pending(directory: path, applied: 0)
        #expect(all.records.map(\.sequence) == [1, 2, 3])
        #expect(all.records.map(\.operations) == groups.map { NodeStore.operations($0) })
        #expect(all.lastSequence == 3)
        let rest = try WriteAheadLog.pending(directory: path, applied: 2)
        #expect(rest.records.map(\.sequence) == [3])
        #expect(try WriteAheadLog.pending(directory: path, applied: 3).records.isEmpty)
    }

    @Test func whatTheLogHoldsIsReplayedAtTheNextStartAndTheLogIsThenEmpty() throws {
        let (path, _) = try crashedDirectory("wal-replay", groups: groups)
        #expect(try NodeStore.check(directory: path, mapSize: 1 << 24).logRecordsToReplay == 3)
        do {
            let store = try NodeStore(directory: path, nodeID: 1, durability: .sync, mapSize: 1 << 24)
            #expect(store.pendingRecordsAtOpen == 3)
            #expect(try store.load().lockspaces.map(\.name) == [ls])
            #expect(try names(store) == ["b", "c"])
        }
        let report = try NodeStore.check(directory: path, mapSize: 1 << 24)
        #expect(report.logRecordsToReplay == 0 && report.resources == 2)
        // Replayed the same in any mode.
        let (other, _) = try crashedDirectory("wal-replay-batch", groups: groups)
        #expect(try names(NodeStore(directory: other, nodeID: 1, durability: .batch, mapSize: 1 << 24)) == ["b", "c"])
    }

    @Test func theAppliedMarkKeepsARecordFromBeingAppliedTwice() throws {
        let (path, _) = try crashedDirectory("wal-twice", groups: groups)
        _ = try NodeStore(directory: path, nodeID: 1, durability: .sync, mapSize: 1 << 24)
        // Later changes undo what the replayed records did; the records are still in the file.
        do {
            let store = try NodeStore(directory: path, nodeID: 1, durability: .batch, mapSize: 1 << 24)
            try store.commit([.journal(.delete(lockspace: ls, path: [Array("b".utf8)]))])
            try store.commit([.journal(.put(stored("a", lockID: 9)))])
            try store.sync()
        }
        #expect(try WriteAheadLog.pending(directory: path, applied: 0).records.count == 3)
        let store = try NodeStore(directory: path, nodeID: 1, durability: .sync, mapSize: 1 << 24)
        #expect(store.pendingRecordsAtOpen == 0)
        #expect(try names(store) == ["a", "c"])
    }

    @Test func aTornTailWasNeverAcknowledgedAndIsIgnored() throws {
        let (path, placed) = try crashedDirectory("wal-torn", groups: groups)
        // The last record only half written: its end is still zeros.
        let (offset, size) = placed[2]
        try overwrite(path, at: offset + size / 2, with: [UInt8](repeating: 0, count: size - size / 2))
        #expect(try NodeStore.check(directory: path, mapSize: 1 << 24).logRecordsToReplay == 2)
        let store = try NodeStore(directory: path, nodeID: 1, durability: .sync, mapSize: 1 << 24)
        #expect(store.pendingRecordsAtOpen == 2)
        #expect(try names(store) == ["a", "b"])
    }

    @Test func aCorruptRecordFollowedByValidOnesIsRefused() throws {
        let (path, placed) = try crashedDirectory("wal-corrupt", groups: groups)
        let (offset, size) = placed[1]
        try overwrite(path, at: offset + size - 12, with: [0xA5])
        let before = try Data(contentsOf: URL(fileURLWithPath: path + "/data.mdb"))
        var message = ""
        do {
            _ = try NodeStore(directory: path, nodeID: 1, durability: .sync, mapSize: 1 << 24)
        } catch {
            message = "\(error)"
        }
        #expect(message.contains("is damaged") && message.contains("record 3"), "\(message)")
        #expect(try Data(contentsOf: URL(fileURLWithPath: path + "/data.mdb")) == before)
        #expect(throws: StoreError.self) { _ = try NodeStore.check(directory: path, mapSize: 1 << 24) }
    }

    @Test func aSmallLogStartsAgainAndEveryCommitSurvives() throws {
        let path = temporaryDirectory("wal-wrap")
        do {
            let store = try NodeStore(
                directory: path, nodeID: 1, durability: .sync, mapSize: 1 << 24, logCapacity: 4096)
            try store.commit([.putLockspace(name: ls, valueBlockLength: 8)])
            for index in 0..<300 {
                try store.commit([.journal(.put(stored("r\(index)", lockID: UInt32(index + 1))))])
                if index % 3 == 0 && index > 0 {
                    try store.commit([.journal(.delete(lockspace: ls, path: [Array("r\(index - 1)".utf8)]))])
                }
            }
        }
        let store = try NodeStore(directory: path, nodeID: 1, durability: .sync, mapSize: 1 << 24)
        let expected = (0..<300).filter { !($0 % 3 == 2 && $0 < 299) }.map { "r\($0)" }.sorted()
        #expect(try names(store).sorted() == expected)
        #expect(try NodeStore.check(directory: path, mapSize: 1 << 24).logRecordsToReplay == 0)
    }
}
