import DLMClient
import DLMCore
import DLMTestSupport
import DLMWire
import Foundation
import NIOCore
import NIOPosix
import Testing

/// The callback API (`submitLock`, `submitConversion`, `submitUnlock`), `DLMConnection.eventLoop`,
/// `DLMConnection.taskExecutor` and `connect(eventLoopGroup:)`, against a real dlmd.
@Suite struct CallbackAPITests {
    @Test func locksConvertsAndUnlocksWithHandlersOnTheEventLoop() async throws {
        let daemon = try Daemon()
        defer { daemon.stop() }
        let connection = try await DLMConnection.connect(socketPath: daemon.socketPath)
        let ls = try await connection.openLockspace("callbacks", valueBlockLength: 8)
        let loop = connection.eventLoop

        let (granted, onLoop) = await submitted { done in
            ls.submitLock(Array("r".utf8), mode: .ex, flags: .valueBlock) { done(($0, loop.inEventLoop)) }
        }
        #expect(onLoop)
        let lock = try granted.get()
        #expect(lock.status == .granted && lock.mode == .ex && lock.fencingToken > 0)
        #expect(lock.valueBlock == [UInt8](repeating: 0, count: 8))

        let converted = try await submitted { done in
            ls.submitConversion(lock.id, to: .pr, valueBlock: Array("value".utf8), completion: done)
        }.get()
        #expect(converted.status == .granted && converted.mode == .pr && converted.id == lock.id)
        // The value written by the down-conversion from EX is there for another reader.
        let reader = try await ls.lock("r", mode: .pr, flags: .valueBlock)
        #expect(reader.valueBlock == Array("value".utf8) + [0, 0, 0])

        let (unlocked, unlockOnLoop) = await submitted { done in
            ls.submitUnlock(lock.id) { done(($0, loop.inEventLoop)) }
        }
        #expect(unlockOnLoop)
        #expect(try unlocked.get() == .unlocked)
        await connection.close()
    }

    @Test func statusesRefusalsAndQueuedRequests() async throws {
        let daemon = try Daemon()
        defer { daemon.stop() }
        let a = try await DLMConnection.connect(socketPath: daemon.socketPath)
        let b = try await DLMConnection.connect(socketPath: daemon.socketPath)
        let lsA = try await a.openLockspace("statuses")
        let lsB = try await b.openLockspace("statuses")
        let held = try await lsA.lock("r", mode: .ex)

        // A status other than granted is a success with that status, as `request` returns it.
        let refused = try await submitted {
            lsB.submitLock(Array("r".utf8), mode: .pr, flags: .noQueue, completion: $0)
        }
        .get()
        #expect(refused.status == .tryAgain && refused.mode == nil)

        // A request refused by dlmd is a failure with its status.
        let invalid = await submitted { lsB.submitLock(Array("r".utf8), mode: .pr, flags: .expedite, completion: $0) }
        #expect(invalid.failureStatus == .invalid)
        let unknown = await submitted { lsB.submitUnlock(LockID(rawValue: 999_999), completion: $0) }
        #expect(unknown.failureStatus == .noEntry)

        // A request that waits completes when the holder lets go (its COMPLETION comes untagged, after OK).
        let (stream, continuation) = AsyncStream<Result<LockResult, DLMError>>.makeStream()
        lsB.submitLock(Array("r".utf8), mode: .ex) { continuation.yield($0) }
        try await waitUntil { try await waitingCount(a, lockspace: "statuses", resource: "r") == 1 }
        try await held.unlock()
        var results = stream.makeAsyncIterator()
        let waited = try #require(await results.next()).get()
        #expect(waited.status == .granted && waited.mode == .ex)

        // A waiting request cancelled by id ends with ECANCEL; the cancel itself ends with ECANCEL too.
        lsA.submitLock(Array("r".utf8), mode: .pr) { continuation.yield($0) }
        try await waitUntil { try await waitingCount(a, lockspace: "statuses", resource: "r") == 1 }
        let waitingID = try await waitingLockID(a, lockspace: "statuses", resource: "r")
        let cancel = try await submitted { lsA.submitUnlock(waitingID, flags: .cancel, completion: $0) }.get()
        #expect(cancel == .cancelled)
        let cancelled = try #require(await results.next()).get()
        #expect(cancelled.status == .cancelled && cancelled.id == waitingID)
        await a.close()
        await b.close()
    }

    @Test func handlersChainRequestsOnTheEventLoop() async throws {
        let daemon = try Daemon()
        defer { daemon.stop() }
        let connection = try await DLMConnection.connect(socketPath: daemon.socketPath)
        let ls = try await connection.openLockspace("chain")
        // 2,000 lock+unlock pairs, each sent from the previous one's completion handler, on 50 chains at once:
        // what a handler writes must leave without a flush of its own.
        let chains = 50
        let pairs = 40
        let finished = await withTaskGroup(of: Int.self) { group in
            for chain in 0..<chains {
                group.addTask {
                    await withCheckedContinuation { continuation in
                        Chain(lockspace: ls, name: Array("c\(chain)".utf8), pairs: pairs) {
                            continuation.resume(returning: $0)
                        }
                        .start()
                    }
                }
            }
            return await group.reduce(0, +)
        }
        #expect(finished == chains * pairs)
        let status = try JSONDecoder().decode(StatusReport.self, from: Data(try await connection.query(.status)))
        #expect(status.locks == 0)
        await connection.close()
    }

    @Test func aCompletionHandlerNeverRunsBeforeItsSubmitReturns() async throws {
        let daemon = try Daemon()
        defer { daemon.stop() }
        let connection = try await DLMConnection.connect(socketPath: daemon.socketPath)
        let ls = try await connection.openLockspace("order")
        await connection.close()
        // Closed: the failure is immediate, but still delivered after the call returned.
        let (returnedFirst, result) = await withCheckedContinuation { continuation in
            connection.eventLoop.execute {
                let returned = Flag()
                ls.submitLock(Array("r".utf8), mode: .ex) { continuation.resume(returning: (returned.value, $0)) }
                returned.value = true
            }
        }
        #expect(returnedFirst)
        #expect(result.failureStatus == .shuttingDown)
    }

    @Test func tasksPreferringTheTaskExecutorRunOnTheEventLoop() async throws {
        let daemon = try Daemon()
        defer { daemon.stop() }
        let connection = try await DLMConnection.connect(socketPath: daemon.socketPath)
        let ls = try await connection.openLockspace("executor")
        let onLoop = try await withTaskExecutorPreference(connection.taskExecutor) {
            var onLoop = connection.eventLoop.inEventLoop
            for index in 0..<100 {
                let lock = try await ls.lock("r\(index % 10)", mode: .ex)
                onLoop = onLoop && connection.eventLoop.inEventLoop
                try await lock.unlock()
                onLoop = onLoop && connection.eventLoop.inEventLoop
            }
            return onLoop
        }
        #expect(onLoop)
        await connection.close()
    }

    @Test func connectionsShareTheEventLoopGroupTheyAreGiven() async throws {
        let daemon = try Daemon()
        defer { daemon.stop() }
        let group = MultiThreadedEventLoopGroup(numberOfThreads: 1)
        let a = try await DLMConnection.connect(socketPath: daemon.socketPath, eventLoopGroup: group)
        let b = try await DLMConnection.connect(socketPath: daemon.socketPath, eventLoopGroup: group)
        #expect(a.eventLoop === b.eventLoop)
        #expect(a.eventLoop === group.next())
        let lsA = try await a.openLockspace("group")
        let lsB = try await b.openLockspace("group")
        let held = try await lsA.lock("r", mode: .ex)
        async let waiter = lsB.lock("r", mode: .ex)
        try await waitUntil { try await waitingCount(a, lockspace: "group", resource: "r") == 1 }
        try await held.unlock()
        #expect(try await waiter.mode == .ex)
        await a.close()
        await b.close()
        try await group.shutdownGracefully()
    }
}

/// Waits for a callback-API completion.
func submitted<T: Sendable>(_ submit: (@escaping @Sendable (T) -> Void) -> Void) async -> T {
    await withCheckedContinuation { continuation in submit { continuation.resume(returning: $0) } }
}

extension Result where Failure == DLMError {
    var failureStatus: DLMStatus? {
        if case .failure(let error) = self { return error.status }
        return nil
    }
}

/// Touched on one event loop only.
final class Flag: @unchecked Sendable {
    var value = false
}

/// Lock, unlock, again, `pairs` times, each request sent from the previous one's completion handler.
final class Chain: @unchecked Sendable {
    let lockspace: DLMLockspace
    let name: [UInt8]
    let pairs: Int
    let done: @Sendable (Int) -> Void
    var completed = 0

    init(lockspace: DLMLockspace, name: [UInt8], pairs: Int, done: @escaping @Sendable (Int) -> Void) {
        self.lockspace = lockspace
        self.name = name
        self.pairs = pairs
        self.done = done
    }

    func start() {
        lockspace.submitLock(name, mode: .ex) { result in
            guard case .success(let lock) = result, lock.status == .granted else { return self.done(-1_000_000) }
            self.lockspace.submitUnlock(lock.id) { result in
                guard case .success(.unlocked) = result else { return self.done(-1_000_000) }
                self.completed += 1
                if self.completed == self.pairs { self.done(self.completed) } else { self.start() }
            }
        }
    }
}
