import CDLMCorosync
import Foundation
import GroupServices
import Logging
import NIOConcurrencyHelpers

/// corosync's nodelist, as cmap has it, with this node's id and the cluster's name.
public struct CorosyncNodelist: Sendable, Hashable {
    public struct Node: Sendable, Hashable {
        public var id: NodeID
        public var address: String
        public var name: String
        public var votes: Int
        public init(id: NodeID, address: String, name: String, votes: Int) {
            self.id = id
            self.address = address
            self.name = name
            self.votes = votes
        }
    }
    public var nodes: [Node]
    /// This node's id (`nodelist.local_node_pos`).
    public var localNode: NodeID
    /// `totem.cluster_name`, or empty.
    public var clusterName: String
    public init(nodes: [Node], localNode: NodeID, clusterName: String) {
        self.nodes = nodes
        self.localNode = localNode
        self.clusterName = clusterName
    }
}

extension CorosyncNodelist {
    /// Reads corosync's nodelist, this node's id and the cluster name from cmap (corosync must be running).
    public static func read() throws -> CorosyncNodelist {
        let capacity = 1024
        var nodes = [dlm_cs_node](repeating: dlm_cs_node(), count: capacity)
        var count = 0
        var local: UInt32 = 0
        var name = [CChar](repeating: 0, count: 256)
        let error = dlm_cs_read_nodelist(&nodes, capacity, &count, &local, &name, name.count)
        guard error == 0 else {
            throw CorosyncError(what: "reading corosync's nodelist (cmap)", code: error)
        }
        func text<T>(_ field: T) -> String {
            withUnsafeBytes(of: field) { String(decoding: $0.prefix { $0 != 0 }, as: UTF8.self) }
        }
        let listed = nodes[..<count].filter { $0.nodeid != 0 }.map {
            CorosyncNodelist.Node(
                id: NodeID($0.nodeid), address: text($0.address), name: text($0.name), votes: Int($0.votes))
        }
        return CorosyncNodelist(
            nodes: listed, localNode: NodeID(local),
            clusterName: String(decoding: name.prefix { $0 != 0 }.map { UInt8(bitPattern: $0) }, as: UTF8.self))
    }
}

/// An error of corosync's client libraries, with corosync's text for it.
public struct CorosyncError: Error, CustomStringConvertible, Sendable {
    public var what: String
    public var code: Int32
    public var description: String { "\(what): \(String(cString: dlm_cs_strerror(code))) (cs_error_t \(code))" }
}

/// dlmd's connection to corosync (the corosync provider, docs/GROUPS.md): its CPG group and votequorum, owned by one
/// thread of its own that polls their descriptors and makes every call into corosync's libraries, so that a slow
/// corosync never stalls the event loop. Events go to `onEvent` (on that thread; the receiver moves them to its
/// loop); multicasts are queued from any thread and sent by it, again later when corosync says TRY_AGAIN.
///
/// Beside its group, the thread keeps this node in one CPG group per lockspace whose group it is in
/// (`setLockspaceGroups`), as dlm_controld keeps a `dlm:ls:NAME` group: corosync's tools show which nodes use each
/// lockspace. Those groups decide nothing (the lock service agrees its lockspace groups in recovery's phase 0, with
/// either provider); their events are read and dropped.
final class CorosyncLink: @unchecked Sendable {
    let group: String
    let onEvent: @Sendable (ProviderEvent) -> Void
    let logger: Logger
    private let outgoing = NIOLockedValueBox<(queue: [[UInt8]], stopping: Bool, lockspaceGroups: Set<[UInt8]>?)>(
        ([], false, nil))
    private var connection: OpaquePointer?
    private var wakeup: Int32 = -1
    private var thread: Thread?
    private let finished = ConditionLock(value: false)

    init(group: String, logger: Logger, onEvent: @escaping @Sendable (ProviderEvent) -> Void) {
        self.group = group
        self.logger = logger
        self.onEvent = onEvent
    }

    /// Connects, joins the group and starts the thread. The first events (the group's configuration, the quorum)
    /// follow from it.
    func start() throws {
        var callbacks = dlm_cs_callbacks()
        callbacks.context = Unmanaged.passUnretained(self).toOpaque()
        callbacks.confchg = { context, members, count, left, leftCount in
            let link = Unmanaged<CorosyncLink>.fromOpaque(context!).takeUnretainedValue()
            let list = (0..<count).map {
                ProcessAddress(node: NodeID(members![$0].nodeid), pid: members![$0].pid)
            }
            // CPG_REASON_NODEDOWN: corosync dropped the node (not only its dlmd).
            let down = (0..<leftCount).filter { left![$0].reason == 3 }.map { NodeID(left![$0].nodeid) }
            link.onEvent(.configuration(list, nodesDown: down))
        }
        callbacks.deliver = { context, node, pid, message, length in
            let link = Unmanaged<CorosyncLink>.fromOpaque(context!).takeUnretainedValue()
            let bytes = [UInt8](UnsafeRawBufferPointer(start: message, count: length))
            link.onEvent(.delivered(bytes, from: ProcessAddress(node: NodeID(node), pid: pid)))
        }
        callbacks.quorum = { context, quorate, members, count in
            let link = Unmanaged<CorosyncLink>.fromOpaque(context!).takeUnretainedValue()
            let nodes = (0..<count).map { NodeID(members![$0]) }
            link.onEvent(.quorum(quorate != 0, members: nodes))
        }
        var connection: OpaquePointer?
        let error = dlm_cs_open(group, &callbacks, &connection)
        guard error == 0, let connection else {
            throw CorosyncError(what: "connecting to corosync (CPG group \(group), votequorum)", code: error)
        }
        self.connection = connection
        wakeup = dlm_cs_eventfd()
        let thread = Thread { [self] in run() }
        thread.name = "dlmd-corosync"
        self.thread = thread
        thread.start()
    }

    /// Queues a message for the group.
    func multicast(_ message: [UInt8]) {
        outgoing.withLockedValue { $0.queue.append(message) }
        var one: UInt64 = 1
        _ = write(wakeup, &one, 8)
    }

    /// The CPG groups of the lockspaces this node is in (`lockspaceGroup(cluster:lockspace:)`): the thread joins
    /// those it is not in and leaves the others.
    func setLockspaceGroups(_ names: Set<[UInt8]>) {
        outgoing.withLockedValue { $0.lockspaceGroups = names }
        var one: UInt64 = 1
        _ = write(wakeup, &one, 8)
    }

    /// The CPG group of lockspace `lockspace` in cluster `cluster`: `dlmd:CLUSTER:ls:LOCKSPACE`, or, past CPG's 128
    /// bytes, `dlmd:CLUSTER:ls` cut to 111 bytes, `#` and the FNV-1a-64 of the lockspace's name in 16 hex digits.
    static func lockspaceGroup(cluster: String, lockspace: [UInt8]) -> [UInt8] {
        let prefix = Array("dlmd:\(cluster):ls".utf8)
        let full = prefix + Array(":".utf8) + lockspace
        if full.count <= maxGroupName { return full }
        var hash: UInt64 = 0xcbf2_9ce4_8422_2325
        for byte in lockspace { hash = (hash ^ UInt64(byte)) &* 0x100_0000_01b3 }
        let hex = String(hash, radix: 16)
        return prefix.prefix(maxGroupName - 17) + Array("#\(String(repeating: "0", count: 16 - hex.count))\(hex)".utf8)
    }

    /// CPG_MAX_NAME_LENGTH.
    static let maxGroupName = 128

    /// How long `stop` waits for the thread to leave the group and close the connection.
    static let stopTimeout = 5.0

    /// Stops the thread, leaves the group and closes the connection; returns once done, or after `stopTimeout` if
    /// corosync does not answer (a stopped or hung corosync): dlmd's stop is not held by it, and the thread closes
    /// the connection if corosync ever answers.
    func stop() {
        guard thread != nil else { return }
        outgoing.withLockedValue { $0.stopping = true }
        var one: UInt64 = 1
        _ = write(wakeup, &one, 8)
        if finished.lock(whenValue: true, timeoutSeconds: Self.stopTimeout) {
            finished.unlock()
        } else {
            logger.warning(
                "corosync did not answer within \(Int(Self.stopTimeout)) s: stopping without leaving its group")
        }
        thread = nil
    }

    private func run() {
        defer {
            dlm_cs_close(connection)
            connection = nil
            close(wakeup)
            finished.lock()
            finished.unlock(withValue: true)
        }
        var cpgFD: Int32 = -1
        var quorumFD: Int32 = -1
        guard dlm_cs_cpg_fd(connection, &cpgFD) == 0, dlm_cs_quorum_fd(connection, &quorumFD) == 0 else {
            onEvent(.lost("corosync's descriptors cannot be read"))
            return
        }
        var retrying = false
        var lockspaceGroups: [(name: [UInt8], group: OpaquePointer, fd: Int32)] = []
        defer { for joined in lockspaceGroups { dlm_cs_group_close(joined.group) } }
        while true {
            var fds = [
                pollfd(fd: cpgFD, events: Int16(POLLIN), revents: 0),
                pollfd(fd: quorumFD, events: Int16(POLLIN), revents: 0),
                pollfd(fd: wakeup, events: Int16(POLLIN), revents: 0),
            ]
            fds += lockspaceGroups.map { pollfd(fd: $0.fd, events: Int16(POLLIN), revents: 0) }
            // Messages that corosync refused for now (its queue full) are tried again every 10 ms.
            let ready = poll(&fds, nfds_t(fds.count), retrying ? 10 : -1)
            if ready < 0 && errno != EINTR {
                onEvent(.lost("poll failed: errno \(errno)"))
                return
            }
            if fds[2].revents != 0 {
                var count: UInt64 = 0
                _ = read(wakeup, &count, 8)
            }
            if outgoing.withLockedValue({ $0.stopping }) { return }
            for (index, fd) in fds.prefix(2).enumerated() where fd.revents != 0 {
                let error = index == 0 ? dlm_cs_dispatch_cpg(connection) : dlm_cs_dispatch_quorum(connection)
                if error != 0 && error != 6 {
                    let what = index == 0 ? "CPG" : "votequorum"
                    onEvent(.lost("\(what): \(CorosyncError(what: "dispatch", code: error))"))
                    return
                }
            }
            // A lockspace group that corosync ends is left; it is joined again when the set changes.
            var failed: Set<Int> = []
            for (index, fd) in fds.dropFirst(3).enumerated() where fd.revents != 0 {
                let error = dlm_cs_group_dispatch(lockspaceGroups[index].group)
                if error != 0 && error != 6 {
                    logger.warning(
                        "left the CPG group of a lockspace: \(CorosyncError(what: "dispatch", code: error))",
                        metadata: ["group": "\(String(decoding: lockspaceGroups[index].name, as: UTF8.self))"])
                    failed.insert(index)
                }
            }
            if let wanted = outgoing.withLockedValue({ state -> Set<[UInt8]>? in
                defer { state.lockspaceGroups = nil }
                return state.lockspaceGroups
            }) {
                for (index, joined) in lockspaceGroups.enumerated() where !wanted.contains(joined.name) {
                    failed.insert(index)
                }
                let known = Set(lockspaceGroups.map(\.name))
                for name in wanted.sorted(by: { $0.lexicographicallyPrecedes($1) }) where !known.contains(name) {
                    lockspaceGroups.append(contentsOf: joinLockspaceGroup(name).map { [$0] } ?? [])
                }
            }
            for index in failed.sorted(by: >) {
                dlm_cs_group_close(lockspaceGroups[index].group)
                lockspaceGroups.remove(at: index)
            }
            retrying = false
            var queue = outgoing.withLockedValue { state -> [[UInt8]] in
                defer { state.queue = [] }
                return state.queue
            }
            var sent = 0
            while sent < queue.count {
                let error = queue[sent].withUnsafeBytes { dlm_cs_mcast(connection, $0.baseAddress, $0.count) }
                if error == 6 {  // CS_ERR_TRY_AGAIN
                    retrying = true
                    break
                }
                if error != 0 {
                    onEvent(.lost("\(CorosyncError(what: "multicast", code: error))"))
                    return
                }
                sent += 1
            }
            if sent < queue.count {
                queue.removeFirst(sent)
                outgoing.withLockedValue { $0.queue = queue + $0.queue }
            }
        }
    }

    /// Joins a lockspace's CPG group on a connection of its own; nil (and a warning) if corosync refuses.
    private func joinLockspaceGroup(_ name: [UInt8]) -> (name: [UInt8], group: OpaquePointer, fd: Int32)? {
        var group: OpaquePointer?
        var fd: Int32 = -1
        var error = name.withUnsafeBytes { dlm_cs_group_open($0.baseAddress, $0.count, &group) }
        if error == 0, let group {
            error = dlm_cs_group_fd(group, &fd)
            if error == 0 { return (name, group, fd) }
            dlm_cs_group_close(group)
        }
        logger.warning(
            "cannot join the CPG group of a lockspace: \(CorosyncError(what: "cpg_join", code: error))",
            metadata: ["group": "\(String(decoding: name, as: UTF8.self))"])
        return nil
    }
}
