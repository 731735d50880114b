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

struct RecordReader {
    let bytes: [UInt8]
    var offset = 0
    let what: String

    init(_ bytes: [UInt8], what: String) {
        self.bytes = bytes
        self.what = what
    }

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

enum RecordCoding {
    /// Format 2 (schema 2) adds each lock's pid after its fencing token; format 1 (schema 1) is read with pid 0
    /// (unknown).
    static let resourceFormat: UInt8 = 2
    static let lockspaceFormat: UInt8 = 1

    /// The key of a resource: its lockspace's name, then each name of its path. A parent's key is a prefix of
    /// its children's, so a cursor meets parents first.
    static func resourceKey(lockspace: [UInt8], path: [[UInt8]]) -> [UInt8] {
        var writer = RecordWriter()
        writer.bytes8(lockspace)
        for name in path { writer.bytes8(name) }
        return writer.bytes
    }

    static func decodeResourceKey(_ key: [UInt8]) throws(StoreError) -> (lockspace: [UInt8], path: [[UInt8]]) {
        var reader = RecordReader(key, what: "a resource key")
        let lockspace = try reader.bytes8()
        var path: [[UInt8]] = []
        while reader.offset < key.count { path.append(try reader.bytes8()) }
        guard !lockspace.isEmpty, !path.isEmpty, path.allSatisfy({ !$0.isEmpty && $0.count <= 64 }) else {
            throw StoreError("a resource key is malformed (corrupt record)")
        }
        return (lockspace, path)
    }

    static func encode(_ stored: StoredResource) -> (key: [UInt8], value: [UInt8]) {
        let resource = stored.resource
        var w = RecordWriter()
        w.u8(resourceFormat)
        w.bytes8(resource.valueBlock ?? [])
        w.u64(resource.valueBlockSequence)
        w.u8(resource.valueBlockInvalid ? 1 : 0)
        w.u64(resource.fencingToken)
        w.u8(stored.hasVolatileWriter ? 1 : 0)
        w.u32(UInt32(resource.locks.count))
        for lock in resource.locks {
            w.u32(lock.id.rawValue)
            w.u64(lock.owner?.rawValue ?? 0)
            w.u8(lock.grantedMode?.rawValue ?? 255)
            w.u32(lock.flags.rawValue)
            w.u32(lock.parent?.rawValue ?? 0)
            w.u64(lock.transaction ?? 0)
            w.u8(lock.priority)
            w.u8((lock.wantsBlockingCallbacks ? 1 : 0) | (lock.alwaysFencingToken ? 2 : 0))
            w.u64(lock.fencingToken)
            w.u32(lock.pid)
        }
        return (resourceKey(lockspace: stored.lockspace, path: resource.path), w.bytes)
    }

    static func decodeResource(key: [UInt8], value: [UInt8]) throws(StoreError) -> StoredResource {
        let (lockspace, path) = try decodeResourceKey(key)
        var r = RecordReader(value, what: "the record of resource \(path.last!)")
        let format = try r.u8()
        guard format == 1 || format == resourceFormat else {
            throw StoreError("a resource record has unknown format \(format)")
        }
        let lvb = try r.bytes8()
        let sequence = try r.u64()
        let invalid = try r.u8() != 0
        let token = try r.u64()
        let volatileWriter = try r.u8() != 0
        let count = try r.u32()
        guard count <= 1 << 24 else { throw StoreError("a resource record claims \(count) locks (corrupt record)") }
        var locks: [LockSnapshot] = []
        for _ in 0..<count {
            let id = try r.u32()
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
            let pid = format >= 2 ? try r.u32() : 0
            locks.append(
                LockSnapshot(
                    id: LockID(rawValue: id), owner: owner == 0 ? nil : OwnerID(owner), queue: .grant,
                    grantedMode: mode, requestedMode: nil, flags: flags,
                    parent: parent == 0 ? nil : LockID(rawValue: parent),
                    transaction: transaction == 0 ? nil : transaction,
                    priority: priority, wantsBlockingCallbacks: options & 1 != 0, alwaysFencingToken: options & 2 != 0,
                    blockingSent: 0, pendingFlags: [], waitingSince: 0, waitSequence: 0, deadline: 0,
                    fencingToken: lockToken, pid: pid))
        }
        try r.finish()
        let snapshot = ResourceSnapshot(
            lockspace: LockspaceID(rawValue: 0), path: path, valueBlock: lvb.isEmpty ? nil : lvb,
            valueBlockSequence: sequence, valueBlockInvalid: invalid, fencingToken: token, locks: locks)
        return StoredResource(lockspace: lockspace, resource: snapshot, hasVolatileWriter: volatileWriter)
    }

    static func encodeLockspace(valueBlockLength: Int) -> [UInt8] {
        var w = RecordWriter()
        w.u8(lockspaceFormat)
        w.u8(UInt8(valueBlockLength))
        w.u32(0)  // permissions: reserved for the lockspace `mode` of dlm_create_lockspace
        w.u32(0)  // flags: reserved
        return w.bytes
    }

    static func decodeLockspace(_ value: [UInt8], name: [UInt8]) throws(StoreError) -> Int {
        var r = RecordReader(value, what: "the record of lockspace \(String(decoding: name, as: UTF8.self))")
        guard try r.u8() == lockspaceFormat else { throw StoreError("a lockspace record has an unknown format") }
        let length = Int(try r.u8())
        _ = try r.u32()
        _ = try r.u32()
        try r.finish()
        guard length > 0, length % 8 == 0, length <= 64 else {
            throw StoreError("a lockspace record has value block length \(length) (corrupt record)")
        }
        return length
    }
}
