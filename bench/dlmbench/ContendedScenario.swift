import DLMCore
import DLMTestSupport

/// `dlmbench contended`: the engine alone under contention, for information (no floor). An operation is one
/// engine call (lock, unlock). The engine's time is a logical clock that advances 1 µs per operation and is
/// passed in with `tick` every 1024 operations, so that timers and deadlock searches run as they would.
enum ContendedScenario {
    static let optionNames = ["ops", "owners", "mix-owners", "resources", "ex-percent", "seed"]

    static func run(_ options: Options) -> JSON {
        let ops = options.int("ops", 2_000_000)
        let owners = options.int("owners", 8)
        let mixOwners = options.int("mix-owners", 64)
        let resources = options.int("resources", 16)
        let exPercent = options.int("ex-percent", 10, minimum: 0)
        let seed = UInt64(options.int("seed", 1))
        guard owners >= 2, mixOwners >= 2 else { fail("--owners and --mix-owners need at least 2") }
        guard exPercent <= 100 else { fail("--ex-percent is 0 to 100") }
        return .object([
            ("scenario", .string("contended")),
            ("operation", .string("one engine call: lock or unlock (a handoff is one unlock and one lock)")),
            ("handoff", handoff(ops: ops, owners: owners)),
            ("mix", mix(ops: ops, owners: mixOwners, resources: resources, exPercent: exPercent, seed: seed)),
        ])
    }

    /// Counts what the effects say.
    struct Tally {
        var grants = 0
        var blockingCallbacks = 0
        var completions = 0

        mutating func count(_ effects: [Effect]) {
            for effect in effects {
                switch effect {
                case .completion(let c):
                    completions += 1
                    if c.status == .granted { grants += 1 }
                case .blockingCallback: blockingCallbacks += 1
                default: break
                }
            }
        }
    }

    /// EX handed round `owners` owners on one resource: the holder unlocks (which grants the next waiter) and
    /// asks again at the tail of the wait queue.
    static func handoff(ops: Int, owners: Int) -> JSON {
        var engine = LockEngine()
        var effects: [Effect] = []
        effects.reserveCapacity(64)
        var tally = Tally()
        var locks: [LockID] = []
        var holder = 0
        var now: Instant = 0
        let handoffs = ops / 2
        var seconds = 0.0
        do throws(DLMError) {
            let ls = try engine.createLockspace(name: Array("bench".utf8))
            let name = resourceName(0, length: 24)
            func request(_ owner: Int) -> LockRequest {
                LockRequest(lockspace: ls, owner: OwnerID(UInt64(owner + 1)), name: name, mode: .ex)
            }
            for owner in 0..<owners { locks.append(try engine.lock(request(owner), into: &effects)) }
            effects.removeAll(keepingCapacity: true)
            seconds = timed {
                do throws(DLMError) {
                    for step in 0..<handoffs {
                        try engine.unlock(
                            UnlockRequest(lock: locks[holder], owner: OwnerID(UInt64(holder + 1))), into: &effects)
                        locks[holder] = try engine.lock(request(holder), into: &effects)
                        tally.count(effects)
                        var granted = -1
                        for effect in effects {
                            if case .completion(let c) = effect, c.status == .granted {
                                granted = Int(c.owner.rawValue) - 1
                            }
                        }
                        guard granted == (holder + 1) % owners else {
                            fail("EX went to \(granted), not the next owner")
                        }
                        holder = granted
                        effects.removeAll(keepingCapacity: true)
                        now &+= 2000
                        if step & 511 == 0 {
                            engine.tick(now: now, into: &effects)
                            tally.count(effects)
                            effects.removeAll(keepingCapacity: true)
                        }
                    }
                } catch {
                    fail("the engine refused a request: \(error)")
                }
            }
        } catch {
            fail("the engine refused a request: \(error)")
        }
        return .object([
            ("case", .string("EX handed round \(owners) owners on one resource")),
            ("owners", .int(owners)),
            ("ops", .int(2 * handoffs)),
            ("handoffs", .int(handoffs)),
            ("seconds", .double(seconds)),
            ("ops_per_sec", .number(Double(2 * handoffs) / seconds)),
            ("handoffs_per_sec", .number(Double(handoffs) / seconds)),
            ("grants", .int(tally.grants)),
            ("blocking_callbacks", .int(tally.blockingCallbacks)),
        ])
    }

    /// `owners` owners, each holding or waiting for at most one lock, on `resources` resources: a random owner
    /// that holds a lock unlocks it, one that holds none asks for PR or (`exPercent` of the time) EX on a
    /// random resource; owners that wait are skipped.
    static func mix(ops: Int, owners: Int, resources: Int, exPercent: Int, seed: UInt64) -> JSON {
        enum State {
            case idle
            case waiting(LockID)
            case holding(LockID)
        }
        var engine = LockEngine()
        var random = SplitMix64(seed: seed)
        var effects: [Effect] = []
        effects.reserveCapacity(256)
        var tally = Tally()
        var states = [State](repeating: .idle, count: owners)
        var now: Instant = 0
        var locksAsked = 0
        var unlocks = 0
        var waits = 0
        var seconds = 0.0
        do throws(DLMError) {
            let ls = try engine.createLockspace(name: Array("bench".utf8))
            let names = (0..<resources).map { resourceName($0, length: 24) }
            seconds = timed {
                do throws(DLMError) {
                    for step in 0..<ops {
                        var owner = Int(random.next() % UInt64(owners))
                        while case .waiting = states[owner] { owner = Int(random.next() % UInt64(owners)) }
                        let ownerID = OwnerID(UInt64(owner + 1))
                        if case .holding(let lock) = states[owner] {
                            try engine.unlock(UnlockRequest(lock: lock, owner: ownerID), into: &effects)
                            unlocks += 1
                        } else {
                            let mode: LockMode = Int(random.next() % 100) < exPercent ? .ex : .pr
                            let name = names[Int(random.next() % UInt64(resources))]
                            let lock = try engine.lock(
                                LockRequest(lockspace: ls, owner: ownerID, name: name, mode: mode), into: &effects)
                            states[owner] = .waiting(lock)
                            locksAsked += 1
                        }
                        now &+= 1000
                        if step & 1023 == 0 { engine.tick(now: now, into: &effects) }
                        tally.count(effects)
                        for effect in effects {
                            guard case .completion(let c) = effect else { continue }
                            let index = Int(c.owner.rawValue) - 1
                            states[index] = c.status == .granted ? .holding(c.lock) : .idle
                        }
                        if case .waiting = states[owner] { waits += 1 }
                        effects.removeAll(keepingCapacity: true)
                    }
                } catch {
                    fail("the engine refused a request: \(error)")
                }
            }
        } catch {
            fail("the engine refused a request: \(error)")
        }
        return .object([
            ("case", .string("\(owners) owners, \(100 - exPercent)% PR / \(exPercent)% EX on \(resources) resources")),
            ("owners", .int(owners)),
            ("resources", .int(resources)),
            ("ops", .int(ops)),
            ("seconds", .double(seconds)),
            ("ops_per_sec", .number(Double(ops) / seconds)),
            ("locks", .int(locksAsked)),
            ("unlocks", .int(unlocks)),
            ("locks_that_waited", .int(waits)),
            ("grants", .int(tally.grants)),
            ("blocking_callbacks", .int(tally.blockingCallbacks)),
        ])
    }
}
