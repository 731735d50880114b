import DLMCluster
import DLMCore
import DLMWire
import Foundation
import Testing

/// Who may use a lockspace (Protocol/CLIENT.md §7.1): its creator's uid and gid and the mode it gave decide, as a
/// file's do, who may open it and lock in it, read its locks and see it listed; only the creator and root may
/// release it; only root may cancel another user's request.
@Suite struct LockspaceAccessTests {
    typealias H = ServiceHarness

    /// The JSON of a QUERY's reply, or the ERROR's status.
    static func query(_ h: inout H, _ id: ConnectionID, _ kind: QueryKind, _ name: String = "") -> (
        json: [UInt8]?, status: DLMStatus
    ) {
        h.send(id, .query(tag: 50, kind: kind, argument: Array(name.utf8)))
        let output = h.service.takeOutput()
        switch output.frames.last?.message {
        case .queryReply(_, let json)?: return (json, .granted)
        case .error(_, let status, _)?: return (nil, status)
        default: return (nil, .protocolError)
        }
    }

    /// dlmd's recent log (QUERY kind 7, `dlmtool dump`) names lockspaces, resources and nodes whoever may use
    /// them: only root reads it (EPERM for anyone else, the lockspace's creator included).
    @Test func onlyRootReadsTheLog() throws {
        var h = H()
        let user = h.connect("user", credentials: ClientCredentials(pid: 10, uid: 1000))
        let root = h.connect("root", credentials: .root)
        let environment = ReportEnvironment(
            recentLog: (["dlmd: node 1 listening on unix:/run/dlm/dlmd.sock"], 2_000))
        var replies: [ServerMessage] = []
        for id in [user, root] {
            h.service.handle(.query(id, .query(tag: 7, kind: .log, argument: []), environment))
            replies += h.service.takeOutput().frames.map(\.message)
        }
        guard replies.count == 2, case .error(7, .notPermitted, let message) = replies[0],
            case .queryReply(7, let json) = replies[1]
        else {
            Issue.record("\(replies)")
            return
        }
        #expect(message.contains("only root"))
        let report = try JSONDecoder().decode(LogReport.self, from: Data(json))
        #expect(report == LogReport(lines: ["dlmd: node 1 listening on unix:/run/dlm/dlmd.sock"], capacity: 2_000))
    }

    /// The settings dlmd runs with (QUERY kind 8, `dlmtool dump-config`) name key files and the fence command: only
    /// root reads them.
    @Test func onlyRootReadsTheSettings() throws {
        var h = H()
        let user = h.connect("user", credentials: ClientCredentials(pid: 10, uid: 1000))
        let root = h.connect("root", credentials: .root)
        let environment = ReportEnvironment(settings: [("dlmd.socket", "/run/dlm/dlmd.sock"), ("cluster.name", "demo")])
        var replies: [ServerMessage] = []
        for id in [user, root] {
            h.service.handle(.query(id, .query(tag: 8, kind: .config, argument: []), environment))
            replies += h.service.takeOutput().frames.map(\.message)
        }
        guard replies.count == 2, case .error(8, .notPermitted, _) = replies[0],
            case .queryReply(8, let json) = replies[1]
        else {
            Issue.record("\(replies)")
            return
        }
        let report = try JSONDecoder().decode(ConfigReport.self, from: Data(json))
        #expect(
            report.settings.map { "\($0.key)=\($0.value)" } == ["dlmd.socket=/run/dlm/dlmd.sock", "cluster.name=demo"])
    }

    static func listed(_ h: inout H, _ id: ConnectionID) -> [String] {
        guard let json = query(&h, id, .lockspaces).json,
            let report = try? JSONDecoder().decode(LockspacesReport.self, from: Data(json))
        else { return ["?"] }
        return report.lockspaces.map { "\($0.name) \($0.mode ?? "-") \($0.uid.map(String.init) ?? "-")" }
    }

    @Test func theCreatorsModeDecidesWhoMayOpenLockReleaseAndRead() {
        var h = H()
        // The creator (uid 1000, group 100); a member of group 100 by a supplementary group; another user; root.
        let owner = h.connect("owner", credentials: ClientCredentials(pid: 10, uid: 1000, gid: 100))
        let mate = h.connect("mate", credentials: ClientCredentials(pid: 11, uid: 1001, gid: 200, groups: [7, 100]))
        let other = h.connect("other", credentials: ClientCredentials(pid: 12, uid: 1002, gid: 300, groups: [7]))
        let root = h.connect("root", credentials: .root)
        h.send(owner, H.open(1, "team", mode: 0o660))
        h.send(owner, H.open(2, "private"))
        #expect(h.out() == ["owner: LOCKSPACE tag 1 id 0 created", "owner: LOCKSPACE tag 2 id 1 created"])

        // Opening: the group's bits for a supplementary group; nothing for others; root anything.
        h.send(mate, H.open(1, "team", mode: 0o666))
        h.send(mate, H.open(2, "private"))
        h.send(other, H.open(1, "team"))
        h.send(root, H.open(1, "private"))
        #expect(
            h.out() == [
                "mate: LOCKSPACE tag 1 id 0", "mate: ERROR tag 2 EACCES", "other: ERROR tag 1 EACCES",
                "root: LOCKSPACE tag 1 id 1",
            ])
        // A LOCK naming a lockspace id that was never opened is checked the same way.
        h.send(other, H.lock(3, "r", .ex))
        h.send(mate, .lock(LockMessage(tag: 3, lockspace: 1, mode: .ex, name: Array("r".utf8))))
        h.send(mate, H.lock(4, "r", .ex))
        h.send(root, H.lock(4, "r", .pr))
        #expect(
            h.out() == [
                "other: ERROR tag 3 EACCES", "mate: ERROR tag 3 EACCES", "mate: COMPLETION tag 4 lock 1 granted EX",
                "root: OK tag 4 lock 2", "mate: BAST lock 1 PR",
            ])

        // Purging a lockspace's orphans needs what locking needs.
        h.send(other, .purge(tag: 9, lockspace: 0, nodeID: 0, pid: 10))
        h.send(mate, .purge(tag: 9, lockspace: 0, nodeID: 0, pid: 10))
        #expect(h.out() == ["other: ERROR tag 9 EACCES", "mate: PURGED tag 9 count 0"])

        // Only the creator's uid and root may release; a member of its group may not.
        h.send(mate, .releaseLockspace(tag: 5, lockspace: 0, force: true))
        h.send(other, .releaseLockspace(tag: 5, lockspace: 1, force: false))
        #expect(h.out() == ["mate: ERROR tag 5 EPERM", "other: ERROR tag 5 EPERM"])

        // Cancelling a waiting request with EDEADLK: another user may not; root may.
        h.send(mate, .deadlockCancel(tag: 6, lock: 2))
        h.send(other, .deadlockCancel(tag: 6, lock: 2))
        h.send(root, .deadlockCancel(tag: 6, lock: 2))
        #expect(
            h.out() == [
                "mate: ERROR tag 6 EPERM", "other: ERROR tag 6 EPERM", "root: OK tag 6 lock 2",
                "root: COMPLETION tag 0 lock 2 EDEADLK",
            ])

        // Reports: the list shows what the client may open; lockdebug needs read permission.
        #expect(Self.listed(&h, owner) == ["team 0660 1000", "private 0600 1000"])
        #expect(Self.listed(&h, mate) == ["team 0660 1000"])
        #expect(Self.listed(&h, other) == [])
        #expect(Self.listed(&h, root) == ["team 0660 1000", "private 0600 1000"])
        #expect(Self.query(&h, mate, .lockdebug, "team").status == .granted)
        #expect(Self.query(&h, mate, .lockdebug, "private").status == .permissionDenied)
        #expect(Self.query(&h, other, .lockdump, "team").status == .permissionDenied)

        // The creator releases, with force: the holder of a lock in it is told that it was taken away.
        h.send(owner, .releaseLockspace(tag: 7, lockspace: 0, force: true))
        h.send(owner, .releaseLockspace(tag: 8, lockspace: 1, force: false))
        #expect(
            h.out() == [
                "mate: COMPLETION tag 0 lock 1 EUNLOCK", "owner: OK tag 7 lock 0", "owner: OK tag 8 lock 0",
            ])
    }

    /// Only the first class that matches counts, as for a file: a creator whose own bits are empty may not open
    /// its lockspace even though the group's bits would let it. A client without kernel credentials (TCP) is
    /// user nobody: it may use what nobody created and what others may use.
    @Test func theFirstMatchingClassDecidesAndATcpClientIsNobody() {
        var h = H()
        let owner = h.connect("owner", credentials: ClientCredentials(pid: 10, uid: 1000, gid: 100))
        let tcp = h.connect("tcp")
        let tcp2 = h.connect("tcp2")
        h.send(owner, H.open(1, "g", mode: 0o060))
        h.send(owner, H.open(2, "g"))
        h.send(owner, H.lock(3, "r", .ex))
        #expect(
            h.out() == [
                "owner: LOCKSPACE tag 1 id 0 created", "owner: ERROR tag 2 EACCES", "owner: ERROR tag 3 EACCES",
            ]
        )
        h.send(tcp, H.open(1, "g"))
        h.send(tcp, H.open(2, "t"))
        h.send(tcp2, H.open(1, "t"))
        h.send(owner, H.open(4, "t"))
        #expect(
            h.out() == [
                "tcp: ERROR tag 1 EACCES", "tcp: LOCKSPACE tag 2 id 1 created", "tcp2: LOCKSPACE tag 1 id 1",
                "owner: ERROR tag 4 EACCES",
            ])
        #expect(Self.listed(&h, tcp2) == ["t 0600 65534"])
    }
}

extension LockspaceAccessTests {
    /// A lockspace with no creator on this node: one a node masters resources of for other nodes' clients before
    /// any client of its own created it, or one kept by a store written before lockspaces had creators (restored
    /// here). Only root may open it without create or lock in it, until a client opens it with create and becomes
    /// its creator, with its mode (the reply says `created`).
    @Test func aLockspaceWithoutACreatorIsTakenByTheFirstClientThatCreatesIt() throws {
        var h = H()
        _ = try h.service.restore(lockspaces: [(Array("ls".utf8), 32, nil)], resources: [])
        let user = h.connect("u", credentials: ClientCredentials(pid: 20, uid: 1000, gid: 1000))
        let peer = h.connect("p", credentials: ClientCredentials(pid: 21, uid: 1001, gid: 1000))
        let root = h.connect("root", credentials: .root)
        #expect(Self.listed(&h, user) == [])
        #expect(Self.listed(&h, root) == ["ls - -"])
        h.send(user, .openLockspace(tag: 1, name: Array("ls".utf8), valueBlockLength: 0, create: false))
        h.send(user, H.lock(2, "r", .ex))
        h.send(root, .openLockspace(tag: 1, name: Array("ls".utf8), valueBlockLength: 0, create: false))
        #expect(h.out() == ["u: ERROR tag 1 EACCES", "u: ERROR tag 2 EACCES", "root: LOCKSPACE tag 1 id 0"])
        h.send(user, H.open(3, mode: 0o640))
        h.send(peer, H.open(1))
        h.send(user, H.lock(4, "r", .ex))
        #expect(
            h.out() == [
                "u: LOCKSPACE tag 3 id 0 created", "p: ERROR tag 1 EACCES", "u: COMPLETION tag 4 lock 1 granted EX",
            ])
        #expect(Self.listed(&h, user) == ["ls 0640 1000"])
    }
}

/// A forced release drops the locks the node masters for other nodes' clients too, and tells them.
@Suite struct ForcedReleaseAcrossNodesTests {
    typealias H = ServiceHarness

    @Test func aForcedReleaseTellsTheHoldersOnOtherNodes() {
        var c = ClusterHarness(nodes: 2)
        let name = ClusterHarness.name(directedTo: 2, of: 2)
        let b = c.client(2, "b")
        c.send(b, H.lock(2, name, .pr))
        #expect(c.run() == ["2b: COMPLETION tag 2 lock 1 granted PR"])
        let a = c.client(1, "a")
        c.send(a, H.lock(2, name, .pr))
        #expect(c.run() == ["1a: COMPLETION tag 2 lock \(MasteringTests.remote) granted PR"])
        c.send(b, .releaseLockspace(tag: 3, lockspace: 0, force: true))
        #expect(
            Set(c.run()) == [
                "2b: COMPLETION tag 0 lock 1 EUNLOCK", "1a: COMPLETION tag 0 lock \(MasteringTests.remote) EUNLOCK",
                "2b: OK tag 3 lock 0",
            ])
        // The lock is gone on both sides: node 1's client may lock the name again.
        c.send(a, H.lock(4, name, .ex))
        let again = c.run()
        #expect(
            again.count == 1 && again.allSatisfy { $0.hasPrefix("1a: COMPLETION tag 4") && $0.hasSuffix("granted EX") })
    }
}
