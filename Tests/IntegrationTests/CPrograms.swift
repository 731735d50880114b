import DLMTestSupport
import Foundation

/// Test programs of Tests/CDLMTests compiled with the C library's sources (Sources/CDLM) into one program each: no
/// installed or prebuilt libdlm needed, only `cc` and Debian's libdlm.h (`make deps`).
enum CPrograms {
    /// Compiles Tests/CDLMTests/`name`.c; the program's path.
    static func compile(_ name: String) -> Result<String, SupportError> {
        let root = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent()
            .deletingLastPathComponent().path
        let output = Daemon.temporaryDirectory("dlm-\(name)") + "-\(name)"
        let compile = Process()
        compile.executableURL = URL(fileURLWithPath: "/usr/bin/env")
        compile.arguments = [
            ProcessInfo.processInfo.environment["CC"] ?? "cc", "-std=c11", "-D_GNU_SOURCE", "-O1", "-Wall", "-Werror",
            "-pthread", "-DDLM_THREADED=1", "-o", output, root + "/Tests/CDLMTests/\(name).c",
            root + "/Sources/CDLM/libdlm.c", root + "/Sources/CDLM/wire.c",
        ]
        let errors = Pipe()
        compile.standardError = errors
        do { try compile.run() } catch { return .failure(SupportError("cannot run cc: \(error)")) }
        let message = String(decoding: errors.fileHandleForReading.readDataToEndOfFile(), as: UTF8.self)
        compile.waitUntilExit()
        guard compile.terminationStatus == 0 else {
            return .failure(
                SupportError(
                    "cannot compile Tests/CDLMTests/\(name).c (make deps installs cc and libdlm.h): \(message)"))
        }
        return .success(output)
    }
}
