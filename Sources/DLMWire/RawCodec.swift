import DLMCore
import NIOCore

// The hot frames (LOCK, CONVERT, UNLOCK from clients; OK and COMPLETION from the server) are encoded and
// decoded through one raw pointer per frame instead of one `ByteBuffer` call per field: each `ByteBuffer`
// call costs a few dynamic exclusivity checks (its storage is a class), which were a quarter of the CPU
// time of a pipelined client and server. The bytes, the checks and the error messages are those of
// Codec.swift; the golden vectors and the randomized decoder test hold both to that.

/// Writes big-endian fields at increasing offsets of raw memory that has room for them.
struct RawWriter {
    let base: UnsafeMutableRawPointer
    var offset = 0

    init(_ base: UnsafeMutableRawPointer) {
        self.base = base
    }

    @inline(__always) mutating func put<T: FixedWidthInteger>(_ value: T) {
        base.storeBytes(of: value.bigEndian, toByteOffset: offset, as: T.self)
        offset += MemoryLayout<T>.size
    }

    /// A `bytes8`: the count's low byte, then every byte (as `writeBytes8`).
    @inline(__always) mutating func putBytes8(_ bytes: [UInt8]) {
        put(UInt8(truncatingIfNeeded: bytes.count))
        bytes.withUnsafeBytes { source in
            if let from = source.baseAddress { (base + offset).copyMemory(from: from, byteCount: source.count) }
        }
        offset += bytes.count
    }
}

/// Reads big-endian fields from raw memory, with the checks and messages of the `ByteBuffer` readers.
struct RawReader {
    let bytes: UnsafeRawBufferPointer
    var offset = 0

    init(_ bytes: UnsafeRawBufferPointer) {
        self.bytes = bytes
    }

    var remaining: Int { bytes.count - offset }

    @inline(__always) mutating func read<T: FixedWidthInteger>(_: T.Type, _ field: StaticString) throws(WireError)
        -> T
    {
        let size = MemoryLayout<T>.size
        guard remaining >= size else { throw .malformed("truncated at \(field)") }
        let value = T(bigEndian: bytes.loadUnaligned(fromByteOffset: offset, as: T.self))
        offset += size
        return value
    }

    mutating func readBytes8(_ field: StaticString, max: Int) throws(WireError) -> [UInt8] {
        let count = Int(try read(UInt8.self, field))
        guard count <= max else { throw .malformed("\(field) has \(count) bytes, at most \(max) allowed") }
        guard remaining >= count else { throw .malformed("truncated in \(field)") }
        defer { offset += count }
        return Array(UnsafeRawBufferPointer(rebasing: bytes[offset..<offset + count]))
    }

    mutating func readMode(_ field: StaticString) throws(WireError) -> LockMode {
        let raw = try read(UInt8.self, field)
        guard let mode = LockMode(rawValue: raw) else { throw .malformed("\(field) \(raw) is not a mode (0-5)") }
        return mode
    }

    mutating func readName(_ field: StaticString) throws(WireError) -> [UInt8] {
        let name = try readBytes8(field, max: WireLimits.maxName)
        guard !name.isEmpty else { throw .malformed("\(field) is empty") }
        return name
    }
}

extension ByteBuffer {
    /// Writes a frame of `type` whose body has `bodySize` bytes, written by `body` through a `RawWriter`.
    @inline(__always)
    mutating func writeRawFrame(type: UInt8, bodySize: Int, _ body: (inout RawWriter) -> Void) {
        let size = 5 + bodySize
        writeWithUnsafeMutableBytes(minimumWritableBytes: size) { raw in
            var writer = RawWriter(raw.baseAddress!)
            writer.put(UInt32(1 + bodySize))
            writer.put(type)
            body(&writer)
            assert(writer.offset == size)
            return size
        }
    }

    /// Decodes the readable bytes with `body` through a `RawReader`; the bytes it read are consumed, and an
    /// error it throws is rethrown.
    @inline(__always)
    mutating func decodeRaw<T>(_ body: (inout RawReader) throws(WireError) -> T) throws(WireError) -> T {
        let (result, consumed) = withUnsafeReadableBytes { raw -> (Result<T, WireError>, Int) in
            var reader = RawReader(raw)
            do throws(WireError) {
                return (.success(try body(&reader)), reader.offset)
            } catch {
                return (.failure(error), reader.offset)
            }
        }
        moveReaderIndex(forwardBy: consumed)
        return try result.get()
    }
}

extension ClientMessage {
    /// Encodes LOCK, CONVERT and UNLOCK through a raw pointer; false for the other messages.
    @inline(__always)
    func encodeHot(into buffer: inout ByteBuffer) -> Bool {
        switch self {
        case .lock(let m):
            buffer.writeRawFrame(type: 0x20, bodySize: 36 + m.name.count) { w in
                w.put(m.tag)
                w.put(m.lockspace)
                w.put(m.flags.rawValue)
                w.put(m.mode.rawValue)
                w.put(m.options.rawValue)
                w.put(m.priority)
                w.put(m.parent)
                w.put(m.timeoutNanoseconds)
                w.put(m.transaction)
                w.putBytes8(m.name)
            }
        case .convert(let m):
            buffer.writeRawFrame(type: 0x21, bodySize: 23 + m.valueBlock.count) { w in
                w.put(m.tag)
                w.put(m.lock)
                w.put(m.flags.rawValue)
                w.put(m.mode.rawValue)
                w.put(m.priority)
                w.put(m.timeoutNanoseconds)
                w.putBytes8(m.valueBlock)
            }
        case .unlock(let m):
            buffer.writeRawFrame(type: 0x22, bodySize: 13 + m.valueBlock.count) { w in
                w.put(m.tag)
                w.put(m.lock)
                w.put(m.flags.rawValue)
                w.putBytes8(m.valueBlock)
            }
        default:
            return false
        }
        return true
    }

    /// Decodes the body of LOCK, CONVERT or UNLOCK through a raw pointer; nil for the other types.
    @inline(__always)
    static func decodeHot(type: UInt8, body: inout ByteBuffer) throws(WireError) -> ClientMessage? {
        switch type {
        case 0x20:
            return try body.decodeRaw { r throws(WireError) in
                let tag = try r.read(UInt32.self, "tag")
                let lockspace = try r.read(UInt32.self, "lockspace")
                let flags = LockFlags(rawValue: try r.read(UInt32.self, "flags"))
                let mode = try r.readMode("mode")
                let options = LockMessageOptions(rawValue: try r.read(UInt8.self, "options"))
                guard options.isSubset(of: .all) else { throw .malformed("unknown option bits in LOCK") }
                let priority = try r.read(UInt8.self, "priority")
                let parent = try r.read(UInt32.self, "parent")
                let timeout = try r.read(UInt64.self, "timeout_ns")
                let xid = try r.read(UInt64.self, "xid")
                let name = try r.readName("name")
                return .lock(
                    LockMessage(
                        tag: tag, lockspace: lockspace, flags: flags, mode: mode, options: options,
                        priority: priority, parent: parent, timeoutNanoseconds: timeout, transaction: xid, name: name))
            }
        case 0x21:
            return try body.decodeRaw { r throws(WireError) in
                let tag = try r.read(UInt32.self, "tag")
                let lock = try r.read(UInt32.self, "lock")
                let flags = LockFlags(rawValue: try r.read(UInt32.self, "flags"))
                let mode = try r.readMode("mode")
                let priority = try r.read(UInt8.self, "priority")
                let timeout = try r.read(UInt64.self, "timeout_ns")
                let lvb = try r.readBytes8("lvb", max: WireLimits.maxValueBlock)
                return .convert(
                    ConvertMessage(
                        tag: tag, lock: lock, flags: flags, mode: mode, priority: priority,
                        timeoutNanoseconds: timeout, valueBlock: lvb))
            }
        case 0x22:
            return try body.decodeRaw { r throws(WireError) in
                let tag = try r.read(UInt32.self, "tag")
                let lock = try r.read(UInt32.self, "lock")
                let flags = LockFlags(rawValue: try r.read(UInt32.self, "flags"))
                let lvb = try r.readBytes8("lvb", max: WireLimits.maxValueBlock)
                return .unlock(UnlockMessage(tag: tag, lock: lock, flags: flags, valueBlock: lvb))
            }
        default:
            return nil
        }
    }
}

extension ServerMessage {
    /// Encodes OK and COMPLETION through a raw pointer; false for the other messages.
    @inline(__always)
    func encodeHot(into buffer: inout ByteBuffer) -> Bool {
        switch self {
        case .ok(let tag, let lock):
            buffer.writeRawFrame(type: 0xA0, bodySize: 8) { w in
                w.put(tag)
                w.put(lock)
            }
        case .completion(let c):
            buffer.writeRawFrame(type: 0xA2, bodySize: 31 + c.valueBlock.count) { w in
                w.put(c.tag)
                w.put(c.lock)
                w.put(c.status.rawValue)
                w.put(c.flags.rawValue)
                w.put(c.mode?.rawValue ?? 255)
                w.put(c.valueBlockSequence)
                w.put(c.fencingToken)
                w.putBytes8(c.valueBlock)
            }
        default:
            return false
        }
        return true
    }

    /// Decodes the body of OK or COMPLETION through a raw pointer; nil for the other types.
    @inline(__always)
    static func decodeHot(type: UInt8, body: inout ByteBuffer) throws(WireError) -> ServerMessage? {
        switch type {
        case 0xA0:
            return try body.decodeRaw { r throws(WireError) in
                let tag = try r.read(UInt32.self, "tag")
                return .ok(tag: tag, lock: try r.read(UInt32.self, "lock"))
            }
        case 0xA2:
            return try body.decodeRaw { r throws(WireError) in
                let tag = try r.read(UInt32.self, "tag")
                let lock = try r.read(UInt32.self, "lock")
                let status = DLMStatus(rawValue: try r.read(Int32.self, "status"))
                let flags = CompletionFlags(rawValue: try r.read(UInt8.self, "sb_flags"))
                let rawMode = try r.read(UInt8.self, "mode")
                let mode = LockMode(rawValue: rawMode)
                guard mode != nil || rawMode == 255 else { throw .malformed("mode \(rawMode) is not a mode") }
                let sequence = try r.read(UInt64.self, "lvb_sequence")
                let token = try r.read(UInt64.self, "fencing_token")
                let lvb = try r.readBytes8("lvb", max: WireLimits.maxValueBlock)
                return .completion(
                    CompletionMessage(
                        tag: tag, lock: lock, status: status, flags: flags, mode: mode, valueBlockSequence: sequence,
                        fencingToken: token, valueBlock: lvb))
            }
        default:
            return nil
        }
    }
}
