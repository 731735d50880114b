import DLMStore
import Foundation
import Logging

/// The thread that writes to the store, so that the node's event loop never waits for a commit or an fsync.
/// Batches submitted while a commit runs are merged into the next one (group commit); after each commit it
/// reports the highest generation now in the store, and whether the store became full or has room again
/// (`NodeStore.isFull`). A commit or sync that fails is reported once, and nothing is committed after it: what
/// waits for a commit is never acknowledged (the disk may not hold it), and dlmd stays up for everything else.
final class StoreWriter: @unchecked Sendable {
    let store: NodeStore
    let logger: Logger
    private let condition = NSCondition()
    private var queue: [(generation: UInt64, changes: [NodeStore.Change])] = []
    private var stopping = false
    private var thread: Thread?
    private let onCommitted: @Sendable (UInt64) -> Void
    private let onFull: @Sendable (Bool) -> Void
    private let onFailure: @Sendable (Error) -> Void
    /// The store is full (read after each commit, on this thread only).
    private var isFull: Bool
    /// A commit or sync failed: nothing more is written (on this thread only).
    private var hasFailed = false
    /// With `batch` durability, how often committed data is flushed to disk.
    let syncInterval: TimeInterval = 1
    private(set) var lastCommit: Date?
    /// How long each commit took (under `condition`), for `--metrics`.
    private let commitDurations = LatencyHistogram()

    init(
        store: NodeStore, logger: Logger, isFull: Bool, onCommitted: @escaping @Sendable (UInt64) -> Void,
        onFull: @escaping @Sendable (Bool) -> Void, onFailure: @escaping @Sendable (Error) -> Void
    ) {
        self.store = store
        self.logger = logger
        self.isFull = isFull
        self.onCommitted = onCommitted
        self.onFull = onFull
        self.onFailure = onFailure
    }

    func start() {
        let thread = Thread { [self] in run() }
        thread.name = "dlmd-store"
        self.thread = thread
        thread.start()
    }

    func submit(generation: UInt64, changes: [NodeStore.Change]) {
        condition.lock()
        queue.append((generation, changes))
        condition.signal()
        condition.unlock()
    }

    /// Writes what is queued, then returns; the thread ends.
    func stop() {
        condition.lock()
        stopping = true
        condition.signal()
        while thread != nil { condition.wait() }
        condition.unlock()
    }

    var commitTimes: LatencyHistogram {
        condition.lock()
        defer { condition.unlock() }
        return commitDurations.copy()
    }

    var lastCommitDate: Date? {
        condition.lock()
        defer { condition.unlock() }
        return lastCommit
    }

    /// Reports a change of the store's fullness.
    private func noteFullness() {
        do {
            let full = try store.isFull(wasFull: isFull)
            if full != isFull {
                isFull = full
                onFull(full)
            }
        } catch {
            logger.error("cannot read the store's size", metadata: ["error": "\(error)"])
        }
    }

    private func run() {
        var unsynced = false
        var lastSync = Date()
        condition.lock()
        while true {
            while queue.isEmpty && !stopping {
                if unsynced {
                    let deadline = lastSync.addingTimeInterval(syncInterval)
                    if !condition.wait(until: deadline) { break }
                } else {
                    condition.wait()
                }
            }
            let batches = queue
            queue.removeAll()
            let finished = stopping && batches.isEmpty
            condition.unlock()
            if let generation = batches.last?.generation, !hasFailed {
                do {
                    let started = DispatchTime.now().uptimeNanoseconds
                    try store.commit(batches.flatMap(\.changes))
                    let took = DispatchTime.now().uptimeNanoseconds &- started
                    condition.lock()
                    lastCommit = Date()
                    commitDurations.observe(took)
                    condition.unlock()
                    // With `sync` durability the commit is on disk (in the write-ahead log); otherwise it is in
                    // LMDB and the disk is synced within `syncInterval`.
                    if store.durability != .sync { unsynced = true }
                    onCommitted(generation)
                    noteFullness()
                } catch {
                    logger.critical("cannot write the store", metadata: ["error": "\(error)"])
                    hasFailed = true
                    onFailure(error)
                }
            }
            if unsynced && !hasFailed && (finished || Date().timeIntervalSince(lastSync) >= syncInterval) {
                do {
                    try store.sync()
                } catch {
                    // With `batch` durability, commits were acknowledged before this sync: stop acknowledging.
                    logger.critical("cannot sync the store", metadata: ["error": "\(error)"])
                    hasFailed = true
                    onFailure(error)
                }
                unsynced = false
                lastSync = Date()
            }
            condition.lock()
            if finished {
                thread = nil
                condition.broadcast()
                condition.unlock()
                return
            }
        }
    }
}
