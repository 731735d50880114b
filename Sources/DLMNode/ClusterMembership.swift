import DLMStore
import DLMWire
import Foundation
import GroupNode
import GroupServices
import Logging
import NIOCore

/// A node's membership in a cluster (`dlmd --config FILE --node-id N`): its group services, whose views decide
/// whether the lock node serves requests. Outside a primary view (no quorum, or before the first view is
/// agreed) the lock node is stopped and grants nothing new; a primary view is reported only after every node
/// that left it was fenced, and then the node serves again. Lives on the lock node's event loop.
final class ClusterMembership {
    let config: ClusterConfig
    let nodeID: NodeID
    let group: GroupNode
    /// Lines for dlmd's standard output (view changes and fences), which operators and tests read.
    let announce: @Sendable (String) -> Void

    init(
        config: ClusterConfig, nodeID: NodeID, key: ClusterKey, node: LockNode, store: NodeStore,
        persisted: [UInt8]?, logger: Logger, announce: @escaping @Sendable (String) -> Void
    ) throws {
        self.config = config
        self.nodeID = nodeID
        self.announce = announce
        var state = PersistentState()
        if let persisted, !persisted.isEmpty {
            do {
                state = try JSONDecoder().decode(PersistentState.self, from: Data(persisted))
            } catch {
                throw NodeError("the store's membership record cannot be read: \(error)")
            }
        }
        let encoder = JSONEncoder()
        encoder.outputFormatting = [.sortedKeys]
        group = GroupNode(
            config: config, nodeID: nodeID, key: key, incarnation: store.incarnation, persisted: state,
            eventLoop: node.eventLoop, logger: logger,
            persist: { state in
                // Before any message that depends on it leaves: committed and on disk.
                try store.commit([.view(Array(try encoder.encode(state)))])
                try store.sync()
            },
            onEvent: { [weak node] event in node?.handleGroupEvent(event) })
    }

    /// What the status report says of the cluster, from one reading of group services' status: the view, what a
    /// stopped node waits for, and every configured node.
    func report() -> (view: StatusReport.View?, waitingFor: [String], cluster: StatusReport.Cluster) {
        let status = group.status()
        let view = status.view.map {
            StatusReport.View(
                id: $0.id, coordinator: $0.coordinator, members: $0.members.map(\.node), primary: $0.primary)
        }
        var waitingFor = status.waitingFor
        if waitingFor.isEmpty && !status.quorate { waitingFor = [status.view == nil ? "view agreement" : "quorum"] }
        let settings = config.settings
        let cluster = StatusReport.Cluster(
            name: status.clusterName, expectedVotes: settings.expectedVotes, quorumVotes: settings.quorumVotes,
            tieBreakerNode: settings.tieBreakerNode?.rawValue,
            highestView: status.highestViewNumber,
            nodes: status.nodes.map {
                .init(
                    nodeID: $0.id, address: $0.address, votes: $0.votes, state: $0.state,
                    lastHeardMilliseconds: $0.lastHeardMillisecondsAgo, incarnation: $0.incarnation)
            }, waitingFor: status.waitingFor)
        return (view, waitingFor, cluster)
    }
}

extension LockNode {
    /// Joins the cluster: requests are held until the first primary view.
    func joinCluster(_ config: ClusterConfig, announce: @escaping @Sendable (String) -> Void) throws
        -> EventLoopFuture<Void>
    {
        eventLoop.preconditionInEventLoop()
        guard let persistence else { throw NodeError("a cluster member needs its data directory") }
        let nodeID = NodeID(configuration.nodeID)
        guard config.node(nodeID) != nil else {
            throw NodeError(
                "node id \(nodeID) is not in the cluster's node list (\(config.nodes.map { "\($0.id)" }.joined(separator: ", ")))"
            )
        }
        let key: ClusterKey
        do {
            key = try ClusterKey.read(from: config.keyFile)
        } catch {
            throw NodeError("the cluster key: \(error)")
        }
        let membership = try ClusterMembership(
            config: config, nodeID: nodeID, key: key, node: self, store: persistence.store,
            persisted: persistence.groupState, logger: logger, announce: announce)
        cluster = membership
        return membership.group.start()
    }

    func handleGroupEvent(_ event: GroupNodeEvent) {
        guard let cluster else { return }
        let me = "dlmd: node \(configuration.nodeID)"
        switch event {
        case .viewInstalled(let view, let primary):
            let members = view.members.map(\.description).joined(separator: ",")
            cluster.announce(
                "\(me) view \(view.id.number) coordinator \(view.id.coordinator) members \(members) "
                    + (primary ? "primary" : "not primary (no quorum)"))
            logger.notice(
                "view installed", metadata: ["view": "\(view)", "primary": "\(primary)"])
            metrics?.viewsInstalledCount += 1
            handle(.viewInstalled(view, primary: primary))
        case .fenced(let node):
            cluster.announce("\(me) fenced node \(node)")
            metrics?.fencesCount += 1
        case .fenceAcknowledged(let node):
            cluster.announce("\(me) fenced node \(node) (acknowledged by an operator)")
            metrics?.fencesCount += 1
        case .fenceCommandEndedAfterAcknowledgement(let node, let reason):
            cluster.announce(
                "\(me) the fence command for node \(node) ended (\(reason)) after an operator acknowledged the fence")
        case .fenceFailed(let node, let reason):
            cluster.announce("\(me) fencing node \(node) failed: \(reason); retrying")
            metrics?.fenceFailuresCount += 1
        case .lifeFenced:
            cluster.announce("\(me) this life was fenced: it never joins again; restart dlmd")
            logger.warning("this life of the node was fenced: it holds every request until dlmd is restarted")
        case .lockTraffic(let bytes, let sender):
            // A peer's request or answer is I/O as a client's frame is: the loop polls on for the next one.
            busyPoll?.activity()
            let message: PeerMessage
            do {
                message = try PeerMessage.decode(frame: bytes)
            } catch {
                // From an authenticated peer of the same build: a bug, not an attack. Dropped and logged.
                logger.error(
                    "a lock message of node \(sender) cannot be read: \(error)", metadata: ["bytes": "\(bytes.count)"])
                return
            }
            metrics?.peerReceivedCounts[Int(message.kind.rawValue)] &+= 1
            handle(.peer(from: sender.node.rawValue, message))
        case .delivered, .barrierCompleted, .barrierAborted, .groupEvent:
            // The lock service's traffic is point to point (lock traffic above), its recovery's phases its own
            // reports: it uses no ordered messages, barriers or process groups of the provider.
            break
        }
    }
}
