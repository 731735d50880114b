import DLMCore
import NIOCore

/// Why a frame could not be decoded: the server answers with `status` and closes the connection.
public struct WireError: Error, Sendable, Hashable, CustomStringConvertible {
    public var status: DLMStatus
    public var message: String

    public init(_ status: DLMStatus, _ message: String) {
        self.status = status
        self.message = message
    }

    public var description: String { "\(status.name): \(message)" }

    static func malformed(_ message: String) -> WireError { WireError(.protocolError, message) }
}

// MARK: Primitives

extension ByteBuffer {
    @inlinable mutating func writeBytes8(_ bytes: [UInt8]) {
        writeInteger(UInt8(truncatingIfNeeded: bytes.count))
        writeBytes(bytes)
    }

    @inlinable mutating func writeString16(_ string: String) {
        let utf8 = Array(string.utf8.prefix(Int(UInt16.max)))
        writeInteger(UInt16(utf8.count))
        writeBytes(utf8)
    }

    mutating func read<T: FixedWidthInteger>(_: T.Type, _ field: StaticString) throws(WireError) -> T {
        guard let value = readInteger(as: T.self) else { throw .malformed("truncated at \(field)") }
        return value
    }

    mutating func readBytes8(_ field: StaticString, max: Int) throws(WireError) -> [UInt8] {
        let count = Int(try read(UInt8.self, field))
        guard count <= max else { throw .malformed("\(field) has \(count) bytes, at most \(max) allowed") }
        guard let bytes = readBytes(length: count) else { throw .malformed("truncated in \(field)") }
        return bytes
    }

    mutating func readString16(_ field: StaticString) throws(WireError) -> String {
        let count = Int(try read(UInt16.self, field))
        guard let bytes = readBytes(length: count) else { throw .malformed("truncated in \(field)") }
        // Refused rather than repaired: a repaired string would not encode to the bytes received (§2).
        guard let string = String(validating: bytes, as: UTF8.self) else { throw .malformed("\(field) is not UTF-8") }
        return string
    }

    /// A frame's body must be used to its last byte.
    func requireConsumed(type: UInt8) throws(WireError) {
        guard readableBytes == 0 else {
            throw .malformed("\(readableBytes) bytes left over after frame type 0x\(String(type, radix: 16))")
        }
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

    /// A name (`readName`); one equal to `previous`, a name read before, is `previous` itself, not a new array (the
    /// locks of a recovery list mostly share their lockspace's name: an allocation per lock, and its memory, saved).
    mutating func readName(_ field: StaticString, sameAs previous: [UInt8]?) throws(WireError) -> [UInt8] {
        if let previous, !previous.isEmpty, readableBytes > previous.count,
            getInteger(at: readerIndex, as: UInt8.self).map(Int.init) == previous.count,
            withUnsafeReadableBytes({ previous.elementsEqual($0[1...previous.count]) })
        {
            moveReaderIndex(forwardBy: 1 + previous.count)
            return previous
        }
        return try readName(field)
    }
}

// MARK: Frames

/// Writes a frame: its length, then the type and body `body` writes.
@inlinable
func writeFrame(into buffer: inout ByteBuffer, type: UInt8, body: (inout ByteBuffer) -> Void) {
    let start = buffer.writerIndex
    buffer.writeInteger(UInt32(0))
    buffer.writeInteger(type)
    body(&buffer)
    buffer.setInteger(UInt32(buffer.writerIndex - start - 4), at: start)
}

/// Splits a byte stream into frames: returns the next frame's type and body, nil while incomplete, or throws
/// for a length out of bounds (before the frame's bytes even arrive).
public func nextFrame(from buffer: inout ByteBuffer, maxLength: Int) throws(WireError) -> (UInt8, ByteBuffer)? {
    guard let length = buffer.getInteger(at: buffer.readerIndex, as: UInt32.self) else { return nil }
    guard length >= 1 else { throw .malformed("a frame of length 0") }
    guard length <= maxLength else {
        throw WireError(.messageTooLong, "a frame of \(length) bytes, at most \(maxLength) allowed")
    }
    guard buffer.readableBytes >= 4 + Int(length) else { return nil }
    buffer.moveReaderIndex(forwardBy: 4)
    let type: UInt8 = buffer.readInteger()!
    let body = buffer.readSlice(length: Int(length) - 1)!
    return (type, body)
}

extension ClientMessage {
    public func encode(into buffer: inout ByteBuffer) {
        if encodeHot(into: &buffer) { return }
        writeFrame(into: &buffer, type: typeCode) { b in
            switch self {
            case .hello(let h):
                b.writeInteger(ProtocolVersion.magic)
                b.writeInteger(h.minVersion)
                b.writeInteger(h.maxVersion)
                b.writeInteger(h.pid)
                b.writeString16(h.clientName)
            case .ping(let tag), .bye(let tag):
                b.writeInteger(tag)
            case .openLockspace(let tag, let name, let length, let create, let mode):
                b.writeInteger(tag)
                b.writeInteger(UInt8(create ? 1 : 0))
                b.writeInteger(length)
                b.writeInteger(mode)
                b.writeBytes8(name)
            case .releaseLockspace(let tag, let lockspace, let force):
                b.writeInteger(tag)
                b.writeInteger(lockspace)
                b.writeInteger(UInt8(force ? 1 : 0))
            case .purge(let tag, let lockspace, let nodeID, let pid):
                b.writeInteger(tag)
                b.writeInteger(lockspace)
                b.writeInteger(nodeID)
                b.writeInteger(pid)
            case .fenceAck(let tag, let nodeID):
                b.writeInteger(tag)
                b.writeInteger(nodeID)
            case .lock, .convert, .unlock:
                preconditionFailure("LOCK, CONVERT and UNLOCK are encoded by encodeHot (RawCodec.swift)")
            case .deadlockCancel(let tag, let lock):
                b.writeInteger(tag)
                b.writeInteger(lock)
            case .query(let tag, let kind, let argument):
                b.writeInteger(tag)
                b.writeInteger(kind.rawValue)
                b.writeBytes8(argument)
            }
        }
    }

    /// Decodes the body of a frame of `type`. Every byte must be used.
    public static func decode(type: UInt8, body: inout ByteBuffer) throws(WireError) -> ClientMessage {
        let message: ClientMessage
        if let hot = try decodeHot(type: type, body: &body) {
            message = hot
        } else {
            message = try decodeOther(type: type, body: &body)
        }
        try body.requireConsumed(type: type)
        return message
    }

    /// The frames that `decodeHot` (RawCodec.swift) does not decode.
    static func decodeOther(type: UInt8, body: inout ByteBuffer) throws(WireError) -> ClientMessage {
        let message: ClientMessage
        switch type {
        case 0x01:
            let magic = try body.read(UInt32.self, "magic")
            guard magic == ProtocolVersion.magic else {
                throw .malformed("bad magic 0x\(String(magic, radix: 16)): not a swift-dlm client")
            }
            let min = try body.read(UInt16.self, "min_version")
            let max = try body.read(UInt16.self, "max_version")
            let pid = try body.read(UInt32.self, "pid")
            let name = try body.readString16("client_name")
            message = .hello(Hello(minVersion: min, maxVersion: max, pid: pid, clientName: name))
        case 0x02:
            message = .ping(tag: try body.read(UInt32.self, "tag"))
        case 0x03:
            message = .bye(tag: try body.read(UInt32.self, "tag"))
        case 0x10:
            let tag = try body.read(UInt32.self, "tag")
            let flags = try body.read(UInt8.self, "flags")
            guard flags & ~1 == 0 else { throw .malformed("LOCKSPACE_OPEN flags 0x\(String(flags, radix: 16))") }
            let length = try body.read(UInt8.self, "lvb_length")
            let mode = try body.read(UInt16.self, "mode")
            guard mode & ~0o777 == 0 else { throw .malformed("LOCKSPACE_OPEN mode 0o\(String(mode, radix: 8))") }
            let name = try body.readName("name")
            message = .openLockspace(
                tag: tag, name: name, valueBlockLength: length, create: flags & 1 == 1, mode: mode)
        case 0x11:
            let tag = try body.read(UInt32.self, "tag")
            let lockspace = try body.read(UInt32.self, "lockspace")
            let force = try body.read(UInt8.self, "force")
            guard force <= 1 else { throw .malformed("force must be 0 or 1") }
            message = .releaseLockspace(tag: tag, lockspace: lockspace, force: force == 1)
        case 0x12:
            let tag = try body.read(UInt32.self, "tag")
            let lockspace = try body.read(UInt32.self, "lockspace")
            let nodeID = try body.read(UInt32.self, "node_id")
            message = .purge(tag: tag, lockspace: lockspace, nodeID: nodeID, pid: try body.read(UInt32.self, "pid"))
        case 0x13:
            let tag = try body.read(UInt32.self, "tag")
            message = .fenceAck(tag: tag, nodeID: try body.read(UInt32.self, "node_id"))
        case 0x23:
            let tag = try body.read(UInt32.self, "tag")
            message = .deadlockCancel(tag: tag, lock: try body.read(UInt32.self, "lock"))
        case 0x30:
            let tag = try body.read(UInt32.self, "tag")
            let raw = try body.read(UInt8.self, "kind")
            guard let kind = QueryKind(rawValue: raw) else { throw .malformed("unknown query kind \(raw)") }
            let argument = try body.readBytes8("argument", max: kind.maxArgument)
            if kind == .lockdebugPage || kind == .lockdumpPage, argument.count < 9 {
                throw .malformed("a page query's argument is a cursor of 8 bytes and a name")
            }
            message = .query(tag: tag, kind: kind, argument: argument)
        default:
            throw .malformed("unknown client frame type 0x\(String(type, radix: 16))")
        }
        return message
    }
}

extension ServerMessage {
    public func encode(into buffer: inout ByteBuffer) {
        if encodeHot(into: &buffer) { return }
        writeFrame(into: &buffer, type: typeCode) { b in
            switch self {
            case .helloReply(let h):
                b.writeInteger(h.version)
                b.writeInteger(h.nodeID)
                b.writeInteger(h.maxName)
                b.writeInteger(h.maxValueBlock)
                b.writeString16(h.server)
            case .pong(let tag):
                b.writeInteger(tag)
            case .lockspace(let tag, let lockspace, let length, let created):
                b.writeInteger(tag)
                b.writeInteger(lockspace)
                b.writeInteger(length)
                b.writeInteger(UInt8(created ? 1 : 0))
            case .purged(let tag, let count):
                b.writeInteger(tag)
                b.writeInteger(count)
            case .error(let tag, let status, let message):
                b.writeInteger(tag)
                b.writeInteger(status.rawValue)
                b.writeString16(message)
            case .ok, .completion:
                preconditionFailure("OK and COMPLETION are encoded by encodeHot (RawCodec.swift)")
            case .blocking(let lock, let mode):
                b.writeInteger(lock)
                b.writeInteger(mode.rawValue)
            case .queryReply(let tag, let json):
                b.writeInteger(tag)
                b.writeInteger(UInt32(json.count))
                b.writeBytes(json)
            case .goodbye(let reason):
                b.writeString16(reason)
            }
        }
    }

    public static func decode(type: UInt8, body: inout ByteBuffer) throws(WireError) -> ServerMessage {
        let message: ServerMessage
        if let hot = try decodeHot(type: type, body: &body) {
            message = hot
        } else {
            message = try decodeOther(type: type, body: &body)
        }
        try body.requireConsumed(type: type)
        return message
    }

    /// The frames that `decodeHot` (RawCodec.swift) does not decode.
    static func decodeOther(type: UInt8, body: inout ByteBuffer) throws(WireError) -> ServerMessage {
        let message: ServerMessage
        switch type {
        case 0x81:
            let version = try body.read(UInt16.self, "version")
            let node = try body.read(UInt32.self, "node_id")
            let maxName = try body.read(UInt8.self, "max_name")
            let maxLVB = try body.read(UInt8.self, "max_lvb")
            let server = try body.readString16("server")
            message = .helloReply(
                HelloReply(version: version, nodeID: node, maxName: maxName, maxValueBlock: maxLVB, server: server))
        case 0x82:
            message = .pong(tag: try body.read(UInt32.self, "tag"))
        case 0x90:
            let tag = try body.read(UInt32.self, "tag")
            let lockspace = try body.read(UInt32.self, "lockspace")
            let length = try body.read(UInt8.self, "lvb_length")
            let created = try body.read(UInt8.self, "created")
            guard created <= 1 else { throw .malformed("created must be 0 or 1") }
            message = .lockspace(tag: tag, lockspace: lockspace, valueBlockLength: length, created: created == 1)
        case 0x91:
            let tag = try body.read(UInt32.self, "tag")
            message = .purged(tag: tag, count: try body.read(UInt32.self, "count"))
        case 0xA1:
            let tag = try body.read(UInt32.self, "tag")
            let status = DLMStatus(rawValue: try body.read(Int32.self, "status"))
            message = .error(tag: tag, status: status, message: try body.readString16("message"))
        case 0xA3:
            let lock = try body.read(UInt32.self, "lock")
            message = .blocking(lock: lock, mode: try body.readMode("mode"))
        case 0xB0:
            let tag = try body.read(UInt32.self, "tag")
            let count = Int(try body.read(UInt32.self, "json length"))
            guard let json = body.readBytes(length: count) else { throw .malformed("truncated in json") }
            message = .queryReply(tag: tag, json: json)
        case 0xFE:
            message = .goodbye(reason: try body.readString16("reason"))
        default:
            throw .malformed("unknown server frame type 0x\(String(type, radix: 16))")
        }
        return message
    }
}
