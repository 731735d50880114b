import DLMClient
import DLMTestSupport
import Foundation
import NIOPosix

/// `dlmbench tls --dlmd PATH`: what TLS costs a TCP client. One client's lock+unlock pairs, one at a time, against a
/// dlmd over its Unix socket and over plain TCP (loopback), and against a second dlmd over TLS with a client
/// certificate (ECDSA P-256, made with the `openssl` command), in that order and then once more, in one run.
enum TLSScenario {
    static let optionNames = ["dlmd", "duration", "warmup", "working-set", "rounds"]

    static func run(_ options: Options) {
        let dlmd = options.string("dlmd", Daemon.executable)
        let duration = options.seconds("duration", 3)
        let warmup = options.seconds("warmup", 0.5)
        let names = (0..<options.int("working-set", 1000)).map { resourceName($0, length: 24) }
        let directory = Daemon.temporaryDirectory("dlmbench-tls")
        defer { try? FileManager.default.removeItem(atPath: directory) }
        do {
            try FileManager.default.createDirectory(atPath: directory, withIntermediateDirectories: true)
            let path = { (name: String) in directory + "/" + name }
            let key = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes", "-days", "2"]
            try openssl(
                ["req", "-x509"] + key + ["-subj", "/CN=ca", "-keyout", path("ca.key"), "-out", path("ca.crt")])
            for (name, extra) in [("server", ["-addext", "subjectAltName=IP:127.0.0.1"]), ("client", [])] {
                try openssl(
                    ["req", "-x509"] + key + ["-subj", "/CN=\(name)", "-keyout", path("\(name).key")]
                        + ["-out", path("\(name).crt"), "-CA", path("ca.crt"), "-CAkey", path("ca.key")] + extra)
                chmod(path("\(name).key"), 0o600)
            }
            let (plainPort, tlsPort) = (try freePort(), try freePort())
            let plain = try Daemon(
                executable: dlmd, directory: path("plain"), arguments: ["--listen", "127.0.0.1:\(plainPort)"],
                logLevel: "error")
            let secure = try Daemon(
                executable: dlmd, directory: path("tls"),
                arguments: [
                    "--listen", "127.0.0.1:\(tlsPort)", "--tls-cert", path("server.crt"), "--tls-key",
                    path("server.key"), "--tls-client-ca", path("ca.crt"),
                ], logLevel: "error")
            defer {
                plain.stop()
                secure.stop()
            }
            let tls = try DLMConnection.TLS(
                caFile: path("ca.crt"), certificateFile: path("client.crt"), keyFile: path("client.key"))
            let group = MultiThreadedEventLoopGroup(numberOfThreads: 1)
            let socket = plain.socketPath
            let transports: [(String, @Sendable () async throws -> DLMConnection)] = [
                ("unix socket", { try await DLMConnection.connect(socketPath: socket, eventLoopGroup: group) }),
                ("tcp", { try await DLMConnection.connect(host: "127.0.0.1", port: plainPort, eventLoopGroup: group) }),
                (
                    "tls",
                    {
                        try await DLMConnection.connect(
                            host: "127.0.0.1", port: tlsPort, tls: tls, eventLoopGroup: group)
                    }
                ),
            ]
            var medians: [String: [Double]] = [:]
            for round in 1...options.int("rounds", 2) {
                for (transport, connect) in transports {
                    let result = runBlocking {
                        let connection = try await connect()
                        let lockspace = try await connection.openLockspace("bench-tls", mode: 0o666)
                        let window = Window(warmup: warmup, duration: duration)
                        let result = try await DaemonScenarios.asyncPairs(lockspace, names: names, window: window)
                        await connection.close()
                        return result
                    }
                    let summary = result.samples.summary()
                    if case .double(let p50)? = summary.first(where: { $0.0 == "p50_us" })?.1 {
                        medians[transport, default: []].append(p50)
                    }
                    print(
                        JSON.object(
                            [
                                ("scenario", .string("tls")), ("transport", .string(transport)), ("round", .int(round)),
                                (
                                    "operation",
                                    .string("one lock+unlock pair (EX, granted at once) of one client, one at a time")
                                ),
                                ("ops_per_sec", .number(Double(result.ops) / duration)),
                            ] + summary + [("load_average", .string(loadAverage()))]
                        ).text)
                }
            }
            let median = { (transport: String) in medians[transport, default: []].sorted().first ?? .nan }
            print(
                JSON.object([
                    ("scenario", .string("tls-cost")),
                    ("tls_over_tcp_p50", .number2(median("tls") / median("tcp"))),
                    ("tcp_over_unix_p50", .number2(median("tcp") / median("unix socket"))),
                    ("note", .string("the best p50 of the rounds of each transport")),
                ]
                ).text)
            try? group.syncShutdownGracefully()
        } catch {
            fail("tls: \(error)")
        }
    }

    static func openssl(_ arguments: [String]) throws {
        let process = Process()
        process.executableURL = URL(fileURLWithPath: "/usr/bin/openssl")
        process.arguments = arguments
        process.standardOutput = FileHandle.nullDevice
        process.standardError = FileHandle.nullDevice
        try process.run()
        process.waitUntilExit()
        guard process.terminationStatus == 0 else { throw SupportError("openssl \(arguments.first ?? "") failed") }
    }
}
