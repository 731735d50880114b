import DLMStore
import DLMTestSupport
import Foundation
import Testing

func temporaryDirectory(_ label: String) -> String {
    let path = TemporaryFolders.path("dlm-\(label)")
    try? FileManager.default.createDirectory(atPath: path, withIntermediateDirectories: true)
    return path
}

@Suite struct LMDBTests {
    @Test func aPrefixDeleteRemovesExactlyTheKeysThatStartWithIt() throws {
        let env = try LMDBEnvironment(path: temporaryDirectory("prefix"))
        let db = try env.database("t", create: true)
        // Enough keys under the prefix to span several pages, with neighbours on both sides.
        try env.write { (txn) throws in
            try txn.put(db, [1, 9], [0])
            for i in 0..<2_000 {
                try txn.put(db, [2, 0, UInt8(i >> 8), UInt8(i & 255)], [UInt8](repeating: 7, count: 40))
            }
            try txn.put(db, [2], [1])
            try txn.put(db, [2, 1], [2])
            try txn.put(db, [3], [3])
        }
        let deleted = try env.write { (txn) throws in try txn.deletePrefix(db, [2, 0]) }
        #expect(deleted == 2_000)
        try env.read { (txn) throws in
            var left: [[UInt8]] = []
            try txn.forEach(db) { key, _ in left.append(key) }
            #expect(left == [[1, 9], [2], [2, 1], [3]])
        }
    }

    @Test func committedWritesAreReadBackAndAbortedOnesAreNot() throws {
        let path = temporaryDirectory("lmdb")
        let env = try LMDBEnvironment(path: path)
        let db = try env.database("t", create: true)
        try env.write { (txn) throws in
            try txn.put(db, [1], [10])
            try txn.put(db, [2], [20])
        }
        struct Abort: Error {}
        #expect(throws: Abort.self) {
            try env.write { (txn) throws in
                try txn.put(db, [3], [30])
                throw Abort()
            }
        }
        try env.read { (txn) throws in
            #expect(try txn.get(db, [1]) == [10])
            #expect(try txn.get(db, [3]) == nil)
            #expect(try txn.count(db) == 2)
        }
        // Deleting, and a delete of a missing key.
        try env.write { (txn) throws in
            #expect(try txn.delete(db, [1]))
            #expect(try !txn.delete(db, [9]))
        }
        try env.read { (txn) throws in #expect(try txn.get(db, [1]) == nil) }
    }

    @Test func aCursorVisitsKeysInOrder() throws {
        let env = try LMDBEnvironment(path: temporaryDirectory("cursor"))
        let db = try env.database("t", create: true)
        try env.write { (txn) throws in
            for key in [[3], [1, 5], [1], [2, 0, 0]] as [[UInt8]] { try txn.put(db, key, key) }
        }
        var keys: [[UInt8]] = []
        try env.read { (txn) throws in
            try txn.forEach(db) { key, value in
                #expect(key == value)
                keys.append(key)
            }
        }
        #expect(keys == [[1], [1, 5], [2, 0, 0], [3]])
    }

    @Test func aFullMapIsAClearErrorAndLosesNothingCommitted() throws {
        let env = try LMDBEnvironment(path: temporaryDirectory("full"), options: .init(mapSize: 64 * 1024))
        let db = try env.database("t", create: true)
        try env.write { (txn) throws in try txn.put(db, [0], [1, 2, 3]) }
        var caught: LMDBError?
        do {
            try env.write { (txn) throws in
                for index in 0..<10_000 {
                    try txn.put(
                        db, withUnsafeBytes(of: UInt32(index + 1).bigEndian) { Array($0) },
                        [UInt8](repeating: 7, count: 100))
                }
            }
        } catch let error as LMDBError {
            caught = error
        }
        #expect(caught?.isMapFull == true)
        #expect(caught?.description.contains("--map-size") == true)
        try env.read { (txn) throws in
            #expect(try txn.get(db, [0]) == [1, 2, 3])
            #expect(try txn.count(db) == 1)
        }
    }

    @Test func openingSomethingThatIsNotAnEnvironmentFails() throws {
        let path = temporaryDirectory("garbage")
        try Data(repeating: 0xAB, count: 64 * 1024).write(to: URL(fileURLWithPath: path + "/data.mdb"))
        #expect(throws: LMDBError.self) { _ = try LMDBEnvironment(path: path) }
    }
}
