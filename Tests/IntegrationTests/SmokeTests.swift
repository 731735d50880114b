import DLMClient
import DLMCore
import DLMTestSupport
import Testing

@Test func lockAndUnlockThroughRealDaemon() async throws {
    let daemon = try Daemon()
    defer { daemon.stop() }
    let connection = try await DLMConnection.connect(socketPath: daemon.socketPath)
    let ls = try await connection.openLockspace("demo")
    let lock = try await ls.lock("r1", mode: .ex)
    // The first token of the daemon's first incarnation (incarnations are in the high 24 bits).
    #expect(lock.mode == .ex && lock.fencingToken == (1 << 40) + 1)
    let other = try await DLMConnection.connect(socketPath: daemon.socketPath)
    let ls2 = try await other.openLockspace("demo")
    await #expect(throws: DLMError.self) { try await ls2.lock("r1", mode: .pr, flags: .noQueue) }
    try await lock.unlock()
    let second = try await ls2.lock("r1", mode: .pr)
    #expect(second.mode == .pr)
    await connection.close()
    await other.close()
}
