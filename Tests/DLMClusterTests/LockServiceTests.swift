import DLMCluster
import DLMCore
import DLMWire
import Foundation
import GroupServices
import Testing

/// The node's lock service in-process: the ordering rules that the shell used to carry (replies held for the
/// store, the stop gate, replies of work in slices), as transcripts of frames in and out.
@Suite struct LockServiceTests {
    typealias H = ServiceHarness

    /// A grant, a queued request with its blocking callback, an unlock that grants the waiter.
    @Test func requestsRepliesAndFramesForOthers() {
        var h = H()
        let a = h.connect("a")
        let b = h.connect("b")
        h.send(a, H.open(1))
        #expect(h.out() == ["a: LOCKSPACE tag 1 id 0 created"])
        h.send(a, H.lock(2, "r", .ex))
        #expect(h.out() == ["a: COMPLETION tag 2 lock 1 granted EX"])
        h.send(b, H.lock(3, "r", .pr))
        // The reply (OK: the request waits) goes before the callback it caused.
        #expect(h.out() == ["b: OK tag 3 lock 2", "a: BAST lock 1 PR"])
        h.send(a, H.unlock(4, 1))
        #expect(h.out() == ["a: COMPLETION tag 4 lock 1 EUNLOCK", "b: COMPLETION tag 0 lock 2 granted PR"])
        h.send(b, .lock(LockMessage(tag: 5, lockspace: 9, mode: .ex, name: Array("x".utf8))))
        #expect(h.out() == ["b: ERROR tag 5 ENOENT"])
    }

    /// A user's orphans count against its `maxLocksPerUser` until they go: uid 1000 leaves two persistent locks
    /// at its limit of two, and its next connection's LOCK is refused (EAGAIN), but it may adopt them (an adoption
    /// adds no lock); another user is not held back by them, and their purge makes room.
    @Test func orphansCountAgainstTheirUser() {
        var configuration = ServiceConfiguration(nodeID: 1)
        configuration.maxLocksPerUser = 2
        var h = H(configuration: configuration)
        let a = h.connect("a", credentials: ClientCredentials(pid: 10, uid: 1000))
        h.send(a, H.open(1, mode: 0o666))
        _ = h.out()
        h.send(a, H.lock(2, "r1", .ex, .persistent))
        h.send(a, H.lock(3, "r2", .ex, .persistent))
        #expect(h.out() == ["a: COMPLETION tag 2 lock 1 granted EX", "a: COMPLETION tag 3 lock 2 granted EX"])
        h.handle(.closed(a))
        let b = h.connect("b", credentials: ClientCredentials(pid: 11, uid: 1000))
        let c = h.connect("c", credentials: ClientCredentials(pid: 12, uid: 1001))
        for client in [b, c] { h.send(client, H.open(1)) }
        _ = h.out()
        h.send(b, H.lock(2, "s1", .nl))
        h.send(c, H.lock(2, "s1", .nl))
        h.send(b, H.lock(3, "r1", .ex, .orphan))
        #expect(
            h.out() == [
                "b: ERROR tag 2 EAGAIN", "c: COMPLETION tag 2 lock 3 granted NL",
                "b: COMPLETION tag 3 lock 1 granted EX",
            ])
        h.send(b, .purge(tag: 4, lockspace: 0, nodeID: 0, pid: 10))
        h.send(b, H.lock(5, "s1", .nl))
        #expect(h.out() == ["b: PURGED tag 4 count 1", "b: COMPLETION tag 5 lock 2 granted NL"])
    }

    /// `maxLocksPerConnection` and `maxLocksPerUser`: a LOCK past either is refused with EAGAIN (and counted in
    /// the status), waiting requests and adopted orphans count, an unlock makes room, another user is not held
    /// back, and a client without a kernel uid counts for its connection only.
    @Test func locksPastTheConnectionOrTheUserLimitAreRefused() {
        var configuration = ServiceConfiguration(nodeID: 1)
        configuration.maxLocksPerConnection = 3
        configuration.maxLocksPerUser = 4
        var h = H(configuration: configuration)
        let a = h.connect("a", credentials: ClientCredentials(pid: 10, uid: 1000))
        let b = h.connect("b", credentials: ClientCredentials(pid: 11, uid: 1000))
        let c = h.connect("c", credentials: ClientCredentials(pid: 12, uid: 1001))
        let t = h.connect("t")
        h.send(a, H.open(1, mode: 0o666))
        for client in [b, c, t] { h.send(client, H.open(1)) }
        _ = h.out()
        h.send(a, H.lock(2, "r1", .ex))
        h.send(a, H.lock(3, "r2", .ex))
        h.send(b, H.lock(2, "r1", .ex))  // waits: a waiting request is a lock too
        h.send(a, H.lock(4, "r3", .ex))
        h.send(a, H.lock(5, "r4", .ex))
        #expect(
            h.out() == [
                "a: COMPLETION tag 2 lock 1 granted EX", "a: COMPLETION tag 3 lock 2 granted EX", "b: OK tag 2 lock 3",
                "a: BAST lock 1 EX", "a: COMPLETION tag 4 lock 4 granted EX", "a: ERROR tag 5 EAGAIN",
            ])
        // Connection b holds one (waiting): the user's fifth is refused, another user's is not.
        h.send(b, H.lock(3, "s1", .ex))
        h.send(c, H.lock(2, "s1", .ex))
        #expect(h.out() == ["b: ERROR tag 3 EAGAIN", "c: COMPLETION tag 2 lock 5 granted EX"])
        // An unlock makes room.
        h.send(a, H.unlock(6, 4))
        h.send(b, H.lock(4, "s2", .ex))
        #expect(h.out() == ["a: COMPLETION tag 6 lock 4 EUNLOCK", "b: COMPLETION tag 4 lock 4 granted EX"])
        // A client without a kernel uid: its connection's limit only.
        for tag in UInt32(2)...5 { h.send(t, H.lock(tag, "t\(tag)", .nl)) }
        #expect(
            h.out() == [
                "t: COMPLETION tag 2 lock 6 granted NL", "t: COMPLETION tag 3 lock 7 granted NL",
                "t: COMPLETION tag 4 lock 8 granted NL", "t: ERROR tag 5 EAGAIN",
            ])
        h.send(t, .query(tag: 9, kind: .status, argument: []))
        let output = h.service.takeOutput()
        guard case .queryReply(_, let json)? = output.frames.last?.message,
            let report = try? JSONDecoder().decode(StatusReport.self, from: Data(json))
        else {
            Issue.record("no status report: \(output.frames)")
            return
        }
        #expect(report.limits?.locksRefused == 3)
        #expect(report.limits?.maxLocksPerConnection == 3 && report.limits?.maxLocksPerUser == 4)
    }

    /// With a store that makes replies wait (`batch`, `sync`): the reply of a change to persistent state, and every
    /// later frame of that connection, wait for the commit; other connections are not held up.
    /// A connection that says nothing is refused (ERROR ETIMEDOUT, tag 0) and closed once `helloTimeout` has
    /// passed since the tick before it came; one that said HELLO is not.
    @Test func aConnectionWithoutHelloIsClosedAfterTheDeadline() {
        var h = ServiceHarness()
        let second: UInt64 = 1_000_000_000
        // A connection made before the first tick counts from that tick (the clock is the uptime: hours, maybe).
        let early = h.service.connect()
        h.names[early] = "early"
        h.handle(.tick(now: 5_000 * second))
        #expect(h.out().isEmpty && h.closed.isEmpty)
        h.send(early, .hello(Hello(pid: 1, clientName: "early")))
        _ = h.out()
        let silent = h.service.connect()
        h.names[silent] = "silent"
        let talker = h.connect("talker")
        h.handle(.tick(now: 5_009 * second))
        #expect(h.out().isEmpty && h.closed.isEmpty)
        h.handle(.tick(now: 5_011 * second))
        #expect(h.out() == ["silent: ERROR tag 0 ETIMEDOUT"])
        #expect(h.closed == ["silent"])
        h.send(talker, .ping(tag: 7))
        h.send(early, .ping(tag: 8))
        #expect(h.out() == ["talker: PONG tag 7", "early: PONG tag 8"])
    }

    @Test func repliesWaitForTheCommitOfWhatTheyChanged() {
        var h = H(configuration: ServiceConfiguration(nodeID: 1, repliesWaitForCommits: true, hasStore: true))
        let a = h.connect("a")
        let b = h.connect("b")
        h.send(a, H.open(1))
        #expect(h.out() == [])
        #expect(h.commit() == ["a: LOCKSPACE tag 1 id 0 created"])
        h.send(a, H.lock(2, "p", .ex, .persistent))
        h.send(a, .ping(tag: 3))
        h.send(b, .ping(tag: 4))
        #expect(h.out() == ["b: PONG tag 4"])
        #expect(h.commit() == ["a: COMPLETION tag 2 lock 1 granted EX", "a: PONG tag 3"])
        // Nothing persistent: nothing waits.
        h.send(a, H.lock(5, "q", .ex))
        #expect(h.out() == ["a: COMPLETION tag 5 lock 2 granted EX"])
    }

    /// A client that half-closes gets every answer, the held ones after their commit, then the connection closes.
    @Test func aHalfClosedConnectionGetsItsHeldRepliesThenCloses() {
        var h = H(configuration: ServiceConfiguration(nodeID: 1, repliesWaitForCommits: true, hasStore: true))
        let a = h.connect("a")
        h.send(a, H.open(1))
        _ = h.commit()
        h.send(a, H.lock(2, "p", .pr, .persistent))
        h.handle(.inputEnded(a))
        #expect(h.out() == [] && h.closed.isEmpty)
        #expect(h.commit() == ["a: COMPLETION tag 2 lock 1 granted PR"])
        #expect(h.closed == ["a"])
    }

    /// A client that goes while the node is stopped and while its replies wait for a commit: the commit sends
    /// nothing to it, and its exit still runs when the node serves again (its EX is released for the waiter). The
    /// connection used to be forgotten at the commit, and its locks were never released.
    @Test func anExitHeldByTheGateRunsEvenIfItsRepliesWereCommittedMeanwhile() {
        var h = H(
            configuration: ServiceConfiguration(
                nodeID: 1, repliesWaitForCommits: true, hasStore: true, isClusterMember: true))
        let view = H.soloView
        h.handle(.viewInstalled(view, primary: true))
        let a = h.connect("a")
        let b = h.connect("b")
        h.send(a, H.open(1))
        h.send(b, H.open(1))
        _ = h.commit()
        h.send(a, H.lock(2, "p", .nl, .persistent))
        h.send(a, H.lock(3, "r", .ex))
        h.send(b, H.lock(2, "r", .ex))
        #expect(h.out() == ["b: OK tag 2 lock 3"])  // a's replies wait for the commit
        h.handle(.viewInstalled(view, primary: false))
        h.handle(.closed(a))
        #expect(h.commit() == [])
        h.handle(.viewInstalled(view, primary: true))
        #expect(h.out() == ["b: COMPLETION tag 0 lock 3 granted EX"])
    }

    /// A cluster member outside a primary view: lock requests and disconnections wait, in order; PING and QUERY
    /// are answered at once, unless earlier requests of their connection wait; a primary view runs them all.
    @Test func theGateHoldsRequestsUntilAPrimaryView() {
        var h = H(configuration: ServiceConfiguration(nodeID: 1, isClusterMember: true))
        #expect(h.service.waitingFor == ["view agreement"])
        let a = h.connect("a")
        let b = h.connect("b")
        h.send(a, .ping(tag: 1))
        #expect(h.out() == ["a: PONG tag 1"])
        h.send(a, H.open(2))
        h.send(a, H.lock(3, "r", .ex))
        h.send(a, .ping(tag: 4))
        h.send(b, .query(tag: 5, kind: .status, argument: []))
        #expect(h.out() == ["b: QUERY_REPLY tag 5"])
        h.handle(.closed(b))
        #expect(h.service.heldInputCount == 4)
        let view = H.soloView
        h.handle(.viewInstalled(view, primary: false))
        #expect(h.out() == [])
        h.handle(.viewInstalled(view, primary: true))
        #expect(
            h.out() == [
                "a: LOCKSPACE tag 2 id 0 created", "a: COMPLETION tag 3 lock 1 granted EX", "a: PONG tag 4",
            ])
        #expect(h.service.heldInputCount == 0 && h.service.waitingFor.isEmpty)
    }

    /// A client unlocks its persistent lock and goes while the node is stopped: when the node serves again the
    /// unlock runs before the exit, so no orphan is left (the held frames of a gone connection used to be dropped,
    /// and its exit made the lock an orphan).
    @Test func framesHeldByTheGateRunBeforeTheExitOfTheirGoneClient() {
        var h = H(configuration: ServiceConfiguration(nodeID: 1, isClusterMember: true))
        h.handle(.viewInstalled(H.soloView, primary: true))
        let a = h.connect("a")
        h.send(a, H.open(1))
        h.send(a, H.lock(2, "p", .ex, .persistent))
        #expect(h.out().contains("a: COMPLETION tag 2 lock 1 granted EX"))
        let b = h.connect("b")
        h.send(b, H.open(1))
        #expect(h.out() == ["b: LOCKSPACE tag 1 id 0"])
        let view = H.soloView
        h.handle(.viewInstalled(view, primary: false))
        h.send(a, H.unlock(3, 1))
        h.handle(.closed(a))
        h.handle(.viewInstalled(view, primary: true))
        #expect(h.out() == [])
        #expect(h.service.engine.lockCount == 0)
        h.send(b, H.lock(2, "p", .ex, .noQueue))
        #expect(h.out() == ["b: COMPLETION tag 2 lock 1 granted EX"])
    }

    /// A client half-closes while its request is held by the gate: it gets the answer when the node serves again,
    /// then the close (it used to be closed at once, unanswered, and the request never ran).
    @Test func aHalfClosedConnectionGetsTheAnswersOfFramesHeldByTheGate() {
        var h = H(configuration: ServiceConfiguration(nodeID: 1, isClusterMember: true))
        let view = H.soloView
        let a = h.connect("a")
        h.send(a, H.open(1))
        h.send(a, H.lock(2, "r", .ex))
        h.handle(.inputEnded(a))
        #expect(h.out() == [] && h.closed.isEmpty)
        h.handle(.viewInstalled(view, primary: true))
        #expect(h.out() == ["a: LOCKSPACE tag 1 id 0 created", "a: COMPLETION tag 2 lock 1 granted EX"])
        #expect(h.closed == ["a"])
        h.handle(.closed(a))
        #expect(h.service.engine.lockCount == 0)
    }

    /// A client's UNLOCK of its persistent lock waits behind its FORCEUNLOCK done in slices, and the client goes
    /// meanwhile: the unlock still runs, then the owner exits; no orphan is left.
    @Test func framesBehindWorkInSlicesRunBeforeTheExitOfTheirGoneClient() {
        var h = H(configuration: ServiceConfiguration(nodeID: 1, engine: EngineConfig(bulkSlice: 4)))
        let a = h.connect("a")
        h.send(a, H.open(1))
        h.send(a, H.lock(2, "p", .ex, .persistent))
        h.send(a, H.lock(3, "parent", .ex))
        for i in 0..<10 { h.send(a, H.lock(UInt32(10 + i), "c\(i)", .ex, parent: 2)) }
        #expect(h.out().count == 13)
        h.send(a, H.unlock(30, 2, .forceUnlock))
        h.send(a, H.unlock(31, 1))
        h.handle(.closed(a))
        _ = h.slices()
        #expect(h.service.engine.lockCount == 0)
    }

    /// `max_connections` and `max_lockspaces`: one connection too many gets ERROR EAGAIN (tag 0) and is closed;
    /// creating one lockspace too many is EAGAIN while opening an existing one still works; the status report
    /// counts both refusals. A connection that goes makes room.
    @Test func connectionAndLockspaceLimitsRefuseWithEAGAIN() throws {
        var configuration = ServiceConfiguration(nodeID: 1)
        configuration.maxConnections = 2
        configuration.maxLockspaces = 1
        var h = H(configuration: configuration)
        let a = h.connect("a")
        let b = h.connect("b")
        let c = h.service.connect()
        h.names[c] = "c"
        #expect(h.out() == ["c: ERROR tag 0 EAGAIN"])
        #expect(h.closed == ["c"])
        h.handle(.closed(c))
        h.send(a, H.open(1))
        h.send(b, H.open(1, "other"))
        h.send(b, H.open(2))
        #expect(h.out() == ["a: LOCKSPACE tag 1 id 0 created", "b: ERROR tag 1 EAGAIN", "b: LOCKSPACE tag 2 id 0"])
        h.send(a, .query(tag: 3, kind: .status, argument: []))
        let output = h.service.takeOutput()
        guard case .queryReply(_, let json) = output.frames.first?.message else {
            Issue.record("no status report: \(output.frames)")
            return
        }
        let limits = try #require(try JSONDecoder().decode(StatusReport.self, from: Data(json)).limits)
        #expect(limits.maxConnections == 2 && limits.maxLockspaces == 1)
        #expect(limits.connectionsRefused == 1 && limits.lockspacesRefused == 1)
        h.handle(.closed(b))
        let d = h.service.connect()
        h.names[d] = "d"
        #expect(h.out() == [])
    }

    /// FORCEUNLOCK of a parent with more sub-locks than a slice: every sub-lock's completion, then the parent's,
    /// tagged (the reply), and only then the PING sent after it.
    @Test func aForceUnlockInSlicesAnswersBeforeTheRequestsAfterIt() {
        var h = H(configuration: ServiceConfiguration(nodeID: 1, engine: EngineConfig(bulkSlice: 4)))
        let a = h.connect("a")
        h.send(a, H.open(1))
        h.send(a, H.lock(2, "parent", .ex))
        for i in 0..<10 { h.send(a, H.lock(UInt32(10 + i), "c\(i)", .ex, parent: 1)) }
        #expect(h.out().count == 12)
        h.send(a, H.unlock(30, 1, .forceUnlock))
        h.send(a, .ping(tag: 31))
        let lines = h.out() + h.slices()
        #expect(lines.count == 12)
        #expect(lines.prefix(10).allSatisfy { $0.hasPrefix("a: COMPLETION tag 0 lock ") && $0.hasSuffix("EUNLOCK") })
        #expect(Array(lines.suffix(2)) == ["a: COMPLETION tag 30 lock 1 EUNLOCK", "a: PONG tag 31"])
    }

    /// A purge in slices answers PURGED at its end; the requests after it wait.
    @Test func aPurgeInSlicesAnswersBeforeTheRequestsAfterIt() {
        var h = H(configuration: ServiceConfiguration(nodeID: 1, engine: EngineConfig(bulkSlice: 4)))
        h.orphan(20, pid: 77)
        let a = h.connect("a")
        h.send(a, .purge(tag: 1, lockspace: 0, nodeID: 0, pid: 77))
        h.send(a, .ping(tag: 2))
        #expect(h.out() + h.slices() == ["a: PURGED tag 1 count 20", "a: PONG tag 2"])
        #expect(h.service.engine.lockCount == 0)
    }

    /// With a store: a purge in slices answers after the commit of its last slice, the PING after it follows, and
    /// frames of later inputs of others do not wait for changes that are not theirs.
    @Test func aPurgeInSlicesWithAStoreWaitsForItsCommitOnly() {
        var h = H(
            configuration: ServiceConfiguration(
                nodeID: 1, engine: EngineConfig(bulkSlice: 4), repliesWaitForCommits: true, hasStore: true))
        h.orphan(20, pid: 77)
        let a = h.connect("a")
        let b = h.connect("b")
        h.send(a, .purge(tag: 1, lockspace: 0, nodeID: 0, pid: 77))
        h.send(a, .ping(tag: 2))
        #expect(h.slices() == [])
        h.send(b, .ping(tag: 3))
        #expect(h.out() == ["b: PONG tag 3"])
        #expect(h.commit() == ["a: PURGED tag 1 count 20", "a: PONG tag 2"])
    }

    /// A malformed frame: ERROR with tag 0, and that connection closes; a node shutting down says GOODBYE.
    @Test func aBadFrameClosesItsConnectionAndShutdownSaysGoodbye() {
        var h = H()
        let a = h.connect("a")
        let b = h.connect("b")
        h.handle(.malformed(a, .protocolError, "bad"))
        #expect(h.out() == ["a: ERROR tag 0 EPROTO"] && h.closed == ["a"])
        h.handle(.shutdown)
        #expect(h.out() == ["b: GOODBYE"] && h.closed == ["a", "b"])
        _ = b
    }
}
