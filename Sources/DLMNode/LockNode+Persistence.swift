import DLMCluster
import DLMCore
import DLMStore
import DLMWire
import Foundation
import Logging
import NIOCore

/// The node's store and the thread that writes it (`--durability`); the service decides what waits for which
/// commit (LockService+Durability.swift).
final class NodePersistence {
    let store: NodeStore
    var writer: StoreWriter?
    /// What group services persisted at the last start (their `PersistentState`, JSON), if anything.
    var groupState: [UInt8]?
    /// The store alarm (on the event loop): the store is full, or a commit failed (why).
    var isFull = false
    var failure: String?

    /// The alarm as the status report names it.
    var alarm: String? { failure != nil ? "failed" : isFull ? "full" : nil }

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
        // the others rebuilt its resources from their holders (docs/RECOVERY.md). Its stored persistent locks are
        // offered in its first recovery, and taken only if the whole cluster restarted (LockService+PreviousLife).
        let cluster = configuration.cluster != nil
        let restored: (locks: Int, changes: [StoreChange])
        do throws(DLMError) {
            restored = try service.restore(
                lockspaces: contents.lockspaces, resources: cluster ? [] : contents.resources)
        } catch {
            throw NodeError(error.message)
        }
        if cluster && !contents.resources.isEmpty {
            let lengths = Dictionary(
                contents.lockspaces.map { ($0.name, $0.valueBlockLength) }, uniquingKeysWith: { first, _ in first })
            let kept = service.keepPreviousLife(
                recoveredView: contents.recoveredView, resources: contents.resources, lengths: lengths)
            logger.info(
                """
                persistent locks of this node's previous life are kept until its first recovery: they come back \
                if the whole cluster restarted, and are dropped if the others kept running (docs/RECOVERY.md)
                """,
                metadata: ["persistent_locks": "\(kept)", "stored_view": "\(contents.recoveredView)"])
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
        // A store restarted full (its data at --map-size) starts with its alarm on.
        let full = try store.isFull(wasFull: false)
        if full { storeFilled(true) }
        let loop = eventLoop
        let writer = StoreWriter(
            store: store, logger: logger, isFull: full,
            onCommitted: { [self] generation in loop.execute { self.handle(.committed(generation: generation)) } },
            onFull: { [self] full in loop.execute { self.storeFilled(full) } },
            onFailure: { [self] error in loop.execute { self.storeFailed(error) } })
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

    /// The store became full, or has room again (a sixteenth below its limit): new persistent locks and
    /// lockspaces are refused with ENOSPC meanwhile, and the alarm shows in the status and the log.
    func storeFilled(_ full: Bool) {
        guard let persistence, persistence.isFull != full else { return }
        persistence.isFull = full
        service.storeIsFull = full || persistence.failure != nil
        let size: Logger.Metadata = [
            "used_bytes": "\((try? persistence.store.dataBytes()) ?? -1)", "limit_bytes": "\(persistence.store.limit)",
        ]
        if full {
            logger.warning(
                """
                the store is full: new persistent locks and lockspaces are refused (ENOSPC) until unlocks make \
                room; raise --map-size (map_size) to give it more
                """, metadata: size)
        } else {
            logger.notice("the store has room again: persistent locks and lockspaces are accepted", metadata: size)
        }
    }

    /// A commit or sync of the store failed: what waits for a commit is never acknowledged (the disk may not
    /// hold it), new persistent state is refused, and everything else goes on. dlmd does not exit: its clients'
    /// locks that need no store stay served. Restart it once the disk is mended.
    func storeFailed(_ error: Error) {
        guard let persistence, persistence.failure == nil else { return }
        persistence.failure = "\(error)"
        service.storeIsFull = true
        logger.critical(
            """
            the store failed: changes to persistent locks are no longer acknowledged and new persistent locks and \
            lockspaces are refused (ENOSPC); restart dlmd once the disk is mended
            """, metadata: ["error": "\(error)"])
    }

    var storeReport: StatusReport.Store? {
        guard let persistence else { return nil }
        let info = persistence.store.environment.info()
        return StatusReport.Store(
            path: persistence.store.directory, durability: persistence.store.durability.rawValue,
            incarnation: persistence.store.incarnation, mapSize: persistence.store.limit,
            usedBytes: (try? persistence.store.dataBytes()) ?? info.usedBytes, lastTransaction: info.lastTransaction,
            lastCommit: persistence.writer?.lastCommitDate.map { $0.timeIntervalSince1970 }, alarm: persistence.alarm,
            failure: persistence.failure)
    }
}
