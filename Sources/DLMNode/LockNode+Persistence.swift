import DLMCluster
import DLMCore
import DLMStore
import DLMWire
import Foundation
import NIOCore

/// The node's store and the thread that writes it (`--durability`); the service decides what waits for which
/// commit (LockService+Durability.swift).
final class NodePersistence {
    let store: NodeStore
    var writer: StoreWriter?
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
        service = LockService(
            configuration: Self.serviceConfiguration(configuration, incarnation: store.incarnation, store: true))
        let contents = try store.load()
        // A cluster member's locks come back only through recovery, never from its own store: while it was down,
        // the others rebuilt its resources from their holders (docs/RECOVERY.md). Its stored persistent locks and
        // orphans are dropped (not yet kept as cluster state).
        let cluster = configuration.cluster != nil
        let restored: (locks: Int, changes: [StoreChange])
        do throws(DLMError) {
            restored = try service.restore(
                lockspaces: contents.lockspaces, resources: cluster ? [] : contents.resources)
        } catch {
            throw NodeError(error.message)
        }
        if cluster && !contents.resources.isEmpty {
            let dropped = contents.resources.reduce(0) { $0 + $1.resource.locks.count }
            logger.warning(
                "a cluster member does not restore the persistent locks of its previous life (docs/RECOVERY.md)",
                metadata: ["persistent_locks": "\(dropped)"])
            try store.commit(
                contents.resources.map { .journal(.delete(lockspace: $0.lockspace, path: $0.resource.path)) })
        }
        let persistence = NodePersistence(store: store)
        self.persistence = persistence
        persistence.groupState = contents.lastView
        // The restored resources are written again (their volatile holders are gone).
        try store.commit(restored.changes)
        try store.sync()
        logger.info(
            "store opened",
            metadata: [
                "path": "\(store.directory)", "incarnation": "\(store.incarnation)",
                "durability": "\(store.durability)", "lockspaces": "\(contents.lockspaces.count)",
                "persistent_locks": "\(restored.locks)",
            ])
        let loop = eventLoop
        let writer = StoreWriter(
            store: store, logger: logger,
            onCommitted: { [self] generation in loop.execute { self.handle(.committed(generation: generation)) } },
            onFailure: { error in
                // A store that cannot be written cannot keep the promises made to clients: stop, as a database
                // does when its disk fails, rather than acknowledge what would be lost.
                FileHandle.standardError.writeIgnoringErrors("dlmd: the store failed: \(error); stopping\n")
                exit(70)
            })
        persistence.writer = writer
        writer.start()
    }

    /// The last commits on a clean shutdown: the writer finishes its queue (the shutdown's own changes included),
    /// then the store is synced and its log applied.
    func closeStore() throws {
        guard let persistence else { return }
        persistence.writer?.stop()
        persistence.writer = nil
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
