import DLMCore
import DLMTestSupport
import DLMWire
import Foundation
import Synchronization

/// Work that is large by nature against a running dlmd, while another client ("the prober") does lock+unlock
/// pairs on a resource of its own and records the longest pair: the longest pause another client saw.
///
/// - `dlmbench stall-exit --locks N[,N...] [--cases exit,purge,release]`: a client takes N EX locks and exits
///   (its locks released; a waiter on its first lock, which is released last, times it); or takes N PERSISTENT
///   locks and exits, and another client purges the orphans (timed from PURGE to PURGED); or a client takes N
///   locks in a lockspace that another client then releases with force (from LOCKSPACE_RELEASE to its OK);
///   `--cases orphan`: takes N PERSISTENT locks and exits, leaving them orphaned (for a restart that restores
///   them, timed by bench/stall-bench.sh).
/// - `dlmbench stall-deadlock --waiters N[,N...] [--resources N[,N...]] [--duration S]`: N requests wait, each its
///   own transaction, on one resource or spread over several, while deadlock passes are due (dlmd's
///   `--deadlock-wait`, 1 s by default); dlmd's CPU over the window against the same window without the waiters,
///   and the prober's longest pause; then a 2-cycle is closed among them and the time to its victim's EDEADLK.
///
/// One JSON object per case; `--socket PATH` as for the other scenarios.
enum StallScenarios {
    static let exitOptions = ["socket", "locks", "cases"]
    static let deadlockOptions = ["socket", "waiters", "resources", "duration"]

    // MARK: exit, purge, forced release

    static func exit(_ options: Options) -> [JSON] {
        let socket = options.string("socket", ProcessInfo.processInfo.environment["DLM_SOCKET"] ?? "")
        let counts = options.string("locks", "10000,100000,1000000").split(separator: ",").compactMap { Int($0) }
        let cases = options.string("cases", "exit,purge,release").split(separator: ",").map(String.init)
        var results: [JSON] = []
        for count in counts {
            for kind in cases { results.append(exitCase(kind, locks: count, socket: socket)) }
        }
        return results
    }

    static func exitCase(_ kind: String, locks count: Int, socket: String) -> JSON {
        let lockspace = "stall-\(kind)-\(count)"
        let names = (0..<count).map { resourceName($0, length: 24) }
        let holder = RawClient(socket: socket, lockspace: lockspace)
        let taken = holder.lockMany(names, flags: kind == "purge" || kind == "orphan" ? .persistent : [])
        // A waiter on the first lock taken, which an exit releases last.
        let waiter = RawClient(socket: socket, lockspace: lockspace)
        if kind == "exit" {
            waiter.send(.lock(LockMessage(tag: 1, lockspace: waiter.lockspace, mode: .ex, options: [], name: names[0])))
            guard case .ok = waiter.receive() else { fail("the waiter's request was not queued") }
        }
        let prober = Prober(socket: socket).start()
        prober.waitForPairs(50)
        var started = nowNanoseconds()
        let elapsed: UInt64
        // For a purge: the exit that orphans the locks, before it.
        var orphaned: (elapsed: UInt64, longest: UInt64)?
        switch kind {
        case "exit":
            holder.disconnect()
            let answer = waiter.receive()
            guard case .completion(let completion) = answer, completion.status == .granted else {
                fail("the waiter was not granted: \(answer)")
            }
            elapsed = nowNanoseconds() - started
        case "orphan":
            // For a restart that restores them (bench/stall-bench.sh): the exit that orphans the locks, timed.
            let connections = waiter.status().connections
            holder.disconnect()
            waiter.waitUntil { $0.connections < connections && ($0.work?.bulkJobs ?? 0) == 0 }
            elapsed = nowNanoseconds() - started
        case "purge":
            let connections = waiter.status().connections
            holder.disconnect()
            // The orphaning exit runs first, in slices; then the purge, timed alone.
            waiter.waitUntil { $0.connections < connections && ($0.work?.bulkJobs ?? 0) == 0 }
            let purgeStarted = nowNanoseconds()
            orphaned = (purgeStarted - started, prober.longest(from: started, to: purgeStarted))
            waiter.send(.purge(tag: 7, lockspace: waiter.lockspace, nodeID: 0, pid: UInt32(getpid())))
            guard case .purged(_, let purged) = waiter.receive(), purged == UInt32(count) else {
                fail("PURGE did not remove \(count) orphans")
            }
            elapsed = nowNanoseconds() - purgeStarted
            started = purgeStarted
        default:
            waiter.send(.releaseLockspace(tag: 9, lockspace: waiter.lockspace, force: true))
            guard case .ok = waiter.receive() else { fail("the forced release failed") }
            elapsed = nowNanoseconds() - started
            holder.disconnect()
        }
        // The prober goes on a little after the end, then stops.
        let end = nowNanoseconds()
        prober.waitUntil(end + 50_000_000)
        let pauses = prober.stop(from: started, to: end)
        waiter.disconnect()
        guard taken == count else { fail("took \(taken) locks of \(count)") }
        let what: String
        switch kind {
        case "exit": what = "close of a connection holding the locks to the grant of a waiter on the last one released"
        case "purge": what = "PURGE of the orphans to PURGED (after the exit that orphaned them, reported apart)"
        case "orphan": what = "close of a connection holding persistent locks until they are all orphans"
        default: what = "forced LOCKSPACE_RELEASE to its OK"
        }
        var fields: [(String, JSON)] = [
            ("scenario", .string("stall-exit")), ("case", .string(kind)), ("locks", .int(count)),
            ("released_ms", .number(Double(elapsed) / 1e6)), ("longest_pause_ms", milliseconds(pauses.longest)),
            ("prober_pairs", .int(pauses.pairs)),
        ]
        if let orphaned {
            fields.append(("orphaning_exit_ms", .number(Double(orphaned.elapsed) / 1e6)))
            fields.append(("orphaning_exit_longest_pause_ms", milliseconds(orphaned.longest)))
        }
        fields.append(("what", .string(what)))
        return .object(fields)
    }

    /// Nanoseconds as milliseconds with two decimals.
    static func milliseconds(_ nanoseconds: UInt64) -> JSON { .double((Double(nanoseconds) / 1e4).rounded() / 100) }

    // MARK: deadlock passes

    static func deadlock(_ options: Options) -> [JSON] {
        let socket = options.string("socket", ProcessInfo.processInfo.environment["DLM_SOCKET"] ?? "")
        let waiterCounts = options.string("waiters", "1000,10000,100000").split(separator: ",").compactMap { Int($0) }
        let spreads = options.string("resources", "1,1000").split(separator: ",").compactMap { Int($0) }
        let duration = options.seconds("duration", 5)
        var results: [JSON] = []
        for count in waiterCounts {
            for resources in spreads {
                results.append(deadlockCase(waiters: count, resources: resources, duration: duration, socket: socket))
            }
        }
        return results
    }

    static func deadlockCase(waiters count: Int, resources: Int, duration: Double, socket: String) -> JSON {
        let lockspace = "stall-deadlock-\(count)-\(resources)"
        let control = RawClient(socket: socket, lockspace: lockspace)
        let pid = control.daemonPID()
        // The same window without waiters first: what the prober alone costs dlmd.
        let baseline = measure(socket: socket, pid: pid, seconds: duration)
        let holder = RawClient(socket: socket, lockspace: lockspace)
        let names = (0..<resources).map { resourceName($0, length: 16) }
        _ = holder.lockMany(names, flags: [])
        let waiter = RawClient(socket: socket, lockspace: lockspace)
        // Each request is queued: dlmd answers OK, its completion comes later (never, here).
        waiter.sendMany(count, receiving: { if case .ok = $0 {} else { fail("a waiter was not queued: \($0)") } }) {
            i in
            LockMessage(
                tag: UInt32(i + 1), lockspace: waiter.lockspace, mode: .ex, options: [],
                transaction: UInt64(i + 1), name: names[i % resources])
        }
        // Every request has waited the deadlock wait before the window starts.
        let passesBefore = control.status().work?.deadlockPasses ?? 0
        control.waitUntil { $0.work.map { $0.deadlockPasses > passesBefore && !$0.deadlockPassRunning } ?? false }
        let loaded = measure(socket: socket, pid: pid, seconds: duration)
        let passes = (control.status().work?.deadlockPasses ?? 0) - passesBefore
        // A 2-cycle among them: two clients each hold one lock and ask for the other's.
        let a = RawClient(socket: socket, lockspace: lockspace)
        let b = RawClient(socket: socket, lockspace: lockspace)
        _ = a.lock(Array("cycle-a".utf8))
        _ = b.lock(Array("cycle-b".utf8))
        a.send(
            .lock(LockMessage(tag: 100, lockspace: a.lockspace, mode: .ex, options: [], name: Array("cycle-b".utf8))))
        guard case .ok = a.receive() else { fail("a's request was not queued") }
        b.send(
            .lock(LockMessage(tag: 100, lockspace: b.lockspace, mode: .ex, options: [], name: Array("cycle-a".utf8))))
        let closed = nowNanoseconds()
        guard case .ok = b.receive() else { fail("b's request was not queued") }
        // b asked last: it is the youngest, the victim.
        guard case .completion(let refused) = b.receive(), refused.status == .deadlock else {
            fail("the cycle's victim did not get EDEADLK")
        }
        let found = nowNanoseconds() - closed
        for client in [a, b, waiter, holder, control] { client.disconnect() }
        let cpuShare = (loaded.cpu - baseline.cpu) / duration
        return .object([
            ("scenario", .string("stall-deadlock")), ("waiters", .int(count)), ("resources", .int(resources)),
            ("passes", .int(passes)), ("seconds", .number(duration)),
            ("dlmd_cpu_percent_searching", .double((cpuShare * 1e4).rounded() / 100)),
            ("dlmd_cpu_percent_baseline", .double((baseline.cpu / duration * 1e4).rounded() / 100)),
            ("longest_pause_ms", .double((Double(loaded.longest) / 1e4).rounded() / 100)),
            ("longest_pause_baseline_ms", .double((Double(baseline.longest) / 1e4).rounded() / 100)),
            ("cycle_found_ms", .number(Double(found) / 1e6)),
            (
                "what",
                .string(
                    "dlmd's CPU with the waiters minus without, over the same prober window; a 2-cycle closed among them"
                )
            ),
        ])
    }

    /// The prober for `seconds`: dlmd's CPU seconds meanwhile and the longest pair.
    static func measure(socket: String, pid: Int32, seconds: Double) -> (cpu: Double, longest: UInt64) {
        let prober = Prober(socket: socket).start()
        prober.waitForPairs(50)
        let before = (try? processCPUSeconds(pid)) ?? .nan
        let start = nowNanoseconds()
        let end = start + UInt64(seconds * 1e9)
        prober.waitUntil(end)
        let after = (try? processCPUSeconds(pid)) ?? .nan
        return (after - before, prober.stop(from: start, to: end).longest)
    }
}

/// A client on a thread of its own doing lock+unlock pairs on one resource, remembering when each pair ended and
/// how long it took.
final class Prober: @unchecked Sendable {
    let socket: String
    let stopping = Atomic<Bool>(false)
    let pairCount = Atomic<Int>(0)
    let lock = NSLock()
    var thread: BenchThread?
    /// (end, duration) of every pair, in nanoseconds; read only after `stop`.
    var pairs: [(end: UInt64, duration: UInt64)] = []

    init(socket: String) {
        self.socket = socket
        pairs.reserveCapacity(1 << 20)
    }

    func start() -> Prober {
        thread = BenchThread { [self] in
            let client = RawClient(socket: socket, lockspace: "stall-prober")
            let name = Array("prober".utf8)
            while !stopping.load(ordering: .relaxed) {
                let start = nowNanoseconds()
                client.unlock(client.lock(name))
                let end = nowNanoseconds()
                lock.withLock { pairs.append((end, end - start)) }
                pairCount.add(1, ordering: .releasing)
            }
            client.disconnect()
            return ClientResult()
        }.start()
        return self
    }

    /// Waits (by yielding the CPU) until the prober has done `count` pairs.
    func waitForPairs(_ count: Int) {
        while pairCount.load(ordering: .acquiring) < count { sched_yield() }
    }

    /// Waits until the monotonic clock passes `deadline` (nanoseconds).
    func waitUntil(_ deadline: UInt64) {
        while true {
            let now = nowNanoseconds()
            if now >= deadline { return }
            var time = timespec(
                tv_sec: Int((deadline - now) / 1_000_000_000), tv_nsec: Int((deadline - now) % 1_000_000_000))
            nanosleep(&time, nil)
        }
    }

    /// Stops and returns the longest pair that overlapped [from, to], and how many pairs ended in it.
    func stop(from: UInt64, to: UInt64) -> (longest: UInt64, pairs: Int) {
        stopping.store(true, ordering: .relaxed)
        _ = thread?.join()
        return summary(from: from, to: to)
    }

    /// The longest pair that overlapped [from, to] so far, while the prober goes on.
    func longest(from: UInt64, to: UInt64) -> UInt64 {
        // A pair ending after `to` may still be running: wait for it to end, then read under the lock.
        waitUntil(to)
        let count = pairCount.load(ordering: .acquiring)
        while pairCount.load(ordering: .acquiring) == count { sched_yield() }
        return lock.withLock { summary(from: from, to: to) }.longest
    }

    private func summary(from: UInt64, to: UInt64) -> (longest: UInt64, pairs: Int) {
        var longest: UInt64 = 0
        var count = 0
        for pair in pairs where pair.end >= from && pair.end - pair.duration <= to {
            longest = max(longest, pair.duration)
            count += 1
        }
        return (longest, count)
    }
}

extension RawClient {
    /// Takes EX on every name, pipelined (up to 1,024 in flight); returns how many were granted.
    func lockMany(_ names: [[UInt8]], flags: LockFlags) -> Int {
        var granted = 0
        sendMany(
            names.count,
            receiving: { message in
                if case .completion(let completion) = message, completion.status == .granted { granted += 1 }
            }
        ) { i in
            LockMessage(
                tag: UInt32(truncatingIfNeeded: i + 1), lockspace: lockspace, flags: flags, mode: .ex, options: [],
                name: names[i])
        }
        return granted
    }

    /// Sends `count` LOCK requests, with at most 1,024 unanswered when `receiving` takes the answers (one per
    /// request), else without reading any.
    func sendMany(
        _ count: Int, receiving: ((ServerMessage) -> Void)? = nil, _ request: (Int) -> LockMessage
    ) {
        let window = 1024
        var sent = 0
        var answered = 0
        while sent < count {
            outbound.clear()
            let batch = min(count - sent, receiving == nil ? window : window - (sent - answered))
            for i in sent..<(sent + batch) { ClientMessage.lock(request(i)).encode(into: &outbound) }
            sent += batch
            writeOutbound()
            guard let receiving else { continue }
            // Read at least half a window back before sending more.
            while sent - answered > window / 2 || (sent == count && answered < count) {
                receiving(receive())
                answered += 1
            }
        }
    }

    /// The pid of the dlmd this client talks to (STATUS).
    func daemonPID() -> Int32 { status().pid }

    func status() -> StatusReport {
        send(.query(tag: tag(), kind: .status, argument: []))
        guard case .queryReply(_, let json) = receive(),
            let report = try? JSONDecoder().decode(StatusReport.self, from: Data(json))
        else { fail("no status from dlmd") }
        return report
    }

    /// Asks STATUS every 10 ms until `done` says so (at most a minute).
    func waitUntil(_ done: (StatusReport) -> Bool) {
        for _ in 0..<6000 {
            if done(status()) { return }
            var time = timespec(tv_sec: 0, tv_nsec: 10_000_000)
            nanosleep(&time, nil)
        }
        fail("dlmd's status did not come to what the benchmark waits for within a minute")
    }

    /// Closes the connection now (an exit, for dlmd).
    func disconnect() {
        shutdown(fd, Int32(SHUT_RDWR))
    }
}
