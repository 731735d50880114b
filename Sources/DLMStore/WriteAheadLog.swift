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
/// and `fdatasync` has no size or extent to record. It starts with a 32-byte file header (magic, format, and an
/// epoch: 8 random bytes drawn each time dlmd opens the log). A record is a 24-byte header (magic, payload
/// length, sequence number, CRC-32 of the epoch, length, sequence and payload) and its payload, padded to 8
/// bytes. Each append writes, right after its record, an end mark (a record header of its own magic and the next
/// sequence number, no payload), which the next append overwrites. The records from the file header on with
/// consecutive sequence numbers are the log; it ends at the end mark, or, if a crash tore the last append, at the
/// first record that is not valid or not the next number. Every record of an earlier round has a sequence number
/// at or below the applied mark that LMDB's `meta` table keeps (`wal_applied`), so after a log without its end
/// mark, a valid record above that mark means damage.
///
/// The epoch is inside every checksum so that the log cannot be forged by what clients write: lock names and
/// value blocks are in the records' payloads, and bytes laid out there as a record (or left in the file from an
/// earlier round) are not valid without the epoch, which never leaves the file.
public final class WriteAheadLog {
    public static let fileName = "wal"
    /// The default size of the file: the log starts again from 0 before it would pass it.
    public static let defaultCapacity = 16 << 20
    static let magic: UInt32 = 0x444C_4D57  // "DLMW"
    /// An end mark's magic.
    static let endMagic: UInt32 = 0x444C_4D45  // "DLME"
    /// The file header's magic and format.
    static let fileMagic: UInt32 = 0x444C_4D46  // "DLMF"
    static let fileFormat: UInt32 = 2
    /// The file header's size: records start there.
    static let fileHeaderSize = 32
    static let headerSize = 24

    public let path: String
    private let fd: Int32
    public private(set) var capacity: Int
    /// Where the next record goes.
    public private(set) var offset = 0
    /// The sequence number of the last record appended (or replayed, or applied before this start).
    public private(set) var lastSequence: UInt64
    /// This opening's epoch, in every record's checksum.
    let epoch: UInt64

    /// Opens (or creates, filled with zeros to `capacity`) the log of `directory`; the next record is numbered
    /// `lastSequence + 1` and written at offset 0, so every record in the file must already be in LMDB.
    public init(directory: String, lastSequence: UInt64, capacity: Int = WriteAheadLog.defaultCapacity) throws {
        path = directory + "/" + WriteAheadLog.fileName
        let existed = FileManager.default.fileExists(atPath: path)
        fd = open(path, O_RDWR | O_CREAT | O_CLOEXEC, 0o600)
        guard fd >= 0 else { throw StoreError("cannot open \(path): \(String(cString: strerror(errno)))") }
        self.lastSequence = lastSequence
        self.capacity = 0
        self.epoch = UInt64.random(in: 1...UInt64.max)
        self.offset = WriteAheadLog.fileHeaderSize
        var status = stat()
        guard fstat(fd, &status) == 0 else {
            close(fd)
            throw StoreError("cannot stat \(path): \(String(cString: strerror(errno)))")
        }
        self.capacity = Int(status.st_size)
        do {
            if self.capacity < capacity { try grow(to: capacity) }
            // A new epoch and an empty log: what the file held is in LMDB already.
            let bytes = WriteAheadLog.fileHeader(epoch: epoch) + endMark(sequence: lastSequence + 1)
            try bytes.withUnsafeBytes { try writeAll($0.baseAddress!, count: bytes.count, at: 0) }
            guard fdatasync(fd) == 0 else {
                throw StoreError("cannot sync \(path): \(String(cString: strerror(errno)))")
            }
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

    /// The record of the next sequence number holding `operations`, with the end mark that follows it.
    public func encodeNext(_ operations: [StoreOperation]) -> [UInt8] {
        WriteAheadLog.encodeRecord(
            sequence: lastSequence + 1, payload: WriteAheadLog.encodePayload(operations), epoch: epoch)
            + endMark(sequence: lastSequence + 2)
    }

    /// The file header of a log with `epoch`.
    static func fileHeader(epoch: UInt64) -> [UInt8] {
        var header = RecordWriter()
        header.u32(WriteAheadLog.fileMagic)
        header.u32(WriteAheadLog.fileFormat)
        header.u64(epoch)
        header.u32(CRC32.checksum(header.bytes))
        while header.bytes.count < WriteAheadLog.fileHeaderSize { header.u8(0) }
        return header.bytes
    }

    /// The end mark that says the log ends before record `sequence`.
    func endMark(sequence: UInt64) -> [UInt8] {
        WriteAheadLog.encodeRecord(sequence: sequence, payload: [], epoch: epoch, magic: WriteAheadLog.endMagic)
    }

    /// Whether `record` fits after the write offset.
    public func fits(_ record: [UInt8]) -> Bool { offset + record.count <= capacity }

    /// Writes a record made by `encodeNext` (and its end mark) at the write offset and makes it durable
    /// (`fdatasync`). The caller first checks that it fits, or starts the log again with `reset` (once every record
    /// is in LMDB).
    public func append(_ record: [UInt8]) throws {
        let end = offset + record.count
        if end > capacity { try grow(to: (end * 2 + 4095) & ~4095) }
        try record.withUnsafeBytes { try writeAll($0.baseAddress!, count: record.count, at: offset) }
        guard fdatasync(fd) == 0 else {
            throw StoreError("cannot sync \(path): \(String(cString: strerror(errno)))")
        }
        // The next append overwrites the end mark.
        offset += record.count - WriteAheadLog.headerSize
        lastSequence += 1
    }

    /// Starts the log again after the file header: only once every record in the file is durably in LMDB.
    public func reset() {
        offset = WriteAheadLog.fileHeaderSize
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

    /// A record (or, with `endMagic`, an end mark) whose checksum covers `epoch` (nil: the first format's, which
    /// had none).
    static func encodeRecord(sequence: UInt64, payload: [UInt8], epoch: UInt64?, magic: UInt32 = magic) -> [UInt8] {
        var writer = RecordWriter()
        writer.bytes.reserveCapacity(headerSize + payload.count + 8)
        writer.u32(magic)
        writer.u32(UInt32(payload.count))
        writer.u64(sequence)
        var crc = seed(epoch)
        crc = CRC32.update(crc, writer.bytes[4..<16])
        crc = CRC32.update(crc, payload[...])
        writer.u32(~crc)
        writer.u32(0)
        writer.bytes.append(contentsOf: payload)
        while writer.bytes.count % 8 != 0 { writer.u8(0) }
        return writer.bytes
    }

    /// The CRC's state after the epoch.
    static func seed(_ epoch: UInt64?) -> UInt32 {
        guard let epoch else { return 0xFFFF_FFFF }
        return CRC32.update(0xFFFF_FFFF, (0..<8).map { UInt8(truncatingIfNeeded: epoch >> (56 - 8 * $0)) }[...])
    }

    /// The record (or end mark, `isEnd`) at `offset` if it is valid (magic, length within the file, CRC with
    /// the epoch): its sequence number, payload and padded size.
    static func parse(
        _ bytes: [UInt8], at offset: Int, epoch: UInt64?
    ) -> (sequence: UInt64, payload: ArraySlice<UInt8>, size: Int, isEnd: Bool)? {
        guard offset + headerSize <= bytes.count else { return nil }
        func u32(_ at: Int) -> UInt32 { bytes[at..<at + 4].reduce(0) { $0 << 8 | UInt32($1) } }
        let kind = u32(offset)
        guard kind == magic || (kind == endMagic && epoch != nil) else { return nil }
        let length = Int(u32(offset + 4))
        guard length <= bytes.count - offset - headerSize, kind == magic || length == 0 else { return nil }
        let sequence = bytes[offset + 8..<offset + 16].reduce(0) { $0 << 8 | UInt64($1) }
        let payload = bytes[offset + headerSize..<offset + headerSize + length]
        let crc = ~CRC32.update(CRC32.update(seed(epoch), bytes[offset + 4..<offset + 16]), payload)
        guard crc == u32(offset + 16) else { return nil }
        return (sequence, payload, (headerSize + length + 7) & ~7, kind == endMagic)
    }

    /// The epoch and the offset of the first record of a log file: its header's, or, for a file of the first
    /// format (records from offset 0, no epoch), nil and 0.
    static func start(of bytes: [UInt8], path: String) throws -> (epoch: UInt64?, offset: Int) {
        func u32(_ at: Int) -> UInt32 { bytes[at..<at + 4].reduce(0) { $0 << 8 | UInt32($1) } }
        guard bytes.count >= fileHeaderSize, u32(0) == fileMagic else { return (nil, 0) }
        guard u32(4) == fileFormat, CRC32.checksum(Array(bytes[0..<16])) == u32(16) else {
            throw StoreError("\(path) has a damaged or unknown header. Nothing was changed.")
        }
        return (bytes[8..<16].reduce(0) { $0 << 8 | UInt64($1) }, fileHeaderSize)
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
        return try pending(bytes: bytes, path: path, applied: applied)
    }

    /// `pending` of a log file's bytes (`path` names it in errors).
    public static func pending(bytes: [UInt8], path: String, applied: UInt64) throws -> Pending {
        var pending = Pending(lastSequence: applied)
        var (epoch, offset) = try start(of: bytes, path: path)
        var expected: UInt64?
        var ended = false
        while let record = parse(bytes, at: offset, epoch: epoch) {
            if let expected, record.sequence != expected { break }
            if record.isEnd {
                ended = true
                break
            }
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
        // A log that ends at its end mark is whole. Without it, past the end only records of earlier rounds (at or
        // below the mark) or a torn record may remain.
        if ended { return pending }
        let floor = pending.lastSequence + 1
        var probe = offset
        while probe + headerSize <= bytes.count {
            if let record = parse(bytes, at: probe, epoch: epoch), !record.isEnd, record.sequence >= floor {
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
