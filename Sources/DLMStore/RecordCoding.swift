import DLMCore

/// The binary encoding of the store's keys and values: big-endian integers, byte strings with a one-byte
/// length. Every value starts with a format byte so that a later format can be told apart.
struct RecordWriter {
    var bytes: [UInt8] = []

    mutating func u8(_ value: UInt8) { bytes.append(value) }
    mutating func u32(_ value: UInt32) { withUnsafeBytes(of: value.bigEndian) { bytes.append(contentsOf: $0) } }
    mutating func u64(_ value: UInt64) { withUnsafeBytes(of: value.bigEndian) { bytes.append(contentsOf: $0) } }
    mutating func bytes8(_ value: [UInt8]) {
        bytes.append(UInt8(value.count))
        bytes.append(contentsOf: value)
    }
}

/// A record that cannot be read: the data directory is damaged or was written by something else.
public struct StoreError: Error, Sendable, CustomStringConvertible {
    public var description: String
    public init(_ description: String) { self.description = description }
}

/// What a record reader reads, named in its errors only: the name is formatted when a record turns out to be
/// damaged, never for a good one (a restart reads a million records).
enum RecordSubject {
    case resourceKey
    case resource(name: [UInt8])
    case lockspace(name: [UInt8])
    case logRecord(sequence: UInt64)

    var text: String {
        switch self {
        case .resourceKey: "a resource key"
        case .resource(let name): "the record of resource \(name)"
        case .lockspace(let name): "the record of lockspace \(String(decoding: name, as: UTF8.self))"
        case .logRecord(let sequence): "write-ahead record \(sequence)"
        }
    }
}

struct RecordReader {
    let bytes: [UInt8]
    var offset = 0
    let subject: RecordSubject

    init(_ bytes: [UInt8], _ subject: RecordSubject) {
        self.bytes = bytes
        self.subject = subject
    }

    var what: String { subject.text }

    mutating func take(_ count: Int) throws(StoreError) -> ArraySlice<UInt8> {
        guard offset + count <= bytes.count else { throw StoreError("\(what) is truncated (corrupt record)") }
        defer { offset += count }
        return bytes[offset..<offset + count]
    }

    mutating func u8() throws(StoreError) -> UInt8 { try take(1).first! }
    mutating func u32() throws(StoreError) -> UInt32 { try take(4).reduce(0) { $0 << 8 | UInt32($1) } }
    mutating func u64() throws(StoreError) -> UInt64 { try take(8).reduce(0) { $0 << 8 | UInt64($1) } }
    mutating func bytes8() throws(StoreError) -> [UInt8] { Array(try take(Int(try u8()))) }

    func finish() throws(StoreError) {
        guard offset == bytes.count else {
            throw StoreError("\(what) has \(bytes.count - offset) extra bytes (corrupt record)")
        }
    }
}

/// One record of the resources table.
enum ResourceTableRecord {
    /// A resource's own record; from a store of schema 1 or 2, with its locks inside.
    case resource(StoredResource)
    /// A persistent lock of a resource (schema 3).
    case lock(lockspace: [UInt8], path: [[UInt8]], LockSnapshot)
}

enum RecordCoding {
    /// Format 3 (schema 3) keeps a resource's locks out of its record, each in a record of its own under the
    /// resource's key, so that a change writes one lock, not all of them; a lock record of format 4 (schema 4)
    /// adds its owner's uid (format 3's read as unknown), and format 5 (schema 5) an orphan's former owner's node
    /// (earlier formats' read as 0, unknown). Format 2 (schema 2) has every lock inside the
    /// resource's record with its pid; format 1 (schema 1) the same, read with pid 0 (unknown).
    static let resourceFormat: UInt8 = 3
    static let lockFormat: UInt8 = 5
    static let lockspaceFormat: UInt8 = 2
    /// Comes after a resource's key in the key of one of its locks: names are never empty, so no key of a
    /// sub-resource has it there, and a resource's locks come right after it in key order, before its children.
    static let lockMarker: UInt8 = 0

    /// The key of a resource: its lockspace's name, then each name of its path. A parent's key is a prefix of
    /// its children's, so a cursor meets parents first.
    static func resourceKey(lockspace: [UInt8], path: [[UInt8]]) -> [UInt8] {
        var writer = RecordWriter()
        writer.bytes8(lockspace)
        for name in path { writer.bytes8(name) }
        return writer.bytes
    }

    /// The prefix of the keys of a resource's locks.
    static func lockKeyPrefix(lockspace: [UInt8], path: [[UInt8]]) -> [UInt8] {
        resourceKey(lockspace: lockspace, path: path) + [lockMarker]
    }

    static func lockKey(lockspace: [UInt8], path: [[UInt8]], lock: LockID) -> [UInt8] {
        var writer = RecordWriter(bytes: lockKeyPrefix(lockspace: lockspace, path: path))
        writer.u32(lock.rawValue)
        return writer.bytes
    }

    /// A key of the resources table: a resource's, or (with a lock id) one of its locks'.
    static func decodeKey(_ key: [UInt8]) throws(StoreError) -> (lockspace: [UInt8], path: [[UInt8]], lock: LockID?) {
        var reader = RecordReader(key, .resourceKey)
        let lockspace = try reader.bytes8()
        var path: [[UInt8]] = []
        var lock: LockID?
        while reader.offset < key.count {
            if key[reader.offset] == lockMarker {
                reader.offset += 1
                lock = LockID(rawValue: try reader.u32())
                try reader.finish()
                break
            }
            path.append(try reader.bytes8())
        }
        guard !lockspace.isEmpty, !path.isEmpty, path.allSatisfy({ !$0.isEmpty && $0.count <= 64 }),
            lock != LockID(rawValue: 0)
        else {
            throw StoreError("a resource key is malformed (corrupt record)")
        }
        return (lockspace, path, lock)
    }

    /// A resource's own record (value block, sequence, invalid mark, fencing-token mark, volatile writer), with
    /// no lock inside.
    static func encode(_ stored: StoredResource) -> (key: [UInt8], value: [UInt8]) {
        let resource = stored.resource
        var w = RecordWriter()
        w.u8(resourceFormat)
        w.bytes8(resource.valueBlock ?? [])
        w.u64(resource.valueBlockSequence)
        w.u8(resource.valueBlockInvalid ? 1 : 0)
        w.u64(resource.fencingToken)
        w.u8(stored.hasVolatileWriter ? 1 : 0)
        w.u32(0)
        return (resourceKey(lockspace: stored.lockspace, path: resource.path), w.bytes)
    }

    /// The record of one persistent lock of a resource.
    static func encode(lock: LockSnapshot, lockspace: [UInt8], path: [[UInt8]]) -> (key: [UInt8], value: [UInt8]) {
        var w = RecordWriter()
        w.u8(lockFormat)
        writeFields(of: lock, to: &w)
        return (lockKey(lockspace: lockspace, path: path, lock: lock.id), w.bytes)
    }

    private static func writeFields(of lock: LockSnapshot, to w: inout RecordWriter) {
        w.u64(lock.owner?.rawValue ?? 0)
        w.u8(lock.grantedMode?.rawValue ?? 255)
        w.u32(lock.flags.rawValue)
        w.u32(lock.parent?.rawValue ?? 0)
        w.u64(lock.transaction ?? 0)
        w.u8(lock.priority)
        w.u8((lock.wantsBlockingCallbacks ? 1 : 0) | (lock.alwaysFencingToken ? 2 : 0))
        w.u64(lock.fencingToken)
        w.u32(lock.pid)
        w.u32(lock.uid)
        w.u32(lock.orphanNode)
    }

    private static func readLock(
        id: UInt32, from r: inout RecordReader, withPid: Bool, withUid: Bool = false, withNode: Bool = false
    ) throws(StoreError) -> LockSnapshot {
        let owner = try r.u64()
        let rawMode = try r.u8()
        guard let mode = LockMode(rawValue: rawMode), id != 0 else {
            throw StoreError("a lock record is malformed (corrupt record)")
        }
        let flags = LockFlags(rawValue: try r.u32())
        let parent = try r.u32()
        let transaction = try r.u64()
        let priority = try r.u8()
        let options = try r.u8()
        let lockToken = try r.u64()
        let pid = withPid ? try r.u32() : 0
        let uid = withUid ? try r.u32() : LockEngine.unknownUser
        let node = withNode ? try r.u32() : 0
        return LockSnapshot(
            id: LockID(rawValue: id), owner: owner == 0 ? nil : OwnerID(owner), queue: .grant,
            grantedMode: mode, requestedMode: nil, flags: flags,
            parent: parent == 0 ? nil : LockID(rawValue: parent),
            transaction: transaction == 0 ? nil : transaction,
            priority: priority, wantsBlockingCallbacks: options & 1 != 0, alwaysFencingToken: options & 2 != 0,
            blockingSent: 0, pendingFlags: [], waitingSince: 0, waitSequence: 0, deadline: 0,
            fencingToken: lockToken, pid: pid, uid: uid, orphanNode: owner == 0 ? node : 0)
    }

    static func decodeRecord(key: [UInt8], value: [UInt8]) throws(StoreError) -> ResourceTableRecord {
        let (lockspace, path, lock) = try decodeKey(key)
        if let lock {
            var r = RecordReader(value, .resource(name: path.last!))
            let format = try r.u8()
            guard (3...lockFormat).contains(format) else {
                throw StoreError("a lock record has unknown format \(format)")
            }
            let snapshot = try readLock(
                id: lock.rawValue, from: &r, withPid: true, withUid: format >= 4, withNode: format >= 5)
            try r.finish()
            return .lock(lockspace: lockspace, path: path, snapshot)
        }
        return .resource(try decodeResource(lockspace: lockspace, path: path, value: value))
    }

    static func decodeResource(lockspace: [UInt8], path: [[UInt8]], value: [UInt8]) throws(StoreError)
        -> StoredResource
    {
        var r = RecordReader(value, .resource(name: path.last!))
        let format = try r.u8()
        guard (1...resourceFormat).contains(format) else {
            throw StoreError("a resource record has unknown format \(format)")
        }
        let lvb = try r.bytes8()
        let sequence = try r.u64()
        let invalid = try r.u8() != 0
        let token = try r.u64()
        let volatileWriter = try r.u8() != 0
        let count = try r.u32()
        guard count <= 1 << 24, format < 3 || count == 0 else {
            throw StoreError("a resource record claims \(count) locks (corrupt record)")
        }
        var locks: [LockSnapshot] = []
        for _ in 0..<count {
            let id = try r.u32()
            locks.append(try readLock(id: id, from: &r, withPid: format >= 2))
        }
        try r.finish()
        let snapshot = ResourceSnapshot(
            lockspace: LockspaceID(rawValue: 0), path: path, valueBlock: lvb.isEmpty ? nil : lvb,
            valueBlockSequence: sequence, valueBlockInvalid: invalid, fencingToken: token, locks: locks)
        return StoredResource(lockspace: lockspace, resource: snapshot, hasVolatileWriter: volatileWriter)
    }

    /// A lockspace: format 2 adds who created it on this node (format 1, which has none, reads as nobody yet).
    static func encodeLockspace(valueBlockLength: Int, access: LockspaceAccess?) -> [UInt8] {
        var w = RecordWriter()
        w.u8(lockspaceFormat)
        w.u8(UInt8(valueBlockLength))
        w.u32(access.map { UInt32($0.mode) } ?? noAccess)  // permission bits, or none: no creator here yet
        w.u32(0)  // flags: reserved
        w.u32(access?.uid ?? 0)
        w.u32(access?.gid ?? 0)
        return w.bytes
    }

    /// The permissions field of a lockspace that no client of this node created.
    static let noAccess: UInt32 = 0xFFFF_FFFF

    static func decodeLockspace(
        _ value: [UInt8], name: [UInt8]
    ) throws(StoreError) -> (valueBlockLength: Int, access: LockspaceAccess?) {
        var r = RecordReader(value, .lockspace(name: name))
        let format = try r.u8()
        guard format == 1 || format == lockspaceFormat else {
            throw StoreError("a lockspace record has an unknown format")
        }
        let length = Int(try r.u8())
        let mode = try r.u32()
        _ = try r.u32()
        var access: LockspaceAccess?
        if format >= 2 {
            let (uid, gid) = (try r.u32(), try r.u32())
            if mode != noAccess {
                guard mode <= 0o777 else { throw StoreError("a lockspace record has mode \(mode) (corrupt record)") }
                access = LockspaceAccess(uid: uid, gid: gid, mode: UInt16(mode))
            }
        }
        try r.finish()
        guard length > 0, length % 8 == 0, length <= 64 else {
            throw StoreError("a lockspace record has value block length \(length) (corrupt record)")
        }
        return (length, access)
    }
}
