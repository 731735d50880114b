import CDLMSystem
import DLMTLS
import DLMWire
import Foundation
import Logging
import NIOCore
import NIOHTTP1
import NIOPosix
import ServiceLifecycle

/// Runs a node: one event loop for the engine and every client connection, the listening sockets, and a
/// clean shutdown on SIGTERM / SIGINT that tells clients, orphans persistent locks and saves them.
public final class NodeServer: Service, @unchecked Sendable {
    public let configuration: NodeConfiguration
    let logger: Logger
    /// Called with the lines dlmd prints: where it listens, once the sockets listen, and a cluster member's view
    /// changes and fences.
    let onListening: @Sendable (String) -> Void
    /// The service manager to tell when the node is ready and when it begins to stop (`$NOTIFY_SOCKET`, for a
    /// systemd unit of `Type=notify`); nil: nobody is told.
    let notifier: SystemdNotifier?

    public init(
        configuration: NodeConfiguration, logger: Logger, notifier: SystemdNotifier? = nil,
        onListening: @escaping @Sendable (String) -> Void = { _ in }
    ) {
        self.configuration = configuration
        self.logger = logger
        self.notifier = notifier
        self.onListening = onListening
    }

    /// Tells the service manager, if any; a failure is logged (the node serves on whether or not it was heard).
    func notify(_ fields: [String]) {
        guard let notifier else { return }
        do {
            try notifier.notify(fields)
        } catch {
            logger.warning("cannot notify the service manager", metadata: ["error": "\(error)"])
        }
    }

    public func run() async throws {
        // glibc's fastbins: after a large exit or purge frees a million small blocks, the next larger allocation
        // consolidates them, stalling the loop for tens of milliseconds (bench/RESULTS.md). Off, as some
        // allocators are by default.
        _ = dlm_disable_malloc_fastbins()
        // Half the suspect timeout, as the group node's warning of a late tick (500 ms for a node alone).
        let suspectTimeout = configuration.cluster?.settings.suspectTimeout ?? 1_000_000_000
        let turns = LoopTurns(warnAfter: .nanoseconds(Int64(suspectTimeout / 2)), logger: logger)
        let group = MultiThreadedEventLoopGroup(numberOfThreads: 1, metricsDelegate: turns)
        let loop = group.next()
        let node = LockNode(configuration: configuration, eventLoop: loop, logger: logger)
        node.loopTurns = turns
        let metrics = configuration.metricsAddress.map { _ in NodeMetrics() }
        node.metrics = metrics
        do {
            try FileManager.default.createDirectory(
                atPath: configuration.dataDirectory, withIntermediateDirectories: true)
            try await loop.submit {
                try node.openStore()
                node.start()
            }.get()
            do {
                let wake = try await SliceWake.make(on: loop) { node.runBulkSlice(after: nil) }.get()
                try await loop.submit { node.sliceWake = wake }.get()
            } catch {
                // (Work in slices then waits a scheduled task between two slices, as it did before the pipe.)
                logger.warning("no pipe for waking the loop between slices", metadata: ["error": "\(error)"])
            }
            if let cluster = configuration.cluster {
                let announce = onListening
                try await loop.flatSubmit {
                    do {
                        return try node.joinCluster(cluster, announce: announce)
                    } catch {
                        return loop.makeFailedFuture(error)
                    }
                }.get()
            }
            var bound = try await bind(node: node, group: group)
            if let address = configuration.metricsAddress, let metrics {
                bound.append(try await bindMetrics(address, node: node, metrics: metrics, group: group))
            }
            let channels = bound
            var places: [String] = []
            if let path = configuration.socketPath { places.append("unix:\(path)") }
            if let listen = configuration.listenAddress { places.append("tcp:\(listen)") }
            if let address = configuration.metricsAddress { places.append("metrics:http://\(address)/metrics") }
            logger.info("listening", metadata: ["on": "\(places.joined(separator: " "))"])
            onListening("dlmd: node \(configuration.nodeID) listening on \(places.joined(separator: " "))")
            // The store is open and the sockets accept connections: a client that connects now is served.
            notify(["READY=1", "STATUS=node \(configuration.nodeID) serving on \(places.joined(separator: " "))"])
            try await withGracefulShutdownHandler {
                for channel in channels { try await channel.closeFuture.get() }
            } onGracefulShutdown: { [self] in
                notify(["STOPPING=1", "STATUS=stopping: telling clients, keeping persistent locks as orphans"])
                for channel in channels { channel.close(promise: nil) }
            }
            try await loop.flatSubmit { node.cluster?.group.stop() ?? loop.makeSucceededVoidFuture() }.get()
            try await loop.submit { try node.shutdown() }.get()
            if let path = configuration.socketPath { unlink(path) }
        } catch {
            try? await group.shutdownGracefully()
            throw error
        }
        try await group.shutdownGracefully()
    }

    func bind(node: LockNode, group: EventLoopGroup) async throws -> [Channel] {
        func bootstrap(tcp: Bool) -> ServerBootstrap {
            var bootstrap = ServerBootstrap(group: group)
                .serverChannelOption(.backlog, value: 256)
                .childChannelOption(.maxMessagesPerRead, value: 16)
                .childChannelOption(.allowRemoteHalfClosure, value: true)
                .childChannelOption(
                    .writeBufferWaterMark,
                    value: .init(
                        low: configuration.outputPauseBytes / 2, high: configuration.outputPauseBytes)
                )
                .childChannelInitializer { [tls = tcp ? configuration.clientTLS : nil] channel in
                    channel.eventLoop.makeCompletedFuture {
                        if let tls { try channel.pipeline.syncOperations.addHandler(TLSHandler(context: tls)) }
                        try channel.pipeline.syncOperations.addHandler(ClientChannelHandler(node: node))
                    }
                }
            if tcp {
                // Keepalive probes after 30 s of silence, every 10 s, 3 times: a client host that vanished (power
                // loss, a cut network) is noticed within about a minute, and its locks go as a closed client's do.
                bootstrap = bootstrap.serverChannelOption(.socketOption(.so_reuseaddr), value: 1)
                    .childChannelOption(.socketOption(.tcp_nodelay), value: 1)
                    .childChannelOption(.socketOption(.so_keepalive), value: 1)
                    .childChannelOption(
                        ChannelOptions.Types.SocketOption(level: IPPROTO_TCP, name: TCP_KEEPIDLE), value: 30
                    )
                    .childChannelOption(
                        ChannelOptions.Types.SocketOption(level: IPPROTO_TCP, name: TCP_KEEPINTVL), value: 10
                    )
                    .childChannelOption(
                        ChannelOptions.Types.SocketOption(level: IPPROTO_TCP, name: TCP_KEEPCNT), value: 3)
            }
            return bootstrap
        }
        var channels: [Channel] = []
        if let path = configuration.socketPath {
            let group = try configuration.socketGroup.map(SocketPermissions.groupID)
            var directory = (path as NSString).deletingLastPathComponent
            if directory.isEmpty { directory = "." }
            try FileManager.default.createDirectory(
                atPath: directory, withIntermediateDirectories: true, attributes: [.posixPermissions: 0o755])
            try SocketPermissions.checkDirectory(directory)
            if isListening(unixSocket: path) {
                throw NodeError("another dlmd already listens on \(path)")
            }
            let channel = try await SocketPermissions.bind(path, mode: configuration.socketMode, group: group) {
                try await bootstrap(tcp: false).bind(unixDomainSocketPath: path, cleanupExistingSocketFile: true).get()
            }
            channels.append(channel)
        }
        if let listen = configuration.listenAddress {
            let (host, port) = try Self.checkListenAddress(listen, tls: configuration.clientTLS != nil)
            channels.append(try await bootstrap(tcp: true).bind(host: host, port: port).get())
        }
        guard !channels.isEmpty else { throw NodeError("nothing to listen on: give --socket or --listen") }
        return channels
    }
}

extension NodeServer {
    /// "HOST:PORT" (an IPv6 host in brackets) taken apart.
    /// `--listen HOST:PORT`, checked: without TLS (`tls` false), TCP clients on a loopback address only, since
    /// anyone who reached the port could take, release or purge any lock. With TLS every client shows a
    /// certificate of the client authorities, and any address will do.
    public static func checkListenAddress(_ listen: String, tls: Bool) throws -> (host: String, port: Int) {
        let (host, port) = try hostAndPort(listen, option: "--listen")
        guard tls || isLoopback(host) else {
            throw NodeError(
                "--listen \(listen): without TLS dlmd takes TCP clients on a loopback address only (127.0.0.1, "
                    + "::1, localhost), since anyone who reached the port could take, release or purge any lock; "
                    + "give --tls-cert, --tls-key and --tls-client-ca to take clients from the network")
        }
        return (host, port)
    }

    /// Whether `host` names this machine only: 127.0.0.0/8, ::1 or localhost.
    static func isLoopback(_ host: String) -> Bool {
        if host == "localhost" || host == "::1" { return true }
        let parts = host.split(separator: ".", omittingEmptySubsequences: false)
        return parts.count == 4 && parts[0] == "127" && parts.allSatisfy { UInt8($0) != nil }
    }

    static func hostAndPort(_ address: String, option: String) throws -> (String, Int) {
        guard let colon = address.lastIndex(of: ":"), let port = Int(address[address.index(after: colon)...]) else {
            throw NodeError("\(option) takes HOST:PORT, not \(address)")
        }
        var host = String(address[..<colon])
        if host.hasPrefix("[") && host.hasSuffix("]") { host = String(host.dropFirst().dropLast()) }
        return (host, port)
    }

    /// The HTTP listener of `--metrics` (`GET /metrics`, NodeMetrics.swift).
    func bindMetrics(_ address: String, node: LockNode, metrics: NodeMetrics, group: EventLoopGroup) async throws
        -> Channel
    {
        let (host, port) = try Self.hostAndPort(address, option: "--metrics")
        return try await ServerBootstrap(group: group)
            .serverChannelOption(.backlog, value: 16)
            .serverChannelOption(.socketOption(.so_reuseaddr), value: 1)
            .childChannelInitializer { channel in
                channel.pipeline.configureHTTPServerPipeline(withErrorHandling: true).flatMap {
                    channel.pipeline.addHandler(MetricsHTTPHandler(node: node, metrics: metrics))
                }
            }
            .bind(host: host, port: port).get()
    }
}

/// Whether a process accepts connections on the Unix socket at `path`.
func isListening(unixSocket path: String) -> Bool {
    let fd = socket(AF_UNIX, Int32(SOCK_STREAM.rawValue), 0)
    guard fd >= 0 else { return false }
    defer { close(fd) }
    var address = sockaddr_un()
    address.sun_family = sa_family_t(AF_UNIX)
    let bytes = Array(path.utf8)
    guard bytes.count < MemoryLayout.size(ofValue: address.sun_path) else { return false }
    withUnsafeMutableBytes(of: &address.sun_path) { raw in
        raw.copyBytes(from: bytes)
        raw[bytes.count] = 0
    }
    let result = withUnsafePointer(to: &address) {
        $0.withMemoryRebound(to: sockaddr.self, capacity: 1) {
            connect(fd, $0, socklen_t(MemoryLayout<sockaddr_un>.size))
        }
    }
    return result == 0
}

extension LockNode {
    /// A clean shutdown: every client is told and closed, its persistent locks become orphans, and the state is
    /// saved so that the next start gives them back.
    func shutdown() throws {
        ticker?.cancel()
        busyPoll?.stop()
        sliceWake?.close()
        sliceWake = nil
        handle(.shutdown)
        try closeStore()
        logger.info("store closed; shut down", metadata: ["orphans": "\(service.engine.lockCount)"])
    }
}
