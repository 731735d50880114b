import ArgumentParser
import DLMClient
import DLMCore
import DLMWire
import Foundation
import Synchronization

struct Lock: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Run a command while holding a lock, like flock(1).",
        usage: "dlmtool lock [<options>] <name> -- <command> [<arguments> ...]",
        discussion: """
            Takes the lock NAME (mode EX unless --mode; in lockspace "default" unless --lockspace, created \
            if missing), runs COMMAND with standard input, output and error inherited, releases the lock when \
            COMMAND exits, and exits with COMMAND's exit status (128 + N if a signal N killed it). SIGTERM, \
            SIGINT and SIGHUP sent to dlmtool are passed on to COMMAND. COMMAND's environment also holds \
            DLM_LOCKSPACE, DLM_LOCK_NAME, DLM_LOCK_MODE, DLM_LOCK_ID and DLM_FENCING_TOKEN (the token to hand \
            to storage that refuses stale holders; 0 for modes below PW).

            Exit status: COMMAND's; 1 (or --conflict-exit-code) when the lock is not granted: --nonblock and \
            it is held (EAGAIN), --timeout passed (ETIMEDOUT), or the request was chosen as a deadlock victim \
            (EDEADLK); 1 when dlmd cannot be reached or refuses the request; 75 (--lost-exit-code) when the \
            lock was lost while COMMAND ran; 126 when COMMAND cannot be run, 127 when it is not found; 64 for a \
            usage error.

            If the connection to dlmd is lost while COMMAND runs (dlmd stopped or died), or dlmd takes the lock \
            away (its lockspace released with --force), the lock is no longer held (after a lost connection a \
            --persistent one is kept as an orphan) and another process may take it: dlmtool says so on \
            standard error and, by default, sends COMMAND SIGTERM (--on-loss: another signal, or warn to let it \
            finish), then exits with status 75 (--lost-exit-code) once COMMAND has ended. COMMAND is killed \
            (SIGKILL) if dlmtool itself dies, since its lock then goes too.

            With --json, one JSON object describing the grant ({"fencing_token", "lock_id", "lockspace", \
            "mode", "name"}) is written to standard error before COMMAND starts; standard output is COMMAND's.
            """)

    @OptionGroup var options: CommonOptions

    @Option(name: [.customShort("m"), .long], help: "The lock mode: NL, CR, CW, PR, PW or EX.")
    var mode = "EX"

    @Option(
        name: [.customShort("w"), .long],
        help: ArgumentHelp(
            "Give up after waiting this many seconds (ETIMEDOUT); 0 is --nonblock.", valueName: "seconds"))
    var timeout: Double?

    @Flag(name: [.customShort("n"), .long], help: "Fail at once if the lock is held (NOQUEUE: EAGAIN).")
    var nonblock = false

    @Option(name: .long, help: "The lockspace (created if missing).")
    var lockspace = "default"

    @Flag(name: .long, help: "Take the lock PERSISTENT: if dlmtool dies holding it, it stays as an orphan.")
    var persistent = false

    @Option(
        name: [.customShort("E"), .long],
        help: "The exit status when the lock is not granted (timeout, conflict, deadlock).")
    var conflictExitCode: Int32 = 1

    @Option(
        help: ArgumentHelp(
            "What to do to COMMAND when the lock is lost while it runs: a signal (TERM, INT, HUP, KILL, USR1, USR2) "
                + "or warn (let it run on).", valueName: "signal|warn"))
    var onLoss = "TERM"

    @Option(help: "The exit status when the lock was lost while COMMAND ran (with a signal --on-loss).")
    var lostExitCode: Int32 = 75

    /// The signals --on-loss names.
    static let lossSignals: [String: Int32] = [
        "TERM": SIGTERM, "INT": SIGINT, "HUP": SIGHUP, "KILL": SIGKILL, "USR1": SIGUSR1, "USR2": SIGUSR2,
    ]

    @Argument(help: "The lock's (resource's) name, 1 to 64 bytes.")
    var name: String

    @Argument(parsing: .postTerminator, help: "The command to run while holding the lock, after --.")
    var command: [String] = []

    var lockMode: LockMode { LockMode(name: mode) ?? .ex }

    func validate() throws {
        guard LockMode(name: mode) != nil else { throw ValidationError("--mode must be NL, CR, CW, PR, PW or EX") }
        guard (1...64).contains(name.utf8.count) else { throw ValidationError("a lock name has 1 to 64 bytes") }
        try checkLockspaceName(lockspace)
        if let timeout {
            guard timeout >= 0, timeout < 1e9 else { throw ValidationError("--timeout must be a number of seconds") }
            if nonblock { throw ValidationError("--nonblock and --timeout exclude each other") }
        }
        guard onLoss == "warn" || Self.lossSignals[onLoss.uppercased()] != nil else {
            throw ValidationError("--on-loss is warn or one of TERM, INT, HUP, KILL, USR1, USR2")
        }
        guard (0...255).contains(lostExitCode) else { throw ValidationError("--lost-exit-code must be from 0 to 255") }
        guard (0...255).contains(conflictExitCode) else {
            throw ValidationError("--conflict-exit-code must be from 0 to 255")
        }
        guard !command.isEmpty else { throw ValidationError("missing the command to run, after --") }
    }

    struct Grant: Encodable {
        var lockspace: String
        var name: String
        var mode: String
        var lockID: String
        var fencingToken: UInt64

        enum CodingKeys: String, CodingKey {
            case lockspace, name, mode
            case lockID = "lock_id"
            case fencingToken = "fencing_token"
        }
    }

    func run() async throws {
        let inherited = ChildProcess.inheritedDescriptors()
        let connection = try await options.connect()
        let granted: DLMLock
        do {
            granted = try await acquire(on: connection)
        } catch {
            await connection.close()
            throw ToolError.exit(for: error)
        }

        // Watch the connection: if it closes while the command runs, the lock is gone, and the command is told.
        let finished = OnceFlag()
        let lost = OnceFlag()
        let lossSignal = Self.lossSignals[onLoss.uppercased()]
        @Sendable func lose(_ why: String) {
            guard !finished.isSet, lost.setFirst() else { return }
            ToolError.report(
                "\(why) while the command runs: the lock \(Text.name(name)) is no longer held"
                    + (lossSignal == nil ? "" : "; stopping the command (--on-loss \(onLoss))"))
            if let lossSignal { ChildProcess.signal(lossSignal) }
        }
        let watcher = Task {
            for await _ in connection.blockingCallbacks {}
            lose("lost the connection to dlmd")
        }
        // dlmd took the lock away (a forced release of its lockspace).
        let removals = Task { [id = granted.id] in
            for await removed in connection.removedLocks where removed.lock == id {
                lose("dlmd took the lock away (\(removed.status.name): its lockspace was released by force)")
            }
        }

        var environment = ProcessInfo.processInfo.environment
        environment["DLM_LOCKSPACE"] = lockspace
        environment["DLM_LOCK_NAME"] = name
        environment["DLM_LOCK_MODE"] = granted.mode.description
        environment["DLM_LOCK_ID"] = granted.id.description
        environment["DLM_FENCING_TOKEN"] = "\(granted.fencingToken)"
        if options.json {
            let encoder = JSONEncoder()
            encoder.outputFormatting = [.sortedKeys, .withoutEscapingSlashes]
            let grant = Grant(
                lockspace: lockspace, name: name, mode: granted.mode.description, lockID: granted.id.description,
                fencingToken: granted.fencingToken)
            if let data = try? encoder.encode(grant) { FileHandle.standardError.write(data + Data("\n".utf8)) }
        }
        fflush(nil)

        let status: Int32
        do {
            let child = try await ChildProcess.spawn(command, environment: environment, inherited: inherited)
            // Lost before the command started: the watcher had no one to signal.
            if lost.isSet, let lossSignal { ChildProcess.signal(lossSignal) }
            status = await child.wait()
        } catch {
            ToolError.report("cannot run \(command[0]): \(String(cString: strerror(error.errno)))")
            status = error.exitCode
        }

        finished.set()
        do {
            if !lost.isSet { try await granted.unlock() }
        } catch let error as DLMError where error.status == .shuttingDown {
            // The connection is gone, and the lock with it; the watcher said so.
        } catch {
            ToolError.report("cannot release the lock \(Text.name(name)): \(error)")
        }
        await connection.close()
        await watcher.value
        await removals.value
        if lost.isSet, lossSignal != nil { throw ExitCode(lostExitCode) }
        if status != 0 { throw ExitCode(status) }
    }

    /// Requests the lock; throws a ToolError saying why if it is not granted.
    func acquire(on connection: DLMConnection) async throws -> DLMLock {
        let ls = try await connection.openAnyLockspace(lockspace, create: true)
        var flags: LockFlags = []
        var wait: Duration? = nil
        if nonblock || timeout == 0 {
            flags.insert(.noQueue)
        } else if let timeout {
            wait = .nanoseconds(Int64(timeout * 1e9))
        }
        if persistent { flags.insert(.persistent) }
        let result = try await ls.request(Array(name.utf8), mode: lockMode, flags: flags, timeout: wait)
        if result.status == .granted { return try result.granted() }

        let what = "\(lockMode) lock \(Text.name(name)) in lockspace \(Text.name(lockspace))"
        var message: String
        switch result.status {
        case .tryAgain: message = "\(what) is not available now"
        case .timedOut: message = "timed out after \(String(format: "%g", timeout ?? 0)) s waiting for the \(what)"
        case .deadlock: message = "the request for the \(what) was refused to break a deadlock"
        default: message = "the request for the \(what) ended with \(result.status.name)"
        }
        message += " (\(result.status.name))"
        if let holders = await holders(on: connection) { message += "; held \(holders)" }
        throw ToolError(message, exitCode: conflictExitCode)
    }

    /// Who holds the lock: "EX by pid 1234, uid 1000 (owner 7)", from dlmd's lockdebug report; nil if unknown.
    func holders(on connection: DLMConnection) async -> String? {
        guard let json = try? await connection.query(.lockdebug, argument: Array(lockspace.utf8)),
            let report = try? JSONDecoder().decode(LockDebugReport.self, from: Data(json))
        else { return nil }
        let hex = Array(name.utf8).hexString
        guard let resource = report.resources.first(where: { $0.nameHex == hex && $0.path.count <= 1 }) else {
            return nil
        }
        let holders = (resource.granted + resource.converting).compactMap { lock -> String? in
            guard let mode = lock.grantedMode else { return nil }
            let uid = lock.uid.map { ", uid \($0)" } ?? ""
            let owner =
                lock.owner == "orphan"
                ? "an orphan of pid \(lock.pid)\(uid)" : "pid \(lock.pid)\(uid) (owner \(lock.owner))"
            return "in \(mode) by \(owner)"
        }
        return holders.isEmpty ? nil : holders.joined(separator: ", ")
    }
}

/// A flag set once, read from any thread.
final class OnceFlag: Sendable {
    private let value = Atomic<Bool>(false)
    var isSet: Bool { value.load(ordering: .sequentiallyConsistent) }
    func set() { value.store(true, ordering: .sequentiallyConsistent) }
    /// Sets it; whether this call did (it was not set before).
    func setFirst() -> Bool {
        value.compareExchange(expected: false, desired: true, ordering: .sequentiallyConsistent).exchanged
    }
}
