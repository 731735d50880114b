import CLMDB
import DLMCore
import Foundation

/// How much a node waits for the disk before it acknowledges a change to persistent state.
public enum Durability: String, Sendable, CaseIterable, CustomStringConvertible {
    /// Acknowledge after the group commit has reached the disk (fsync): nothing acknowledged is lost, even
    /// on power loss.
    case sync
    /// Acknowledge after the group commit (once per event-loop turn) is in LMDB, without waiting for fsync;
    /// the disk is synced every second. Nothing acknowledged is lost when dlmd is killed; a power loss may lose
    /// the last second.
    case batch
    /// Acknowledge at once; commits follow in the background. A kill may lose the changes of the last
    /// moments; a power loss, whatever the kernel had not written.
    case none

    public var description: String { rawValue }
}

/// The node's recoverable state in one LMDB environment (the data directory): its identity and incarnation,
/// its lockspaces, and the persistent locks, value blocks and fencing-token marks of its resources.
public final class NodeStore: @unchecked Sendable {
    /// The layout this code writes. Schema 2 records each persistent lock's pid (for `dlm_ls_purge`).
    public static let schemaVersion: UInt32 = 2
    /// The layouts this code reads. A directory of schema 1 is upgraded to 2 when a node opens it (its records
    /// are read with pid 0, unknown, and rewritten in the new format as they change): a dlmd of schema 1 then
    /// refuses it. A directory of any other schema is refused, untouched.
    public static let readableSchemas: ClosedRange<UInt32> = 1...2

    public let directory: String
    public let environment: LMDBEnvironment
    public let durability: Durability
    /// This start's incarnation: one more than the last start's.
    public let incarnation: UInt64
    public let nodeID: UInt32
    let meta: Database
    let lockspaces: Database
    let resources: Database

    /// Opens (or creates) the store in `directory`, checks its schema and node id, and counts this start as a
    /// new incarnation (committed to disk before it returns).
    public init(directory: String, nodeID: UInt32, durability: Durability, mapSize: Int) throws {
        try FileManager.default.createDirectory(atPath: directory, withIntermediateDirectories: true)
        let dataFile = directory + "/data.mdb"
        if FileManager.default.fileExists(atPath: dataFile) {
            try NodeStore.checkSchema(directory: directory, mapSize: mapSize, nodeID: nodeID)
        }
        self.directory = directory
        self.durability = durability
        self.nodeID = nodeID
        environment = try LMDBEnvironment(
            path: directory,
            options: .init(mapSize: mapSize, noSync: durability != .sync, noMetaSync: durability == .sync))
        meta = try environment.database("meta", create: true)
        lockspaces = try environment.database("lockspaces", create: true)
        resources = try environment.database("resources", create: true)
        let (meta, nodeID) = (self.meta, nodeID)
        incarnation = try environment.write { txn in
            if try txn.get(meta, Array("schema".utf8)) == nil {
                try txn.put(meta, Array("node_id".utf8), bigEndian(nodeID))
            }
            // New, or upgraded from schema 1 (checked by `checkSchema`).
            try txn.put(meta, Array("schema".utf8), bigEndian(NodeStore.schemaVersion))
            let previous = try txn.get(meta, Array("incarnation".utf8)).map { decodeUInt64($0) } ?? 0
            try txn.put(meta, Array("incarnation".utf8), bigEndian(previous + 1))
            return previous + 1
        }
        try environment.sync()
    }

    /// Refuses, without writing anything, a directory of a schema this code cannot read or of another node.
    /// Returns the directory's schema.
    @discardableResult
    static func checkSchema(directory: String, mapSize: Int, nodeID: UInt32?) throws -> UInt32 {
        let probe = try LMDBEnvironment(path: directory, options: .init(mapSize: mapSize, readOnly: true))
        return try probe.read { txn in
            var dbi = MDB_dbi()
            guard mdb_dbi_open(txn.txn, "meta", 0, &dbi) == 0 else {
                throw StoreError("\(directory) holds an LMDB environment that is not a dlmd data directory")
            }
            let meta = Database(dbi: dbi, name: "meta")
            guard let raw = try txn.get(meta, Array("schema".utf8)), raw.count == 4 else {
                throw StoreError("\(directory) has no schema version: not a dlmd data directory, or damaged")
            }
            let schema = UInt32(decodeUInt64(raw))
            guard NodeStore.readableSchemas.contains(schema) else {
                throw StoreError(
                    "\(directory) was written with store schema \(schema); this dlmd reads schemas "
                        + "\(NodeStore.readableSchemas.lowerBound) to \(NodeStore.readableSchemas.upperBound). "
                        + "Nothing was changed: use the dlmd that wrote it.")
            }
            if let nodeID, let raw = try txn.get(meta, Array("node_id".utf8)), UInt32(decodeUInt64(raw)) != nodeID {
                throw StoreError(
                    "\(directory) belongs to node \(decodeUInt64(raw)), not node \(nodeID). Nothing was changed.")
            }
            return schema
        }
    }

    // MARK: Reading

    public struct Contents: Sendable {
        public var lockspaces: [(name: [UInt8], valueBlockLength: Int)] = []
        public var resources: [StoredResource] = []
        public var lastView: [UInt8]?
    }

    /// Everything stored, decoded and checked; parents come before their sub-resources.
    public func load() throws -> Contents {
        let (lockspaces, resources, meta) = (self.lockspaces, self.resources, self.meta)
        return try environment.read { txn in
            var contents = Contents()
            try txn.forEach(lockspaces) { key, value in
                contents.lockspaces.append((key, try RecordCoding.decodeLockspace(value, name: key)))
            }
            try txn.forEach(resources) { key, value in
                contents.resources.append(try RecordCoding.decodeResource(key: key, value: value))
            }
            contents.lastView = try txn.get(meta, Array("view".utf8))
            return contents
        }
    }

    // MARK: Writing

    /// One change of a commit.
    public enum Change: Sendable {
        case journal(JournalEntry)
        case putLockspace(name: [UInt8], valueBlockLength: Int)
        case deleteLockspace(name: [UInt8])
        /// The last installed membership view (for the group services).
        case view([UInt8])
    }

    /// Writes the changes in one transaction. With `sync` durability the commit's data reaches the disk before
    /// this returns, and the commit is durable once the next commit returns or `sync()` has run (one fsync per
    /// commit instead of two: LMDB's `MDB_NOMETASYNC`); otherwise `sync()` flushes it later.
    public func commit(_ changes: [Change]) throws {
        let (lockspaces, resources, meta) = (self.lockspaces, self.resources, self.meta)
        try environment.write { txn in
            for change in changes {
                switch change {
                case .journal(.put(let stored)):
                    let (key, value) = RecordCoding.encode(stored)
                    try txn.put(resources, key, value)
                case .journal(.delete(let lockspace, let path)):
                    try txn.delete(resources, RecordCoding.resourceKey(lockspace: lockspace, path: path))
                case .putLockspace(let name, let length):
                    try txn.put(lockspaces, name, RecordCoding.encodeLockspace(valueBlockLength: length))
                case .deleteLockspace(let name):
                    try txn.delete(lockspaces, name)
                case .view(let view):
                    try txn.put(meta, Array("view".utf8), view)
                }
            }
        }
    }

    /// Makes every commit so far durable.
    public func sync() throws {
        try environment.sync()
    }

    // MARK: Operators

    public struct Report: Sendable, Codable, Hashable {
        public var path: String
        public var schema: UInt32
        public var nodeID: UInt32
        public var incarnation: UInt64
        public var mapSize: Int
        public var usedBytes: Int
        public var lockspaces: Int
        public var resources: Int
        public var persistentLocks: Int
    }

    /// Reads and decodes every record of a data directory without starting a node (`dlmd --check`).
    public static func check(directory: String, mapSize: Int) throws -> Report {
        guard FileManager.default.fileExists(atPath: directory + "/data.mdb") else {
            throw StoreError("\(directory) has no data.mdb: not a dlmd data directory")
        }
        let schema = try checkSchema(directory: directory, mapSize: mapSize, nodeID: nil)
        let environment = try LMDBEnvironment(path: directory, options: .init(mapSize: mapSize, readOnly: true))
        let meta = try environment.database("meta", create: false)
        let lockspaces = try environment.database("lockspaces", create: false)
        let resources = try environment.database("resources", create: false)
        return try environment.read { txn in
            var report = Report(
                path: directory, schema: schema,
                nodeID: UInt32(try txn.get(meta, Array("node_id".utf8)).map { decodeUInt64($0) } ?? 0),
                incarnation: try txn.get(meta, Array("incarnation".utf8)).map { decodeUInt64($0) } ?? 0,
                mapSize: environment.info().mapSize, usedBytes: environment.info().usedBytes, lockspaces: 0,
                resources: 0, persistentLocks: 0)
            var names = Set<[UInt8]>()
            try txn.forEach(lockspaces) { key, value in
                _ = try RecordCoding.decodeLockspace(value, name: key)
                names.insert(key)
                report.lockspaces += 1
            }
            var ids = Set<LockID>()
            try txn.forEach(resources) { key, value in
                let stored = try RecordCoding.decodeResource(key: key, value: value)
                guard names.contains(stored.lockspace) else {
                    throw StoreError("resource \(stored.resource.path) belongs to a lockspace that is not stored")
                }
                for lock in stored.resource.locks {
                    guard ids.insert(lock.id).inserted else { throw StoreError("lock id \(lock.id) is stored twice") }
                }
                report.resources += 1
                report.persistentLocks += stored.resource.locks.count
            }
            return report
        }
    }
}

func bigEndian<T: FixedWidthInteger>(_ value: T) -> [UInt8] {
    withUnsafeBytes(of: value.bigEndian) { Array($0) }
}

func decodeUInt64(_ bytes: [UInt8]) -> UInt64 {
    bytes.reduce(0) { $0 << 8 | UInt64($1) }
}
