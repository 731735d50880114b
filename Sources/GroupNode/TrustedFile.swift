import Foundation

#if canImport(Glibc)
    import Glibc
#elseif canImport(Musl)
    import Musl
#endif

/// A file dlmd trusts with its cluster's safety: the cluster key (whoever has it can speak as a member) and the
/// cluster config (its fence command runs as dlmd's user). Like sshd with its host keys, dlmd reads such a file
/// only if it is a regular file owned by root or by dlmd's own user and no one else may change it (not writable
/// by its group or by others); a secret must not be readable by others either. The file is opened once, checked
/// with `fstat` on that descriptor and read from it, so that it cannot be swapped between the check and the read.
package enum TrustedFile {
    package struct Refusal: Error {
        package var message: String
    }

    /// The bytes of `path` (at most `limit`), or why it is not trusted. `what` names the file in messages.
    package static func read(_ path: String, what: String, secret: Bool, limit: Int) throws(Refusal) -> [UInt8] {
        let fd = open(path, O_RDONLY | O_CLOEXEC)
        guard fd >= 0 else {
            let code = errno
            throw Refusal(message: code == ENOENT ? "missing" : String(cString: strerror(code)))
        }
        defer { close(fd) }
        var info = stat()
        guard fstat(fd, &info) == 0 else { throw Refusal(message: String(cString: strerror(errno))) }
        guard info.st_mode & S_IFMT == S_IFREG else { throw Refusal(message: "\(what) is not a regular file") }
        let mode = String(info.st_mode & 0o777, radix: 8)
        guard info.st_uid == 0 || info.st_uid == geteuid() else {
            throw Refusal(
                message:
                    "\(what) is owned by user \(info.st_uid), not by root or by dlmd's user (\(geteuid())): "
                    + "chown it")
        }
        guard info.st_mode & 0o022 == 0 else {
            throw Refusal(
                message: "\(what) may be changed by its group or by every user (mode \(mode)): chmod go-w it")
        }
        if secret && info.st_mode & 0o007 != 0 {
            throw Refusal(message: "\(what) is accessible to every user (mode \(mode)); chmod 0400 it")
        }
        guard info.st_size <= limit else {
            throw Refusal(message: "\(what) has \(info.st_size) bytes; at most \(limit) are accepted")
        }
        var bytes = [UInt8](repeating: 0, count: Int(info.st_size) + 1)
        var count = 0
        while count < bytes.count {
            let n = bytes.withUnsafeMutableBytes { Glibc.read(fd, $0.baseAddress! + count, $0.count - count) }
            if n < 0 && errno == EINTR { continue }
            guard n >= 0 else { throw Refusal(message: "cannot read: \(String(cString: strerror(errno)))") }
            if n == 0 { break }
            count += n
        }
        guard count <= limit else { throw Refusal(message: "\(what) grew past \(limit) bytes while being read") }
        return Array(bytes[0..<count])
    }
}
