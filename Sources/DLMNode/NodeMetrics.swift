import CoreMetrics
import DLMCluster
import DLMCore
import DLMWire
import Foundation
import NIOCore
import NIOHTTP1
import Prometheus

/// What a node counts for Prometheus (`--metrics HOST:PORT`, docs/OPERATIONS.md "Metrics"): swift-metrics counters
/// and gauges, made by `DocumentedPrometheusFactory` in swift-prometheus's registry. The shell counts requests and
/// frames in plain integers on the node's event loop (no atomic, no lookup on the hot path); a scrape, on the same
/// loop, moves what was counted since the last one into the counters and reads the gauges from the service.
final class NodeMetrics: @unchecked Sendable {
    let registry = PrometheusCollectorRegistry()
    let factory: DocumentedPrometheusFactory

    // Counted on the node's loop, in memory of their own (no copy-on-write or exclusivity check per count).
    /// Requests by the type byte of their frame (Protocol/CLIENT.md §3).
    let requestCounts = NodeMetrics.zeroed(64)
    /// Completions and errors by status (`statusSlot`).
    let completionCounts = NodeMetrics.zeroed(statusSlots)
    let errorCounts = NodeMetrics.zeroed(statusSlots)
    var blockingCount: UInt64 = 0
    var recoveriesStartedCount: UInt64 = 0
    var recoveriesDoneCount: UInt64 = 0
    var viewsInstalledCount: UInt64 = 0
    var fencesCount: UInt64 = 0
    var fenceFailuresCount: UInt64 = 0
    var tlsRefusalsCount: UInt64 = 0
    /// Peer lock messages by kind (Protocol/PEER.md §3), sent and received.
    let peerSentCounts = NodeMetrics.zeroed(32)
    let peerReceivedCounts = NodeMetrics.zeroed(32)

    // Histograms, counted on the node's loop (LatencyHistogram.swift).
    /// From a LOCK, CONVERT or UNLOCK's arrival to its reply (COMPLETION, OK or ERROR), by `RequestTimes.Kind`.
    let lockLatency = LatencyHistogram()
    let convertLatency = LatencyHistogram()
    let unlockLatency = LatencyHistogram()
    /// From a LOCK or CONVERT's arrival to its grant, at once or after waiting.
    let grantLatency = LatencyHistogram()
    /// From a waiting request's OK to the COMPLETION that ends its wait (granted, or not).
    let waitTime = LatencyHistogram()
    /// Recoveries of the lock space: whole, and phase 1 (rebuild) and 2 (purge and grants).
    let recoveryTime = LatencyHistogram()
    let recoveryPhaseTime = [LatencyHistogram(), LatencyHistogram()]
    var recoveryStartedAt: UInt64?
    var recoveryRebuiltAt: UInt64?

    // Moved into the registry at each scrape.
    var reported: [String: UInt64] = [:]
    var counters: [String: CoreMetrics.Counter] = [:]
    let locks: CoreMetrics.Gauge
    let waiters: CoreMetrics.Gauge
    let resources: CoreMetrics.Gauge
    let lockspaces: CoreMetrics.Gauge
    let connections: CoreMetrics.Gauge
    let quorate: CoreMetrics.Gauge
    let recovering: CoreMetrics.Gauge
    let clusterDeadlockSearches: CoreMetrics.Gauge
    let clusterDeadlockVictims: CoreMetrics.Gauge
    let deadlockPasses: CoreMetrics.Gauge
    let view: CoreMetrics.Gauge
    let storeUsedBytes: CoreMetrics.Gauge
    let storeAlarm: CoreMetrics.Gauge
    let storeMapBytes: CoreMetrics.Gauge
    let storeLogBytes: CoreMetrics.Gauge

    static let requestTypes: [(UInt8, String)] = [
        (0x01, "hello"), (0x02, "ping"), (0x03, "bye"), (0x10, "open_lockspace"), (0x11, "release_lockspace"),
        (0x12, "purge"), (0x20, "lock"), (0x21, "convert"), (0x22, "unlock"), (0x23, "deadlock_cancel"),
        (0x30, "query"),
    ]

    /// Statuses are errno values below 250, or the few of 0x10000 and up (ECANCEL, EUNLOCK): one slot each.
    static let statusSlots = 256
    static func statusSlot(_ status: DLMStatus) -> Int {
        let raw = status.rawValue
        if raw >= 0 && raw < 250 { return Int(raw) }
        if raw >= 0x10000 && raw < 0x10005 { return 250 + Int(raw - 0x10000) }
        return 255
    }

    static func status(ofSlot slot: Int) -> DLMStatus {
        slot < 250 ? DLMStatus(rawValue: Int32(slot)) : DLMStatus(rawValue: 0x10000 + Int32(slot - 250))
    }

    static func zeroed(_ count: Int) -> UnsafeMutablePointer<UInt64> {
        let memory = UnsafeMutablePointer<UInt64>.allocate(capacity: count)
        memory.initialize(repeating: 0, count: count)
        return memory
    }

    deinit {
        requestCounts.deallocate()
        completionCounts.deallocate()
        errorCounts.deallocate()
        peerSentCounts.deallocate()
        peerReceivedCounts.deallocate()
    }

    init() {
        factory = DocumentedPrometheusFactory(registry: registry)
        locks = Self.gauge(factory, "locks", help: "Locks this node's engine holds (granted and queued).")
        waiters = Self.gauge(
            factory, "waiters", help: "Requests and conversions waiting in this node's engine (not granted yet).")
        resources = Self.gauge(factory, "resources", help: "Resources in this node's engine.")
        lockspaces = Self.gauge(factory, "lockspaces", help: "Lockspaces open on this node.")
        connections = Self.gauge(factory, "connections", help: "Client connections.")
        quorate = Self.gauge(
            factory, "quorate", help: "1 while the node serves (a primary view, or standalone), else 0.")
        recovering = Self.gauge(
            factory, "recovering", help: "1 while a recovery of the lock space runs on this node, else 0.")
        deadlockPasses = Self.gauge(
            factory, "deadlock_passes", help: "Deadlock passes this node's engine ran since it started.")
        clusterDeadlockSearches = Self.gauge(
            factory, "cluster_deadlock_searches", help: "Deadlock searches across nodes this node started.")
        clusterDeadlockVictims = Self.gauge(
            factory, "cluster_deadlock_victims", help: "Victims of deadlocks across nodes this node decided.")
        view = Self.gauge(factory, "view", help: "The number of the view this node installed last (0: none).")
        storeUsedBytes = Self.gauge(
            factory, "store_used_bytes", help: "Bytes the store's data takes (LMDB's pages less its free list).")
        storeMapBytes = Self.gauge(
            factory, "store_map_bytes",
            help: "The store's limit (--map-size): at it, new persistent locks and lockspaces are refused.")
        storeAlarm = Self.gauge(
            factory, "store_alarm",
            help: "The store alarm: 0 none, 1 full (new persistent state refused), 2 failed (commits stopped).")
        storeLogBytes = Self.gauge(
            factory, "store_log_bytes",
            help: "Bytes of the write-ahead log written since it last started again (sync durability).")
        // Every request type and the counters without labels show from the start, at 0.
        for (_, name) in Self.requestTypes { _ = counter("requests", label: ("type", name), help: Self.requestsHelp) }
        _ = counter("blocking_callbacks", help: Self.blockingHelp)
        _ = counter("recoveries_started", help: Self.startedHelp)
        _ = counter("recoveries_done", help: Self.doneHelp)
        _ = counter("views_installed", help: Self.viewsHelp)
        _ = counter("fences", help: Self.fencesHelp)
        _ = counter("fence_failures", help: Self.fenceFailuresHelp)
        _ = counter("tls_handshakes_refused", help: Self.tlsRefusalsHelp)
    }

    static let requestsHelp = "Client requests received, by type."
    static let completionsHelp = "Completions sent to clients, by status."
    static let errorsHelp = "Requests refused with ERROR, by status."
    static let blockingHelp = "Blocking callbacks sent to clients."
    static let startedHelp = "Recoveries of the lock space started (new views)."
    static let doneHelp = "Recoveries of the lock space finished."
    static let viewsHelp = "Membership views installed (group services)."
    static let fencesHelp = "Nodes this node fenced (the fence command succeeded)."
    static let fenceFailuresHelp = "Fence commands that failed (each is retried)."
    static let tlsRefusalsHelp = "TLS handshakes of TCP clients that failed (a certificate refused, or no TLS)."
    static let peerSentHelp = "Lock messages sent to other nodes, by kind (Protocol/PEER.md)."
    static let peerReceivedHelp = "Lock messages received from other nodes, by kind (Protocol/PEER.md)."

    /// The label of each peer message kind: its name in snake case (`lookup_reply`).
    static let peerKindNames: [UInt8: String] = Dictionary(
        uniqueKeysWithValues: PeerMessage.Kind.allCases.map { kind in
            let name = String(describing: kind).reduce(into: "") { name, character in
                if character.isUppercase { name += "_" + character.lowercased() } else { name.append(character) }
            }
            return (kind.rawValue, name)
        })

    /// dlm_NAME_total (with one label, or none), made once.
    func counter(_ name: String, label: (String, String)? = nil, help: String) -> CoreMetrics.Counter {
        let key = label.map { "\(name){\($0.0)=\($0.1)}" } ?? name
        if let known = counters[key] { return known }
        factory.document("dlm_\(name)_total", help)
        let made = CoreMetrics.Counter(
            label: "dlm_\(name)_total", dimensions: label.map { [$0] } ?? [], factory: factory)
        counters[key] = made
        return made
    }

    /// dlm_NAME.
    static func gauge(_ factory: DocumentedPrometheusFactory, _ name: String, help: String) -> CoreMetrics.Gauge {
        factory.document("dlm_\(name)", help)
        return CoreMetrics.Gauge(label: "dlm_\(name)", factory: factory)
    }

    @inline(__always)
    func received(_ message: ClientMessage, on connection: ClientConnection, at now: UInt64) {
        requestCounts[Int(message.typeCode & 63)] &+= 1
        guard let times = connection.requestTimes else { return }
        switch message {
        case .lock(let lock): times.received(lock.tag, .lock, at: now)
        case .convert(let convert): times.received(convert.tag, .convert, at: now)
        case .unlock(let unlock): times.received(unlock.tag, .unlock, at: now)
        default: break
        }
    }

    /// A frame leaves: counted by kind and status, and, for a live connection (else nil), the latency of the
    /// request it answers or ends, at `now`. One pattern match per frame.
    @inline(__always)
    func sent(_ message: ServerMessage, on connection: ClientConnection?, at now: UInt64) {
        switch message {
        case .completion(let completion):
            completionCounts[Self.statusSlot(completion.status)] &+= 1
            guard let times = connection?.requestTimes else { return }
            if completion.tag != 0, let request = times.answer(completion.tag) {
                let took = now &- request.at
                latency(request.kind).observe(took)
                if completion.status == .granted && request.kind != .unlock { grantLatency.observe(took) }
            }
            // A COMPLETION ends the pending operation of its lock: a wait, if there was one.
            if times.hasWaits, let wait = times.endWait(completion.lock) {
                waitTime.observe(now &- wait.queued)
                if completion.status == .granted { grantLatency.observe(now &- wait.received) }
            }
        case .ok(let tag, let lock):
            guard let times = connection?.requestTimes, let request = times.answer(tag) else { return }
            latency(request.kind).observe(now &- request.at)
            if request.kind != .unlock { times.waits(lock, received: request.at, queued: now) }
        case .error(let tag, let status, _):
            errorCounts[Self.statusSlot(status)] &+= 1
            guard let times = connection?.requestTimes, let request = times.answer(tag) else { return }
            latency(request.kind).observe(now &- request.at)
        case .blocking:
            blockingCount &+= 1
        default:
            break
        }
    }

    @inline(__always)
    func latency(_ kind: RequestTimes.Kind) -> LatencyHistogram {
        switch kind {
        case .lock: lockLatency
        case .convert: convertLatency
        case .unlock: unlockLatency
        }
    }

    /// A recovery event at `now`: the phases are timed from one event to the next.
    func recovery(_ event: RecoveryEvent, at now: UInt64) {
        switch event {
        case .started:
            recoveriesStartedCount += 1
            recoveryStartedAt = now
            recoveryRebuiltAt = nil
        case .rebuilt:
            if let started = recoveryStartedAt { recoveryPhaseTime[0].observe(now &- started) }
            recoveryRebuiltAt = now
        case .done:
            recoveriesDoneCount += 1
            if let rebuilt = recoveryRebuiltAt { recoveryPhaseTime[1].observe(now &- rebuilt) }
            if let started = recoveryStartedAt { recoveryTime.observe(now &- started) }
            recoveryStartedAt = nil
            recoveryRebuiltAt = nil
        }
    }

    /// The text of a scrape (on the node's loop): what was counted since the last one goes into the registry's
    /// counters, the gauges are read from the node, and the histograms' text follows the registry's.
    func scrape(_ node: LockNode) -> [UInt8] {
        sample(node.service)
        view.record(Double(node.cluster?.group.status().view?.id ?? 0))
        if let store = node.storeReport {
            storeUsedBytes.record(Double(store.usedBytes))
            storeMapBytes.record(Double(store.mapSize))
            storeAlarm.record(Double(store.alarm == "failed" ? 2 : store.alarm == "full" ? 1 : 0))
        }
        storeLogBytes.record(Double(node.persistence?.store.logBytes ?? 0))
        var text = ""
        LatencyHistogram.header(
            "dlm_request_duration_seconds",
            help: "From a LOCK, CONVERT or UNLOCK's arrival to its reply (COMPLETION, OK or ERROR), by type.",
            into: &text)
        for (kind, name) in [(RequestTimes.Kind.lock, "lock"), (.convert, "convert"), (.unlock, "unlock")] {
            latency(kind).emit("dlm_request_duration_seconds", labels: "type=\"\(name)\"", into: &text)
        }
        let histograms: [(String, String, LatencyHistogram)] = [
            (
                "dlm_grant_latency_seconds", "From a LOCK or CONVERT's arrival to its grant, at once or after waiting.",
                grantLatency
            ),
            (
                "dlm_wait_seconds",
                "How long requests and conversions that waited did (from OK to the COMPLETION that ended the wait).",
                waitTime
            ),
            (
                "dlm_store_commit_seconds", "How long each commit of the store took (a group of changes).",
                node.persistence?.writer?.commitTimes ?? LatencyHistogram()
            ),
            ("dlm_recovery_seconds", "Recoveries of the lock space, from start to done.", recoveryTime),
        ]
        for (name, help, histogram) in histograms {
            LatencyHistogram.header(name, help: help, into: &text)
            histogram.emit(name, into: &text)
        }
        LatencyHistogram.header(
            "dlm_recovery_phase_seconds",
            help:
                "Phases of recoveries of the lock space: 1 lockspace groups and rebuild (masters and locks), 2 purge, "
                + "replicas and grants.",
            into: &text)
        for phase in 0..<2 {
            recoveryPhaseTime[phase].emit("dlm_recovery_phase_seconds", labels: "phase=\"\(phase + 1)\"", into: &text)
        }
        return registry.emitToBuffer() + Array(text.utf8)
    }

    /// What was counted since the last scrape goes into the registry's counters, and the gauges are read from the
    /// service (on the node's loop).
    func sample(_ service: LockService) {
        func report(_ key: String, _ value: UInt64, _ counter: @autoclosure () -> CoreMetrics.Counter) {
            let before = reported[key] ?? 0
            guard value > before else { return }
            counter().increment(by: Int64(value - before))
            reported[key] = value
        }
        for (code, name) in Self.requestTypes {
            report(
                "requests \(code)", requestCounts[Int(code & 63)],
                counter("requests", label: ("type", name), help: Self.requestsHelp))
        }
        for slot in 0..<Self.statusSlots {
            let name = Self.status(ofSlot: slot).name
            if completionCounts[slot] > 0 {
                report(
                    "completions \(slot)", completionCounts[slot],
                    counter("completions", label: ("status", name), help: Self.completionsHelp))
            }
            if errorCounts[slot] > 0 {
                report(
                    "errors \(slot)", errorCounts[slot],
                    counter("errors", label: ("status", name), help: Self.errorsHelp))
            }
        }
        report("blocking", blockingCount, counter("blocking_callbacks", help: Self.blockingHelp))
        report("started", recoveriesStartedCount, counter("recoveries_started", help: Self.startedHelp))
        report("done", recoveriesDoneCount, counter("recoveries_done", help: Self.doneHelp))
        report("views", viewsInstalledCount, counter("views_installed", help: Self.viewsHelp))
        report("fences", fencesCount, counter("fences", help: Self.fencesHelp))
        report("fence failures", fenceFailuresCount, counter("fence_failures", help: Self.fenceFailuresHelp))
        report(
            "tls refusals", tlsRefusalsCount, counter("tls_handshakes_refused", help: Self.tlsRefusalsHelp))
        for (code, name) in Self.peerKindNames.sorted(by: { $0.key < $1.key }) {
            if peerSentCounts[Int(code)] > 0 {
                report(
                    "peer sent \(code)", peerSentCounts[Int(code)],
                    counter("peer_messages_sent", label: ("kind", name), help: Self.peerSentHelp))
            }
            if peerReceivedCounts[Int(code)] > 0 {
                report(
                    "peer received \(code)", peerReceivedCounts[Int(code)],
                    counter("peer_messages_received", label: ("kind", name), help: Self.peerReceivedHelp))
            }
        }
        locks.record(Double(service.engine.lockCount))
        waiters.record(Double(service.engine.waiterCount))
        resources.record(Double(service.engine.resourceCount))
        lockspaces.record(Double(service.engine.allLockspaces.count))
        connections.record(Double(service.connectionCount))
        quorate.record(Double(service.isStopped ? 0 : 1))
        recovering.record(Double(service.isRunningRecovery ? 1 : 0))
        deadlockPasses.record(Double(service.engine.probe.deadlockPasses))
        clusterDeadlockSearches.record(Double(service.clusterDeadlockSearches))
        clusterDeadlockVictims.record(Double(service.clusterDeadlockVictims))
    }
}

/// Serves `GET /metrics` (Prometheus text format 0.0.4); anything else is 404.
final class MetricsHTTPHandler: ChannelInboundHandler, @unchecked Sendable {
    typealias InboundIn = HTTPServerRequestPart
    typealias OutboundOut = HTTPServerResponsePart

    let node: LockNode
    let metrics: NodeMetrics
    var path: String?

    init(node: LockNode, metrics: NodeMetrics) {
        self.node = node
        self.metrics = metrics
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        switch unwrapInboundIn(data) {
        case .head(let head):
            path = head.method == .GET ? head.uri : nil
        case .body:
            break
        case .end:
            let found = path == "/metrics"
            let loop = context.eventLoop
            let context = NIOLoopBound(context, eventLoop: loop)
            let handler = NIOLoopBound(self, eventLoop: loop)
            let body: EventLoopFuture<[UInt8]> =
                found
                ? node.eventLoop.submit { [node, metrics] in metrics.scrape(node) }
                : loop.makeSucceededFuture(Array("not found: GET /metrics\n".utf8))
            body.hop(to: loop).whenComplete { result in
                let bytes = (try? result.get()) ?? Array("cannot read the metrics\n".utf8)
                handler.value.respond(context.value, status: found ? .ok : .notFound, body: bytes)
            }
        }
    }

    func respond(_ context: ChannelHandlerContext, status: HTTPResponseStatus, body: [UInt8]) {
        var headers = HTTPHeaders()
        headers.add(
            name: "Content-Type",
            value: status == .ok ? "text/plain; version=0.0.4; charset=utf-8" : "text/plain; charset=utf-8")
        headers.add(name: "Content-Length", value: "\(body.count)")
        headers.add(name: "Connection", value: "close")
        context.write(
            wrapOutboundOut(.head(HTTPResponseHead(version: .http1_1, status: status, headers: headers))), promise: nil)
        var buffer = context.channel.allocator.buffer(capacity: body.count)
        buffer.writeBytes(body)
        context.write(wrapOutboundOut(.body(.byteBuffer(buffer))), promise: nil)
        // One response a connection: a scraper connects again next time (scrapes are seconds apart).
        let channel = context.channel
        context.writeAndFlush(wrapOutboundOut(.end(nil))).whenComplete { _ in channel.close(promise: nil) }
    }
}
