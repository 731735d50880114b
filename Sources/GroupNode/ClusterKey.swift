import Foundation

#if canImport(Glibc)
    import Glibc
#elseif canImport(Musl)
    import Musl
#elseif canImport(Darwin)
    import Darwin
#endif

public struct ClusterKeyError: Error, CustomStringConvertible, Hashable, Sendable {
    public var message: String
    public init(_ message: String) { self.message = message }
    public var description: String { message }
}

/// The cluster key (corosync's authkey): random bytes shared by every node, with which each peer frame is
/// authenticated (HMAC-SHA256). The file holds the raw bytes: `ClusterKey.generate()` makes 64, and 32 to 4096 are
/// accepted. `read` refuses a file that others (not the owner, not the group) may read, or that anyone but its owner
/// may change, or that is owned by another user than root or dlmd's (`TrustedFile`): the key is a secret, like
/// ssh's private keys. `write` creates the file with mode 0400 and never overwrites one.
public struct ClusterKey: Sendable {
    public static let generatedLength = 64
    public static let minimumLength = 32
    public static let maximumLength = 4096

    public let bytes: [UInt8]

    public init(bytes: [UInt8]) throws {
        guard bytes.count >= Self.minimumLength else {
            throw ClusterKeyError(
                "the cluster key has \(bytes.count) bytes; at least \(Self.minimumLength) are needed "
                    + "(make one with `dlmtool keygen`)")
        }
        guard bytes.count <= Self.maximumLength else {
            throw ClusterKeyError("the cluster key has \(bytes.count) bytes; at most \(Self.maximumLength)")
        }
        self.bytes = bytes
    }

    public static func generate() -> ClusterKey {
        try! ClusterKey(bytes: secureRandomBytes(generatedLength))
    }

    /// Creates `path` with mode 0400 and writes the key; fails if the file exists.
    public func write(to path: String) throws {
        let fd = open(path, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0o400)
        guard fd >= 0 else {
            let code = errno
            if code == EEXIST {
                throw ClusterKeyError("\(path): exists; a cluster key is never overwritten (remove it first)")
            }
            throw ClusterKeyError("\(path): cannot create: \(String(cString: strerror(code)))")
        }
        defer { close(fd) }
        _ = fchmod(fd, 0o400)
        var written = 0
        while written < bytes.count {
            let n = bytes.withUnsafeBytes { Glibc.write(fd, $0.baseAddress! + written, bytes.count - written) }
            if n < 0 {
                if errno == EINTR { continue }
                throw ClusterKeyError("\(path): cannot write: \(String(cString: strerror(errno)))")
            }
            written += n
        }
        guard fsync(fd) == 0 else {
            throw ClusterKeyError("\(path): cannot sync: \(String(cString: strerror(errno)))")
        }
    }

    /// Reads a key file: it must be a regular file owned by root or by dlmd's user, not writable by its group or
    /// others and not readable by others (`TrustedFile`), and hold 32 to 4096 bytes. It is read from the descriptor
    /// that was checked.
    public static func read(from path: String) throws -> ClusterKey {
        let bytes: [UInt8]
        do {
            bytes = try TrustedFile.read(path, what: "the cluster key", secret: true, limit: maximumLength)
        } catch {
            if error.message == "missing" {
                throw ClusterKeyError(
                    "\(path): the cluster key file is missing (make one with `dlmtool keygen`, then copy it to "
                        + "every node)")
            }
            throw ClusterKeyError("\(path): \(error.message)")
        }
        do {
            return try ClusterKey(bytes: bytes)
        } catch let error as ClusterKeyError {
            throw ClusterKeyError("\(path): \(error.message)")
        }
    }
}
