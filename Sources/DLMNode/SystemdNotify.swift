import Foundation

/// The service manager's notification socket (systemd's `sd_notify` protocol, without libsystemd): one datagram of
/// newline-separated `KEY=VALUE` lines on an `AF_UNIX` `SOCK_DGRAM` socket whose path is in `$NOTIFY_SOCKET`. A
/// path that starts with `@` names a socket in the abstract namespace (the `@` stands for a leading NUL byte).
/// dlmd sends `READY=1` once its client socket accepts connections and its store is open (a unit of
/// `Type=notify` is started then), and `STOPPING=1` when a clean stop begins.
public struct SystemdNotifier: Sendable {
    /// `$NOTIFY_SOCKET` as given.
    public let socketPath: String

    /// The notifier of `$NOTIFY_SOCKET`; nil when it is unset or empty (not started by a service manager that
    /// listens), so that every notification is then a no-op.
    public static func fromEnvironment(_ environment: [String: String] = ProcessInfo.processInfo.environment)
        -> SystemdNotifier?
    {
        guard let path = environment["NOTIFY_SOCKET"], !path.isEmpty else { return nil }
        return SystemdNotifier(socketPath: path)
    }

    public init(socketPath: String) {
        self.socketPath = socketPath
    }

    /// Sends `fields` (e.g. `["READY=1", "STATUS=serving"]`) as one datagram. Throws, saying why, if the socket
    /// cannot be reached; a newline inside a field would split it in two, so it is replaced by a space.
    public func notify(_ fields: [String]) throws {
        let message = Array(fields.map { $0.replacingOccurrences(of: "\n", with: " ") }.joined(separator: "\n").utf8)
        var address = sockaddr_un()
        address.sun_family = sa_family_t(AF_UNIX)
        var path = Array(socketPath.utf8)
        let abstract = path.first == UInt8(ascii: "@")
        if abstract { path[0] = 0 }
        let capacity = MemoryLayout.size(ofValue: address.sun_path)
        // A path needs room for its terminating NUL; an abstract name has none and may fill sun_path.
        guard path.count + (abstract ? 0 : 1) <= capacity, path.count > (abstract ? 1 : 0),
            abstract || path.first == UInt8(ascii: "/")
        else {
            throw NodeError("NOTIFY_SOCKET=\(socketPath) is not a Unix socket path or an @abstract name")
        }
        withUnsafeMutableBytes(of: &address.sun_path) { raw in
            raw.copyBytes(from: path)
            if !abstract { raw[path.count] = 0 }
        }
        let length = MemoryLayout<sockaddr_un>.offset(of: \.sun_path)! + path.count + (abstract ? 0 : 1)
        let fd = socket(AF_UNIX, Int32(SOCK_DGRAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0)
        guard fd >= 0 else { throw NodeError("NOTIFY_SOCKET: socket(): \(String(cString: strerror(errno)))") }
        defer { close(fd) }
        let sent = message.withUnsafeBytes { bytes in
            withUnsafePointer(to: &address) {
                $0.withMemoryRebound(to: sockaddr.self, capacity: 1) {
                    sendto(fd, bytes.baseAddress, bytes.count, Int32(MSG_NOSIGNAL), $0, socklen_t(length))
                }
            }
        }
        guard sent == message.count else {
            throw NodeError("NOTIFY_SOCKET=\(socketPath): sendto(): \(String(cString: strerror(errno)))")
        }
    }
}
