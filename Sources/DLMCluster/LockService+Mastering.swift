import DLMCore
import DLMWire
import DequeModule
import GroupServices

/// Resource mastering across nodes: the resource directory, spread over the members by a hash of the name; the
/// master cache; the requests of this node's clients on resources mastered elsewhere (process copies); and the
/// requests other nodes send to the resources this node masters.
///
/// A resource's master is the first node that asked the directory for it. A request on a resource mastered here
/// (known from the cache, or because this node is its directory and the first to ask) runs in the local engine
/// with no message at all. A request on a resource mastered elsewhere goes to the master; its connection's later
/// requests wait until the master has answered, so replies keep request order as on one node. Sub-locks go to
/// their parent's master.
///
/// A resource that has had no lock for `tossDelay` is dropped (`tossIdle`): its master asks the directory node to
/// forget it (REMOVE) and holds the requests for it until the answer (REMOVED), after which a request that still
/// comes finds no master and makes a new one; a holder forgets a cached master none of its locks uses.
///
/// A membership change rebuilds the directory and the masters (LockService+Recovery.swift). Not yet here
/// (docs/ARCHITECTURE.md, "Mastering across nodes"): reports and deadlock cancels across nodes.
struct Mastering {
    /// The members of the view, in node order (this node alone when not mastering across nodes).
    var members: [UInt32] = []
    /// The lockspaces' groups (LockService+Groups.swift): the members that use each lockspace, in node order, and
    /// its value-block length, as the last recovery run agreed them; a lockspace's directory is spread over its
    /// group. (Never an empty list of members.)
    var groups: [[UInt8]: LockspaceGroup] = [:]
    /// Whether every group is the whole view (no lookup of a group for each directory node then).
    var groupsAreTheView = true
    /// The lockspaces this life asked to join and no run has agreed yet (value-block length, 0 for any); the opens
    /// that wait for that, in order; and, for a join a run refused, the group's length, until those opens are answered.
    var joining: [[UInt8]: Int] = [:]
    var joinWaiters: [(connection: ConnectionID, message: ClientMessage)] = []
    var joinRefusals: [[UInt8]: Int] = [:]
    /// The lockspaces a run agreed this life belongs to, with their lengths (kept after a release, until a run
    /// agrees the node left).
    var joined: [[UInt8]: Int] = [:]
    /// The lockspaces of `joined` that a client released here since (LockService+Groups.swift, "Leaves"); those
    /// this node's phase-0 report of the run under way leaves out; and the last completed run in which it asked for
    /// a run to leave.
    var released: Set<[UInt8]> = []
    var leaving: Set<[UInt8]> = []
    var leaveAskedAfter: UInt64?
    /// The groups of the last completed run, whose directory entries stand; and the lockspaces whose entries a run
    /// since then began to rebuild here.
    var settledGroups: [[UInt8]: LockspaceGroup] = [:]
    var unsettledLockspaces: Set<[UInt8]> = []
    /// The number of the primary view this node is in (0: none).
    var installedView: UInt64 = 0
    /// The number of the last view group services installed here, primary or not (a later one that is not the next
    /// number means this node skipped views: LockService+Replicas.swift).
    var lastViewNumber: UInt64 = 0
    /// As directory node: the master of each resource whose directory this node is.
    var directory = ShardedDictionary<DirectoryKey, UInt32>()
    /// The known masters (this node's own resources too).
    var masters = MasterCache()
    /// Requests of this node's clients that wait for a lookup, by resource.
    var awaitingLookup: [DirectoryKey: [(connection: ConnectionID, message: ClientMessage)]] = [:]
    /// Requests of other nodes for a resource whose lookup this node is waiting for: the directory named this node
    /// master before its own answer arrived. They run when it does.
    var peerRequestsAwaitingLookup: [DirectoryKey: [(node: UInt32, message: PeerMessage)]] = [:]
    var copies = ProcessCopies()
    /// Resources that became idle here (freed by the engine, or no copy left on them), oldest first: dropped once
    /// idle for `tossDelay` (`tossIdle`).
    var tossQueue: Deque<(key: DirectoryKey, since: Instant, floor: UInt64)> = []
    /// As directory node: per lockspace, the highest last fencing token of the resources dropped (REMOVE); a new
    /// master starts above it (LOOKUP_REPLY). Cleared by recovery, which raises every floor above it.
    var tossFloors: [[UInt8]: UInt64] = [:]
    /// Resources whose master this node was, waiting for the directory's REMOVED (their requests wait in
    /// `awaitingLookup` and `peerRequestsAwaitingLookup`).
    var removing: Set<DirectoryKey> = []
    /// Operations sent to a master and not answered yet, by their reference.
    var pending: [UInt64: PendingOperation] = [:]
    var nextReference: UInt64 = 1
    /// The lockspaces this node opened as master for other nodes, by name.
    var lockspaces: [[UInt8]: LockspaceID] = [:]
    /// Messages for other nodes that wait for a store commit, oldest first (LockService+Durability.swift).
    var heldMessages: Deque<(generation: UInt64, node: UInt32, message: PeerMessage)> = []
    /// Per node with held messages: the generation its last one waits for, and how many wait.
    var heldGeneration: [UInt32: UInt64] = [:]
    var heldCount: [UInt32: Int] = [:]
    /// Messages to this node itself (to a copy's master that is this node, after recovery rebuilt it here), handled
    /// after the input that sent them, in order.
    var loopback: Deque<PeerMessage> = []

    // Recovery (LockService+Recovery.swift).
    /// The members (node: incarnation) of the last completed recovery, and of the view being recovered.
    var memberIncarnations: [UInt32: UInt64] = [:]
    var viewMembers: [UInt32: UInt64] = [:]
    var recovery: Recovery?
    /// The view of the last completed recovery.
    var recoveredView: UInt64 = 0
    /// The recovery run this node runs now, or else the last one it completed.
    var currentRun: UInt64 { recovery?.view ?? recoveredView }
    /// What this life's store held of its previous life, until a recovery completes (LockService+PreviousLife.swift).
    var previousLife: PreviousLife?
    /// Once a recovery completed: the previous life's store records still to delete, in slices.
    var endingLife: EndingLife?
    /// Recovery messages of a view this node has not installed yet.
    var futureRecovery: [(node: UInt32, message: PeerMessage)] = []
    /// The locks recovery rebuilt here, by their holder's id (Linux's remid), until a later recovery completed: a
    /// holder that resends one (its answer was lost in an aborted run) is told its id again.
    var rebuilt = RebuiltHistory()
    /// The nodes that ran a recovery with this life of this node (a recovery message of theirs came): only their
    /// requests are taken. A request that came from a node before that was meant for an earlier life of this node.
    var recoveredWith: Set<UInt32> = []
    var rebuiltLockspaces: Set<LockspaceID> = []

    // Value replicas (LockService+Replicas.swift).
    /// As a backup node: the replicas other masters sent, by resource.
    /// (Sharded: a backup node of hundreds of thousands of resources grew a plain dictionary in steps of 100 ms.)
    var replicas = ShardedDictionary<DirectoryKey, StoredReplica>()
    /// Per backup node: the generation up to which it acknowledged this node's replicas.
    var replicaAcknowledged: [UInt32: UInt64] = [:]
    /// Per backup node: the generation of each replica message sent to it and not acknowledged yet, oldest first
    /// (a generation may take several messages: several inputs of one batch, or a long list in pieces; it is
    /// acknowledged once the last of them is).
    var replicaMessagesInFlight: [UInt32: Deque<UInt64>] = [:]

    /// Deadlock detection across nodes (LockService+Deadlocks.swift).
    var deadlocks = ClusterDeadlocks()

    /// Purges across nodes that this node's clients asked for, by reference (LockService+Purges.swift).
    var purges: [UInt64: ClusterPurge] = [:]
    var nextPurge: UInt64 = 1

    struct PendingOperation {
        var connection: ConnectionID
        var tag: UInt32
        var copy: Int
        /// The node the operation went to, and its life then (an operation sent during recovery may go to a new life
        /// of a node whose old life left: it is not lost with the old one).
        var master: UInt32
        var masterIncarnation: UInt64?
        /// The client's frame (sent again if the master leaves before answering, or, for a new lock, after a stale
        /// master's "not master").
        var message: ClientMessage

        var isNewLock: Bool {
            if case .lock = message { return true }
            return false
        }
    }

    /// The backup node of a resource that `master` masters (LockService+Replicas.swift).
    func backupNode(of key: DirectoryKey, master: UInt32) -> UInt32? {
        guard members.count > 1 else { return nil }
        let directory = directoryNode(of: key)
        if directory != master { return directory }
        let index = members.firstIndex(of: master) ?? 0
        return members[(index + 1) % members.count]
    }

    /// Whether `node` (this one) is a member of the lockspace's group, or a run agreed it joined it. (Here, not on
    /// the service: a call of a non-mutating method of the service from mutating code copies the whole service.)
    func isGroupMember(_ name: [UInt8], _ node: UInt32) -> Bool {
        joined[name] != nil || groups[name]?.members.contains(node) == true
    }

    /// Whether the directory of `lockspace` serves lookups while this node recovers: once phase 0 agreed that the
    /// run leaves it as it was (the same group, and no member of it departed: its entries and masters are those of
    /// the last completed run). Not in a life's first run, nor in one a view without quorum abandoned.
    func directoryServesDuringRecovery(_ lockspace: [UInt8]) -> Bool {
        guard let recovery, !recovery.abandoned, recoveredView > 0, let rebuilt = recovery.rebuiltDirectories else {
            return false
        }
        return !rebuilt.contains(lockspace)
    }

    /// What `directoryNode` (and so each resource's backup node) depends on: equal placements place every resource
    /// on the same nodes.
    var placement: (groupsAreTheView: Bool, members: [UInt32], groups: [[UInt8]: [UInt32]]) {
        (groupsAreTheView, members, groupsAreTheView ? [:] : groups.mapValues(\.members))
    }

    /// The directory node of a resource: a member of its lockspace's group (of the view, for a lockspace no
    /// member uses).

    func directoryNode(of key: DirectoryKey) -> UInt32 {
        let nodes = groupsAreTheView ? members : groups[key.lockspace]?.members ?? members
        return nodes[Int(key.directoryHash % UInt64(nodes.count))]
    }
}

/// Where the master's answer to an operation of another node goes (`run`).
struct PeerReplyTarget {
    var node: UInt32
    var reference: UInt64
    var owner: OwnerID
    /// The lock the operation is on (nil for a new lock: the engine's `accepted` names it).
    var lock: LockID?
    /// Whether the lock's completion that came at once goes in the reply (the operation's own answer): not for a
    /// DEADLOCK_CANCEL, whose requester gets OK and whose lock's owner gets the completion.
    var answersWithCompletion = true
}

extension LockService {
    var mastersAcrossNodes: Bool { configuration.mastersAcrossNodes }

    // MARK: This node's clients

    /// A LOCK of a client: false if it runs in the local engine (a resource mastered here, a sub-lock of a local
    /// parent, no lockspace), true if it went to another node or waits for the directory.
    mutating func routeLock(_ m: LockMessage, from id: ConnectionID) -> Bool {
        guard let info = engine.lockspaceInfo(LockspaceID(rawValue: m.lockspace)) else { return false }
        let master: UInt32
        var parent: LockID?
        var parentRecord: RecoveredLock?
        if m.parent != 0 {
            guard ProcessCopies.isCopy(m.parent) else { return false }
            guard let index = mastering.copies.index(of: m.parent, owner: id.owner),
                let parentLock = mastering.copies.copies[index].masterLock
            else {
                deliver(id, .error(tag: m.tag, status: .noEntry, message: "no parent lock \(m.parent)"))
                return true
            }
            master = mastering.copies.copies[index].master
            parent = parentLock
            parentRecord = mastering.copies.copies[index].record
            if master == configuration.nodeID {
                // A parent that recovery rebuilt here: the sub-lock is this engine's, as on one node. (Sent to this
                // node itself, its grant could come before the answer that binds its copy, which waited for a store
                // commit: the client got a completion for an id it had never been told, before the request's
                // answer; FullStackTests seed 3127.)
                let request = Self.lockRequest(
                    m, owner: owner(id), lockspace: LockspaceID(rawValue: m.lockspace), parent: parentLock)
                run(.lock(request), reply: Reply(connection: id, tag: m.tag, kind: .lock))
                return true
            }
        } else {
            let key = DirectoryKey(lockspace: info.name, name: m.name)
            if let known = mastering.masters[key] {
                master = known
            } else {
                let directory = mastering.directoryNode(of: key)
                if isRecovering && !mastering.directoryServesDuringRecovery(key.lockspace) {
                    // The directory is being rebuilt: asked once recovery is done (`endRecovery`).
                    mastering.awaitingLookup[key, default: []].append((id, .lock(m)))
                    clients[Int(id.slot)].awaitingReply = true
                    return true
                }
                if directory == configuration.nodeID {
                    master = mastering.directory[key] ?? configuration.nodeID
                    mastering.directory[key] = master
                    mastering.masters[key] = master
                    if master == configuration.nodeID, let floor = mastering.tossFloors[key.lockspace] {
                        raiseTokenFloor(key.lockspace, to: floor)
                    }
                } else {
                    // Asked once per resource, however many requests wait for the answer.
                    if mastering.awaitingLookup[key] == nil { send(.lookup(key), to: directory) }
                    mastering.awaitingLookup[key, default: []].append((id, .lock(m)))
                    clients[Int(id.slot)].awaitingReply = true
                    return true
                }
            }
            if master == configuration.nodeID { return false }
        }
        let request = Self.lockRequest(m, owner: owner(id), lockspace: LockspaceID(rawValue: 0), parent: parent)
        // What recovery resends if the master leaves: a sub-lock under the top-level resource of its parent. An
        // adopted orphan is persistent, as the master's engine makes it (resent with ORPHAN and without PERSISTENT,
        // it was rebuilt as a plain lock and went with its holder's exit: FullStackTests seed 1188).
        let flags = m.flags.contains(.orphan) ? m.flags.union(.persistent).subtracting(.orphan) : m.flags
        let record = RecoveredLock(
            lockspace: info.name, valueBlockLength: info.valueBlockLength, name: parentRecord?.name ?? m.name,
            copy: 0, owner: request.owner, pid: clients[Int(id.slot)].pid, uid: userID(id), grantedMode: nil,
            requestedMode: m.mode,
            flags: flags, priority: m.priority, wantsBlockingCallbacks: request.wantsBlockingCallbacks,
            alwaysFencingToken: request.alwaysFencingToken, transaction: request.transaction, valueBlock: nil,
            valueBlockSequence: 0, fencingToken: 0, timeout: request.timeout,
            subPath: parentRecord.map { $0.subPath + [m.name] } ?? [],
            parentCopy: parent == nil ? 0 : m.parent)
        let copy = mastering.copies.add(
            owner: id.owner, master: master, record: record, account: clients[Int(id.slot)].account)
        let reference = startOperation(id, tag: m.tag, copy: copy, message: .lock(m))
        send(
            .request(
                ref: reference,
                RemoteLockRequest(
                    lockspace: info.name, valueBlockLength: info.valueBlockLength, pid: clients[Int(id.slot)].pid,
                    uid: userID(id), request: request)),
            to: master)
        return true
    }

    /// A CONVERT or UNLOCK (CANCEL) of a lock mastered elsewhere goes to its master.
    mutating func forwardToMaster(_ message: ClientMessage, from id: ConnectionID) {
        let tag: UInt32
        let lock: UInt32
        switch message {
        case .convert(let m): (tag, lock) = (m.tag, m.lock)
        case .unlock(let m): (tag, lock) = (m.tag, m.lock)
        case .deadlockCancel(let t, let l): (tag, lock) = (t, l)
        default: return
        }
        // A deadlock cancel may name another owner's lock of this node (its permission was checked).
        let found =
            if case .deadlockCancel = message {
                mastering.copies.index(ofCopy: lock)
            } else {
                mastering.copies.index(of: lock, owner: id.owner)
            }
        guard let copy = found, let masterLock = mastering.copies.copies[copy].masterLock else {
            deliver(id, .error(tag: tag, status: .noEntry, message: "no lock \(lock) of \(owner(id))"))
            return
        }
        let reference = startOperation(id, tag: tag, copy: copy, message: message)
        let master = mastering.copies.copies[copy].master
        switch message {
        case .convert(let m):
            send(
                .convert(
                    ref: reference,
                    ConvertRequest(
                        lock: masterLock, owner: owner(id), mode: m.mode, flags: m.flags,
                        valueBlock: m.flags.contains(.valueBlock) ? m.valueBlock : nil,
                        timeout: m.timeoutNanoseconds == 0 ? nil : m.timeoutNanoseconds,
                        priority: m.priority == 255 ? nil : m.priority,
                        valueBlockBase: mastering.copies.copies[copy].grantSequence)),
                to: master)
        case .unlock(let m):
            send(
                .unlock(
                    ref: reference,
                    UnlockRequest(
                        lock: masterLock, owner: owner(id), flags: m.flags,
                        valueBlock: m.flags.contains(.valueBlock) ? m.valueBlock : nil,
                        valueBlockBase: mastering.copies.copies[copy].grantSequence)),
                to: master)
        case .deadlockCancel:
            send(
                .deadlockCancel(
                    ref: reference, lock: masterLock,
                    owner: owner(local: mastering.copies.copies[copy].owner)),
                to: master)
        default:
            break
        }
    }

    /// An operation goes to a master: the connection's later requests wait for its answer.
    mutating func startOperation(
        _ id: ConnectionID, tag: UInt32, copy: Int, message: ClientMessage
    ) -> UInt64 {
        let reference = mastering.nextReference
        mastering.nextReference += 1
        let master = mastering.copies.copies[copy].master
        mastering.pending[reference] = Mastering.PendingOperation(
            connection: id, tag: tag, copy: copy, master: master, masterIncarnation: mastering.viewMembers[master],
            message: message)
        clients[Int(id.slot)].awaitingReply = true
        return reference
    }

    /// A client went: its copies are forgotten, and every master that held one of them is told.
    mutating func remoteOwnerExited(_ id: ConnectionID) {
        guard mastersAcrossNodes else { return }
        mastering.pending = mastering.pending.filter { $0.value.connection != id }
        // Its copies are forgotten in slices (`bulkSlice`); its masters release its locks, in slices too.
        for master in mastering.copies.beginExit(of: id.owner) { send(.ownerExited(owner(id)), to: master) }
    }

    // MARK: Messages of other nodes

    mutating func receive(_ message: PeerMessage, from node: UInt32) {
        switch message {
        case .recoverMasters, .recoverLocks, .recoverBindings, .recoveryDone, .recoverValues, .recoverStored,
            .recoverLockspaces, .recoveryRequest, .recoveryStart:
            receiveRecovery(message, from: node)
            return
        case .valueReplicas(let generation, let incarnation, let view, let replicas):
            // Taken from any live node, even one outside this node's view: a master that serves a resource during
            // recovery replicates its changes to the new view's backup node, which may not have installed that view
            // yet (a restarted node); the transport drops what a life that ended sent. But not from a life outside
            // this node's view that sent it in an earlier view: a view this node recovers left it out, and a replica
            // it sent before it went, come only now, is as lost (unacknowledged: its writer was never answered).
            // Kept, it would stay until the next recovery, and be sent to a new master then as the newest copy of a
            // resource that lives on elsewhere (a released orphan came back: random recovery seeds 501201, 530482).
            if mastering.viewMembers[node] != incarnation,
                RecoveryRun.view(view) < RecoveryRun.view(mastering.currentRun)
            {
                return
            }
            storeReplicas(replicas, generation: generation, incarnation: incarnation, from: node)
            return
        default:
            break
        }
        // A node outside the view is not heard (the transport drops what an old life of a member sent; what one
        // sent and this node held when its recovery started is dropped there).
        guard node == configuration.nodeID || mastering.viewMembers[node] != nil else { return }
        switch message {
        case .valueReplicasStored(let generation):
            replicasStored(upTo: generation, by: node)
            return
        case .lookup, .remove, .request, .convert, .unlock, .deadlockCancel, .ownerExited, .purge:
            // Sent before its sender recovered with this life of this node (to an earlier life, which it takes for
            // gone and sends again to whoever masters the resource now).
            guard node == configuration.nodeID || mastering.recoveredWith.contains(node) else { return }
            if isRecovering && !runsDuringRecovery(message) {
                // Run once the directory and the masters are rebuilt. (Meanwhile a later run may send the exited
                // owner's holder the ids of its rebuilt locks again, `finishResends`: each binding names its owner,
                // and the holder passes over those whose copy id another owner took since.)
                mastering.recovery!.heldTraffic.append((node, mastering.viewMembers[node] ?? 0, message))
                return
            }
            if isHoldingForDeadlock, waitsForDeadlockDecision(message, from: node) {
                waitForDeadlockDecision(.peer(message, from: node))
                return
            }
        case .lookupReply(let key, _, _):
            // The old directory's answer: asked again when recovery is done. (An answer for a lockspace whose
            // directory this run leaves as it was stands.)
            if isRecovering && !mastering.directoryServesDuringRecovery(key.lockspace) { return }
        case .removed:
            if isRecovering { return }
        default:
            break
        }
        // An operation of an owner whose life is not the view's member of its node (it ended, and recovery purged
        // or will purge its locks) is dropped, however long it waited here (for a lookup, or held by recovery).
        if let owner = message.operationOwner, owner.node != configuration.nodeID,
            mastering.viewMembers[owner.node] != owner.incarnation
        {
            return
        }
        switch message {
        case .deadlockSearch, .deadlockGraph, .deadlockCycle, .deadlockCheck, .deadlockChecked, .deadlockVictim,
            .deadlockRelease, .deadlockRefused:
            receiveDeadlockMessage(message, from: node)
        case .purge(let reference, let lockspace, let purgedNode, let pid, let uid):
            purgeForPeer(reference: reference, lockspace: lockspace, node: purgedNode, pid: pid, user: uid, from: node)
        case .purged(let reference, let count, let skipped):
            purgePartDone(reference, count: Int(count), skipped: Int(skipped), from: node)
        case .lookup(let key):
            // Sent under an older view by a node that has not recovered yet: it asks the new directory node when
            // its recovery is done, and an answer from here could name a second master.
            guard mastering.directoryNode(of: key) == configuration.nodeID else { return }
            let master = mastering.directory[key] ?? node
            mastering.directory[key] = master
            if master == configuration.nodeID { mastering.masters[key] = master }
            send(.lookupReply(key, master: master, floor: mastering.tossFloors[key.lockspace] ?? 0), to: node)
        case .lookupReply(let key, let master, let floor):
            // An answer to a lookup sent before this node dropped the resource (the REMOVE follows it): stale once
            // the directory has the REMOVE, and REMOVED comes after it.
            if mastering.removing.contains(key) { return }
            mastering.masters[key] = master
            if master == configuration.nodeID { raiseTokenFloor(key.lockspace, to: floor) }
            let waiting = mastering.awaitingLookup.removeValue(forKey: key) ?? []
            // (Asked again after a recovery for a resource it was dropping: idle, so dropped again later.)
            if waiting.isEmpty { mastering.tossQueue.append((key, engine.now, 0)) }
            for (connection, request) in waiting {
                retry(request, from: connection)
            }
            for (node, request) in mastering.peerRequestsAwaitingLookup.removeValue(forKey: key) ?? [] {
                receive(request, from: node)
            }
        case .request(let reference, let remote):
            let key = DirectoryKey(lockspace: remote.lockspace, name: remote.request.name)
            if remote.request.parent == nil, mastering.masters[key] != configuration.nodeID {
                if mastering.awaitingLookup[key] != nil {
                    mastering.peerRequestsAwaitingLookup[key, default: []].append((node, message))
                } else {
                    send(.reply(ref: reference, .notMaster), to: node)
                }
                return
            }
            guard let lockspace = openForPeer(remote.lockspace, valueBlockLength: remote.valueBlockLength) else {
                send(
                    .reply(
                        ref: reference,
                        .refused(
                            DLMError(
                                .invalid,
                                "lockspace \(remote.lockspace.displayName) has another value block length here"))),
                    to: node)
                return
            }
            var request = remote.request
            request.lockspace = lockspace
            effects.removeAll(keepingCapacity: true)
            engine.handle(.setProcess(pid: remote.pid, uid: remote.uid, owner: request.owner), into: &effects)
            run(
                .lock(request), reply: nil,
                peer: PeerReplyTarget(node: node, reference: reference, owner: request.owner))
        case .convert(let reference, let request):
            run(
                .convert(request), reply: nil,
                peer: PeerReplyTarget(node: node, reference: reference, owner: request.owner, lock: request.lock))
        case .unlock(let reference, let request):
            run(
                .unlock(request), reply: nil,
                peer: PeerReplyTarget(node: node, reference: reference, owner: request.owner, lock: request.lock))
        case .deadlockCancel(let reference, let lock, let owner):
            // The engine reuses lock ids at once: an id that names another owner's lock now is no lock of the sender.
            guard engine.lockState(lock)?.owner == owner else {
                send(
                    .reply(ref: reference, .refused(DLMError(.noEntry, "no lock \(lock.rawValue) of \(owner)"))),
                    to: node)
                return
            }
            // OK for the requester; the EDEADLK goes to the lock's owner as any completion (CLIENT.md §7).
            run(
                .cancelForDeadlock(lock), reply: nil,
                peer: PeerReplyTarget(
                    node: node, reference: reference, owner: owner, lock: lock, answersWithCompletion: false))
        case .reply(let reference, let reply):
            answered(reference, reply, from: node)
        case .completion(let completion):
            completed(completion, from: node)
        case .blockingCallback(let callback):
            guard let copy = mastering.copies.index(master: node, lock: callback.lock, owner: callback.owner),
                let connection = connection(of: callback.owner), clients[Int(connection.slot)].state == .ready,
                mastering.copies.blockingIsNew(copy, mode: callback.mode)
            else { return }
            deliver(connection, .blocking(lock: ProcessCopies.lockID(copy).rawValue, mode: callback.mode))
        case .ownerExited(let owner):
            // Its requests that wait for this node's own lookup are dropped: they came before the exit.
            if !mastering.peerRequestsAwaitingLookup.isEmpty {
                for key in Array(mastering.peerRequestsAwaitingLookup.keys) {
                    mastering.peerRequestsAwaitingLookup[key]!.removeAll {
                        if case .request(_, let remote) = $0.message { return remote.request.owner == owner }
                        return false
                    }
                }
            }
            run(.ownerExited(owner), reply: nil)
            mastering.rebuilt.forget(owner: owner)
        case .remove(let key, let floor, let view):
            // Sent before a recovery that rebuilt the directory (held here through it, or slow): stale. Its sender
            // forgot it at that recovery's start and may master the resource again by now.
            guard view == mastering.recoveredView else { return }
            // The master of a resource drops it: forgotten here if this node still names it (a node that asked
            // before this message was answered with it, and is told "not master" by it now).
            mastering.tossFloors[key.lockspace] = max(mastering.tossFloors[key.lockspace] ?? 0, floor)
            if mastering.directory[key] == node { mastering.directory[key] = nil }
            if mastering.masters[key] == node { mastering.masters[key] = nil }
            send(.removed(key), to: node)
        case .removed(let key):
            removed(key)
        case .recoverMasters, .recoverLocks, .recoverBindings, .recoveryDone, .recoverValues, .recoverStored,
            .recoverLockspaces, .recoveryRequest, .recoveryStart, .valueReplicas, .valueReplicasStored:
            break
        }
    }

    // MARK: Dropping idle resources

    /// How many idle resources a tick drops at most (the others at the next ticks).
    static let tossSlice = 4_096

    /// Drops what has been idle for `tossDelay`: resources this node masters and whose engine resource is gone,
    /// and cached masters of resources none of its clients' locks uses. Not during recovery, which rebuilds both.
    mutating func tossIdle(now: Instant) {
        for freed in engine.takeFreedResources() {
            mastering.tossQueue.append(
                (DirectoryKey(lockspace: freed.lockspace, name: freed.name), freed.at, freed.fencingToken))
        }
        for key in mastering.copies.takeUnusedKeys() { mastering.tossQueue.append((key, now, 0)) }
        guard !isRecovering, !isStopped else { return }
        var budget = Self.tossSlice
        while budget > 0, let first = mastering.tossQueue.first, first.since &+ configuration.tossDelay <= now {
            mastering.tossQueue.removeFirst()
            budget -= 1
            toss(first.key, floor: first.floor)
        }
    }

    /// A new resource of the lockspace will start above `floor` (the tokens of a master that dropped one).
    mutating func raiseTokenFloor(_ lockspace: [UInt8], to floor: UInt64) {
        guard floor > 0, let id = engine.lockspace(named: lockspace) else { return }
        engine.raiseFencingTokenFloor(id, to: floor)
    }

    mutating func toss(_ key: DirectoryKey, floor: UInt64) {
        mastering.masters.dropIfStale(key)
        guard let master = mastering.masters[key], mastering.awaitingLookup[key] == nil else { return }
        if master != configuration.nodeID {
            if !mastering.copies.usesKey(key) { mastering.masters[key] = nil }
            return
        }
        guard !engine.hasTopLevelResource(lockspace: key.lockspace, name: key.name),
            !mastering.masters.isRebuilt(key)
        else { return }
        mastering.masters[key] = nil
        // (The lockspace's floor is at least the last token of every resource of it that was freed: this one's
        // last life included, which a queue entry of an earlier life does not know; also when a client released the
        // lockspace meanwhile: without its released floor, a queue entry's older token went to the directory, and
        // the next master issued again a token this one had issued.)
        let floor = max(floor, engine.fencingTokenFloor(named: key.lockspace))
        let directory = mastering.directoryNode(of: key)
        if directory == configuration.nodeID {
            mastering.directory[key] = nil
            mastering.tossFloors[key.lockspace] = max(mastering.tossFloors[key.lockspace] ?? 0, floor)
        } else {
            // Until the directory has forgotten it, requests for it wait here: a node that the directory names
            // this one to meanwhile is answered "not master" only once asking again finds no master.
            mastering.removing.insert(key)
            mastering.awaitingLookup[key] = []
            send(.remove(key, floor: floor, view: mastering.recoveredView), to: directory)
        }
    }

    /// The directory forgot the master of a resource this node dropped. Requests of this node's clients that came
    /// meanwhile look it up again (this node may master it again); other nodes' requests are answered "not
    /// master" and look it up again.
    mutating func removed(_ key: DirectoryKey) {
        guard mastering.removing.remove(key) != nil else { return }
        if let waiting = mastering.awaitingLookup[key], !waiting.isEmpty {
            send(.lookup(key), to: mastering.directoryNode(of: key))
            return
        }
        mastering.awaitingLookup[key] = nil
        for (node, request) in mastering.peerRequestsAwaitingLookup.removeValue(forKey: key) ?? [] {
            receive(request, from: node)
        }
    }

    /// A completion of a master for a lock of this node's client: its copy learns the mode, the client gets it.
    mutating func completed(_ completion: Completion, from node: UInt32, tag: UInt32 = 0) {
        guard let copy = mastering.copies.index(master: node, lock: completion.lock, owner: completion.owner),
            let connection = connection(of: completion.owner)
        else { return }
        if completion.mode == nil {
            mastering.copies.remove(copy)
        } else {
            mastering.copies.apply(completion, to: copy)
        }
        guard clients[Int(connection.slot)].state == .ready else { return }
        var local = completion
        local.lock = ProcessCopies.lockID(copy)
        deliver(connection, .completion(CompletionMessage(tag: tag, local)))
    }

    /// The master answered an operation of a client of this node: the reply, as on one node.
    mutating func answered(_ reference: UInt64, _ reply: PeerReply, from node: UInt32) {
        guard let pending = mastering.pending.removeValue(forKey: reference) else { return }
        let id = pending.connection
        guard isLive(id), clients[Int(id.slot)].state == .ready else { return }
        let lock = ProcessCopies.lockID(pending.copy)
        switch reply {
        case .refused(let error):
            if pending.isNewLock { mastering.copies.remove(pending.copy) }
            deliver(id, .error(tag: pending.tag, status: error.status, message: error.message))
        case .notMaster:
            // A stale cached master: forget it and ask the directory again.
            mastering.copies.remove(pending.copy)
            guard case .lock(let m) = pending.message,
                let info = engine.lockspaceInfo(LockspaceID(rawValue: m.lockspace))
            else {
                deliver(id, .error(tag: pending.tag, status: .noEntry, message: "the lock's master lost it"))
                break
            }
            mastering.masters[DirectoryKey(lockspace: info.name, name: m.name)] = nil
            retry(pending.message, from: id)
            return
        case .taken(let masterLock, let completion):
            if pending.isNewLock { mastering.copies.bind(pending.copy, masterLock: masterLock) }
            noteTaken(pending, completion: completion)
            if var completion {
                if completion.mode == nil { mastering.copies.remove(pending.copy) }
                completion.lock = lock
                deliver(id, .completion(CompletionMessage(tag: pending.tag, completion)))
            } else {
                deliver(id, .ok(tag: pending.tag, lock: lock.rawValue))
            }
        }
        replyDelivered(id)
    }

    /// What the copy learns from the master's answer: a mode granted at once, or a request or conversion queued;
    /// a value block written.
    mutating func noteTaken(_ pending: Mastering.PendingOperation, completion: Completion?) {
        let copy = pending.copy
        guard mastering.copies.copies[copy].record != nil else { return }
        var written: [UInt8]?
        switch pending.message {
        case .convert(let m):
            if completion == nil {
                mastering.copies.copies[copy].record!.requestedMode = m.mode
                mastering.copies.copies[copy].record!.timeout = m.timeoutNanoseconds == 0 ? nil : m.timeoutNanoseconds
            }
            if m.flags.contains(.valueBlock) { written = m.valueBlock }
        case .unlock(let m):
            if m.flags.contains(.valueBlock) { written = m.valueBlock }
        default:
            break
        }
        if let written, let mode = mastering.copies.copies[copy].record!.grantedMode, mode >= .pw {
            mastering.copies.copies[copy].record!.valueBlock = written
            mastering.copies.copies[copy].record!.valueBlockSequence += 1
        }
        if let completion { mastering.copies.apply(completion, to: copy) }
    }

    /// A request that waited for the directory (or met a stale master) runs again; the requests its connection sent
    /// after it run once it is answered.
    mutating func retry(_ message: ClientMessage, from id: ConnectionID) {
        guard isLive(id), clients[Int(id.slot)].state == .ready else { return }
        clients[Int(id.slot)].awaitingReply = false
        handleRequest(message, from: id, now: nil, environment: nil)
        if !clients[Int(id.slot)].awaitingReply { replyDelivered(id) }
    }

    /// The lockspace of a request from another node, opened (created if need be) with its value block length.
    mutating func openForPeer(_ name: [UInt8], valueBlockLength: Int) -> LockspaceID? {
        if let known = mastering.lockspaces[name], let info = engine.lockspaceInfo(known), info.name == name {
            return info.valueBlockLength == valueBlockLength ? known : nil
        }
        effects.removeAll(keepingCapacity: true)
        engine.handle(.openLockspace(name: name, valueBlockLength: valueBlockLength, create: true), into: &effects)
        for effect in effects {
            if case .lockspace(let info, let created) = effect {
                if created {
                    record(
                        .putLockspace(name: info.name, valueBlockLength: info.valueBlockLength, access: info.access))
                }
                mastering.lockspaces[name] = info.id
                return info.id
            }
        }
        return nil
    }
}

extension PeerMessage {
    /// The owner on whose behalf a request, conversion, unlock or owner exit is made.
    var operationOwner: OwnerID? {
        switch self {
        case .request(_, let remote): remote.request.owner
        case .convert(_, let request): request.owner
        case .unlock(_, let request): request.owner
        case .deadlockCancel(_, _, let owner): owner
        case .ownerExited(let owner): owner
        default: nil
        }
    }
}
