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
            deadline: 0, fencingToken: 42, pid: 4242)
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
                .putLockspace(
                    name: Array("team".utf8), valueBlockLength: 8,
                    access: LockspaceAccess(uid: 1000, gid: 50, mode: 0o660)),
                .journal(.put(stored("a", lockID: 1, mode: .ex, lvb: Array(repeating: 5, count: 16)))),
                .journal(.put(stored("b", lockID: 2, mode: .pr, volatile: true))),
                .journal(.put(stored("c", lockID: 3, mode: .nl))),
                .journal(.delete(lockspace: Array("ls".utf8), path: [Array("c".utf8)])),
            ])
        }
        let store = try NodeStore(directory: path, nodeID: 1, durability: .sync, mapSize: 1 << 24)
        let contents = try store.load()
        #expect(Set(contents.lockspaces.map(\.name)) == [Array("ls".utf8), Array("team".utf8)])
        let ls = contents.lockspaces.first { $0.name == Array("ls".utf8) }
        let team = contents.lockspaces.first { $0.name == Array("team".utf8) }
        #expect(ls?.valueBlockLength == 16 && ls?.access == nil)
        #expect(team?.valueBlockLength == 8 && team?.access == LockspaceAccess(uid: 1000, gid: 50, mode: 0o660))
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

    @Test func aDirectoryOfSchema1IsReadWithUnknownPidsAndUpgraded() throws {
        let path = temporaryDirectory("schema1")
        do {
            // What a dlmd of schema 1 wrote: no pid in the lock records (resource format 1).
            let env = try LMDBEnvironment(path: path)
            let meta = try env.database("meta", create: true)
            let lockspaces = try env.database("lockspaces", create: true)
            let resources = try env.database("resources", create: true)
            var record: [UInt8] = [1, 0]  // format 1, no value block
            record += [0, 0, 0, 0, 0, 0, 0, 9]  // value block sequence
            record += [0]  // valid
            record += [0, 0, 0, 0, 0, 0, 0, 42]  // fencing token
            record += [0, 0, 0, 0, 1]  // no volatile writer, one lock:
            record += [0, 0, 0, 5] + [0, 0, 0, 0, 0, 0, 0, 7] + [LockMode.pr.rawValue]  // id, owner, mode
            record += [0, 0, 0, 0x80] + [0, 0, 0, 0] + [UInt8](repeating: 0, count: 8)  // flags, parent, xid
            record += [3, 1] + [0, 0, 0, 0, 0, 0, 0, 42]  // priority, options, token
            try env.write { (txn) throws in
                try txn.put(meta, Array("schema".utf8), [0, 0, 0, 1])
                try txn.put(meta, Array("node_id".utf8), [0, 0, 0, 1])
                try txn.put(meta, Array("incarnation".utf8), [0, 0, 0, 0, 0, 0, 0, 4])
                try txn.put(lockspaces, Array("ls".utf8), [1, 32, 0, 0, 0, 0, 0, 0, 0, 0])
                try txn.put(resources, [2] + Array("ls".utf8) + [1] + Array("r".utf8), record)
            }
        }
        #expect(try NodeStore.check(directory: path, mapSize: 1 << 24).schema == 1)
        do {
            let store = try NodeStore(directory: path, nodeID: 1, durability: .sync, mapSize: 1 << 24)
            #expect(store.incarnation == 5)
            let contents = try store.load()
            #expect(contents.resources.count == 1)
            let lock = contents.resources.first?.resource.locks.first
            #expect(lock?.id == LockID(rawValue: 5) && lock?.grantedMode == .pr && lock?.fencingToken == 42)
            #expect(lock?.flags == .persistent && lock?.priority == 3 && lock?.wantsBlockingCallbacks == true)
            #expect(lock?.pid == 0 && lock?.uid == LockEngine.unknownUser)
            // Rewritten in the new format, with a pid and a uid.
            var rewritten = try #require(contents.resources.first)
            rewritten.resource.locks[0].pid = 77
            rewritten.resource.locks[0].uid = 1000
            try store.commit([.journal(.put(rewritten))])
            let reloaded = try store.load().resources.first?.resource.locks.first
            #expect(reloaded?.pid == 77 && reloaded?.uid == 1000 && reloaded?.orphanNode == 0)
            // An orphan keeps its former owner's node (schema 5), and the recovered view is kept.
            rewritten.resource.locks[0].owner = nil
            rewritten.resource.locks[0].orphanNode = 3
            try store.commit([.journal(.put(rewritten)), .recoveredView(12)])
            let again = try store.load()
            #expect(again.resources.first?.resource.locks.first?.orphanNode == 3 && again.recoveredView == 12)
        }
        // Opened once, the directory is of schema 5 (the lock in a record of its own, with its uid): an older dlmd
        // refuses it.
        let report = try NodeStore.check(directory: path, mapSize: 1 << 24)
        #expect(report.schema == 5 && report.resources == 1 && report.persistentLocks == 1)
    }

    /// A store of schema 3 keeps its lock records, which have no uid: its orphans come back with an unknown user
    /// (anyone allowed into their lockspace may adopt or purge them, as before), and the directory is of schema 5.
    @Test func aDirectoryOfSchema3IsReadWithUnknownUsers() throws {
        let path = temporaryDirectory("schema3")
        do {
            let env = try LMDBEnvironment(path: path)
            let meta = try env.database("meta", create: true)
            let lockspaces = try env.database("lockspaces", create: true)
            let resources = try env.database("resources", create: true)
            let key = [2] + Array("ls".utf8) + [1] + Array("r".utf8)
            var resource: [UInt8] = [3, 0] + [UInt8](repeating: 0, count: 8) + [0]  // format 3, no value block
            resource += [0, 0, 0, 0, 0, 0, 0, 42] + [0] + [0, 0, 0, 0]  // fencing token, no writer, no locks inside
            var lock: [UInt8] = [3] + [UInt8](repeating: 0, count: 8) + [LockMode.pr.rawValue]  // format 3, orphan
            lock += [0, 0, 0, 0x80] + [0, 0, 0, 0] + [UInt8](repeating: 0, count: 8)  // flags, parent, xid
            lock += [0, 0] + [0, 0, 0, 0, 0, 0, 0, 42] + [0, 0, 0x10, 0x92]  // priority, options, token, pid 4242
            try env.write { (txn) throws in
                try txn.put(meta, Array("schema".utf8), [0, 0, 0, 3])
                try txn.put(meta, Array("node_id".utf8), [0, 0, 0, 1])
                try txn.put(meta, Array("incarnation".utf8), [0, 0, 0, 0, 0, 0, 0, 4])
                try txn.put(lockspaces, Array("ls".utf8), [1, 32, 0, 0, 0, 0, 0, 0, 0, 0])
                try txn.put(resources, key, resource)
                try txn.put(resources, key + [0, 0, 0, 0, 5], lock)
            }
        }
        let store = try NodeStore(directory: path, nodeID: 1, durability: .sync, mapSize: 1 << 24)
        let lock = try store.load().resources.first?.resource.locks.first
        #expect(lock?.id == LockID(rawValue: 5) && lock?.pid == 4242 && lock?.uid == LockEngine.unknownUser)
        #expect(try NodeStore.check(directory: path, mapSize: 1 << 24).schema == 5)
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
