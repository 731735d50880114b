import Foundation

#if canImport(Glibc)
    import Glibc
#elseif canImport(Musl)
    import Musl
#endif

/// Who may connect to dlmd's Unix socket. Connecting needs write permission on the socket file, so its mode and
/// group decide it (`socket_mode`, default 0660: dlmd's user and its group; `socket_group`, default dlmd's group),
/// as the kernel DLM's device nodes and Redis's `unixsocketperm` do. The socket is created with no permission for
/// anyone but dlmd's user (umask 0177 around the bind) and only then given its mode and group, so no one else can
/// connect in between. Its directory is checked: if a user other than root or dlmd's could rename or replace the
/// socket there (the directory writable by them, without the sticky bit of /tmp), clients could be led to another
/// process, so dlmd refuses to start.
public enum SocketPermissions {
    /// Read and write for dlmd's user and the socket's group.
    public static let defaultMode: UInt16 = 0o660

    /// `socket_mode` from its text ("0660", "660"): octal permission bits only.
    public static func mode(_ text: String) throws -> UInt16 {
        guard let mode = UInt16(text, radix: 8), mode <= 0o777 else {
            throw NodeError("socket_mode \(text): octal permission bits, e.g. 0660 or 0600")
        }
        return mode
    }

    /// `socket_group`: a group name or number.
    public static func groupID(_ group: String) throws -> gid_t {
        if let number = gid_t(group) { return number }
        guard let entry = getgrnam(group) else { throw NodeError("socket_group \(group): no such group") }
        return entry.pointee.gr_gid
    }

    /// Refuses a directory in which another user could rename or replace the socket.
    static func checkDirectory(_ directory: String) throws {
        var info = stat()
        guard stat(directory, &info) == 0 else {
            throw NodeError("the socket's directory \(directory): \(String(cString: strerror(errno)))")
        }
        let mode = String(info.st_mode & 0o7777, radix: 8)
        guard info.st_uid == 0 || info.st_uid == geteuid() else {
            throw NodeError(
                "the socket's directory \(directory) is owned by user \(info.st_uid), not by root or by dlmd's "
                    + "user (\(geteuid())): that user could replace the socket")
        }
        guard info.st_mode & 0o022 == 0 || info.st_mode & S_ISVTX != 0 else {
            throw NodeError(
                "the socket's directory \(directory) may be written by its group or by every user (mode \(mode)) "
                    + "without the sticky bit: another user could replace the socket; use a directory only dlmd's "
                    + "user may write (chmod go-w it)")
        }
    }

    /// Binds with no permission for group or others, then gives the socket `mode` and `group`.
    static func bind<T>(
        _ path: String, mode: UInt16, group: gid_t?, _ bind: () async throws -> T
    ) async throws -> T {
        let saved = umask(0o177)
        let bound: T
        do {
            bound = try await bind()
        } catch {
            umask(saved)
            throw error
        }
        umask(saved)
        if let group, chown(path, uid_t.max, group) != 0 {
            throw NodeError("cannot give \(path) the group \(group): \(String(cString: strerror(errno)))")
        }
        guard chmod(path, mode_t(mode)) == 0 else {
            let reason = String(cString: strerror(errno))
            throw NodeError("cannot give \(path) the mode \(String(mode, radix: 8)): \(reason)")
        }
        return bound
    }
}
