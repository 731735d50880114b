import DLMCore
import DLMWire

/// A restart of the whole cluster (docs/RECOVERY.md, "A restart of the whole cluster"). A cluster member's locks
/// come back through recovery only, never from its own store: while it was down, the others rebuilt its resources
/// from their holders and replicas, and changed them since. But when every member restarts, no member holds the
/// lock space any more, and the stores are all there is. So a new life keeps what its store holds (its *previous
/// life*: the resources it mastered, with their persistent locks and value blocks) until its first recovery
/// completes, and offers it in phase 1 of each recovery run to the resources' directory nodes (`recoverStored`).
/// Its phase-1 barrier says which view its previous life last recovered (`stored`), and every member's says
/// which view it recovered in its present life (`recovered`). When phase 1 ends, every member knows all of them:
///
/// - if some member has recovered a view in its present life, the cluster kept running: the lock space lives on
///   that member and its peers, and a store's offer is stale (its resources were rebuilt elsewhere and may have
///   changed since). It is dropped, as before.
/// - if none has, the whole cluster restarted: the offers of the members whose stored view is the latest are
///   taken as replicas of resources whose master left, so the directory node rebuilds each persistent lock as an
///   orphan with its value block (marked not valid if the store said so, or if a holder that was not persistent
///   held PW or EX when the node stopped). A store whose stored view is older is stale: its node left a view whose
///   recovery then completed on others, which rebuilt its resources (and may have purged or adopted its orphans).
///
/// When a recovery completes, the previous life is over: its store records that are not rebuilt here are deleted,
/// in slices, and then the view is stored (`StoreChange.recoveredView`, as at the end of every recovery). A
/// top-level resource's offer carries its tree: the persistent sub-locks come back with it, each under its parent.
struct PreviousLife {
    /// The last view whose recovery completed in that life (0: none stored).
    var recoveredView: UInt64
    /// Its top-level resources with persistent locks, as replicas without writer, each with the persistent
    /// locks of its sub-resources.
    var replicas: [ValueReplica]
    /// Every resource record of that life (sub-resources included): deleted when it is over, unless rebuilt here.
    var records: [(lockspace: [UInt8], path: [[UInt8]])]
    /// Its persistent sub-locks whose parent lock the store did not hold, which do not come back.
    var subLocks: Int
}

extension LockService {
    /// A new life of a cluster member keeps the persistent locks its store holds (`resources`, of lockspaces whose
    /// value-block lengths are `lengths`) to offer them at a restart of the whole cluster; `recoveredView` is the
    /// store's last recovered view. Returns how many locks it keeps.
    public mutating func keepPreviousLife(
        recoveredView: UInt64, resources: [StoredResource], lengths: [[UInt8]: Int]
    ) -> Int {
        guard !resources.isEmpty else { return 0 }
        var life = PreviousLife(recoveredView: recoveredView, replicas: [], records: [], subLocks: 0)
        var kept = 0
        let me = configuration.nodeID
        // The sub-resources of each top-level one (a stored sub-lock names its parent lock by the id it had then).
        var subResources: [DirectoryKey: [StoredResource]] = [:]
        for stored in resources where stored.resource.path.count > 1 {
            subResources[DirectoryKey(lockspace: stored.lockspace, name: stored.resource.path[0]), default: []]
                .append(stored)
        }
        for stored in resources {
            life.records.append((stored.lockspace, stored.resource.path))
            guard stored.resource.path.count == 1 else { continue }
            var locks: [ReplicatedLock] = []
            var indexes: [LockID: Int] = [:]
            func keep(_ lock: LockSnapshot, subPath: [[UInt8]], parent: Int?) {
                guard let mode = lock.grantedMode else { return }
                let node = lock.owner?.node ?? (lock.orphanNode != 0 ? lock.orphanNode : me)
                indexes[lock.id] = locks.count
                locks.append(
                    ReplicatedLock(
                        owner: nil, orphanNode: node, pid: lock.pid, uid: lock.uid, mode: mode, flags: lock.flags,
                        fencingToken: lock.fencingToken, subPath: subPath, parent: parent))
            }
            for lock in stored.resource.locks { keep(lock, subPath: [], parent: nil) }
            let key = DirectoryKey(lockspace: stored.lockspace, name: stored.resource.path[0])
            // (Parents first: by depth.)
            let subs = (subResources.removeValue(forKey: key) ?? []).sorted {
                $0.resource.path.count < $1.resource.path.count
            }
            for sub in subs {
                let subPath = Array(sub.resource.path.dropFirst())
                for lock in sub.resource.locks {
                    guard let parent = lock.parent.flatMap({ indexes[$0] }),
                        locks[parent].subPath == subPath.dropLast()
                    else {
                        life.subLocks += 1
                        continue
                    }
                    keep(lock, subPath: subPath, parent: parent)
                }
            }
            guard !locks.isEmpty else { continue }
            kept += locks.count
            life.replicas.append(
                ValueReplica(
                    lockspace: stored.lockspace, name: stored.resource.path[0], valueBlock: stored.resource.valueBlock,
                    valueBlockSequence: stored.resource.valueBlockSequence,
                    invalid: stored.resource.valueBlockInvalid || stored.hasVolatileWriter, writer: nil,
                    persistentLocks: locks, valueBlockLength: lengths[stored.lockspace] ?? 0))
        }
        for orphaned in subResources.values { life.subLocks += orphaned.reduce(0) { $0 + $1.resource.locks.count } }
        mastering.previousLife = life
        return kept
    }

    /// In phase 1 of every recovery run until one completes, in its slices (after this node's resent locks): the
    /// previous life's resources go to their directory nodes, which take them only at a restart of the whole
    /// cluster. Returns true when all are offered.
    mutating func offerPreviousLife(_ work: inout RecoveryWork, budget: inout Int) -> Bool {
        guard let life = mastering.previousLife, life.recoveredView > 0 else { return true }
        while budget > 0, work.nextOffer < life.replicas.count {
            let replica = life.replicas[work.nextOffer]
            work.offers[mastering.directoryNode(of: replica.key), default: []].append(replica)
            work.nextOffer += 1
            budget -= 1
        }
        return work.nextOffer >= life.replicas.count
    }

    /// What this node says of its lives in its phase-1 barrier: the view it recovered in this life, and the one
    /// its previous life had stored (0 when it offers nothing: no persistent locks, or a store that never recorded
    /// a recovered view, whose age cannot be told).
    var livesReport: (recovered: UInt64, stored: UInt64) {
        let stored = mastering.previousLife.map { $0.replicas.isEmpty ? 0 : $0.recoveredView } ?? 0
        return (mastering.recoveredView, stored)
    }

    /// When phase 1 ends: at a restart of the whole cluster (no member recovered a view in its present life), the
    /// offers of the members with the latest stored view become replicas of resources whose master left.
    mutating func takeStoredOffers() {
        guard let recovery = mastering.recovery, !recovery.storedOffers.isEmpty else { return }
        mastering.recovery!.storedOffers = [:]
        let wholeClusterRestarted = mastering.members.allSatisfy { recovery.recoveredViews[$0, default: 0] == 0 }
        guard wholeClusterRestarted else { return }
        let latest = recovery.storedViews.values.max() ?? 0
        guard latest > 0 else { return }
        for (key, offers) in recovery.storedOffers {
            let current = offers.filter { recovery.storedViews[$0.node] == latest }
            // (Two stores of the latest view with one resource: the newest value block wins.)
            guard let best = current.max(by: { $0.replica.valueBlockSequence < $1.replica.valueBlockSequence })
            else { continue }
            mastering.recovery!.receivedValues[key, default: []].append(best.replica)
        }
    }

    /// When a recovery completes, the previous life is over: its store records go, in slices between which the
    /// node serves (`continueEndingLife`; a million records in one step would stall it long enough to be taken
    /// for dead). Until the last slice the store says it recovered no view (0), so that a crash in between, which
    /// leaves some old records beside new ones, never offers them at a restart of the whole cluster; the last
    /// slice stores the view. Returns false when there is no previous life to end (the caller stores the view).
    mutating func endPreviousLife(view: UInt64) -> Bool {
        if mastering.endingLife != nil {
            // (A later recovery completed before the last slice: it is the view to store.)
            mastering.endingLife!.view = view
            return true
        }
        guard let life = mastering.previousLife else { return false }
        mastering.previousLife = nil
        mastering.endingLife = EndingLife(
            view: view, records: life.records,
            offeredLocks: life.replicas.reduce(0) { $0 + $1.persistentLocks.count }, subLocks: life.subLocks)
        record(.recoveredView(0))
        return true
    }

    /// One slice of the previous life's end: each of its records is deleted, and a resource this node masters now
    /// (recovery rebuilt it here, from these records or from survivors) is written again whole over it, in the same
    /// step. After the last, the store learns the view of the last completed recovery.
    mutating func continueEndingLife() {
        guard var ending = mastering.endingLife else { return }
        mastering.endingLife = nil
        let end = min(ending.records.count, ending.next + max(recoverySlice, 1))
        for index in ending.next..<end {
            let (lockspace, path) = ending.records[index]
            record(.journal(.delete(lockspace: lockspace, path: path)))
            if let current = engine.storedResource(lockspace: lockspace, path: path) {
                record(.journal(.put(current)))
            } else {
                ending.deleted += 1
            }
        }
        ending.next = end
        guard ending.next >= ending.records.count else {
            mastering.endingLife = ending
            return
        }
        record(.recoveredView(ending.view))
        output.notices.append(
            (
                "the persistent locks of this node's previous life are settled",
                [
                    "view": "\(ending.view)", "offered_locks": "\(ending.offeredLocks)",
                    "dropped_sub_locks": "\(ending.subLocks)", "records_deleted": "\(ending.deleted)",
                ]
            ))
    }
}

/// The end of a previous life, in slices: the view whose recovery ended it (the latest, if more completed since),
/// its records and the next to delete.
struct EndingLife {
    var view: UInt64
    var records: [(lockspace: [UInt8], path: [[UInt8]])]
    var next = 0
    var deleted = 0
    var offeredLocks: Int
    var subLocks: Int
}
