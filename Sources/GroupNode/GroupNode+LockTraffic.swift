import GroupServices
import Logging
import NIOCore

/// Lock traffic with one peer, as a node sees it (`GroupNode.lockTrafficStatus`).
public struct LockTrafficStatus: Sendable, Codable, Hashable {
    public var node: UInt32
    /// The life of the peer that both streams are with; nil until one is heard of, and after a primary view left
    /// that life out.
    public var incarnation: UInt64?
    /// Payloads written for the first time.
    public var payloadsSent: Int
    /// Payloads written again on a new connection, because the one before closed before they were acknowledged.
    public var payloadsResent: Int
    /// Payloads received and delivered (`GroupNodeEvent.lockTraffic`).
    public var payloadsDelivered: Int
    /// Payloads received again after their delivery (resent), and dropped.
    public var duplicatesDropped: Int
    /// Payloads thrown away before they were acknowledged: queued for a life of the peer that ended (a newer one was
    /// heard of, or a primary view left it out), or to a peer whose lock traffic failed.
    public var payloadsDiscarded: Int
    /// Lock-traffic frames written to the peer (with payloads, or with an acknowledgement alone).
    public var framesSent: Int
    /// Lock-traffic frames received and dropped: for another life of this node, from a life of the peer that is
    /// not the current one or was fenced, or numbered past a gap (a bug: logged).
    public var framesDropped: Int
    /// Payloads not acknowledged yet (not sent yet, or sent and not acknowledged), and their bytes.
    public var queuedPayloads: Int
    public var queuedBytes: Int
    /// Lock traffic to this life of the peer failed (more than `GroupNode.lockTrafficQueueLimit` bytes waited): what
    /// is sent to it is discarded until the peer's next life.
    public var failed: Bool
}

extension GroupNode {
    /// The most bytes of lock traffic that may wait for one peer (not sent yet, or sent and not acknowledged): 1 GiB.
    /// Past it, lock traffic to that life of the peer fails (logged as critical; see `LockTrafficStatus.failed`).
    public static let lockTrafficQueueLimit = 1 << 30
    /// The largest payload of `sendLockTraffic`: one that fills a frame of `PeerEnvelope.maximumLength` alone.
    public static let maximumLockTrafficPayload = LockTrafficFrame.maximumPayloadLength
    /// Payloads are packed into frames of up to about this size; a larger payload goes in a frame of its own.
    static let lockTrafficFrameSize = 1 << 20
    /// Lock-traffic bytes that may be written on a connection and not yet handed to the socket: below the channel's
    /// high-water mark (`PeerTransport.highWaterMark`), so that lock traffic alone never makes group services
    /// frames drop (unless a single payload is larger).
    static let lockTrafficWriteBudget = 2 << 20

    /// Lock traffic with one peer: the stream from this node's life to one life of the peer (`incarnation`), and the
    /// stream from that life to this one. (A class: its window is changed in place, never copied.)
    final class LockPeer {
        /// The peer's life that both streams are with: nil until one is heard of (payloads wait for it).
        var incarnation: UInt64?

        // The stream out.
        /// The payloads not acknowledged yet, numbered from `base` (the first `windowStart` are gone).
        var window: [[UInt8]] = []
        var windowStart = 0
        var base: UInt64 = 1
        /// The last number written on `connection`.
        var written: UInt64 = 0
        /// The last number ever written in this stream: a payload written again at or below it is resent.
        var highestWritten: UInt64 = 0
        var queuedBytes = 0
        var failed = false
        /// The connection (`PeerTransport.readyConnection`) that frames were last written on, and the bytes written
        /// on it that the socket has not taken yet.
        var connection: UInt64 = 0
        var inFlight = 0

        // The stream in.
        /// The last number delivered.
        var delivered: UInt64 = 0
        /// Whether an acknowledgement should go to the peer (something was delivered or received again since the
        /// last one, or the connection it went on closed).
        var acknowledgementDue = false

        var payloadsSent = 0
        var payloadsResent = 0
        var payloadsDelivered = 0
        var duplicatesDropped = 0
        var payloadsDiscarded = 0
        var framesSent = 0
        var framesDropped = 0

        var queuedCount: Int { window.count - windowStart }
        /// The number of the next payload queued.
        var next: UInt64 { base + UInt64(queuedCount) }
        var hasUnwritten: Bool { written + 1 < next }

        func payload(_ number: UInt64) -> [UInt8] { window[windowStart + Int(number - base)] }

        /// The peer delivered every payload up to `number`.
        func acknowledge(upTo number: UInt64) {
            let number = min(number, next - 1)
            guard number >= base else { return }
            for index in windowStart..<windowStart + Int(number - base + 1) {
                queuedBytes -= window[index].count
                window[index] = []
            }
            windowStart += Int(number - base + 1)
            base = number + 1
            written = max(written, number)
            if windowStart == window.count {
                window.removeAll(keepingCapacity: window.count <= 4096)
                windowStart = 0
            } else if windowStart >= 4096 && windowStart * 2 >= window.count {
                window.removeFirst(windowStart)
                windowStart = 0
            }
        }

        /// Throws away the payloads waiting (keeping their numbers used); returns how many.
        func discardQueue() -> Int {
            let count = queuedCount
            base = next
            written = max(written, base - 1)
            window = []
            windowStart = 0
            queuedBytes = 0
            return count
        }

        /// Both streams start over, with another life of the peer (or none yet); returns the payloads discarded.
        func startOver(with incarnation: UInt64?) -> Int {
            let discarded = discardQueue()
            self.incarnation = incarnation
            base = 1
            written = 0
            highestWritten = 0
            failed = false
            delivered = 0
            acknowledgementDue = false
            payloadsDiscarded += discarded
            return discarded
        }
    }

    // MARK: The application's requests

    /// Queues `payload` for `node` on the reliable, ordered channel of lock traffic (docs/GROUPS.md, "Lock
    /// traffic"): delivered there (`GroupNodeEvent.lockTraffic`) exactly once and in the order sent, for as long as
    /// this node's life and the life of `node` it goes to both live, across lost connections. It goes to the life of
    /// `node` heard of last (or the first heard of, if none has been yet); it is discarded if that life ends first
    /// (a newer one is heard of, or a primary view leaves it out). The payloads queued for a node in one turn of the
    /// event loop leave together, in as few frames as fit, at the end of that turn. Never dropped for backlog; past
    /// `lockTrafficQueueLimit` bytes waiting for one peer, lock traffic to that life of it fails (logged).
    ///
    /// From any thread (payloads sent from one thread keep their order); `node` must be another node of the config,
    /// and the payload at most `maximumLockTrafficPayload` bytes. Payloads queued after `stop` are dropped.
    public func sendLockTraffic(_ payload: [UInt8], to node: NodeID) {
        precondition(node != nodeID, "lock traffic from node \(node) to itself")
        precondition(config.node(node) != nil, "lock traffic to node \(node), which is not in the cluster config")
        precondition(
            payload.count <= Self.maximumLockTrafficPayload,
            "a lock traffic payload of \(payload.count) bytes (at most \(Self.maximumLockTrafficPayload))")
        if eventLoop.inEventLoop {
            queueLockTraffic(payload, to: node)
        } else {
            eventLoop.execute { self.queueLockTraffic(payload, to: node) }
        }
    }

    /// Lock traffic with each peer that this node sent to or heard from, by node id. On the loop.
    public func lockTrafficStatus() -> [LockTrafficStatus] {
        eventLoop.preconditionInEventLoop()
        return lockPeers.sorted { $0.key < $1.key }.map { node, peer in
            LockTrafficStatus(
                node: node.rawValue, incarnation: peer.incarnation, payloadsSent: peer.payloadsSent,
                payloadsResent: peer.payloadsResent, payloadsDelivered: peer.payloadsDelivered,
                duplicatesDropped: peer.duplicatesDropped, payloadsDiscarded: peer.payloadsDiscarded,
                framesSent: peer.framesSent, framesDropped: peer.framesDropped, queuedPayloads: peer.queuedCount,
                queuedBytes: peer.queuedBytes, failed: peer.failed)
        }
    }

    /// Closes this node's outbound connection to `node`, as a network failure would. For tests.
    func closeConnection(to node: NodeID) {
        eventLoop.preconditionInEventLoop()
        transport?.closeConnection(to: node)
    }

    // MARK: Sending

    var lockTrafficSender: Member { Member(node: nodeID, incarnation: incarnation) }

    /// The lock traffic with `node`, created if there is none yet.
    func lockPeer(_ node: NodeID) -> LockPeer {
        if let peer = lockPeers[node] { return peer }
        let peer = LockPeer()
        lockPeers[node] = peer
        return peer
    }

    func queueLockTraffic(_ payload: [UInt8], to node: NodeID) {
        guard state != .stopped else { return }
        let peer = lockPeer(node)
        guard !peer.failed else {
            peer.payloadsDiscarded += 1
            return
        }
        guard peer.queuedBytes + payload.count <= lockTrafficQueueLimit else {
            let discarded = peer.discardQueue() + 1
            peer.payloadsDiscarded += discarded
            peer.failed = true
            let life = peer.incarnation.map { "\(Member(node: node, incarnation: $0))" } ?? "\(node)"
            logger.critical(
                """
                more than \(lockTrafficQueueLimit) bytes of lock traffic wait for node \(life): lock traffic to it \
                fails (\(discarded) payloads discarded, and whatever is sent to it until its next life)
                """)
            return
        }
        peer.window.append(payload)
        peer.queuedBytes += payload.count
        lockTrafficToFlush.insert(node)
        if !lockTrafficFlushScheduled {
            lockTrafficFlushScheduled = true
            eventLoop.execute { [self] in flushLockTraffic() }
        }
    }

    /// Writes the payloads queued since the last call (scheduled at the first of them, so at the end of the turn of
    /// the event loop that queued it).
    func flushLockTraffic() {
        lockTrafficFlushScheduled = false
        let nodes = lockTrafficToFlush
        lockTrafficToFlush = []
        for node in nodes { writeLockTraffic(to: node, acknowledgementAlone: false) }
        transport?.flush()
    }

    /// Every tick: acknowledgements due go out alone, and a peer with lock traffic waiting and no connection gets one.
    func tickLockTraffic() {
        guard state == .running, !lockPeers.isEmpty else { return }
        for node in Array(lockPeers.keys) { writeLockTraffic(to: node, acknowledgementAlone: true) }
        transport?.flush()
    }

    /// A new connection to `node` is usable: what the one before may have lost goes again.
    func lockTrafficConnectionReady(_ node: NodeID) {
        guard let peer = lockPeers[node] else { return }
        // The acknowledgement last written may have been lost with the connection before.
        if peer.delivered > 0 { peer.acknowledgementDue = true }
        writeLockTraffic(to: node, acknowledgementAlone: true)
        transport?.flush()
    }

    /// Writes `node` the payloads not written on its current connection yet (all those not acknowledged, on a new
    /// connection), in frames of about `lockTrafficFrameSize`, while less than `lockTrafficWriteBudget` bytes wait
    /// for the socket; with the acknowledgement of the stream in. With `acknowledgementAlone`, an acknowledgement
    /// that is due goes in a frame of its own if no payload carries it. Flushing is the caller's.
    func writeLockTraffic(to node: NodeID, acknowledgementAlone: Bool) {
        guard state == .running, let transport, let peer = lockPeers[node], let receiver = peer.incarnation,
            peer.queuedCount > 0 || peer.acknowledgementDue
        else { return }
        guard let connection = transport.readyConnection(to: node) else {
            transport.connectIfNeeded(node)
            return
        }
        if connection != peer.connection {
            // Whatever the connection before carried may be lost, the acknowledgements included.
            peer.connection = connection
            peer.inFlight = 0
            peer.written = peer.base - 1
            peer.acknowledgementDue = peer.acknowledgementDue || peer.delivered > 0
        }
        while peer.inFlight < Self.lockTrafficWriteBudget
            && (peer.hasUnwritten || (acknowledgementAlone && peer.acknowledgementDue))
        {
            var payloads: [[UInt8]] = []
            var size = LockTrafficFrame.overhead
            var number = peer.written + 1
            while number < peer.next {
                let payload = peer.payload(number)
                let cost = payload.count + LockTrafficFrame.payloadOverhead
                if !payloads.isEmpty && size + cost > Self.lockTrafficFrameSize { break }
                payloads.append(payload)
                size += cost
                number += 1
            }
            let frame = LockTrafficFrame(
                receiverIncarnation: receiver, first: peer.written + 1, acknowledged: peer.delivered,
                payloads: payloads)
            guard let (bytes, written) = transport.write(.lockTraffic(frame), from: lockTrafficSender, to: node) else {
                return
            }
            let resent = Int(min(peer.highestWritten, number - 1) - min(peer.highestWritten, peer.written))
            peer.payloadsResent += resent
            peer.payloadsSent += payloads.count - resent
            peer.written = number - 1
            peer.highestWritten = max(peer.highestWritten, peer.written)
            peer.acknowledgementDue = false
            peer.inFlight += bytes
            peer.framesSent += 1
            // Only success counts: a write fails when its connection does, and the next one starts afresh.
            written.whenSuccess { [weak self] in self?.lockTrafficWritten(to: node, connection, bytes: bytes) }
        }
    }

    /// The socket took a frame of lock traffic written on `connection`.
    func lockTrafficWritten(to node: NodeID, _ connection: UInt64, bytes: Int) {
        guard state == .running, let peer = lockPeers[node], peer.connection == connection else { return }
        peer.inFlight -= bytes
        if peer.hasUnwritten && peer.inFlight < Self.lockTrafficWriteBudget {
            writeLockTraffic(to: node, acknowledgementAlone: false)
            transport?.flush()
        }
    }

    // MARK: Receiving, lives and views

    /// Whether `member` is a life of its node that a primary view left out (fenced): it never comes back.
    func isFencedLife(_ member: Member) -> Bool {
        guard let fenced = self.member?.fencedIncarnation(of: member.node) else { return false }
        return member.incarnation <= fenced
    }

    /// `member` is alive (a frame came from it, or a view has it): lock traffic with its node binds to it, or starts
    /// over with it if it is a newer life than the one before.
    func lockTrafficHeard(_ member: Member) {
        guard member.node != nodeID, !isFencedLife(member) else { return }
        if let known = lockPeers[member.node]?.incarnation, member.incarnation <= known { return }
        let peer = lockPeer(member.node)
        if let known = peer.incarnation {
            let discarded = peer.startOver(with: member.incarnation)
            let note = discarded > 0 ? " (\(discarded) payloads for its previous life discarded)" : ""
            logger.info(
                """
                node \(member.node) restarted (incarnation \(member.incarnation), was \(known)): lock traffic with it \
                starts over\(note)
                """)
        } else {
            peer.incarnation = member.incarnation
        }
    }

    /// A view is installed (before the application hears of it): its members' lives are heard of, and in a primary
    /// view, the lives it left out are over (fenced): lock traffic with them is forgotten, queued payloads included.
    func lockTrafficViewInstalled(_ view: View, primary: Bool) {
        for member in view.members { lockTrafficHeard(member) }
        guard primary else { return }
        for (node, peer) in lockPeers {
            guard let life = peer.incarnation, isFencedLife(Member(node: node, incarnation: life)) else { continue }
            let discarded = peer.startOver(with: nil)
            let note = discarded > 0 ? " (\(discarded) payloads to it discarded)" : ""
            logger.info(
                "\(view) leaves out node \(Member(node: node, incarnation: life)): its lock traffic is forgotten\(note)"
            )
        }
    }

    /// A frame of lock traffic from `sender` (already heard of by `lockTrafficHeard`).
    func receivedLockTraffic(_ frame: LockTrafficFrame, from sender: Member) {
        guard frame.receiverIncarnation == incarnation, lockPeers[sender.node]?.incarnation == sender.incarnation
        else {
            // For an earlier life of this node, or from a life of the sender that is over.
            logger.debug(
                "dropped lock traffic from \(sender) for incarnation \(frame.receiverIncarnation) of this node")
            lockPeer(sender.node).framesDropped += 1
            return
        }
        // Heartbeats come on this connection behind lock traffic: a frame of it shows the sender alive as well.
        apply(.heard(from: sender))
        let peer = lockPeers[sender.node]!
        peer.acknowledge(upTo: frame.acknowledged)
        var deliveries: [[UInt8]] = []
        var number = frame.first
        for payload in frame.payloads {
            if number <= peer.delivered {
                peer.duplicatesDropped += 1
            } else if number == peer.delivered &+ 1 {
                deliveries.append(payload)
                peer.delivered = number
            } else {
                logger.error(
                    "lock traffic from \(sender) jumps from \(peer.delivered) to \(number) (a bug): rest of frame dropped"
                )
                peer.framesDropped += 1
                break
            }
            number &+= 1  // past the last payload, which may be numbered UInt64.max (the codec checks the rest)
        }
        if !frame.payloads.isEmpty { peer.acknowledgementDue = true }
        peer.payloadsDelivered += deliveries.count
        for payload in deliveries {
            guard state == .running else { return }
            onEvent(.lockTraffic(payload, from: sender))
        }
    }
}
