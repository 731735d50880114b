import DLMCore
import DLMWire
import Foundation
import Glibc
import NIOCore
import Synchronization

/// `dlmbench stall-abuse [--cases baseline,flood,idle,lockspaces] [--duration S] [--idle N]`: one client abusing
/// dlmd while another ("the prober", as in StallScenarios) does lock+unlock pairs on a resource of its own; the
/// prober's pair latency over the window (p50, p99, max) says how well the others are served:
/// - `baseline`: nobody else;
/// - `flood`: a client writes PING frames as fast as it can and never reads the PONGs (dlmd stops reading it at
///   its output pause mark; the client then blocks in its own writes);
/// - `idle`: N connections (default 10,000) that said HELLO and then nothing, opened before the window (the
///   time to open them is reported too); dlmd must allow them (`--max-connections`);
/// - `lockspaces`: a client that creates a lockspace and releases it, in a loop.
/// One JSON object per case; `--socket PATH` as for the other scenarios.
enum AbuseScenarios {
    static let options = ["socket", "cases", "duration", "idle"]

    static func run(_ options: Options) -> [JSON] {
        let socket = options.string("socket", ProcessInfo.processInfo.environment["DLM_SOCKET"] ?? "")
        let seconds = options.int("duration", 3)
        let idle = options.int("idle", 10_000)
        let cases = options.string("cases", "baseline,flood,idle,lockspaces").split(separator: ",").map(String.init)
        return cases.map { run($0, socket: socket, seconds: seconds, idle: idle) }
    }

    static func run(_ kind: String, socket: String, seconds: Int, idle: Int) -> JSON {
        var fields: [(String, JSON)] = [("scenario", .string("stall-abuse")), ("case", .string(kind))]
        let stopping = Atomic<Bool>(false)
        let done = Atomic<Int>(0)
        var abuser: BenchThread?
        var idleSockets: [Int32] = []
        var flooder: Int32 = -1
        switch kind {
        case "baseline":
            break
        case "flood":
            flooder = helloSocket(socket)
            let frames = pingFrames(count: 4096)
            abuser = BenchThread { [flooder] in
                while !stopping.load(ordering: .relaxed) {
                    let written = frames.withUnsafeBytes { write(flooder, $0.baseAddress!, $0.count) }
                    if written <= 0 { break }
                    done.add(written, ordering: .relaxed)
                }
                return ClientResult()
            }.start()
        case "idle":
            let start = nowNanoseconds()
            idleSockets = (0..<idle).map { _ in helloSocket(socket) }
            fields.append(("connections", .int(idle)))
            fields.append(("connect_all_ms", .double(Double(nowNanoseconds() - start) / 1e6)))
        case "lockspaces":
            abuser = BenchThread {
                let client = RawClient(socket: socket, lockspace: "abuse-home")
                var round = 0
                while !stopping.load(ordering: .relaxed) {
                    let name = Array("abuse-\(round % 1000)".utf8)
                    client.send(.openLockspace(tag: client.tag(), name: name, valueBlockLength: 0, create: true))
                    guard case .lockspace(_, let id, _, _) = client.receive() else { fail("cannot create a lockspace") }
                    client.send(.releaseLockspace(tag: client.tag(), lockspace: id, force: false))
                    guard case .ok = client.receive() else { fail("cannot release a lockspace") }
                    round += 1
                    done.add(1, ordering: .relaxed)
                }
                client.disconnect()
                return ClientResult()
            }.start()
        default:
            fail("--cases: baseline, flood, idle, lockspaces")
        }
        let prober = Prober(socket: socket).start()
        prober.waitForPairs(50)
        let from = nowNanoseconds()
        prober.waitUntil(from + UInt64(seconds) * 1_000_000_000)
        let to = nowNanoseconds()
        let durations = prober.stopAndTakeDurations(from: from, to: to).sorted()
        stopping.store(true, ordering: .relaxed)
        // A flooder blocked in its write (dlmd stopped reading it) is woken by the shutdown.
        if flooder >= 0 { shutdown(flooder, Int32(SHUT_RDWR)) }
        _ = abuser?.join()
        if flooder >= 0 { close(flooder) }
        for fd in idleSockets { close(fd) }
        switch kind {
        case "flood": fields.append(("flood_bytes_written", .int(done.load(ordering: .relaxed))))
        case "lockspaces": fields.append(("lockspaces_created", .int(done.load(ordering: .relaxed))))
        default: break
        }
        return .object(
            fields + [
                ("seconds", .int(seconds)), ("prober_pairs", .int(durations.count)),
                ("p50_us", .double(Samples.percentile(durations, 0.5))),
                ("p99_us", .double(Samples.percentile(durations, 0.99))),
                ("max_us", .double(Double(durations.last ?? 0) / 1000)),
            ])
    }

    /// A connection that said HELLO and got its reply.
    static func helloSocket(_ path: String) -> Int32 {
        let fd = unixSocket()
        guard connectUnix(fd, path) else { fail("cannot connect to \(path) (is --max-connections high enough?)") }
        var buffer = ByteBufferAllocator().buffer(capacity: 64)
        ClientMessage.hello(Hello(pid: UInt32(getpid()), clientName: "dlmbench-abuse")).encode(into: &buffer)
        let bytes = Array(buffer.readableBytesView)
        guard bytes.withUnsafeBytes({ write(fd, $0.baseAddress!, $0.count) }) == bytes.count else {
            fail("cannot say HELLO")
        }
        // HELLO_REPLY: read its length, then the rest.
        var header = [UInt8](repeating: 0, count: 4)
        guard read(fd, &header, 4) == 4 else { fail("no HELLO_REPLY (is --max-connections high enough?)") }
        let length = Int(header.reduce(0) { $0 << 8 | UInt32($1) })
        var body = [UInt8](repeating: 0, count: length)
        var got = 0
        while got < length {
            let n = body.withUnsafeMutableBytes { read(fd, $0.baseAddress! + got, length - got) }
            guard n > 0 else { fail("HELLO_REPLY cut short") }
            got += n
        }
        guard body.first == 0x81 else { fail("HELLO refused (is --max-connections high enough?)") }
        return fd
    }

    /// `count` PING frames in a row.
    static func pingFrames(count: Int) -> [UInt8] {
        var buffer = ByteBufferAllocator().buffer(capacity: count * 9)
        for index in 0..<count { ClientMessage.ping(tag: UInt32(index)).encode(into: &buffer) }
        return Array(buffer.readableBytesView)
    }
}

extension Prober {
    /// Stops and returns the duration of every pair that overlapped [from, to].
    func stopAndTakeDurations(from: UInt64, to: UInt64) -> [UInt64] {
        stopping.store(true, ordering: .relaxed)
        _ = thread?.join()
        return pairs.filter { $0.end >= from && $0.end - $0.duration <= to }.map(\.duration)
    }
}
