import Foundation
import GroupServices

/// How one run of the fence command ended.
public struct FenceOutcome: Sendable, Hashable {
    public var ok: Bool
    /// `exit status 1`, `killed by signal 9`, `timed out after 60 s`, `cannot run ...`; with the tail of standard
    /// error when it printed anything.
    public var reason: String
}

/// Runs the fence command (an executable's path, run without a shell) with the node id as its only argument, on a
/// thread of its own; kills it (SIGTERM, then SIGKILL 2 s later) after `timeout` seconds. Exit status 0 means the
/// node is fenced; anything else, including a timeout, is a failure.
enum FenceCommand {
    static let stderrTail = 512

    static func run(
        command: String, node: NodeID, timeout: Double, completion: @escaping @Sendable (FenceOutcome) -> Void
    ) {
        Thread.detachNewThread {
            completion(runSynchronously(command: command, node: node, timeout: timeout))
        }
    }

    static func runSynchronously(command: String, node: NodeID, timeout: Double) -> FenceOutcome {
        let process = Process()
        process.executableURL = URL(fileURLWithPath: command)
        process.arguments = ["\(node)"]
        process.standardInput = FileHandle.nullDevice
        process.standardOutput = FileHandle.nullDevice
        let errorPath = FileManager.default.temporaryDirectory
            .appendingPathComponent("dlm-fence-\(node)-\(UUID().uuidString).stderr").path
        guard FileManager.default.createFile(atPath: errorPath, contents: nil),
            let errorFile = FileHandle(forWritingAtPath: errorPath)
        else {
            return FenceOutcome(ok: false, reason: "cannot create \(errorPath) for the fence command's stderr")
        }
        defer {
            try? errorFile.close()
            try? FileManager.default.removeItem(atPath: errorPath)
        }
        process.standardError = errorFile
        let exited = DispatchSemaphore(value: 0)
        process.terminationHandler = { _ in exited.signal() }
        do {
            try process.run()
        } catch {
            return FenceOutcome(ok: false, reason: "cannot run \(command): \(error.localizedDescription)")
        }
        var timedOut = false
        if exited.wait(timeout: .now() + timeout) == .timedOut {
            timedOut = true
            process.terminate()
            if exited.wait(timeout: .now() + 2) == .timedOut {
                kill(process.processIdentifier, SIGKILL)
                exited.wait()
            }
        }
        var reason: String
        if timedOut {
            reason = "timed out after \(timeout) s (killed)"
        } else if process.terminationReason == .uncaughtSignal {
            reason = "killed by signal \(process.terminationStatus)"
        } else {
            reason = "exit status \(process.terminationStatus)"
        }
        let ok = !timedOut && process.terminationReason == .exit && process.terminationStatus == 0
        if let data = FileManager.default.contents(atPath: errorPath), !data.isEmpty {
            let tail = String(decoding: data.suffix(stderrTail), as: UTF8.self)
                .trimmingCharacters(in: .whitespacesAndNewlines)
            if !tail.isEmpty { reason += "; stderr: \(tail)" }
        }
        return FenceOutcome(ok: ok, reason: reason)
    }
}
