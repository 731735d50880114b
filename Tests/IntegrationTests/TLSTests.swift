import DLMClient
import DLMCore
import DLMTLS
import DLMTestSupport
import DLMWire
import Foundation
import NIOCore
import NIOPosix
import Testing

/// TCP clients in TLS (`--tls-cert`, `--tls-key`, `--tls-client-ca`), against a real dlmd with certificates made
/// by the `openssl` command: only a client whose certificate one of dlmd's client authorities signed is served, a
/// client checks dlmd's certificate and name, and a refused or plain-TCP client harms no one else.
@Suite struct TLSTests {
    static func make() throws -> TestCertificates {
        let certificates = try TestCertificates()
        try certificates.authority("ca")
        try certificates.authority("rogue")
        try certificates.leaf("server", signedBy: "ca", names: "IP:127.0.0.1,DNS:localhost")
        try certificates.leaf("alice", signedBy: "ca")
        try certificates.leaf("bob", signedBy: "ca")
        try certificates.leaf("mallory", signedBy: "rogue")
        try certificates.leaf("impostor", signedBy: "rogue", names: "IP:127.0.0.1,DNS:localhost")
        return certificates
    }

    /// Certificates, and a dlmd that takes TLS clients on loopback with them (and `arguments`), and its port.
    static func served(_ arguments: [String] = []) throws -> (TestCertificates, Daemon, Int) {
        let certificates = try make()
        let port = try freePort()
        let daemon = try Daemon(arguments: certificates.daemonArguments(listen: "127.0.0.1:\(port)") + arguments)
        return (certificates, daemon, port)
    }

    @Test func clientsWithACertificateOfTheAuthoritiesAreServed() async throws {
        let (certificates, daemon, port) = try Self.served()
        defer { daemon.stop() }
        let alice = try await certificates.connect("alice", port: port)
        let bob = try await certificates.connect("bob", port: port, host: "localhost")
        // Locks, refusals and value blocks work as over any connection.
        let aliceSpace = try await alice.openLockspace("tls", valueBlockLength: 32)
        let bobSpace = try await bob.openLockspace("tls")
        let held = try await aliceSpace.lock("r", mode: .ex, flags: .valueBlock)
        await expectStatus(.tryAgain) { _ = try await bobSpace.lock("r", mode: .pr, flags: .noQueue) }
        _ = try await held.convert(to: .nl, flags: .valueBlock, valueBlock: Array("over tls".utf8))
        let read = try await bobSpace.lock("r", mode: .pr, flags: .valueBlock)
        #expect(read.valueBlock == Array("over tls".utf8) + [UInt8](repeating: 0, count: 24))
        // A reply larger than one TLS record (16 KiB) arrives whole.
        for index in 0..<600 { _ = try await aliceSpace.lock("resource-\(index)", mode: .cr) }
        let report = try JSONDecoder().decode(
            LockDebugReport.self, from: Data(try await alice.query(.lockdebug, argument: Array("tls".utf8))))
        #expect(report.resources.count == 601)
        await alice.close()
        await bob.close()
    }

    @Test func aClientWithoutAnAcceptedCertificateIsRefused() async throws {
        let (certificates, daemon, port) = try Self.served()
        defer { daemon.stop() }
        let alice = try await certificates.connect("alice", port: port)
        let space = try await alice.openLockspace("tls")
        let held = try await space.lock("r", mode: .ex)

        // A certificate of another authority: EACCES, and dlmd's alert says why.
        await expectStatus(.permissionDenied) {
            _ = try await certificates.connect("mallory", port: port)
        }
        // dlmd's certificate is not of the authority the client trusts.
        await expectStatus(.permissionDenied) {
            _ = try await DLMConnection.connect(
                host: "127.0.0.1", port: port, tls: try certificates.client(trusting: "rogue", certificate: "alice"))
        }
        // dlmd's certificate does not carry the name the client asked for.
        await expectStatus(.permissionDenied) {
            _ = try await DLMConnection.connect(
                host: "127.0.0.1", port: port,
                tls: try certificates.client(certificate: "alice", serverName: "dlmd.example.org"))
        }
        // No certificate at all: dlmd answers nothing but an alert, and closes.
        let bare = try TLSContext(clientCAFile: certificates.path("ca.crt"), certificateFile: nil, privateKey: nil)
        let exchange = try await RawTLSClient.exchange(
            context: bare, serverName: "127.0.0.1", port: port,
            frames: [.hello(Hello(pid: 1, clientName: "bare"))])
        #expect(exchange.replies.isEmpty)
        #expect(
            exchange.error?.description.contains("certificate required") == true,
            "\(String(describing: exchange.error))")
        // Plain TCP to the TLS port: no HELLO_REPLY, the connection closes.
        do {
            let plain = try await DLMConnection.connect(host: "127.0.0.1", port: port)
            Issue.record("a plain TCP client was served: node \(plain.nodeID)")
        } catch let error as DLMError {
            #expect(error.status == .protocolError || error.status == .shuttingDown, "\(error)")
        }
        // An impostor dlmd with a certificate of another authority is refused by the client.
        let impostorPort = try freePort()
        let impostor = try Daemon(
            arguments: certificates.daemonArguments(listen: "127.0.0.1:\(impostorPort)", server: "impostor"))
        defer { impostor.stop() }
        do {
            _ = try await DLMConnection.connect(
                host: "127.0.0.1", port: impostorPort, tls: try certificates.client(certificate: "alice"))
            Issue.record("the client trusted a dlmd of another authority")
        } catch let error as DLMError {
            #expect(error.status == .permissionDenied)
            #expect(error.message.contains("certificate"), "\(error)")
        }
        // The served client kept its connection and its lock throughout, and dlmd counted the five refusals.
        try await alice.ping()
        let report = try JSONDecoder().decode(StatusReport.self, from: Data(try await alice.query(.status)))
        #expect(report.tls?.handshakesRefused == 5, "\(String(describing: report.tls))")
        #expect(report.tls?.lastRefusal?.contains("TLS") == true, "\(String(describing: report.tls))")
        // dlmtool status (over dlmd's Unix socket) shows them.
        let status = try await ToolRun.run(daemon, "status")
        #expect(status.stdout.contains("(TLS, client certificates)"), "\(status.stdout)")
        #expect(status.stdout.contains("5 handshakes refused, last: TLS"), "\(status.stdout)")
        let bob = try await certificates.connect("bob", port: port)
        await expectStatus(.tryAgain) { _ = try await bob.openLockspace("tls").lock("r", mode: .pr, flags: .noQueue) }
        try await held.unlock()
        await alice.close()
        await bob.close()
    }

    /// A refusal that dlmd sends before the handshake is done (too many connections: ERROR EAGAIN, then a close)
    /// still reaches the client, in TLS, as a status.
    @Test func aConnectionRefusedAtTheLimitIsToldWhy() async throws {
        let (certificates, daemon, port) = try Self.served(["--max-connections", "1"])
        defer { daemon.stop() }
        let alice = try await certificates.connect("alice", port: port)
        await expectStatus(.tryAgain) {
            _ = try await certificates.connect("bob", port: port)
        }
        try await alice.ping()
        await alice.close()
    }

    /// A connection that never completes a handshake (here: says nothing at all) is closed after 10 s, as one that
    /// never says HELLO is; it holds no connection slot after that.
    @Test func aSilentConnectionIsClosedAtTheHandshakeDeadline() async throws {
        let (certificates, daemon, port) = try Self.served()
        defer { daemon.stop() }
        let silent = try RawSocket(tcpPort: port)
        #expect(silent.readToEnd().isEmpty)
        let alice = try await certificates.connect("alice", port: port)
        let report = try JSONDecoder().decode(StatusReport.self, from: Data(try await alice.query(.status)))
        #expect(report.connections == 1)
        await alice.close()
    }

    /// The settings are checked before dlmd opens anything: all three files, a key no one else may read, a key
    /// that is the certificate's; with TLS any address may be listened on.
    @Test func tlsSettingsAreCheckedAtStart() async throws {
        let certificates = try Self.make()
        func refusal(_ arguments: [String]) throws -> String {
            let directory = Daemon.temporaryDirectory("dlmd-tls-refused")
            let ended = try Daemon.runToEnd(["--no-socket", "--data-dir", directory] + arguments)
            #expect(ended.status != 0)
            #expect(!FileManager.default.fileExists(atPath: directory))
            return ended.error
        }
        let listen = "127.0.0.1:\(try freePort())"
        #expect(try refusal(["--listen", listen, "--tls-cert", certificates.path("server.crt")]).contains("all three"))
        #expect(
            try refusal(Array(certificates.daemonArguments(listen: listen).dropFirst(2))).contains("--listen"))
        chmod(certificates.path("bob.key"), 0o644)
        let open = try refusal([
            "--listen", listen, "--tls-cert", certificates.path("bob.crt"), "--tls-key", certificates.path("bob.key"),
            "--tls-client-ca", certificates.path("ca.crt"),
        ])
        #expect(open.contains("chmod"), "\(open)")
        let mismatched = try refusal([
            "--listen", listen, "--tls-cert", certificates.path("server.crt"), "--tls-key",
            certificates.path("alice.key"), "--tls-client-ca", certificates.path("ca.crt"),
        ])
        #expect(mismatched.contains("not the certificate's"), "\(mismatched)")
        let missing = try refusal([
            "--listen", listen, "--tls-cert", certificates.path("server.crt"), "--tls-key",
            certificates.path("server.key"), "--tls-client-ca", certificates.path("none.crt"),
        ])
        #expect(missing.contains("client certificate authorities"), "\(missing)")
        // Without TLS, a non-loopback address is refused; with it, dlmd listens there.
        #expect(try refusal(["--listen", "0.0.0.0:\(try freePort())"]).contains("loopback address only"))
        let port = try freePort()
        let daemon = try Daemon(arguments: certificates.daemonArguments(listen: "0.0.0.0:\(port)"))
        defer { daemon.stop() }
        let client = try await certificates.connect("alice", port: port)
        try await client.ping()
        await client.close()
    }
}

/// A client of raw frames over TLS (a session the Swift client would not make: without a certificate): it sends
/// `frames`, and collects replies until dlmd closes the connection, and the error the session ended with.
enum RawTLSClient {
    final class Collector: ChannelInboundHandler, @unchecked Sendable {
        typealias InboundIn = ByteBuffer
        var received = ByteBuffer()
        var error: TLSError?

        func channelRead(context: ChannelHandlerContext, data: NIOAny) {
            var bytes = unwrapInboundIn(data)
            received.writeBuffer(&bytes)
        }

        func errorCaught(context: ChannelHandlerContext, error: Error) {
            if self.error == nil { self.error = error as? TLSError }
        }
    }

    static func exchange(context: TLSContext, serverName: String, port: Int, frames: [ClientMessage]) async throws
        -> (replies: [ServerMessage], error: TLSError?)
    {
        let collector = Collector()
        let channel = try await ClientBootstrap(group: MultiThreadedEventLoopGroup.singleton)
            .channelInitializer { channel in
                channel.eventLoop.makeCompletedFuture {
                    try channel.pipeline.syncOperations.addHandler(TLSHandler(context: context, serverName: serverName))
                    try channel.pipeline.syncOperations.addHandler(collector)
                }
            }
            .connect(host: "127.0.0.1", port: port).get()
        var request = ByteBuffer()
        for frame in frames { frame.encode(into: &request) }
        try await channel.writeAndFlush(request)
        // dlmd closes the connection (a hang detector is the suite's; this waits on the event).
        try await channel.closeFuture.get()
        return try await channel.eventLoop.submit {
            var buffer = collector.received
            var replies: [ServerMessage] = []
            while let (type, body) = try nextFrame(from: &buffer, maxLength: WireLimits.maxServerFrame) {
                var body = body
                replies.append(try ServerMessage.decode(type: type, body: &body))
            }
            return (replies, collector.error)
        }.get()
    }
}

extension TestCertificates {
    /// A client's TLS: trusts `trusting`, shows `certificate`.
    func client(trusting: String = "ca", certificate: String, serverName: String? = nil) throws
        -> DLMConnection.TLS
    {
        try DLMConnection.TLS(
            caFile: path("\(trusting).crt"), certificateFile: path("\(certificate).crt"),
            keyFile: path("\(certificate).key"), serverName: serverName)
    }

    /// A TLS connection to dlmd on `port` that shows certificate `name`.
    func connect(_ name: String, port: Int, host: String = "127.0.0.1") async throws -> DLMConnection {
        try await DLMConnection.connect(host: host, port: port, tls: try client(certificate: name))
    }

    /// dlmd's arguments for TLS on `listen`, with certificate `server`.
    func daemonArguments(listen: String, server: String = "server") -> [String] {
        [
            "--listen", listen, "--tls-cert", path("\(server).crt"), "--tls-key", path("\(server).key"),
            "--tls-client-ca", path("ca.crt"),
        ]
    }
}
