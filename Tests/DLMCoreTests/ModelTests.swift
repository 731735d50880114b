import DLMTestSupport
import Foundation
import Testing

@testable import DLMCore

// The randomized model test of issue #2: many seeded runs of random operations (lock, convert, unlock, cancel,
// force unlock, orphan adoption, owner exit, tick; random modes, flags, values, and some invalid requests) against
// the lock engine and the reference model of `ReferenceModel.swift`. After every step:
// - compared with the model: the synchronous result, the completions (status, mode, sb_flags, value read, value
//   block sequence), and each resource's queues (grant as a set; convert and wait in order) and value block;
// - checked on the engine's own snapshots: no two incompatible granted modes, queues in arrival order (HEADQUE
//   arrivals first), nothing granted past a request still queued ahead of it (unless NOORDER), fencing tokens
//   strictly increasing per resource;
// - checked on the blocking callbacks (which the model does not predict): see `checkBlockingCallbacks`;
// - and that a walk of the queues would change nothing, unless a queueing left work for the next walk (counted).
//
// Environment:
// - DLM_MODEL_OPS: total operations (default `ModelTestSettings.defaultTotalOps`), split into runs of
//   DLM_MODEL_OPS_PER_SEED operations (default `ModelTestSettings.defaultOpsPerSeed`), one seed each.
// - DLM_MODEL_SEED: replay one seed (decimal or 0x-hex).
// - DLM_MODEL_JOBS: threads running seeds at once (default: the number of CPUs).
// - DLM_MODEL_TRACE=1: print every operation and its effects.
// Millions of operations: `DLM_MODEL_OPS=5000000 swift test -c release -Xswiftc -enable-testing --filter ModelTests`.

@Suite struct ModelTests {
    @Test func randomOperationsAgreeWithTheReferenceModel() async {
        let settings = ModelTestSettings.fromEnvironment()
        let clock = ContinuousClock()
        let start = clock.now
        // The seeds are shared out over the CPUs; each run is independent and deterministic.
        let workers = min(settings.workers, settings.seeds.count)
        let results = await withTaskGroup(of: ModelWorkerResult.self) { group in
            for worker in 0..<workers {
                group.addTask {
                    ModelTests.runSeeds(settings, seeds: settings.seeds.indices.filter { $0 % workers == worker })
                }
            }
            var results: [ModelWorkerResult] = []
            for await result in group { results.append(result) }
            return results
        }
        var total = ModelStats()
        var cpu = 0.0
        for result in results {
            total.add(result.stats)
            cpu += result.cpuSeconds
            for failure in result.failures { Issue.record(Comment(rawValue: failure)) }
        }
        let elapsed = clock.now - start
        let seconds = Double(elapsed.components.seconds) + Double(elapsed.components.attoseconds) / 1e18
        func rate(_ seconds: Double) -> Int { seconds > 0 ? Int(Double(total.operations) / seconds) : 0 }
        print(
            "ModelTests: \(settings.seeds.count) seeds x \(settings.opsPerSeed) ops = \(total.operations) ops on "
                + "\(workers) threads in \(String(format: "%.1f", seconds)) s (\(rate(seconds)) ops/s); "
                + "CPU \(String(format: "%.1f", cpu)) s (\(rate(cpu)) ops per CPU second)")
        print("ModelTests: \(total)")
    }

    /// Runs the seeds at `indices` one after the other; stops after three failures.
    static func runSeeds(_ settings: ModelTestSettings, seeds indices: [Int]) -> ModelWorkerResult {
        let cpuStart = ModelTestSettings.cpuSeconds()
        var result = ModelWorkerResult()
        for index in indices {
            let seed = settings.seeds[index]
            var run = ModelRun(seed: seed, trace: settings.trace)
            let failure = run.run(operations: settings.opsPerSeed)
            result.stats.add(run.stats)
            if let failure {
                let text = run.report(failure, settings: settings)
                print(text)
                result.failures.append(text)
                if result.failures.count >= 3 { break }
            }
        }
        result.cpuSeconds = ModelTestSettings.cpuSeconds() - cpuStart
        return result
    }
}

/// Regressions found by the model test, replayed by hand.
@Suite struct ModelTestFindings {
    static let name = Array("r".utf8)

    static func engine() -> (LockEngine, LockspaceID) {
        var engine = LockEngine(config: EngineConfig(deadlockWait: 0))
        let lockspace = try! engine.createLockspace(name: Array("ls".utf8), valueBlockLength: 8)
        return (engine, lockspace)
    }

    static func lock(
        _ engine: inout LockEngine, _ lockspace: LockspaceID, owner: UInt64, _ mode: LockMode, _ flags: LockFlags = []
    ) throws -> LockID {
        var effects: [Effect] = []
        let request = LockRequest(lockspace: lockspace, owner: OwnerID(owner), name: name, mode: mode, flags: flags)
        return try engine.lock(request, into: &effects)
    }

    /// PW -> EX reads the value block, but with ALTPR it may be granted as PW -> PR, which writes: a value longer
    /// than the value block was stored as it was.
    @Test func aValueTooLongForTheValueBlockIsRefusedWhenAnAlternateModeWouldWriteIt() throws {
        var (engine, lockspace) = ModelTestFindings.engine()
        let a = try ModelTestFindings.lock(&engine, lockspace, owner: 1, .pw, .valueBlock)
        _ = try ModelTestFindings.lock(&engine, lockspace, owner: 2, .cr)
        var effects: [Effect] = []
        let conversion = ConvertRequest(
            lock: a, owner: OwnerID(1), mode: .ex, flags: [.valueBlock, .alternatePR],
            valueBlock: [UInt8](repeating: 7, count: 9))
        #expect(throws: DLMError.self) { try engine.convert(conversion, into: &effects) }
        #expect(engine.snapshotResource(lockspace, path: [ModelTestFindings.name])?.valueBlock == nil)
    }

    /// A conversion PW -> EX with ALTPR is queued (QUECVT while another conversion waits, at the head), then
    /// granted PR by the pass over the queue: PW -> PR writes the value handed in with the conversion (REFERENCE.md §4).
    @Test func aQueuedConversionGrantedInAnAlternateModeThatWritesWritesItsValue() throws {
        var (engine, lockspace) = ModelTestFindings.engine()
        let a = try ModelTestFindings.lock(&engine, lockspace, owner: 1, .pw, .valueBlock)
        _ = try ModelTestFindings.lock(&engine, lockspace, owner: 2, .cr)
        let c = try ModelTestFindings.lock(&engine, lockspace, owner: 3, .nl)
        var effects: [Effect] = []
        try engine.convert(ConvertRequest(lock: c, owner: OwnerID(3), mode: .ex), into: &effects)
        let value = Array("written!".utf8)
        try engine.convert(
            ConvertRequest(
                lock: a, owner: OwnerID(1), mode: .ex,
                flags: [.valueBlock, .queueConversion, .headOfQueue, .alternatePR], valueBlock: value),
            into: &effects)
        // QUECVT keeps it from being granted "now"; queued at the head, the pass that follows grants it PR.
        let grants = effects.compactMap { effect -> Completion? in
            if case .completion(let completion) = effect, completion.lock == a { return completion }
            return nil
        }
        #expect(grants.map(\.mode) == [.pr] && grants.first?.flags.contains(.alternateMode) == true)
        let resource = engine.snapshotResource(lockspace, path: [ModelTestFindings.name])
        #expect(resource?.valueBlock == value)
        #expect(resource?.valueBlockSequence == 1)
    }

    /// A conversion demoted by CONVDEADLK lets a conversion ahead of it through; that lock now blocks a conversion
    /// still queued, and must be told (REFERENCE.md §2: after a granted conversion, the walk and its blocking
    /// callbacks). Only the demoted lock's own mode was sent, so nothing would ever ask it to give way.
    @Test func aConversionGrantedByADemotionIsToldOfTheRequestsItBlocks() throws {
        var (engine, lockspace) = ModelTestFindings.engine()
        let x = try ModelTestFindings.lock(&engine, lockspace, owner: 2, .nl)
        let y = try ModelTestFindings.lock(&engine, lockspace, owner: 3, .nl)
        let l = try ModelTestFindings.lock(&engine, lockspace, owner: 5, .pr)
        var effects: [Effect] = []
        try engine.convert(ConvertRequest(lock: x, owner: OwnerID(2), mode: .cw), into: &effects)
        try engine.convert(ConvertRequest(lock: y, owner: OwnerID(3), mode: .ex), into: &effects)
        effects = []
        try engine.convert(
            ConvertRequest(
                lock: l, owner: OwnerID(5), mode: .cw, flags: [.queueConversion, .conversionDeadlockDemote]),
            into: &effects)
        #expect(
            effects.contains(
                .completion(Completion(lock: x, owner: OwnerID(2), status: .granted, mode: .cw))))
        #expect(engine.lockState(l)?.queue == .convert && engine.lockState(l)?.grantedMode == .nl)
        #expect(effects.contains(.blockingCallback(BlockingCallback(lock: x, owner: OwnerID(2), mode: .ex))))
    }
}

struct ModelWorkerResult {
    var stats = ModelStats()
    var failures: [String] = []
    var cpuSeconds = 0.0
}

// MARK: Settings

struct ModelTestSettings {
    /// About 15-25 s in a debug build on this 2-CPU machine (13-17k operations per CPU second); a release build
    /// does 120-135k.
    static let defaultTotalOps = 400_000
    static let defaultOpsPerSeed = 2_000

    var opsPerSeed: Int
    var seeds: [UInt64]
    var trace: Bool
    var opsPerSeedOverridden: Bool
    /// Threads running seeds at once: DLM_MODEL_JOBS, else the number of CPUs.
    var workers = 1

    /// CPU time of this thread, so that the rate printed means something on a busy machine.
    static func cpuSeconds() -> Double {
        var time = timespec()
        clock_gettime(CLOCK_THREAD_CPUTIME_ID, &time)
        return Double(time.tv_sec) + Double(time.tv_nsec) / 1e9
    }

    static func fromEnvironment() -> ModelTestSettings {
        let environment = ProcessInfo.processInfo.environment
        func number(_ name: String) -> UInt64? {
            guard let text = environment[name]?.trimmingCharacters(in: .whitespaces), !text.isEmpty else {
                return nil
            }
            if text.hasPrefix("0x") { return UInt64(text.dropFirst(2), radix: 16) }
            return UInt64(text.replacingOccurrences(of: "_", with: ""))
        }
        let perSeedOverride = number("DLM_MODEL_OPS_PER_SEED").map { max(1, Int($0)) }
        let opsPerSeed = perSeedOverride ?? defaultOpsPerSeed
        let trace = environment["DLM_MODEL_TRACE"].map { $0 != "" && $0 != "0" } ?? false
        var settings = ModelTestSettings(
            opsPerSeed: opsPerSeed, seeds: [], trace: trace, opsPerSeedOverridden: perSeedOverride != nil)
        settings.workers =
            number("DLM_MODEL_JOBS").map { max(1, Int($0)) } ?? ProcessInfo.processInfo.activeProcessorCount
        if let seed = number("DLM_MODEL_SEED") {
            settings.seeds = [seed]
        } else {
            let totalOps = number("DLM_MODEL_OPS").map { Int($0) } ?? defaultTotalOps
            settings.seeds = (1...UInt64(max(1, totalOps / opsPerSeed))).map { $0 }
        }
        return settings
    }
}

// MARK: Random numbers

extension SplitMix64 {
    mutating func mode() -> LockMode { LockMode(rawValue: UInt8(below(6)))! }
}

// MARK: Operations

enum ModelOp: CustomStringConvertible {
    case lock(
        owner: UInt64, resource: Int, mode: LockMode, flags: LockFlags, timeout: UInt64?, wantsBlockingCallbacks: Bool,
        alwaysFencingToken: Bool)
    case convert(owner: UInt64, lock: UInt32, mode: LockMode, flags: LockFlags, value: [UInt8]?, timeout: UInt64?)
    case unlock(owner: UInt64, lock: UInt32, flags: LockFlags, value: [UInt8]?)
    case ownerExited(UInt64)
    case tick(UInt64)

    var description: String {
        func extras(_ flags: LockFlags, _ value: [UInt8]?, _ timeout: UInt64?) -> String {
            var text = flags.isEmpty ? "" : " [\(flags)]"
            if let value { text += " value=\(ModelFormat.hex(value))" }
            if let timeout { text += " timeout=\(timeout)" }
            return text
        }
        switch self {
        case .lock(let owner, let resource, let mode, let flags, let timeout, let wants, let always):
            return "owner \(owner) lock r\(resource) \(mode)\(extras(flags, nil, timeout))"
                + (wants ? "" : " (no basts)") + (always ? " (always a token)" : "")
        case .convert(let owner, let lock, let mode, let flags, let value, let timeout):
            return "owner \(owner) convert lock \(lock) to \(mode)\(extras(flags, value, timeout))"
        case .unlock(let owner, let lock, let flags, let value):
            return "owner \(owner) unlock lock \(lock)\(extras(flags, value, nil))"
        case .ownerExited(let owner):
            return "owner \(owner) exits"
        case .tick(let now):
            return "tick now=\(now)"
        }
    }
}

/// What happened over a run, to see that the runs reach the interesting cases.
struct ModelStats: CustomStringConvertible {
    var operations = 0
    var synchronousErrors: [String: Int] = [:]
    var completions: [String: Int] = [:]
    var blockingCallbacks = 0
    var adoptions = 0
    var demotions = 0
    var alternateGrants = 0
    var valueBlockReads = 0
    var queueingsLeftUnsettled: [String: Int] = [:]
    var grantOrigins: [String: Int] = [:]
    var waitersBehindUntoldAdopter = 0
    var waitersBehindUntoldNoOrder = 0

    mutating func add(_ other: ModelStats) {
        operations += other.operations
        synchronousErrors.merge(other.synchronousErrors, uniquingKeysWith: +)
        completions.merge(other.completions, uniquingKeysWith: +)
        blockingCallbacks += other.blockingCallbacks
        adoptions += other.adoptions
        demotions += other.demotions
        alternateGrants += other.alternateGrants
        valueBlockReads += other.valueBlockReads
        queueingsLeftUnsettled.merge(other.queueingsLeftUnsettled, uniquingKeysWith: +)
        grantOrigins.merge(other.grantOrigins, uniquingKeysWith: +)
        waitersBehindUntoldAdopter += other.waitersBehindUntoldAdopter
        waitersBehindUntoldNoOrder += other.waitersBehindUntoldNoOrder
    }

    var description: String {
        func list(_ counts: [String: Int]) -> String {
            counts.sorted { $0.key < $1.key }.map { "\($0.key) \($0.value)" }.joined(separator: ", ")
        }
        return "completions: \(list(completions)); synchronous errors: \(list(synchronousErrors)); "
            + "blocking callbacks \(blockingCallbacks), adoptions \(adoptions), DEMOTED \(demotions), "
            + "ALTMODE \(alternateGrants), value block reads \(valueBlockReads), "
            + "grants \(list(grantOrigins)); "
            + "queued leaving a grant or a conversion deadlock to the next walk: \(list(queueingsLeftUnsettled)); "
            + "steps with a waiter blocked only by untold holders: adopted orphans \(waitersBehindUntoldAdopter), "
            + "NOORDER granted at once \(waitersBehindUntoldNoOrder)"
    }
}

// MARK: One run

/// The chance in percent of each flag in a request or conversion, drawn per seed ("swarm testing"): most
/// seeds use the usual chance, some leave a flag out, some use it a lot, so that rare combinations get their turn.
struct ModelFlagChances {
    var lock: [(LockFlags, Int)] = []
    var convert: [(LockFlags, Int)] = []

    init(random: inout SplitMix64) {
        // In this order: NOQUEUE first, since EXPEDITE and CONVDEADLK exclude it.
        let lockUsual: [(LockFlags, Int)] = [
            (.noQueue, 15), (.valueBlock, 40), (.persistent, 5), (.noDeadlockWait, 8), (.noDeadlockBlock, 4),
            (.expedite, 30), (.noQueueBlockingCallback, 10), (.headOfQueue, 8), (.noOrder, 8), (.alternatePR, 8),
            (.alternateCW, 8), (.invalidateValueBlock, 3), (.timeout, 10),
        ]
        let convertUsual: [(LockFlags, Int)] = [
            (.noQueue, 15), (.valueBlock, 45), (.queueConversion, 15), (.invalidateValueBlock, 8),
            (.conversionDeadlockDemote, 15), (.persistent, 3), (.noDeadlockWait, 8), (.noDeadlockBlock, 3),
            (.noQueueBlockingCallback, 10), (.headOfQueue, 10), (.noOrder, 8), (.alternatePR, 6), (.alternateCW, 6),
            (.timeout, 10),
        ]
        for (flag, usual) in lockUsual { lock.append((flag, ModelFlagChances.draw(usual, &random))) }
        for (flag, usual) in convertUsual { convert.append((flag, ModelFlagChances.draw(usual, &random))) }
    }

    static func draw(_ usual: Int, _ random: inout SplitMix64) -> Int {
        switch random.below(6) {
        case 0: return 0
        case 1: return min(50, usual * 4)
        default: return usual
        }
    }
}

/// A resource snapshot of the engine, split into its queues.
struct EngineQueues {
    var snapshot: ResourceSnapshot
    var grant: [LockSnapshot] = []
    var convert: [LockSnapshot] = []
    var wait: [LockSnapshot] = []

    init(_ snapshot: ResourceSnapshot) {
        self.snapshot = snapshot
        for lock in snapshot.locks {
            switch lock.queue {
            case .grant: grant.append(lock)
            case .convert: convert.append(lock)
            case .wait: wait.append(lock)
            }
        }
    }

    subscript(queue: QueueKind) -> [LockSnapshot] {
        switch queue {
        case .grant: grant
        case .convert: convert
        case .wait: wait
        }
    }
}

/// One seeded run: a fresh engine and model, a few owners and resources, random operations.
struct ModelRun {
    static let valueBlockLength = 8
    static let historyLength = 40

    let seed: UInt64
    let trace: Bool
    var random: SplitMix64
    var engine: LockEngine
    let lockspace: LockspaceID
    var model: ReferenceModel
    let owners: [UInt64]
    let names: [[UInt8]]
    var stats = ModelStats()
    let chances: ModelFlagChances
    /// The last operations, numbered, oldest first.
    var history: [(Int, ModelOp)] = []
    var clock: UInt64 = 0
    var seenIDs: [UInt32] = []
    /// Blocking callbacks each lock has been sent since its last grant.
    var told: [UInt32: [LockMode]] = [:]
    /// Locks granted without being told of the waiters they block, and not granted since: adopted orphans
    /// (ORPHAN), and NOORDER requests granted at once past waiting ones (the next walk tells those).
    var grantedUntold: [UInt32: GrantedUntold] = [:]

    enum GrantedUntold { case adopted, noOrder }
    /// The last fencing token seen per resource.
    var lastToken: [UInt64]
    /// Locks whose request asked for a fencing token with every grant.
    var alwaysFencingToken: Set<UInt32> = []
    var lastEffects: [Effect] = []
    /// The engine's queues after the last step.
    var lastQueues: [EngineQueues?]

    init(seed: UInt64, trace: Bool) {
        self.seed = seed
        self.trace = trace
        random = SplitMix64(seed: seed)
        // Bulk work (an owner's exit) in slices of 1 to 4 locks, so that every exit runs in several slices.
        engine = LockEngine(
            config: EngineConfig(
                deadlockWait: 0, defaultValueBlockLength: ModelRun.valueBlockLength, bulkSlice: 1 + random.below(4)))
        lockspace = try! engine.createLockspace(name: Array("model".utf8), valueBlockLength: ModelRun.valueBlockLength)
        let ownerCount = 3 + random.below(4)
        let resourceCount = 2 + random.below(4)
        owners = (1...UInt64(ownerCount)).map { $0 }
        names = (0..<resourceCount).map { Array("r\($0)".utf8) }
        model = ReferenceModel(resourceCount: resourceCount, valueBlockLength: ModelRun.valueBlockLength)
        chances = ModelFlagChances(random: &random)
        lastToken = Array(repeating: 0, count: resourceCount)
        lastQueues = Array(repeating: nil, count: resourceCount)
    }

    /// Runs `operations` steps; the first disagreement or broken invariant ends the run.
    mutating func run(operations: Int) -> String? {
        for _ in 0..<operations {
            if let failure = step() { return failure }
        }
        return nil
    }

    func report(_ failure: String, settings: ModelTestSettings) -> String {
        var text = "ModelTests: seed \(seed) failed at operation \(stats.operations): \(failure)\n"
        let perSeed = settings.opsPerSeedOverridden ? "DLM_MODEL_OPS_PER_SEED=\(settings.opsPerSeed) " : ""
        text += "replay: \(perSeed)DLM_MODEL_SEED=\(seed) swift test --filter ModelTests\n"
        text += "last operations (oldest first):\n"
        for (number, operation) in history { text += "  #\(number) \(operation)\n" }
        text += "effects of the last operation:\n"
        for effect in lastEffects { text += "  \(ModelRun.describe(effect))\n" }
        text += "model completions of the last operation:\n"
        for completion in model.completions { text += "  \(completion)\n" }
        text += "state (model):\n"
        for resource in names.indices { text += "  \(describeModel(resource))\n" }
        text += "state (engine):\n"
        for (resource, name) in names.enumerated() {
            let queues = engine.snapshotResource(lockspace, path: [name]).map(EngineQueues.init)
            text += "  \(ModelRun.describeEngine(queues, resource))\n"
        }
        return text
    }

    // MARK: Choosing operations

    mutating func nextOperation() -> ModelOp {
        let owner = random.element(owners)
        let mine = model.locks.values.filter { $0.owner == owner }.map(\.id).sorted()
        var roll = random.below(100)
        if roll < 30 && model.locks.count > owners.count * 4 { roll = 52 + random.below(28) }
        switch roll {
        case 0..<30:
            return randomLock(owner)
        case 30..<52:
            guard !mine.isEmpty else { return randomLock(owner) }
            return randomConvert(owner, pickMostlySettled(mine))
        case 52..<72:
            guard !mine.isEmpty else { return randomLock(owner) }
            return randomUnlock(owner, pickMostlySettled(mine))
        case 72..<80:
            let pending = mine.filter { model.locks[$0]!.requested != nil }
            guard let target = pending.isEmpty ? (random.percent(20) ? mine.first : nil) : random.element(pending)
            else { return randomLock(owner) }
            return .unlock(
                owner: owner, lock: target, flags: random.percent(10) ? [.cancel, .valueBlock] : .cancel, value: nil)
        case 80..<82:
            return .ownerExited(owner)
        case 82..<92:
            clock += UInt64(random.below(4) == 0 ? 0 : random.below(60))
            return .tick(clock)
        case 92..<95:
            return randomAdoption(owner)
        default:
            // A lock id that is not this owner's (another owner's, an orphan, a stale one, or none at all).
            let theirs = model.locks.values.filter { $0.owner != owner }.map(\.id).sorted()
            let id: UInt32
            switch random.below(3) {
            case 0 where !theirs.isEmpty: id = random.element(theirs)
            case 1 where !seenIDs.isEmpty: id = random.element(seenIDs)
            default: id = random.percent(50) ? 0 : 100_000
            }
            if random.percent(50) { return randomConvert(owner, id) }
            return randomUnlock(owner, id)
        }
    }

    /// Mostly a lock with nothing pending (an operation on a pending one is EBUSY, which is tested enough).
    mutating func pickMostlySettled(_ ids: [UInt32]) -> UInt32 {
        let settled = ids.filter { model.locks[$0]!.requested == nil }
        return settled.isEmpty || random.percent(5) ? random.element(ids) : random.element(settled)
    }

    mutating func randomLock(_ owner: UInt64) -> ModelOp {
        let mode = random.mode()
        var flags: LockFlags = []
        var timeout: UInt64?
        for (flag, chance) in chances.lock where random.percent(chance) {
            if flag == .expedite && (mode != .nl || flags.has(.noQueue)) { continue }
            if flag == .timeout { timeout = UInt64(1 + random.below(150)) }
            flags.insert(flag)
        }
        if random.percent(2) {
            // Something a lock request may not carry.
            switch random.below(7) {
            case 0: flags.insert(.convert)
            case 1: flags.insert(.queueConversion)
            case 2: flags.insert(.conversionDeadlockDemote)
            case 3: flags.insert(random.percent(50) ? .cancel : .forceUnlock)
            case 4: flags.formUnion([.expedite, .noQueue])
            case 5: flags.insert(.expedite)
            default: timeout = flags.has(.timeout) ? nil : 10
            }
        }
        return .lock(
            owner: owner, resource: random.below(names.count), mode: mode, flags: flags, timeout: timeout,
            wantsBlockingCallbacks: !random.percent(10), alwaysFencingToken: random.percent(10))
    }

    mutating func randomAdoption(_ owner: UInt64) -> ModelOp {
        let orphans = model.locks.values.filter { $0.owner == nil }.sorted { $0.id < $1.id }
        var resource = random.below(names.count)
        var mode = random.mode()
        if !orphans.isEmpty && random.percent(80) {
            let orphan = random.element(orphans)
            resource = orphan.resource
            if random.percent(80) { mode = orphan.granted! }
        }
        var flags: LockFlags = .orphan
        if random.percent(40) { flags.insert(.valueBlock) }
        if random.percent(20) { flags.insert(.noQueue) }
        return .lock(
            owner: owner, resource: resource, mode: mode, flags: flags, timeout: nil,
            wantsBlockingCallbacks: !random.percent(10), alwaysFencingToken: random.percent(10))
    }

    mutating func randomValue() -> [UInt8]? {
        switch random.below(100) {
        case 0..<3: return nil
        case 3..<5: return random.bytes(ModelRun.valueBlockLength + 1)
        case 5..<15: return random.bytes(1 + random.below(ModelRun.valueBlockLength - 1))
        default: return random.bytes(ModelRun.valueBlockLength)
        }
    }

    mutating func randomConvert(_ owner: UInt64, _ lock: UInt32) -> ModelOp {
        let mode = random.mode()
        var flags: LockFlags = .convert
        var timeout: UInt64?
        for (flag, chance) in chances.convert where random.percent(chance) {
            if flag == .conversionDeadlockDemote && flags.has(.noQueue) { continue }
            if flag == .timeout { timeout = UInt64(1 + random.below(150)) }
            flags.insert(flag)
        }
        if random.percent(2) {
            // Something a conversion may not carry.
            switch random.below(5) {
            case 0: flags.insert(.expedite)
            case 1: flags.insert(.orphan)
            case 2: flags.insert(.cancel)
            case 3: flags.formUnion([.conversionDeadlockDemote, .noQueue])
            default: timeout = flags.has(.timeout) ? nil : 10
            }
        }
        return .convert(owner: owner, lock: lock, mode: mode, flags: flags, value: randomValue(), timeout: timeout)
    }

    mutating func randomUnlock(_ owner: UInt64, _ lock: UInt32) -> ModelOp {
        var flags: LockFlags = []
        switch random.below(100) {
        case 0..<15: flags.insert(.cancel)
        case 15..<25: flags.insert(.forceUnlock)
        default: break
        }
        if random.percent(50) { flags.insert(.valueBlock) }
        if random.percent(10) { flags.insert(.invalidateValueBlock) }
        if random.percent(2) { flags.insert(random.percent(50) ? .noQueue : [.cancel, .forceUnlock]) }
        return .unlock(owner: owner, lock: lock, flags: flags, value: randomValue())
    }

    // MARK: One step

    mutating func step() -> String? {
        let operation = nextOperation()
        stats.operations += 1
        history.append((stats.operations, operation))
        if history.count > ModelRun.historyLength { history.removeFirst() }
        let before = lastQueues
        // The resources this operation may change; all of them every 16 steps, to catch any other change.
        var touched = Array(names.indices)
        if stats.operations % 16 != 0 {
            switch operation {
            case .lock(_, let resource, _, _, _, _, _): touched = [resource]
            case .convert(_, let lock, _, _, _, _), .unlock(_, let lock, _, _):
                touched = model.locks[lock].map { [$0.resource] } ?? []
            default: break
            }
        }

        // The engine.
        var effects: [Effect] = []
        var engineStatus: DLMStatus?
        var newID: UInt32 = 0
        do throws(DLMError) {
            switch operation {
            case .lock(let owner, let resource, let mode, let flags, let timeout, let wants, let always):
                let request = LockRequest(
                    lockspace: lockspace, owner: OwnerID(owner), name: names[resource], mode: mode, flags: flags,
                    timeout: timeout, wantsBlockingCallbacks: wants, alwaysFencingToken: always)
                newID = try engine.lock(request, into: &effects).rawValue
            case .convert(let owner, let lock, let mode, let flags, let value, let timeout):
                let request = ConvertRequest(
                    lock: LockID(rawValue: lock), owner: OwnerID(owner), mode: mode, flags: flags, valueBlock: value,
                    timeout: timeout)
                try engine.convert(request, into: &effects)
            case .unlock(let owner, let lock, let flags, let value):
                let request = UnlockRequest(
                    lock: LockID(rawValue: lock), owner: OwnerID(owner), flags: flags, valueBlock: value)
                try engine.unlock(request, into: &effects)
            case .ownerExited(let owner):
                engine.ownerExited(OwnerID(owner), into: &effects)
                engine.finishBulkWork(into: &effects)
            case .tick(let now):
                engine.tick(now: now, into: &effects)
            }
        } catch {
            engineStatus = error.status
        }
        lastEffects = effects
        if newID != 0 && !seenIDs.contains(newID) { seenIDs.append(newID) }

        // The model. (The modes waiting before: a blocking callback may be for a request that goes away later in
        // the same step, such as the second of two timeouts of one tick.)
        let waitingBefore = names.indices.map { resource in
            let queues = model.resources[resource]
            return (queues.convert + queues.wait).map { model.locks[$0]!.requested! }
        }
        let modelStatus: DLMStatus?
        switch operation {
        case .lock(let owner, let resource, let mode, let flags, let timeout, let wants, _):
            modelStatus = model.lock(
                owner: owner, resource: resource, mode: mode, flags: flags, timeout: timeout,
                wantsBlockingCallbacks: wants, newID: newID)
        case .convert(let owner, let lock, let mode, let flags, let value, let timeout):
            modelStatus = model.convert(
                owner: owner, lock: lock, mode: mode, flags: flags.union(.convert), value: value, timeout: timeout)
        case .unlock(let owner, let lock, let flags, let value):
            modelStatus = model.unlock(owner: owner, lock: lock, flags: flags, value: value)
        case .ownerExited(let owner):
            model.ownerExited(owner)
            modelStatus = nil
        case .tick(let now):
            model.tick(now)
            modelStatus = nil
        }
        if trace {
            print("seed \(seed) #\(stats.operations) \(operation) -> \(engineStatus?.name ?? "ok")")
            for effect in effects { print("    \(ModelRun.describe(effect))") }
        }

        if engineStatus != modelStatus {
            return "synchronous result: engine \(engineStatus?.name ?? "ok"), model \(modelStatus?.name ?? "ok")"
        }
        if let status = engineStatus { stats.synchronousErrors[status.name, default: 0] += 1 }
        if let divergence = model.divergence { return divergence }
        if let failure = compareCompletions(effects) { return failure }
        for resource in touched {
            lastQueues[resource] = engine.snapshotResource(lockspace, path: [names[resource]]).map(EngineQueues.init)
            if let failure = compareResource(resource, lastQueues[resource]) { return failure }
        }
        if let failure = checkSnapshots(
            touched, before: before, after: lastQueues, effects: effects, operation: operation, newID: newID)
        {
            return failure
        }
        if case .lock(_, _, _, _, _, _, let always) = operation, engineStatus == nil {
            if always { alwaysFencingToken.insert(newID) } else { alwaysFencingToken.remove(newID) }
        }
        if let failure = checkFencingTokens(effects) { return failure }
        for id in alwaysFencingToken where model.locks[id] == nil { alwaysFencingToken.remove(id) }
        if let failure = checkBlockingCallbacks(
            touched, effects, operation: operation, newID: newID, status: engineStatus, waitingBefore: waitingBefore)
        {
            return failure
        }
        stats.queueingsLeftUnsettled = model.queueingsLeftUnsettled
        stats.grantOrigins = model.grantOrigins
        for resource in touched where !model.resources[resource].unsettledByQueueing {
            if !model.isSettled(resource) {
                return "r\(resource) is left with a request the rules grant, or an unresolved conversion deadlock"
            }
        }
        return nil
    }

    // MARK: Comparing engine and model

    static func reduce(_ completion: Completion) -> ModelCompletion {
        let reportsSequence = completion.status == .granted || completion.status == .unlocked
        return ModelCompletion(
            lock: completion.lock.rawValue, owner: completion.owner.rawValue, status: completion.status,
            flags: completion.flags, mode: completion.mode, valueBlock: completion.valueBlock,
            sequence: reportsSequence ? completion.valueBlockSequence : nil)
    }

    static func describe(_ effect: Effect) -> String {
        switch effect {
        case .completion(let c):
            return "completion \(reduce(c))" + (c.fencingToken != 0 ? " token=\(c.fencingToken)" : "")
        case .blockingCallback(let b):
            return "blocking callback lock \(b.lock.rawValue) owner \(b.owner.rawValue) mode \(b.mode)"
        case .finished(let f):
            return "finished owner \(f.owner.rawValue) count \(f.count)"
        default:
            return "\(effect)"
        }
    }

    mutating func compareCompletions(_ effects: [Effect]) -> String? {
        var fromEngine: [ModelCompletion] = []
        for case .completion(let completion) in effects { fromEngine.append(ModelRun.reduce(completion)) }
        let engineSorted = fromEngine.sorted { $0.key < $1.key }
        let modelSorted = model.completions.sorted { $0.key < $1.key }
        if engineSorted != modelSorted {
            return "completions differ: engine \(engineSorted), model \(modelSorted)"
        }
        for completion in fromEngine {
            stats.completions[completion.status.name, default: 0] += 1
            if completion.flags.contains(.demoted) { stats.demotions += 1 }
            if completion.flags.contains(.alternateMode) { stats.alternateGrants += 1 }
            if completion.valueBlock != nil { stats.valueBlockReads += 1 }
        }
        return nil
    }

    struct QueueEntry: Equatable, CustomStringConvertible {
        var id: UInt32
        var owner: UInt64?
        var granted: LockMode?
        var requested: LockMode?
        var persistent: Bool

        var description: String {
            "\(id):\(owner.map { "o\($0)" } ?? "orphan"):\(granted?.description ?? "-")"
                + (requested.map { "->\($0)" } ?? "") + (persistent ? ":P" : "")
        }
    }

    func modelEntries(_ ids: [UInt32]) -> [QueueEntry] {
        ids.map { id in
            let lock = model.locks[id]!
            return QueueEntry(
                id: id, owner: lock.owner, granted: lock.granted, requested: lock.requested,
                persistent: lock.flags.has(.persistent))
        }
    }

    static func engineEntries(_ locks: [LockSnapshot]) -> [QueueEntry] {
        locks.map { lock in
            QueueEntry(
                id: lock.id.rawValue, owner: lock.owner?.rawValue, granted: lock.grantedMode,
                requested: lock.requestedMode, persistent: lock.flags.has(.persistent))
        }
    }

    func describeModel(_ resource: Int) -> String {
        let r = model.resources[resource]
        return "r\(resource): grant \(modelEntries(r.grant)) convert \(modelEntries(r.convert)) "
            + "wait \(modelEntries(r.wait)) lvb=\(ModelFormat.hex(r.valueBlock)) seq=\(r.sequence)"
            + (r.invalid ? " invalid" : "")
    }

    static func describeEngine(_ queues: EngineQueues?, _ resource: Int) -> String {
        guard let queues else { return "r\(resource): none" }
        let snapshot = queues.snapshot
        return "r\(resource): grant \(engineEntries(queues.grant)) convert \(engineEntries(queues.convert)) "
            + "wait \(engineEntries(queues.wait)) lvb=\(snapshot.valueBlock.map(ModelFormat.hex) ?? "zeros") "
            + "seq=\(snapshot.valueBlockSequence)" + (snapshot.valueBlockInvalid ? " invalid" : "")
    }

    func compareResource(_ resource: Int, _ queues: EngineQueues?) -> String? {
        let expected = model.resources[resource]
        let differs = {
            "resources differ: engine \(ModelRun.describeEngine(queues, resource)), model \(describeModel(resource))"
        }
        guard let queues else { return expected.isEmpty ? nil : differs() }
        if expected.isEmpty { return differs() }
        let snapshot = queues.snapshot
        let grant = ModelRun.engineEntries(queues.grant).sorted { $0.id < $1.id }
        if grant != modelEntries(expected.grant.sorted()) { return differs() }
        if ModelRun.engineEntries(queues.convert) != modelEntries(expected.convert) { return differs() }
        if ModelRun.engineEntries(queues.wait) != modelEntries(expected.wait) { return differs() }
        let value = snapshot.valueBlock ?? [UInt8](repeating: 0, count: ModelRun.valueBlockLength)
        if value != expected.valueBlock || snapshot.valueBlockSequence != expected.sequence
            || snapshot.valueBlockInvalid != expected.invalid
        {
            return differs()
        }
        return nil
    }

    // MARK: Invariants on the engine's own snapshots

    /// No two incompatible granted modes; queues in arrival order (HEADQUE arrivals first, newest first); and the
    /// FIFO promises of §2 for what this step granted.
    func checkSnapshots(
        _ touched: [Int], before: [EngineQueues?], after: [EngineQueues?], effects: [Effect], operation: ModelOp,
        newID: UInt32
    ) -> String? {
        var grantedNow: Set<UInt32> = []
        for case .completion(let completion) in effects where completion.status == .granted {
            grantedNow.insert(completion.lock.rawValue)
        }
        for resource in touched {
            guard let after = after[resource] else { continue }
            let holders = after.grant + after.convert
            var index = 0
            while index < holders.count {
                guard let x = holders[index].grantedMode else {
                    return "r\(resource): lock \(holders[index].id) holds no mode on the grant or convert queue"
                }
                var other = index + 1
                while other < holders.count {
                    if let y = holders[other].grantedMode, !ReferenceModel.compatible(x, y) {
                        return "r\(resource): locks \(holders[index].id) (\(x)) and \(holders[other].id) (\(y)) are "
                            + "granted together"
                    }
                    other += 1
                }
                index += 1
            }
            for queue in [QueueKind.convert, .wait] {
                // HEADQUE arrivals first, newest first; then the others, oldest first.
                let locks = after[queue]
                var position = 0
                while position < locks.count {
                    let lock = locks[position]
                    if position > 0 {
                        let previous = locks[position - 1]
                        let inOrder =
                            lock.flags.has(.headOfQueue)
                            ? previous.flags.has(.headOfQueue) && previous.waitSequence > lock.waitSequence
                            : !previous.flags.has(.headOfQueue) ? previous.waitSequence < lock.waitSequence : true
                        if !inOrder { return "r\(resource): the \(queue) queue is out of arrival order" }
                    }
                    position += 1
                }
            }
            // What was granted from a queue had nothing left ahead of it on that queue (unless NOORDER); a waiter
            // needed an empty convert queue.
            guard let previous = before[resource] else { continue }
            for queue in [QueueKind.convert, .wait] where !grantedNow.isEmpty {
                let queued = previous[queue]
                let stillQueued = Set(after[queue].map(\.id))
                for (index, lock) in queued.enumerated() where grantedNow.contains(lock.id.rawValue) {
                    if lock.flags.has(.noOrder) { continue }
                    if let ahead = queued[..<index].first(where: { stillQueued.contains($0.id) }) {
                        return "r\(resource): lock \(lock.id) was granted past lock \(ahead.id), still queued"
                    }
                    if queue == .wait && !after.convert.isEmpty {
                        return "r\(resource): waiter \(lock.id) was granted while conversions are queued"
                    }
                }
            }
            // A new request granted at once (not EXPEDITE, not NOORDER, not HEADQUE, which rule 10 may grant as
            // the new head of the wait queue) found both queues empty (rule 9).
            if case .lock(_, let r, _, let flags, _, _, _) = operation, r == resource,
                !flags.has(.orphan) && !flags.has(.expedite) && !flags.has(.noOrder) && !flags.has(.headOfQueue),
                grantedNow.contains(newID), !(previous.convert.isEmpty && previous.wait.isEmpty)
            {
                return "r\(resource): new request \(newID) granted at once past queued requests"
            }
        }
        return nil
    }

    /// Fencing tokens: strictly increasing per resource on every grant of PW or EX (every grant when asked),
    /// none otherwise.
    mutating func checkFencingTokens(_ effects: [Effect]) -> String? {
        for case .completion(let completion) in effects where completion.status == .granted {
            guard let lock = model.locks[completion.lock.rawValue], let mode = completion.mode else { continue }
            if mode >= .pw || alwaysFencingToken.contains(completion.lock.rawValue) {
                if completion.fencingToken <= lastToken[lock.resource] {
                    return "fencing token \(completion.fencingToken) of lock \(completion.lock) is not above "
                        + "\(lastToken[lock.resource])"
                }
                lastToken[lock.resource] = completion.fencingToken
            } else if completion.fencingToken != 0 {
                return "fencing token \(completion.fencingToken) on a grant of \(mode)"
            }
        }
        return nil
    }

    // MARK: Blocking callbacks

    /// The rules of blocking callbacks (§2), checked rather than predicted:
    /// - one goes only to a lock of a live owner that asked for them, for a mode its granted mode blocks (the
    ///   exception: NODLCKWT tells a lock in a conversion deadlock, for the mode it asks), and for the mode of a
    ///   request that waits (or just failed with NOQUEUE);
    /// - no lock is sent a mode no stronger than one it was sent since its last grant;
    /// - a request blocked on arrival (or failing with NOQUEUE | NOQUEUEBAST) leaves every incompatible holder on the
    ///   grant queue (and the convert queue with NOQUEUEBAST) told of a mode at least as strong;
    /// - a waiter blocked by holders on the grant queue has at least one of them told (an adopted orphan is the
    ///   known exception, counted).
    mutating func checkBlockingCallbacks(
        _ touched: [Int], _ effects: [Effect], operation: ModelOp, newID: UInt32, status: DLMStatus?,
        waitingBefore: [[LockMode]]
    ) -> String? {
        var opLock: UInt32?
        var opMode: LockMode?
        var opFlags: LockFlags = []
        switch operation {
        case .lock(_, _, let mode, let flags, _, _, _):
            if status == nil && !flags.has(.orphan) { (opLock, opMode, opFlags) = (newID, mode, flags) }
        case .convert(_, let lock, let mode, let flags, _, _):
            if status == nil { (opLock, opMode, opFlags) = (lock, mode, flags) }
        default:
            break
        }
        var opResource: Int?
        if case .lock(_, let resource, _, _, _, _, _) = operation { opResource = resource }
        if let opLock, let lock = model.locks[opLock] { opResource = lock.resource }

        for (index, effect) in effects.enumerated() {
            switch effect {
            case .completion(let completion):
                if completion.status == .granted {
                    told[completion.lock.rawValue] = []
                    grantedUntold[completion.lock.rawValue] = nil
                }
            case .blockingCallback(let callback):
                stats.blockingCallbacks += 1
                let id = callback.lock.rawValue
                guard let lock = model.locks[id] else { return "blocking callback to lock \(id), which is gone" }
                guard lock.owner == callback.owner.rawValue, lock.wantsBlockingCallbacks else {
                    return "blocking callback to lock \(id) of \(callback.owner), which does not want one"
                }
                if let earlier = told[id, default: []].first(where: {
                    ReferenceModel.stronger($0, orEqual: callback.mode)
                }) {
                    return "lock \(id) sent a blocking callback for \(callback.mode) after one for \(earlier)"
                }
                told[id, default: []].append(callback.mode)
                let grantedLater = effects[(index + 1)...].contains {
                    if case .completion(let c) = $0 { return c.lock == callback.lock && c.status == .granted }
                    return false
                }
                if grantedLater { continue }
                let itself =
                    lock.requested == callback.mode && lock.flags.has(.noDeadlockWait)
                    && model.resources[lock.resource].convert.contains(id)
                if !itself {
                    guard let granted = lock.granted, !ReferenceModel.compatible(granted, callback.mode) else {
                        return "blocking callback for \(callback.mode) to lock \(id) holding "
                            + "\(lock.granted?.description ?? "nothing"), which does not block it"
                    }
                }
                let queues = model.resources[lock.resource]
                var waiting = (queues.convert + queues.wait).compactMap { model.locks[$0]?.requested }
                waiting += waitingBefore[lock.resource]
                if opResource == lock.resource, let opMode { waiting.append(opMode) }
                if !waiting.contains(callback.mode) {
                    return "blocking callback for \(callback.mode) to lock \(id), but no request waits for it"
                }
            default:
                break
            }
        }
        if case .lock(_, let resource, _, let flags, _, _, _) = operation, status == nil {
            if flags.has(.orphan) {
                grantedUntold[newID] = .adopted
                stats.adoptions += 1
            } else if flags.has(.noOrder), model.locks[newID]?.requested == nil,
                !(model.resources[resource].convert.isEmpty && model.resources[resource].wait.isEmpty)
            {
                grantedUntold[newID] = .noOrder
            }
        }
        for id in told.keys where model.locks[id] == nil { told[id] = nil }
        for id in grantedUntold.keys where model.locks[id] == nil { grantedUntold[id] = nil }

        // Told on arrival.
        if let opLock, let opMode, let resource = opResource {
            let queued = model.locks[opLock].map { $0.requested != nil } ?? false
            let failedWithBasts =
                opFlags.contains(.noQueueBlockingCallback)
                && model.completions.contains { $0.lock == opLock && $0.status == .tryAgain }
            if queued || failedWithBasts {
                let queues = model.resources[resource]
                let holders = failedWithBasts ? queues.grant + queues.convert : queues.grant
                // (A holder granted later in this step, by the walk after a demotion, was not there on arrival.)
                var grantedInStep: Set<UInt32> = []
                for case .completion(let c) in effects where c.status == .granted {
                    grantedInStep.insert(c.lock.rawValue)
                }
                for holder in holders where holder != opLock && !grantedInStep.contains(holder) {
                    let lock = model.locks[holder]!
                    guard lock.owner != nil, lock.wantsBlockingCallbacks,
                        !ReferenceModel.compatible(lock.granted!, opMode)
                    else { continue }
                    if !told[holder, default: []].contains(where: { ReferenceModel.stronger($0, orEqual: opMode) }) {
                        return "lock \(holder) (\(lock.granted!)) blocks the request of lock \(opLock) for \(opMode) "
                            + "and was not told"
                    }
                }
            }
        }

        // Someone in the way knows.
        for resource in touched {
            let queues = model.resources[resource]
            for waiter in queues.convert + queues.wait {
                let mode = model.locks[waiter]!.requested!
                let blockers = queues.grant.filter { !ReferenceModel.compatible(model.locks[$0]!.granted!, mode) }
                if blockers.isEmpty { continue }
                if blockers.contains(where: { !told[$0, default: []].isEmpty }) { continue }
                let exempt = blockers.filter {
                    model.locks[$0]!.owner == nil || !model.locks[$0]!.wantsBlockingCallbacks
                }
                if !exempt.isEmpty { continue }
                if blockers.contains(where: { grantedUntold[$0] == .adopted }) {
                    stats.waitersBehindUntoldAdopter += 1
                    continue
                }
                if blockers.contains(where: { grantedUntold[$0] == .noOrder }) {
                    stats.waitersBehindUntoldNoOrder += 1
                    continue
                }
                return "lock \(waiter) waits for \(mode) behind \(blockers), none of which was told"
            }
        }
        return nil
    }
}

/// Liveness: a request queued out of order is granted as soon as the rules allow, and an adopted orphan is
/// told whom it blocks.
@Suite struct QueuedOutOfOrderTests {
    @Test func aHeadQueueRequestThatTheRulesGrantIsNotLeftWaiting() throws {
        var engine = LockEngine(config: EngineConfig(deadlockWait: 0))
        let ls = try engine.createLockspace(name: Array("ls".utf8))
        var effects: [Effect] = []
        func request(_ owner: UInt64, _ mode: LockMode, _ flags: LockFlags = []) throws -> LockID {
            try engine.lock(
                LockRequest(lockspace: ls, owner: OwnerID(owner), name: Array("r".utf8), mode: mode, flags: flags),
                into: &effects)
        }
        _ = try request(1, .pr)
        _ = try request(2, .ex)  // waits behind the PR holder
        effects.removeAll()
        let head = try request(3, .pr, .headOfQueue)
        // At the head of the wait queue, compatible with the granted PR: rule 10 grants it at once.
        #expect(
            effects.contains {
                if case .completion(let c) = $0 { return c.lock == head && c.status == .granted }
                return false
            })
    }

    @Test func anAdoptedOrphanIsToldWhomItBlocks() throws {
        var engine = LockEngine(config: EngineConfig(deadlockWait: 0))
        let ls = try engine.createLockspace(name: Array("ls".utf8))
        var effects: [Effect] = []
        _ = try engine.lock(
            LockRequest(lockspace: ls, owner: OwnerID(1), name: Array("r".utf8), mode: .ex, flags: .persistent),
            into: &effects)
        engine.ownerExited(OwnerID(1), into: &effects)
        _ = try engine.lock(
            LockRequest(lockspace: ls, owner: OwnerID(2), name: Array("r".utf8), mode: .pr), into: &effects)
        effects.removeAll()
        let adopted = try engine.lock(
            LockRequest(lockspace: ls, owner: OwnerID(3), name: Array("r".utf8), mode: .ex, flags: .orphan),
            into: &effects)
        #expect(effects.contains(.blockingCallback(BlockingCallback(lock: adopted, owner: OwnerID(3), mode: .pr))))
    }
}
