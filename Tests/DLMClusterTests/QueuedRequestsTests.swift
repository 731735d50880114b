import DLMCore
import DLMWire
import Foundation
import Testing

@testable import DLMCluster

/// `max_queued_requests` (LockService+Backpressure.swift): the requests a connection sent that cannot run yet wait
/// in dlmd's memory; at the cap the shell is told to stop reading from that connection, and once half of them
/// have run, to read again. Nothing is refused or reordered, and no other connection is touched.
@Suite struct QueuedRequestsTests {
    typealias H = ServiceHarness

    /// The shell's part of the next batch: the frames, and the connections to stop or resume reading.
    static func take(_ h: inout H) -> (frames: [String], pauses: [String]) {
        let output = h.service.takeOutput()
        return (
            output.frames.map { "\(h.names[$0.connection] ?? "?"): \(H.line($0.message))" },
            output.readPauses.map { "\(h.names[$0.connection] ?? "?") \($0.paused ? "paused" : "resumed")" }
        )
    }

    /// Requests behind a purge done in slices: the fourth queued request pauses reading (cap 4); another client is
    /// served meanwhile; when the purge ends, every queued request runs, in order, and reading resumes.
    @Test func requestsBehindAReplyInSlicesPauseReadingAtTheCap() {
        var configuration = ServiceConfiguration(nodeID: 1, engine: EngineConfig(bulkSlice: 4))
        configuration.maxQueuedRequests = 4
        var h = H(configuration: configuration)
        h.orphan(20, pid: 77)
        let a = h.connect("a")
        let b = h.connect("b")
        h.send(a, .purge(tag: 1, lockspace: 0, nodeID: 0, pid: 77))
        for tag in UInt32(2)...4 { h.send(a, .ping(tag: tag)) }
        #expect(Self.take(&h).pauses == [])
        h.send(a, .ping(tag: 5))
        #expect(Self.take(&h).pauses == ["a paused"])
        // Frames of the read that reached the cap are still taken (no second pause), and others are served.
        h.send(a, .ping(tag: 6))
        h.send(b, .ping(tag: 7))
        #expect(Self.take(&h) == (["b: PONG tag 7"], []))
        var status = Self.status(&h, b)
        #expect(status?.maxQueuedRequests == 4 && status?.readsPausedForQueue == 1 && status?.queuePauses == 1)
        var frames: [String] = []
        var pauses: [String] = []
        for _ in 0..<10 where !frames.contains(where: { $0.hasPrefix("a: PURGED") }) {
            h.handle(.bulkSlice)
            let batch = Self.take(&h)
            frames += batch.frames
            pauses += batch.pauses
        }
        #expect(frames == ["a: PURGED tag 1 count 20"] + (2...6).map { "a: PONG tag \($0)" })
        #expect(pauses == ["a resumed"])
        status = Self.status(&h, b)
        #expect(status?.readsPausedForQueue == 0 && status?.queuePauses == 1)
    }

    /// Requests held while a cluster member is stopped count too; a connection that goes while paused is
    /// forgotten (no resume for it).
    @Test func requestsHeldWhileStoppedPauseReadingAndAGoneConnectionIsForgotten() {
        var configuration = ServiceConfiguration(nodeID: 1, isClusterMember: true)
        configuration.maxQueuedRequests = 2
        var h = H(configuration: configuration)
        let a = h.connect("a")
        let b = h.connect("b")
        h.send(a, H.open(1))
        h.send(a, H.lock(2, "r", .pr))
        h.send(b, H.open(1))
        h.send(b, H.lock(2, "s", .pr))
        #expect(Self.take(&h) == ([], ["a paused", "b paused"]))
        h.handle(.closed(b))
        h.handle(.viewInstalled(H.soloView, primary: true))
        #expect(
            Self.take(&h)
                == (["a: LOCKSPACE tag 1 id 0 created", "a: COMPLETION tag 2 lock 1 granted PR"], ["a resumed"]))
        #expect(h.service.queuePausedCount == 0)
    }

    static func status(_ h: inout H, _ id: ConnectionID) -> StatusReport.Limits? {
        h.service.handle(.query(id, .query(tag: 99, kind: .status, argument: []), ReportEnvironment()))
        for (_, message) in h.service.takeOutput().frames {
            if case .queryReply(_, let json) = message {
                return try? JSONDecoder().decode(StatusReport.self, from: Data(json)).limits
            }
        }
        return nil
    }
}
