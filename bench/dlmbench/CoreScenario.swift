import DLMCore

/// `dlmbench core`: the lock engine alone (no I/O, one thread). An operation is one call into the engine
/// that a client's request becomes: `lock` (here always granted at once) or `unlock`. A pair is a lock of a
/// free resource and the unlock of that lock.
enum CoreScenario {
    static let optionNames = [
        "pairs", "runs", "working-set", "held", "name-length", "owners", "locks", "shared-resources",
    ]

    /// The floors of issue #2 for this 2-core machine, release build.
    static let opsPerSecondFloor = 2_000_000.0
    static let bytesPerLockFloor = 256.0

    static func run(_ options: Options) -> JSON {
        let pairs = options.int("pairs", 2_000_000)
        let runs = options.int("runs", 5)
        let workingSet = options.int("working-set", 10_000)
        let held = options.int("held", 1000)
        let nameLength = options.int("name-length", 24)
        let owners = options.int("owners", 64)
        let locks = options.int("locks", 1_000_000)
        let sharedResources = options.int("shared-resources", 1000)
        guard nameLength >= 8, nameLength <= 64 else { fail("--name-length is 8 to 64") }
        guard held < workingSet else { fail("--held must be below --working-set, so that every lock is uncontended") }

        let immediate = measurePairs(
            pairs: pairs, runs: runs, workingSet: workingSet, held: 0, nameLength: nameLength, owners: owners)
        let window = measurePairs(
            pairs: pairs, runs: runs, workingSet: workingSet, held: held, nameLength: nameLength, owners: owners)
        let common = [
            "--locks", String(locks), "--name-length", String(nameLength), "--owners", String(owners),
            "--shared-resources", String(sharedResources),
        ]
        let distinct = memoryCase(["memory", "--case", "distinct"] + common)
        let shared = memoryCase(["memory", "--case", "shared"] + common)

        let opsPerSecond = immediate.opsPerSecond
        let bytesPerLock = [distinct, shared].compactMap { $0["bytes_per_lock"]?.doubleValue }.max() ?? .infinity
        return .object([
            ("scenario", .string("core")),
            (
                "operation",
                .string(
                    "one engine call: lock (granted at once, on a resource no other lock holds) or unlock; "
                        + "a pair is lock then unlock of the same lock")
            ),
            ("ops_per_sec", .number(opsPerSecond)),
            ("pairs_per_sec", .number(immediate.pairsPerSecond)),
            ("ops", .int(2 * immediate.pairs)),
            ("pairs", .int(immediate.pairs)),
            ("seconds", .double(immediate.seconds)),
            ("runs", .int(runs)),
            ("statistic", .string("median of the runs")),
            ("working_set", .int(workingSet)),
            ("name_length", .int(nameLength)),
            ("owners", .int(owners)),
            ("bytes_per_lock", .number(bytesPerLock)),
            ("locks_held", distinct["locks_held"] ?? .int(0)),
            ("resident_bytes_delta", distinct["resident_bytes_delta"] ?? .int(0)),
            ("ops_per_sec_floor", .number(opsPerSecondFloor)),
            ("bytes_per_lock_floor", .number(bytesPerLockFloor)),
            ("ops_floor_met", .bool(opsPerSecond >= opsPerSecondFloor)),
            ("bytes_floor_met", .bool(bytesPerLock <= bytesPerLockFloor)),
            ("throughput", .array([immediate.json(held: 0), window.json(held: held)])),
            ("memory", .array([distinct, shared])),
        ])
    }

    struct PairResult {
        var pairs: Int
        var seconds: Double
        var allSeconds: [Double]
        var pairsPerSecond: Double { Double(pairs) / seconds }
        var opsPerSecond: Double { 2 * pairsPerSecond }

        func json(held: Int) -> JSON {
            .object([
                (
                    "case",
                    .string(
                        held == 0
                            ? "lock then unlock at once" : "lock, unlock the lock taken \(held) pairs before")
                ),
                ("locks_held_while_running", .int(held)),
                ("pairs", .int(pairs)),
                ("seconds", .double(seconds)),
                ("pairs_per_sec", .number(pairsPerSecond)),
                ("ops_per_sec", .number(opsPerSecond)),
                ("ops_per_sec_each_run", .array(allSeconds.map { .number(2 * Double(pairs) / $0) })),
            ])
        }
    }

    /// Lock+unlock pairs cycling over `workingSet` resource names, EX, `owners` owners. With `held` 0 each lock
    /// is released at once; otherwise the lock taken `held` pairs earlier is released after each lock. One
    /// warm-up run, then `runs` timed runs; the result is the median run.
    static func measurePairs(
        pairs: Int, runs: Int, workingSet: Int, held: Int, nameLength: Int, owners: Int
    ) -> PairResult {
        var driver = PairDriver(workingSet: workingSet, held: held, nameLength: nameLength, owners: owners)
        driver.check()
        _ = driver.cycle(pairs)
        var times: [Double] = []
        for _ in 0..<runs {
            var seen = 0
            let seconds = timed { seen = driver.cycle(pairs) }
            guard seen == 2 * pairs else { fail("expected \(2 * pairs) completions, saw \(seen)") }
            times.append(seconds)
        }
        guard driver.engine.lockCount == held, driver.engine.resourceCount == held else {
            fail("the engine lost count of locks")
        }
        let median = times.sorted()[times.count / 2]
        return PairResult(pairs: pairs, seconds: median, allSeconds: times)
    }

    /// The engine and the requests of `measurePairs`, in a struct so that the timed loop reaches them without
    /// the dynamic exclusivity checks a closure's captured variables get.
    struct PairDriver {
        var engine: LockEngine
        let requests: [LockRequest]
        let held: Int
        var effects: [Effect] = []
        var ring: [UnlockRequest]
        var next = 0
        var ringNext = 0
        var filled = 0

        init(workingSet: Int, held: Int, nameLength: Int, owners: Int) {
            var engine = LockEngine()
            let ls = must { () throws(DLMError) in try engine.createLockspace(name: Array("bench".utf8)) }
            self.engine = engine
            requests = (0..<workingSet).map {
                LockRequest(
                    lockspace: ls, owner: OwnerID(UInt64($0 % owners + 1)),
                    name: resourceName($0, length: nameLength), mode: .ex)
            }
            self.held = held
            effects.reserveCapacity(16)
            ring = [UnlockRequest](repeating: UnlockRequest(lock: LockID(rawValue: 0), owner: OwnerID(0)), count: held)
        }

        /// One pass over the working set, checking every effect, that also warms up the engine's tables.
        mutating func check() {
            do throws(DLMError) {
                for request in requests {
                    let id = try engine.lock(request, into: &effects)
                    guard effects.count == 1, case .completion(let c) = effects[0], c.status == .granted, c.lock == id
                    else { fail("an uncontended lock was not granted at once: \(effects)") }
                    effects.removeAll(keepingCapacity: true)
                    try engine.unlock(UnlockRequest(lock: id, owner: request.owner), into: &effects)
                    guard effects.count == 1, case .completion(let u) = effects[0], u.status == .unlocked else {
                        fail("an unlock did not complete at once: \(effects)")
                    }
                    effects.removeAll(keepingCapacity: true)
                }
            } catch {
                fail("the engine refused a request: \(error)")
            }
            guard engine.lockCount == 0, engine.resourceCount == 0 else { fail("locks or resources left behind") }
        }

        /// `count` pairs; returns how many effects they had.
        mutating func cycle(_ count: Int) -> Int {
            var seen = 0
            do throws(DLMError) {
                for _ in 0..<count {
                    let request = requests[next]
                    next += 1
                    if next == requests.count { next = 0 }
                    let id = try engine.lock(request, into: &effects)
                    seen &+= effects.count
                    effects.removeAll(keepingCapacity: true)
                    if held == 0 {
                        try engine.unlock(UnlockRequest(lock: id, owner: request.owner), into: &effects)
                    } else {
                        if filled == held {
                            try engine.unlock(ring[ringNext], into: &effects)
                        } else {
                            filled += 1
                        }
                        ring[ringNext] = UnlockRequest(lock: id, owner: request.owner)
                        ringNext += 1
                        if ringNext == held { ringNext = 0 }
                    }
                    seen &+= effects.count
                    effects.removeAll(keepingCapacity: true)
                }
            } catch {
                fail("the engine refused a request: \(error)")
            }
            return seen
        }
    }

    /// Runs `dlmbench memory` in a fresh process, so that each case starts from the same heap.
    static func memoryCase(_ arguments: [String]) -> JSON {
        guard let output = runSelf(arguments), let fields = parseFlatJSON(output) else {
            fail("dlmbench \(arguments.joined(separator: " ")) failed")
        }
        return .object(fields)
    }
}

/// `dlmbench memory`: the resident memory that held locks cost. Case `distinct`: `locks` EX locks, each on its
/// own resource. Case `shared`: `locks` locks on `shared-resources` resources, NL and PR alternating (all
/// compatible, so all granted). Prints one flat JSON object.
enum MemoryScenario {
    static let optionNames = ["case", "locks", "name-length", "owners", "shared-resources"]

    static func run(_ options: Options) -> JSON {
        let which = options.string("case", "distinct")
        let count = options.int("locks", 1_000_000)
        let nameLength = options.int("name-length", 24)
        let owners = options.int("owners", 64)
        let sharedResources = options.int("shared-resources", 1000)
        guard which == "distinct" || which == "shared" else { fail("--case is distinct or shared") }
        let distinct = which == "distinct"
        let sharedNames = distinct ? [] : (0..<sharedResources).map { resourceName($0, length: nameLength) }

        var effects: [Effect] = []
        effects.reserveCapacity(16)
        // Filled in before the first reading, so that its pages are resident already.
        var ids = [UnlockRequest](repeating: UnlockRequest(lock: LockID(rawValue: 0), owner: OwnerID(0)), count: count)
        var engine = LockEngine()
        let ls = must { () throws(DLMError) in try engine.createLockspace(name: Array("bench".utf8)) }
        let before = residentBytes()
        let fillSeconds = timed {
            do throws(DLMError) {
                for index in 0..<count {
                    let owner = OwnerID(UInt64(index % owners + 1))
                    let request =
                        distinct
                        ? LockRequest(
                            lockspace: ls, owner: owner, name: resourceName(index, length: nameLength), mode: .ex)
                        : LockRequest(
                            lockspace: ls, owner: owner, name: sharedNames[index % sharedResources],
                            mode: index & 1 == 0 ? .nl : .pr)
                    let id = try engine.lock(request, into: &effects)
                    guard effects.count == 1, case .completion(let c) = effects[0], c.status == .granted else {
                        fail("lock \(index) was not granted at once: \(effects)")
                    }
                    effects.removeAll(keepingCapacity: true)
                    ids[index] = UnlockRequest(lock: id, owner: owner)
                }
            } catch {
                fail("the engine refused a request: \(error)")
            }
        }
        let after = residentBytes()
        let resources = engine.resourceCount
        guard engine.lockCount == count, resources == (distinct ? count : min(count, sharedResources)) else {
            fail("expected \(count) locks, the engine holds \(engine.lockCount) on \(resources) resources")
        }
        let drainSeconds = timed {
            do throws(DLMError) {
                for id in ids.reversed() {
                    try engine.unlock(id, into: &effects)
                    effects.removeAll(keepingCapacity: true)
                }
            } catch {
                fail("the engine refused an unlock: \(error)")
            }
        }
        guard engine.lockCount == 0, engine.resourceCount == 0 else { fail("locks left after unlocking all") }
        let delta = after - before
        return .object([
            (
                "case",
                .string(
                    distinct
                        ? "\(count) EX locks on \(count) distinct resources"
                        : "\(count) NL/PR locks on \(sharedResources) resources")
            ),
            ("locks_held", .int(count)),
            ("resources", .int(resources)),
            ("name_length", .int(nameLength)),
            ("resident_bytes_before", .int(before)),
            ("resident_bytes_after", .int(after)),
            ("resident_bytes_delta", .int(delta)),
            ("bytes_per_lock", .number(Double(delta) / Double(count))),
            ("fill_ops_per_sec", .number(Double(count) / fillSeconds)),
            ("unlock_all_ops_per_sec", .number(Double(count) / drainSeconds)),
        ])
    }
}

extension JSON {
    var doubleValue: Double? {
        switch self {
        case .int(let value): Double(value)
        case .double(let value): value
        default: nil
        }
    }
}
