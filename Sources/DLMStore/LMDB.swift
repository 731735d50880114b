import CLMDB

#if canImport(Glibc)
    import Glibc
#endif

/// An LMDB failure: its code and LMDB's own words, plus what an operator should do for the common ones.
public struct LMDBError: Error, Sendable, Hashable, CustomStringConvertible {
    public var code: Int32
    public var operation: String
    public var message: String

    init(_ code: Int32, _ operation: String) {
        self.code = code
        self.operation = operation
        self.message = String(cString: mdb_strerror(code))
    }

    /// The map (`--map-size`) has no room left for this commit.
    public var isMapFull: Bool { code == MDB_MAP_FULL }

    public var description: String {
        if isMapFull {
            return "\(operation): the LMDB map is full (\(message)); restart dlmd with a larger --map-size"
        }
        return "\(operation): \(message) (LMDB error \(code))"
    }
}

@inline(__always)
func check(_ code: Int32, _ operation: @autoclosure () -> String) throws(LMDBError) {
    if code != 0 { throw LMDBError(code, operation()) }
}

/// One LMDB environment: a directory with `data.mdb` and `lock.mdb`, opened once per process. Write
/// transactions must stay on the thread that began them; one thread at a time writes.
public final class LMDBEnvironment: @unchecked Sendable {
    let env: OpaquePointer
    public let path: String

    public struct Options: Sendable {
        /// The most bytes the data file may grow to (`--map-size`).
        public var mapSize: Int
        /// Commit without fsync; `sync()` flushes.
        public var noSync: Bool
        /// Commit with one fsync, of the data pages, and write the meta page without one (LMDB's
        /// `MDB_NOMETASYNC`): a commit is then durable once the next commit's fsync, or `sync()`, has run. The
        /// database stays consistent after a power loss, which may undo the last commit.
        public var noMetaSync: Bool
        public var maxDatabases: Int
        /// Open without writing anything (not even the lock file's reader table is needed).
        public var readOnly: Bool

        public init(
            mapSize: Int = 1 << 30, noSync: Bool = false, noMetaSync: Bool = false, maxDatabases: Int = 8,
            readOnly: Bool = false
        ) {
            self.mapSize = mapSize
            self.noSync = noSync
            self.noMetaSync = noMetaSync
            self.maxDatabases = maxDatabases
            self.readOnly = readOnly
        }
    }

    public init(path: String, options: Options = Options()) throws(LMDBError) {
        var env: OpaquePointer?
        try check(mdb_env_create(&env), "mdb_env_create")
        guard let env else { throw LMDBError(ENOMEM, "mdb_env_create") }
        do throws(LMDBError) {
            try check(mdb_env_set_mapsize(env, options.mapSize), "mdb_env_set_mapsize")
            try check(mdb_env_set_maxdbs(env, MDB_dbi(options.maxDatabases)), "mdb_env_set_maxdbs")
            var flags = UInt32(MDB_NOTLS)
            if options.noSync { flags |= UInt32(MDB_NOSYNC) }
            if options.noMetaSync { flags |= UInt32(MDB_NOMETASYNC) }
            if options.readOnly { flags |= UInt32(MDB_RDONLY) }
            try check(mdb_env_open(env, path, flags, 0o600), "opening the LMDB environment in \(path)")
        } catch {
            mdb_env_close(env)
            throw error
        }
        self.env = env
        self.path = path
    }

    deinit {
        mdb_env_close(env)
    }

    /// Flushes committed data to disk (for environments opened with `noSync`).
    public func sync() throws(LMDBError) {
        try check(mdb_env_sync(env, 1), "mdb_env_sync")
    }

    public struct Info: Sendable, Hashable {
        public var mapSize: Int
        /// Bytes in use: pages up to the last one written.
        public var usedBytes: Int
        public var lastTransaction: Int
        public var pageSize: Int
    }

    public func info() -> Info {
        var info = MDB_envinfo()
        var stat = MDB_stat()
        mdb_env_info(env, &info)
        mdb_env_stat(env, &stat)
        return Info(
            mapSize: info.me_mapsize, usedBytes: (info.me_last_pgno + 1) * Int(stat.ms_psize),
            lastTransaction: info.me_last_txnid, pageSize: Int(stat.ms_psize))
    }

    /// How many pages are on LMDB's free list: freed by earlier transactions, to be reused by later ones. The
    /// pages up to the last one written, less these, are what the data takes (the file never shrinks).
    public func freePages() throws(LMDBError) -> Int {
        let transaction = try Transaction(env: env, readOnly: true)
        defer { transaction.abort() }
        var cursor: OpaquePointer?
        // Database 0 is LMDB's free list: each value is a list of page numbers, its count first.
        try check(mdb_cursor_open(transaction.txn, 0, &cursor), "opening a cursor on the free list")
        defer { mdb_cursor_close(cursor) }
        var k = MDB_val()
        var v = MDB_val()
        var pages = 0
        var code = mdb_cursor_get(cursor, &k, &v, MDB_FIRST)
        while code == 0 {
            if v.mv_size >= MemoryLayout<Int>.size, let data = v.mv_data {
                pages += data.loadUnaligned(as: Int.self)
            }
            code = mdb_cursor_get(cursor, &k, &v, MDB_NEXT)
        }
        if code != MDB_NOTFOUND { try check(code, "reading the free list") }
        return pages
    }

    /// Runs `body` in a write transaction and commits it; aborts it if `body` throws.
    public func write<T>(_ body: (Transaction) throws -> T) throws -> T {
        let transaction = try Transaction(env: env, readOnly: false)
        do {
            let result = try body(transaction)
            try transaction.commit()
            return result
        } catch {
            transaction.abort()
            throw error
        }
    }

    /// Runs `body` in a read-only transaction.
    public func read<T>(_ body: (Transaction) throws -> T) throws -> T {
        let transaction = try Transaction(env: env, readOnly: true)
        defer { transaction.abort() }
        return try body(transaction)
    }

    /// Opens (or with `create`, creates) a named database. Without `create` it works on a read-only
    /// environment too (the handle is made in a read transaction that commits).
    public func database(_ name: String, create: Bool) throws -> Database {
        let transaction = try Transaction(env: env, readOnly: !create)
        var dbi = MDB_dbi()
        do {
            try check(
                mdb_dbi_open(transaction.txn, name, create ? UInt32(MDB_CREATE) : 0, &dbi), "opening database \(name)")
            try transaction.commit()
        } catch {
            transaction.abort()
            throw error
        }
        return Database(dbi: dbi, name: name)
    }
}

/// A named database (table) of an environment.
public struct Database: Sendable, Hashable {
    let dbi: MDB_dbi
    public let name: String
}

/// A transaction; keys and values are byte arrays.
public final class Transaction {
    let txn: OpaquePointer
    private var finished = false

    init(env: OpaquePointer, readOnly: Bool) throws(LMDBError) {
        var txn: OpaquePointer?
        try check(mdb_txn_begin(env, nil, readOnly ? UInt32(MDB_RDONLY) : 0, &txn), "mdb_txn_begin")
        self.txn = txn!
    }

    deinit {
        if !finished { mdb_txn_abort(txn) }
    }

    func commit() throws(LMDBError) {
        finished = true
        try check(mdb_txn_commit(txn), "mdb_txn_commit")
    }

    func abort() {
        if !finished {
            finished = true
            mdb_txn_abort(txn)
        }
    }

    public func get(_ database: Database, _ key: [UInt8]) throws -> [UInt8]? {
        var key = key
        return try key.withUnsafeMutableBytes { keyBytes -> [UInt8]? in
            var k = MDB_val(mv_size: keyBytes.count, mv_data: keyBytes.baseAddress)
            var v = MDB_val()
            let code = mdb_get(txn, database.dbi, &k, &v)
            if code == MDB_NOTFOUND { return nil }
            try check(code, "reading \(database.name)")
            return Array(UnsafeRawBufferPointer(start: v.mv_data, count: v.mv_size))
        }
    }

    public func put(_ database: Database, _ key: [UInt8], _ value: [UInt8]) throws {
        var key = key
        var value = value
        try key.withUnsafeMutableBytes { keyBytes in
            try value.withUnsafeMutableBytes { valueBytes in
                var k = MDB_val(mv_size: keyBytes.count, mv_data: keyBytes.baseAddress)
                var v = MDB_val(mv_size: valueBytes.count, mv_data: valueBytes.baseAddress)
                try check(mdb_put(txn, database.dbi, &k, &v, 0), "writing \(database.name)")
            }
        }
    }

    /// Deletes a key; false if it was not there.
    @discardableResult
    public func delete(_ database: Database, _ key: [UInt8]) throws -> Bool {
        var key = key
        return try key.withUnsafeMutableBytes { keyBytes -> Bool in
            var k = MDB_val(mv_size: keyBytes.count, mv_data: keyBytes.baseAddress)
            let code = mdb_del(txn, database.dbi, &k, nil)
            if code == MDB_NOTFOUND { return false }
            try check(code, "deleting from \(database.name)")
            return true
        }
    }

    /// Deletes every key that starts with `prefix`; returns how many.
    @discardableResult
    public func deletePrefix(_ database: Database, _ prefix: [UInt8]) throws -> Int {
        var cursor: OpaquePointer?
        try check(mdb_cursor_open(txn, database.dbi, &cursor), "opening a cursor on \(database.name)")
        defer { mdb_cursor_close(cursor) }
        var start = prefix
        return try start.withUnsafeMutableBytes { prefixBytes -> Int in
            var k = MDB_val(mv_size: prefixBytes.count, mv_data: prefixBytes.baseAddress)
            var v = MDB_val()
            var deleted = 0
            var code = mdb_cursor_get(cursor, &k, &v, MDB_SET_RANGE)
            while code == 0, k.mv_size >= prefix.count,
                UnsafeRawBufferPointer(start: k.mv_data, count: prefix.count).elementsEqual(prefix)
            {
                try check(mdb_cursor_del(cursor, 0), "deleting from \(database.name)")
                deleted += 1
                // After a delete the cursor stands on the next entry, which MDB_NEXT returns.
                code = mdb_cursor_get(cursor, &k, &v, MDB_NEXT)
            }
            if code != 0 && code != MDB_NOTFOUND { try check(code, "reading \(database.name)") }
            return deleted
        }
    }

    /// Every key and value of a database, in key order, through a cursor.
    public func forEach(_ database: Database, _ body: ([UInt8], [UInt8]) throws -> Void) throws {
        var cursor: OpaquePointer?
        try check(mdb_cursor_open(txn, database.dbi, &cursor), "opening a cursor on \(database.name)")
        defer { mdb_cursor_close(cursor) }
        var k = MDB_val()
        var v = MDB_val()
        var code = mdb_cursor_get(cursor, &k, &v, MDB_FIRST)
        while code == 0 {
            try body(
                Array(UnsafeRawBufferPointer(start: k.mv_data, count: k.mv_size)),
                Array(UnsafeRawBufferPointer(start: v.mv_data, count: v.mv_size)))
            code = mdb_cursor_get(cursor, &k, &v, MDB_NEXT)
        }
        if code != MDB_NOTFOUND { try check(code, "reading \(database.name)") }
    }

    /// How many entries a database holds.
    public func count(_ database: Database) throws(LMDBError) -> Int {
        var stat = MDB_stat()
        try check(mdb_stat(txn, database.dbi, &stat), "mdb_stat \(database.name)")
        return stat.ms_entries
    }

    /// Deletes every entry of a database.
    public func clear(_ database: Database) throws(LMDBError) {
        try check(mdb_drop(txn, database.dbi, 0), "clearing \(database.name)")
    }
}
