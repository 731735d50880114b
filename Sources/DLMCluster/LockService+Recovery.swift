import DLMCore
import DLMWire
import DequeModule
import GroupServices

/// Barrier-driven recovery of the lock space when the view's members change (docs/RECOVERY.md). Every member runs
/// the same two phases for the new view, each ended by an in-band barrier: a member sends `recoveryDone(view,
/// phase)` to every other member after everything it sends in that phase, and the phase ends on a node once every
/// member's `recoveryDone` has come. Peer messages are in order per pair of nodes, so when a phase ends everything
/// sent in it has arrived (group services' barriers ride another channel and could overtake them).
///
/// 1. *Rebuild.* The directory is rebuilt: every node tells each resource's new directory node which resources it
///    masters. Each holder sends its locks on resources whose master left (granted modes, conversions and waiting
///    requests, value blocks and fencing tokens as it last saw them) to the new master: the resource's directory
///    node in this view (unless an aborted run rebuilt it on a member, which registers it and binds the holders'
///    locks again).
/// 2. *Purge and grant.* New masters rebuild those resources (the value block survives when a survivor holds PR
///    or above and read or wrote it since its grant; else it is marked not valid), give the holders their new
///    lock ids and register with the directory; every master drops the locks of departed nodes; fencing-token
///    floors rise above every token issued before. When the phase ends everywhere, held requests run, and
///    operations and lookups that were addressed to departed nodes are sent again.
///
/// Only what the failure touched waits (`runsDuringRecovery`): requests on resources whose master survived run
/// during recovery as before it, and so do lookups in lockspaces whose directory the run leaves as it was (once
/// phase 0 has said which); requests on resources whose master left, requests that need a directory being rebuilt,
/// lockspace operations, purges, exits and the engine's timers are held (not refused) until the run ends. A new
/// view aborts the run and starts it over from the members of the last completed recovery. Sub-locks are rebuilt
/// with their tree (a sub-lock's resource has the master of its top-level resource): the holder sends the path and
/// its id of the parent lock, and the new master rebuilds each tree from the top down. Persistent locks and orphans
/// that no survivor sends come from the resource's backup node (`orphans(of:holders:members:)`).
struct Recovery {
    /// The run's id (`RecoveryRun`: its view's number and its number within the view), carried by its messages.
    var view: UInt64
    /// The fencing-token floor of the run: its view's number times 2^40.
    var fencingFloor: UInt64 { RecoveryRun.view(view) << 40 }
    /// Whether this node's part of the current phase waits for slices.
    var hasWork: Bool { work != nil && !abandoned }
    /// Members of the last completed recovery (node: incarnation) that are not in the view.
    var departed: Set<UInt32>
    /// 0: lockspace groups (LockService+Groups.swift); 1: rebuild; 2: purge and grant.
    var phase: UInt8 = 0
    /// Phase 0: each member's report; the registrations (`recoverMasters`) that came before it ended here, to
    /// apply once it has. Then the lockspaces whose directory the run rebuilds (nil: all of them).
    var lockspaceReports: [UInt32: LockspaceReport] = [:]
    var earlyRegistrations: [(node: UInt32, keys: [DirectoryKey])] = []
    var rebuiltDirectories: Set<[UInt8]>? = nil
    /// How many members the view before this run had (to size a directory made anew).
    var previousMemberCount = 1
    /// A view without quorum came: this run's view is over, so the run ends nothing and serves nothing; the next
    /// primary view starts a new one (with what this one knew of departed nodes and held traffic).
    var abandoned = false
    /// Every node that a member counts as departed (its own `departed`, in its `recoveryDone` of phase 1): when the
    /// second phase starts, every node that left since any member's last completed recovery. (A new life knows
    /// no earlier view: its own count would be empty.)
    var reportedDeparted: Set<UInt32> = []
    /// Members whose `recoveryDone` came, per phase.
    var done: [UInt8: Set<UInt32>] = [:]
    /// As a new master: the locks holders sent, in arrival order, by resource.
    var received = ReceivedLocks()
    /// As a new master: the value replicas backup nodes kept of those resources.
    var receivedValues: [DirectoryKey: [ValueReplica]] = [:]
    /// As a directory node: what new lives offered of their previous lives' resources (`recoverStored`), and what
    /// each member said of its lives in its phase-1 barrier (LockService+PreviousLife.swift).
    var storedOffers: [DirectoryKey: [(node: UInt32, replica: ValueReplica)]] = [:]
    var recoveredViews: [UInt32: UInt64] = [:]
    var storedViews: [UInt32: UInt64] = [:]
    /// Lock traffic that arrived while recovering (requests, lookups, owner exits), to run when it is done.
    /// (With the life of its sender: the one in the view when it came.)
    var heldTraffic: Deque<(node: UInt32, incarnation: UInt64, message: PeerMessage)> = []
    /// This node's part of the current phase that is still to do, in slices.
    var work: RecoveryWork?
    /// While this node has yet to resend its locks whose master left (its part of phase 1): the bindings that
    /// came meanwhile, with their senders, in order (nil once it has). A binding is for a lock its holder resent, so it is
    /// applied only once the holder has unbound the locks it resends: a binding an earlier run's master sends
    /// again at the start of this run (`finishResends`) may come before the holder's walk reaches the lock (from
    /// a node that installed the view first, or between two slices), and taken then it would be undone by the
    /// walk, leaving the lock waiting for a binding that never comes.
    var deferredBindings: [(node: UInt32, bindings: [RecoveredBinding])]? = []
}

/// This node's part of a recovery phase, done in slices (`LockService.continueRecovery`) between which the node
/// reads its sockets: registrations and resent locks in phase 1, rebuilds in phase 2. The lists for each node go
/// out as they fill a message, the rest with the last slice, then the phase's barrier.
struct RecoveryWork {
    var phase: UInt8
    /// Phase 1: the next engine resource slot to register; the resources the master cache named this node for
    /// when the phase began, registered from this list whether the engine has them or not, and the next of them;
    /// the next process copy to look at. (A request during recovery may create one of them in the engine, in a
    /// slot the walk has passed: a list taken later, or of those the engine lacks, would miss it, and two nodes
    /// would master it.)
    var nextSlot = 0
    var nextCachePart = 0
    var nextCopy = 0
    /// Then the next shard of the locks earlier runs rebuilt here, whose bindings go out again.
    var nextRebuiltShard = 0
    /// The next resource of the previous life to offer (LockService+PreviousLife.swift), and the offers per directory
    /// node.
    var nextOffer = 0
    var offers: [UInt32: [ValueReplica]] = [:]
    /// Phase 2: the next of the received locks (a resource is rebuilt at its first); then the resources only a
    /// backup node sent replicas of, and the next one.
    var nextReceived = 0
    var keys: [DirectoryKey] = []
    var nextKey = 0
    var registrations: [UInt32: [DirectoryKey]] = [:]
    var resends: [UInt32: [RecoveredLock]] = [:]
    /// Phase 1: the unlocks and conversions this node's clients have on their way to masters, by copy (taken as the
    /// copies are first walked).
    var inFlight: [Int: RecoveredLock.InFlightOperation]?
    var bindings: [UInt32: [RecoveredBinding]] = [:]
    /// Phase 1: whether the run rebuilds the directory of the last lockspace asked about (most resources of a run
    /// share it: one lookup of the set a run of them).
    var lastDirectory: (lockspace: [UInt8], rebuilds: Bool)?
    /// Phase 2, within one slice: the lockspace of the last resource rebuilt (most resources of a run share it: one
    /// lookup of it a slice, not one a resource).
    var lastLockspace: (name: [UInt8], valueBlockLength: Int, id: LockspaceID)?
    /// Phase 2: whether a holder's lock may be one this node rebuilt before (in an aborted run, or the recovery
    /// before): not when no rebuilt lock was known as the phase began (each holder sends a lock once a run), and
    /// then none is looked up, a miss in a table that grows to as many locks as the phase rebuilds.
    var knowsRebuilt = true
}

extension LockService {
    /// Containers of more entries than this that recovery is done with are freed by the shell, off its event loop
    /// (`ServiceOutput.discarded`).
    static let discardAbove = 10_000

    /// `value`, of `count` entries, is no longer needed: a large one goes to the shell to free (the caller then
    /// drops its own reference).
    mutating func discard(_ value: some Sendable, count: Int) {
        if count > Self.discardAbove { output.discarded.append(value) }
    }

    /// The members of a view, with their incarnations.
    static func members(of view: View) -> [UInt32: UInt64] {
        var members: [UInt32: UInt64] = [:]
        for member in view.members { members[member.node.rawValue] = member.incarnation }
        return members
    }

    /// Group services installed a view. A new primary view starts a recovery (aborting one under way); any other
    /// view holds requests.
    mutating func viewInstalled(_ view: View, primary: Bool) {
        guard configuration.mastersAcrossNodes else {
            if primary { resume() } else { stop(waitingFor: ["quorum"]) }
            return
        }
        // (Views this node skipped: masters placed their replicas by them meanwhile.)
        if mastering.lastViewNumber != 0, view.id.number > mastering.lastViewNumber + 1 {
            markOutdatedReplicas(all: true)
        }
        mastering.lastViewNumber = max(mastering.lastViewNumber, view.id.number)
        guard primary else {
            // A run under way is abandoned: its late messages must not end it and serve requests outside a primary
            // view.
            mastering.recovery?.abandoned = true
            mastering.installedView = 0
            stop(waitingFor: ["quorum"])
            return
        }
        // Every member runs recovery for every primary view, even one with the members of the last: a member that
        // got an earlier view this node skipped may be recovering, and waits for every member's barrier.
        let run = RecoveryRun.first(ofView: view.id.number)
        mastering.installedView = view.id.number
        guard run > max(mastering.recoveredView, mastering.recovery?.view ?? 0) else {
            if !isRecovering { resume() }
            return
        }
        startRecovery(run, members: Self.members(of: view))
    }

    var isRecovering: Bool { mastering.recovery != nil }
    /// Whether a recovery of the lock space runs on this node now (status, metrics).
    public var isRunningRecovery: Bool { isRecovering }
    /// The phase of the recovery run under way (0, 1 or 2), if one is (long-step warnings).
    public var recoveryPhase: UInt8? { mastering.recovery?.phase }

    // MARK: Phase 1

    mutating func startRecovery(_ view: UInt64, members: [UInt32: UInt64]) {
        mastering.deadlocks.abandon()
        // What waited for a deadlock decision's hold runs once this run's own holds are set up (below).
        let endsDeadlockHolds = isHoldingForDeadlock || !mastering.deadlocks.holds.waiting.isEmpty
        purgesLoseDepartedMembers(members)
        let previous = mastering.viewMembers
        // (A run that ended here before its groups were agreed: the masters may have placed replicas by groups this
        // node never learnt.)
        let groupsUnknown = mastering.recovery?.phase == 0
        var departed = mastering.recovery?.departed ?? []
        var held = mastering.recovery?.heldTraffic ?? []
        for (node, incarnation) in mastering.memberIncarnations where members[node] != incarnation {
            departed.insert(node)
        }
        // And a life that joined a view whose recovery never completed here, gone again: operations and copies of
        // this node may have gone to it meanwhile (it served resources whose master survived).
        for (node, incarnation) in previous where members[node] != incarnation { departed.insert(node) }
        // A node of the last view that is back under the same incarnation was never gone.
        departed = departed.filter { members[$0] == nil || members[$0] != mastering.memberIncarnations[$0] }
        // Traffic from nodes that left is dropped.
        held = Deque(held.filter { members[$0.node] == $0.incarnation })
        mastering.recovery = Recovery(view: view, departed: departed, reportedDeparted: departed, heldTraffic: held)
        mastering.recovery!.previousMemberCount = max(previous.count, 1)
        // A REMOVED still to come is of the old directory: the resources being dropped are looked up again at the
        // end (their waiting requests with them).
        mastering.removing = []
        mastering.members = members.keys.sorted()
        mastering.viewMembers = members
        stop(waitingFor: ["recovery of view \(RecoveryRun.describe(view))"])
        if endsDeadlockHolds { endDeadlockHolds() }
        output.recoveries.append(.started(view: RecoveryRun.view(view), run: RecoveryRun.number(view)))
        output.notices.append(
            (
                "recovery started",
                [
                    "view": RecoveryRun.describe(view),
                    "members": mastering.members.map(String.init).joined(separator: ","),
                    "departed": departed.sorted().map(String.init).joined(separator: ","),
                ]
            ))
        // What was cached of departed masters, and every answer of the old directory, is forgotten.
        // (At once: the departed masters' entries read as absent from now on; see MasterCache.)
        mastering.masters.forget(departed)
        // (The directory entries of the lockspaces whose groups change are dropped when phase 0 ends:
        // `settleDirectory`.)
        // Nothing waits any longer for a departed backup node; departed nodes leave their lockspaces' groups.
        forgetDepartedBackups(members: members, previous: previous)
        dropDepartedFromGroups()
        markOutdatedReplicas(all: groupsUnknown)
        // A new life's stored resources, for a restart of the whole cluster.
        let lives = livesReport
        mastering.recovery!.recoveredViews[configuration.nodeID] = lives.recovered
        mastering.recovery!.storedViews[configuration.nodeID] = lives.stored
        // Messages of this view that came before this node installed it (after the old directory was forgotten).
        let early = mastering.futureRecovery
        mastering.futureRecovery = []
        // (From members only: a restarted member's messages are its new life's, the only one in this view. A
        // later run's start among them waits until this one is set up.)
        var laterRun: UInt64 = 0
        for (node, message) in early {
            if case .recoveryStart(let run) = message {
                laterRun = max(laterRun, run)
            } else if let run = message.recoveryRun, run > view {
                // (A later run's, from whichever node: kept for it.)
                mastering.futureRecovery.append((node, message))
            } else if members[node] != nil {
                receiveRecovery(message, from: node)
            }
        }
        // Phase 0: the lockspaces' groups.
        sendLockspaceReport()
        if laterRun > view, mastering.recovery?.view == view {
            startRecovery(laterRun, members: members)
        }
    }

    /// Phase 1 begins, once phase 0 agreed the groups: the replicas this node kept of departed masters' resources
    /// go to their new masters; then the rest of this node's part of the phase, in slices (`continueRecovery`):
    /// its resources registered with their new directory nodes, its clients' locks whose master left sent to their
    /// new masters.
    mutating func startRegistrations() {
        guard let recovery = mastering.recovery else { return }
        recoverReplicas(view: recovery.view, departed: recovery.departed)
        let work = RecoveryWork(phase: 1)
        // (The master cache's resources of this node are registered in the cache's order, a part of it a slice:
        // the order of registrations changes nothing, sorting a node's hundreds of thousands of resources here was
        // most of this step, and walking a cache of a million entries at once still a step of 170 ms. The parts are
        // read as they are when their slice comes: until then, only this walk's own registrations write entries of
        // this node, and tossing waits for the end of recovery. A copy of the cache taken now would be copied again,
        // a part at each first write.)
        mastering.recovery?.work = work
        continueRecovery()
    }

    /// How much of a recovery phase a slice does (entries looked at): a node with a million locks reads its
    /// sockets between slices, as it does between the slices of an owner's exit.
    var recoverySlice: Int { configuration.recoverySlice }

    /// Whether this node's part of the current phase waits for slices (`ServiceOutput.wantsBulkSlice`).
    var hasRecoveryWork: Bool { mastering.recovery?.hasWork == true }

    /// One slice of this node's part of the current recovery phase; the phase's end (its barrier) after the last.
    mutating func continueRecovery() {
        guard var work = mastering.recovery?.work, mastering.recovery?.abandoned == false else { return }
        mastering.recovery!.work = nil
        var budget = recoverySlice
        let done = work.phase == 1 ? registerAndResend(&work, budget: &budget) : rebuild(&work, budget: &budget)
        flushRecoveryLists(&work, all: done)
        guard done else {
            mastering.recovery!.work = work
            return
        }
        discard(work, count: work.keys.count)
        if work.phase == 1 {
            finishResends()
        } else {
            finishRebuilds()
        }
    }

    /// Phase 1 in slices: the engine's top-level resources (in slot order) and the resources this node's cache
    /// said it masters when the phase began, registered with their directory nodes; then every
    /// process copy whose master left, sent to its new master; then the previous life's offers. Returns true when all
    /// is done.
    mutating func registerAndResend(_ work: inout RecoveryWork, budget: inout Int) -> Bool {
        while budget > 0, work.nextSlot < engine.resourceSlotCount {
            let slots = work.nextSlot..<min(engine.resourceSlotCount, work.nextSlot + budget)
            for resource in engine.topLevelResources(slots: slots) {
                guard rebuildsDirectory(of: resource.lockspace, &work) else { continue }
                let key = DirectoryKey(lockspace: resource.lockspace, name: resource.name)
                // (Those the cache names are registered from its list, below, or were already.)
                if mastering.masters[key] != configuration.nodeID {
                    registerAsMaster(key, into: &work.registrations)
                }
            }
            budget -= slots.count
            work.nextSlot = slots.upperBound
        }
        while budget > 0, work.nextCachePart < MasterCache.partCount {
            let part = mastering.masters.keys(masteredBy: configuration.nodeID, inPart: work.nextCachePart)
            work.nextCachePart += 1
            for key in part.keys where rebuildsDirectory(of: key.lockspace, &work) {
                registerAsMaster(key, into: &work.registrations)
            }
            // (Looking at an entry costs less than registering a resource.)
            budget -= max(1, part.keys.count + part.looked / 8)
        }
        guard work.nextSlot >= engine.resourceSlotCount, work.nextCachePart >= MasterCache.partCount else {
            return false
        }
        let members = mastering.viewMembers
        let departed = mastering.recovery!.departed
        if work.inFlight == nil { work.inFlight = inFlightOperations() }
        while budget > 0, work.nextCopy < mastering.copies.copies.count {
            let index = work.nextCopy
            work.nextCopy += 1
            budget -= 1
            let copy = mastering.copies.copies[index]
            // (An exited owner's copies are on their way out: its locks are not resent; its persistent ones come
            // back as orphans from the replica, as when its exit was lost with the master.)
            guard copy.owner != 0, !mastering.copies.isExiting(copy.owner) else { continue }
            let masterGone = departed.contains(copy.master) || members[copy.master] == nil
            guard masterGone || copy.rebinding else { continue }
            // A new lock not answered yet is sent again when recovery is done.
            guard copy.masterLock != nil || copy.rebinding else { continue }
            // (Every live copy has its record.)
            guard var record = copy.record else { continue }
            let key = DirectoryKey(lockspace: record.lockspace, name: record.name)
            // Every holder sends to the same node, the directory node of this view, whatever an aborted run chose:
            // if that run's new master rebuilt the resource, it registers it with the directory node, which then
            // rebuilds nothing, and it binds the holders' locks again itself (`finishResends`).
            let target = mastering.directoryNode(of: key)
            mastering.copies.unbind(index, newMaster: target)
            // The cached master goes. (Not looked up for a departed master: its entry reads as absent already, and
            // looking it up in a table of a million entries, or removing it, was a twentieth of a survivor's
            // recovery. An entry that named another node would be answered `notMaster` there. The binding writes
            // the new master over it.)
            // (Not when it names this node: a copy resent to itself by an aborted run that rebuilt the resource here
            // is bound again by this node's own `reboundBindings`, and this run registers the resource as mastered
            // here; forgetting that made this node answer "not master" to every request of it while the directory
            // named it, for ever: random forced-unlock seed 8107.)
            if !departed.contains(copy.master), let cached = mastering.masters[key], cached != configuration.nodeID {
                mastering.masters[key] = nil
            }
            record.copy = ProcessCopies.lockID(index).rawValue
            record.inFlight = work.inFlight![index]
            work.resends[target, default: []].append(record)
        }
        guard work.nextCopy >= mastering.copies.copies.count else { return false }
        guard offerPreviousLife(&work, budget: &budget) else { return false }
        return reboundBindings(&work, budget: &budget)
    }

    /// The unlocks (FORCEUNLOCK included, CANCEL not: it lowers no granted mode) and conversions that this node's
    /// clients sent to masters and that were not answered, by copy: a master that left may have done them
    /// (`RecoveredLock.inFlight`).
    func inFlightOperations() -> [Int: RecoveredLock.InFlightOperation] {
        var operations: [Int: RecoveredLock.InFlightOperation] = [:]
        for operation in mastering.pending.values {
            switch operation.message {
            case .unlock(let m) where !m.flags.contains(.cancel): operations[operation.copy] = .unlock
            case .convert(let m): operations[operation.copy] = .conversion(m.mode)
            default: break
            }
        }
        return operations
    }

    /// The last of this node's part of phase 1, in slices: the holders of locks an earlier run rebuilt here learn
    /// their ids again (the answer may not have reached them before they started this run; a holder takes it only
    /// for a lock that still waits for one). A shard of the rebuilt locks at a time, each sorted by the holder's id:
    /// a walk of them all in one step, and a sort of the list, was a step of a node that had rebuilt a million
    /// locks, at every later recovery. Returns true when all is done.
    mutating func reboundBindings(_ work: inout RecoveryWork, budget: inout Int) -> Bool {
        let members = mastering.viewMembers
        // A holder whose phase-0 report says it completed the recovery that rebuilt the earlier locks (or a later
        // one) had their ids then: none of those goes to it again.
        let reports = mastering.recovery?.lockspaceReports ?? [:]
        let earlierRun = mastering.rebuilt.earlierRun
        func hadThem(_ node: UInt32) -> Bool { earlierRun != 0 && (reports[node]?.recovered ?? 0) >= earlierRun }
        typealias Shards = ShardedDictionary<RebuiltCopy, LockID>
        // The shards of the current recovery's, then those of the earlier one's (not walked at all when every live
        // holder of them had them).
        let end = earlierRebuiltHoldersCompleted(reports) ? Shards.shardCount : 2 * Shards.shardCount
        while budget > 0, work.nextRebuiltShard < end {
            let shard = work.nextRebuiltShard % Shards.shardCount
            let table = work.nextRebuiltShard < Shards.shardCount ? \RebuiltHistory.current : \RebuiltHistory.earlier
            work.nextRebuiltShard += 1
            let rebuilt = mastering.rebuilt
            guard !rebuilt[keyPath: table].isEmpty else { continue }
            let earlier = table == \RebuiltHistory.earlier
            let bindings = rebuilt[keyPath: table].byCopy.compactMap(inShard: shard) { copy, lock in
                members[copy.node] == copy.incarnation && !rebuilt.isExiting(copy.holder)
                    && !(earlier && hadThem(copy.node))
                    ? (copy.node, RecoveredBinding(copy: copy.copy, owner: copy.owner, lock: lock)) : nil
            }
            budget -= max(1, rebuilt[keyPath: table].byCopy.count(inShard: shard))
            for (node, binding) in bindings.sorted(by: { ($0.0, $0.1.copy) < ($1.0, $1.1.copy) }) {
                var binding = binding
                // A grant made since that run reached a holder whose copy waited for its binding, and was dropped
                // (FullStackTests seed 1252): it goes with the binding.
                binding.grant = engine.standingGrant(binding.lock).flatMap(RecoveredGrant.init)
                work.bindings[node, default: []].append(binding)
            }
        }
        return work.nextRebuiltShard >= end
    }

    /// Whether every live holder of the locks rebuilt here before this recovery said, in its phase-0 report of the
    /// run (`reports`), that it completed their recovery (RebuiltHistory).
    func earlierRebuiltHoldersCompleted(_ reports: [UInt32: LockspaceReport]) -> Bool {
        mastering.rebuilt.earlierHoldersCompleted(members: mastering.viewMembers) { reports[$0]?.recovered ?? 0 }
    }

    /// The recovery lists that filled a message go out (all of them at the end of a phase's work, which leaves them
    /// no room: nothing follows).
    mutating func flushRecoveryLists(_ work: inout RecoveryWork, all: Bool) {
        guard let view = mastering.recovery?.view else { return }
        let limit = all ? 1 : Self.messageListLimit
        for node in work.registrations.keys.sorted() where work.registrations[node]!.count >= limit {
            sendRecovery(Self.takeList(&work.registrations[node]!, keepRoom: !all), to: node) {
                .recoverMasters(view: view, $0)
            }
        }
        for node in work.resends.keys.sorted() where work.resends[node]!.count >= limit {
            sendRecovery(Self.takeList(&work.resends[node]!, keepRoom: !all), to: node) {
                .recoverLocks(view: view, $0)
            }
        }
        for node in work.bindings.keys.sorted() where work.bindings[node]!.count >= limit {
            sendRecovery(Self.takeList(&work.bindings[node]!, keepRoom: !all), to: node) {
                .recoverBindings(view: view, $0)
            }
        }
        for node in work.offers.keys.sorted() where work.offers[node]!.count >= limit {
            sendRecovery(work.offers.removeValue(forKey: node)!, to: node) { .recoverStored(view: view, $0) }
        }
    }

    /// What `list` holds; `list` is left empty, with its room if `keepRoom` (a new buffer of that size), so that the
    /// next entries fill it without growing it from nothing (a list of 4,096 locks grew by doubling, copying its
    /// locks again at each step).
    static func takeList<Entry>(_ list: inout [Entry], keepRoom: Bool) -> [Entry] {
        defer { list.removeAll(keepingCapacity: keepRoom) }
        return list
    }

    /// The end of this node's part of phase 1 (the bindings of locks earlier runs rebuilt here went out with its
    /// last slice, `reboundBindings`): the bindings that came while it resent its locks are applied, and the
    /// phase's barrier.
    mutating func finishResends() {
        guard mastering.recovery != nil else { return }
        let deferred = mastering.recovery!.deferredBindings ?? []
        mastering.recovery!.deferredBindings = nil
        for (node, bindings) in deferred { bind(bindings, from: node) }
        finishPhase(1)
    }

    /// This node masters `key` (`rebuilt`: rebuilt by this recovery, `MasterCache.isRebuilt`): its directory entry
    /// is here, or goes into a `recoverMasters` to its directory node.
    mutating func registerAsMaster(
        _ key: DirectoryKey, rebuilt: Bool = false, into registrations: inout [UInt32: [DirectoryKey]]
    ) {
        let me = configuration.nodeID
        if rebuilt { mastering.masters.markRebuilt(key, by: me) } else { mastering.masters[key] = me }
        let directory = mastering.directoryNode(of: key)
        if directory == me {
            mastering.directory[key] = me
        } else {
            registrations[directory, default: []].append(key)
        }
    }

    static func keyOrder(_ a: DirectoryKey, _ b: DirectoryKey) -> Bool {
        a.lockspace == b.lockspace
            ? a.name.lexicographicallyPrecedes(b.name) : a.lockspace.lexicographicallyPrecedes(b.lockspace)
    }

    /// Keys in an order that every run gives alike (a set's or a dictionary's order changes from process to
    /// process): by directory hash, then by name. The sort moves pairs of integers only: sorting the keys
    /// themselves by name retained and released their arrays at every step, and was most of the cost of a
    /// recovery with many resources.
    static func ordered<Keys: Sequence>(_ keys: Keys) -> [DirectoryKey] where Keys.Element == DirectoryKey {
        ordered(Array(keys)) { $0 }
    }

    /// `items` in the order of their keys (`ordered`).
    static func ordered<Item>(_ items: [Item], by key: (Item) -> DirectoryKey) -> [Item] {
        var order = items.indices.map { (hash: key(items[$0]).directoryHash, index: $0) }
        order.sort { a, b in
            a.hash != b.hash ? a.hash < b.hash : keyOrder(key(items[a.index]), key(items[b.index]))
        }
        return order.map { items[$0.index] }
    }

    /// A recovery message; one to this node itself is handled at once (before the phase can end).
    mutating func sendRecovery(_ message: PeerMessage, to node: UInt32) {
        if node == configuration.nodeID {
            receiveRecovery(message, from: node)
        } else {
            send(message, to: node)
        }
    }

    /// The most entries of a list in one peer message (recovery's lists, value replicas): a message stays far below
    /// the largest payload of lock traffic (16 MiB) however many locks recover, and each is a short step for its
    /// receiver.
    static let messageListLimit = 4096

    /// `list` in order, in pieces of at most `messageListLimit` entries (one empty piece for an empty list).
    static func pieces<Entry>(_ list: [Entry]) -> [[Entry]] {
        guard list.count > messageListLimit else { return [list] }
        return stride(from: 0, to: list.count, by: messageListLimit).map {
            Array(list[$0..<min(list.count, $0 + messageListLimit)])
        }
    }

    /// A recovery list, in order, in messages of at most `messageListLimit` entries.
    mutating func sendRecovery<Entry>(_ list: [Entry], to node: UInt32, _ message: ([Entry]) -> PeerMessage) {
        for piece in Self.pieces(list) { sendRecovery(message(piece), to: node) }
    }

    /// This node sent everything of `phase`: it says so to every other member.
    mutating func finishPhase(_ phase: UInt8) {
        guard let view = mastering.recovery?.view else { return }
        let lives = phase == 1 ? livesReport : (recovered: 0, stored: 0)
        for node in mastering.members where node != configuration.nodeID {
            send(
                .recoveryDone(
                    view: view, phase: phase,
                    departed: phase == 1 ? mastering.recovery!.departed.sorted() : [], recovered: lives.recovered,
                    stored: lives.stored),
                to: node)
        }
        mastering.recovery!.done[phase, default: []].insert(configuration.nodeID)
        advanceRecovery()
    }

    /// A recovery message: for the current run, handled; for a later view, kept until this node installs it; for
    /// an earlier one, dropped.
    mutating func receiveRecovery(_ message: PeerMessage, from node: UInt32) {
        let view: UInt64
        switch message {
        case .recoverMasters, .recoverLocks, .recoverBindings, .recoveryDone, .recoverValues, .recoverStored,
            .recoverLockspaces:
            view = message.recoveryRun!
        case .recoveryRequest(let view):
            if view == mastering.installedView { startRequestedRun(for: node) }
            return
        case .recoveryStart(let run):
            // (From the coordinator of the view this node is in, to start a run of it; one of a later view waits
            // for that view.)
            if run > max(mastering.recovery?.view ?? 0, mastering.recoveredView),
                RecoveryRun.view(run) == mastering.installedView, mastering.viewMembers[node] != nil
            {
                startRecovery(run, members: mastering.viewMembers)
                return
            }
            view = run
        default:
            return
        }
        // (The run's fields are read in place: a copy of the whole `Recovery` per message, and per resource in
        // `rebuild`, was a fifth of a recovery's time.)
        guard mastering.recovery?.view == view, mastering.recovery?.abandoned == false else {
            if view > mastering.currentRun {
                mastering.futureRecovery.append((node, message))
            }
            // An earlier run's answers are not needed: the next run's start sends them again.
            return
        }
        mastering.recoveredWith.insert(node)
        switch message {
        case .recoverMasters(_, let keys):
            if mastering.recovery!.phase == 0 {
                // (The directory entries this run rebuilds are not known before phase 0 ends here.)
                mastering.recovery!.earlyRegistrations.append((node, keys))
            } else {
                for key in keys { mastering.directory[key] = node }
            }
        case .recoverLocks(_, let locks):
            for lock in locks { mastering.recovery!.received.append(lock, from: node) }
        case .recoverBindings(_, let bindings):
            if mastering.recovery!.deferredBindings != nil {
                mastering.recovery!.deferredBindings!.append((node, bindings))
            } else {
                bind(bindings, from: node)
            }
        case .recoverValues(_, let replicas):
            for replica in replicas { mastering.recovery!.receivedValues[replica.key, default: []].append(replica) }
        case .recoverStored(_, let replicas):
            for replica in replicas {
                mastering.recovery!.storedOffers[replica.key, default: []].append((node, replica))
            }
        case .recoverLockspaces(_, let report):
            mastering.recovery!.lockspaceReports[node] = report
            mastering.recovery!.done[0, default: []].insert(node)
            advanceRecovery()
        case .recoveryDone(_, let phase, let departed, let recovered, let stored):
            mastering.recovery!.reportedDeparted.formUnion(departed)
            if phase == 1 {
                mastering.recovery!.recoveredViews[node] = recovered
                mastering.recovery!.storedViews[node] = stored
            }
            mastering.recovery!.done[phase, default: []].insert(node)
            advanceRecovery()
        default:
            break
        }
    }

    /// The new master's ids for this node's resent locks. A binding for a copy that another owner holds now is
    /// stale (its owner exited, and the id was given again) and is passed over.
    mutating func bind(_ bindings: [RecoveredBinding], from node: UInt32) {
        // (Noted once per run of one owner's bindings: a recovery binds a million locks.)
        var noted: UInt64 = 0
        for binding in bindings {
            guard let index = mastering.copies.index(ofCopy: binding.copy), mastering.copies.copies[index].rebinding,
                mastering.copies.copies[index].owner == binding.owner
            else { continue }
            // From the node that rebuilt the lock: the new master, whichever node this one resent it to.
            mastering.copies.copies[index].master = node
            let owner = mastering.copies.copies[index].owner
            if owner != noted {
                mastering.copies.noteMaster(node, of: owner)
                noted = owner
            }
            mastering.copies.bind(index, masterLock: binding.lock)
            if let record = mastering.copies.copies[index].record {
                mastering.masters[DirectoryKey(lockspace: record.lockspace, name: record.name)] = node
            }
            if let grant = binding.grant { deliverLostGrant(grant, to: index) }
        }
    }

    /// A master that binds again a lock an earlier run rebuilt tells its grant (`RecoveredBinding.grant`): if the
    /// copy still waits for its request or conversion, the completion that ended it came while the copy waited for
    /// its binding and was dropped (no copy matched the master's id yet), and is delivered now, once. A grant in
    /// another mode than asked is the alternate mode of ALTPR or ALTCW; one in the mode the lock held already
    /// ended a conversion without granting it, which a master does only by its timeout or for a deadlock: ETIMEDOUT
    /// if it had a timeout, else EDEADLK, as `endedByDepartedMasters` answers a request that ended so.
    mutating func deliverLostGrant(_ grant: RecoveredGrant, to index: Int) {
        let copy = mastering.copies.copies[index]
        guard let record = copy.record, let requested = record.requestedMode, let slot = slotsByOwner[copy.owner]
        else { return }
        let id = clients[Int(slot)].id
        var completion: Completion
        if grant.mode == record.grantedMode {
            completion = Completion(
                lock: ProcessCopies.lockID(index), owner: owner(id), status: record.endedWaitStatus, mode: grant.mode)
        } else {
            var flags = grant.flags
            if grant.mode != requested, !record.flags.isDisjoint(with: [.alternatePR, .alternateCW]) {
                flags.insert(.alternateMode)
            }
            completion = Completion(
                lock: ProcessCopies.lockID(index), owner: owner(id), status: .granted, flags: flags, mode: grant.mode,
                valueBlock: grant.valueBlock, valueBlockSequence: grant.valueBlockSequence,
                fencingToken: grant.fencingToken)
        }
        mastering.copies.apply(completion, to: index)
        output.notices.append(("a grant whose completion was lost in a recovery delivered", ["lock": "\(index)"]))
        guard isLive(id), clients[Int(slot)].state == .ready else { return }
        deliver(id, .completion(CompletionMessage(tag: 0, completion)))
    }

    /// Ends the phase once every member said it is done with it.
    mutating func advanceRecovery() {
        guard let recovery = mastering.recovery, !recovery.abandoned,
            Set(mastering.members).isSubset(of: recovery.done[recovery.phase] ?? [])
        else { return }
        if recovery.phase == 0 {
            mastering.recovery!.phase = 1
            let placement = mastering.placement
            takeGroups(recovery.lockspaceReports.mapValues(\.lockspaces))
            takeTokenFloors(recovery.lockspaceReports)
            settleDirectory(recovery.lockspaceReports)
            // (No walk of the replicas when the groups place every resource where the run's start did.)
            if mastering.placement != placement { markOutdatedReplicas(all: false) }
            // Requests that wait for a lookup in a lockspace whose directory the run leaves as it was ask now (an
            // answer that came during phase 0 was not taken); the others ask when the run ends.
            for key in Self.ordered(mastering.awaitingLookup.keys)
            where mastering.directoryServesDuringRecovery(key.lockspace) {
                send(.lookup(key), to: mastering.directoryNode(of: key))
            }
            startRegistrations()
        } else if recovery.phase == 1 {
            mastering.recovery!.phase = 2
            output.recoveries.append(
                .rebuilt(view: RecoveryRun.view(recovery.view), run: RecoveryRun.number(recovery.view)))
            takeStoredOffers()
            startRebuilds()
        } else {
            endRecovery()
        }
    }

    // MARK: Phase 2

    /// Phase 2 begins: the fencing-token floors rise above every token issued before; then, in slices, the
    /// resources whose master left are rebuilt: those holders sent locks of, in the order they came, then those
    /// whose persistent locks only a backup node kept, in name order (`finishRebuilds` ends the phase).
    mutating func startRebuilds() {
        guard let recovery = mastering.recovery else { return }
        engine.raiseFencingTokenFloors(to: recovery.fencingFloor)
        var work = RecoveryWork(phase: 2)
        work.knowsRebuilt = !mastering.rebuilt.isEmpty
        let fromReplicas = recovery.receivedValues.compactMap { key, replicas in
            !recovery.received.contains(key) && replicas.contains { !$0.persistentLocks.isEmpty } ? key : nil
        }
        if !fromReplicas.isEmpty { work.keys = Self.ordered(fromReplicas) }
        // (Sized at once: growing them key by key rehashed hundreds of thousands of entries in single slices.)
        let resources = recovery.received.resourceCount + work.keys.count
        mastering.rebuilt.reserve(recovery.received.count)
        engine.reserveCapacity(resources: resources, locks: recovery.received.count)
        mastering.recovery!.work = work
    }

    /// Phase 2 in slices (a resource counts as many entries as locks came for it): the resources holders sent
    /// locks of, in the order their first lock came, then those only a backup node kept. Returns true when all is
    /// done.
    mutating func rebuild(_ work: inout RecoveryWork, budget: inout Int) -> Bool {
        // (A client may have closed a lockspace between two slices.)
        work.lastLockspace = nil
        // (What the slice reads of the run, read once: no mutation of the run changes it during the phase. The
        // received locks are taken out of the run in place: a copy of the table here would make that a copy of it.)
        let count = mastering.recovery!.received.count
        let values = mastering.recovery!.receivedValues
        let alone = mastering.recovery!.reportedDeparted.count == 1
        let floor = mastering.recovery!.fencingFloor
        var holders: [(node: UInt32, lock: RecoveredLock)] = []
        while budget > 0, work.nextReceived < count {
            let index = work.nextReceived
            work.nextReceived += 1
            guard mastering.recovery!.received.entries[index].isFirst else { continue }
            mastering.recovery!.received.takeHolders(from: index, into: &holders)
            budget -= holders.count
            rebuild(
                mastering.recovery!.received.entries[index].key, holders: holders, values: values, alone: alone,
                floor: floor, into: &work)
        }
        while budget > 0, work.nextReceived == count, work.nextKey < work.keys.count {
            let key = work.keys[work.nextKey]
            work.nextKey += 1
            budget -= 1
            rebuild(key, holders: [], values: values, alone: alone, floor: floor, into: &work)
        }
        return work.nextReceived == count && work.nextKey == work.keys.count
    }

    /// Rebuilds a resource whose master left, with its tree, from what its holders sent (`holders`) and what its
    /// backup node kept; answers the holders, and registers it with its directory node.
    /// (`replicas`: the value replicas backup nodes sent, by resource; `alone`: whether the master was the only node
    /// to leave; `floor`: the run's fencing-token floor.)
    mutating func rebuild(
        _ key: DirectoryKey, holders: [(node: UInt32, lock: RecoveredLock)],
        values replicas: [DirectoryKey: [ValueReplica]], alone: Bool, floor: UInt64, into work: inout RecoveryWork
    ) {
        let me = configuration.nodeID
        if let master = mastering.directory[key], master != me {
            // An aborted run rebuilt it there (it registered it): that node answers the holders.
            return
        }
        let values = replicas.isEmpty ? nil : replicas[key]
        let replica = values.flatMap { Self.newest($0) }
        // (Orphans an aborted run rebuilt here are here already.)
        var orphans: [(index: Int, lock: ReplicatedLock)] = []
        if let replica, !replica.persistentLocks.isEmpty,
            !engine.hasTopLevelResource(lockspace: key.lockspace, name: key.name)
        {
            orphans = Self.orphans(of: replica, holders: holders, members: mastering.viewMembers)
        }
        guard !holders.isEmpty || !orphans.isEmpty else { return }
        let orphanSubLocks = orphans.contains { $0.lock.parent != nil }
        let valueBlockLength = holders.first?.lock.valueBlockLength ?? replica?.valueBlockLength ?? 0
        let lockspace: LockspaceID
        if let last = work.lastLockspace, last.valueBlockLength == valueBlockLength, last.name == key.lockspace {
            lockspace = last.id
        } else {
            guard let opened = openForPeer(key.lockspace, valueBlockLength: valueBlockLength) else { return }
            lockspace = opened
            work.lastLockspace = (key.lockspace, valueBlockLength, opened)
            // (It grants what it can when recovery ends.)
            mastering.rebuiltLockspaces.insert(lockspace)
        }
        // The tree of the resource, parents before children: the top-level resource, then the sub-resources by
        // depth, each in order of arrival. (Most resources have no sub-locks: no grouping for them.)
        let top = [key.name]
        var paths = [top]
        var byPath: [[[UInt8]]: [(node: UInt32, lock: RecoveredLock)]] = [:]
        var orphansByPath: [[[UInt8]]: [(index: Int, lock: ReplicatedLock)]] = [:]
        if !holders.allSatisfy({ $0.lock.subPath.isEmpty }) || orphanSubLocks {
            for holder in holders {
                let path = holder.lock.path
                if byPath[path] == nil, path != top { paths.append(path) }
                byPath[path, default: []].append(holder)
            }
            for orphan in orphans {
                let path = top + orphan.lock.subPath
                if byPath[path] == nil, orphansByPath[path] == nil, path != top { paths.append(path) }
                orphansByPath[path, default: []].append(orphan)
            }
            paths = paths.enumerated().sorted { ($0.element.count, $0.offset) < ($1.element.count, $1.offset) }
                .map(\.element)
        }
        var tree = RebuiltTree(replica: orphanSubLocks ? replica : nil)
        var rebuiltHere = false
        for path in paths {
            // (Most resources have no tree: one path, and no table of paths hashed for them.)
            let holders = paths.count == 1 ? holders : byPath[path] ?? []
            let orphans = paths.count == 1 ? orphans : orphansByPath[path] ?? []
            if rebuildResource(
                key, path: path, lockspace: lockspace, holders: holders, orphans: orphans, values: values,
                alone: alone, floor: floor,
                tree: &tree, bindings: &work.bindings, knowsRebuilt: work.knowsRebuilt)
            {
                rebuiltHere = true
            }
        }
        guard rebuiltHere else { return }
        // (Its requests wait for the end of the recovery.)
        registerAsMaster(key, rebuilt: true, into: &work.registrations)
    }

    /// The end of this node's part of phase 2 (its answers went out with the last slice): the departed nodes'
    /// locks and requests go (their persistent locks become orphans here), every replicated resource goes to its
    /// backup node of the new view, and the phase's barrier, which waits for their acknowledgements: when the
    /// phase ends everywhere, every backup node has them.
    mutating func finishRebuilds() {
        let me = configuration.nodeID
        discard(mastering.recovery!.received, count: mastering.recovery!.received.count)
        mastering.recovery!.received = ReceivedLocks()
        mastering.recovery!.receivedValues = [:]
        let members = mastering.viewMembers
        for owner in engine.owners(matching: { $0.node != me && members[$0.node] != $0.incarnation }) {
            run(.ownerExited(owner), reply: nil)
        }
        mastering.rebuilt.forget(holders: { members[$0.node] != $0.incarnation })
        replicateAgain()
        finishPhase(2)
    }

    /// Rebuilds one resource of a tree whose master left (`path`: names from the top-level resource down) from the
    /// holders' locks and the replica's orphans of that resource; returns whether it rebuilt any. A lock sent
    /// again by a holder whose answer was lost in an aborted run is answered with its id. A sub-lock names its
    /// parent lock by the holder's id, which this node rebuilt just before (parents come first); an orphan
    /// sub-lock names it by its index in the replica (`tree`). Value replicas are kept of top-level resources only:
    /// a sub-resource's value block is valid after recovery only if a surviving holder of PR or above read or
    /// wrote its newest value.
    mutating func rebuildResource(
        _ key: DirectoryKey, path: [[UInt8]], lockspace: LockspaceID, holders: [(node: UInt32, lock: RecoveredLock)],
        orphans replicaOrphans: [(index: Int, lock: ReplicatedLock)], values: [ValueReplica]?, alone: Bool,
        floor: UInt64, tree: inout RebuiltTree, bindings: inout [UInt32: [RecoveredBinding]], knowsRebuilt: Bool
    ) -> Bool {
        var orphans: [(index: Int, lock: ReplicatedLock, parent: LockID?)] = []
        for orphan in replicaOrphans {
            guard let parentIndex = orphan.lock.parent else {
                orphans.append((orphan.index, orphan.lock, nil))
                continue
            }
            guard let parent = tree.lock(at: parentIndex) else {
                output.notices.append(
                    (
                        "an orphan sub-lock could not be rebuilt: its parent lock was not",
                        ["resource": path.map(\.displayName).joined(separator: "/")]
                    ))
                continue
            }
            orphans.append((orphan.index, orphan.lock, parent))
        }
        var fresh: [(node: UInt32, lock: RecoveredLock)] = []
        var parents: [LockID?] = []
        for holder in holders {
            if knowsRebuilt, let known = mastering.rebuilt[RebuiltCopy(holder.lock)] {
                bindings[holder.node, default: []].append(
                    RecoveredBinding(copy: holder.lock.copy, owner: holder.lock.owner.rawValue, lock: known))
                tree.held(holder.lock, path: path, as: known)
                continue
            }
            var parent: LockID?
            if holder.lock.parentCopy != 0 {
                var parentCopy = RebuiltCopy(holder.lock)
                parentCopy.copy = holder.lock.parentCopy
                guard let id = mastering.rebuilt[parentCopy] else {
                    output.notices.append(
                        (
                            "a sub-lock could not be rebuilt: its parent lock was not",
                            ["resource": path.map(\.displayName).joined(separator: "/"), "node": "\(holder.node)"]
                        ))
                    continue
                }
                parent = id
            }
            fresh.append(holder)
            parents.append(parent)
        }
        guard !fresh.isEmpty || !orphans.isEmpty else { return false }
        let topLevel = path.count == 1
        let (snapshot, order) = Self.rebuiltResource(
            key, path: path, lockspace: lockspace, from: fresh, parents: parents, orphans: orphans,
            values: topLevel ? values ?? [] : [], alone: topLevel && alone, members: mastering.viewMembers,
            floor: floor, now: engine.now)
        effects.removeAll(keepingCapacity: true)
        engine.handle(.recover(snapshot), into: &effects)
        var ids: [LockID] = []
        for effect in effects {
            switch effect {
            case .accepted(let id): ids.append(id)
            case .persist(let entry): record(.journal(entry))
            case .refused(let error):
                output.notices.append(
                    (
                        "a resource could not be rebuilt",
                        ["resource": path.map(\.displayName).joined(separator: "/"), "error": error.message]
                    ))
            default: break
            }
        }
        guard ids.count == orphans.count + fresh.count else { return false }
        for (orphan, id) in zip(orphans, ids) { tree.orphaned(orphan.index, as: id) }
        for (index, id) in zip(order, ids.dropFirst(orphans.count)) {
            let holder = fresh[index]
            mastering.rebuilt.add(RebuiltCopy(holder.lock), lock: id)
            bindings[holder.node, default: []].append(
                RecoveredBinding(copy: holder.lock.copy, owner: holder.lock.owner.rawValue, lock: id))
            tree.held(holder.lock, path: path, as: id)
        }
        return true
    }

    /// The newest of a resource's replicas: of those one life of a master sent, the one of its latest generation
    /// (each is the whole state, so it is later than the others whatever their marks); then by value-block
    /// sequence, one that is not outdated if there is one, else an outdated one if `orOutdated`.
    static func newest(_ replicas: [ValueReplica], orOutdated: Bool = true) -> ValueReplica? {
        var replicas = replicas
        if replicas.count > 1 {
            let origins = replicas.compactMap(\.origin)
            replicas.removeAll { replica in
                guard let origin = replica.origin else { return false }
                return origins.contains { origin.precedes($0) }
            }
        }
        let current = replicas.filter { !$0.outdated }
        let candidates = current.isEmpty && orOutdated ? replicas : current
        return candidates.max { $0.valueBlockSequence < $1.valueBlockSequence }
    }

    /// The persistent locks of a resource's tree whose master left that its backup node kept and that no survivor
    /// sends: orphans, and the locks of owners that left (with their node, or by exiting while the master died: a
    /// live owner that still holds locks on the resource sends them all itself). They are rebuilt as orphans, each
    /// with its index in the replica; a sub-lock only if its parent lock comes back too, as an orphan or from its
    /// holder (as on one node, a persistent lock is orphaned only with its parent: one whose parent is not
    /// persistent is not in the replica, and one whose parent is not rebuilt goes with it). Nor is one whose mode
    /// conflicts with a lock a survivor holds granted on its resource: the survivor was granted while that lock was
    /// not held, so the replica is older than its release (the survivor's hold is the truth, and two such holds
    /// must never be). A survivor's lock with an unlock on its way to the departed master conflicts with nothing,
    /// and one with a conversion on its way only if both modes conflict: that master may have done it and granted
    /// the listed lock after it.
    static func orphans(
        of replica: ValueReplica?, holders: [(node: UInt32, lock: RecoveredLock)], members: [UInt32: UInt64]
    ) -> [(index: Int, lock: ReplicatedLock)] {
        guard let replica, !replica.persistentLocks.isEmpty else { return [] }
        let sending = Set(holders.map(\.lock.owner))
        // The modes each survivor may hold (both, with a conversion on its way).
        let granted = holders.compactMap { holder -> (subPath: [[UInt8]], modes: [LockMode])? in
            guard let mode = holder.lock.grantedMode else { return nil }
            switch holder.lock.inFlight {
            case nil: return (holder.lock.subPath, [mode])
            case .unlock: return nil
            case .conversion(let target): return (holder.lock.subPath, [mode, target])
            }
        }
        var orphans: [(index: Int, lock: ReplicatedLock)] = []
        // Whether each lock comes back: from its holder, or as an orphan.
        var back = [Bool](repeating: false, count: replica.persistentLocks.count)
        for (index, var lock) in replica.persistentLocks.enumerated() {
            if let owner = lock.owner {
                if members[owner.node] == owner.incarnation && sending.contains(owner) {
                    back[index] = true
                    continue
                }
                lock.owner = nil
                lock.orphanNode = owner.node
            }
            if let parent = lock.parent, !back[parent] { continue }
            if granted.contains(where: { held in
                held.subPath == lock.subPath && held.modes.allSatisfy { !$0.isCompatible(with: lock.mode) }
            }) {
                continue
            }
            back[index] = true
            orphans.append((index, lock))
        }
        return orphans
    }

    /// A resource rebuilt from its survivors' locks: granted locks first, then conversions, then waiting requests
    /// (each in the order they came); the value block the newest that a holder or the backup node kept
    /// (LockService+Replicas.swift). `alone`: the master was the only node to leave (so its backup node survived,
    /// and no replica means the value block was never in use); `members`: the view's (for the writer's fate).
    static func rebuiltResource(
        _ key: DirectoryKey, path: [[UInt8]], lockspace: LockspaceID,
        from holders: [(node: UInt32, lock: RecoveredLock)], parents: [LockID?],
        orphans: [(index: Int, lock: ReplicatedLock, parent: LockID?)] = [],
        values: [ValueReplica], alone: Bool, members: [UInt32: UInt64], floor: UInt64, now: Instant
    ) -> (ResourceSnapshot, order: [Int]) {
        var locks: [LockSnapshot] = []
        var order: [Int] = []
        var token = floor
        // The orphans first (granted before anything a survivor holds was).
        for (_, orphan, parent) in orphans {
            locks.append(
                LockSnapshot(
                    id: LockID(rawValue: UInt32(locks.count + 1)), owner: nil, queue: .grant, grantedMode: orphan.mode,
                    requestedMode: nil, flags: orphan.flags, parent: parent, transaction: nil, priority: 0,
                    wantsBlockingCallbacks: false, alwaysFencingToken: false, blockingSent: 0, pendingFlags: [],
                    waitingSince: now, waitSequence: 0, deadline: 0, fencingToken: orphan.fencingToken,
                    pid: orphan.pid, uid: orphan.uid, orphanNode: orphan.orphanNode))
            token = max(token, orphan.fencingToken)
        }
        var sequence: UInt64 = 0
        var block: [UInt8]?
        var valid = false
        for queue in [QueueKind.grant, .convert, .wait] {
            for (index, (_, lock)) in holders.enumerated() {
                let kind: QueueKind =
                    lock.grantedMode == nil ? .wait : (lock.requestedMode == nil ? .grant : .convert)
                guard kind == queue else { continue }
                order.append(index)
                locks.append(
                    LockSnapshot(
                        id: LockID(rawValue: UInt32(locks.count + 1)), owner: lock.owner, queue: kind,
                        grantedMode: lock.grantedMode, requestedMode: lock.requestedMode, flags: lock.flags,
                        parent: parents[index], transaction: lock.transaction, priority: lock.priority,
                        wantsBlockingCallbacks: lock.wantsBlockingCallbacks,
                        alwaysFencingToken: lock.alwaysFencingToken, blockingSent: 0, pendingFlags: [],
                        waitingSince: now, waitSequence: 0,
                        deadline: kind == .grant ? 0 : lock.timeout.map { now &+ $0 } ?? 0,
                        fencingToken: lock.fencingToken,
                        pid: lock.pid, uid: lock.uid))
                token = max(token, lock.fencingToken)
                if lock.valueBlockSequence >= sequence, let value = lock.valueBlock {
                    sequence = lock.valueBlockSequence
                    block = value
                }
            }
        }
        // Trusted only if a survivor holds PR or above (no departed node can have held PW or EX beside it) and
        // read or wrote the newest value: a departed writer's last value may be lost otherwise.
        for (_, lock) in holders {
            if let mode = lock.grantedMode, mode >= .pr, lock.valueBlock != nil, lock.valueBlockSequence == sequence {
                valid = true
            }
        }
        // An outdated replica (its node was not the backup by every placement since it came) counts only when the
        // master left alone: then every node that was a backup since the last completed recovery survived and sent
        // what it kept, and the newest of them all is the last write. Otherwise the last write may have been on a
        // backup node that left too.
        if let replica = newest(values, orOutdated: alone), replica.valueBlockSequence >= sequence {
            // The backup node has every write that was acknowledged: the value is the last one unless it was marked
            // invalid, or its PW or EX holder left (it may have written without telling anyone).
            sequence = replica.valueBlockSequence
            block = replica.valueBlock
            // (An orphan writes no more, and it is rebuilt from the replica.)
            let orphan = OwnerID(rawValue: 0)
            let writerLeft = replica.writer.map { $0 != orphan && members[$0.node] != $0.incarnation } ?? false
            valid = !replica.invalid && !writerLeft
        } else if values.isEmpty && alone {
            // Never replicated: never written, never invalid, never held in PW or EX with VALBLK.
            valid = true
        }
        let snapshot = ResourceSnapshot(
            lockspace: lockspace, path: path, valueBlock: block, valueBlockSequence: sequence,
            valueBlockInvalid: !valid, fencingToken: token, locks: locks)
        return (snapshot, order)
    }

    // MARK: The end

    mutating func endRecovery() {
        guard let recovery = mastering.recovery else { return }
        let departed = recovery.departed
        mastering.recovery = nil
        mastering.recoveredView = recovery.view
        mastering.settledGroups = mastering.groups
        mastering.unsettledLockspaces = []
        mastering.memberIncarnations = mastering.viewMembers
        // The store learns the view, so that at a restart of the whole cluster it counts as of it (once the previous
        // life's records are gone, when there were some).
        if !endPreviousLife(view: recovery.view) { record(.recoveredView(recovery.view)) }
        dropStaleReplicas(view: recovery.view)
        // Every engine's floor is above the tokens of earlier views now (not above those of this view: a run within
        // it keeps them).
        mastering.tossFloors = mastering.tossFloors.filter { $0.value >= recovery.fencingFloor }
        output.notices.append(("recovery done", ["view": RecoveryRun.describe(recovery.view)]))
        output.recoveries.append(.done(view: RecoveryRun.view(recovery.view), run: RecoveryRun.number(recovery.view)))
        for lockspace in mastering.rebuiltLockspaces.sorted(by: { $0.rawValue < $1.rawValue }) {
            run(.grantAfterRecovery(lockspace), reply: nil)
        }
        mastering.rebuiltLockspaces = []
        mastering.masters.endRebuilds()
        // The ids of the locks rebuilt before this recovery are forgotten once their holders have them for good
        // (RebuiltHistory).
        let forgotten = mastering.rebuilt.endRecovery(
            run: recovery.view, holdersCompleted: earlierRebuiltHoldersCompleted(recovery.lockspaceReports))
        discard(forgotten, count: forgotten.byCopy.count)
        // What other nodes sent meanwhile, in order.
        for (node, _, message) in recovery.heldTraffic { receive(message, from: node) }
        // Operations whose master left are sent again (not those sent during recovery to a new life of its node);
        // lookups the old directory may have answered are asked again.
        let members = mastering.viewMembers
        let lost = mastering.pending.filter {
            departed.contains($0.value.master)
                && ($0.value.masterIncarnation == nil || members[$0.value.master] != $0.value.masterIncarnation)
        }.sorted { $0.key < $1.key }
        var retries: [Mastering.PendingOperation] = []
        for (reference, operation) in lost {
            mastering.pending[reference] = nil
            let id = operation.connection
            guard isLive(id), clients[Int(id.slot)].state == .ready else { continue }
            if operation.isNewLock { mastering.copies.remove(operation.copy) }
            if releasedByDepartedMaster(operation, from: id) { continue }
            retries.append(operation)
        }
        endedByDepartedMasters()
        for operation in retries { retry(operation.message, from: operation.connection) }
        for key in Self.ordered(mastering.awaitingLookup.keys) {
            send(.lookup(key), to: mastering.directoryNode(of: key))
        }
        resume()
        // (After the node serves again: a retried open that still waits asks for a run, which this node may start
        // itself, as the coordinator.)
        retryJoinWaiters()
        // (And a released lockspace that the run did not see left asks again.)
        if !mastering.released.isEmpty { leaveReleasedGroups() }
    }
}

extension LockService {
    /// An UNLOCK whose master left before its answer came, for a lock that no master rebuilt in the run that just
    /// ended (its copy, resent, was never bound again): the master had released it, and the answer was lost with
    /// it. Its resource was dropped there once idle and is mastered by another node now, which knows nothing of the
    /// lock (seed 344356 of the random recovery traffic: the retried UNLOCK was refused with ENOENT, and the client
    /// took the lock for still held). The unlock is done: EUNLOCK, as the master would have answered; a FORCEUNLOCK
    /// took the lock's sub-locks with it, and each gets its untagged EUNLOCK first, deepest first. (A lock that
    /// still existed at its master is resent with its resource, which is then rebuilt and binds it again.)
    /// A CANCEL of a waiting request in the same case is done too: its master had ended the request (by its timeout,
    /// or as a deadlock's victim) and dropped the resource; ECANCEL, as if the cancel had come first.
    mutating func releasedByDepartedMaster(_ operation: Mastering.PendingOperation, from id: ConnectionID) -> Bool {
        guard case .unlock(let m) = operation.message,
            mastering.copies.copies[operation.copy].owner == id.owner, mastering.copies.copies[operation.copy].rebinding
        else { return false }
        if m.flags.contains(.cancel) {
            guard mastering.copies.copies[operation.copy].record?.grantedMode == nil else { return false }
            mastering.copies.remove(operation.copy)
            let cancelled = Completion(
                lock: ProcessCopies.lockID(operation.copy), owner: owner(id), status: .cancelled, mode: nil)
            deliver(id, .completion(CompletionMessage(tag: m.tag, cancelled)))
            replyDelivered(id)
            return true
        }
        // (Its sub-locks were resent with it and bound by none either.)
        let below = m.flags.contains(.forceUnlock) ? mastering.copies.unboundSubLocks(of: operation.copy) : []
        for copy in below.reversed() + [operation.copy] {
            mastering.copies.remove(copy)
            let unlocked = Completion(lock: ProcessCopies.lockID(copy), owner: owner(id), status: .unlocked, mode: nil)
            deliver(id, .completion(CompletionMessage(tag: copy == operation.copy ? m.tag : 0, unlocked)))
        }
        replyDelivered(id)
        return true
    }

    /// The waiting requests of this node's clients whose master left after ending them, its answer lost with it:
    /// resent by the run that just ended and bound by no master (the master had dropped the idle resource, and
    /// another node masters it now, knowing nothing of them; a request the master still had would have come back
    /// with its resource). A waiting request ends without its owner asking only by its timeout or as a deadlock's
    /// victim: it is answered ETIMEDOUT if it had a timeout, else EDEADLK (untagged, as its master would have), so
    /// that no client waits for ever for an answer that died with its master.
    mutating func endedByDepartedMasters() {
        guard mastering.copies.rebindingCount > 0 else { return }
        let operating = Set(mastering.pending.values.map(\.copy))
        var ended: [(index: Int, connection: ConnectionID, status: DLMStatus)] = []
        for index in 0..<mastering.copies.copies.count {
            let copy = mastering.copies.copies[index]
            guard copy.rebinding, copy.owner != 0, !operating.contains(index), let record = copy.record,
                record.grantedMode == nil, !mastering.copies.isExiting(copy.owner), let slot = slotsByOwner[copy.owner]
            else { continue }
            let id = clients[Int(slot)].id
            guard isLive(id), clients[Int(slot)].state == .ready else { continue }
            ended.append((index, id, record.endedWaitStatus))
        }
        if !ended.isEmpty {
            output.notices.append(
                ("waiting requests whose departed master had ended them answered", ["count": "\(ended.count)"]))
        }
        for (index, id, status) in ended {
            mastering.copies.remove(index)
            let completion = Completion(lock: ProcessCopies.lockID(index), owner: owner(id), status: status, mode: nil)
            deliver(id, .completion(CompletionMessage(tag: 0, completion)))
        }
    }
}

extension RecoveredLock {
    /// How a master ends a waiting request or conversion of this lock without granting it, when its answer was
    /// lost: only by its timeout (ETIMEDOUT, if it had one) or as a deadlock's victim (EDEADLK).
    var endedWaitStatus: DLMStatus { timeout != nil || flags.contains(.timeout) ? .timedOut : .deadlock }
}

// MARK: Only what the failure touched waits

extension LockService {
    /// Whether a client's LOCK, CONVERT or UNLOCK runs while the node recovers: only on a resource whose master
    /// survived and that recovery does not rebuild here. Such a resource is in the same state during recovery as
    /// in the time between the failure and the new view, when requests ran anyway: its master holds every lock on
    /// it (a departed node's locks still block until phase 2 purges them, so nothing is granted that could not
    /// be granted before). A request that needs the directory (its master is not known) waits unless phase 0
    /// found that the run leaves its lockspace's directory as it was (`directoryServesDuringRecovery`); a lock
    /// whose master left (its copy waits to be bound to the new master) and a resource rebuilt here wait for the
    /// end of the run.
    /// A request for another master goes to it, which runs it or holds it by the same rule (`runsDuringRecovery`
    /// for peer messages). Nothing runs in a run that a view without quorum abandoned, nor in a life's first
    /// recovery (it masters nothing yet that it may serve).
    func runsDuringRecovery(_ message: ClientMessage, from id: ConnectionID) -> Bool {
        guard mastering.recovery?.abandoned == false, mastering.recoveredView > 0 else { return false }
        let lock: UInt32
        switch message {
        case .lock(let m):
            if m.parent != 0 {
                lock = m.parent
            } else {
                guard let info = engine.lockspaceInfo(LockspaceID(rawValue: m.lockspace)) else { return true }
                let key = DirectoryKey(lockspace: info.name, name: m.name)
                guard let master = mastering.masters[key] else {
                    return mastering.directoryServesDuringRecovery(info.name)
                }
                return master != configuration.nodeID || !mastering.masters.isRebuilt(key)
            }
        case .convert(let m): lock = m.lock
        case .unlock(let m): lock = m.lock
        default: return false
        }
        guard ProcessCopies.isCopy(lock) else {
            // A lock of the local engine: its resource was mastered here all along (a client's lock on a resource
            // that moved here is a copy); no such lock: refused at once.
            guard let top = engine.topLevelResource(of: LockID(rawValue: lock)) else { return true }
            return !mastering.masters.isRebuilt(DirectoryKey(lockspace: top.lockspace, name: top.name))
        }
        guard let index = mastering.copies.index(of: lock, owner: id.owner) else { return true }
        // Bound to a master that survived (an unbound copy waits for the new master's id).
        let copy = mastering.copies.copies[index]
        let masterLeft =
            mastering.recovery!.departed.contains(copy.master) || mastering.viewMembers[copy.master] == nil
        // (A copy this run rebuilt here waits too, as the other nodes' operations on its resource do: a sub-lock
        // under it runs in this engine, not through the peer path that holds them.)
        if copy.master == configuration.nodeID, let record = copy.record,
            mastering.masters.isRebuilt(DirectoryKey(lockspace: record.lockspace, name: record.name))
        {
            return false
        }
        return copy.masterLock != nil && !copy.rebinding && !masterLeft
    }

    /// Whether another node's operation runs while this node recovers: on a resource mastered here all along (by
    /// the same rule as `runsDuringRecovery` for clients), and lookups in a directory the run leaves as it was.
    /// Operations on the resources rebuilt here, other lookups and owner exits wait for the end of the run. (A
    /// node sends at most one operation per connection at a time, so running one ahead of held ones keeps each
    /// client's order.)
    func runsDuringRecovery(_ message: PeerMessage) -> Bool {
        guard mastering.recovery?.abandoned == false, mastering.recoveredView > 0 else { return false }
        let lock: LockID
        switch message {
        case .request(_, let remote):
            if let parent = remote.request.parent {
                lock = parent
            } else {
                let key = DirectoryKey(lockspace: remote.lockspace, name: remote.request.name)
                return mastering.masters[key] == configuration.nodeID && !mastering.masters.isRebuilt(key)
                    && !mastering.leaving.contains(key.lockspace)
            }
        case .convert(_, let request): lock = request.lock
        case .unlock(_, let request): lock = request.lock
        case .deadlockCancel(_, let cancelled, _): lock = cancelled
        case .lookup(let key): return mastering.directoryServesDuringRecovery(key.lockspace)
        default: return false
        }
        guard let top = engine.topLevelResource(of: lock) else { return false }
        return !mastering.masters.isRebuilt(DirectoryKey(lockspace: top.lockspace, name: top.name))
    }
}

/// The locks recovery rebuilt on this node, by their holders' ids: those of the recovery under way or the last one
/// (`current`), and those of the one before it (`earlier`). A holder whose run was aborted before it completed a
/// recovery resends its locks in the next run (it still counts their master as departed), to that run's directory
/// node, and is told their ids again from here (`reboundBindings`: the earlier ones only to a member whose phase-0
/// report says it did not complete their recovery). Once a holder completed that recovery it has bound them for
/// good (their ids went out in its phase 1, ahead of this node's barrier, and its phase 2 ends only after this
/// node's phase 1 did), and it resends them no more while this node lives; so the earlier locks are forgotten when
/// a later recovery completes here and every live holder of them said, as that recovery's last run began, that it
/// had completed theirs (`endRecovery`). Completion here is not enough: a holder may have had the ids and dropped
/// them at its next run (RecoveryRandomTests seed 249815: an aborted run, then another, and a holder's two locks
/// were lost). Before, they were kept for as long as each lock lived, and every later recovery sent the id of every
/// lock ever rebuilt here again: a million bindings at each recovery after one of a million locks.
struct RebuiltHistory {
    var current = RebuiltLocks()
    var earlier = RebuiltLocks()
    /// The run that completed the recovery of `earlier` here (0: none yet).
    var earlierRun: UInt64 = 0

    /// The id of a holder's rebuilt lock.
    subscript(copy: RebuiltCopy) -> LockID? { current.byCopy[copy] ?? earlier.byCopy[copy] }

    var isEmpty: Bool { current.isEmpty && earlier.isEmpty }
    var count: Int { current.byCopy.count + earlier.byCopy.count }
    var hasExiting: Bool { current.hasExiting || earlier.hasExiting }

    func isExiting(_ holder: RebuiltOwner) -> Bool { current.isExiting(holder) || earlier.isExiting(holder) }

    mutating func add(_ copy: RebuiltCopy, lock: LockID) {
        // (The id named a lock of the earlier recovery that is gone by now.)
        if !earlier.isEmpty { earlier.forget(lock: lock) }
        current.add(copy, lock: lock)
    }

    mutating func forget(lock: LockID) {
        current.forget(lock: lock)
        if !earlier.isEmpty { earlier.forget(lock: lock) }
    }

    mutating func forget(owner: OwnerID) {
        current.forget(owner: owner)
        earlier.forget(owner: owner)
    }

    mutating func forget(holders gone: (RebuiltOwner) -> Bool) {
        current.forget(holders: gone)
        earlier.forget(holders: gone)
    }

    /// (One generation a slice: a slice forgets at most `budget` locks.)
    mutating func forgetExited(budget: Int) {
        if current.hasExiting { current.forgetExited(budget: budget) } else { earlier.forgetExited(budget: budget) }
    }

    mutating func reserve(_ count: Int) { current.reserve(count) }

    /// Whether every holder of the earlier locks that is still a member (`members`, by life) completed their
    /// recovery, by its phase-0 report of this run (`recovered`: the last run it completed).
    func earlierHoldersCompleted(members: [UInt32: UInt64], recovered: (UInt32) -> UInt64) -> Bool {
        earlier.byOwner.keys.allSatisfy { holder in
            members[holder.node] != holder.incarnation || recovered(holder.node) >= earlierRun
        }
    }

    /// A recovery completed here (its last run, `run`). If every live holder of the earlier locks had completed
    /// their recovery when this run began (`holdersCompleted`), they are forgotten (returned, for the shell to
    /// free) and the locks rebuilt in this recovery become the earlier ones. Otherwise both are kept as they are: a
    /// holder that did not complete a recovery since resends its locks to the directory node of each run (it still
    /// counts this node's master as departed) and needs their ids from here again; the current ones then go to
    /// every member in the next run, as before.
    mutating func endRecovery(run: UInt64, holdersCompleted: Bool) -> RebuiltLocks {
        guard holdersCompleted || earlier.isEmpty else { return RebuiltLocks() }
        let forgotten = earlier
        earlier = current
        earlierRun = run
        current = RebuiltLocks()
        return forgotten
    }
}

/// The locks recovery rebuilt on this node, by their holders' ids and back, and by holder. An owner's exit forgets
/// its own only: a walk of them all at every exit was a step of about 100 ms on a master that had rebuilt a million
/// locks, for every client of the cluster that went while they lived. And it forgets them in slices: a client
/// that held 62,500 rebuilt locks made a step of 126 ms when it went (`forgetExited`).
struct RebuiltLocks {
    /// (Sharded: phase 1 of a later run walks it a shard at a time, `reboundBindings`.)
    var byCopy = ShardedDictionary<RebuiltCopy, LockID>()
    /// (In pages by lock id: the locks a recovery rebuilds have consecutive ids mostly.)
    var byLock = PagedLockTable<RebuiltCopy>()
    var byOwner: [RebuiltOwner: Set<UInt32>] = [:]
    /// Holders that went (an owner's exit, a departed node), with their copies still to forget. Until then their
    /// entries stay in `byCopy` and `byLock`: no holder sends a gone owner's locks again, and a new lock given one
    /// of their lock ids replaces the entry (`add`).
    var exiting = ForgetQueue<RebuiltOwner, UInt32>()

    var hasExiting: Bool { !exiting.isEmpty }

    func isExiting(_ holder: RebuiltOwner) -> Bool { exiting.contains(holder) }

    var isEmpty: Bool { byLock.isEmpty }

    mutating func add(_ copy: RebuiltCopy, lock: LockID) {
        // (Each side's old entry goes only if it still names this lock or copy.)
        if let old = byCopy.updateValue(lock, forKey: copy), old != lock, byLock[old] == copy { byLock[old] = nil }
        if let other = byLock.updateValue(copy, forKey: lock), other != copy, byCopy[other] == lock { remove(other) }
        byOwner[copy.holder, default: []].insert(copy.copy)
    }

    /// The lock is gone.
    mutating func forget(lock: LockID) {
        if let copy = byLock.removeValue(forKey: lock) { remove(copy) }
    }

    /// The owner went: its locks are gone (forgotten in slices).
    mutating func forget(owner: OwnerID) {
        forget(holder: RebuiltOwner(node: owner.node, incarnation: owner.incarnation, owner: owner.rawValue))
    }

    /// The holders for which `gone` is true went: their locks are gone (forgotten in slices). A walk of the holders,
    /// not of the locks.
    mutating func forget(holders gone: (RebuiltOwner) -> Bool) {
        for holder in byOwner.keys where gone(holder) { forget(holder: holder) }
    }

    private mutating func forget(holder: RebuiltOwner) {
        guard let copies = byOwner.removeValue(forKey: holder) else { return }
        exiting.append(holder, Array(copies))
    }

    /// Forgets up to `budget` locks of holders that went.
    mutating func forgetExited(budget: Int) {
        for (holder, copy) in exiting.take(upTo: budget) {
            let key = RebuiltCopy(holder: holder, copy: copy)
            // (Its lock id may name another holder's lock by now.)
            if let lock = byCopy.removeValue(forKey: key), byLock[lock] == key { byLock[lock] = nil }
        }
    }

    /// Room for `count` more locks, so that no insert of a recovery's rebuild rehashes them all in one step.
    mutating func reserve(_ count: Int) {
        byCopy.reserveCapacity(byCopy.count + count)
    }

    private mutating func remove(_ copy: RebuiltCopy) {
        byCopy[copy] = nil
        removeFromOwner(copy)
    }

    private mutating func removeFromOwner(_ copy: RebuiltCopy) {
        guard byOwner[copy.holder]?.remove(copy.copy) != nil else { return }
        if byOwner[copy.holder]!.isEmpty { byOwner[copy.holder] = nil }
    }
}

extension RebuiltLocks: Sendable {}

/// The holder of rebuilt locks: its node, life and owner number there.
struct RebuiltOwner: Hashable {
    var node: UInt32
    var incarnation: UInt64
    var owner: UInt64

    /// (KeyHash: looked up for every lock a recovery rebuilds.)
    func _rawHashValue(seed: Int) -> Int {
        KeyHash.mix(KeyHash.combine(KeyHash.combine(UInt64(node), incarnation), owner), seed: seed)
    }
}

/// A holder's lock that this node rebuilt, by the holder's node, its life, owner and its id for the lock.
struct RebuiltCopy: Hashable {
    var node: UInt32
    var incarnation: UInt64
    var owner: UInt64
    var copy: UInt32

    /// (KeyHash: looked up for every lock a recovery rebuilds, and at every exit of its holder.)
    func _rawHashValue(seed: Int) -> Int {
        KeyHash.mix(
            KeyHash.combine(KeyHash.combine(UInt64(node) << 32 | UInt64(copy), incarnation), owner), seed: seed)
    }

    init(_ lock: RecoveredLock) {
        node = lock.owner.node
        incarnation = lock.owner.incarnation
        owner = lock.owner.rawValue
        copy = lock.copy
    }

    init(holder: RebuiltOwner, copy: UInt32) {
        node = holder.node
        incarnation = holder.incarnation
        owner = holder.owner
        self.copy = copy
    }

    var holder: RebuiltOwner { RebuiltOwner(node: node, incarnation: incarnation, owner: owner) }
}

/// The ids that the rebuild of one resource tree gave to the locks that the orphan sub-locks of its replica may
/// name as their parent: the replica's orphans, by their index in it, and the holders' locks, by resource, owner,
/// mode and fencing token (the replica knows a lock that its holder sends by those alone; of two alike, either
/// will do). Kept only for a replica with orphan sub-locks.
struct RebuiltTree {
    struct HeldLock: Hashable {
        var path: [[UInt8]]
        var owner: OwnerID
        var mode: LockMode
        var fencingToken: UInt64
    }

    let replica: ValueReplica?
    var orphans: [Int: LockID] = [:]
    var held: [HeldLock: LockID] = [:]

    init(replica: ValueReplica?) { self.replica = replica }

    mutating func orphaned(_ index: Int, as id: LockID) {
        if replica != nil { orphans[index] = id }
    }

    mutating func held(_ lock: RecoveredLock, path: [[UInt8]], as id: LockID) {
        guard replica != nil, let mode = lock.grantedMode else { return }
        let key = HeldLock(path: path, owner: lock.owner, mode: mode, fencingToken: lock.fencingToken)
        if held[key] == nil { held[key] = id }
    }

    /// The id of the replica's lock at `index`, if it was rebuilt.
    func lock(at index: Int) -> LockID? {
        if let id = orphans[index] { return id }
        guard let replica else { return nil }
        let lock = replica.persistentLocks[index]
        guard let owner = lock.owner else { return nil }
        return held[
            HeldLock(
                path: [replica.name] + lock.subPath, owner: owner, mode: lock.mode, fencingToken: lock.fencingToken)]
    }
}

extension PeerMessage {
    /// The run a recovery message is of (not for a run's request or start).
    var recoveryRun: UInt64? {
        switch self {
        case .recoverMasters(let run, _), .recoverLocks(let run, _), .recoverBindings(let run, _),
            .recoveryDone(let run, _, _, _, _), .recoverValues(let run, _), .recoverStored(let run, _),
            .recoverLockspaces(let run, _):
            run
        default: nil
        }
    }
}
