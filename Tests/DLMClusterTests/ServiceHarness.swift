import DLMCluster
import DLMCore
import DLMWire
import GroupServices
import Testing

/// A `LockService` driven in-process, as its shell drives it, with clients named by letters: every test reads as
/// a transcript of frames in and frames out.
///
///     let a = h.connect("a")
///     h.send(a, .lock(...))
///     #expect(h.out() == ["a: COMPLETION tag 2 lock 1 granted EX"])
struct ServiceHarness {
    var service: LockService
    var names: [ConnectionID: String] = [:]
    /// Store generations written and not yet reported committed.
    var uncommitted: [UInt64] = []
    var closed: [String] = []
    /// Messages for other nodes that `out` took (a ClusterHarness carries them).
    var peerMessages: [(to: UInt32, message: PeerMessage)] = []
    var now: Instant = 1_000_000

    init(configuration: ServiceConfiguration = ServiceConfiguration(nodeID: 1)) {
        service = LockService(configuration: configuration)
    }

    /// A client that has said HELLO (its reply dropped).
    mutating func connect(_ name: String, pid: UInt32 = 100, credentials: ClientCredentials? = nil) -> ConnectionID {
        let id = service.connect(credentials: credentials)
        names[id] = name
        send(id, .hello(Hello(pid: pid, clientName: name)))
        _ = out()
        return id
    }

    mutating func send(_ id: ConnectionID, _ message: ClientMessage) {
        if case .query = message {
            service.handle(.query(id, message, ReportEnvironment()))
        } else {
            service.handle(.frame(id, message, now: now))
        }
    }

    mutating func handle(_ input: ServiceInput) { service.handle(input) }

    /// The messages for other nodes taken so far, and none left. (A cluster harness reaches a node through its
    /// dictionary: a mutating call works in place there, where a read of a field copies the whole harness, a
    /// step that grows with the node's state.)
    mutating func takePeerMessages() -> [(to: UInt32, message: PeerMessage)] {
        defer { peerMessages = [] }
        return peerMessages
    }

    /// The clients' names, by connection (mutating for the same reason).
    mutating func clientNames() -> [ConnectionID: String] { names }

    /// The frames the shell would write now, one line each ("a: OK tag 1 lock 2"); commits are remembered for
    /// `commit`, closes in `closed`.
    mutating func out() -> [String] {
        let output = service.takeOutput()
        if let commit = output.commit { uncommitted.append(commit.generation) }
        closed += output.closes.map { names[$0] ?? "?" }
        peerMessages += output.peerMessages
        return output.frames.map { "\(names[$0.connection] ?? "?"): \(Self.line($0.message))" }
    }

    /// Reports every written generation committed; returns the frames that go out then.
    mutating func commit() -> [String] {
        var lines = out()
        guard let last = uncommitted.last else { return lines }
        uncommitted = []
        service.handle(.committed(generation: last))
        lines += out()
        return lines
    }

    /// A client of `pid` takes `count` persistent PR locks and goes; its locks become orphans (every commit and
    /// slice of that is taken, the frames dropped).
    mutating func orphan(_ count: Int, pid: UInt32) {
        let doomed = connect("doomed", pid: pid)
        send(doomed, Self.open(1))
        for i in 0..<count { send(doomed, Self.lock(UInt32(2 + i), "o\(i)", .pr, .persistent)) }
        _ = commit()
        handle(.closed(doomed))
        _ = slices()
        _ = commit()
    }

    /// Runs every slice of work in slices; the frames that came of them.
    mutating func slices() -> [String] {
        var lines: [String] = []
        while true {
            let output = service.takeOutput()
            if let commit = output.commit { uncommitted.append(commit.generation) }
            lines += output.frames.map { "\(names[$0.connection] ?? "?"): \(Self.line($0.message))" }
            guard output.wantsBulkSlice else { return lines }
            service.handle(.bulkSlice)
        }
    }

    static func line(_ message: ServerMessage) -> String {
        switch message {
        case .helloReply: return "HELLO_REPLY"
        case .pong(let tag): return "PONG tag \(tag)"
        case .ok(let tag, let lock): return "OK tag \(tag) lock \(lock)"
        case .error(let tag, let status, _): return "ERROR tag \(tag) \(status.name)"
        case .lockspace(let tag, let lockspace, _, let created):
            return "LOCKSPACE tag \(tag) id \(lockspace)" + (created ? " created" : "")
        case .purged(let tag, let count): return "PURGED tag \(tag) count \(count)"
        case .completion(let c):
            let status = c.status == .granted ? "granted" : c.status.name
            return "COMPLETION tag \(c.tag) lock \(c.lock) \(status)" + (c.mode.map { " \($0)" } ?? "")
        case .blocking(let lock, let mode): return "BAST lock \(lock) \(mode)"
        case .goodbye: return "GOODBYE"
        case .queryReply(let tag, _): return "QUERY_REPLY tag \(tag)"
        }
    }

    /// LOCK on `name` in lockspace 0 (the first one opened).
    static func lock(_ tag: UInt32, _ name: String, _ mode: LockMode, _ flags: LockFlags = [], parent: UInt32 = 0)
        -> ClientMessage
    {
        .lock(LockMessage(tag: tag, lockspace: 0, flags: flags, mode: mode, parent: parent, name: Array(name.utf8)))
    }

    static func convert(_ tag: UInt32, _ lock: UInt32, _ mode: LockMode, _ flags: LockFlags = .convert) -> ClientMessage
    {
        .convert(ConvertMessage(tag: tag, lock: lock, flags: flags, mode: mode))
    }

    static func unlock(_ tag: UInt32, _ lock: UInt32, _ flags: LockFlags = []) -> ClientMessage {
        .unlock(UnlockMessage(tag: tag, lock: lock, flags: flags))
    }

    /// The view of a cluster of node 1 alone.
    static let soloView = View(
        id: ViewID(number: 1, coordinator: NodeID(1)), members: [Member(node: NodeID(1), incarnation: 1)])

    static func open(_ tag: UInt32, _ name: String = "ls", mode: UInt16 = LockspaceAccess.defaultMode) -> ClientMessage
    {
        .openLockspace(tag: tag, name: Array(name.utf8), valueBlockLength: 0, create: true, mode: mode)
    }
}
