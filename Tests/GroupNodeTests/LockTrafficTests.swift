import DLMTestSupport
import Foundation
import GroupServices
import NIOCore
import Testing

@testable import GroupNode

/// Payload `index` of a stream: its index (4 bytes, big-endian), then `size` bytes that depend on it.
func numbered(_ index: Int, size: Int = 8) -> [UInt8] {
    withUnsafeBytes(of: UInt32(index).bigEndian, Array.init)
        + (0..<size).map { UInt8(truncatingIfNeeded: index &* 31 &+ $0) }
}

func index(of payload: [UInt8]) -> Int {
    payload.prefix(4).reduce(0) { $0 << 8 | Int($1) }
}

func hexBytes(_ string: String) -> [UInt8] {
    let digits = Array(string.utf8)
    return stride(from: 0, to: digits.count, by: 2).map {
        UInt8(String(decoding: digits[$0..<$0 + 2], as: UTF8.self), radix: 16)!
    }
}

@Suite struct LockTrafficCodecTests {
    let key = ClusterKey.generate()
    let challenge = PeerFrameCodec.makeChallenge()
    func codec(_ node: NodeID) -> PeerFrameCodec {
        PeerFrameCodec(key: key, clusterName: "demo", localNode: node, knownNodes: [1, 2, 3])
    }

    func randomFrame(_ rng: inout SplitMix64) -> LockTrafficFrame {
        var generator = MessageGenerator(rng: rng)
        defer { rng = generator.rng }
        let count = Int.random(in: 0...5, using: &generator.rng)
        let first = max(1, generator.number() >> UInt64.random(in: 0...63, using: &generator.rng))
        return LockTrafficFrame(
            receiverIncarnation: max(1, generator.number()),
            first: first > UInt64.max - 5 ? UInt64.max - 5 : first,
            acknowledged: generator.number(),
            payloads: (0..<count).map { _ in
                (0..<Int.random(in: 0...300, using: &generator.rng)).map { _ in
                    UInt8.random(in: 0...255, using: &generator.rng)
                }
            })
    }

    @Test func lockTrafficRoundTrips() throws {
        var rng = SplitMix64(seed: 5)
        for _ in 0..<2_000 {
            let frame = randomFrame(&rng)
            let bytes = PeerCodec.encode(PeerBody.lockTraffic(frame))
            #expect(bytes[0] == 2)
            #expect(try PeerCodec.decodeBody(bytes) == .lockTraffic(frame))
            // Sealed in an envelope, and opened by its destination.
            let envelope = PeerEnvelope(
                sender: Member(node: 1, incarnation: 3), counter: rng.next(), destination: 2,
                body: .lockTraffic(frame))
            #expect(
                try codec(2).open(frame: codec(1).seal(envelope, challenge: challenge), challenge: challenge)
                    == envelope)
        }
        // A group message's body is kind 1, then the message.
        let message = GroupMessage.installed(ViewID(number: 7, coordinator: 1))
        #expect(PeerCodec.encode(PeerBody.group(message)) == [1] + PeerCodec.encode(message))
        #expect(try PeerCodec.decodeBody([1] + PeerCodec.encode(message)) == .group(message))
        // The opening of a connection: kind 3 and a zero byte.
        #expect(PeerCodec.encode(PeerBody.opening) == [3, 0])
        #expect(try PeerCodec.decodeBody([3, 0]) == .opening)
    }

    @Test func aKnownLockTrafficFrame() throws {
        // Node 1 incarnation 2, counter 4, to node 2: for its incarnation 3, payloads 300 to 302 ("lock", empty,
        // ff), acknowledging 5; on a connection whose challenge is 00 01 ... 0f. Computed independently (Python's
        // hashlib and hmac).
        let key = try ClusterKey(bytes: Array(repeating: 0x42, count: 32))
        let challenge = Array(0..<16 as Range<UInt8>)
        let envelope = PeerEnvelope(
            sender: Member(node: 1, incarnation: 2), counter: 4, destination: 2,
            body: .lockTraffic(
                LockTrafficFrame(
                    receiverIncarnation: 3, first: 300, acknowledged: 5, payloads: [Array("lock".utf8), [], [0xff]])))
        let sender = PeerFrameCodec(key: key, clusterName: "demo", localNode: 1, knownNodes: [1, 2])
        let expected = hexBytes(
            "00000053" + "444c4d47" + "0f" + "2a97516c354b6884"  // length, magic, version, cluster
                + "00000001" + "0000000000000002" + "0000000000000004" + "00000002"  // sender, counter, destination
                + "02" + "03" + "ac02" + "05" + "03"  // kind, receiver incarnation, first, acknowledged, count
                + "04" + "6c6f636b" + "00" + "01ff"  // the payloads
                + "fc746f9f4cf2edef1ffc41e262dd875235a838dbd47d5a3f30d2c99651bdf85f")  // HMAC
        #expect(sender.seal(envelope, challenge: challenge) == expected)
        let receiver = PeerFrameCodec(key: key, clusterName: "demo", localNode: 2, knownNodes: [1, 2])
        #expect(try receiver.open(frame: expected, challenge: challenge) == envelope)
    }

    @Test func malformedLockTrafficIsRefused() {
        let cases: [[UInt8]] = [
            [], [0], [4], [0xff],  // no body, unknown kinds
            [3], [3, 1],  // an opening without its zero byte, or with content
            [1], [1, 10],  // a group body without a message, or with an unknown one
            [2], [2, 1, 1],  // truncated
            [2, 0, 1, 0, 0],  // for incarnation 0
            [2, 1, 0, 0, 1, 1, 0x61],  // payloads numbered from 0
            [2, 1, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x01, 0, 2, 0, 0],  // numbered past 64 bits
            [2, 1, 1, 0, 2, 1, 0x61],  // a payload missing
            [2, 1, 1, 0, 1, 5, 1, 2],  // a payload longer than the bytes left
            [2, 1, 1, 0, 0xff, 0xff, 0xff, 0xff, 0x0f],  // a count beyond the bytes left
            [2, 1, 1, 0, 1, 1, 0x61, 0],  // a trailing byte
            [2, 1, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x7f, 0, 0],  // a varint past 64 bits
        ]
        for bytes in cases {
            #expect(throws: PeerDecodingError.self, "\(bytes)") { try PeerCodec.decodeBody(bytes) }
        }
        // The last payload numbered UInt64.max is fine.
        #expect(
            (try? PeerCodec.decodeBody([2, 1, 0xfe, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x01, 0, 2, 0, 0]))
                != nil)

        // Authenticated (the right key and challenge), but malformed: refused as such.
        var frame = codec(1).seal(
            PeerEnvelope(
                sender: Member(node: 1, incarnation: 1), counter: 1, destination: 2,
                body: .lockTraffic(
                    LockTrafficFrame(receiverIncarnation: 1, first: 1, acknowledged: 0, payloads: [[1, 2, 3]]))),
            challenge: challenge)
        frame.removeLast(32)
        frame[frame.count - 4] = 9  // the payload's length: past the end
        frame += codec(2).mac(challenge, frame[4...])
        do throws(PeerFrameError) {
            _ = try codec(2).open(frame: frame, challenge: challenge)
            Issue.record("a malformed frame opened")
        } catch {
            guard case .malformed = error else {
                Issue.record("expected malformed, got \(error)")
                return
            }
        }
    }

    /// The largest payload fills a frame of the largest size alone, with every number at its widest.
    @Test func theLargestPayloadFitsAFrame() throws {
        let frame = LockTrafficFrame(
            receiverIncarnation: .max, first: .max, acknowledged: .max,
            payloads: [Array(repeating: 7, count: GroupNode.maximumLockTrafficPayload)])
        let envelope = PeerEnvelope(
            sender: Member(node: 1, incarnation: .max), counter: .max, destination: 2, body: .lockTraffic(frame))
        let sealed = codec(1).seal(envelope, challenge: challenge)
        #expect(sealed.count <= 4 + PeerEnvelope.maximumLength)
        #expect(sealed.count >= PeerEnvelope.maximumLength - 16)
        #expect(try codec(2).open(frame: sealed, challenge: challenge) == envelope)
    }
}

extension TestCluster {
    /// A cluster whose first primary view has all three nodes (none is fenced while they start: a fenced life's
    /// lock traffic is forgotten, and the test's fence command does not stop it), and that is slow to suspect (the
    /// tests load the machine; they do not test failure detection).
    static func forLockTraffic() throws -> TestCluster { try TestCluster(waitForAll: true, suspectTimeout: 3000) }

    /// Waits until node `id` received at least `count` payloads (from every sender); the deadline only detects a
    /// hang, and its error tells what came from whom, and the views.
    func waitForLockTraffic(at id: NodeID, count: Int, seconds: Double = 60) async throws {
        do {
            try await lockTraffic[id]!.wait("\(count) payloads at node \(id)", seconds: seconds) { $0.count >= count }
        } catch is Timeout {
            let counts = Dictionary(grouping: lockTraffic[id]!.events, by: \.from).mapValues(\.count)
            let views = logs.keys.sorted().map { node in
                "node \(node): \(logs[node]!.events.views.map { "\($0.0)\($0.1 ? "" : " (not primary)")" })"
            }
            throw Timeout(
                description:
                    "timed out waiting for \(count) payloads at node \(id); received \(counts); views: \(views)")
        }
    }

    /// Runs `body` on `id`'s event loop.
    func onLoop<T: Sendable>(_ id: NodeID, _ body: @escaping @Sendable (GroupNode) -> T) async throws -> T {
        let node = nodes[id]!
        return try await node.eventLoop.submit { body(node) }.get()
    }

    /// What node `id` knows of its lock traffic with `peer`.
    func lockStatus(_ id: NodeID, with peer: NodeID) async throws -> LockTrafficStatus? {
        try await onLoop(id) { node in node.lockTrafficStatus().first { $0.node == peer.rawValue } }
    }

    /// Waits until node `id`'s lock traffic with `peer` is as `predicate` wants. Acknowledgements raise no event,
    /// so this looks every 10 ms; the deadline only detects a hang.
    func waitForLockStatus(
        _ what: String, _ id: NodeID, with peer: NodeID, seconds: Double = 60,
        until predicate: (LockTrafficStatus) -> Bool
    ) async throws {
        let deadline = ContinuousClock.now + .seconds(seconds)
        while true {
            let status = try await lockStatus(id, with: peer)
            if let status, predicate(status) { return }
            guard ContinuousClock.now < deadline else {
                throw Timeout(description: "timed out waiting for \(what); status: \(String(describing: status))")
            }
            try await Task.sleep(for: .milliseconds(10))
        }
    }

    /// The payloads node `id` received from `sender`, in order.
    func received(at id: NodeID, from sender: NodeID) -> [[UInt8]] {
        lockTraffic[id]!.events.filter { $0.from.node == sender }.map(\.payload)
    }
}

@Suite(.serialized) struct LockTrafficTests {
    /// Streams of random bursts: 10,000 payloads from node 1 to node 2, with 2,000 from node 3 to node 2 and 2,000
    /// from node 2 to node 1 under way at the same time. Each arrives once, in order.
    @Test func tenThousandPayloadsArriveOnceAndInOrder() async throws {
        let cluster = try TestCluster.forLockTraffic()
        try await cluster.startAll()
        _ = try await cluster.waitForPrimaryView(of: [1, 2, 3])

        // A burst queued in one turn of the loop leaves in one frame.
        let first = (0..<300).map { numbered($0) }
        _ = try await cluster.onLoop(1) { node in for payload in first { node.sendLockTraffic(payload, to: 2) } }
        try await cluster.waitForLockTraffic(at: 2, count: 300)
        let afterFirst = try #require(try await cluster.lockStatus(1, with: 2))
        #expect(afterFirst.framesSent == 1)
        #expect(afterFirst.payloadsSent == 300)
        #expect(afterFirst.incarnation == 1)

        var rng = SplitMix64(seed: 11)
        let streams: [(from: NodeID, to: NodeID, payloads: [[UInt8]])] = [
            (1, 2, first + (300..<10_000).map { numbered($0, size: Int.random(in: 0...64, using: &rng)) }),
            (3, 2, (0..<2_000).map { numbered($0, size: Int.random(in: 0...200, using: &rng)) }),
            (2, 1, (0..<2_000).map { numbered($0, size: Int.random(in: 0...16, using: &rng)) }),
        ]
        var offsets = [300, 0, 0]
        while offsets.indices.contains(where: { offsets[$0] < streams[$0].payloads.count }) {
            for (stream, (from, to, payloads)) in streams.enumerated() where offsets[stream] < payloads.count {
                let count = min(payloads.count - offsets[stream], Int.random(in: 1...400, using: &rng))
                let burst = Array(payloads[offsets[stream]..<offsets[stream] + count])
                offsets[stream] += count
                if Bool.random(using: &rng) {
                    // In one turn of the loop.
                    _ = try await cluster.onLoop(from) { node in
                        for payload in burst { node.sendLockTraffic(payload, to: to) }
                    }
                } else {
                    // From this thread: a task on the loop each.
                    let node = cluster.nodes[from]!
                    for payload in burst { node.sendLockTraffic(payload, to: to) }
                }
            }
        }
        try await cluster.waitForLockTraffic(at: 2, count: 12_000)
        try await cluster.waitForLockTraffic(at: 1, count: 2_000)
        for (from, to, payloads) in streams {
            let received = cluster.received(at: to, from: from)
            #expect(received.count == payloads.count, "\(from) to \(to)")
            #expect(received.map(index(of:)) == Array(0..<payloads.count), "\(from) to \(to)")
            #expect(received == payloads, "\(from) to \(to)")
            #expect(
                cluster.lockTraffic[to]!.events.filter { $0.from.node == from }.allSatisfy { $0.from.incarnation == 1 })
        }
        #expect(cluster.lockTraffic[3]!.events.isEmpty)
        let atReceiver = try #require(try await cluster.lockStatus(2, with: 1))
        #expect(atReceiver.payloadsDelivered == 10_000)
        #expect(atReceiver.payloadsSent == 2_000)
        // Every payload is acknowledged in the end: the senders' queues drain.
        for (from, to, payloads) in streams {
            try await cluster.waitForLockStatus("the queue from \(from) to \(to) drained", from, with: to) {
                $0.queuedPayloads == 0 && $0.queuedBytes == 0
            }
            let status = try #require(try await cluster.lockStatus(from, with: to))
            #expect(status.payloadsSent == payloads.count)
            #expect(status.payloadsDiscarded == 0)
            #expect(!status.failed)
        }
        // Batched: far fewer frames than payloads.
        #expect(try #require(try await cluster.lockStatus(1, with: 2)).framesSent < 2_000)
        try await cluster.shutdown()
    }

    /// The connection from node 1 to node 2 is closed again and again while 10,000 payloads stream, right after a
    /// burst was written on it: half the time flushed first (it arrives, and may come again), half the time not (it
    /// is lost with the connection, and must come again). So is the connection from node 2 to node 1, which carries
    /// the acknowledgements and a stream of its own. Every payload arrives once, in order.
    @Test func payloadsSurviveClosedConnections() async throws {
        let cluster = try TestCluster.forLockTraffic()
        try await cluster.startAll()
        _ = try await cluster.waitForPrimaryView(of: [1, 2, 3])
        var rng = SplitMix64(seed: 12)
        let forward = (0..<10_000).map { numbered($0, size: Int.random(in: 0...300, using: &rng)) }
        let backward = (0..<3_000).map { numbered($0, size: Int.random(in: 0...30, using: &rng)) }

        // The connections are up once a first payload has come each way.
        _ = try await cluster.onLoop(1) { node in node.sendLockTraffic(forward[0], to: 2) }
        _ = try await cluster.onLoop(2) { node in node.sendLockTraffic(backward[0], to: 1) }
        try await cluster.waitForLockTraffic(at: 2, count: 1)
        try await cluster.waitForLockTraffic(at: 1, count: 1)

        /// Writes the burst just queued on the current connection to `peer`, flushed or not, then closes that
        /// connection; returns whether a lossy close lost payloads that had been written (the connection was up).
        @Sendable func writeThenClose(_ node: GroupNode, to peer: NodeID, lossy: Bool) -> Bool {
            let before = node.lockPeers[peer]!.written
            node.writeLockTraffic(to: peer, acknowledgementAlone: false)
            if !lossy { node.transport?.flush() }
            let wrote = node.lockPeers[peer]!.written > before
            node.closeConnection(to: peer)
            return lossy && wrote
        }
        var sent = (forward: 1, backward: 1)
        var lostForward = 0
        var lossyCloses = 0
        var burst = 0
        while sent.forward < forward.count || sent.backward < backward.count {
            burst += 1
            let closeForward = burst % 4 == 0
            let lossyForward = burst % 8 == 0
            if lossyForward {
                lossyCloses += 1
                // Everything sent so far arrived, so the connection it came on is up (nothing else closes it): the
                // burst below is written on it, and lost.
                let target = sent.forward
                try await cluster.waitForLockTraffic(at: 2, count: target)
            }
            let forwardBurst = Array(forward[sent.forward..<min(forward.count, sent.forward + 250)])
            sent.forward += forwardBurst.count
            let lost = try await cluster.onLoop(1) { node -> Bool in
                for payload in forwardBurst { node.sendLockTraffic(payload, to: 2) }
                return closeForward && writeThenClose(node, to: 2, lossy: lossyForward)
            }
            if lost { lostForward += 1 }
            let backwardBurst = Array(backward[sent.backward..<min(backward.count, sent.backward + 80)])
            sent.backward += backwardBurst.count
            let closeBackward = burst % 7 == 3
            let lossyBackward = burst % 14 == 3
            _ = try await cluster.onLoop(2) { node in
                for payload in backwardBurst { node.sendLockTraffic(payload, to: 1) }
                if closeBackward { _ = writeThenClose(node, to: 1, lossy: lossyBackward) }
            }
        }
        try await cluster.waitForLockTraffic(at: 2, count: forward.count)
        try await cluster.waitForLockTraffic(at: 1, count: backward.count)
        let atTwo = cluster.received(at: 2, from: 1)
        #expect(atTwo.count == forward.count)
        #expect(atTwo.map(index(of:)) == Array(0..<forward.count))
        #expect(atTwo == forward)
        #expect(cluster.received(at: 1, from: 2) == backward)

        try await cluster.waitForLockStatus("the queue from 1 to 2 drained", 1, with: 2) { $0.queuedPayloads == 0 }
        try await cluster.waitForLockStatus("the queue from 2 to 1 drained", 2, with: 1) { $0.queuedPayloads == 0 }
        let sender = try #require(try await cluster.lockStatus(1, with: 2))
        #expect(sender.payloadsSent == forward.count)
        #expect(lossyCloses >= 4)
        #expect(lostForward == lossyCloses)
        #expect(sender.payloadsResent > 0, "\(sender)")
        let receiver = try #require(try await cluster.lockStatus(2, with: 1))
        #expect(receiver.payloadsDelivered == forward.count)
        #expect(receiver.payloadsSent == backward.count)
        #expect(receiver.framesDropped == 0)
        try await cluster.shutdown()
    }

    /// More than 16 MiB queued in one turn (a payload of the largest size among them) leaves in several frames,
    /// and arrives whole, in order.
    @Test func aBatchLargerThanAFrameIsSplit() async throws {
        let cluster = try TestCluster.forLockTraffic()
        try await cluster.startAll()
        _ = try await cluster.waitForPrimaryView(of: [1, 2, 3])
        var payloads = [numbered(0, size: 3 << 20), numbered(1, size: GroupNode.maximumLockTrafficPayload - 4)]
        payloads += (2..<502).map { numbered($0, size: 100) }
        payloads += [numbered(502, size: 5 << 20), numbered(503, size: 0)]
        #expect(payloads.reduce(0) { $0 + $1.count } > PeerEnvelope.maximumLength + (8 << 20))
        let batch = payloads
        _ = try await cluster.onLoop(1) { node in for payload in batch { node.sendLockTraffic(payload, to: 2) } }
        try await cluster.waitForLockTraffic(at: 2, count: batch.count, seconds: 120)
        let received = cluster.received(at: 2, from: 1)
        #expect(received.count == payloads.count)
        #expect(received.map(\.count) == payloads.map(\.count))
        #expect(received == payloads)
        let status = try #require(try await cluster.lockStatus(1, with: 2))
        #expect(status.framesSent >= 4, "\(status)")
        #expect(status.payloadsSent == payloads.count)
        try await cluster.shutdown()
    }

    /// Node 3 crashes with payloads queued for it, and comes back as incarnation 2: what was queued for its first
    /// life is discarded, never delivered to the second; lock traffic with the second life starts over.
    @Test func aNewLifeStartsOverAndWhatWasQueuedForTheOldOneIsDiscarded() async throws {
        let cluster = try TestCluster.forLockTraffic()
        try await cluster.startAll()
        let first = try await cluster.waitForPrimaryView(of: [1, 2, 3])
        _ = try await cluster.onLoop(1) { node in node.sendLockTraffic(numbered(0), to: 3) }
        _ = try await cluster.onLoop(3) { node in node.sendLockTraffic(numbered(0), to: 1) }
        try await cluster.waitForLockTraffic(at: 3, count: 1)
        try await cluster.waitForLockTraffic(at: 1, count: 1)
        try await cluster.waitForLockStatus("node 3 acknowledged", 1, with: 3) { $0.queuedPayloads == 0 }

        try await cluster.nodes[3]!.stop().get()
        let boundToFirstLife = try await cluster.onLoop(1) { node -> Bool in
            for index in 1...5 { node.sendLockTraffic(numbered(index), to: 3) }
            return node.lockPeers[3]?.incarnation == 1 && node.view?.contains(Member(node: 3, incarnation: 1)) == true
        }
        try #require(boundToFirstLife)
        try await cluster.start(3, incarnation: 2)
        let second = try await cluster.waitForPrimaryView(of: [1, 2, 3], after: first)
        #expect(
            cluster.logs[1]!.events.views.last { $0.0.id == second }?.0.members.contains(
                Member(node: 3, incarnation: 2)) == true)
        let status = try #require(try await cluster.lockStatus(1, with: 3))
        #expect(status.incarnation == 2)
        #expect(status.payloadsDiscarded == 5)
        #expect(status.queuedPayloads == 0)

        // The new life hears from payload 1 on, and node 1 from it.
        _ = try await cluster.onLoop(1) { node in for index in 10..<20 { node.sendLockTraffic(numbered(index), to: 3) }
        }
        _ = try await cluster.onLoop(3) { node in for index in 10..<20 { node.sendLockTraffic(numbered(index), to: 1) }
        }
        try await cluster.waitForLockTraffic(at: 3, count: 10)
        try await cluster.waitForLockTraffic(at: 1, count: 11)
        #expect(
            cluster.lockTraffic[3]!.events
                == (10..<20).map { LockDelivery(payload: numbered($0), from: Member(node: 1, incarnation: 1)) })
        #expect(
            cluster.lockTraffic[1]!.events.map(\.from) == [Member(node: 3, incarnation: 1)]
                + Array(repeating: Member(node: 3, incarnation: 2), count: 10))
        #expect(cluster.received(at: 1, from: 3) == [numbered(0)] + (10..<20).map { numbered($0) })
        try await cluster.shutdown()
    }

    /// Past the queue limit, lock traffic to that peer fails: logged, its queue discarded, later payloads too.
    @Test func pastTheQueueLimitLockTrafficToThePeerFails() async throws {
        let cluster = try TestCluster.forLockTraffic()
        try await cluster.start(1)
        let status = try await cluster.onLoop(1) { node -> LockTrafficStatus? in
            node.lockTrafficQueueLimit = 1_000
            for index in 0..<10 { node.sendLockTraffic(numbered(index, size: 96), to: 2) }  // 100 bytes each
            node.sendLockTraffic(numbered(10), to: 2)  // one too many
            node.sendLockTraffic(numbered(11), to: 2)  // after the failure
            return node.lockTrafficStatus().first { $0.node == 2 }
        }
        #expect(status?.failed == true)
        #expect(status?.payloadsDiscarded == 12)
        #expect(status?.queuedPayloads == 0)
        #expect(status?.queuedBytes == 0)
        try await cluster.shutdown()
    }
}
