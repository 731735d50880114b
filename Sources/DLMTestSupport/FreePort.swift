import Foundation

/// A TCP port on `host` (default 127.0.0.1) that nothing listens on right now: bound to port 0, read back,
/// closed. Another process may take it before the caller does; tests that bind it retry with a new one.
public func freePort(host: String = "127.0.0.1") throws -> Int {
    let fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
    guard fd >= 0 else { throw SupportError("socket: errno \(errno)") }
    defer { close(fd) }
    var address = sockaddr_in()
    address.sin_family = sa_family_t(AF_INET)
    address.sin_addr.s_addr = inet_addr(host)
    address.sin_port = 0
    var length = socklen_t(MemoryLayout<sockaddr_in>.size)
    let bound = withUnsafeMutablePointer(to: &address) {
        $0.withMemoryRebound(to: sockaddr.self, capacity: 1) {
            bind(fd, $0, length) == 0 && getsockname(fd, $0, &length) == 0
        }
    }
    guard bound else { throw SupportError("cannot find a free port on \(host): errno \(errno)") }
    return Int(UInt16(bigEndian: address.sin_port))
}

/// `count` distinct free ports.
public func freePorts(_ count: Int, host: String = "127.0.0.1") throws -> [Int] {
    var ports: [Int] = []
    while ports.count < count {
        let port = try freePort(host: host)
        if !ports.contains(port) { ports.append(port) }
    }
    return ports
}

/// An error of the test harness, with what it saw.
public struct SupportError: Error, CustomStringConvertible {
    public var description: String
    public init(_ description: String) { self.description = description }
}
