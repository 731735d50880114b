import DLMCore
import Foundation
import Testing

@testable import DLMStore

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
    /// offset and size (without the end mark that followed it), and the log.
    func crashedDirectory(_ label: String, groups: [[NodeStore.Change]]) throws -> (String, [(Int, Int)]) {
        let (path, placed, _) = try crashedLog(label, groups: groups)
        return (path, placed)
    }

    func crashedLog(_ label: String, groups: [[NodeStore.Change]]) throws -> (String, [(Int, Int)], WriteAheadLog) {
        let path = temporaryDirectory(label)
        _ = try NodeStore(directory: path, nodeID: 1, durability: .batch, mapSize: 1 << 24)
        let log = try WriteAheadLog(directory: path, lastSequence: 0, capacity: 1 << 16)
        var placed: [(Int, Int)] = []
        for group in groups {
            let record = log.encodeNext(NodeStore.operations(group))
            placed.append((log.offset, record.count - WriteAheadLog.headerSize))
            try log.append(record)
        }
        return (path, placed, log)
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
        // Replayed by a store without a log of its own (`batch`), which leaves the file as it was. (A `sync` store
        // starts its log again under a new epoch, after which the old records are no records at all.)
        _ = try NodeStore(directory: path, nodeID: 1, durability: .batch, mapSize: 1 << 24)
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

    /// Client data is written into the log (lock names, value blocks), so a client can lay out bytes as a record.
    /// Without the epoch, which never leaves the file, such bytes are no record: not replayed where the log ends
    /// (as after a torn append), and not taken for damage further on.
    @Test func aRecordForgedWithoutTheEpochIsNeitherReplayedNorDamage() throws {
        let (path, placed) = try crashedDirectory("wal-forged", groups: groups)
        let end = placed[2].0 + placed[2].1
        let evil = WriteAheadLog.encodePayload(
            NodeStore.operations([.putLockspace(name: Array("evil".utf8), valueBlockLength: 8)]))
        // Where the log ends (its end mark overwritten, as by a torn append), and far on with a higher number.
        try overwrite(path, at: end, with: WriteAheadLog.encodeRecord(sequence: 4, payload: evil, epoch: nil))
        try overwrite(path, at: end + 4096, with: WriteAheadLog.encodeRecord(sequence: 90, payload: evil, epoch: 0))
        let pending = try WriteAheadLog.pending(directory: path, applied: 0)
        #expect(pending.records.map(\.sequence) == [1, 2, 3])
        let store = try NodeStore(directory: path, nodeID: 1, durability: .sync, mapSize: 1 << 24)
        #expect(try store.load().lockspaces.map(\.name) == [ls])
    }

    /// Each append ends the log with an end mark: a log that reaches it is whole, whatever follows; one whose end
    /// mark is gone (a torn append) is checked for damage: a valid record above the mark after it is refused.
    @Test func theLogEndsAtItsEndMark() throws {
        let (path, placed, log) = try crashedLog("wal-end", groups: groups)
        let end = placed[2].0 + placed[2].1
        let later = WriteAheadLog.encodeRecord(
            sequence: 9, payload: WriteAheadLog.encodePayload([]), epoch: log.epoch)
        try overwrite(path, at: end + 1024, with: later)
        #expect(try WriteAheadLog.pending(directory: path, applied: 0).records.count == 3)
        try overwrite(path, at: end, with: [UInt8](repeating: 0, count: WriteAheadLog.headerSize))
        #expect(throws: StoreError.self) { _ = try WriteAheadLog.pending(directory: path, applied: 0) }
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
