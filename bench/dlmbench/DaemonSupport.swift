import DLMClient
import DLMTestSupport
import Glibc
import NIOCore
import NIOPosix

// What the scenarios against a running dlmd share: the clock, latency samples and percentiles, the CPUs
// each side may run on, the load average, the connection options and the measuring window.

/// The monotonic clock in nanoseconds (vDSO: no system call).
@inline(__always)
func nowNanoseconds() -> UInt64 {
    var time = timespec()
    clock_gettime(CLOCK_MONOTONIC, &time)
    return UInt64(time.tv_sec) &* 1_000_000_000 &+ UInt64(time.tv_nsec)
}

/// Latency samples in nanoseconds.
struct Samples {
    var values: [UInt64] = []

    init(capacity: Int = 1 << 16) {
        values.reserveCapacity(capacity)
    }

    @inline(__always) mutating func add(_ nanoseconds: UInt64) { values.append(nanoseconds) }

    static func merged(_ parts: [Samples]) -> Samples {
        var all = Samples(capacity: parts.reduce(0) { $0 + $1.values.count })
        for part in parts { all.values.append(contentsOf: part.values) }
        return all
    }

    /// The `fraction` percentile in microseconds (nearest rank), of the sorted samples.
    static func percentile(_ sorted: [UInt64], _ fraction: Double) -> Double {
        guard !sorted.isEmpty else { return .nan }
        let rank = min(sorted.count - 1, max(0, Int((fraction * Double(sorted.count)).rounded(.up)) - 1))
        return Double(sorted[rank]) / 1000
    }

    /// p50, p99 (and p90, p99.9, max, mean) in microseconds.
    func summary() -> [(String, JSON)] {
        let sorted = values.sorted()
        let mean = sorted.isEmpty ? Double.nan : Double(sorted.reduce(0, &+)) / Double(sorted.count) / 1000
        return [
            ("p50_us", .number2(Samples.percentile(sorted, 0.50))),
            ("p99_us", .number2(Samples.percentile(sorted, 0.99))),
            ("p90_us", .number2(Samples.percentile(sorted, 0.90))),
            ("p999_us", .number2(Samples.percentile(sorted, 0.999))),
            ("max_us", .number2(sorted.last.map { Double($0) / 1000 } ?? .nan)),
            ("mean_us", .number2(mean)),
            ("latency_samples", .int(sorted.count)),
        ]
    }
}

extension JSON {
    /// A value rounded to two decimals.
    static func number2(_ value: Double) -> JSON { .double((value * 100).rounded() / 100) }
}

/// glibc's `sched_getaffinity` and `sched_setaffinity` (`_GNU_SOURCE`, so not in the Glibc module).
typealias AffinityFunction = @convention(c) (pid_t, Int, UnsafeMutableRawPointer) -> Int32

func affinityFunction(_ name: String) -> AffinityFunction {
    guard let symbol = dlsym(UnsafeMutableRawPointer(bitPattern: 0), name) else { fail("no \(name) in libc") }
    return unsafeBitCast(symbol, to: AffinityFunction.self)
}

/// The CPUs the calling thread may run on, as a list such as "0" or "0-1".
func allowedCPUs() -> String {
    var set = cpu_set_t()
    guard affinityFunction("sched_getaffinity")(0, MemoryLayout<cpu_set_t>.size, &set) == 0 else { return "?" }
    var cpus: [Int] = []
    withUnsafeBytes(of: &set) { raw in
        for cpu in 0..<min(raw.count * 8, 1024) where raw[cpu / 8] & (1 << (cpu % 8)) != 0 { cpus.append(cpu) }
    }
    return cpuList(cpus)
}

/// "0", "0-1", "0,2": the CPUs in `cpus`, sorted, runs collapsed.
func cpuList(_ cpus: [Int]) -> String {
    var parts: [String] = []
    var index = 0
    let sorted = cpus.sorted()
    while index < sorted.count {
        var end = index
        while end + 1 < sorted.count && sorted[end + 1] == sorted[end] + 1 { end += 1 }
        parts.append(end == index ? "\(sorted[index])" : "\(sorted[index])-\(sorted[end])")
        index = end + 1
    }
    return parts.joined(separator: ",")
}

/// Pins the calling thread to `cpu`.
func pinCurrentThread(to cpu: Int) {
    var set = cpu_set_t()
    withUnsafeMutableBytes(of: &set) { raw in raw[cpu / 8] |= UInt8(1 << (cpu % 8)) }
    guard affinityFunction("sched_setaffinity")(0, MemoryLayout<cpu_set_t>.size, &set) == 0 else {
        fail("cannot pin a thread to CPU \(cpu)")
    }
}

/// The `Cpus_allowed_list` of process `pid` (from /proc), or "?".
func allowedCPUs(process pid: Int) -> String {
    guard let file = fopen("/proc/\(pid)/status", "r") else { return "?" }
    defer { fclose(file) }
    var line = [CChar](repeating: 0, count: 512)
    while fgets(&line, Int32(line.count), file) != nil {
        let text = cString(line)
        if text.hasPrefix("Cpus_allowed_list:") {
            return text.dropFirst("Cpus_allowed_list:".count).trimmingCharacters()
        }
    }
    return "?"
}

/// The three load averages of /proc/loadavg.
func loadAverage() -> String {
    guard let file = fopen("/proc/loadavg", "r") else { return "?" }
    defer { fclose(file) }
    var line = [CChar](repeating: 0, count: 128)
    guard fgets(&line, Int32(line.count), file) != nil else { return "?" }
    return cString(line).split(separator: " ").prefix(3).joined(separator: " ")
}

/// Blocks the calling thread (not a task) until `body` finishes, and returns its result; an error ends dlmbench.
func runBlocking<T: Sendable>(_ body: @escaping @Sendable () async throws -> T) -> T {
    do {
        return try waitFor(body)
    } catch {
        fail("\(error)")
    }
}

/// Blocks the calling thread (not a task) until `body` finishes; its result or its error (for a caller that must
/// clean up first, such as stopping the dlmd processes it started).
func waitFor<T: Sendable>(_ body: @escaping @Sendable () async throws -> T) throws -> T {
    let promise = MultiThreadedEventLoopGroup.singleton.next().makePromise(of: T.self)
    promise.completeWithTask(body)
    return try promise.futureResult.wait()
}

/// The measuring window: operations that complete in [start, end) count; clients stop after `end`.
struct Window: Sendable {
    let start: UInt64
    let end: UInt64

    init(warmup: Double, duration: Double) {
        let now = nowNanoseconds()
        start = now + UInt64(warmup * 1e9)
        end = start + UInt64(duration * 1e9)
    }

    var seconds: Double { Double(end - start) / 1e9 }

    @inline(__always) func counts(_ time: UInt64) -> Bool { time >= start && time < end }
}

/// The options every scenario against dlmd has.
struct DaemonOptions {
    static let names = ["socket", "duration", "warmup", "api", "client-threads", "busy-poll"]

    enum API: String {
        /// The callback API: completion handlers on the connection's event loop, no task per request.
        case callback
        /// The async API in tasks that prefer the connection's event loop as their executor.
        case async
        /// The async API in plain tasks on the cooperative thread pool (no executor preference).
        case pool
        /// No DLMClient: a blocking socket per client thread, frames by DLMWire (uncontended only).
        case raw
    }

    let socket: String
    let duration: Double
    let warmup: Double
    let api: API
    let clientThreads: Int
    /// Microseconds the client's event loop keeps polling after a read (DLMConnection's `busyPoll`).
    let busyPoll: Int

    init(_ options: Options) {
        socket = options.string("socket", DLMConnection.defaultSocketPath)
        duration = options.seconds("duration", 3)
        warmup = options.seconds("warmup", 0.5)
        guard let api = API(rawValue: options.string("api", "callback")) else {
            fail("--api is callback, async, pool or raw")
        }
        self.api = api
        clientThreads = options.int("client-threads", 1)
        busyPoll = options.int("busy-poll", 0, minimum: 0)
    }

    /// The figures every scenario reports besides its own.
    func describe(daemonPID: Int) -> [(String, JSON)] {
        [
            ("api", .string(api.rawValue)),
            ("client_threads", .int(clientThreads)),
            ("client_busy_poll_us", .int(busyPoll)),
            ("duration_s", .number2(duration)),
            ("warmup_s", .number2(warmup)),
            ("socket", .string(socket)),
            ("client_cpus", .string(allowedCPUs())),
            ("server_cpus", .string(daemonPID > 0 ? allowedCPUs(process: daemonPID) : "?")),
            ("load_average", .string(loadAverage())),
        ]
    }
}

extension Options {
    func seconds(_ name: String, _ defaultValue: Double) -> Double {
        guard let text = values[name] else { return defaultValue }
        guard let value = Double(text), value >= 0 else { fail("--\(name) needs a number of seconds") }
        return value
    }

    /// A comma-separated list of integers.
    func ints(_ name: String, _ defaultValue: [Int]) -> [Int] {
        guard let text = values[name] else { return defaultValue }
        let values = text.split(separator: ",").map { Int($0.trimmingCharacters().replacingUnderscores()) }
        guard !values.isEmpty, values.allSatisfy({ ($0 ?? 0) >= 1 }) else {
            fail("--\(name) needs integers of at least 1, separated by commas")
        }
        return values.map { $0! }
    }
}

/// Zipf's law over `count` items (item 0 the most frequent): P(k) ∝ 1 / (k + 1)^exponent.
struct Zipf {
    let cumulative: [Double]

    init(count: Int, exponent: Double) {
        var total = 0.0
        var cumulative: [Double] = []
        cumulative.reserveCapacity(count)
        for k in 0..<count {
            total += 1 / pow(Double(k + 1), exponent)
            cumulative.append(total)
        }
        self.cumulative = cumulative.map { $0 / total }
    }

    func next(_ random: inout SplitMix64) -> Int {
        let u = Double(random.next() >> 11) / Double(1 << 53)
        var low = 0
        var high = cumulative.count - 1
        while low < high {
            let middle = (low + high) / 2
            if cumulative[middle] < u { low = middle + 1 } else { high = middle }
        }
        return low
    }
}

/// CPU time used so far by dlmd (from /proc, in clock ticks) and by this process (getrusage), in seconds.
struct CPUSnapshot {
    var serverUser = Double.nan
    var serverSystem = Double.nan
    var clientUser: Double
    var clientSystem: Double

    init(daemonPID: Int) {
        if daemonPID > 0, let times = try? processCPUTimes(Int32(daemonPID)) {
            serverUser = times.user
            serverSystem = times.system
        }
        var usage = rusage()
        getrusage(RUSAGE_SELF.rawValue, &usage)
        clientUser = Double(usage.ru_utime.tv_sec) + Double(usage.ru_utime.tv_usec) / 1e6
        clientSystem = Double(usage.ru_stime.tv_sec) + Double(usage.ru_stime.tv_usec) / 1e6
    }

    /// CPU microseconds per operation, user and system, of dlmd and of this process, from `before` to now.
    static func perOperation(since before: CPUSnapshot, after: CPUSnapshot, operations: Int) -> [(String, JSON)] {
        let count = Double(max(1, operations))
        func per(_ seconds: Double) -> JSON { .number2(seconds * 1e6 / count) }
        return [
            ("server_user_us_per_op", per(after.serverUser - before.serverUser)),
            ("server_sys_us_per_op", per(after.serverSystem - before.serverSystem)),
            ("client_user_us_per_op", per(after.clientUser - before.clientUser)),
            ("client_sys_us_per_op", per(after.clientSystem - before.clientSystem)),
            ("cpu_ops", .int(operations)),
        ]
    }
}
