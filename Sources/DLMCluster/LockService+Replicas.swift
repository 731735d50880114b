import DLMCore
import DLMWire

/// Value blocks and persistent locks that survive the death of their master (docs/RECOVERY.md, "Value blocks",
/// "Persistent locks and orphans"). A master replicates the value-block state of each resource whose value block
/// or a persistent lock is in use (the engine's `.replicate` effects, ValueReplicas.swift: the value, its sequence
/// number, the invalid mark, the PW or EX holder, the granted persistent locks and orphans) to the resource's
/// *backup node*, and no frame or message that the change caused goes out until that node acknowledged it
/// (LockService+Durability.swift): a written value is on two nodes before its writer hears that it was written,
/// and a holder learns it was granted PW or EX only once the backup knows it holds it.
///
/// When a master leaves, the backup node sends what it kept to the resource's new master (`recoverValues`, in the
/// first phase of recovery). The new master takes the newest value, the holders' included, and trusts it unless
/// the replica was marked invalid or its PW or EX holder left with the master (it may have written without
/// telling): then the value block is marked not valid, as on one node when a PW or EX holder dies. In the second
/// phase every master replicates all its resources again to their backup nodes of the new view.
///
/// Replicas and their acknowledgements go out at once, ahead of messages that wait for a commit (those may wait for
/// these acknowledgements).
struct StoredReplica {
    /// The master that sent it, and its life as this node's view had it then (a node whose first recovery did not
    /// complete knows no earlier view to tell that the master left since).
    var master: UInt32
    var masterIncarnation: UInt64?
    /// The view in which it came: when a recovery ends, only those of its view whose backup is still this node stay.
    var view: UInt64
    var replica: ValueReplica
    /// This node may lack later writes: it was not the resource's backup node by some placement since the replica
    /// came (`markOutdatedReplicas`), so the master may have sent them to another node.
    var outdated = false
}

extension LockService {
    /// The backup node of a resource that `master` masters: its directory node, or, when that is the master, the
    /// next member after it; nil on a node alone.
    func backupNode(of key: DirectoryKey, master: UInt32) -> UInt32? {
        mastering.backupNode(of: key, master: master)
    }

    /// The engine's replicas of this input go to their backup nodes, and this input's frames and messages wait for
    /// their acknowledgements.
    mutating func sendReplicas(_ replicas: [ValueReplica]) {
        guard mastersAcrossNodes, !replicas.isEmpty else { return }
        var byBackup: [UInt32: [ValueReplica]] = [:]
        for replica in replicas {
            guard let backup = backupNode(of: replica.key, master: configuration.nodeID) else { continue }
            byBackup[backup, default: []].append(replica)
        }
        guard !byBackup.isEmpty else { return }
        for (node, list) in byBackup.sorted(by: { $0.key < $1.key }) {
            // (In pieces: phase 2 replicates every resource again.)
            for piece in Self.pieces(list) {
                output.peerMessages.append(
                    (
                        node,
                        .valueReplicas(
                            generation: openGeneration, incarnation: configuration.incarnation,
                            view: mastering.currentRun, piece)
                    ))
                mastering.replicaMessagesInFlight[node, default: []].append(openGeneration)
            }
            openReplicaBackups.insert(node)
        }
        holdingGeneration = openGeneration
        lastChangedGeneration = openGeneration
    }

    /// As a backup node: a master's replicas (of its life `incarnation`, as of its generation `generation`), kept
    /// with where they came from, and acknowledged.
    /// (One that came from a master whose placement is not this node's, a master behind or ahead of this node in
    /// the views, is outdated at once: this node does not know where that master sends the next change.)
    mutating func storeReplicas(
        _ replicas: [ValueReplica], generation: UInt64, incarnation: UInt64, from node: UInt32
    ) {
        let view = mastering.currentRun
        let me = configuration.nodeID
        let origin = ReplicaOrigin(master: node, incarnation: incarnation, generation: generation)
        for var replica in replicas {
            replica.origin = origin
            if replica.removed {
                if mastering.replicas[replica.key]?.master == node { mastering.replicas[replica.key] = nil }
            } else {
                mastering.replicas[replica.key] = StoredReplica(
                    master: node, masterIncarnation: mastering.viewMembers[node], view: view, replica: replica,
                    outdated: mastering.backupNode(of: replica.key, master: node) != me)
            }
        }
        output.peerMessages.append((node, .valueReplicasStored(generation: generation)))
    }

    /// A backup node has everything this node sent it up to `generation`.
    mutating func replicasStored(upTo generation: UInt64, by node: UInt32) {
        // One acknowledgement per message, in order: the generation is done once its last message is.
        _ = mastering.replicaMessagesInFlight[node]?.popFirst()
        var done = generation
        if mastering.replicaMessagesInFlight[node]?.first == generation { done = generation - 1 }
        if mastering.replicaMessagesInFlight[node]?.isEmpty == true { mastering.replicaMessagesInFlight[node] = nil }
        mastering.replicaAcknowledged[node] = max(mastering.replicaAcknowledged[node, default: 0], done)
        advanceRelease()
    }

    // MARK: Recovery

    /// At the start of a recovery: nothing waits any longer for a backup node whose life is not the one of the
    /// last view (`previous`: that life may be gone, and a new life drops what was meant for the old one;
    /// recovery's messages queue behind what waits, and only the second phase replicates again: a change that
    /// such a node did not acknowledge is on this node alone until then, and lost if this node dies too).
    mutating func forgetDepartedBackups(members: [UInt32: UInt64], previous: [UInt32: UInt64]) {
        for index in unreleased.indices {
            for node in unreleased[index].acknowledgements.keys
            where members[node] == nil || members[node] != previous[node] {
                unreleased[index].acknowledgements[node] = nil
            }
        }
        for node in Array(mastering.replicaMessagesInFlight.keys)
        where members[node] == nil || members[node] != previous[node] {
            mastering.replicaMessagesInFlight[node] = nil
        }
        advanceRelease()
    }

    /// The placement of resources changed (a new view's members, or phase 0's groups): a replica of a live master
    /// whose backup node this node is no longer is outdated from now on, and so is every replica when this node
    /// cannot know the placement the masters used meanwhile (`all`: it skipped a view, or a run ended before its
    /// groups were agreed here). Kept all the same: if the master dies before it replicates again, and nothing
    /// else left, it is still the newest copy.
    mutating func markOutdatedReplicas(all: Bool) {
        guard !mastering.replicas.isEmpty else { return }
        let me = configuration.nodeID
        // (Taken out while the closure reads the placement: a copy of the state that shares the replicas would copy
        // each shard at its first write.)
        var replicas = mastering.replicas
        mastering.replicas = ShardedDictionary()
        defer { mastering.replicas = replicas }
        let placement = mastering
        replicas.updateAll { key, stored in
            guard !stored.outdated else { return }
            if all {
                stored.outdated = true
            } else if let incarnation = placement.viewMembers[stored.master],
                stored.masterIncarnation == nil || stored.masterIncarnation == incarnation,
                placement.backupNode(of: key, master: stored.master) != me
            {
                stored.outdated = true
            }
        }
    }

    /// The replicas this node kept of departed masters' resources go to their new masters (in phase 1, once the
    /// groups are agreed), each flagged `outdated` if this node may lack later writes.
    mutating func recoverReplicas(view: UInt64, departed: Set<UInt32>) {
        let members = mastering.viewMembers
        var resends: [UInt32: [ValueReplica]] = [:]
        let orphaned = mastering.replicas.compactMap { key, stored in
            departed.contains(stored.master) || members[stored.master] == nil
                || (stored.masterIncarnation != nil && members[stored.master] != stored.masterIncarnation)
                ? (key, stored.outdated ? stored.replica.markedOutdated : stored.replica) : nil
        }
        for (key, replica) in orphaned { resends[mastering.directoryNode(of: key), default: []].append(replica) }
        for (node, list) in resends.sorted(by: { $0.key < $1.key }) {
            sendRecovery(Self.ordered(list) { $0.key }, to: node) { .recoverValues(view: view, $0) }
        }
    }

    /// In the second phase (every member is in this view's recovery, so every backup node takes what it is sent),
    /// once this node's resources are rebuilt and purged: every replicated resource goes to its backup node of the
    /// new view; what this node sends after it (its barrier) waits for their acknowledgements.
    mutating func replicateAgain() {
        effects.removeAll(keepingCapacity: true)
        engine.replicateAll(into: &effects)
        var replicas: [ValueReplica] = []
        for case .replicate(let replica) in effects { replicas.append(replica) }
        sendReplicas(replicas)
    }

    /// When a recovery ends: only the replicas that came in its view and whose backup this node still is stay (every
    /// master sent its resources again in the second phase, before its barrier).
    mutating func dropStaleReplicas(view: UInt64) {
        guard !mastering.replicas.isEmpty else { return }
        let me = configuration.nodeID
        // (The closure reads a copy of the directory's state taken once: one that called `backupNode` on the service
        // copied the whole service for each replica.)
        let placement = mastering
        mastering.replicas.removeAll { key, stored in
            stored.view != view || placement.backupNode(of: key, master: stored.master) != me
        }
    }
}

extension ValueReplica {
    var key: DirectoryKey { DirectoryKey(lockspace: lockspace, name: name) }

    var markedOutdated: ValueReplica {
        var replica = self
        replica.outdated = true
        return replica
    }
}
