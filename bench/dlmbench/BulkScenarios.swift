import CDLMSystem
import DLMCore
import Glibc

/// `dlmbench engine-bulk`: the lock engine alone, the work that is large by nature, in slices (DLMCore's
/// BulkWork.swift) and deadlock passes (DeadlockSearch.swift):
///
/// - exit: an owner with N locks exits; the whole release and its longest slice;
/// - purge: N orphans purged; forced release: a lockspace of N locks released with force;
/// - deadlock: W requests wait (W on one resource, or spread over 1,000) behind holders, each its own
///   transaction; the time of one pass over them.
///
/// One JSON object per case. `--locks N[,N...]`, `--waiters N[,N...]` (0: none), `--cases exit,purge,forced-release`.
enum BulkScenarios {
    static let optionNames = ["locks", "waiters", "cases"]

    static func run(_ options: Options) -> [JSON] {
        // As dlmd does: no glibc fastbins, whose consolidation after many frees stalls a slice for tens of ms.
        _ = dlm_disable_malloc_fastbins()
        let lockCounts = options.string("locks", "10000,100000,1000000").split(separator: ",").compactMap { Int($0) }
        let waiterCounts = options.string("waiters", "1000,10000,100000").split(separator: ",").compactMap { Int($0) }
            .filter { $0 > 0 }
        var results: [JSON] = []
        let cases = options.string("cases", "exit,purge,forced-release").split(separator: ",").map(String.init)
        for count in lockCounts {
            for kind in cases { results.append(bulk(kind, locks: count)) }
        }
        for count in waiterCounts {
            for resources in [1, 1000] { results.append(deadlockPass(waiters: count, resources: resources)) }
        }
        return results
    }

    /// Times each slice of a bulk job of `locks` locks until it is done.
    static func bulk(_ kind: String, locks count: Int) -> JSON {
        var engine = LockEngine(config: EngineConfig(deadlockWait: 0))
        let ls = must { () throws(DLMError) in try engine.createLockspace(name: Array("bench".utf8)) }
        var effects: [Effect] = []
        engine.handle(.setProcess(pid: 42, owner: OwnerID(1)), into: &effects)
        let flags: LockFlags = kind == "exit" ? [] : .persistent
        for i in 0..<count {
            _ = must { () throws(DLMError) in
                try engine.lock(
                    LockRequest(
                        lockspace: ls, owner: OwnerID(1), name: resourceName(i, length: 24), mode: .ex, flags: flags),
                    into: &effects)
            }
        }
        if kind == "purge" {
            engine.ownerExited(OwnerID(1), into: &effects)
            while engine.hasBulkWork { engine.handle(.continueBulkWork, into: &effects) }
        }
        effects.removeAll(keepingCapacity: true)
        var slices: [Double] = []
        let total = timed {
            slices.append(
                timed {
                    do throws(DLMError) {
                        switch kind {
                        case "exit": engine.ownerExited(OwnerID(1), into: &effects)
                        case "purge":
                            try engine.call(
                                .purge(lockspace: ls, pid: 42, requester: OwnerID(9), context: 0), into: &effects)
                        default:
                            try engine.call(
                                .releaseLockspace(ls, force: true, requester: OwnerID(9), context: 0), into: &effects)
                        }
                    } catch {
                        fail("\(kind): \(error)")
                    }
                })
            // The store's changes of each slice come as `persist` effects, as dlmd gets them.
            while engine.hasBulkWork {
                slices.append(timed { engine.handle(.continueBulkWork, into: &effects) })
                effects.removeAll(keepingCapacity: true)
            }
        }
        guard engine.lockCount == 0 else { fail("\(kind): \(engine.lockCount) locks left") }

        return .object([
            ("scenario", .string("engine-bulk")), ("case", .string(kind)), ("locks", .int(count)),
            ("total_ms", .number(total * 1000)), ("slices", .int(slices.count)),
            ("longest_slice_ms", .double(((slices.max() ?? 0) * 1e5).rounded() / 100)),
            ("slice_locks", .int(engine.config.bulkSlice)), ("steps", .int(engine.probe.bulkSteps)),
        ])
    }

    /// One deadlock pass over `waiters` waiting requests on `resources` resources, then the same pass after a
    /// change elsewhere (a pass does not run on unchanged queues that held no cycle).
    static func deadlockPass(waiters: Int, resources: Int) -> JSON {
        var engine = LockEngine()
        let ls = must { () throws(DLMError) in try engine.createLockspace(name: Array("bench".utf8)) }
        var effects: [Effect] = []
        for r in 0..<resources {
            _ = must { () throws(DLMError) in
                try engine.lock(
                    LockRequest(lockspace: ls, owner: OwnerID(1), name: resourceName(r, length: 16), mode: .ex),
                    into: &effects)
            }
        }
        for i in 0..<waiters {
            _ = must { () throws(DLMError) in
                try engine.lock(
                    LockRequest(
                        lockspace: ls, owner: OwnerID(2), name: resourceName(i % resources, length: 16), mode: .ex,
                        transaction: UInt64(i + 1)), into: &effects)
            }
        }
        let second: Instant = 1_000_000_000
        effects.removeAll()
        // A tick every 10 ms, as dlmd ticks, until the pass is over: each does one slice.
        func pass(at start: Instant) -> (total: Double, longest: Double, slices: Int) {
            var now = start
            var slices: [Double] = [timed { engine.tick(now: now, into: &effects) }]
            while engine.isSearchingDeadlocks {
                now += 10_000_000
                slices.append(timed { engine.tick(now: now, into: &effects) })
            }
            if getenv("BULK_TRACE") != nil { print(slices.map { Int($0 * 1e6) }) }
            return (slices.reduce(0, +), slices.max()!, slices.count)
        }
        let first = pass(at: second)
        let unchanged = pass(at: 3 * second)
        _ = must { () throws(DLMError) in
            try engine.lock(
                LockRequest(lockspace: ls, owner: OwnerID(3), name: Array("elsewhere".utf8), mode: .ex), into: &effects)
        }
        let changed = pass(at: 5 * second)
        // A search across nodes (ClusterDeadlocks.swift) as dlmd runs it: this engine's part of the graph built and
        // handed out in slices of `deadlockSlice` steps (one a tick), each piece joined as its messages of 4,096
        // entries come, then the cycle search through every due request in slices.
        let slice = EngineConfig().deadlockSlice
        var builder = engine.startGraphPart()
        var graph = ClusterWaitForGraph()
        var partSlices: [Double] = []
        var joins: [Double] = []
        var edges = 0
        while !builder.isDone {
            var piece = WaitForGraphPart()
            partSlices.append(timed { piece = engine.continueGraphPart(&builder, budget: slice) })
            edges += piece.edges.count
            for start in stride(from: 0, to: piece.participants.count, by: 4096) {
                let message = WaitForGraphPart(
                    participants: Array(piece.participants[start..<min(start + 4096, piece.participants.count)]))
                joins.append(timed { graph.add(message, of: 1) })
            }
            for start in stride(from: 0, to: piece.edges.count, by: 4096) {
                let message = WaitForGraphPart(edges: Array(piece.edges[start..<min(start + 4096, piece.edges.count)]))
                joins.append(timed { graph.add(message, of: 1) })
            }
        }
        let due = engine.dueDeadlockWaiters()
        var search = CycleSearch()
        var cycleSlices: [Double] = []
        var cycles: [[DeadlockStep]]?
        while cycles == nil {
            cycleSlices.append(timed { cycles = graph.findCycles(&search, through: due, of: 1, budget: slice) })
        }
        guard cycles!.isEmpty else { fail("a cycle across masters on one engine") }
        func ms(_ seconds: Double) -> JSON { .double((seconds * 1e5).rounded() / 100) }
        guard !effects.contains(where: { if case .completion(let c) = $0 { c.status == .deadlock } else { false } })
        else {
            fail("a deadlock pass refused a request without a cycle")
        }
        return .object([
            ("scenario", .string("engine-deadlock-pass")), ("waiters", .int(waiters)), ("resources", .int(resources)),
            ("pass_ms", .number(first.total * 1000)), ("slices", .int(first.slices)),
            ("longest_slice_ms", .double((first.longest * 1e5).rounded() / 100)),
            ("unchanged_ms", .double((unchanged.total * 1e5).rounded() / 100)),
            ("changed_ms", .number(changed.total * 1000)), ("passes", .int(engine.probe.deadlockPasses)),
            ("steps", .int(engine.probe.deadlockSteps)),
            ("cluster_part_ms", ms(partSlices.reduce(0, +))), ("cluster_part_slices", .int(partSlices.count)),
            ("cluster_part_longest_ms", ms(partSlices.max()!)), ("cluster_join_ms", ms(joins.reduce(0, +))),
            ("cluster_join_longest_ms", ms(joins.max() ?? 0)), ("cluster_cycles_ms", ms(cycleSlices.reduce(0, +))),
            ("cluster_cycles_slices", .int(cycleSlices.count)), ("cluster_cycles_longest_ms", ms(cycleSlices.max()!)),
            ("cluster_due", .int(due.count)), ("cluster_edges", .int(edges)),
        ])
    }
}
