import DLMCore
import DLMWire

/// Frames and the store (`--durability`), and value replicas. The changes of the inputs between two `takeOutput`
/// calls make one generation, written by the shell on the store's thread; the value replicas of those inputs go to
/// their backup nodes with the generation's number (LockService+Replicas.swift). A frame that depends on a
/// generation waits in its connection's `held` list until the generation is *released*: `committed` said it is in
/// the store (`batch`: in LMDB; `sync`: on disk) and every backup node acknowledged its replicas; every later frame
/// of that connection queues behind it, so nothing is reordered. Generations are released in order. With `none`,
/// or without a store, and with no value block in use across nodes, nothing waits.
extension LockService {
    /// A change made by this input: it goes into the open generation, and this input's frames wait for it.
    mutating func record(_ change: StoreChange) {
        guard configuration.hasStore else { return }
        pendingChanges.append(change)
        lastChangedGeneration = openGeneration
        if configuration.repliesWaitForCommits { holdingGeneration = openGeneration }
    }

    /// The reply of work done in slices waits for every generation that holds one of its changes: the last one
    /// with any change, if it is not in the store yet (generations are committed in order).
    mutating func holdForEarlierSlices() {
        guard configuration.repliesWaitForCommits || configuration.mastersAcrossNodes,
            lastChangedGeneration > releasedGeneration
        else { return }
        holdingGeneration = max(holdingGeneration ?? 0, lastChangedGeneration)
    }

    /// Ends the open generation: its changes go out for the store (`ServiceOutput.commit`); it waits for them and
    /// for its replicas' acknowledgements.
    mutating func closeGeneration() {
        let stored = !pendingChanges.isEmpty
        guard stored || !openReplicaBackups.isEmpty else { return }
        if stored {
            output.commit = (openGeneration, pendingChanges)
            pendingChanges = []
        }
        var waits: [UInt32: UInt64] = [:]
        for node in openReplicaBackups { waits[node] = openGeneration }
        openReplicaBackups = []
        unreleased.append(GenerationWait(generation: openGeneration, stored: stored, acknowledgements: waits))
        openGeneration += 1
    }

    /// The store holds every generation up to `generation`.
    mutating func committed(upTo generation: UInt64) {
        storeCommittedGeneration = max(storeCommittedGeneration, generation)
        advanceRelease()
    }

    /// Releases the oldest generations whose commit and acknowledgements all came.
    mutating func advanceRelease() {
        var released = releasedGeneration
        while let first = unreleased.first,
            first.isDone(committed: storeCommittedGeneration, acknowledged: mastering.replicaAcknowledged)
        {
            unreleased.removeFirst()
            released = first.generation
        }
        if released > releasedGeneration { release(upTo: released) }
    }

    /// Sends a frame now, or, while this input's changes or earlier frames of this connection wait for a commit,
    /// after that commit (frames to one connection never overtake each other).
    mutating func deliver(_ id: ConnectionID, _ message: ServerMessage) {
        let slot = Int(id.slot)
        // The answers to frames of a connection that is gone, run after it went (LockService+Endings.swift).
        guard !clients[slot].isGone else { return }
        let last = clients[slot].lastHeldGeneration
        guard let generation = holdingGeneration ?? (last == 0 ? nil : last) else {
            output.frames.append((id, message))
            return
        }
        if last == generation {
            queues[slot].held[queues[slot].held.count - 1].messages.append(message)
        } else {
            queues[slot].held.append((generation, [message]))
            clients[slot].lastHeldGeneration = generation
        }
    }

    /// Every generation up to `generation` is released: the frames that waited for them go out, in order; a
    /// connection that was closing closes once nothing waits.
    mutating func release(upTo generation: UInt64) {
        releasedGeneration = generation
        releasePeerMessages(upTo: generation)
        for slot in clients.indices {
            let client = clients[slot]
            guard client.lastHeldGeneration != 0, queues[slot].held[0].generation <= generation else { continue }
            var held = queues[slot].held
            queues[slot].held = []  // taken out while changed, so that the array is not copied
            while let first = held.first, first.generation <= generation {
                if !client.isGone {
                    for message in first.messages { output.frames.append((client.id, message)) }
                }
                held.removeFirst()
            }
            clients[slot].lastHeldGeneration = held.last?.generation ?? 0
            queues[slot].held = held
            guard held.isEmpty else { continue }
            if client.isGone {
                if clients[slot].hasExited { forget(client.id) }
            } else if client.closeWhenSent {
                output.closes.append(client.id)
            }
        }
    }

    /// A message for another node: sent now, or, while this input's changes (or earlier messages to that node) wait
    /// for a commit, after that commit. A master thus acknowledges a persistent lock or a value block write to a
    /// holder on another node only once it is in its store, as it does for its own clients; messages to one node
    /// never overtake each other.
    ///
    /// To a copy of this node mastered here (rebuilt by recovery, or a master cached before it moved here): handled
    /// after this input, by the same rule: a master's answer reaches its copy, and so the client, only once what it
    /// depends on is in the store and at the backup node (a value written by a down-conversion acknowledged before
    /// its replica was: random recovery seed 18097).
    mutating func send(_ message: PeerMessage, to node: UInt32) {
        let earlier = mastering.heldGeneration[node]
        guard let generation = holdingGeneration ?? earlier else {
            if node == configuration.nodeID {
                mastering.loopback.append(message)
            } else {
                output.peerMessages.append((node, message))
            }
            return
        }
        let wait = max(generation, earlier ?? 0)
        mastering.heldMessages.append((wait, node, message))
        mastering.heldGeneration[node] = wait
        mastering.heldCount[node, default: 0] += 1
    }

    /// Sends the messages whose generation is released, in order; one that still waits keeps those behind it
    /// waiting.
    mutating func releasePeerMessages(upTo generation: UInt64) {
        while let first = mastering.heldMessages.first, first.generation <= generation {
            mastering.heldMessages.removeFirst()
            if first.node == configuration.nodeID {
                mastering.loopback.append(first.message)
            } else {
                output.peerMessages.append((first.node, first.message))
            }
            mastering.heldCount[first.node, default: 1] -= 1
            if mastering.heldCount[first.node] == 0 {
                mastering.heldCount[first.node] = nil
                mastering.heldGeneration[first.node] = nil
            }
        }
    }
}

/// A closed generation that waits: for the store's commit (if it wrote anything), and for each backup node's
/// acknowledgement of the replicas up to a generation (acknowledgements are cumulative per node: a node answers in
/// the order it was sent to).
struct GenerationWait {
    var generation: UInt64
    var stored: Bool
    var acknowledgements: [UInt32: UInt64]

    func isDone(committed: UInt64, acknowledged: [UInt32: UInt64]) -> Bool {
        (!stored || generation <= committed)
            && acknowledgements.allSatisfy { acknowledged[$0.key, default: 0] >= $0.value }
    }
}
