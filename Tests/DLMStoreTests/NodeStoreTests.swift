import DLMCore
import DLMStore
import Foundation
import Testing

@Suite struct NodeStoreTests {
    func stored(_ name: String, lockID: UInt32, mode: LockMode, lvb: [UInt8]? = nil, volatile: Bool = false)
        -> StoredResource
    {
        let lock = LockSnapshot(
            id: LockID(rawValue: lockID), owner: OwnerID(7), queue: .grant, grantedMode: mode, requestedMode: nil,
            flags: .persistent, parent: nil, transaction: nil, priority: 3, wantsBlockingCallbacks: true,
            alwaysFencingToken: false, blockingSent: 0, pendingFlags: [], waitingSince: 0, waitSequence: 0,
            deadline: 0, fencingToken: 42)
        return StoredResource(
            lockspace: Array("ls".utf8),
            resource: ResourceSnapshot(
                lockspace: LockspaceID(rawValue: 0), path: [Array(name.utf8)], valueBlock: lvb, valueBlockSequence: 9,
                valueBlockInvalid: false, fencingToken: 42, locks: [lock]),
            hasVolatileWriter: volatile)
    }

    @Test func everyStartIsANewIncarnation() throws {
        let path = temporaryDirectory("incarnation")
        #expect(try NodeStore(directory: path, nodeID: 1, durability: .sync, mapSize: 1 << 24).incarnation == 1)
        #expect(try NodeStore(directory: path, nodeID: 1, durability: .batch, mapSize: 1 << 24).incarnation == 2)
        #expect(try NodeStore(directory: path, nodeID: 1, durability: .none, mapSize: 1 << 24).incarnation == 3)
    }

    @Test func whatIsCommittedIsLoadedBack() throws {
        let path = temporaryDirectory("roundtrip")
        do {
            let store = try NodeStore(directory: path, nodeID: 1, durability: .sync, mapSize: 1 << 24)
            try store.commit([
                .putLockspace(name: Array("ls".utf8), valueBlockLength: 16),
                .journal(.put(stored("a", lockID: 1, mode: .ex, lvb: Array(repeating: 5, count: 16)))),
                .journal(.put(stored("b", lockID: 2, mode: .pr, volatile: true))),
                .journal(.put(stored("c", lockID: 3, mode: .nl))),
                .journal(.delete(lockspace: Array("ls".utf8), path: [Array("c".utf8)])),
            ])
        }
        let store = try NodeStore(directory: path, nodeID: 1, durability: .sync, mapSize: 1 << 24)
        let contents = try store.load()
        #expect(contents.lockspaces.map(\.name) == [Array("ls".utf8)])
        #expect(contents.lockspaces.first?.valueBlockLength == 16)
        #expect(contents.resources.count == 2)
        #expect(contents.resources[0] == stored("a", lockID: 1, mode: .ex, lvb: Array(repeating: 5, count: 16)))
        #expect(contents.resources[1] == stored("b", lockID: 2, mode: .pr, volatile: true))
        let report = try NodeStore.check(directory: path, mapSize: 1 << 24)
        #expect(report.resources == 2 && report.persistentLocks == 2 && report.incarnation == 2)
    }

    @Test func aDirectoryOfAnotherSchemaIsRefusedAndLeftUntouched() throws {
        let path = temporaryDirectory("schema")
        do {
            let env = try LMDBEnvironment(path: path)
            let meta = try env.database("meta", create: true)
            try env.write { (txn) throws in try txn.put(meta, Array("schema".utf8), [0, 0, 0, 9]) }
        }
        let before = try Data(contentsOf: URL(fileURLWithPath: path + "/data.mdb"))
        var message = ""
        do {
            _ = try NodeStore(directory: path, nodeID: 1, durability: .sync, mapSize: 1 << 24)
        } catch {
            message = "\(error)"
        }
        #expect(message.contains("schema 9"))
        #expect(try Data(contentsOf: URL(fileURLWithPath: path + "/data.mdb")) == before)
    }

    @Test func anotherNodesDirectoryIsRefused() throws {
        let path = temporaryDirectory("node")
        _ = try NodeStore(directory: path, nodeID: 1, durability: .sync, mapSize: 1 << 24)
        #expect(throws: StoreError.self) {
            _ = try NodeStore(directory: path, nodeID: 2, durability: .sync, mapSize: 1 << 24)
        }
    }

    @Test func aCorruptRecordIsFoundByCheck() throws {
        let path = temporaryDirectory("corrupt")
        do {
            let store = try NodeStore(directory: path, nodeID: 1, durability: .sync, mapSize: 1 << 24)
            try store.commit([.putLockspace(name: Array("ls".utf8), valueBlockLength: 8)])
            let env = store.environment
            let resources = try env.database("resources", create: false)
            try env.write { (txn) throws in try txn.put(resources, [2, 0x6c, 0x73, 1, 0x61], [1, 2, 3]) }
        }
        #expect(throws: StoreError.self) { _ = try NodeStore.check(directory: path, mapSize: 1 << 24) }
    }

    @Test func aDamagedDataFileIsRefused() throws {
        let path = temporaryDirectory("damaged")
        _ = try NodeStore(directory: path, nodeID: 1, durability: .sync, mapSize: 1 << 24)
        // Overwrite both meta pages.
        let handle = try FileHandle(forWritingTo: URL(fileURLWithPath: path + "/data.mdb"))
        try handle.write(contentsOf: Data(repeating: 0x5A, count: 8192))
        try handle.close()
        #expect(throws: (any Error).self) { _ = try NodeStore.check(directory: path, mapSize: 1 << 24) }
        #expect(throws: (any Error).self) {
            _ = try NodeStore(directory: path, nodeID: 1, durability: .sync, mapSize: 1 << 24)
        }
    }
}
