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
/// When a recovery completes, the previous life is over: its store records that are not rebuilt here are deleted
/// (and, at the end of every recovery, the view is stored: `StoreChange.recoveredView`). Only top-level resources come back; a persistent sub-lock
/// of the previous life is dropped, as its master's death drops it.
struct PreviousLife {
    /// The last view whose recovery completed in that life (0: none stored).
    var recoveredView: UInt64
    /// Its top-level resources with persistent locks, as replicas without writer.
    var replicas: [ValueReplica]
    /// Every resource record of that life (sub-resources included): deleted when it is over, unless rebuilt here.
    var records: [(lockspace: [UInt8], path: [[UInt8]])]
    /// The persistent sub-locks it had, which do not come back.
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
        for stored in resources {
            life.records.append((stored.lockspace, stored.resource.path))
            guard stored.resource.path.count == 1 else {
                life.subLocks += stored.resource.locks.count
                continue
            }
            let locks = stored.resource.locks.compactMap { lock -> ReplicatedLock? in
                guard let mode = lock.grantedMode else { return nil }
                let node = lock.owner?.node ?? (lock.orphanNode != 0 ? lock.orphanNode : configuration.nodeID)
                return ReplicatedLock(
                    owner: nil, orphanNode: node, pid: lock.pid, uid: lock.uid, mode: mode, flags: lock.flags,
                    fencingToken: lock.fencingToken)
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
        mastering.previousLife = life
        return kept
    }

    /// In phase 1 of every recovery run until one completes: the previous life's resources go to their directory
    /// nodes, which take them only at a restart of the whole cluster.
    mutating func offerPreviousLife(view: UInt64) {
        guard let life = mastering.previousLife, !life.replicas.isEmpty, life.recoveredView > 0 else { return }
        var byDirectory: [UInt32: [ValueReplica]] = [:]
        for replica in life.replicas {
            byDirectory[mastering.directoryNode(of: replica.key), default: []].append(replica)
        }
        for (node, list) in byDirectory.sorted(by: { $0.key < $1.key }) {
            sendRecovery(list, to: node) { .recoverStored(view: view, $0) }
        }
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

    /// When a recovery completes, the previous life is over: its store records go. A resource this node masters
    /// now (recovery rebuilt it here, from these records or from survivors) is written again whole, over its old
    /// lock records, in the same commit.
    mutating func endPreviousLife(view: UInt64) {
        guard let life = mastering.previousLife else { return }
        mastering.previousLife = nil
        var deleted = 0
        for (lockspace, path) in life.records {
            record(.journal(.delete(lockspace: lockspace, path: path)))
            if let current = engine.storedResource(lockspace: lockspace, path: path) {
                record(.journal(.put(current)))
            } else {
                deleted += 1
            }
        }
        let offered = life.replicas.reduce(0) { $0 + $1.persistentLocks.count }
        output.notices.append(
            (
                "the persistent locks of this node's previous life are settled",
                [
                    "view": "\(view)", "offered_locks": "\(offered)", "dropped_sub_locks": "\(life.subLocks)",
                    "records_deleted": "\(deleted)",
                ]
            ))
    }
}
