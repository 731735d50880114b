import Foundation

#if canImport(Glibc)
    import Glibc
#endif

/// One low-level change of the store: a put or a delete of one key of one table. A group of them is what a
/// record of the write-ahead log holds, and what is applied to LMDB, so that replaying needs no knowledge of
/// the engine.
public struct StoreOperation: Sendable, Hashable {
    public enum Table: UInt8, Sendable, Hashable {
        case meta = 0
        case lockspaces = 1
        case resources = 2
    }

    public var table: Table
    public var key: [UInt8]
    /// The new value; nil deletes the key.
    public var value: [UInt8]?
    /// With no value: delete every key that starts with `key` (a resource's lock records) instead of `key`.
    public var deletesPrefix: Bool

    public init(table: Table, key: [UInt8], value: [UInt8]?) {
        self.table = table
        self.key = key
        self.value = value
        self.deletesPrefix = false
    }

    /// Deletes every key of `table` that starts with `prefix`.
    public static func deleting(_ table: Table, prefix: [UInt8]) -> StoreOperation {
        var operation = StoreOperation(table: table, key: prefix, value: nil)
        operation.deletesPrefix = true
        return operation
    }
}

/// The write-ahead log of `sync` durability (`DATA_DIR/wal`): each group commit is one record appended at the
/// write offset and made durable with one `fdatasync`, and is acknowledged then; the groups reach LMDB later, in
/// larger transactions, and once such a transaction is durable the log may start again from offset 0.
///
/// The file is written with zeros to its capacity when it is made, so that an append overwrites allocated blocks
/// and `fdatasync` has no size or extent to record. A record is a 24-byte header (magic, payload length,
/// sequence number, CRC-32 of length, sequence and payload) and its payload, padded to 8 bytes. The records
/// from offset 0 with consecutive sequence numbers are the log; it ends at the first that is not valid or not
/// the next number (a torn tail, whose `fdatasync` had not returned, or a record of an earlier round). Every
/// record of an earlier round has a sequence number at or below the applied mark that LMDB's `meta` table
/// keeps (`wal_applied`), so a valid record above that mark after the end of the log means damage.
public final class WriteAheadLog {
    public static let fileName = "wal"
    /// The default size of the file: the log starts again from 0 before it would pass it.
    public static let defaultCapacity = 16 << 20
    static let magic: UInt32 = 0x444C_4D57  // "DLMW"
    static let headerSize = 24

    public let path: String
    private let fd: Int32
    public private(set) var capacity: Int
    /// Where the next record goes.
    public private(set) var offset = 0
    /// The sequence number of the last record appended (or replayed, or applied before this start).
    public private(set) var lastSequence: UInt64

    /// Opens (or creates, filled with zeros to `capacity`) the log of `directory`; the next record is numbered
    /// `lastSequence + 1` and written at offset 0, so every record in the file must already be in LMDB.
    public init(directory: String, lastSequence: UInt64, capacity: Int = WriteAheadLog.defaultCapacity) throws {
        path = directory + "/" + WriteAheadLog.fileName
        let existed = FileManager.default.fileExists(atPath: path)
        fd = open(path, O_RDWR | O_CREAT | O_CLOEXEC, 0o600)
        guard fd >= 0 else { throw StoreError("cannot open \(path): \(String(cString: strerror(errno)))") }
        self.lastSequence = lastSequence
        self.capacity = 0
        var status = stat()
        guard fstat(fd, &status) == 0 else {
            close(fd)
            throw StoreError("cannot stat \(path): \(String(cString: strerror(errno)))")
        }
        self.capacity = Int(status.st_size)
        do {
            if self.capacity < capacity { try grow(to: capacity) }
            if !existed { try WriteAheadLog.syncDirectory(directory) }
        } catch {
            close(fd)
            throw error
        }
    }

    deinit {
        close(fd)
    }

    /// Extends the file with zeros (written, not only allocated) and syncs it.
    func grow(to size: Int) throws {
        let chunk = [UInt8](repeating: 0, count: 1 << 20)
        var position = capacity
        while position < size {
            let count = min(chunk.count, size - position)
            try chunk.withUnsafeBytes { try writeAll($0.baseAddress!, count: count, at: position) }
            position += count
        }
        guard fsync(fd) == 0 else { throw StoreError("cannot sync \(path): \(String(cString: strerror(errno)))") }
        capacity = size
    }

    static func syncDirectory(_ directory: String) throws {
        let dfd = open(directory, O_RDONLY | O_DIRECTORY | O_CLOEXEC)
        guard dfd >= 0 else { throw StoreError("cannot open \(directory): \(String(cString: strerror(errno)))") }
        defer { close(dfd) }
        guard fsync(dfd) == 0 else {
            throw StoreError("cannot sync \(directory): \(String(cString: strerror(errno)))")
        }
    }

    private func writeAll(_ base: UnsafeRawPointer, count: Int, at position: Int) throws {
        var done = 0
        while done < count {
            let written = pwrite(fd, base + done, count - done, off_t(position + done))
            if written < 0 {
                if errno == EINTR { continue }
                throw StoreError("cannot write \(path): \(String(cString: strerror(errno)))")
            }
            done += written
        }
    }

    /// The record of the next sequence number holding `operations`.
    public func encodeNext(_ operations: [StoreOperation]) -> [UInt8] {
        WriteAheadLog.encodeRecord(sequence: lastSequence + 1, payload: WriteAheadLog.encodePayload(operations))
    }

    /// Whether `record` fits after the write offset.
    public func fits(_ record: [UInt8]) -> Bool { offset + record.count <= capacity }

    /// Writes a record made by `encodeNext` at the write offset and makes it durable (`fdatasync`). The caller
    /// first checks that it fits, or starts the log again with `reset` (once every record is in LMDB).
    public func append(_ record: [UInt8]) throws {
        if record.count > capacity { try grow(to: (record.count * 2 + 4095) & ~4095) }
        precondition(offset + record.count <= capacity, "a write-ahead record must fit after the write offset")
        try record.withUnsafeBytes { try writeAll($0.baseAddress!, count: record.count, at: offset) }
        guard fdatasync(fd) == 0 else {
            throw StoreError("cannot sync \(path): \(String(cString: strerror(errno)))")
        }
        offset += record.count
        lastSequence += 1
    }

    /// Starts the log again from offset 0: only once every record in the file is durably in LMDB.
    public func reset() {
        offset = 0
    }

    // MARK: Encoding

    static func encodePayload(_ operations: [StoreOperation]) -> [UInt8] {
        var writer = RecordWriter()
        writer.u32(UInt32(operations.count))
        for operation in operations {
            writer.u8(operation.table.rawValue)
            writer.u8(operation.value != nil ? 0 : operation.deletesPrefix ? 2 : 1)
            writer.u32(UInt32(operation.key.count))
            writer.bytes.append(contentsOf: operation.key)
            if let value = operation.value {
                writer.u32(UInt32(value.count))
                writer.bytes.append(contentsOf: value)
            }
        }
        return writer.bytes
    }

    static func decodePayload(_ payload: [UInt8], sequence: UInt64) throws -> [StoreOperation] {
        var reader = RecordReader(payload, .logRecord(sequence: sequence))
        let count = Int(try reader.u32())
        var operations: [StoreOperation] = []
        operations.reserveCapacity(min(count, payload.count / 6))
        for _ in 0..<count {
            guard let table = StoreOperation.Table(rawValue: try reader.u8()) else {
                throw StoreError("write-ahead record \(sequence) names an unknown table (corrupt record)")
            }
            let kind = try reader.u8()
            let key = Array(try reader.take(Int(try reader.u32())))
            switch kind {
            case 0:
                operations.append(.init(table: table, key: key, value: Array(try reader.take(Int(try reader.u32())))))
            case 1: operations.append(.init(table: table, key: key, value: nil))
            case 2: operations.append(.deleting(table, prefix: key))
            default: throw StoreError("write-ahead record \(sequence) has an unknown operation (corrupt record)")
            }
        }
        try reader.finish()
        return operations
    }

    static func encodeRecord(sequence: UInt64, payload: [UInt8]) -> [UInt8] {
        var writer = RecordWriter()
        writer.bytes.reserveCapacity(headerSize + payload.count + 8)
        writer.u32(magic)
        writer.u32(UInt32(payload.count))
        writer.u64(sequence)
        var crc = CRC32.update(0xFFFF_FFFF, writer.bytes[4..<16])
        crc = CRC32.update(crc, payload[...])
        writer.u32(~crc)
        writer.u32(0)
        writer.bytes.append(contentsOf: payload)
        while writer.bytes.count % 8 != 0 { writer.u8(0) }
        return writer.bytes
    }

    /// The record at `offset` if it is valid (magic, length within the file, CRC): its sequence number, payload
    /// and padded size.
    static func parse(_ bytes: [UInt8], at offset: Int) -> (sequence: UInt64, payload: ArraySlice<UInt8>, size: Int)? {
        guard offset + headerSize <= bytes.count else { return nil }
        func u32(_ at: Int) -> UInt32 { bytes[at..<at + 4].reduce(0) { $0 << 8 | UInt32($1) } }
        guard u32(offset) == magic else { return nil }
        let length = Int(u32(offset + 4))
        guard length <= bytes.count - offset - headerSize else { return nil }
        let sequence = bytes[offset + 8..<offset + 16].reduce(0) { $0 << 8 | UInt64($1) }
        let payload = bytes[offset + headerSize..<offset + headerSize + length]
        let crc = ~CRC32.update(CRC32.update(0xFFFF_FFFF, bytes[offset + 4..<offset + 16]), payload)
        guard crc == u32(offset + 16) else { return nil }
        return (sequence, payload, (headerSize + length + 7) & ~7)
    }

    // MARK: Reading at start

    /// What the log of a directory holds beyond the applied mark.
    public struct Pending {
        /// The records above the applied mark, in order, decoded.
        public var records: [(sequence: UInt64, operations: [StoreOperation])] = []
        /// The highest sequence number of the log (or the applied mark, if higher).
        public var lastSequence: UInt64
    }

    /// Reads the log of `directory` (none: nothing pending): the records above `applied`, in order. Throws if a
    /// record is missing or a valid record above the mark follows the end of the log (damage in the middle).
    public static func pending(directory: String, applied: UInt64) throws -> Pending {
        let path = directory + "/" + fileName
        guard FileManager.default.fileExists(atPath: path) else { return Pending(lastSequence: applied) }
        let bytes = [UInt8](try Data(contentsOf: URL(fileURLWithPath: path)))
        var pending = Pending(lastSequence: applied)
        var offset = 0
        var expected: UInt64?
        while let record = parse(bytes, at: offset) {
            if let expected, record.sequence != expected { break }
            if record.sequence > applied {
                if pending.records.isEmpty && record.sequence != applied + 1 {
                    throw StoreError(
                        "\(path) starts at record \(record.sequence) but the store holds records up to \(applied) "
                            + "only: records are missing (damaged). Nothing was changed.")
                }
                pending.records.append(
                    (record.sequence, try decodePayload(Array(record.payload), sequence: record.sequence)))
            }
            expected = record.sequence + 1
            offset += record.size
        }
        pending.lastSequence = max(applied, (expected ?? 1) - 1)
        // Past the end only records of earlier rounds (at or below the mark) or a torn record may remain.
        let floor = pending.lastSequence + 1
        var probe = offset
        while probe + headerSize <= bytes.count {
            if let record = parse(bytes, at: probe), record.sequence >= floor {
                throw StoreError(
                    "\(path) is damaged: the record at offset \(offset) is corrupt but record \(record.sequence) "
                        + "follows at offset \(probe). Nothing was changed.")
            }
            probe += 8
        }
        return pending
    }
}

/// CRC-32 (IEEE 802.3, as zlib's).
enum CRC32 {
    static let table: [UInt32] = (0..<256).map { index in
        var crc = UInt32(index)
        for _ in 0..<8 { crc = crc & 1 != 0 ? 0xEDB8_8320 ^ (crc >> 1) : crc >> 1 }
        return crc
    }

    static func update(_ crc: UInt32, _ bytes: ArraySlice<UInt8>) -> UInt32 {
        table.withUnsafeBufferPointer { table in
            var crc = crc
            for byte in bytes { crc = table[Int((crc ^ UInt32(byte)) & 0xFF)] ^ (crc >> 8) }
            return crc
        }
    }

    /// The CRC of `bytes`, as zlib's `crc32` gives it.
    static func checksum(_ bytes: [UInt8]) -> UInt32 { ~update(0xFFFF_FFFF, bytes[...]) }
}
