import DLMCore
import DLMStore
import DLMWire
import Foundation
import NIOCore

/// What the node writes to its store and when it acknowledges it (`--durability`).
final class NodePersistence {
    let store: NodeStore
    var writer: StoreWriter?
    /// Changes of the inputs since the last submission.
    var pending: [NodeStore.Change] = []
    /// The generation the current inputs' changes belong to.
    var openGeneration: UInt64 = 1
    /// The highest generation known to be in the store.
    var committedGeneration: UInt64 = 0
    var journal: [JournalEntry] = []
    /// What group services persisted at the last start (their `PersistentState`, JSON), if anything.
    var groupState: [UInt8]?

    init(store: NodeStore) {
        self.store = store
    }
}

extension LockNode {
    /// Opens the store, counts this start as a new incarnation, and gives back every persistent lock as an
    /// orphan, with its value block; committed before the node listens.
    func openStore() throws {
        let store = try NodeStore(
            directory: configuration.dataDirectory, nodeID: configuration.nodeID, durability: configuration.durability,
            mapSize: configuration.mapSize)
        var engineConfig = configuration.engine
        // Fencing tokens after this start are above any issued before it: the incarnation is in the high bits.
        engineConfig.fencingTokenBase = store.incarnation << 40
        engine = LockEngine(config: engineConfig)
        let contents = try store.load()
        var restored = 0
        for lockspace in contents.lockspaces {
            _ = try engine.createLockspace(name: lockspace.name, valueBlockLength: lockspace.valueBlockLength)
        }
        for resource in contents.resources {
            do {
                restored += try engine.restoreStored(resource)
            } catch {
                throw NodeError("cannot restore resource \(resource.resource.path) of the store: \(error)")
            }
        }
        let persistence = NodePersistence(store: store)
        self.persistence = persistence
        persistence.groupState = contents.lastView
        // The restored resources are written again (their volatile holders are gone).
        engine.drainJournal(into: &persistence.journal)
        try store.commit(persistence.journal.map { .journal($0) })
        try store.sync()
        persistence.journal.removeAll()
        logger.info(
            "store opened",
            metadata: [
                "path": "\(store.directory)", "incarnation": "\(store.incarnation)",
                "durability": "\(store.durability)", "lockspaces": "\(contents.lockspaces.count)",
                "persistent_locks": "\(restored)",
            ])
        let loop = eventLoop
        let writer = StoreWriter(
            store: store, logger: logger,
            onCommitted: { [self] generation in loop.execute { self.committed(upTo: generation) } },
            onFailure: { error in
                // A store that cannot be written cannot keep the promises made to clients: stop, as a database
                // does when its disk fails, rather than acknowledge what would be lost.
                FileHandle.standardError.write(Data("dlmd: the store failed: \(error); stopping\n".utf8))
                exit(70)
            })
        persistence.writer = writer
        writer.start()
    }

    /// Takes the engine's journal into the current generation. Returns whether this input's frames must wait
    /// for that generation's commit.
    @discardableResult
    func collectJournal() -> Bool {
        guard let persistence, engine.hasJournal else { return false }
        persistence.journal.removeAll(keepingCapacity: true)
        engine.drainJournal(into: &persistence.journal)
        for entry in persistence.journal { persistence.pending.append(.journal(entry)) }
        return holdForDurability()
    }

    /// Records a store change made by the node itself (lockspaces).
    func record(_ change: NodeStore.Change) {
        guard let persistence else { return }
        persistence.pending.append(change)
        _ = holdForDurability()
    }

    /// Marks the current input's frames as waiting for the commit, unless the durability mode says not to.
    func holdForDurability() -> Bool {
        guard let persistence, persistence.store.durability != .none else { return false }
        holdingGeneration = persistence.openGeneration
        return true
    }

    /// Hands the changes of this loop turn to the store's thread.
    func submitChanges() {
        guard let persistence, !persistence.pending.isEmpty else { return }
        persistence.writer?.submit(generation: persistence.openGeneration, changes: persistence.pending)
        persistence.pending = []
        persistence.openGeneration += 1
    }

    /// A generation is in the store: the frames that waited for it go out, in order.
    func committed(upTo generation: UInt64) {
        guard let persistence else { return }
        persistence.committedGeneration = max(persistence.committedGeneration, generation)
        for connection in connections.values where !connection.held.isEmpty {
            while let first = connection.held.first, first.generation <= generation {
                var frames = first.frames
                connection.outbound.writeBuffer(&frames)
                connection.held.removeFirst()
                markDirty(connection)
            }
        }
        for connection in lingering.values {
            while let first = connection.held.first, first.generation <= generation {
                var frames = first.frames
                connection.outbound.writeBuffer(&frames)
                connection.held.removeFirst()
            }
            if connection.held.isEmpty {
                lingering[connection.owner] = nil
                close(connection)
            }
        }
        flush()
    }

    /// The last commits on a clean shutdown: the writer finishes its queue, then the rest is written here.
    func closeStore() throws {
        guard let persistence else { return }
        collectJournal()
        persistence.writer?.stop()
        persistence.writer = nil
        if !persistence.pending.isEmpty { try persistence.store.commit(persistence.pending) }
        persistence.pending = []
        try persistence.store.sync()
        try persistence.store.applyLog()
    }

    var storeReport: StatusReport.Store? {
        guard let persistence else { return nil }
        let info = persistence.store.environment.info()
        return StatusReport.Store(
            path: persistence.store.directory, durability: persistence.store.durability.rawValue,
            incarnation: persistence.store.incarnation, mapSize: info.mapSize, usedBytes: info.usedBytes,
            lastTransaction: info.lastTransaction,
            lastCommit: persistence.writer?.lastCommitDate.map { $0.timeIntervalSince1970 })
    }
}
