import DLMCore
import NIOCore

/// The peer lock protocol's frames (Protocol/PEER.md): `PeerMessage` to bytes and back.
extension PeerMessage {
    /// PEER.md §3.
    public enum Kind: UInt8, CaseIterable, Sendable {
        case lookup = 1
        case lookupReply = 2
        case request = 3
        case convert = 4
        case unlock = 5
        case reply = 6
        case completion = 7
        case blocking = 8
        case ownerExited = 9
        case recoverMasters = 10
        case recoverLocks = 11
        case recoverBindings = 12
        case recoveryDone = 13
        case valueReplicas = 14
        case valueReplicasStored = 15
        case recoverValues = 16
        case remove = 17
        case removed = 18
        case deadlockSearch = 19
        case deadlockGraph = 20
        case deadlockCycle = 21
        case deadlockCheck = 22
        case deadlockChecked = 23
        case deadlockVictim = 24
        case purge = 25
        case purged = 26
        case deadlockRelease = 27
        case deadlockRefused = 28
        case deadlockCancel = 29
        case recoverStored = 30
        case recoverLockspaces = 31
        case recoveryRequest = 32
        case recoveryStart = 33
    }

    /// The largest frame (after its length field).
    public static let maxFrame = 16 * 1024 * 1024

    public var kind: Kind {
        switch self {
        case .lookup: .lookup
        case .lookupReply: .lookupReply
        case .request: .request
        case .convert: .convert
        case .unlock: .unlock
        case .reply: .reply
        case .completion: .completion
        case .blockingCallback: .blocking
        case .ownerExited: .ownerExited
        case .recoverMasters: .recoverMasters
        case .recoverLocks: .recoverLocks
        case .recoverBindings: .recoverBindings
        case .recoveryDone: .recoveryDone
        case .valueReplicas: .valueReplicas
        case .valueReplicasStored: .valueReplicasStored
        case .recoverValues: .recoverValues
        case .recoverStored: .recoverStored
        case .remove: .remove
        case .removed: .removed
        case .deadlockSearch: .deadlockSearch
        case .deadlockGraph: .deadlockGraph
        case .deadlockCycle: .deadlockCycle
        case .deadlockCheck: .deadlockCheck
        case .deadlockChecked: .deadlockChecked
        case .deadlockVictim: .deadlockVictim
        case .purge: .purge
        case .purged: .purged
        case .deadlockRelease: .deadlockRelease
        case .deadlockRefused: .deadlockRefused
        case .deadlockCancel: .deadlockCancel
        case .recoverLockspaces: .recoverLockspaces
        case .recoveryRequest: .recoveryRequest
        case .recoveryStart: .recoveryStart
        }
    }

    /// Appends the message as one frame.
    public func encode(into buffer: inout ByteBuffer) {
        writeFrame(into: &buffer, type: kind.rawValue) { body in
            switch self {
            case .lookup(let key), .removed(let key):
                body.writeBytes8(key.lockspace)
                body.writeBytes8(key.name)
            case .remove(let key, let floor, let view):
                body.writeBytes8(key.lockspace)
                body.writeBytes8(key.name)
                body.writeInteger(floor)
                body.writeInteger(view)
            case .lookupReply(let key, let master, let floor):
                body.writeBytes8(key.lockspace)
                body.writeBytes8(key.name)
                body.writeInteger(master)
                body.writeInteger(floor)
            case .request(let reference, let remote):
                let r = remote.request
                body.writeInteger(reference)
                body.writeBytes8(remote.lockspace)
                body.writeInteger(UInt8(truncatingIfNeeded: remote.valueBlockLength))
                body.writeInteger(remote.pid)
                body.writeInteger(remote.uid)
                body.writeOwner(r.owner)
                body.writeBytes8(r.name)
                body.writeInteger(r.mode.rawValue)
                body.writeInteger(r.flags.rawValue)
                body.writeInteger(r.parent?.rawValue ?? 0)
                body.writeInteger(r.timeout ?? 0)
                body.writeInteger(r.transaction ?? 0)
                body.writeInteger(r.priority)
                body.writeInteger(UInt8((r.wantsBlockingCallbacks ? 1 : 0) | (r.alwaysFencingToken ? 2 : 0)))
            case .convert(let reference, let r):
                body.writeInteger(reference)
                body.writeInteger(r.lock.rawValue)
                body.writeOwner(r.owner)
                body.writeInteger(r.mode.rawValue)
                body.writeInteger(r.flags.rawValue)
                body.writeOptionalBytes8(r.valueBlock)
                body.writeInteger(r.timeout ?? 0)
                body.writeInteger(r.priority ?? 255)
                body.writeInteger(r.valueBlockBase ?? .max)
            case .unlock(let reference, let r):
                body.writeInteger(reference)
                body.writeInteger(r.lock.rawValue)
                body.writeOwner(r.owner)
                body.writeInteger(r.flags.rawValue)
                body.writeOptionalBytes8(r.valueBlock)
                body.writeInteger(r.valueBlockBase ?? .max)
            case .reply(let reference, let reply):
                body.writeInteger(reference)
                switch reply {
                case .refused(let error):
                    body.writeInteger(UInt8(0))
                    body.writeInteger(error.status.rawValue)
                    body.writeString16(error.message)
                case .notMaster:
                    body.writeInteger(UInt8(1))
                case .taken(let lock, let completion):
                    body.writeInteger(UInt8(2))
                    body.writeInteger(lock.rawValue)
                    body.writeInteger(UInt8(completion == nil ? 0 : 1))
                    if let completion { body.writeCompletion(completion) }
                }
            case .completion(let completion):
                body.writeCompletion(completion)
            case .blockingCallback(let callback):
                body.writeInteger(callback.lock.rawValue)
                body.writeOwner(callback.owner)
                body.writeInteger(callback.mode.rawValue)
            case .ownerExited(let owner):
                body.writeOwner(owner)
            case .recoverMasters(let view, let keys):
                body.writeInteger(view)
                body.writeInteger(UInt32(keys.count))
                for key in keys {
                    body.writeBytes8(key.lockspace)
                    body.writeBytes8(key.name)
                }
            case .recoverLocks(let view, let locks):
                body.writeInteger(view)
                body.writeInteger(UInt32(locks.count))
                for lock in locks { body.writeRecoveredLock(lock) }
            case .recoverBindings(let view, let bindings):
                body.writeInteger(view)
                body.writeInteger(UInt32(bindings.count))
                for binding in bindings {
                    body.writeInteger(binding.copy)
                    body.writeInteger(binding.owner)
                    body.writeInteger(binding.lock.rawValue)
                    if let grant = binding.grant {
                        body.writeInteger(grant.mode.rawValue)
                        body.writeInteger(grant.flags.rawValue)
                        body.writeOptionalBytes8(grant.valueBlock)
                        body.writeInteger(grant.valueBlockSequence)
                        body.writeInteger(grant.fencingToken)
                    } else {
                        body.writeInteger(UInt8(255))
                    }
                }
            case .recoveryDone(let view, let phase, let departed, let recovered, let stored):
                body.writeInteger(view)
                body.writeInteger(phase)
                body.writeNodes(departed)
                body.writeInteger(recovered)
                body.writeInteger(stored)
            case .valueReplicas(let generation, let incarnation, let view, let replicas):
                body.writeInteger(generation)
                body.writeInteger(incarnation)
                body.writeInteger(view)
                body.writeInteger(UInt32(replicas.count))
                for replica in replicas { body.writeValueReplica(replica) }
            case .recoverValues(let view, let replicas), .recoverStored(let view, let replicas):
                body.writeInteger(view)
                body.writeInteger(UInt32(replicas.count))
                for replica in replicas { body.writeValueReplica(replica) }
            case .valueReplicasStored(let generation):
                body.writeInteger(generation)
            case .deadlockSearch(let search, let view):
                body.writeInteger(search)
                body.writeInteger(view)
            case .deadlockGraph(let search, let view, let last, let refused, let part):
                body.writeInteger(search)
                body.writeInteger(view)
                body.writeInteger(UInt8((last ? 1 : 0) | (refused ? 2 : 0)))
                body.writeInteger(UInt32(part.participants.count))
                for entry in part.participants {
                    body.writeInteger(entry.index)
                    body.writeParticipant(entry.participant)
                }
                body.writeInteger(UInt32(part.edges.count))
                for edge in part.edges {
                    body.writeInteger(edge.from)
                    body.writeInteger(edge.to)
                    body.writeInteger(edge.lock.rawValue)
                    body.writeInteger(edge.waitSequence)
                }
            case .deadlockCycle(let view, let steps):
                body.writeInteger(view)
                body.writeInteger(UInt32(steps.count))
                for step in steps {
                    body.writeInteger(step.master)
                    body.writeInteger(step.lock.rawValue)
                    body.writeInteger(step.waitSequence)
                    body.writeParticipant(step.waiter)
                }
            case .deadlockCheck(let check, let view, let items):
                body.writeInteger(check)
                body.writeInteger(view)
                body.writeInteger(UInt32(items.count))
                for item in items {
                    body.writeInteger(item.lock.rawValue)
                    body.writeInteger(item.waitSequence)
                    body.writeParticipant(item.blocker)
                }
            case .deadlockChecked(let check, let states):
                body.writeInteger(check)
                body.writeInteger(UInt32(states.count))
                for state in states {
                    body.writeInteger(UInt8(state.busy ? 2 : state.waits ? 1 : 0))
                    body.writeInteger(state.priority)
                    body.writeInteger(state.waited)
                }
            case .deadlockVictim(let view, let check, let lock, let sequence):
                body.writeInteger(view)
                body.writeInteger(check)
                body.writeInteger(lock.rawValue)
                body.writeInteger(sequence)
            case .purge(let reference, let lockspace, let node, let pid, let uid):
                body.writeInteger(reference)
                body.writeBytes8(lockspace)
                body.writeInteger(node)
                body.writeInteger(pid)
                body.writeInteger(uid)
            case .purged(let reference, let count, let skipped):
                body.writeInteger(reference)
                body.writeInteger(count)
                body.writeInteger(skipped)
            case .deadlockRelease(let check), .deadlockRefused(let check):
                body.writeInteger(check)
            case .deadlockCancel(let reference, let lock, let owner):
                body.writeInteger(reference)
                body.writeInteger(lock.rawValue)
                body.writeOwner(owner)
            case .recoverLockspaces(let run, let report):
                body.writeInteger(run)
                body.writeInteger(report.recovered)
                body.writeNodes(report.departed)
                body.writeInteger(UInt32(report.unsettled.count))
                for name in report.unsettled { body.writeBytes8(name) }
                body.writeInteger(UInt32(report.lockspaces.count))
                for lockspace in report.lockspaces {
                    body.writeBytes8(lockspace.name)
                    body.writeInteger(UInt8(truncatingIfNeeded: lockspace.valueBlockLength))
                    body.writeInteger(UInt8(lockspace.joining ? 1 : 0))
                }
                body.writeInteger(UInt32(report.tokenFloors.count))
                for floor in report.tokenFloors {
                    body.writeBytes8(floor.lockspace)
                    body.writeInteger(floor.floor)
                }
            case .recoveryRequest(let number), .recoveryStart(let number):
                body.writeInteger(number)
            }
        }
    }

    /// Decodes one frame's body (`nextFrame` splits the stream).
    public static func decode(type: UInt8, body: inout ByteBuffer) throws(WireError) -> PeerMessage {
        guard let kind = Kind(rawValue: type) else {
            throw .malformed("unknown peer message type 0x\(String(type, radix: 16))")
        }
        let message: PeerMessage
        switch kind {
        case .lookup:
            message = .lookup(try body.readDirectoryKey())
        case .remove:
            let key = try body.readDirectoryKey()
            let floor = try body.read(UInt64.self, "floor")
            message = .remove(key, floor: floor, view: try body.read(UInt64.self, "view"))
        case .removed:
            message = .removed(try body.readDirectoryKey())
        case .lookupReply:
            let key = try body.readDirectoryKey()
            let master = try body.read(UInt32.self, "master")
            message = .lookupReply(key, master: master, floor: try body.read(UInt64.self, "floor"))
        case .request:
            let reference = try body.read(UInt64.self, "ref")
            let lockspace = try body.readName("lockspace")
            let valueBlockLength = Int(try body.read(UInt8.self, "value_block_length"))
            guard valueBlockLength <= WireLimits.maxValueBlock else {
                throw .malformed("value_block_length \(valueBlockLength) is above \(WireLimits.maxValueBlock)")
            }
            let pid = try body.read(UInt32.self, "pid")
            let uid = try body.read(UInt32.self, "uid")
            let owner = try body.readOwner()
            let name = try body.readName("name")
            let mode = try body.readMode("mode")
            let flags = LockFlags(rawValue: try body.read(UInt32.self, "flags"))
            let parent = try body.read(UInt32.self, "parent")
            let timeout = try body.read(UInt64.self, "timeout")
            let transaction = try body.read(UInt64.self, "transaction")
            let priority = try body.read(UInt8.self, "priority")
            let options = try body.read(UInt8.self, "options")
            guard options & ~3 == 0 else {
                throw .malformed("options 0x\(String(options, radix: 16)) has unknown bits")
            }
            let request = LockRequest(
                lockspace: LockspaceID(rawValue: 0), owner: owner, name: name, mode: mode, flags: flags,
                parent: parent == 0 ? nil : LockID(rawValue: parent), timeout: timeout == 0 ? nil : timeout,
                transaction: transaction == 0 ? nil : transaction, priority: priority,
                wantsBlockingCallbacks: options & 1 != 0, alwaysFencingToken: options & 2 != 0)
            message = .request(
                ref: reference,
                RemoteLockRequest(
                    lockspace: lockspace, valueBlockLength: valueBlockLength, pid: pid, uid: uid, request: request))
        case .convert:
            let reference = try body.read(UInt64.self, "ref")
            let lock = LockID(rawValue: try body.read(UInt32.self, "lock"))
            let owner = try body.readOwner()
            let mode = try body.readMode("mode")
            let flags = LockFlags(rawValue: try body.read(UInt32.self, "flags"))
            let valueBlock = try body.readOptionalBytes8("value_block")
            let timeout = try body.read(UInt64.self, "timeout")
            let priority = try body.read(UInt8.self, "priority")
            let base = try body.read(UInt64.self, "value_base")
            message = .convert(
                ref: reference,
                ConvertRequest(
                    lock: lock, owner: owner, mode: mode, flags: flags, valueBlock: valueBlock,
                    timeout: timeout == 0 ? nil : timeout, priority: priority == 255 ? nil : priority,
                    valueBlockBase: base == .max ? nil : base))
        case .unlock:
            let reference = try body.read(UInt64.self, "ref")
            let lock = LockID(rawValue: try body.read(UInt32.self, "lock"))
            let owner = try body.readOwner()
            let flags = LockFlags(rawValue: try body.read(UInt32.self, "flags"))
            let valueBlock = try body.readOptionalBytes8("value_block")
            let base = try body.read(UInt64.self, "value_base")
            message = .unlock(
                ref: reference,
                UnlockRequest(
                    lock: lock, owner: owner, flags: flags, valueBlock: valueBlock,
                    valueBlockBase: base == .max ? nil : base))
        case .reply:
            let reference = try body.read(UInt64.self, "ref")
            let replyKind = try body.read(UInt8.self, "kind")
            switch replyKind {
            case 0:
                let status = DLMStatus(rawValue: try body.read(Int32.self, "status"))
                message = .reply(ref: reference, .refused(DLMError(status, try body.readString16("message"))))
            case 1:
                message = .reply(ref: reference, .notMaster)
            case 2:
                let lock = LockID(rawValue: try body.read(UInt32.self, "lock"))
                let present = try body.read(UInt8.self, "has_completion")
                guard present <= 1 else { throw .malformed("has_completion \(present) is not 0 or 1") }
                message = .reply(
                    ref: reference, .taken(lock: lock, completion: present == 1 ? try body.readCompletion() : nil))
            default:
                throw .malformed("reply kind \(replyKind) is not 0, 1 or 2")
            }
        case .completion:
            message = .completion(try body.readCompletion())
        case .blocking:
            let lock = LockID(rawValue: try body.read(UInt32.self, "lock"))
            let owner = try body.readOwner()
            message = .blockingCallback(BlockingCallback(lock: lock, owner: owner, mode: try body.readMode("mode")))
        case .ownerExited:
            message = .ownerExited(try body.readOwner())
        case .recoverMasters:
            let view = try body.read(UInt64.self, "view")
            let count = try body.readCount("count", least: 4)
            var keys: [DirectoryKey] = []
            keys.reserveCapacity(count)
            for _ in 0..<count { keys.append(try body.readDirectoryKey()) }
            message = .recoverMasters(view: view, keys)
        case .recoverLocks:
            let view = try body.read(UInt64.self, "view")
            let count = try body.readCount("count", least: RecoveredLock.leastEncodedLength)
            var locks: [RecoveredLock] = []
            locks.reserveCapacity(count)
            for _ in 0..<count { locks.append(try body.readRecoveredLock(lockspaceOfPrevious: locks.last?.lockspace)) }
            message = .recoverLocks(view: view, locks)
        case .recoverBindings:
            let view = try body.read(UInt64.self, "view")
            let count = try body.readCount("count", least: 17)
            var bindings: [RecoveredBinding] = []
            bindings.reserveCapacity(count)
            for _ in 0..<count {
                let copy = try body.read(UInt32.self, "copy")
                let owner = try body.read(UInt64.self, "owner")
                let lock = LockID(rawValue: try body.read(UInt32.self, "lock"))
                let rawMode = try body.read(UInt8.self, "grant_mode")
                var grant: RecoveredGrant?
                if rawMode != 255 {
                    guard let mode = LockMode(rawValue: rawMode) else {
                        throw .malformed("grant_mode \(rawMode) is not a mode")
                    }
                    let flags = CompletionFlags(rawValue: try body.read(UInt8.self, "grant_flags"))
                    let valueBlock = try body.readOptionalBytes8("value_block")
                    let sequence = try body.read(UInt64.self, "value_block_sequence")
                    grant = RecoveredGrant(
                        mode: mode, flags: flags, valueBlock: valueBlock, valueBlockSequence: sequence,
                        fencingToken: try body.read(UInt64.self, "fencing_token"))
                }
                bindings.append(RecoveredBinding(copy: copy, owner: owner, lock: lock, grant: grant))
            }
            message = .recoverBindings(view: view, bindings)
        case .recoveryDone:
            let view = try body.read(UInt64.self, "view")
            let phase = try body.read(UInt8.self, "phase")
            let departed = try body.readNodes("count")
            let recovered = try body.read(UInt64.self, "recovered")
            let stored = try body.read(UInt64.self, "stored")
            message = .recoveryDone(
                view: view, phase: phase, departed: departed, recovered: recovered, stored: stored)
        case .valueReplicas, .recoverValues, .recoverStored:
            let number = try body.read(UInt64.self, kind == .valueReplicas ? "generation" : "view")
            let incarnation = kind == .valueReplicas ? try body.read(UInt64.self, "incarnation") : 0
            let senderView = kind == .valueReplicas ? try body.read(UInt64.self, "view") : 0
            let count = try body.readCount("count", least: ValueReplica.leastEncodedLength)
            var replicas: [ValueReplica] = []
            replicas.reserveCapacity(count)
            for _ in 0..<count {
                let replica = try body.readValueReplica()
                // (Only a backup node's replica sent to a new master may be outdated, or say where it came from.)
                guard !replica.outdated || kind == .recoverValues else {
                    throw .malformed("an outdated value replica outside RECOVER_VALUES")
                }
                guard replica.origin == nil || kind == .recoverValues else {
                    throw .malformed("a value replica's origin outside RECOVER_VALUES")
                }
                replicas.append(replica)
            }
            switch kind {
            case .valueReplicas:
                message = .valueReplicas(generation: number, incarnation: incarnation, view: senderView, replicas)
            case .recoverValues: message = .recoverValues(view: number, replicas)
            default: message = .recoverStored(view: number, replicas)
            }
        case .valueReplicasStored:
            message = .valueReplicasStored(generation: try body.read(UInt64.self, "generation"))
        case .deadlockSearch:
            let search = try body.read(UInt64.self, "search")
            message = .deadlockSearch(search: search, view: try body.read(UInt64.self, "view"))
        case .deadlockGraph:
            let search = try body.read(UInt64.self, "search")
            let view = try body.read(UInt64.self, "view")
            let flags = try body.read(UInt8.self, "graph_flags")
            guard flags & ~3 == 0 else {
                throw .malformed("graph flags 0x\(String(flags, radix: 16)) has unknown bits")
            }
            var part = WaitForGraphPart()
            let participants = try body.readCount("participants", least: 4 + ByteBuffer.participantLength)
            part.participants.reserveCapacity(participants)
            for _ in 0..<participants {
                let index = try body.read(UInt32.self, "index")
                part.participants.append(GraphParticipant(index: index, participant: try body.readParticipant()))
            }
            let edges = try body.readCount("edges", least: 16)
            part.edges.reserveCapacity(edges)
            for _ in 0..<edges {
                let from = try body.read(UInt32.self, "from")
                let to = try body.read(UInt32.self, "to")
                let lock = LockID(rawValue: try body.read(UInt32.self, "lock"))
                part.edges.append(
                    GraphEdge(from: from, to: to, lock: lock, waitSequence: try body.read(UInt32.self, "wait")))
            }
            message = .deadlockGraph(search: search, view: view, last: flags & 1 != 0, refused: flags & 2 != 0, part)
        case .deadlockCycle:
            let view = try body.read(UInt64.self, "view")
            let count = try body.readCount("count", least: 12 + ByteBuffer.participantLength)
            var steps: [DeadlockStep] = []
            steps.reserveCapacity(count)
            for _ in 0..<count {
                let master = try body.read(UInt32.self, "master")
                let lock = LockID(rawValue: try body.read(UInt32.self, "lock"))
                let sequence = try body.read(UInt32.self, "wait")
                steps.append(
                    DeadlockStep(master: master, lock: lock, waitSequence: sequence, waiter: try body.readParticipant())
                )
            }
            message = .deadlockCycle(view: view, steps)
        case .deadlockCheck:
            let check = try body.read(UInt64.self, "check")
            let view = try body.read(UInt64.self, "view")
            let count = try body.readCount("count", least: 8 + ByteBuffer.participantLength)
            var items: [DeadlockCheckItem] = []
            items.reserveCapacity(count)
            for _ in 0..<count {
                let lock = LockID(rawValue: try body.read(UInt32.self, "lock"))
                let sequence = try body.read(UInt32.self, "wait")
                items.append(DeadlockCheckItem(lock: lock, waitSequence: sequence, blocker: try body.readParticipant()))
            }
            message = .deadlockCheck(check: check, view: view, items)
        case .deadlockChecked:
            let check = try body.read(UInt64.self, "check")
            let count = try body.readCount("count", least: 10)
            var states: [DeadlockStepState] = []
            states.reserveCapacity(count)
            for _ in 0..<count {
                let waits = try body.read(UInt8.self, "waits")
                guard waits <= 2 else { throw .malformed("waits \(waits) is not 0, 1 or 2") }
                let priority = try body.read(UInt8.self, "priority")
                states.append(
                    DeadlockStepState(
                        waits: waits == 1, priority: priority, waited: try body.read(UInt64.self, "waited"),
                        busy: waits == 2))
            }
            message = .deadlockChecked(check: check, states)
        case .deadlockVictim:
            let view = try body.read(UInt64.self, "view")
            let check = try body.read(UInt64.self, "check")
            let lock = LockID(rawValue: try body.read(UInt32.self, "lock"))
            message = .deadlockVictim(
                view: view, check: check, lock: lock, waitSequence: try body.read(UInt32.self, "wait"))
        case .purge:
            let reference = try body.read(UInt64.self, "ref")
            let lockspace = try body.readName("lockspace")
            let node = try body.read(UInt32.self, "node")
            let pid = try body.read(UInt32.self, "pid")
            message = .purge(
                ref: reference, lockspace: lockspace, node: node, pid: pid, uid: try body.read(UInt32.self, "uid"))
        case .purged:
            let reference = try body.read(UInt64.self, "ref")
            let count = try body.read(UInt32.self, "count")
            message = .purged(ref: reference, count: count, skipped: try body.read(UInt32.self, "skipped"))
        case .deadlockRelease:
            message = .deadlockRelease(check: try body.read(UInt64.self, "check"))
        case .deadlockRefused:
            message = .deadlockRefused(check: try body.read(UInt64.self, "check"))
        case .deadlockCancel:
            let reference = try body.read(UInt64.self, "ref")
            let lock = LockID(rawValue: try body.read(UInt32.self, "lock"))
            message = .deadlockCancel(ref: reference, lock: lock, owner: try body.readOwner())
        case .recoverLockspaces:
            let run = try body.read(UInt64.self, "run")
            let recovered = try body.read(UInt64.self, "recovered")
            let departed = try body.readNodes("departed_count")
            let unsettledCount = try body.readCount("unsettled_count", least: 2)
            var unsettled: [[UInt8]] = []
            unsettled.reserveCapacity(unsettledCount)
            for _ in 0..<unsettledCount { unsettled.append(try body.readName("unsettled")) }
            let count = try body.readCount("count", least: 4)
            var lockspaces: [LockspaceMembership] = []
            lockspaces.reserveCapacity(count)
            for _ in 0..<count {
                let name = try body.readName("lockspace")
                let length = Int(try body.read(UInt8.self, "value_block_length"))
                guard length <= WireLimits.maxValueBlock else {
                    throw .malformed("value_block_length \(length) is above \(WireLimits.maxValueBlock)")
                }
                let joining = try body.read(UInt8.self, "joining")
                guard joining <= 1 else { throw .malformed("joining \(joining) is not 0 or 1") }
                lockspaces.append(LockspaceMembership(name: name, valueBlockLength: length, joining: joining == 1))
            }
            let floorCount = try body.readCount("floor_count", least: 10)
            var tokenFloors: [LockspaceTokenFloor] = []
            tokenFloors.reserveCapacity(floorCount)
            for _ in 0..<floorCount {
                let name = try body.readName("floor_lockspace")
                tokenFloors.append(LockspaceTokenFloor(lockspace: name, floor: try body.read(UInt64.self, "floor")))
            }
            message = .recoverLockspaces(
                run: run,
                LockspaceReport(
                    recovered: recovered, departed: departed, unsettled: unsettled, lockspaces: lockspaces,
                    tokenFloors: tokenFloors))
        case .recoveryRequest:
            message = .recoveryRequest(view: try body.read(UInt64.self, "view"))
        case .recoveryStart:
            message = .recoveryStart(run: try body.read(UInt64.self, "run"))
        }
        try body.requireConsumed(type: type)
        return message
    }
}

extension ByteBuffer {
    /// A deadlock participant's bytes: kind (0 owner, 1 transaction), node, life, number.
    static let participantLength = 1 + 4 + 8 + 8

    mutating func writeParticipant(_ participant: DeadlockParticipant) {
        switch participant {
        case .owner(let owner):
            writeInteger(UInt8(0))
            writeOwner(owner)
        case .transaction(let transaction):
            writeInteger(UInt8(1))
            writeInteger(transaction.node)
            writeInteger(transaction.incarnation)
            writeInteger(transaction.xid)
        }
    }

    mutating func readParticipant() throws(WireError) -> DeadlockParticipant {
        let kind = try read(UInt8.self, "participant_kind")
        switch kind {
        case 0: return .owner(try readOwner())
        case 1:
            let node = try read(UInt32.self, "transaction.node")
            let incarnation = try read(UInt64.self, "transaction.incarnation")
            return .transaction(
                TransactionID(node: node, incarnation: incarnation, xid: try read(UInt64.self, "transaction.xid")))
        default: throw .malformed("participant kind \(kind) is not 0 or 1")
        }
    }

    mutating func writeOwner(_ owner: OwnerID) {
        writeInteger(owner.node)
        writeInteger(owner.incarnation)
        writeInteger(owner.rawValue)
    }

    mutating func readOwner() throws(WireError) -> OwnerID {
        let node = try read(UInt32.self, "owner.node")
        let incarnation = try read(UInt64.self, "owner.incarnation")
        return OwnerID(node: node, incarnation: incarnation, local: try read(UInt64.self, "owner.local"))
    }

    mutating func writeOptionalBytes8(_ bytes: [UInt8]?) {
        writeInteger(UInt8(bytes == nil ? 0 : 1))
        if let bytes { writeBytes8(bytes) }
    }

    mutating func readOptionalBytes8(_ field: StaticString) throws(WireError) -> [UInt8]? {
        let present = try read(UInt8.self, field)
        guard present <= 1 else { throw .malformed("\(field) presence \(present) is not 0 or 1") }
        return present == 1 ? try readBytes8(field, max: WireLimits.maxValueBlock) : nil
    }

    /// A list of node ids: a `u32` count, then that many `u32` (`readNodes` names the count `field` in errors).
    mutating func writeNodes(_ nodes: [UInt32]) {
        writeInteger(UInt32(nodes.count))
        for node in nodes { writeInteger(node) }
    }

    mutating func readNodes(_ field: StaticString) throws(WireError) -> [UInt32] {
        let count = try readCount(field, least: 4)
        var nodes: [UInt32] = []
        nodes.reserveCapacity(count)
        for _ in 0..<count { nodes.append(try read(UInt32.self, "node")) }
        return nodes
    }

    mutating func readDirectoryKey() throws(WireError) -> DirectoryKey {
        DirectoryKey(lockspace: try readName("lockspace"), name: try readName("name"))
    }

    /// A count of items of at least `least` bytes each: refused when the body cannot hold that many (so that a
    /// forged count allocates nothing).
    mutating func readCount(_ field: StaticString, least: Int) throws(WireError) -> Int {
        let count = Int(try read(UInt32.self, field))
        guard count <= readableBytes / least else {
            throw .malformed("\(field) \(count) is more than the frame can hold")
        }
        return count
    }

    mutating func writeRecoveredLock(_ lock: RecoveredLock) {
        writeBytes8(lock.lockspace)
        writeInteger(UInt8(truncatingIfNeeded: lock.valueBlockLength))
        writeBytes8(lock.name)
        writeInteger(lock.copy)
        writeOwner(lock.owner)
        writeInteger(lock.pid)
        writeInteger(lock.uid)
        writeInteger(lock.grantedMode?.rawValue ?? 255)
        writeInteger(lock.requestedMode?.rawValue ?? 255)
        writeInteger(lock.flags.rawValue)
        writeInteger(lock.priority)
        writeInteger(UInt8((lock.wantsBlockingCallbacks ? 1 : 0) | (lock.alwaysFencingToken ? 2 : 0)))
        writeInteger(lock.transaction ?? 0)
        writeOptionalBytes8(lock.valueBlock)
        writeInteger(lock.valueBlockSequence)
        writeInteger(lock.fencingToken)
        writeInteger(lock.timeout ?? 0)
        writeInteger(lock.parentCopy)
        writeInteger(UInt16(truncatingIfNeeded: lock.subPath.count))
        for name in lock.subPath { writeBytes8(name) }
        switch lock.inFlight {
        case nil: writeInteger(UInt8(255))
        case .unlock: writeInteger(UInt8(254))
        case .conversion(let mode): writeInteger(mode.rawValue)
        }
    }

    mutating func readOptionalMode(_ field: StaticString) throws(WireError) -> LockMode? {
        let raw = try read(UInt8.self, field)
        if raw == 255 { return nil }
        guard let mode = LockMode(rawValue: raw) else { throw .malformed("\(field) \(raw) is not a mode") }
        return mode
    }

    /// (`lockspaceOfPrevious`: the lockspace of the list's previous lock, whose array an equal name reuses.)
    mutating func readRecoveredLock(lockspaceOfPrevious: [UInt8]? = nil) throws(WireError) -> RecoveredLock {
        let lockspace = try readName("lockspace", sameAs: lockspaceOfPrevious)
        let valueBlockLength = Int(try read(UInt8.self, "value_block_length"))
        guard valueBlockLength <= WireLimits.maxValueBlock else {
            throw .malformed("value_block_length \(valueBlockLength) is above \(WireLimits.maxValueBlock)")
        }
        let name = try readName("name")
        let copy = try read(UInt32.self, "copy")
        let owner = try readOwner()
        let pid = try read(UInt32.self, "pid")
        let uid = try read(UInt32.self, "uid")
        let granted = try readOptionalMode("granted_mode")
        let requested = try readOptionalMode("requested_mode")
        guard granted != nil || requested != nil else {
            throw .malformed("a recovered lock with neither a granted nor a requested mode")
        }
        let flags = LockFlags(rawValue: try read(UInt32.self, "flags"))
        let priority = try read(UInt8.self, "priority")
        let options = try read(UInt8.self, "options")
        guard options & ~3 == 0 else { throw .malformed("options 0x\(String(options, radix: 16)) has unknown bits") }
        let transaction = try read(UInt64.self, "transaction")
        let valueBlock = try readOptionalBytes8("value_block")
        let sequence = try read(UInt64.self, "value_block_sequence")
        let token = try read(UInt64.self, "fencing_token")
        let timeout = try read(UInt64.self, "timeout")
        let parentCopy = try read(UInt32.self, "parent_copy")
        let depth = Int(try read(UInt16.self, "sub_path_count"))
        guard (depth == 0) == (parentCopy == 0) else {
            throw .malformed("a recovered sub-lock needs both a parent_copy and a sub-path")
        }
        guard depth <= readableBytes / 2 else {
            throw .malformed("sub_path_count \(depth) is more than the frame can hold")
        }
        var subPath: [[UInt8]] = []
        for _ in 0..<depth { subPath.append(try readName("sub_path name")) }
        let inFlight: RecoveredLock.InFlightOperation?
        switch try read(UInt8.self, "in_flight") {
        case 255: inFlight = nil
        case 254: inFlight = .unlock
        case let raw:
            guard let mode = LockMode(rawValue: raw) else { throw .malformed("in_flight \(raw) is not a mode") }
            inFlight = .conversion(mode)
        }
        return RecoveredLock(
            lockspace: lockspace, valueBlockLength: valueBlockLength, name: name, copy: copy, owner: owner, pid: pid,
            uid: uid, grantedMode: granted, requestedMode: requested, flags: flags, priority: priority,
            wantsBlockingCallbacks: options & 1 != 0, alwaysFencingToken: options & 2 != 0,
            transaction: transaction == 0 ? nil : transaction, valueBlock: valueBlock, valueBlockSequence: sequence,
            fencingToken: token, timeout: timeout == 0 ? nil : timeout, subPath: subPath, parentCopy: parentCopy,
            inFlight: inFlight)
    }

    /// PEER.md §4.6: names, flags (1 removed, 2 invalid, 4 has a writer, 8 persistent locks follow, 16 outdated,
    /// 32 its origin follows), the value block, its sequence number, the writer, the persistent locks, the origin.
    mutating func writeValueReplica(_ replica: ValueReplica) {
        writeBytes8(replica.lockspace)
        writeBytes8(replica.name)
        let flags =
            (replica.removed ? 1 : 0) | (replica.invalid ? 2 : 0) | (replica.writer != nil ? 4 : 0)
            | (replica.persistentLocks.isEmpty ? 0 : 8) | (replica.outdated ? 16 : 0) | (replica.origin != nil ? 32 : 0)
        writeInteger(UInt8(flags))
        writeOptionalBytes8(replica.valueBlock)
        writeInteger(replica.valueBlockSequence)
        if let writer = replica.writer { writeOwner(writer) }
        if !replica.persistentLocks.isEmpty { writePersistentLocks(of: replica) }
        if let origin = replica.origin {
            writeInteger(origin.master)
            writeInteger(origin.incarnation)
            writeInteger(origin.generation)
        }
    }

    mutating func writePersistentLocks(of replica: ValueReplica) {
        writeInteger(UInt8(truncatingIfNeeded: replica.valueBlockLength))
        writeInteger(UInt32(replica.persistentLocks.count))
        for lock in replica.persistentLocks {
            writeInteger(UInt8((lock.owner == nil ? 1 : 0) | (lock.parent != nil ? 2 : 0)))
            writeOwner(lock.owner ?? OwnerID(node: lock.orphanNode, incarnation: 0, local: 0))
            writeInteger(lock.pid)
            writeInteger(lock.uid)
            writeInteger(lock.mode.rawValue)
            writeInteger(lock.flags.rawValue)
            writeInteger(lock.fencingToken)
            if let parent = lock.parent {
                writeInteger(UInt32(truncatingIfNeeded: parent))
                writeInteger(UInt8(truncatingIfNeeded: lock.subPath.count))
                for name in lock.subPath { writeBytes8(name) }
            }
        }
    }

    /// The bytes of one persistent lock of a value replica (flags, owner, pid, uid, mode, lock flags, fencing
    /// token).
    static let replicatedLockLength = 1 + (4 + 8 + 8) + 4 + 4 + 1 + 4 + 8

    mutating func readValueReplica() throws(WireError) -> ValueReplica {
        let lockspace = try readName("lockspace")
        let name = try readName("name")
        let flags = try read(UInt8.self, "replica_flags")
        guard flags & ~63 == 0 else {
            throw .malformed("replica flags 0x\(String(flags, radix: 16)) has unknown bits")
        }
        let valueBlock = try readOptionalBytes8("value_block")
        let sequence = try read(UInt64.self, "value_block_sequence")
        let writer = flags & 4 != 0 ? try readOwner() : nil
        var persistent: [ReplicatedLock] = []
        var valueBlockLength = 0
        if flags & 8 != 0 {
            valueBlockLength = Int(try read(UInt8.self, "value_block_length"))
            guard valueBlockLength <= WireLimits.maxValueBlock else {
                throw .malformed("value_block_length \(valueBlockLength) is above \(WireLimits.maxValueBlock)")
            }
            let count = try readCount("persistent_count", least: Self.replicatedLockLength)
            guard count > 0 else { throw .malformed("a replica flagged with persistent locks has none") }
            persistent.reserveCapacity(count)
            for _ in 0..<count {
                let lockFlags = try read(UInt8.self, "persistent_flags")
                guard lockFlags & ~3 == 0 else {
                    throw .malformed("persistent lock flags 0x\(String(lockFlags, radix: 16)) has unknown bits")
                }
                let owner = try readOwner()
                let pid = try read(UInt32.self, "pid")
                let uid = try read(UInt32.self, "uid")
                let rawMode = try read(UInt8.self, "mode")
                guard let mode = LockMode(rawValue: rawMode) else { throw .malformed("mode \(rawMode) is not a mode") }
                let flags = LockFlags(rawValue: try read(UInt32.self, "lock_flags"))
                let token = try read(UInt64.self, "fencing_token")
                let orphan = lockFlags & 1 != 0
                var parent: Int?
                var subPath: [[UInt8]] = []
                if lockFlags & 2 != 0 {
                    let index = Int(try read(UInt32.self, "parent"))
                    guard index < persistent.count else {
                        throw .malformed(
                            "persistent sub-lock \(persistent.count) names parent \(index), not an earlier lock")
                    }
                    let depth = Int(try read(UInt8.self, "sub_path_count"))
                    guard depth > 0, depth <= readableBytes / 2 else {
                        throw .malformed(
                            "sub_path_count \(depth) of a persistent sub-lock is 0 or more than the frame holds")
                    }
                    for _ in 0..<depth { subPath.append(try readName("sub_path name")) }
                    guard persistent[index].subPath == subPath.dropLast() else {
                        throw .malformed(
                            "persistent sub-lock \(persistent.count) is not on a sub-resource of its parent's resource")
                    }
                    parent = index
                }
                persistent.append(
                    ReplicatedLock(
                        owner: orphan ? nil : owner, orphanNode: orphan ? owner.node : 0, pid: pid, uid: uid,
                        mode: mode, flags: flags, fencingToken: token, subPath: subPath, parent: parent))
            }
        }
        var origin: ReplicaOrigin?
        if flags & 32 != 0 {
            let master = try read(UInt32.self, "origin_master")
            let incarnation = try read(UInt64.self, "origin_incarnation")
            origin = ReplicaOrigin(
                master: master, incarnation: incarnation, generation: try read(UInt64.self, "origin_generation"))
        }
        return ValueReplica(
            lockspace: lockspace, name: name, removed: flags & 1 != 0, valueBlock: valueBlock,
            valueBlockSequence: sequence, invalid: flags & 2 != 0, writer: writer, persistentLocks: persistent,
            valueBlockLength: valueBlockLength, outdated: flags & 16 != 0, origin: origin)
    }

    mutating func writeCompletion(_ c: Completion) {
        writeInteger(c.lock.rawValue)
        writeOwner(c.owner)
        writeInteger(c.status.rawValue)
        writeInteger(c.flags.rawValue)
        writeInteger(c.mode?.rawValue ?? 255)
        writeOptionalBytes8(c.valueBlock)
        writeInteger(c.valueBlockSequence)
        writeInteger(c.fencingToken)
    }

    mutating func readCompletion() throws(WireError) -> Completion {
        let lock = LockID(rawValue: try read(UInt32.self, "lock"))
        let owner = try readOwner()
        let status = DLMStatus(rawValue: try read(Int32.self, "status"))
        let flags = CompletionFlags(rawValue: try read(UInt8.self, "flags"))
        let rawMode = try read(UInt8.self, "mode")
        var mode: LockMode?
        if rawMode != 255 {
            guard let known = LockMode(rawValue: rawMode) else { throw .malformed("mode \(rawMode) is not a mode") }
            mode = known
        }
        let valueBlock = try readOptionalBytes8("value_block")
        let sequence = try read(UInt64.self, "value_block_sequence")
        return Completion(
            lock: lock, owner: owner, status: status, flags: flags, mode: mode, valueBlock: valueBlock,
            valueBlockSequence: sequence, fencingToken: try read(UInt64.self, "fencing_token"))
    }
}

extension ValueReplica {
    /// The fewest bytes a replica takes on the wire (one-byte names, no value block, no writer).
    static let leastEncodedLength = 2 + 2 + 1 + 1 + 8
}

extension PeerMessage {
    /// The message as the bytes of one frame (a payload of the peer transport's lock traffic).
    public var frameBytes: [UInt8] {
        var buffer = ByteBufferAllocator().buffer(capacity: 64)
        encode(into: &buffer)
        return Array(buffer.readableBytesView)
    }

    /// The message in `bytes`, which must hold exactly one frame.
    public static func decode(frame bytes: [UInt8]) throws(WireError) -> PeerMessage {
        var buffer = ByteBufferAllocator().buffer(bytes: bytes)
        guard let (type, body) = try nextFrame(from: &buffer, maxLength: maxFrame) else {
            throw .malformed("a peer frame cut short (\(bytes.count) bytes)")
        }
        guard buffer.readableBytes == 0 else { throw .malformed("\(buffer.readableBytes) bytes after a peer frame") }
        var rest = body
        return try decode(type: type, body: &rest)
    }
}
