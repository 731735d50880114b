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
    /// The layout this code writes. Schema 2 records each persistent lock's pid (for `dlm_ls_purge`); schema 3
    /// keeps each persistent lock in a record of its own, so that a change to one lock of a resource holding
    /// many writes one small record, not the whole resource; schema 4 adds each lock's uid (who may adopt or
    /// purge it as an orphan).
    public static let schemaVersion: UInt32 = 5
    /// The layouts this code reads. A directory of schema 1 or 2 is upgraded to 4 when a node opens it (every
    /// resource rewritten in the new layout in one transaction, schema 1's locks with pid 0, unknown); one of
    /// schema 3 keeps its lock records, read with an unknown uid until they are written again. A dlmd of an older
    /// schema then refuses the directory. A directory of any other schema is refused, untouched.
    public static let readableSchemas: ClosedRange<UInt32> = 1...5

    public let directory: String
    public let environment: LMDBEnvironment
    public let durability: Durability
    /// This start's incarnation: one more than the last start's.
    public let incarnation: UInt64
    public let nodeID: UInt32
    /// The store's limit (`--map-size`): once its data reaches it, the node refuses new persistent locks and
    /// lockspaces (ENOSPC, the store alarm) until unlocks bring it back below. LMDB's map is larger by
    /// `headroom(limit:)`, room for what was promised before the alarm: the commits already queued and the
    /// requests granted while it was being raised, the replay of the write-ahead log and the rewrite of the
    /// restored resources at the next start. So a full store neither stops dlmd nor keeps it from starting again.
    public let limit: Int
    let meta: Database
    let lockspaces: Database
    let resources: Database

    /// The write-ahead log (`sync` durability only) and the thread that applies its records to LMDB.
    let log: WriteAheadLog?
    let applier: LogApplier?
    private let logLock = NSLock()

    /// Opens (or creates) the store in `directory`, checks its schema and node id, replays what the write-ahead
    /// log holds beyond what LMDB holds, and counts this start as a new incarnation (committed to disk before it
    /// returns). `logCapacity` is the size of the write-ahead log file (`sync` durability).
    public init(
        directory: String, nodeID: UInt32, durability: Durability, mapSize: Int,
        logCapacity: Int = WriteAheadLog.defaultCapacity
    ) throws {
        try FileManager.default.createDirectory(atPath: directory, withIntermediateDirectories: true)
        let dataFile = directory + "/data.mdb"
        var previousSchema = NodeStore.schemaVersion
        if FileManager.default.fileExists(atPath: dataFile) {
            previousSchema = try NodeStore.checkSchema(directory: directory, mapSize: mapSize, nodeID: nodeID)
        }
        self.directory = directory
        self.durability = durability
        self.nodeID = nodeID
        limit = mapSize
        let environment = try LMDBEnvironment(
            path: directory,
            options: .init(
                mapSize: NodeStore.mapSize(limit: mapSize), noSync: durability != .sync,
                noMetaSync: durability == .sync))
        let meta = try environment.database("meta", create: true)
        let tables = Tables(
            meta: meta, lockspaces: try environment.database("lockspaces", create: true),
            resources: try environment.database("resources", create: true))
        self.environment = environment
        self.meta = meta
        lockspaces = tables.lockspaces
        resources = tables.resources
        // Replay before anything is read: what the log holds above the applied mark was acknowledged.
        let applied = try environment.read { txn in try NodeStore.appliedMark(txn, meta) }
        let pending = try WriteAheadLog.pending(directory: directory, applied: applied)
        if let last = pending.records.last?.sequence {
            try environment.write { txn in
                for record in pending.records { try tables.apply(record.operations, txn) }
                try txn.put(meta, NodeStore.appliedKey, bigEndian(last))
            }
            try environment.sync()
        }
        if previousSchema < 3 { try NodeStore.upgradeToOwnLockRecords(environment, tables) }
        incarnation = try environment.write { txn in
            if try txn.get(meta, Array("schema".utf8)) == nil {
                try txn.put(meta, Array("node_id".utf8), bigEndian(nodeID))
            }
            // New, or upgraded from schema 1 or 2 (checked by `checkSchema`).
            try txn.put(meta, Array("schema".utf8), bigEndian(NodeStore.schemaVersion))
            let previous = try txn.get(meta, Array("incarnation".utf8)).map { decodeUInt64($0) } ?? 0
            try txn.put(meta, Array("incarnation".utf8), bigEndian(previous + 1))
            return previous + 1
        }
        try environment.sync()
        if durability == .sync {
            log = try WriteAheadLog(directory: directory, lastSequence: pending.lastSequence, capacity: logCapacity)
            applier = LogApplier(environment: environment, tables: tables, applied: pending.lastSequence)
        } else {
            log = nil
            applier = nil
        }
        pendingRecordsAtOpen = pending.records.count
    }

    /// How many records of the write-ahead log were replayed when the store was opened.
    public let pendingRecordsAtOpen: Int

    deinit {
        applier?.stop()
    }

    static let appliedKey = Array("wal_applied".utf8)

    /// Schema 1 or 2 to 3: every resource record, which holds its locks, is written again as a resource record
    /// and one record per lock, in one transaction (after the write-ahead log's replay, whose records are of the
    /// old schema).
    static func upgradeToOwnLockRecords(_ environment: LMDBEnvironment, _ tables: Tables) throws {
        try environment.write { txn in
            var old: [StoredResource] = []
            try txn.forEach(tables.resources) { key, value in
                let (lockspace, path, lock) = try RecordCoding.decodeKey(key)
                guard lock == nil else { throw StoreError("a store of schema 2 or older holds a lock record") }
                old.append(try RecordCoding.decodeResource(lockspace: lockspace, path: path, value: value))
            }
            try tables.apply(operations(old.map { .journal(.put($0)) }), txn)
        }
        try environment.sync()
    }

    /// The sequence number of the last write-ahead record whose changes are in LMDB.
    static func appliedMark(_ txn: Transaction, _ meta: Database) throws -> UInt64 {
        try txn.get(meta, appliedKey).map { decodeUInt64($0) } ?? 0
    }

    /// Refuses, without writing anything, a directory of a schema this code cannot read or of another node.
    /// Returns the directory's schema.
    @discardableResult
    static func checkSchema(directory: String, mapSize: Int, nodeID: UInt32?) throws -> UInt32 {
        let probe = try LMDBEnvironment(
            path: directory, options: .init(mapSize: NodeStore.mapSize(limit: mapSize), readOnly: true))
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
        public var lockspaces: [(name: [UInt8], valueBlockLength: Int, access: LockspaceAccess?)] = []
        public var resources: [StoredResource] = []
        public var lastView: [UInt8]?
        /// `StoreChange.recoveredView`: 0 if none was stored.
        public var recoveredView: UInt64 = 0
    }

    /// Everything stored, decoded and checked; parents come before their sub-resources.
    public func load() throws -> Contents {
        try applyLog()
        let (lockspaces, resources, meta) = (self.lockspaces, self.resources, self.meta)
        return try environment.read { txn in
            var contents = Contents()
            try txn.forEach(lockspaces) { key, value in
                let (length, access) = try RecordCoding.decodeLockspace(value, name: key)
                contents.lockspaces.append((key, length, access))
            }
            // A resource's record comes first, then its locks' (their keys extend its key), then its children.
            try txn.forEach(resources) { key, value in
                switch try RecordCoding.decodeRecord(key: key, value: value) {
                case .resource(let stored):
                    contents.resources.append(stored)
                case .lock(let lockspace, let path, let lock):
                    guard let last = contents.resources.indices.last,
                        contents.resources[last].lockspace == lockspace, contents.resources[last].resource.path == path
                    else {
                        throw StoreError("lock \(lock.id) is stored without its resource \(path) (corrupt store)")
                    }
                    contents.resources[last].resource.locks.append(lock)
                }
            }
            contents.lastView = try txn.get(meta, Array("view".utf8))
            if let bytes = try txn.get(meta, Array("recovered_view".utf8)) {
                guard bytes.count == 8 else {
                    throw StoreError("the recovered view has \(bytes.count) bytes, not 8 (corrupt store)")
                }
                contents.recoveredView = decodeUInt64(bytes)
            }
            return contents
        }
    }

    // MARK: Writing

    /// One change of a commit.
    public typealias Change = StoreChange

    /// The puts and deletes that make `changes`, in order.
    public static func operations(_ changes: [Change]) -> [StoreOperation] {
        var operations: [StoreOperation] = []
        operations.reserveCapacity(changes.count)
        for change in changes {
            switch change {
            case .journal(.put(let stored)):
                let (key, value) = RecordCoding.encode(stored)
                operations.append(.init(table: .resources, key: key, value: value))
                for lock in stored.resource.locks {
                    let (key, value) = RecordCoding.encode(
                        lock: lock, lockspace: stored.lockspace, path: stored.resource.path)
                    operations.append(.init(table: .resources, key: key, value: value))
                }
            case .journal(.deleteLock(let lockspace, let path, let lock)):
                operations.append(
                    .init(
                        table: .resources, key: RecordCoding.lockKey(lockspace: lockspace, path: path, lock: lock),
                        value: nil))
            case .journal(.delete(let lockspace, let path)):
                operations.append(
                    .init(
                        table: .resources, key: RecordCoding.resourceKey(lockspace: lockspace, path: path), value: nil))
                operations.append(
                    .deleting(.resources, prefix: RecordCoding.lockKeyPrefix(lockspace: lockspace, path: path)))
            case .putLockspace(let name, let length, let access):
                operations.append(
                    .init(
                        table: .lockspaces, key: name,
                        value: RecordCoding.encodeLockspace(valueBlockLength: length, access: access)))
            case .deleteLockspace(let name):
                operations.append(.init(table: .lockspaces, key: name, value: nil))
            case .view(let view):
                operations.append(.init(table: .meta, key: Array("view".utf8), value: view))
            case .recoveredView(let number):
                operations.append(.init(table: .meta, key: Array("recovered_view".utf8), value: bigEndian(number)))
            }
        }
        return operations
    }

    /// Writes the changes as one group; one thread at a time calls it.
    ///
    /// With `sync` durability the group is one record of the write-ahead log, on disk (`fdatasync`) when this
    /// returns; a thread of the store applies the records to LMDB later, many in one durable transaction, after
    /// which the log starts again. Otherwise the group is one LMDB transaction, and `sync()` flushes it later.
    public func commit(_ changes: [Change]) throws {
        let operations = NodeStore.operations(changes)
        guard let log, let applier else {
            let tables = Tables(meta: meta, lockspaces: lockspaces, resources: resources)
            try environment.write { txn in try tables.apply(operations, txn) }
            return
        }
        // The event loop commits too (group services' views) while the store's thread does.
        logLock.lock()
        defer { logLock.unlock() }
        let record = log.encodeNext(operations)
        let applied = try applier.applied()
        if applied == log.lastSequence {
            // Everything in the file is in LMDB: start again from the beginning.
            log.reset()
        } else if !log.fits(record) {
            try applier.wait(for: log.lastSequence)
            log.reset()
        }
        try log.append(record)
        applier.enqueue(sequence: log.lastSequence, operations: operations, bytes: record.count)
    }

    /// Bytes of the write-ahead log written since it last started again; nil without one (durability other than
    /// `sync`).
    public var logBytes: Int? {
        guard let log else { return nil }
        logLock.lock()
        defer { logLock.unlock() }
        return log.offset - WriteAheadLog.fileHeaderSize
    }

    /// Makes every commit so far durable. With `sync` durability they already are (in the write-ahead log).
    public func sync() throws {
        if log == nil { try environment.sync() }
    }

    /// With `sync` durability, applies what the write-ahead log holds to LMDB and waits for it to be durable
    /// there (at a clean shutdown, or before reading LMDB).
    public func applyLog() throws {
        guard let applier else { return }
        logLock.lock()
        let last = log?.lastSequence ?? 0
        logLock.unlock()
        try applier.wait(for: last)
    }

    // MARK: Size

    /// The room LMDB's map has beyond the limit: a quarter of it, at least 1 MiB.
    public static func headroom(limit: Int) -> Int { max(limit / 4, 1 << 20) }

    static func mapSize(limit: Int) -> Int { limit + headroom(limit: limit) }

    /// The bytes the data takes: LMDB's pages up to the last one written, less those on its free list.
    public func dataBytes() throws -> Int { try NodeStore.dataBytes(environment) }

    static func dataBytes(_ environment: LMDBEnvironment, info: LMDBEnvironment.Info? = nil) throws -> Int {
        let info = info ?? environment.info()
        return info.usedBytes - (try environment.freePages()) * info.pageSize
    }

    /// Whether the store is full: its data at the limit, or, once it was (`wasFull`), not yet a sixteenth below
    /// it (so that the alarm does not flap at the mark). Cheap while the file is below the mark: the free list is
    /// read only once the file has reached it.
    public func isFull(wasFull: Bool) throws -> Bool {
        let mark = wasFull ? limit - limit / 16 : limit
        let info = environment.info()
        guard info.usedBytes >= mark else { return false }
        return try NodeStore.dataBytes(environment, info: info) >= mark
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
        /// Records of the write-ahead log (`sync` durability) not yet in LMDB: the next start replays them.
        public var logRecordsToReplay: Int
    }

    /// Reads and decodes every record of a data directory without starting a node (`dlmd --check`).
    public static func check(directory: String, mapSize: Int) throws -> Report {
        guard FileManager.default.fileExists(atPath: directory + "/data.mdb") else {
            throw StoreError("\(directory) has no data.mdb: not a dlmd data directory")
        }
        let schema = try checkSchema(directory: directory, mapSize: mapSize, nodeID: nil)
        let environment = try LMDBEnvironment(
            path: directory, options: .init(mapSize: NodeStore.mapSize(limit: mapSize), readOnly: true))
        let meta = try environment.database("meta", create: false)
        let lockspaces = try environment.database("lockspaces", create: false)
        let resources = try environment.database("resources", create: false)
        let applied = try environment.read { txn in try appliedMark(txn, meta) }
        let pending = try WriteAheadLog.pending(directory: directory, applied: applied)
        // What the replay would write must decode, as every record of LMDB must.
        for record in pending.records {
            for operation in record.operations {
                switch (operation.table, operation.value) {
                case (.resources, let value?): _ = try RecordCoding.decodeRecord(key: operation.key, value: value)
                case (.lockspaces, let value?): _ = try RecordCoding.decodeLockspace(value, name: operation.key)
                default: break
                }
            }
        }
        return try environment.read { txn in
            var report = Report(
                path: directory, schema: schema,
                nodeID: UInt32(try txn.get(meta, Array("node_id".utf8)).map { decodeUInt64($0) } ?? 0),
                incarnation: try txn.get(meta, Array("incarnation".utf8)).map { decodeUInt64($0) } ?? 0,
                mapSize: mapSize, usedBytes: try NodeStore.dataBytes(environment), lockspaces: 0,
                resources: 0, persistentLocks: 0, logRecordsToReplay: pending.records.count)
            var names = Set<[UInt8]>()
            try txn.forEach(lockspaces) { key, value in
                _ = try RecordCoding.decodeLockspace(value, name: key)
                names.insert(key)
                report.lockspaces += 1
            }
            var ids = Set<LockID>()
            try txn.forEach(resources) { key, value in
                let (lockspace, path, locks): ([UInt8], [[UInt8]], [LockSnapshot])
                switch try RecordCoding.decodeRecord(key: key, value: value) {
                case .resource(let stored):
                    (lockspace, path, locks) = (stored.lockspace, stored.resource.path, stored.resource.locks)
                    report.resources += 1
                case .lock(let ls, let lockPath, let lock): (lockspace, path, locks) = (ls, lockPath, [lock])
                }
                guard names.contains(lockspace) else {
                    throw StoreError("resource \(path) belongs to a lockspace that is not stored")
                }
                for lock in locks {
                    guard ids.insert(lock.id).inserted else { throw StoreError("lock id \(lock.id) is stored twice") }
                }
                report.persistentLocks += locks.count
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

/// The tables of the store, to apply operations to.
struct Tables: Sendable {
    let meta: Database
    let lockspaces: Database
    let resources: Database

    func apply(_ operations: [StoreOperation], _ txn: Transaction) throws {
        for operation in operations {
            let database: Database
            switch operation.table {
            case .meta: database = meta
            case .lockspaces: database = lockspaces
            case .resources: database = resources
            }
            if let value = operation.value {
                try txn.put(database, operation.key, value)
            } else if operation.deletesPrefix {
                try txn.deletePrefix(database, operation.key)
            } else {
                try txn.delete(database, operation.key)
            }
        }
    }
}

/// The thread that applies the records of the write-ahead log to LMDB: whatever has queued, every `interval` or
/// sooner when much has queued or someone waits, in one transaction that also records the last sequence number
/// applied, committed durably (LMDB's own fsyncs). A failure (a full map) is kept and given to the next commit:
/// what was acknowledged stays in the log for the next start.
final class LogApplier: @unchecked Sendable {
    let environment: LMDBEnvironment
    let tables: Tables
    let interval: TimeInterval = 0.02
    let bytesToApplyAtOnce = 1 << 20
    private let condition = NSCondition()
    private var queue: [(sequence: UInt64, operations: [StoreOperation])] = []
    private var queuedBytes = 0
    private var appliedSequence: UInt64
    private var waiters = 0
    private var stopping = false
    private var running = true
    private var failure: Error?

    init(environment: LMDBEnvironment, tables: Tables, applied: UInt64) {
        self.environment = environment
        self.tables = tables
        appliedSequence = applied
        let thread = Thread { [self] in run() }
        thread.name = "dlmd-store-apply"
        thread.start()
    }

    func enqueue(sequence: UInt64, operations: [StoreOperation], bytes: Int) {
        condition.lock()
        queue.append((sequence, operations))
        queuedBytes += bytes
        if queue.count == 1 || queuedBytes >= bytesToApplyAtOnce { condition.broadcast() }
        condition.unlock()
    }

    /// The last sequence number in LMDB; throws the applier's failure.
    func applied() throws -> UInt64 {
        condition.lock()
        defer { condition.unlock() }
        if let failure { throw failure }
        return appliedSequence
    }

    /// Waits until `sequence` is durably in LMDB.
    func wait(for sequence: UInt64) throws {
        condition.lock()
        defer { condition.unlock() }
        waiters += 1
        condition.broadcast()
        while appliedSequence < sequence && failure == nil && running { condition.wait() }
        waiters -= 1
        if let failure { throw failure }
        if appliedSequence < sequence { throw StoreError("the store is closed") }
    }

    /// Applies what is queued, then the thread ends.
    func stop() {
        condition.lock()
        stopping = true
        condition.broadcast()
        while running { condition.wait() }
        condition.unlock()
    }

    private func run() {
        condition.lock()
        while true {
            while queue.isEmpty && !stopping { condition.wait() }
            if queue.isEmpty || failure != nil { break }
            let deadline = Date().addingTimeInterval(interval)
            while !stopping && waiters == 0 && queuedBytes < bytesToApplyAtOnce {
                if !condition.wait(until: deadline) { break }
            }
            let batch = queue
            queue.removeAll(keepingCapacity: true)
            queuedBytes = 0
            condition.unlock()
            var error: Error?
            do {
                let (tables, last) = (self.tables, batch.last!.sequence)
                try environment.write { txn in
                    for record in batch { try tables.apply(record.operations, txn) }
                    try txn.put(tables.meta, NodeStore.appliedKey, bigEndian(last))
                }
                try environment.sync()
            } catch let caught {
                error = caught
            }
            condition.lock()
            if let error {
                failure = error
            } else {
                appliedSequence = batch.last!.sequence
            }
            condition.broadcast()
        }
        running = false
        condition.broadcast()
        condition.unlock()
    }
}
