/// A completion status as libdlm reports it in `sb_status`: 0 or a positive errno value (REFERENCE.md §3).
public struct DLMStatus: RawRepresentable, Sendable, Hashable, Codable, CustomStringConvertible {
    public var rawValue: Int32
    public init(rawValue: Int32) { self.rawValue = rawValue }

    /// The request was granted.
    public static let granted = DLMStatus(rawValue: 0)
    /// Only the lockspace's creator or root may (release it; act on another user's locks).
    public static let notPermitted = DLMStatus(rawValue: 1)  // EPERM
    public static let noEntry = DLMStatus(rawValue: 2)  // ENOENT
    public static let tryAgain = DLMStatus(rawValue: 11)  // EAGAIN
    /// The lockspace's mode does not let this client in.
    public static let permissionDenied = DLMStatus(rawValue: 13)  // EACCES
    public static let busy = DLMStatus(rawValue: 16)  // EBUSY
    public static let exists = DLMStatus(rawValue: 17)  // EEXIST
    public static let invalid = DLMStatus(rawValue: 22)  // EINVAL
    /// The node's store is full: no new persistent lock or lockspace (the store alarm).
    public static let noSpace = DLMStatus(rawValue: 28)  // ENOSPC
    public static let deadlock = DLMStatus(rawValue: 35)  // EDEADLK
    public static let timedOut = DLMStatus(rawValue: 110)  // ETIMEDOUT
    /// A malformed or out-of-order frame (client protocol).
    public static let protocolError = DLMStatus(rawValue: 71)  // EPROTO
    /// A frame over the size limit (client protocol).
    public static let messageTooLong = DLMStatus(rawValue: 90)  // EMSGSIZE
    /// The server is shutting down.
    public static let shuttingDown = DLMStatus(rawValue: 108)  // ESHUTDOWN
    /// The request or conversion was cancelled.
    public static let cancelled = DLMStatus(rawValue: 0x10001)  // ECANCEL
    /// The lock was unlocked.
    public static let unlocked = DLMStatus(rawValue: 0x10002)  // EUNLOCK

    public var name: String {
        switch self {
        case .granted: "0"
        case .notPermitted: "EPERM"
        case .noEntry: "ENOENT"
        case .permissionDenied: "EACCES"
        case .tryAgain: "EAGAIN"
        case .busy: "EBUSY"
        case .exists: "EEXIST"
        case .invalid: "EINVAL"
        case .noSpace: "ENOSPC"
        case .deadlock: "EDEADLK"
        case .timedOut: "ETIMEDOUT"
        case .protocolError: "EPROTO"
        case .messageTooLong: "EMSGSIZE"
        case .shuttingDown: "ESHUTDOWN"
        case .cancelled: "ECANCEL"
        case .unlocked: "EUNLOCK"
        default: "status \(rawValue)"
        }
    }

    public var description: String { name }
}

/// A request the engine refuses synchronously: an errno-style status and a message for humans.
public struct DLMError: Error, Sendable, Hashable, CustomStringConvertible {
    public var status: DLMStatus
    public var message: String

    public init(_ status: DLMStatus, _ message: String) {
        self.status = status
        self.message = message
    }

    public var description: String { "\(status.name): \(message)" }

    static func invalid(_ message: String) -> DLMError { DLMError(.invalid, message) }
    static func noEntry(_ message: String) -> DLMError { DLMError(.noEntry, message) }
    static func busy(_ message: String) -> DLMError { DLMError(.busy, message) }
}
