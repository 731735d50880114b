import DLMCore

/// The protocol versions this codec speaks (Protocol/CLIENT.md §3).
public enum ProtocolVersion {
    public static let current: UInt16 = 2
    public static let magic: UInt32 = 0x444C_4D50  // "DLMP"
}

/// Limits of Protocol/CLIENT.md §10.
public enum WireLimits {
    /// The longest frame a client may send, counting the type byte and the body.
    public static let maxClientFrame = 1024
    /// The longest frame the server sends.
    public static let maxServerFrame = 16 * 1024 * 1024
    public static let maxName = 64
    public static let maxValueBlock = 64
}

/// The first frame of a session.
public struct Hello: Sendable, Hashable {
    public var minVersion: UInt16
    public var maxVersion: UInt16
    public var pid: UInt32
    public var clientName: String

    public init(
        minVersion: UInt16 = ProtocolVersion.current, maxVersion: UInt16 = ProtocolVersion.current, pid: UInt32,
        clientName: String
    ) {
        self.minVersion = minVersion
        self.maxVersion = maxVersion
        self.pid = pid
        self.clientName = clientName
    }
}

/// LOCK: a new lock request.
public struct LockMessage: Sendable, Hashable {
    public var tag: UInt32
    public var lockspace: UInt32
    public var flags: LockFlags
    public var mode: LockMode
    public var options: LockMessageOptions
    public var priority: UInt8
    /// 0 for none.
    public var parent: UInt32
    /// 0 for none.
    public var timeoutNanoseconds: UInt64
    /// 0 for none.
    public var transaction: UInt64
    public var name: [UInt8]

    public init(
        tag: UInt32, lockspace: UInt32, flags: LockFlags = [], mode: LockMode,
        options: LockMessageOptions = .blockingCallbacks, priority: UInt8 = 0, parent: UInt32 = 0,
        timeoutNanoseconds: UInt64 = 0, transaction: UInt64 = 0, name: [UInt8]
    ) {
        self.tag = tag
        self.lockspace = lockspace
        self.flags = flags
        self.mode = mode
        self.options = options
        self.priority = priority
        self.parent = parent
        self.timeoutNanoseconds = timeoutNanoseconds
        self.transaction = transaction
        self.name = name
    }
}

/// The `options` byte of LOCK.
public struct LockMessageOptions: OptionSet, Sendable, Hashable {
    public var rawValue: UInt8
    public init(rawValue: UInt8) { self.rawValue = rawValue }
    public static let blockingCallbacks = LockMessageOptions(rawValue: 1)
    public static let alwaysFencingToken = LockMessageOptions(rawValue: 2)
    public static let all: LockMessageOptions = [.blockingCallbacks, .alwaysFencingToken]
}

/// CONVERT: a conversion of a granted lock.
public struct ConvertMessage: Sendable, Hashable {
    public var tag: UInt32
    public var lock: UInt32
    public var flags: LockFlags
    public var mode: LockMode
    /// 255 keeps the lock's priority.
    public var priority: UInt8
    public var timeoutNanoseconds: UInt64
    public var valueBlock: [UInt8]

    public init(
        tag: UInt32, lock: UInt32, flags: LockFlags = .convert, mode: LockMode, priority: UInt8 = 255,
        timeoutNanoseconds: UInt64 = 0, valueBlock: [UInt8] = []
    ) {
        self.tag = tag
        self.lock = lock
        self.flags = flags
        self.mode = mode
        self.priority = priority
        self.timeoutNanoseconds = timeoutNanoseconds
        self.valueBlock = valueBlock
    }
}

/// UNLOCK: an unlock, a cancel (CANCEL) or a forced unlock (FORCEUNLOCK).
public struct UnlockMessage: Sendable, Hashable {
    public var tag: UInt32
    public var lock: UInt32
    public var flags: LockFlags
    public var valueBlock: [UInt8]

    public init(tag: UInt32, lock: UInt32, flags: LockFlags = [], valueBlock: [UInt8] = []) {
        self.tag = tag
        self.lock = lock
        self.flags = flags
        self.valueBlock = valueBlock
    }
}

/// What a QUERY asks for.
public enum QueryKind: UInt8, Sendable, Hashable, CaseIterable {
    case status = 1
    case lockspaces = 2
    /// The first page of a lockspace's resources and locks; the argument is the lockspace's name.
    case lockdebug = 3
    case lockdump = 4
    /// A later page: the argument is a `cursor:u64` (the `next` of the page before) and the name.
    case lockdebugPage = 5
    case lockdumpPage = 6
    /// dlmd's most recent log lines (`dlmtool dump`, dlm_tool's `dump`); root only; no argument.
    case log = 7
    /// The settings dlmd runs with (`dlmtool dump-config`, dlm_tool's `dump_config`); root only; no argument.
    case config = 8

    /// The argument of a page query (kinds 5 and 6): the cursor, then the lockspace's name.
    public static func pageArgument(cursor: UInt64, lockspace: [UInt8]) -> [UInt8] {
        withUnsafeBytes(of: cursor.bigEndian) { Array($0) } + lockspace
    }

    /// The cursor and lockspace name of a page query's argument, nil if it is too short.
    public static func parsePageArgument(_ argument: [UInt8]) -> (cursor: UInt64, lockspace: [UInt8])? {
        guard argument.count > 8 else { return nil }
        let cursor = argument[..<8].reduce(UInt64(0)) { $0 << 8 | UInt64($1) }
        return (cursor, Array(argument[8...]))
    }

    /// The longest argument of this kind: a name, or a cursor and a name.
    public var maxArgument: Int {
        switch self {
        case .lockdebugPage, .lockdumpPage: 8 + WireLimits.maxName
        default: WireLimits.maxName
        }
    }
}

/// Every frame a client sends (Protocol/CLIENT.md §4).
public enum ClientMessage: Sendable, Hashable {
    case hello(Hello)
    case ping(tag: UInt32)
    case bye(tag: UInt32)
    /// Opens a lockspace; `mode` (permission bits) is the one it gets if this request creates it.
    case openLockspace(
        tag: UInt32, name: [UInt8], valueBlockLength: UInt8, create: Bool, mode: UInt16 = LockspaceAccess.defaultMode)
    case releaseLockspace(tag: UInt32, lockspace: UInt32, force: Bool)
    /// Removes the orphans that process `pid` of node `nodeID` (0: this node) left in the lockspace.
    case purge(tag: UInt32, lockspace: UInt32, nodeID: UInt32, pid: UInt32)
    /// An operator says node `nodeID` is off: the fence that this cluster member waits for counts as done
    /// (dlm_tool's `fence_ack`). Root only.
    case fenceAck(tag: UInt32, nodeID: UInt32)
    case lock(LockMessage)
    case convert(ConvertMessage)
    case unlock(UnlockMessage)
    case deadlockCancel(tag: UInt32, lock: UInt32)
    case query(tag: UInt32, kind: QueryKind, argument: [UInt8])

    public var typeCode: UInt8 {
        switch self {
        case .hello: 0x01
        case .ping: 0x02
        case .bye: 0x03
        case .openLockspace: 0x10
        case .releaseLockspace: 0x11
        case .purge: 0x12
        case .fenceAck: 0x13
        case .lock: 0x20
        case .convert: 0x21
        case .unlock: 0x22
        case .deadlockCancel: 0x23
        case .query: 0x30
        }
    }

    /// The request's tag; 0 for HELLO.
    public var tag: UInt32 {
        switch self {
        case .hello: 0
        case .ping(let tag), .bye(let tag), .openLockspace(let tag, _, _, _, _), .releaseLockspace(let tag, _, _),
            .purge(let tag, _, _, _), .fenceAck(let tag, _), .deadlockCancel(let tag, _), .query(let tag, _, _):
            tag
        case .lock(let m): m.tag
        case .convert(let m): m.tag
        case .unlock(let m): m.tag
        }
    }
}

/// COMPLETION: the end of one operation on one lock.
public struct CompletionMessage: Sendable, Hashable {
    /// The request this completion answers, 0 if it answers none (a queued operation that ended later).
    public var tag: UInt32
    public var lock: UInt32
    public var status: DLMStatus
    public var flags: CompletionFlags
    /// nil for none (255 on the wire).
    public var mode: LockMode?
    public var valueBlockSequence: UInt64
    public var fencingToken: UInt64
    public var valueBlock: [UInt8]

    public init(
        tag: UInt32, lock: UInt32, status: DLMStatus, flags: CompletionFlags = [], mode: LockMode?,
        valueBlockSequence: UInt64 = 0, fencingToken: UInt64 = 0, valueBlock: [UInt8] = []
    ) {
        self.tag = tag
        self.lock = lock
        self.status = status
        self.flags = flags
        self.mode = mode
        self.valueBlockSequence = valueBlockSequence
        self.fencingToken = fencingToken
        self.valueBlock = valueBlock
    }

    public init(tag: UInt32, _ completion: Completion) {
        self.init(
            tag: tag, lock: completion.lock.rawValue, status: completion.status, flags: completion.flags,
            mode: completion.mode, valueBlockSequence: completion.valueBlockSequence,
            fencingToken: completion.fencingToken, valueBlock: completion.valueBlock ?? [])
    }
}

/// HELLO_REPLY.
public struct HelloReply: Sendable, Hashable {
    public var version: UInt16
    public var nodeID: UInt32
    public var maxName: UInt8
    public var maxValueBlock: UInt8
    public var server: String

    public init(
        version: UInt16 = ProtocolVersion.current, nodeID: UInt32, maxName: UInt8 = 64, maxValueBlock: UInt8 = 64,
        server: String
    ) {
        self.version = version
        self.nodeID = nodeID
        self.maxName = maxName
        self.maxValueBlock = maxValueBlock
        self.server = server
    }
}

/// Every frame the server sends (Protocol/CLIENT.md §5).
public enum ServerMessage: Sendable, Hashable {
    case helloReply(HelloReply)
    case pong(tag: UInt32)
    case lockspace(tag: UInt32, lockspace: UInt32, valueBlockLength: UInt8, created: Bool)
    /// The reply to PURGE: how many locks went, sub-locks included.
    case purged(tag: UInt32, count: UInt32)
    case ok(tag: UInt32, lock: UInt32)
    case error(tag: UInt32, status: DLMStatus, message: String)
    case completion(CompletionMessage)
    case blocking(lock: UInt32, mode: LockMode)
    case queryReply(tag: UInt32, json: [UInt8])
    case goodbye(reason: String)

    public var typeCode: UInt8 {
        switch self {
        case .helloReply: 0x81
        case .pong: 0x82
        case .lockspace: 0x90
        case .purged: 0x91
        case .ok: 0xA0
        case .error: 0xA1
        case .completion: 0xA2
        case .blocking: 0xA3
        case .queryReply: 0xB0
        case .goodbye: 0xFE
        }
    }
}
