import DLMClient
import DLMCore
import DLMTestSupport
import Glibc
import NIOCore
import NIOPosix

/// The scenarios against a running dlmd over its Unix socket (`--socket`, default `$DLM_SOCKET`). Each client
/// is one connection (one owner) unless a scenario says otherwise. With `--api callback` (the default) a
/// client is a closed loop of completion handlers on its connection's event loop (the callback API of
/// DLMClient); with `--api async` it is a task that prefers that event loop as its executor; with
/// `--api pool` a plain task on the cooperative pool.
enum DaemonScenarios {
    static let uncontendedOptions = DaemonOptions.names + ["clients", "connections", "working-set"]
    static let pipelinedOptions = DaemonOptions.names + ["depth", "working-set"]
    static let handoffOptions = DaemonOptions.names + ["clients"]
    static let mixedOptions =
        DaemonOptions.names + [
            "clients", "connections", "resources", "zipf", "ex-percent", "seed",
        ]

    // MARK: uncontended

    /// N clients, each on its own resources, each a closed loop of lock (EX) then unlock. Each client has a
    /// connection of its own unless `--connections` is smaller: then the clients share them round-robin, as
    /// the threads of one process share its connection.
    static func uncontended(_ options: Options) -> [JSON] {
        let settings = DaemonOptions(options)
        let workingSet = options.int("working-set", 1000)
        return options.ints("clients", [1, 50]).map { clients in
            let connections = min(clients, options.int("connections", clients))
            let names = (0..<clients).map { client in
                (0..<workingSet).map { resourceName(client * workingSet + $0, length: 24) }
            }
            let session = Session(
                settings, connections: settings.api == .raw ? 1 : connections, lockspace: "bench-uncontended")
            let window = Window(warmup: settings.warmup, duration: settings.duration)
            let cpuBefore = CPUSnapshot(daemonPID: session.daemonPID)
            let results: [ClientResult]
            switch settings.api {
            case .callback:
                results = session.runCallbackClients(clients) { index, lockspace, done in
                    PairClient(lockspace: lockspace, names: names[index], window: window, done: done)
                }
            case .async, .pool:
                results = session.runTasks(clients, api: settings.api) { index, lockspace in
                    try await asyncPairs(lockspace, names: names[index], window: window)
                }
            case .raw:
                session.close()
                let threads = (0..<clients).map { index in
                    BenchThread {
                        RawClient(socket: settings.socket, lockspace: "bench-uncontended")
                            .pairs(names: names[index], window: window)
                    }.start()
                }
                results = threads.map { $0.join() }
            }
            let total = ClientResult.merged(results)
            let cpu = CPUSnapshot.perOperation(
                since: cpuBefore, after: CPUSnapshot(daemonPID: session.daemonPID), operations: total.allOps)
            return .object(
                [
                    ("scenario", .string("uncontended")),
                    (
                        "operation",
                        .string(
                            "one lock+unlock pair: LOCK (EX, granted at once), its COMPLETION, then UNLOCK and its "
                                + "COMPLETION; 2 requests, 2 round trips; latency is the pair's")
                    ),
                    ("ops_per_sec", .number(Double(total.ops) / window.seconds)),
                    ("requests_per_sec", .number(Double(2 * total.ops) / window.seconds)),
                ] + total.samples.summary() + total.requestSummary() + [
                    ("ops", .int(total.ops)),
                    ("clients", .int(clients)),
                    ("connections", .int(settings.api == .raw ? clients : connections)),
                    ("in_flight", .int(clients)),
                    ("resources_per_client", .int(workingSet)),
                ] + cpu + settings.describe(daemonPID: session.daemonPID))
        }
    }

    /// Lock+unlock pairs from one task until the window ends.
    static func asyncPairs(_ lockspace: DLMLockspace, names: [[UInt8]], window: Window) async throws -> ClientResult {
        var result = ClientResult()
        var index = 0
        while true {
            let start = nowNanoseconds()
            if start >= window.end { break }
            let lock = try await lockspace.lock(names[index], mode: .ex)
            let granted = nowNanoseconds()
            try await lock.unlock()
            index = index + 1 == names.count ? 0 : index + 1
            result.completedPair(start: start, granted: granted, end: nowNanoseconds(), in: window)
        }
        return result
    }

    // MARK: pipelined

    /// One connection with `depth` requests in flight: `depth` slots, each a closed loop of lock (EX) and
    /// unlock on resources of its own.
    static func pipelined(_ options: Options) -> [JSON] {
        let settings = DaemonOptions(options)
        let workingSet = options.int("working-set", 64)
        let depth = options.int("depth", 256)
        guard settings.api != .raw else { fail("--api raw is for uncontended only") }
        let session = Session(settings, connections: 1, lockspace: "bench-pipelined")
        let names = (0..<depth).map { slot in (0..<workingSet).map { resourceName(slot * workingSet + $0, length: 24) }
        }
        let window = Window(warmup: settings.warmup, duration: settings.duration)
        let cpuBefore = CPUSnapshot(daemonPID: session.daemonPID)
        let results: [ClientResult]
        switch settings.api {
        case .callback:
            results = session.runCallbackClients(1) { _, lockspace, done in
                PipelinedClient(lockspace: lockspace, names: names, window: window, done: done)
            }
        case .raw, .async, .pool:
            let lockspace = session.lockspaces[0]
            let connection = session.connections[0]
            results = [
                runBlocking {
                    try await withThrowingTaskGroup(of: ClientResult.self) { group in
                        for slot in 0..<depth {
                            group.addTask {
                                if settings.api == .async {
                                    try await withTaskExecutorPreference(connection.taskExecutor) {
                                        try await asyncRequests(lockspace, names: names[slot], window: window)
                                    }
                                } else {
                                    try await asyncRequests(lockspace, names: names[slot], window: window)
                                }
                            }
                        }
                        var results: [ClientResult] = []
                        for try await result in group { results.append(result) }
                        return ClientResult.merged(results)
                    }
                }
            ]
        }
        session.close()
        let total = ClientResult.merged(results)
        let cpu = CPUSnapshot.perOperation(
            since: cpuBefore, after: CPUSnapshot(daemonPID: session.daemonPID), operations: total.allOps)
        return [
            .object(
                [
                    ("scenario", .string("pipelined")),
                    (
                        "operation",
                        .string(
                            "one request: a LOCK (EX, granted at once) or an UNLOCK, until its COMPLETION; each "
                                + "in-flight slot alternates them on resources of its own; latency is the request's")
                    ),
                    ("ops_per_sec", .number(Double(total.ops) / window.seconds)),
                    ("pairs_per_sec", .number(Double(total.ops) / 2 / window.seconds)),
                ] + total.samples.summary() + [
                    ("ops", .int(total.ops)),
                    ("clients", .int(1)),
                    ("connections", .int(1)),
                    ("in_flight", .int(depth)),
                    ("resources_per_slot", .int(workingSet)),
                ] + cpu + settings.describe(daemonPID: session.daemonPID))
        ]
    }

    /// Requests from one task (lock, unlock, lock, ...) until the window ends; each request is one operation.
    static func asyncRequests(_ lockspace: DLMLockspace, names: [[UInt8]], window: Window) async throws
        -> ClientResult
    {
        var result = ClientResult()
        var index = 0
        while true {
            let start = nowNanoseconds()
            if start >= window.end { break }
            let lock = try await lockspace.lock(names[index], mode: .ex)
            let locked = nowNanoseconds()
            try await lock.unlock()
            let end = nowNanoseconds()
            index = index + 1 == names.count ? 0 : index + 1
            result.completed(at: locked, latency: locked - start, in: window)
            result.completed(at: end, latency: end - locked, in: window)
        }
        return result
    }

    // MARK: handoff

    /// N clients pass EX on one resource: each asks for EX, and when granted unlocks and asks again at the
    /// tail of the queue.
    static func handoff(_ options: Options) -> [JSON] {
        let settings = DaemonOptions(options)
        guard settings.api != .raw else { fail("--api raw is for uncontended only") }
        return options.ints("clients", [8]).map { clients in
            let session = Session(settings, connections: clients, lockspace: "bench-handoff")
            let name = Array("handoff".utf8)
            let window = Window(warmup: settings.warmup, duration: settings.duration)
            let cpuBefore = CPUSnapshot(daemonPID: session.daemonPID)
            let results: [ClientResult]
            switch settings.api {
            case .callback:
                results = session.runCallbackClients(clients) { _, lockspace, done in
                    HandoffClient(lockspace: lockspace, name: name, window: window, done: done)
                }
            case .raw, .async, .pool:
                results = session.runTasks(clients, api: settings.api) { _, lockspace in
                    var result = ClientResult()
                    while true {
                        let start = nowNanoseconds()
                        if start >= window.end { break }
                        let lock = try await lockspace.lock(name, mode: .ex)
                        let granted = nowNanoseconds()
                        result.completed(at: granted, latency: granted - start, in: window)
                        try await lock.unlock()
                    }
                    return result
                }
            }
            let total = ClientResult.merged(results)
            let cpu = CPUSnapshot.perOperation(
                since: cpuBefore, after: CPUSnapshot(daemonPID: session.daemonPID), operations: total.allOps)
            let rate = Double(total.ops) / window.seconds
            return .object(
                [
                    ("scenario", .string("handoff")),
                    (
                        "operation",
                        .string(
                            "one handoff: a grant of EX on the one resource to the next client in the queue; the "
                                + "holder then unlocks and asks again; latency is a request's wait from LOCK to grant")
                    ),
                    ("ops_per_sec", .number(rate)),
                ] + total.samples.summary() + [
                    ("handoff_us", .number2(rate > 0 ? 1e6 / rate : .nan)),
                    ("ops", .int(total.ops)),
                    ("clients", .int(clients)),
                    ("connections", .int(clients)),
                    ("in_flight", .int(clients)),
                    ("resources", .int(1)),
                ] + cpu + settings.describe(daemonPID: session.daemonPID))
        }
    }

    // MARK: mixed

    /// N clients, each a closed loop of lock then unlock on a resource drawn from a Zipf distribution, PR
    /// with probability 90 % and EX otherwise.
    static func mixed(_ options: Options) -> [JSON] {
        let settings = DaemonOptions(options)
        let resources = options.int("resources", 1000)
        let exponent = Double(options.string("zipf", "0.99")) ?? .nan
        guard exponent.isFinite, exponent >= 0 else { fail("--zipf needs a number, e.g. 0.99") }
        let exPercent = options.int("ex-percent", 10, minimum: 0)
        guard exPercent <= 100 else { fail("--ex-percent is 0 to 100") }
        let seed = UInt64(options.int("seed", 1))
        guard settings.api != .raw else { fail("--api raw is for uncontended only") }
        let zipf = Zipf(count: resources, exponent: exponent)
        let names = (0..<resources).map { resourceName($0, length: 24) }
        return options.ints("clients", [50]).map { clients in
            let connections = min(clients, options.int("connections", clients))
            let session = Session(settings, connections: connections, lockspace: "bench-mixed")
            // Each client's sequence of (resource, mode), drawn in advance.
            let plans = (0..<clients).map { client in
                var random = SplitMix64(seed: seed &* 1_000_003 &+ UInt64(client))
                return (0..<4096).map { _ in
                    (zipf.next(&random), random.next() % 100 < UInt64(exPercent) ? LockMode.ex : LockMode.pr)
                }
            }
            let window = Window(warmup: settings.warmup, duration: settings.duration)
            let cpuBefore = CPUSnapshot(daemonPID: session.daemonPID)
            let results: [ClientResult]
            switch settings.api {
            case .callback:
                results = session.runCallbackClients(clients) { index, lockspace, done in
                    MixedClient(lockspace: lockspace, names: names, plan: plans[index], window: window, done: done)
                }
            case .raw, .async, .pool:
                results = session.runTasks(clients, api: settings.api) { index, lockspace in
                    var result = ClientResult()
                    var step = 0
                    let plan = plans[index]
                    while true {
                        let start = nowNanoseconds()
                        if start >= window.end { break }
                        let (resource, mode) = plan[step]
                        step = step + 1 == plan.count ? 0 : step + 1
                        let lock = try await lockspace.lock(names[resource], mode: mode)
                        try await lock.unlock()
                        let end = nowNanoseconds()
                        result.completed(at: end, latency: end - start, in: window)
                    }
                    return result
                }
            }
            let total = ClientResult.merged(results)
            let cpu = CPUSnapshot.perOperation(
                since: cpuBefore, after: CPUSnapshot(daemonPID: session.daemonPID), operations: total.allOps)
            return .object(
                [
                    ("scenario", .string("mixed")),
                    (
                        "operation",
                        .string(
                            "one lock+unlock pair on a resource drawn from a Zipf distribution, PR or EX (waits "
                                + "when it conflicts), then UNLOCK; latency is the pair's")
                    ),
                    ("ops_per_sec", .number(Double(total.ops) / window.seconds)),
                ] + total.samples.summary() + total.requestSummary() + [
                    ("ops", .int(total.ops)),
                    ("clients", .int(clients)),
                    ("connections", .int(connections)),
                    ("in_flight", .int(clients)),
                    ("resources", .int(resources)),
                    ("zipf_exponent", .number2(exponent)),
                    ("ex_percent", .int(exPercent)),
                ] + cpu + settings.describe(daemonPID: session.daemonPID))
        }
    }
}

// MARK: Sessions and clients

/// What one client measured.
struct ClientResult: Sendable {
    /// Operations that completed in the window, and their latencies.
    var ops = 0
    var samples = Samples(capacity: 1 << 14)
    /// Every operation that completed, warm-up and tail included (for CPU time per operation).
    var allOps = 0
    /// A pair's two requests on their own, in the window: LOCK to its grant, UNLOCK to its completion.
    var lockSamples = Samples(capacity: 0)
    var unlockSamples = Samples(capacity: 0)

    /// An operation completed at `time`: it counts if that is in the window.
    @inline(__always) mutating func completed(at time: UInt64, latency: UInt64, in window: Window) {
        allOps += 1
        if window.counts(time) {
            ops += 1
            samples.add(latency)
        }
    }

    /// A pair completed at `end`: the lock was granted at `granted`, and the pair started at `start`.
    @inline(__always) mutating func completedPair(start: UInt64, granted: UInt64, end: UInt64, in window: Window) {
        completed(at: end, latency: end - start, in: window)
        if window.counts(end) {
            lockSamples.add(granted - start)
            unlockSamples.add(end - granted)
        }
    }

    static func merged(_ results: [ClientResult]) -> ClientResult {
        ClientResult(
            ops: results.reduce(0) { $0 + $1.ops }, samples: Samples.merged(results.map(\.samples)),
            allOps: results.reduce(0) { $0 + $1.allOps }, lockSamples: Samples.merged(results.map(\.lockSamples)),
            unlockSamples: Samples.merged(results.map(\.unlockSamples)))
    }

    /// The p50 and p99 of each request of a pair, if pairs were measured.
    func requestSummary() -> [(String, JSON)] {
        guard !lockSamples.values.isEmpty else { return [] }
        let locks = lockSamples.values.sorted()
        let unlocks = unlockSamples.values.sorted()
        return [
            ("lock_p50_us", .number2(Samples.percentile(locks, 0.50))),
            ("lock_p99_us", .number2(Samples.percentile(locks, 0.99))),
            ("unlock_p50_us", .number2(Samples.percentile(unlocks, 0.50))),
            ("unlock_p99_us", .number2(Samples.percentile(unlocks, 0.99))),
        ]
    }
}

/// The connections of one measurement, on a client event loop group of `--client-threads` threads.
final class Session: @unchecked Sendable {
    let group: MultiThreadedEventLoopGroup
    let connections: [DLMConnection]
    let lockspaces: [DLMLockspace]
    let daemonPID: Int

    init(_ settings: DaemonOptions, connections count: Int, lockspace: String) {
        let group = MultiThreadedEventLoopGroup(numberOfThreads: settings.clientThreads)
        self.group = group
        let socket = settings.socket
        (connections, lockspaces, daemonPID) = runBlocking {
            var connections: [DLMConnection] = []
            var lockspaces: [DLMLockspace] = []
            for _ in 0..<count {
                let connection = try await DLMConnection.connect(
                    socketPath: socket, clientName: "dlmbench", eventLoopGroup: group,
                    busyPoll: .microseconds(Int64(settings.busyPoll)))
                connections.append(connection)
                lockspaces.append(try await connection.openLockspace(lockspace))
            }
            let status = try await connections[0].query(.status)
            return (connections, lockspaces, Session.pid(inStatus: status))
        }
    }

    /// The `pid` of a status report.
    static func pid(inStatus json: [UInt8]) -> Int {
        let text = String(decoding: json, as: UTF8.self)
        guard let range = text.range(of: "\"pid\"") else { return 0 }
        let digits = text[range.upperBound...].drop { !$0.isNumber }.prefix { $0.isNumber }
        return Int(digits) ?? 0
    }

    /// Starts `clients` callback clients on the connections (round-robin), each on its connection's event
    /// loop, and waits until every one is done.
    func runCallbackClients(
        _ clients: Int, _ make: (Int, DLMLockspace, EventLoopPromise<ClientResult>) -> LoopClient
    ) -> [ClientResult] {
        var futures: [EventLoopFuture<ClientResult>] = []
        for index in 0..<clients {
            let lockspace = lockspaces[index % lockspaces.count]
            let loop = connections[index % connections.count].eventLoop
            let promise = loop.makePromise(of: ClientResult.self)
            let client = make(index, lockspace, promise)
            loop.execute { client.start() }
            futures.append(promise.futureResult)
        }
        let results = futures.map { future in
            do { return try future.wait() } catch { fail("a client failed: \(error)") }
        }
        close()
        return results
    }

    /// Runs `clients` tasks on the connections (round-robin) and waits until every one is done.
    func runTasks(
        _ clients: Int, api: DaemonOptions.API,
        _ body: @escaping @Sendable (Int, DLMLockspace) async throws -> ClientResult
    ) -> [ClientResult] {
        let lockspaces = self.lockspaces
        let connections = self.connections
        let results = runBlocking {
            try await withThrowingTaskGroup(of: ClientResult.self) { group in
                for index in 0..<clients {
                    let lockspace = lockspaces[index % lockspaces.count]
                    let connection = connections[index % connections.count]
                    group.addTask {
                        if api == .async {
                            try await withTaskExecutorPreference(connection.taskExecutor) {
                                try await body(index, lockspace)
                            }
                        } else {
                            try await body(index, lockspace)
                        }
                    }
                }
                var results: [ClientResult] = []
                for try await result in group { results.append(result) }
                return results
            }
        }
        close()
        return results
    }

    private var closed = false

    func close() {
        guard !closed else { return }
        closed = true
        let connections = self.connections
        runBlocking { for connection in connections { await connection.close() } }
        try? group.syncShutdownGracefully()
    }
}

/// A client of the callback API: touched on its connection's event loop only.
class LoopClient: @unchecked Sendable {
    let lockspace: DLMLockspace
    let window: Window
    let done: EventLoopPromise<ClientResult>
    var result = ClientResult()

    init(lockspace: DLMLockspace, window: Window, done: EventLoopPromise<ClientResult>) {
        self.lockspace = lockspace
        self.window = window
        self.done = done
    }

    func start() {}

    func failed(_ error: DLMError) {
        fail("a request failed: \(error)")
    }
}

/// Lock (EX) then unlock, again and again, on names of its own.
final class PairClient: LoopClient, @unchecked Sendable {
    let names: [[UInt8]]
    var index = 0
    var started: UInt64 = 0
    var granted: UInt64 = 0

    init(lockspace: DLMLockspace, names: [[UInt8]], window: Window, done: EventLoopPromise<ClientResult>) {
        self.names = names
        super.init(lockspace: lockspace, window: window, done: done)
    }

    override func start() {
        let now = nowNanoseconds()
        guard now < window.end else {
            done.succeed(result)
            return
        }
        started = now
        let name = names[index]
        index = index + 1 == names.count ? 0 : index + 1
        lockspace.submitLock(name, mode: .ex) { result in
            switch result {
            case .success(let lock) where lock.status == .granted: self.unlock(lock.id)
            case .success(let lock): self.failed(DLMError(lock.status, "not granted"))
            case .failure(let error): self.failed(error)
            }
        }
    }

    func unlock(_ lock: LockID) {
        granted = nowNanoseconds()
        lockspace.submitUnlock(lock) { result in
            guard case .success = result else { return self.failed(DLMError(.protocolError, "\(result)")) }
            self.result.completedPair(
                start: self.started, granted: self.granted, end: nowNanoseconds(), in: self.window)
            self.start()
        }
    }
}

/// `depth` slots on one connection, each a closed loop of lock (EX) and unlock on names of its own.
final class PipelinedClient: LoopClient, @unchecked Sendable {
    let names: [[[UInt8]]]
    var index: [Int]
    var active: Int

    init(lockspace: DLMLockspace, names: [[[UInt8]]], window: Window, done: EventLoopPromise<ClientResult>) {
        self.names = names
        self.index = Array(repeating: 0, count: names.count)
        self.active = names.count
        super.init(lockspace: lockspace, window: window, done: done)
    }

    override func start() {
        for slot in 0..<names.count { lock(slot, now: nowNanoseconds()) }
    }

    func lock(_ slot: Int, now: UInt64) {
        guard now < window.end else {
            active -= 1
            if active == 0 { done.succeed(result) }
            return
        }
        let names = self.names[slot]
        let name = names[index[slot]]
        index[slot] = index[slot] + 1 == names.count ? 0 : index[slot] + 1
        lockspace.submitLock(name, mode: .ex) { result in
            guard case .success(let lock) = result, lock.status == .granted else {
                return self.failed(DLMError(.protocolError, "\(result)"))
            }
            let end = nowNanoseconds()
            self.result.completed(at: end, latency: end - now, in: self.window)
            self.unlock(slot, lock.id, now: end)
        }
    }

    func unlock(_ slot: Int, _ lock: LockID, now: UInt64) {
        lockspace.submitUnlock(lock) { result in
            guard case .success = result else { return self.failed(DLMError(.protocolError, "\(result)")) }
            let end = nowNanoseconds()
            self.result.completed(at: end, latency: end - now, in: self.window)
            self.lock(slot, now: end)
        }
    }
}

/// Asks for EX on the one resource; when granted, unlocks and asks again (both in one write).
final class HandoffClient: LoopClient, @unchecked Sendable {
    let name: [UInt8]
    var requested: UInt64 = 0

    init(lockspace: DLMLockspace, name: [UInt8], window: Window, done: EventLoopPromise<ClientResult>) {
        self.name = name
        super.init(lockspace: lockspace, window: window, done: done)
    }

    override func start() {
        requested = nowNanoseconds()
        lockspace.submitLock(name, mode: .ex) { result in
            guard case .success(let lock) = result, lock.status == .granted else {
                return self.failed(DLMError(.protocolError, "\(result)"))
            }
            self.granted(lock.id)
        }
    }

    func granted(_ lock: LockID) {
        let now = nowNanoseconds()
        result.completed(at: now, latency: now - requested, in: window)
        let last = now >= window.end
        lockspace.submitUnlock(lock) { result in
            guard case .success = result else { return self.failed(DLMError(.protocolError, "\(result)")) }
            if last { self.done.succeed(self.result) }
        }
        if !last { start() }
    }
}

/// Lock then unlock on resources and modes drawn in advance.
final class MixedClient: LoopClient, @unchecked Sendable {
    let names: [[UInt8]]
    let plan: [(Int, LockMode)]
    var step = 0
    var started: UInt64 = 0

    init(
        lockspace: DLMLockspace, names: [[UInt8]], plan: [(Int, LockMode)], window: Window,
        done: EventLoopPromise<ClientResult>
    ) {
        self.names = names
        self.plan = plan
        super.init(lockspace: lockspace, window: window, done: done)
    }

    override func start() {
        let now = nowNanoseconds()
        guard now < window.end else {
            done.succeed(result)
            return
        }
        started = now
        let (resource, mode) = plan[step]
        step = step + 1 == plan.count ? 0 : step + 1
        lockspace.submitLock(names[resource], mode: mode) { result in
            guard case .success(let lock) = result, lock.status == .granted else {
                return self.failed(DLMError(.protocolError, "\(result)"))
            }
            self.lockspace.submitUnlock(lock.id) { result in
                guard case .success = result else { return self.failed(DLMError(.protocolError, "\(result)")) }
                let end = nowNanoseconds()
                self.result.completed(at: end, latency: end - self.started, in: self.window)
                self.start()
            }
        }
    }
}
