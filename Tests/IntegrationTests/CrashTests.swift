import DLMClient
import DLMCore
import DLMTestSupport
import Foundation
import Testing

/// `kill -9 dlmd` at random points, restart on the same data directory, and check every promise the durability
/// mode made against a log of what was acknowledged: persistent locks come back as orphans with the same id and
/// mode, adoptable with ORPHAN; value blocks and their sequence numbers come back; a value block that a
/// non-persistent PW/EX holder had when the daemon died is invalid; fencing tokens after a restart are above
/// every token before it.
///
/// Seeded: `DLM_CRASH_SEED` replays a run, `DLM_CRASH_ROUNDS` sets the number of kills (default 12 per mode).
@Suite(.serialized) struct CrashTests {
    /// What the client knows of one resource. Each resource has at most one persistent lock, so that adopting
    /// by name and mode finds that one.
    struct Resource {
        /// The persistent lock and its mode, as acknowledged.
        var lock: LockID?
        var mode: LockMode?
        /// Other states the lock may be in, when an operation on it was in flight at the kill.
        var alternatives: [(lock: LockID?, mode: LockMode?)] = []
        /// A new persistent lock was requested when the daemon died: one the client never heard of may exist.
        var unknownLockMayExist = false
        /// Values the value block may hold, and their sequence numbers.
        var values: Set<[UInt8]> = [zeros]
        var sequences: Set<UInt64> = [0]
        /// A non-persistent EX holder, acknowledged and not released.
        var volatileWriter: LockID?
        /// That holder died with the daemon: the value block must come back invalid.
        var mustBeInvalid = false
        var mayBeInvalid = false

        static let zeros = [UInt8](repeating: 0, count: 8)

        /// The resource without any lock: it is freed, and its value block with it.
        mutating func freed() {
            values = [Resource.zeros]
            sequences = [0]
            mayBeInvalid = false
            mustBeInvalid = false
        }

        mutating func wrote(_ value: [UInt8]) {
            values = [value]
            sequences = Set(sequences.map { $0 + 1 })
            mayBeInvalid = false
            mustBeInvalid = false
        }
    }

    struct Failure: Error, CustomStringConvertible {
        var description: String
    }

    @Test(arguments: ["batch", "sync"])
    func nothingAcknowledgedIsLostWhenDlmdIsKilled(durability: String) async throws {
        let environment = ProcessInfo.processInfo.environment
        let seed = environment["DLM_CRASH_SEED"].flatMap { UInt64($0) } ?? UInt64.random(in: 1...UInt64(UInt32.max))
        let rounds = environment["DLM_CRASH_ROUNDS"].flatMap { Int($0) } ?? 12
        var run = CrashRun(seed: seed)
        let directory = FileManager.default.temporaryDirectory.appendingPathComponent(
            "dlm-crash-\(durability)-\(seed)-\(UUID().uuidString.prefix(6))"
        ).path
        defer { try? FileManager.default.removeItem(atPath: directory) }
        do {
            for round in 0..<rounds {
                try await run.round(round, directory: directory, durability: durability)
            }
        } catch let failure as Failure {
            let steps = run.log.suffix(20).joined(separator: "\n")
            Issue.record(
                "\(failure)\nreplay: DLM_CRASH_SEED=\(seed) swift test --filter CrashTests\nlast steps:\n\(steps)")
        }
    }
}

extension CrashTests {
    /// `sync`: a burst of acknowledged grants of new persistent locks, then `kill -9` at once, while the
    /// write-ahead log holds groups that LMDB does not yet (`dlmd --check` counts them): every acknowledged lock
    /// is back after the restart, with its id. Tried up to three times until a kill finds such groups.
    @Test func aBurstOfAcknowledgedGrantsSurvivesAKillWhileTheLogHoldsThem() async throws {
        var sawUnapplied = false
        for attempt in 0..<3 where !sawUnapplied {
            let directory = FileManager.default.temporaryDirectory.appendingPathComponent(
                "dlm-burst-\(attempt)-\(UUID().uuidString.prefix(6))"
            ).path
            defer { try? FileManager.default.removeItem(atPath: directory) }
            var granted: [Int: LockID] = [:]
            do {
                let daemon = try Daemon(directory: directory, arguments: ["--durability", "sync"])
                let client = try await DLMConnection.connect(socketPath: daemon.socketPath)
                let ls = try await client.openLockspace("burst", valueBlockLength: 8)
                try await withThrowingTaskGroup(of: (Int, LockID?).self) { group in
                    for index in 0..<400 {
                        group.addTask {
                            let result = try await ls.request(
                                Array("b\(index)".utf8), mode: .ex, flags: [.persistent, .noQueue])
                            return (index, result.status == .granted ? result.id : nil)
                        }
                    }
                    for try await (index, id) in group { granted[index] = id }
                }
                daemon.kill()
                await client.close()
            }
            #expect(granted.values.count == 400)
            let check = try Daemon.runToEnd(["--data-dir", directory, "--check"])
            #expect(check.status == 0, "\(check.error)")
            let words = check.output.split(separator: " ")
            let toReplay = words.firstIndex(of: "write-ahead").flatMap { Int(words[$0 - 1]) } ?? -1
            #expect(toReplay >= 0, "\(check.output)")
            sawUnapplied = toReplay > 0
            let daemon = try Daemon(directory: directory, arguments: ["--durability", "sync"])
            defer { daemon.stop() }
            let client = try await DLMConnection.connect(socketPath: daemon.socketPath)
            let ls = try await client.openLockspace("burst", valueBlockLength: 8)
            for (index, id) in granted.sorted(by: { $0.key < $1.key }) {
                let result = try await ls.request(Array("b\(index)".utf8), mode: .ex, flags: [.orphan, .noQueue])
                #expect(
                    result.status == .granted && result.id == id,
                    "b\(index): acknowledged \(id), after restart \(result)")
            }
            await client.close()
        }
        #expect(sawUnapplied, "no kill found write-ahead records that LMDB did not hold yet")
    }

}

/// One seeded run: the model of what was acknowledged, and the rounds of load, kill and restart.
struct CrashRun {
    typealias Resource = CrashTests.Resource
    var random: SplitMix64
    var resources = [Resource](repeating: Resource(), count: 10)
    var highestToken: UInt64 = 0
    var log: [String] = []

    init(seed: UInt64) {
        random = SplitMix64(seed: seed)
    }

    func fail(_ message: String) -> CrashTests.Failure { CrashTests.Failure(description: message) }

    mutating func round(_ round: Int, directory: String, durability: String) async throws {
        let daemon = try Daemon(directory: directory, arguments: ["--durability", durability])
        let client = try await DLMConnection.connect(socketPath: daemon.socketPath)
        defer { daemon.kill() }
        let ls = try await client.openLockspace("crash", valueBlockLength: 8)
        log.append("round \(round): restarted")
        let tokenFloor = highestToken
        for index in resources.indices {
            try await verify(index, ls, tokenFloor: tokenFloor)
        }
        log.append("round \(round): verified")

        let steps = Int(random.next() % 40) + 5
        let killDuring = random.next() % 2 == 0
        for step in 0..<steps {
            let index = Int(random.next() % UInt64(resources.count))
            let inFlight = killDuring && step == steps - 1
            try await operate(index, ls, daemon: daemon, step: step, inFlight: inFlight, tokenFloor: tokenFloor)
            if inFlight { break }
        }
        daemon.kill()
        for index in resources.indices where resources[index].volatileWriter != nil {
            // The holder died with the daemon: while the persistent lock keeps the resource, its value block
            // must come back invalid.
            resources[index].volatileWriter = nil
            resources[index].mustBeInvalid = true
        }
        log.append("round \(round): killed")
        await client.close()
    }

    /// After a restart: the persistent lock of the resource is an orphan with the acknowledged id and mode,
    /// and its value block, sequence, validity and token are as promised. The client adopts it.
    mutating func verify(_ index: Int, _ ls: DLMLockspace, tokenFloor: UInt64) async throws {
        let name = Array("r\(index)".utf8)
        let model = resources[index]
        let allowed = model.alternatives.isEmpty ? [(model.lock, model.mode)] : model.alternatives
        var found: LockResult?
        for mode in Set(allowed.compactMap(\.mode)) {
            if let result = try await adopt(ls, name, mode) {
                found = result
                break
            }
        }
        if found == nil && allowed.contains(where: { $0.lock == nil }) {
            // No lock is expected (unless one was being taken at the kill): none may appear.
            for mode in LockMode.allCases {
                if let result = try await adopt(ls, name, mode) {
                    found = result
                    break
                }
            }
        }
        let matches: Bool
        if let found {
            matches =
                allowed.contains { $0.lock == found.id && $0.mode == found.mode }
                || (model.unknownLockMayExist && allowed.contains { $0.lock == nil })
        } else {
            matches = allowed.contains { $0.lock == nil }
        }
        guard matches else {
            throw fail(
                "r\(index): expected one of \(allowed) after the restart, found \(String(describing: found?.id)) \(String(describing: found?.mode))"
            )
        }
        resources[index].alternatives = []
        resources[index].unknownLockMayExist = false
        guard let found else {
            resources[index].lock = nil
            resources[index].mode = nil
            resources[index].freed()
            return
        }
        resources[index].lock = found.id
        resources[index].mode = found.mode
        let value = found.valueBlock ?? Resource.zeros
        if found.flags.contains(.valueNotValid) {
            guard model.mayBeInvalid || model.mustBeInvalid else {
                throw fail("r\(index): the value block is invalid, though no PW/EX holder died with dlmd")
            }
        } else {
            guard !model.mustBeInvalid else {
                throw fail("r\(index): a PW/EX holder died with dlmd, but the value block is valid")
            }
            guard model.values.contains(value), model.sequences.contains(found.valueBlockSequence) else {
                throw fail(
                    "r\(index): value block \(value) sequence \(found.valueBlockSequence); acknowledged "
                        + "\(model.values) \(model.sequences)")
            }
        }
        resources[index].values = [value]
        resources[index].sequences = [found.valueBlockSequence]
        resources[index].mayBeInvalid = found.flags.contains(.valueNotValid)
        resources[index].mustBeInvalid = false
        try checkToken(found, tokenFloor, "r\(index) adopted")
    }

    /// One random operation on a resource, and the model's state if it is acknowledged. With `inFlight`, the
    /// daemon is killed while it runs: either outcome is then allowed.
    mutating func operate(
        _ index: Int, _ ls: DLMLockspace, daemon: Daemon, step: Int, inFlight: Bool, tokenFloor: UInt64
    ) async throws {
        let name = Array("r\(index)".utf8)
        let value = withUnsafeBytes(of: random.next()) { Array($0) }
        let before = resources[index]
        let choice = random.next() % 4
        var describe: String
        var operation: @Sendable () async throws -> LockResult?
        var acknowledged: (LockResult?) -> Resource
        var outcomes: [(lock: LockID?, mode: LockMode?)] = [(before.lock, before.mode)]
        var unknownLock = false
        switch (before.lock, before.mode) {
        case (nil, _):
            let mode: LockMode = [.nl, .pr, .pw, .ex][Int(random.next() % 4)]
            describe = "lock r\(index) \(mode) persistent"
            operation = { try await ls.request(name, mode: mode, flags: [.persistent, .noQueue, .valueBlock]) }
            acknowledged = { result in
                var after = before
                if let result, result.status == .granted {
                    after.lock = result.id
                    after.mode = mode
                }
                return after
            }
            unknownLock = true
        case (let lock?, let mode?) where choice == 0 && mode >= .pw:
            describe = "convert r\(index) \(mode)->NL writing \(value)"
            operation = { try await ls.requestConversion(of: lock, to: .nl, valueBlock: value) }
            acknowledged = { result in
                var after = before
                if result?.status == .granted {
                    after.mode = .nl
                    after.wrote(value)
                }
                return after
            }
            outcomes.append((lock, .nl))
        case (let lock?, _) where choice == 1:
            describe = "unlock r\(index)"
            operation = {
                _ = try await ls.unlock(lock)
                return nil
            }
            acknowledged = { _ in
                var after = before
                after.lock = nil
                after.mode = nil
                if before.volatileWriter == nil { after.freed() }
                return after
            }
            outcomes.append((nil, nil))
        case (let lock?, .nl?) where before.volatileWriter == nil:
            describe = "volatile EX on r\(index) (persistent NL \(lock) kept)"
            operation = { try await ls.request(name, mode: .ex, flags: [.noQueue]) }
            acknowledged = { result in
                var after = before
                if let result, result.status == .granted { after.volatileWriter = result.id }
                return after
            }
        case (_, _) where before.volatileWriter != nil:
            let holder = before.volatileWriter!
            describe = "unlock volatile EX on r\(index) writing \(value)"
            operation = {
                _ = try await ls.unlock(holder, valueBlock: value)
                return nil
            }
            acknowledged = { _ in
                var after = before
                after.volatileWriter = nil
                after.wrote(value)
                return after
            }
        default:
            return
        }
        if inFlight {
            let task = Task { try await operation() }
            await Task.yield()
            daemon.kill()
            if let result = try? await task.value {
                resources[index] = acknowledged(result)
                try checkToken(result, tokenFloor, describe)
                log.append("step \(step): \(describe) acknowledged as dlmd died")
            } else {
                resources[index].alternatives = outcomes
                resources[index].unknownLockMayExist = unknownLock
                resources[index].values.insert(value)
                resources[index].sequences.formUnion(before.sequences.map { $0 + 1 })
                resources[index].sequences.insert(0)
                resources[index].values.insert(Resource.zeros)
                resources[index].mayBeInvalid = true
                if let writer = before.volatileWriter, describe.hasPrefix("unlock volatile") {
                    // Released or not: the value block is then either written or invalid.
                    _ = writer
                    resources[index].volatileWriter = nil
                }
                log.append("step \(step): \(describe) in flight when dlmd died")
            }
            return
        }
        let result = try await operation()
        try checkToken(result, tokenFloor, describe)
        if let result, result.status == .granted, let read = result.valueBlock,
            !result.flags.contains(.valueNotValid), before.lock != nil || before.volatileWriter != nil,
            !before.values.contains(read)
        {
            throw fail("\(describe): read \(read), acknowledged \(before.values)")
        }
        resources[index] = acknowledged(result)
        log.append("step \(step): \(describe) -> \(result?.status.name ?? "done")")
    }

    mutating func checkToken(_ result: LockResult?, _ floor: UInt64, _ what: String) throws {
        guard let token = result?.fencingToken, result?.status == .granted, token != 0 else { return }
        guard token > floor else {
            throw fail("\(what): fencing token \(token) after a restart, \(floor) before it")
        }
        highestToken = max(highestToken, token)
    }

    /// Adopts the orphan of this name and mode, if there is one.
    func adopt(_ ls: DLMLockspace, _ name: [UInt8], _ mode: LockMode) async throws -> LockResult? {
        do {
            let result = try await ls.request(name, mode: mode, flags: [.orphan, .valueBlock])
            return result.status == .granted ? result : nil
        } catch let error as DLMError where error.status == .noEntry || error.status == .tryAgain {
            return nil
        }
    }
}
