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
        var certificates: TestCertificates?
        defer { certificates.map { try? FileManager.default.removeItem(atPath: $0.directory) } }
        do {
            let made = try TestCertificates()
            certificates = made
            try made.authority("ca")
            try made.leaf("server", signedBy: "ca", names: "IP:127.0.0.1")
            try made.leaf("client", signedBy: "ca")
            let path = made.path
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
                    // (Not runBlocking: an error must reach the catch below, after the defers stop both dlmd.)
                    let result = try waitFor {
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
}
