import DLMCore
import DLMWire
import NIOCore
import Testing

/// Protocol/peer-vectors: every good vector decodes to the message of its header and encodes to the same bytes;
/// every bad one is refused with its status (VectorTests.badVectorIsRefused); every message of PEER.md §3 has a vector.
@Suite("Protocol/peer-vectors")
struct PeerVectorTests {
    static let owner = OwnerID(node: 1, incarnation: 3, local: 5)
    static let key = DirectoryKey(lockspace: Array("ls".utf8), name: Array("backup".utf8))
    static let transaction = DeadlockParticipant.transaction(TransactionID(node: 2, incarnation: 1, xid: 9))

    /// The message each good vector holds, written from the vector's header.
    static let messages: [String: PeerMessage] = [
        "peer-lookup": .lookup(key),
        "peer-lookup-reply": .lookupReply(key, master: 2, floor: 0x500_0000_0009),
        "peer-remove": .remove(key, floor: 0x500_0000_0009, view: 7),
        "peer-removed": .removed(key),
        "peer-deadlock-search": .deadlockSearch(search: 3, view: 7),
        "peer-deadlock-graph": .deadlockGraph(
            search: 3, view: 7, last: true, refused: false,
            WaitForGraphPart(
                participants: [
                    GraphParticipant(index: 0, participant: .owner(owner)),
                    GraphParticipant(index: 2, participant: transaction),
                ],
                edges: [
                    GraphEdge(from: 0, to: 1, lock: LockID(rawValue: 12), waitSequence: 4), GraphEdge(from: 1, to: 2),
                ])),
        "peer-deadlock-cycle": .deadlockCycle(
            view: 7,
            [
                DeadlockStep(master: 1, lock: LockID(rawValue: 12), waitSequence: 4, waiter: .owner(owner)),
                DeadlockStep(master: 2, lock: LockID(rawValue: 3), waitSequence: 9, waiter: transaction),
            ]),
        "peer-deadlock-check": .deadlockCheck(
            check: 5, view: 7, [DeadlockCheckItem(lock: LockID(rawValue: 12), waitSequence: 4, blocker: transaction)]),
        "peer-deadlock-checked": .deadlockChecked(
            check: 5, [DeadlockStepState(waits: true, priority: 0, waited: 1_500_000_000)]),
        "peer-deadlock-checked-busy": .deadlockChecked(
            check: 6,
            [DeadlockStepState(waits: true, priority: 3, waited: 2_000_000_000), .busy]),
        "peer-deadlock-victim": .deadlockVictim(view: 7, check: 5, lock: LockID(rawValue: 12), waitSequence: 4),
        "peer-deadlock-release": .deadlockRelease(check: 5),
        "peer-deadlock-refused": .deadlockRefused(check: 5),
        "peer-purge": .purge(ref: 11, lockspace: Array("ls".utf8), node: 2, pid: 4242, uid: 1000),
        "peer-purged": .purged(ref: 11, count: 3, skipped: 1),
        "peer-deadlock-cancel": .deadlockCancel(
            ref: 13, lock: LockID(rawValue: 12), owner: OwnerID(node: 2, incarnation: 3, local: 5)),
        "peer-request": .request(
            ref: 7,
            RemoteLockRequest(
                lockspace: Array("ls".utf8), valueBlockLength: 32, pid: 4242, uid: 1000,
                request: LockRequest(
                    lockspace: LockspaceID(rawValue: 0), owner: owner, name: Array("backup".utf8), mode: .ex))),
        "peer-request-all-fields": .request(
            ref: 8,
            RemoteLockRequest(
                lockspace: Array("ls".utf8), valueBlockLength: 64, pid: 1, uid: 0,
                request: LockRequest(
                    lockspace: LockspaceID(rawValue: 0), owner: OwnerID(node: 2, incarnation: 1, local: 9),
                    name: Array("child".utf8), mode: .pr, flags: [.noQueue, .valueBlock], parent: LockID(rawValue: 12),
                    timeout: 5_000_000_000, transaction: 99, priority: 3, wantsBlockingCallbacks: true,
                    alwaysFencingToken: true))),
        "peer-convert": .convert(
            ref: 9,
            ConvertRequest(
                lock: LockID(rawValue: 12), owner: owner, mode: .nl, flags: [.convert, .valueBlock],
                valueBlock: [1, 2, 3, 4], valueBlockBase: 6)),
        "peer-unlock-cancel": .unlock(ref: 10, UnlockRequest(lock: LockID(rawValue: 12), owner: owner, flags: .cancel)),
        "peer-reply-refused": .reply(ref: 7, .refused(DLMError(.invalid, "bad flags"))),
        "peer-reply-not-master": .reply(ref: 7, .notMaster),
        "peer-reply-taken-queued": .reply(ref: 7, .taken(lock: LockID(rawValue: 12), completion: nil)),
        "peer-reply-taken-granted": .reply(
            ref: 7,
            .taken(
                lock: LockID(rawValue: 12),
                completion: Completion(
                    lock: LockID(rawValue: 12), owner: owner, status: .granted, mode: .ex, fencingToken: 17))),
        "peer-completion-lvb": .completion(
            Completion(
                lock: LockID(rawValue: 12), owner: owner, status: .granted, mode: .pr, valueBlock: [9, 8, 7, 6],
                valueBlockSequence: 42)),
        "peer-completion-unlocked": .completion(
            Completion(lock: LockID(rawValue: 12), owner: owner, status: .unlocked, mode: nil)),
        "peer-blocking": .blockingCallback(BlockingCallback(lock: LockID(rawValue: 12), owner: owner, mode: .ex)),
        "peer-owner-exited": .ownerExited(owner),
        "peer-recover-masters": .recoverMasters(view: 7, [key]),
        "peer-recover-locks": .recoverLocks(
            view: 7,
            [
                RecoveredLock(
                    lockspace: Array("ls".utf8), valueBlockLength: 32, name: Array("backup".utf8), copy: 0x8000_0001,
                    owner: owner, pid: 4242, uid: 1000, grantedMode: .pr, requestedMode: .ex, flags: [], priority: 7,
                    wantsBlockingCallbacks: true, alwaysFencingToken: false, transaction: nil,
                    valueBlock: [0xde, 0xad, 0xbe, 0xef], valueBlockSequence: 2, fencingToken: 9,
                    timeout: 5_000_000_000),
                RecoveredLock(
                    lockspace: Array("ls".utf8), valueBlockLength: 32, name: Array("backup".utf8), copy: 0x8000_0002,
                    owner: owner, pid: 4242, uid: 1000, grantedMode: .ex, requestedMode: nil, flags: [], priority: 0,
                    wantsBlockingCallbacks: false, alwaysFencingToken: false, transaction: nil, valueBlock: nil,
                    valueBlockSequence: 0, fencingToken: 10, subPath: [Array("child".utf8)], parentCopy: 0x8000_0001,
                    inFlight: .unlock),
            ]),
        "peer-recover-bindings": .recoverBindings(
            view: 7,
            [
                RecoveredBinding(copy: 0x8000_0001, owner: 5, lock: LockID(rawValue: 4)),
                RecoveredBinding(
                    copy: 0x8000_0002, owner: 5, lock: LockID(rawValue: 9),
                    grant: RecoveredGrant(
                        mode: .pr, flags: .valueNotValid, valueBlock: [0xde, 0xad, 0xbe, 0xef], valueBlockSequence: 3,
                        fencingToken: 11)),
            ]),
        "peer-recovery-done": .recoveryDone(view: 7, phase: 1, departed: [3, 5], recovered: 0, stored: 6),
        "peer-recover-lockspaces": .recoverLockspaces(
            run: 7 << 20 | 2,
            LockspaceReport(
                recovered: 6 << 20, departed: [3], unsettled: [Array("ls".utf8)],
                lockspaces: [
                    LockspaceMembership(name: Array("ls".utf8), valueBlockLength: 32, joining: false),
                    LockspaceMembership(name: Array("vault".utf8), valueBlockLength: 0, joining: true),
                ],
                tokenFloors: [LockspaceTokenFloor(lockspace: Array("ls".utf8), floor: 7 << 40 | 5)])),
        "peer-recovery-request": .recoveryRequest(view: 7),
        "peer-recovery-start": .recoveryStart(run: 7 << 20 | 2),
        "peer-recover-stored": .recoverStored(
            view: 7,
            [
                ValueReplica(
                    lockspace: Array("ls".utf8), name: Array("vault".utf8),
                    persistentLocks: [
                        ReplicatedLock(
                            owner: nil, orphanNode: 2, pid: 77, uid: 1001, mode: .ex, flags: .persistent,
                            fencingToken: 12)
                    ], valueBlockLength: 32)
            ]),
        "peer-value-replicas": .valueReplicas(
            generation: 12, incarnation: 2, view: 7 << 20,
            [
                ValueReplica(
                    lockspace: Array("ls".utf8), name: Array("backup".utf8), valueBlock: [1, 2, 3, 4],
                    valueBlockSequence: 3, writer: owner),
                ValueReplica(lockspace: Array("ls".utf8), name: Array("old".utf8), removed: true),
            ]),
        "peer-value-replicas-stored": .valueReplicasStored(generation: 12),
        "peer-value-replicas-sub-locks": .valueReplicas(
            generation: 13, incarnation: 2, view: 7 << 20,
            [
                ValueReplica(
                    lockspace: Array("ls".utf8), name: Array("tree".utf8),
                    persistentLocks: [
                        ReplicatedLock(
                            owner: owner, pid: 4242, uid: 1000, mode: .pr, flags: .persistent, fencingToken: 0),
                        ReplicatedLock(
                            owner: nil, orphanNode: 2, pid: 77, uid: 1001, mode: .ex, flags: .persistent,
                            fencingToken: 11, subPath: [Array("child".utf8)], parent: 0),
                        ReplicatedLock(
                            owner: nil, orphanNode: 2, pid: 77, uid: 1001, mode: .pw, flags: .persistent,
                            fencingToken: 12, subPath: [Array("child".utf8), Array("leaf".utf8)], parent: 1),
                    ], valueBlockLength: 32)
            ]),
        "peer-recover-values": .recoverValues(
            view: 7,
            [
                ValueReplica(
                    lockspace: Array("ls".utf8), name: Array("backup".utf8), valueBlock: Array(repeating: 9, count: 8),
                    valueBlockSequence: 7, invalid: true),
                ValueReplica(
                    lockspace: Array("ls".utf8), name: Array("vault".utf8),
                    persistentLocks: [
                        ReplicatedLock(
                            owner: owner, pid: 4242, uid: 1000, mode: .pr, flags: .persistent, fencingToken: 9),
                        ReplicatedLock(
                            owner: nil, orphanNode: 2, pid: 77, uid: 1001, mode: .pr, flags: .persistent,
                            fencingToken: 4),
                    ], valueBlockLength: 32),
            ]),
        "peer-recover-values-outdated": .recoverValues(
            view: 9,
            [
                ValueReplica(
                    lockspace: Array("ls".utf8), name: Array("backup".utf8), valueBlock: [5, 5, 5, 5],
                    valueBlockSequence: 3, outdated: true,
                    origin: ReplicaOrigin(master: 2, incarnation: 4, generation: 11))
            ]),
    ]

    @Test func everyGoodVectorHasAnExpectedMessageAndEveryKindAVector() {
        let good = Vector.peer.filter { !$0.isBad }
        #expect(Set(good.map(\.name)) == Set(Self.messages.keys), "looked in \(Vector.peerFolder.path)")
        #expect(Set(Self.messages.values.map(\.kind)) == Set(PeerMessage.Kind.allCases))
        #expect(Vector.peer.filter(\.isBad).count >= 7)
    }

    @Test(arguments: Vector.peer.filter { !$0.isBad })
    func goodVectorDecodesAndReencodes(_ vector: Vector) throws {
        let expected = try #require(Self.messages[vector.name])
        var buffer = ByteBuffer(bytes: vector.bytes)
        var (type, body) = try #require(try nextFrame(from: &buffer, maxLength: vector.direction.maxLength))
        #expect(buffer.readableBytes == 0, "bytes after the frame")
        #expect(try PeerMessage.decode(type: type, body: &body) == expected)
        var out = ByteBuffer()
        expected.encode(into: &out)
        #expect(Array(out.readableBytesView).hexString == vector.bytes.hexString)
    }

    // The bad peer vectors are refused in VectorTests.badVectorIsRefused, with the client protocol's.
}

/// A recovery list whose locks share their lockspace's name decodes each lock's own name: the decoder takes the
/// previous lock's name array again only when the bytes are the same (a name of the same length, a longer one that
/// starts alike, and a shorter one each decode as sent).
struct RecoveredLockNamesTests {
    @Test func eachLockKeepsItsOwnLockspace() throws {
        let owner = OwnerID(node: 2, incarnation: 1, local: 5)
        let lockspaces = ["ls", "ls", "lt", "ls", "lsx", "lsx", "l", "ls"]
        let locks = lockspaces.enumerated().map { index, lockspace in
            RecoveredLock(
                lockspace: Array(lockspace.utf8), valueBlockLength: 0, name: Array("r\(index)".utf8),
                copy: 0x8000_0001 + UInt32(index), owner: owner, pid: 1, grantedMode: .pr, requestedMode: nil,
                flags: [], priority: 0, wantsBlockingCallbacks: false, alwaysFencingToken: false, transaction: nil,
                valueBlock: nil, valueBlockSequence: 0, fencingToken: 1)
        }
        let decoded = try PeerMessage.decode(frame: PeerMessage.recoverLocks(view: 7, locks).frameBytes)
        guard case .recoverLocks(7, let got) = decoded else {
            Issue.record("decoded \(decoded)")
            return
        }
        #expect(got.map { String(decoding: $0.lockspace, as: UTF8.self) } == lockspaces)
        #expect(got == locks)
    }
}
