import ArgumentParser
import DLMCore
import DLMNode
import DLMStore
import DLMTLS
import Foundation
import GroupNode
import Logging
import ServiceLifecycle

@main
struct DLMD: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "dlmd",
        abstract: "The swift-dlm lock manager daemon.",
        discussion: """
            Serves the lock manager to clients over a Unix socket (and optionally TCP), as described in \
            Protocol/CLIENT.md. SIGTERM or SIGINT shut it down cleanly: clients are told, and persistent \
            locks are kept for the next start. Started by systemd (Type=notify, $NOTIFY_SOCKET set), it sends \
            READY=1 once its socket accepts clients and its store is open, and STOPPING=1 when a clean stop begins.

            Settings come from the command line, then the config file (--config), then the defaults. The \
            config file is TOML with a [dlmd] table holding the same names: socket, socket_mode ("0660"), \
            socket_group, listen, tls_cert, tls_key, tls_client_ca, data_dir, node_id, deadlock_wait, log_level, durability, map_size, busy_poll, \
            metrics.

            A config file with a [cluster] table makes this node a cluster member: it also holds the node list \
            ([[node]] id, address, votes), [quorum], [fencing] and the cluster key file (docs/GROUPS.md). Start \
            each member with `dlmd --config FILE --node-id N`. A member holds lock requests (grants nothing \
            new) while it is not in a primary view; `dlmtool status` says what it waits for.
            """,
        version: dlmVersion)

    @Option(name: .long, help: "The Unix socket clients connect to (default: $DLM_SOCKET or /run/dlm/dlmd.sock).")
    var socket: String?

    @Option(
        name: .long,
        help: "The Unix socket's permission bits, octal: who may connect (default: 0660, dlmd's user and group).")
    var socketMode: String?

    @Option(name: .long, help: "The Unix socket's group, a name or number (default: dlmd's group).")
    var socketGroup: String?

    @Flag(name: .long, help: "Do not listen on a Unix socket (use --listen).")
    var noSocket = false

    @Option(
        name: .long,
        help: """
            Also accept TCP clients on HOST:PORT, e.g. 127.0.0.1:7100. Without TLS (--tls-cert) only on a loopback \
            address.
            """)
    var listen: String?

    @Option(
        name: .long,
        help: """
            TLS for the TCP clients: dlmd's certificate chain (PEM). Needs --tls-key and --tls-client-ca; every \
            client must then show a certificate signed by one of those authorities.
            """)
    var tlsCert: String?

    @Option(
        name: .long,
        help: "The private key of --tls-cert (PEM, unencrypted; owned by root or dlmd's user, mode 0600 or 0400).")
    var tlsKey: String?

    @Option(name: .long, help: "The authorities whose client certificates dlmd accepts over TLS (PEM).")
    var tlsClientCa: String?

    @Option(name: .long, help: "Serve Prometheus metrics on HOST:PORT (GET /metrics), e.g. 127.0.0.1:9464.")
    var metrics: String?

    @Option(name: .long, help: "Where state that must survive a restart is kept (default: /var/lib/dlm).")
    var dataDir: String?

    @Option(
        name: .long,
        help: "A TOML file with a [dlmd] table of settings and, for a cluster member, the cluster's configuration.")
    var config: String?

    @Option(name: .long, help: "This node's id; a cluster member's id in the node list (default: 1).")
    var nodeID: UInt32?

    @Option(
        name: .long,
        help: "Seconds a request waits before a deadlock search starts for it; 0 turns the search off (default: 1).")
    var deadlockWait: Double?

    @Option(name: .long, help: "trace, debug, info, notice, warning, error or critical (default: info).")
    var logLevel: String?

    @Option(
        name: .long,
        help: """
            When acknowledgements of persistent locks and value blocks wait for the disk: sync (after fsync; \
            survives power loss), batch (after the group commit, fsync every second; survives kill -9), none \
            (at once; a kill may lose the last moments). Default: batch.
            """)
    var durability: String?

    @Option(
        name: .long,
        help: """
            The store's limit in MiB: at it, new persistent locks and lockspaces are refused with ENOSPC \
            (default: 1024).
            """)
    var mapSize: Int?

    @Option(
        name: .long,
        help: """
            Microseconds the event loop keeps polling its sockets after its last I/O before it sleeps: lower \
            latency where waking a sleeping CPU is slow (VMs), for up to that much CPU time after each burst. \
            Only where dlmd has a CPU to itself: polling on the CPU its clients run on slows both. 0 turns it \
            off (default: 0).
            """)
    var busyPoll: Int?

    @Option(name: .long, help: "The most client connections at once; one more is refused (default: 10000).")
    var maxConnections: Int?

    @Option(name: .long, help: "The most lockspaces; creating one more is refused with EAGAIN (default: 4096).")
    var maxLockspaces: Int?

    @Option(
        name: .long, help: "The most locks one connection holds; one more is refused with EAGAIN (default: 4194304).")
    var maxLocksPerConnection: Int?

    @Option(
        name: .long,
        help: """
            The most locks one user's connections hold together; one more is refused with EAGAIN (default: \
            16777216).
            """)
    var maxLocksPerUser: Int?

    @Option(
        name: .long,
        help: """
            The most requests of one connection that wait to run (behind a reply, or while the node is stopped) \
            before dlmd stops reading from it until half have run (default: 1024).
            """)
    var maxQueuedRequests: Int?

    @Option(
        name: .long,
        help: "KiB of output a client has not read past which dlmd stops reading its requests (default: 1024).")
    var outputPauseKib: Int?

    @Option(
        name: .long,
        help: "KiB of output a client has not read past which it is closed, its locks released (default: 65536).")
    var outputLimitKib: Int?

    @Flag(name: .long, help: "Check the data directory (every record decoded) and exit: 0 if sound, 1 if not.")
    var check = false

    /// The [dlmd] table of the config file (none without `--config`).
    func fileSettings() throws -> DaemonSettings {
        guard let config else { return DaemonSettings() }
        let text: String
        do {
            text = try String(contentsOfFile: config, encoding: .utf8)
        } catch {
            throw ValidationError("cannot read the config file \(config): \(error.localizedDescription)")
        }
        do throws(DaemonSettings.Invalid) {
            return try DaemonSettings.parse(text, file: config)
        } catch {
            throw ValidationError(error.description)
        }
    }

    /// Whether the config file describes a cluster (has a [cluster] table).
    /// The TLS of `--tls-cert`, `--tls-key` and `--tls-client-ca` (all three, and with `--listen`), set up now so
    /// that a bad file stops dlmd before it opens anything; nil when none is given. The key file is trusted as the
    /// cluster key is: owned by root or dlmd's user, and no one else may read or change it.
    static func clientTLS(certificate: String?, key: String?, clientCA: String?, listen: String?) throws -> TLSContext?
    {
        if certificate == nil && key == nil && clientCA == nil { return nil }
        guard let certificate, let key, let clientCA else {
            throw ValidationError("TLS needs all three of --tls-cert, --tls-key and --tls-client-ca")
        }
        guard listen != nil else { throw ValidationError("--tls-cert is for TCP clients: give --listen HOST:PORT") }
        do {
            let keyBytes = try TrustedFile.read(key, what: "the TLS key \(key)", secret: true, limit: 1 << 20)
            return try TLSContext(serverCertificateFile: certificate, privateKey: keyBytes, clientCAFile: clientCA)
        } catch let refusal as TrustedFile.Refusal {
            throw ValidationError("--tls-key \(key): \(refusal.message)")
        } catch {
            throw ValidationError("TLS (--tls-cert \(certificate), --tls-client-ca \(clientCA)): \(error)")
        }
    }

    func isClusterConfig(_ path: String) -> Bool {
        guard let text = try? String(contentsOfFile: path, encoding: .utf8), let table = try? ConfigText.parse(text)
        else { return false }
        return table["cluster"] != nil
    }

    func run() async throws {
        let file = try fileSettings()
        let level = logLevel ?? file.log_level ?? "info"
        guard let parsedLevel = Logger.Level(rawValue: level) else {
            throw ValidationError("unknown log level \(level)")
        }
        let wait = deadlockWait ?? file.deadlock_wait ?? 1
        guard wait >= 0, wait < 1e9 else { throw ValidationError("--deadlock-wait must be a number of seconds >= 0") }
        // What dlmd logs goes to standard error and into the ring that `dlmtool dump` reads.
        let recentLog = RecentLog()
        LoggingSystem.bootstrap { label in
            var handler = StreamLogHandler.standardError(label: label)
            handler.logLevel = parsedLevel
            return MultiplexLogHandler([handler, RecentLogHandler(label: label, log: recentLog, logLevel: parsedLevel)])
        }
        let durabilityName = durability ?? file.durability ?? "batch"
        guard let durabilityMode = Durability(rawValue: durabilityName) else {
            throw ValidationError("--durability is sync, batch or none, not \(durabilityName)")
        }
        let mapMiB = mapSize ?? file.map_size ?? NodeConfiguration.defaultMapSize >> 20
        guard mapMiB >= 1, mapMiB <= 1 << 24 else { throw ValidationError("--map-size is a number of MiB from 1") }
        let pollMicroseconds = busyPoll ?? file.busy_poll ?? 0
        guard pollMicroseconds >= 0, pollMicroseconds <= 1_000_000 else {
            throw ValidationError("--busy-poll is a number of microseconds from 0 to 1000000")
        }
        let dataDirectory = dataDir ?? file.data_dir ?? NodeConfiguration.defaultDataDirectory
        if check {
            do {
                let report = try NodeStore.check(directory: dataDirectory, mapSize: mapMiB << 20)
                print(
                    "\(dataDirectory): sound; schema \(report.schema), node \(report.nodeID), incarnation "
                        + "\(report.incarnation), \(report.lockspaces) lockspaces, \(report.resources) resources, "
                        + "\(report.persistentLocks) persistent locks, \(report.usedBytes) of \(report.mapSize) bytes used, "
                        + "\(report.logRecordsToReplay) write-ahead records to replay at the next start")
                return
            } catch {
                FileHandle.standardError.writeIgnoringErrors("dlmd: \(dataDirectory) is damaged or foreign: \(error)\n")
                throw ExitCode(1)
            }
        }
        var cluster: ClusterConfig?
        var corosyncNodeID: UInt32?
        if let config, isClusterConfig(config) {
            do {
                cluster = try ClusterConfig.load(path: config)
            } catch {
                throw ValidationError("\(error)")
            }
            if let loaded = cluster, case .corosync = loaded.provider {
                // The node list and this node's id come from corosync (cmap), as dlm_controld takes them.
                let nodelist: CorosyncNodelist
                do {
                    nodelist = try CorosyncNodelist.read()
                    cluster = try loaded.completed(with: nodelist, file: config)
                } catch let error as CorosyncError {
                    throw ValidationError("\(error) (is corosync running?)")
                } catch {
                    throw ValidationError("\(error)")
                }
                if let given = nodeID ?? file.node_id, given != nodelist.localNode.rawValue {
                    throw ValidationError(
                        "--node-id \(given) (or dlmd.node_id) is not corosync's id of this node, \(nodelist.localNode)")
                }
                corosyncNodeID = nodelist.localNode.rawValue
            } else if nodeID ?? file.node_id == nil {
                throw ValidationError("a cluster member needs --node-id N (or dlmd.node_id): which [[node]] it is")
            }
        }
        let environmentSocket = ProcessInfo.processInfo.environment["DLM_SOCKET"]
        let clientTLS = try Self.clientTLS(
            certificate: tlsCert ?? file.tls_cert, key: tlsKey ?? file.tls_key,
            clientCA: tlsClientCa ?? file.tls_client_ca, listen: listen ?? file.listen)
        if let listen = listen ?? file.listen {
            // Before anything is opened or created.
            do {
                _ = try NodeServer.checkListenAddress(listen, tls: clientTLS != nil)
            } catch {
                throw ValidationError("\(error)")
            }
        }
        let connectionLimit = maxConnections ?? file.max_connections ?? NodeConfiguration.defaultMaxConnections
        let lockspaceLimit = maxLockspaces ?? file.max_lockspaces ?? NodeConfiguration.defaultMaxLockspaces
        let pauseKiB = outputPauseKib ?? file.output_pause_kib ?? NodeConfiguration.defaultOutputPauseBytes >> 10
        let limitKiB = outputLimitKib ?? file.output_limit_kib ?? NodeConfiguration.defaultOutputLimitBytes >> 10
        let perConnection =
            maxLocksPerConnection ?? file.max_locks_per_connection ?? NodeConfiguration.defaultMaxLocksPerConnection
        let perUser = maxLocksPerUser ?? file.max_locks_per_user ?? NodeConfiguration.defaultMaxLocksPerUser
        let queued = maxQueuedRequests ?? file.max_queued_requests ?? NodeConfiguration.defaultMaxQueuedRequests
        guard connectionLimit >= 1, lockspaceLimit >= 1, perConnection >= 1, perUser >= 1, queued >= 1 else {
            throw ValidationError(
                "--max-connections, --max-lockspaces, --max-locks-per-connection, --max-locks-per-user and "
                    + "--max-queued-requests are numbers from 1")
        }
        guard pauseKiB >= 1, limitKiB >= pauseKiB, limitKiB <= 1 << 30 else {
            throw ValidationError("--output-pause-kib is from 1, and --output-limit-kib from it")
        }
        let socketPermissions: UInt16
        do {
            socketPermissions =
                try (socketMode ?? file.socket_mode).map(SocketPermissions.mode)
                ?? SocketPermissions.defaultMode
            if let group = socketGroup ?? file.socket_group { _ = try SocketPermissions.groupID(group) }
        } catch {
            throw ValidationError("\(error)")
        }
        var configuration = NodeConfiguration(
            socketPath: noSocket
                ? nil : (socket ?? file.socket ?? environmentSocket ?? NodeConfiguration.defaultSocketPath),
            listenAddress: listen ?? file.listen,
            dataDirectory: dataDirectory, nodeID: corosyncNodeID ?? nodeID ?? file.node_id ?? 1,
            engine: EngineConfig(deadlockWait: UInt64(wait * 1e9)), durability: durabilityMode, mapSize: mapMiB << 20,
            cluster: cluster, busyPoll: .microseconds(Int64(pollMicroseconds)), metricsAddress: metrics ?? file.metrics,
            socketMode: socketPermissions, socketGroup: socketGroup ?? file.socket_group)
        configuration.maxConnections = connectionLimit
        configuration.clientTLS = clientTLS
        configuration.maxLockspaces = lockspaceLimit
        configuration.maxLocksPerConnection = perConnection
        configuration.maxLocksPerUser = perUser
        configuration.maxQueuedRequests = queued
        configuration.outputPauseBytes = pauseKiB << 10
        configuration.outputLimitBytes = limitKiB << 10
        configuration.recentLog = recentLog
        configuration.logLevel = level
        raiseOpenFileLimit(for: connectionLimit)
        let logger = Logger(label: "dlmd")
        let server = NodeServer(
            configuration: configuration, logger: logger, notifier: SystemdNotifier.fromEnvironment()
        ) { line in
            recentLog.append(line)
            FileHandle.standardOutput.writeIgnoringErrors(line + "\n")
        }
        let group = ServiceGroup(
            configuration: .init(
                services: [.init(service: server)], gracefulShutdownSignals: [.sigterm, .sigint], logger: logger))
        do {
            try await group.run()
        } catch let error as NodeError {
            FileHandle.standardError.writeIgnoringErrors("dlmd: \(error.description)\n")
            throw ExitCode(1)
        } catch let error as StoreError {
            FileHandle.standardError.writeIgnoringErrors("dlmd: \(error.description)\n")
            throw ExitCode(1)
        } catch let error as ClusterConfigError {
            FileHandle.standardError.writeIgnoringErrors("dlmd: \(error.description)\n")
            throw ExitCode(1)
        } catch let error as LMDBError {
            FileHandle.standardError.writeIgnoringErrors("dlmd: the store in \(dataDirectory): \(error.description)\n")
            throw ExitCode(1)
        }
    }
}

/// Each client holds a file descriptor: the soft limit on open files is raised toward the hard one (as far as
/// `max_connections` and dlmd's own files need), so that the connection limit, not the descriptor limit, is met
/// first.
func raiseOpenFileLimit(for connections: Int) {
    var limit = rlimit()
    guard getrlimit(__rlimit_resource_t(RLIMIT_NOFILE.rawValue), &limit) == 0 else { return }
    let wanted = rlim_t(connections + 256)
    guard limit.rlim_cur < wanted else { return }
    limit.rlim_cur = min(wanted, limit.rlim_max)
    _ = setrlimit(__rlimit_resource_t(RLIMIT_NOFILE.rawValue), &limit)
}
