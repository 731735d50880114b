import Glibc

/// `dlmbench rtt`: the reference for the scenarios against dlmd. A raw round trip over a Unix stream socket:
/// the client writes a 64-byte message, a tiny echo server thread in this process reads it and writes it
/// back, and the client reads it, all with blocking sockets. The client runs on the calling thread (pin the
/// process with `taskset`); `--echo-cpu` pins the echo thread, as `taskset` pins dlmd. With `--echo process`
/// the echo server is a child process (`dlmbench echo`) instead of a thread, so that each round trip also
/// switches between address spaces, as a round trip to dlmd does. With `--busy-poll US` both sides poll
/// before each read as DLMClient's and dlmd's `BusyPoll` does: `ppoll` with a 1 µs timeout, until the
/// message is there or US microseconds have passed since the last message, then a blocking read. That is the
/// raw round trip to compare with dlmd and a client that both poll. With `--transport tcp` the socket is a TCP
/// connection over loopback (TCP_NODELAY on both ends, as dlmd's peer links): the reference for a lock
/// request whose master is another node.
enum RTTScenario {
    static let optionNames = ["duration", "warmup", "size", "echo-cpu", "echo", "busy-poll", "transport"]

    static func run(_ options: Options) -> JSON {
        let duration = options.seconds("duration", 3)
        let warmup = options.seconds("warmup", 0.5)
        let size = options.int("size", 64)
        let echoCPU = options.values["echo-cpu"].map { _ in options.int("echo-cpu", 0, minimum: 0) }
        let pollWindow = UInt64(options.int("busy-poll", 0, minimum: 0)) * 1000
        let path = "/tmp/dlmbench-rtt-\(getpid()).sock"
        let tcp: Bool
        switch options.string("transport", "unix") {
        case "unix": tcp = false
        case "tcp": tcp = true
        default: fail("--transport is unix or tcp")
        }
        let listener: Int32
        var port: UInt16 = 0
        if tcp {
            (listener, port) = tcpListener()
        } else {
            unlink(path)
            listener = unixSocket()
            guard bindUnix(listener, path), listen(listener, 1) == 0 else { fail("cannot listen on \(path)") }
        }
        let inProcess: Bool
        switch options.string("echo", "thread") {
        case "thread": inProcess = true
        case "process": inProcess = false
        default: fail("--echo is thread or process")
        }
        var echo: EchoServer?
        var child: pid_t = 0
        var echoCPUs: String
        if inProcess {
            echo = EchoServer(listener: listener, size: size, cpu: echoCPU, pollWindow: pollWindow)
            echo!.start()
        } else {
            var arguments = [
                "dlmbench", "echo", "--listener", "\(listener)", "--size", "\(size)", "--busy-poll",
                "\(pollWindow / 1000)",
            ]
            if let echoCPU { arguments += ["--echo-cpu", "\(echoCPU)"] }
            child = spawnSelf(arguments)
        }
        let client: Int32
        if tcp {
            client = tcpConnect(port: port)
        } else {
            client = unixSocket()
            guard connectUnix(client, path) else { fail("cannot connect to \(path)") }
        }
        if let echo {
            echoCPUs = echo.waitUntilRunning()
        } else {
            // The child says which CPUs it runs on, as the first message.
            var cpus = [UInt8](repeating: 0, count: size)
            guard readAll(client, &cpus) else { fail("the echo process did not answer") }
            echoCPUs = String(decoding: cpus.prefix { $0 != 0 }, as: UTF8.self)
        }
        if !tcp { unlink(path) }

        var message = [UInt8](repeating: 0x5A, count: size)
        var samples = Samples(capacity: 1 << 20)
        var count = 0
        let window = Window(warmup: warmup, duration: duration)
        var poller = ReadPoller(window: pollWindow)
        while true {
            let start = nowNanoseconds()
            guard writeAll(client, &message) else { fail("the echo failed") }
            poller.awaitReadable(client)
            guard readAll(client, &message) else { fail("the echo failed") }
            let end = nowNanoseconds()
            if window.counts(end) {
                count += 1
                samples.add(end - start)
            } else if end >= window.end {
                break
            }
        }
        close(client)
        if let echo { echo.join() } else { waitpid(child, nil, 0) }
        close(listener)
        return .object(
            [
                ("scenario", .string("rtt")),
                (
                    "operation",
                    .string(
                        "one round trip of a \(size)-byte message over "
                            + (tcp ? "TCP loopback (TCP_NODELAY)" : "a Unix stream socket")
                            + (inProcess ? " to an echo thread " : " to an echo process ")
                            + (pollWindow > 0
                                ? "(both sides poll for \(pollWindow / 1000) µs before a blocking read)"
                                : "(blocking sockets)"))
                ),
                ("ops_per_sec", .number(Double(count) / window.seconds)),
            ] + samples.summary() + [
                ("ops", .int(count)),
                ("clients", .int(1)),
                ("in_flight", .int(1)),
                ("message_bytes", .int(size)),
                ("transport", .string(tcp ? "tcp loopback" : "unix")),
                ("busy_poll_us", .int(Int(pollWindow / 1000))),
                ("echo", .string(inProcess ? "thread of this process" : "child process")),
                ("duration_s", .number2(duration)),
                ("warmup_s", .number2(warmup)),
                ("client_cpus", .string(allowedCPUs())),
                ("server_cpus", .string(echoCPUs)),
                ("load_average", .string(loadAverage())),
            ])
    }
}

/// The echo thread: accepts one connection, echoes `size`-byte messages until the client closes.
final class EchoServer {
    let listener: Int32
    let size: Int
    let cpu: Int?
    let pollWindow: UInt64
    var thread = pthread_t()
    /// The echo thread's CPUs, written by it before `running` is set.
    var cpus = ""
    var running = false
    var mutex = pthread_mutex_t()
    var condition = pthread_cond_t()

    init(listener: Int32, size: Int, cpu: Int?, pollWindow: UInt64) {
        self.pollWindow = pollWindow
        self.listener = listener
        self.size = size
        self.cpu = cpu
        pthread_mutex_init(&mutex, nil)
        pthread_cond_init(&condition, nil)
    }

    func start() {
        let context = Unmanaged.passRetained(self).toOpaque()
        let result = pthread_create(
            &thread, nil,
            { context in
                let server = Unmanaged<EchoServer>.fromOpaque(context!).takeRetainedValue()
                server.serve()
                return nil
            }, context)
        guard result == 0 else { fail("cannot start the echo thread") }
    }

    func serve() {
        if let cpu { pinCurrentThread(to: cpu) }
        pthread_mutex_lock(&mutex)
        cpus = allowedCPUs()
        running = true
        pthread_cond_signal(&condition)
        pthread_mutex_unlock(&mutex)
        let connection = accept(listener, nil, nil)
        guard connection >= 0 else { fail("accept failed") }
        setNoDelay(connection)
        echo(connection, size: size, pollWindow: pollWindow)
    }

    /// Waits until the echo thread runs (pinned) and returns its CPUs.
    func waitUntilRunning() -> String {
        pthread_mutex_lock(&mutex)
        while !running { pthread_cond_wait(&condition, &mutex) }
        let cpus = self.cpus
        pthread_mutex_unlock(&mutex)
        return cpus
    }

    func join() {
        pthread_join(thread, nil)
    }
}

/// `dlmbench echo`: the echo server of `rtt --echo process`, on the listening socket it inherits.
enum EchoProcess {
    static let optionNames = ["listener", "size", "echo-cpu", "busy-poll"]

    static func run(_ options: Options) {
        let listener = Int32(options.int("listener", 0, minimum: 0))
        let size = options.int("size", 64)
        if options.values["echo-cpu"] != nil { pinCurrentThread(to: options.int("echo-cpu", 0, minimum: 0)) }
        let connection = accept(listener, nil, nil)
        guard connection >= 0 else { fail("accept failed") }
        setNoDelay(connection)
        var buffer = [UInt8](repeating: 0, count: size)
        let cpus = Array(allowedCPUs().utf8.prefix(size - 1))
        buffer.replaceSubrange(0..<cpus.count, with: cpus)
        guard writeAll(connection, &buffer) else { fail("the client went away") }
        echo(connection, size: size, pollWindow: UInt64(options.int("busy-poll", 0, minimum: 0)) * 1000)
    }
}

/// Echoes `size`-byte messages on `connection` until the client closes it.
func echo(_ connection: Int32, size: Int, pollWindow: UInt64) {
    var buffer = [UInt8](repeating: 0, count: size)
    var poller = ReadPoller(window: pollWindow)
    while true {
        poller.awaitReadable(connection)
        guard readAll(connection, &buffer), writeAll(connection, &buffer) else { break }
    }
    close(connection)
}

/// Polls a socket before a blocking read, as `BusyPoll` keeps an event loop polling: `ppoll` with a 1 µs
/// timeout until the socket is readable or `window` nanoseconds have passed since the last message.
struct ReadPoller {
    /// glibc's `ppoll` (`_GNU_SOURCE`, so not in the Glibc module).
    typealias PPoll =
        @convention(c) (
            UnsafeMutablePointer<pollfd>, nfds_t, UnsafePointer<timespec>, UnsafeRawPointer?
        ) -> Int32
    static let ppoll: PPoll = {
        guard let symbol = dlsym(UnsafeMutableRawPointer(bitPattern: 0), "ppoll") else { fail("no ppoll in libc") }
        return unsafeBitCast(symbol, to: PPoll.self)
    }()

    /// glibc's `prctl`, called with its five integer arguments.
    typealias Prctl = @convention(c) (Int32, UInt, UInt, UInt, UInt) -> Int32
    static let prctl: Prctl = {
        guard let symbol = dlsym(UnsafeMutableRawPointer(bitPattern: 0), "prctl") else { fail("no prctl in libc") }
        return unsafeBitCast(symbol, to: Prctl.self)
    }()

    let window: UInt64
    var lastMessage: UInt64 = 0
    var slackSet = false

    mutating func awaitReadable(_ fd: Int32) {
        guard window > 0 else { return }
        if !slackSet {
            // A sleep's default timer slack is 50 µs; NIO's timers (timerfd) have none.
            _ = ReadPoller.prctl(29, 1, 0, 0, 0)  // PR_SET_TIMERSLACK, 1 ns
            slackSet = true
        }
        var entry = pollfd(fd: fd, events: Int16(POLLIN), revents: 0)
        var step = timespec(tv_sec: 0, tv_nsec: 1000)
        while nowNanoseconds() - lastMessage < window {
            if ReadPoller.ppoll(&entry, 1, &step, nil) != 0 { break }
        }
        lastMessage = nowNanoseconds()
    }
}

/// Starts this executable with `arguments` (the first is its name); the child inherits open descriptors.
func spawnSelf(_ arguments: [String]) -> pid_t {
    var pid: pid_t = 0
    let path = executablePath()
    var argv: [UnsafeMutablePointer<CChar>?] = arguments.map { strdup($0) } + [nil]
    defer { for pointer in argv { free(pointer) } }
    guard posix_spawn(&pid, path, nil, nil, &argv, environ) == 0 else { fail("cannot start \(path)") }
    return pid
}

/// A TCP socket listening on 127.0.0.1 at a port the kernel chose, and that port.
func tcpListener() -> (Int32, UInt16) {
    let fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
    guard fd >= 0 else { fail("cannot create a TCP socket") }
    var address = sockaddr_in()
    address.sin_family = sa_family_t(AF_INET)
    address.sin_addr.s_addr = inet_addr("127.0.0.1")
    var length = socklen_t(MemoryLayout<sockaddr_in>.size)
    let bound = withUnsafeMutablePointer(to: &address) {
        $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { pointer in
            bind(fd, pointer, length) == 0 && listen(fd, 1) == 0 && getsockname(fd, pointer, &length) == 0
        }
    }
    guard bound else { fail("cannot listen on 127.0.0.1") }
    return (fd, UInt16(bigEndian: address.sin_port))
}

/// A TCP connection to 127.0.0.1:`port`, with TCP_NODELAY.
func tcpConnect(port: UInt16) -> Int32 {
    let fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
    guard fd >= 0 else { fail("cannot create a TCP socket") }
    var address = sockaddr_in()
    address.sin_family = sa_family_t(AF_INET)
    address.sin_addr.s_addr = inet_addr("127.0.0.1")
    address.sin_port = port.bigEndian
    let connected = withUnsafePointer(to: &address) {
        $0.withMemoryRebound(to: sockaddr.self, capacity: 1) {
            connect(fd, $0, socklen_t(MemoryLayout<sockaddr_in>.size)) == 0
        }
    }
    guard connected else { fail("cannot connect to 127.0.0.1:\(port)") }
    setNoDelay(fd)
    return fd
}

/// TCP_NODELAY on a TCP socket; nothing on a Unix one.
func setNoDelay(_ fd: Int32) {
    var one: Int32 = 1
    _ = setsockopt(fd, Int32(IPPROTO_TCP), TCP_NODELAY, &one, socklen_t(MemoryLayout<Int32>.size))
}

func unixSocket() -> Int32 {
    let fd = socket(AF_UNIX, Int32(SOCK_STREAM.rawValue), 0)
    guard fd >= 0 else { fail("cannot create a Unix socket") }
    return fd
}

func withUnixAddress<T>(_ path: String, _ body: (UnsafePointer<sockaddr>, socklen_t) -> T) -> T {
    var address = sockaddr_un()
    address.sun_family = sa_family_t(AF_UNIX)
    let bytes = Array(path.utf8)
    guard bytes.count < MemoryLayout.size(ofValue: address.sun_path) else { fail("socket path too long: \(path)") }
    withUnsafeMutableBytes(of: &address.sun_path) { raw in
        raw.copyBytes(from: bytes)
        raw[bytes.count] = 0
    }
    return withUnsafePointer(to: &address) {
        $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { body($0, socklen_t(MemoryLayout<sockaddr_un>.size)) }
    }
}

func bindUnix(_ fd: Int32, _ path: String) -> Bool {
    withUnixAddress(path) { bind(fd, $0, $1) == 0 }
}

func connectUnix(_ fd: Int32, _ path: String) -> Bool {
    withUnixAddress(path) { connect(fd, $0, $1) == 0 }
}

/// Reads exactly `buffer.count` bytes; false at the end of the stream or on an error.
func readAll(_ fd: Int32, _ buffer: inout [UInt8]) -> Bool {
    var done = 0
    let count = buffer.count
    while done < count {
        let n = buffer.withUnsafeMutableBytes { read(fd, $0.baseAddress! + done, count - done) }
        if n > 0 {
            done += n
        } else if n < 0 && errno == EINTR {
            continue
        } else {
            return false
        }
    }
    return true
}

/// Writes all of `buffer`; false on an error.
func writeAll(_ fd: Int32, _ buffer: inout [UInt8]) -> Bool {
    var done = 0
    let count = buffer.count
    while done < count {
        let n = buffer.withUnsafeBytes { write(fd, $0.baseAddress! + done, count - done) }
        if n > 0 {
            done += n
        } else if n < 0 && errno == EINTR {
            continue
        } else {
            return false
        }
    }
    return true
}
