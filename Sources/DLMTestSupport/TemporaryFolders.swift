import Foundation

/// The folders that tests and benchmarks make under the temporary directory: each is removed when the process
/// exits (its daemons are stopped by then, or die with it). Before, every `make test` left some 45 folders behind,
/// stores and write-ahead logs of up to 16 MB each: gigabytes after a few dozen runs.
public enum TemporaryFolders {
    private static let lock = NSLock()
    nonisolated(unsafe) private static var made: [String] = []
    nonisolated(unsafe) private static var removesAtExit = false

    /// A new folder's path, `prefix` and 8 random hex digits, under the temporary directory (not created here).
    public static func path(_ prefix: String) -> String {
        let path = FileManager.default.temporaryDirectory
            .appendingPathComponent("\(prefix)-\(UUID().uuidString.prefix(8))").path
        lock.withLock {
            made.append(path)
            if !removesAtExit {
                removesAtExit = true
                atexit { TemporaryFolders.removeAll() }
            }
        }
        return path
    }

    /// Removes every folder made so far (at exit).
    static func removeAll() {
        let paths = lock.withLock {
            defer { made = [] }
            return made
        }
        for path in paths { try? FileManager.default.removeItem(atPath: path) }
    }
}
