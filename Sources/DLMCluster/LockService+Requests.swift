import DLMCore
import DLMWire

/// Client frames (Protocol/CLIENT.md §4-§7): HELLO first, then requests, each turned into one engine input whose
/// effects become the reply and the frames for others.
extension LockService {
    /// The version dlmd reports in HELLO_REPLY and the status report.
    public static let version = "0.1.0"

    mutating func receive(
        _ message: ClientMessage, from id: ConnectionID, now: Instant?, environment: ReportEnvironment?
    ) {
        guard isLive(id) else { return }
        switch clients[Int(id.slot)].state {
        case .closing:
            return
        case .awaitingHello:
            guard case .hello(let hello) = message else {
                refuse(id, status: .protocolError, message: "the first frame must be HELLO")
                return
            }
            guard hello.minVersion <= ProtocolVersion.current, hello.maxVersion >= ProtocolVersion.current else {
                refuse(
                    id, status: .protocolError,
                    message: "no common protocol version: client speaks \(hello.minVersion)-\(hello.maxVersion), "
                        + "server speaks \(ProtocolVersion.current)")
                return
            }
            clients[Int(id.slot)].pid = Self.processID(claimed: hello.pid, kernel: clients[Int(id.slot)].credentials)
            queues[Int(id.slot)].name = hello.clientName
            clients[Int(id.slot)].state = .ready
            run(.setProcess(pid: clients[Int(id.slot)].pid, uid: userID(id), owner: owner(id)), reply: nil)
            clients[Int(id.slot)].engineSlot = engine.ownerSlotNumber(of: owner(id))
            if let uid = clients[Int(id.slot)].credentials?.uid {
                let account = engine.account(ofUser: uid)
                clients[Int(id.slot)].account = account
                engine.setAccount(account, of: owner(id))
            }
            deliver(
                id, .helloReply(HelloReply(nodeID: configuration.nodeID, server: "dlmd \(LockService.version)")))
        case .ready:
            if isHoldingForDeadlock, waitsForDeadlockDecision(message, from: id) {
                waitForDeadlockDecision(.frame(message, id, now, environment))
            } else if clients[Int(id.slot)].awaitingReply {
                queues[Int(id.slot)].deferredRequests.append((message, environment))
                requestQueued(id)
            } else if mustHold(message, from: id) {
                hold(message, from: id, environment: environment)
                requestQueued(id)
            } else {
                handleRequest(message, from: id, now: now, environment: environment)
            }
        }
    }

    mutating func handleRequest(
        _ message: ClientMessage, from id: ConnectionID, now: Instant?, environment: ReportEnvironment?
    ) {
        if let now, now > engine.now &+ configuration.tickInterval { advanceClock(to: now) }
        let owner = owner(id)
        switch message {
        case .hello:
            refuse(id, status: .protocolError, message: "a second HELLO")
        case .ping(let tag):
            deliver(id, .pong(tag: tag))
        case .bye(let tag):
            deliver(id, .ok(tag: tag, lock: 0))
            close(id)
        case .openLockspace(let tag, let name, let length, let create, let mode):
            if let refusal = openRefusal(id, name: name, create: create) {
                deliver(id, .error(tag: tag, status: .permissionDenied, message: refusal))
                return
            }
            if create, engine.lockspaceCount >= configuration.maxLockspaces, engine.lockspace(named: name) == nil {
                limitRefusals.lockspaces += 1
                let max = configuration.maxLockspaces
                deliver(
                    id,
                    .error(
                        tag: tag, status: .tryAgain, message: "dlmd holds at most \(max) lockspaces (max_lockspaces)"))
                return
            }
            if create, storeIsFull, engine.lockspace(named: name) == nil {
                deliver(
                    id,
                    .error(
                        tag: tag, status: .noSpace,
                        message: "the node's store is full: no new lockspace until it has room (store alarm)"))
                return
            }
            if opensThroughGroup(message, from: id) { return }
            run(
                .openLockspace(
                    name: name, valueBlockLength: length == 0 ? groupLength(of: name) : Int(length), create: create,
                    creator: create ? creator(id, mode: mode) : nil),
                reply: Reply(connection: id, tag: tag, kind: .lockspace))
        case .releaseLockspace(let tag, let lockspace, let force):
            if let refusal = releaseRefusal(id, lockspace: LockspaceID(rawValue: lockspace)) {
                deliver(id, .error(tag: tag, status: .notPermitted, message: refusal))
                return
            }
            // The reply comes with the end (`finished`), in slices when there are many locks.
            let context = nextBulkContext
            let name = engine.lockspaceInfo(LockspaceID(rawValue: lockspace))?.name ?? []
            bulkReplies[context] = .released(tag: tag, lockspace: name)
            clients[Int(id.slot)].awaitingReply = true
            nextBulkContext += 1
            run(
                .releaseLockspace(LockspaceID(rawValue: lockspace), force: force, requester: owner, context: context),
                reply: Reply(connection: id, tag: tag, kind: .finished(context)))
        case .fenceAck(let tag, let node):
            acknowledgeFence(of: node, tag: tag, from: id)
        case .purge(let tag, let lockspace, let nodeID, let pid):
            // Purging needs what locking needs: read and write permission on the lockspace.
            if !clients[Int(id.slot)].isRoot, let refusal = lockRefusal(id, lockspace: lockspace) {
                deliver(id, .error(tag: tag, status: .permissionDenied, message: refusal))
                return
            }
            if mastersAcrossNodes {
                purgeAcrossNodes(id, tag: tag, lockspace: lockspace, nodeID: nodeID, pid: pid, user: userID(id))
            } else if nodeID == 0 || nodeID == configuration.nodeID {
                // Done in slices; PURGED comes with the end (`finished`), after the sub-locks' completions and the
                // grants the purge let through, and waits for the commit.
                let context = nextBulkContext
                bulkReplies[context] = .purged(tag: tag, pid: pid)
                clients[Int(id.slot)].awaitingReply = true
                nextBulkContext += 1
                run(
                    .purge(
                        lockspace: LockspaceID(rawValue: lockspace), pid: pid, user: userID(id),
                        requester: owner, context: context),
                    reply: Reply(connection: id, tag: tag, kind: .finished(context)))
            } else if engine.lockspaceInfo(LockspaceID(rawValue: lockspace)) == nil {
                deliver(id, .error(tag: tag, status: .noEntry, message: "no such lockspace"))
            } else {
                deliver(id, .purged(tag: tag, count: 0))
            }
        case .lock(let m):
            if !clients[Int(id.slot)].isRoot, let refusal = lockRefusal(id, lockspace: m.lockspace) {
                deliver(id, .error(tag: m.tag, status: .permissionDenied, message: refusal))
                return
            }
            if let refusal = lockLimitRefusal(id, owner: owner, adopting: m.flags.contains(.orphan)) {
                limitRefusals.locks += 1
                deliver(id, .error(tag: m.tag, status: .tryAgain, message: refusal))
                return
            }
            if mastersAcrossNodes, routeLock(m, from: id) { return }
            let request = Self.lockRequest(
                m, owner: owner, lockspace: LockspaceID(rawValue: m.lockspace),
                parent: m.parent == 0 ? nil : LockID(rawValue: m.parent))
            run(.lock(request), reply: Reply(connection: id, tag: m.tag, kind: .lock))
        case .convert(let m):
            if mastersAcrossNodes, ProcessCopies.isCopy(m.lock) {
                forwardToMaster(message, from: id)
                return
            }
            if isRebuiltHere(m.lock, owner: owner) {
                deliver(id, .error(tag: m.tag, status: .noEntry, message: "no lock \(m.lock)"))
                return
            }
            let request = ConvertRequest(
                lock: LockID(rawValue: m.lock), owner: owner, mode: m.mode, flags: m.flags,
                valueBlock: m.flags.contains(.valueBlock) ? m.valueBlock : nil,
                timeout: m.timeoutNanoseconds == 0 ? nil : m.timeoutNanoseconds,
                priority: m.priority == 255 ? nil : m.priority)
            run(.convert(request), reply: Reply(connection: id, tag: m.tag, kind: .operation(request.lock)))
        case .unlock(let m):
            if mastersAcrossNodes, ProcessCopies.isCopy(m.lock) {
                forwardToMaster(message, from: id)
                return
            }
            if isRebuiltHere(m.lock, owner: owner) {
                deliver(id, .error(tag: m.tag, status: .noEntry, message: "no lock \(m.lock)"))
                return
            }
            let request = UnlockRequest(
                lock: LockID(rawValue: m.lock), owner: owner, flags: m.flags,
                valueBlock: m.flags.contains(.valueBlock) ? m.valueBlock : nil)
            run(.unlock(request), reply: Reply(connection: id, tag: m.tag, kind: .operation(request.lock)))
        case .deadlockCancel(let tag, let lock):
            if let refusal = deadlockCancelRefusal(id, lock: LockID(rawValue: lock)) {
                deliver(id, .error(tag: tag, status: .notPermitted, message: refusal))
                return
            }
            if mastersAcrossNodes, ProcessCopies.isCopy(lock) {
                forwardToMaster(message, from: id)
                return
            }
            run(.cancelForDeadlock(LockID(rawValue: lock)), reply: Reply(connection: id, tag: tag, kind: .ok(lock)))
        case .query(let tag, let kind, let argument):
            do throws(DLMError) {
                let json = try report(
                    kind, argument: argument, for: identity(id), environment: environment ?? ReportEnvironment())
                deliver(id, .queryReply(tag: tag, json: json))
            } catch {
                deliver(id, .error(tag: tag, status: error.status, message: error.message))
            }
        }
    }

    /// Why a new lock of this connection would pass a limit (`maxLocksPerConnection`, `maxLocksPerUser`), if it
    /// would. Its locks are those of its owner in this node's engine and its process copies (locks on resources
    /// mastered elsewhere); a lock that recovery rebuilt here for one of its copies counts twice. Its user's are
    /// those of all its connections, and the user's orphans this node masters; an adoption (`adopting`) is not held
    /// to the user's limit, since the orphan it takes over counted already.
    mutating func lockLimitRefusal(_ id: ConnectionID, owner: OwnerID, adopting: Bool = false) -> String? {
        // On the path of every LOCK: no lookup unless the connection may have copies, and no copy of the engine
        // (its counts are read inline; `mutating` passes the service by reference too).
        let slot = clients[Int(id.slot)].engineSlot
        var held = slot >= 0 ? engine.lockCount(ofOwnerSlot: slot) : engine.lockCount(of: owner)
        if !mastering.copies.byOwner.isEmpty { held += mastering.copies.count(of: id.owner) }
        if held >= configuration.maxLocksPerConnection {
            return "this connection holds \(held) locks, the most it may (max_locks_per_connection)"
        }
        let account = clients[Int(id.slot)].account
        guard account >= 0, !adopting else { return nil }
        let total = engine.lockCount(ofAccount: account) + mastering.copies.count(ofAccount: account)
        guard total >= configuration.maxLocksPerUser else { return nil }
        let uid = clients[Int(id.slot)].credentials?.uid ?? 0
        return "uid \(uid) holds \(total) locks on this node (its connections' and its orphans), the most it may "
            + "(max_locks_per_user)"
    }

    /// Whether an engine lock id that a client names is the lock recovery rebuilt here for one of its copies: the
    /// client knows that lock by its copy's id only, and the engine id may have been its own lock's before (the
    /// engine reuses ids at once), so a late unlock or conversion of that old lock must not reach the new one.
    /// (`mutating` to pass the service by reference: on the path of every UNLOCK and CONVERT, a call copied the
    /// whole service, 2.8 KB, to pass it, even inlined.)
    mutating func isRebuiltHere(_ lock: UInt32, owner: OwnerID) -> Bool {
        mastersAcrossNodes && mastering.copies.masteredHere > 0
            && mastering.copies.index(master: configuration.nodeID, lock: LockID(rawValue: lock), owner: owner) != nil
    }

    /// The engine's request for a LOCK frame.
    static func lockRequest(_ m: LockMessage, owner: OwnerID, lockspace: LockspaceID, parent: LockID?) -> LockRequest {
        LockRequest(
            lockspace: lockspace, owner: owner, name: m.name, mode: m.mode, flags: m.flags, parent: parent,
            timeout: m.timeoutNanoseconds == 0 ? nil : m.timeoutNanoseconds,
            transaction: m.transaction == 0 ? nil : m.transaction, priority: m.priority,
            wantsBlockingCallbacks: m.options.contains(.blockingCallbacks),
            alwaysFencingToken: m.options.contains(.alwaysFencingToken))
    }

    /// The reply an engine input owes its request.
    struct Reply {
        enum Kind {
            /// LOCK: the completion of the new lock if it came at once, else OK with its id.
            case lock
            /// CONVERT, UNLOCK: the completion of `lock` if it came at once, else OK with it.
            case operation(LockID)
            /// LOCKSPACE_OPEN: LOCKSPACE.
            case lockspace
            /// DEADLOCK_CANCEL: OK with the lock.
            case ok(UInt32)
            /// PURGE, LOCKSPACE_RELEASE: answered by `finished` (see `bulkReplies`).
            case finished(UInt64)
        }

        var connection: ConnectionID
        var tag: UInt32
        var kind: Kind
    }

    /// Runs one engine input and sends what came of it: the store's changes first (the frames of this input wait
    /// for their commit), then the reply, then the frames for others, in the engine's order. The completion of the
    /// request's own lock that came at once carries the request's tag and is its reply; without one, the reply is
    /// OK (with the lock), before everything else.
    mutating func run(_ input: Input, reply: Reply?, peer: PeerReplyTarget? = nil) {
        // Only this input's frames wait for this input's changes.
        holdingGeneration = nil
        defer { holdingGeneration = nil }
        effects.removeAll(keepingCapacity: true)
        engine.handle(input, into: &effects)
        // The value replicas and the changes for the store come last among the effects; they decide whether this
        // input's frames wait.
        var end = effects.count
        var replicas = false
        while end > 0 {
            if case .persist = effects[end - 1] {
                end -= 1
            } else if case .replicate = effects[end - 1] {
                end -= 1
                replicas = true
            } else {
                break
            }
        }
        if end < effects.count {
            for case .persist(let entry) in effects[end...] { record(.journal(entry)) }
            if replicas {
                var list: [ValueReplica] = []
                for case .replicate(let replica) in effects[end...] { list.append(replica) }
                sendReplicas(list)
            }
        }
        var replyLock: LockID?
        var replied = false
        // For another node's operation: its answer, with its own completion if that came at once, in that
        // completion's place among the effects (a FORCEUNLOCK's sub-locks' EUNLOCKs come before the parent's, as on
        // one node); first if none came.
        var answeredAt = -1
        var answer: PeerMessage?
        if let peer {
            if case .refused(let error) = effects.first {
                send(.reply(ref: peer.reference, .refused(error)), to: peer.node)
                return
            }
            var lock = peer.lock
            if case .accepted(let id) = effects.first { lock = id }
            var own: Completion?
            for index in 0..<end where peer.answersWithCompletion {
                if case .completion(let c) = effects[index], c.lock == lock, c.owner == peer.owner {
                    own = c
                    answeredAt = index
                    if c.mode == nil, !mastering.rebuilt.isEmpty { mastering.rebuilt.forget(lock: c.lock) }
                    break
                }
            }
            let reply = PeerMessage.reply(
                ref: peer.reference, .taken(lock: lock ?? LockID(rawValue: 0), completion: own))
            if answeredAt < 0 { send(reply, to: peer.node) } else { answer = reply }
        }
        if let reply {
            if case .refused(let error) = effects.first {
                if case .finished(let context) = reply.kind {
                    bulkReplies[context] = nil
                    clients[Int(reply.connection.slot)].awaitingReply = false
                }
                deliver(reply.connection, .error(tag: reply.tag, status: error.status, message: error.message))
                return
            }
            let requester = owner(reply.connection)
            switch reply.kind {
            case .lock, .operation:
                if case .lock = reply.kind, case .accepted(let id) = effects.first { replyLock = id }
                if case .operation(let lock) = reply.kind { replyLock = lock }
                let answered = effects[..<end].contains {
                    if case .completion(let c) = $0 { return c.lock == replyLock && c.owner == requester }
                    return false
                }
                if !answered, let lock = replyLock {
                    if case .unlock = input, engine.isUnlockingInSlices(lock) {
                        // FORCEUNLOCK of a parent with many sub-locks: the lock's completion, tagged, comes at the
                        // end, and the connection's later requests wait for it.
                        forceUnlockReplies[lock] = (requester, reply.tag)
                        clients[Int(reply.connection.slot)].awaitingReply = true
                    } else {
                        deliver(reply.connection, .ok(tag: reply.tag, lock: lock.rawValue))
                    }
                    replied = true
                }
            case .ok(let lock):
                deliver(reply.connection, .ok(tag: reply.tag, lock: lock))
                replied = true
            case .lockspace, .finished:
                break
            }
        }
        for index in 0..<end {
            if index == answeredAt, let answer, let peer {
                send(answer, to: peer.node)
                continue
            }
            switch effects[index] {
            case .refused, .accepted, .persist, .replicate:
                break
            case .lockspace(let info, let created):
                if created {
                    record(
                        .putLockspace(name: info.name, valueBlockLength: info.valueBlockLength, access: info.access))
                }
                if let reply {
                    if identity(reply.connection).permits(LockspaceAccess.read | LockspaceAccess.write, on: info.access)
                    {
                        admit(reply.connection, to: info.id.rawValue)
                    }
                    deliver(
                        reply.connection,
                        .lockspace(
                            tag: reply.tag, lockspace: info.id.rawValue, valueBlockLength: UInt8(info.valueBlockLength),
                            created: created))
                }
            case .completion(let completion):
                if completion.mode == nil, !mastering.rebuilt.isEmpty {
                    mastering.rebuilt.forget(lock: completion.lock)
                }
                if mastering.copies.masteredHere > 0, completion.owner.node == configuration.nodeID,
                    mastering.copies.index(master: configuration.nodeID, lock: completion.lock, owner: completion.owner)
                        != nil
                {
                    // A lock of this node's client that recovery rebuilt here: the client knows its copy's id.
                    completed(completion, from: configuration.nodeID)
                    continue
                }
                // Most effects go to the requester: no lookup for those.
                let connection: ConnectionID
                if let reply, completion.owner == owner(reply.connection) {
                    connection = reply.connection
                } else if let found = self.connection(of: completion.owner) {
                    connection = found
                } else {
                    if completion.owner.node != configuration.nodeID {
                        send(.completion(completion), to: completion.owner.node)
                    }
                    continue
                }
                guard clients[Int(connection.slot)].state == .ready else { continue }
                var tag: UInt32 = 0
                if !replied, let reply, completion.lock == replyLock, connection == reply.connection {
                    tag = reply.tag
                    replied = true
                } else if !forceUnlockReplies.isEmpty, completion.status == .unlocked,
                    let pending = forceUnlockReplies[completion.lock], pending.owner == completion.owner
                {
                    forceUnlockReplies[completion.lock] = nil
                    holdForEarlierSlices()
                    deliver(connection, .completion(CompletionMessage(tag: pending.tag, completion)))
                    replyDelivered(connection)
                    continue
                }
                deliver(connection, .completion(CompletionMessage(tag: tag, completion)))
            case .blockingCallback(let callback):
                if callback.owner.node != configuration.nodeID {
                    send(.blockingCallback(callback), to: callback.owner.node)
                    continue
                }
                guard let connection = self.connection(of: callback.owner),
                    clients[Int(connection.slot)].state == .ready
                else { continue }
                if mastering.copies.masteredHere > 0,
                    let copy = mastering.copies.index(
                        master: configuration.nodeID, lock: callback.lock, owner: callback.owner)
                {
                    guard mastering.copies.blockingIsNew(copy, mode: callback.mode) else { continue }
                    deliver(connection, .blocking(lock: ProcessCopies.lockID(copy).rawValue, mode: callback.mode))
                    continue
                }
                deliver(connection, .blocking(lock: callback.lock.rawValue, mode: callback.mode))
            case .finished(let finished):
                finishBulk(finished)
            }
        }
    }

    /// The live connection of an owner of this node, if there is one.
    func connection(of owner: OwnerID) -> ConnectionID? {
        guard owner.node == configuration.nodeID, owner.incarnation == configuration.incarnation,
            let slot = slotsByOwner[owner.rawValue]
        else { return nil }
        return clients[Int(slot)].id
    }
}
