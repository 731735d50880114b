import Testing

@testable import DLMCore

/// TIMEOUT: a request or conversion gives up with ETIMEDOUT after its timeout, counted on the engine's clock,
/// which only `tick(now:)` moves.
@Suite struct TimeoutTests {
    @Test func newRequestTimesOut() {
        var h = Harness()
        _ = h.lock("a", by: 1, on: "r", .ex)
        #expect(h.lock("b", by: 2, on: "r", .pr, .timeout, timeout: 2 * second) == ["a bast PR"])
        #expect(h.tick(second) == [])
        #expect(h.tick(2 * second - 1) == [])
        #expect(h.tick(2 * second) == ["b ETIMEDOUT"])
        #expect(h.state("b") == nil)
        #expect(h.engine.lockCount == 1)
        // a later tick has nothing more to do
        #expect(h.tick(10 * second) == [])
    }

    @Test func timeoutCountsFromTheEnginesClockWhenTheRequestIsMade() {
        var h = Harness()
        #expect(h.tick(10 * second) == [])
        _ = h.lock("a", by: 1, on: "r", .ex)
        _ = h.lock("b", by: 2, on: "r", .ex, .timeout, timeout: second)
        #expect(h.tick(10 * second + second / 2) == [])
        #expect(h.tick(11 * second) == ["b ETIMEDOUT"])
    }

    @Test func nothingTimesOutWithoutATick() {
        var h = Harness()
        _ = h.lock("a", by: 1, on: "r", .ex)
        _ = h.lock("b", by: 2, on: "r", .ex, .timeout, timeout: 1)
        // more requests and unlocks do not move the clock
        _ = h.lock("c", by: 3, on: "s", .ex)
        _ = h.unlock("c")
        #expect(h.state("b")?.queue == .wait)
        #expect(h.engine.now == 0)
        #expect(h.tick(1) == ["b ETIMEDOUT"])
    }

    @Test func clockNeverGoesBack() {
        var h = Harness()
        _ = h.tick(5 * second)
        _ = h.tick(2 * second)
        #expect(h.engine.now == 5 * second)
        _ = h.lock("a", by: 1, on: "r", .ex)
        _ = h.lock("b", by: 2, on: "r", .ex, .timeout, timeout: second)
        #expect(h.tick(3 * second) == [])
        #expect(h.tick(6 * second) == ["b ETIMEDOUT"])
    }

    @Test func conversionTimesOutAndReturnsToItsGrantedMode() {
        var h = Harness()
        _ = h.lock("a", by: 1, on: "r", .pr)
        _ = h.lock("b", by: 2, on: "r", .pr)
        #expect(h.convert("b", to: .ex, .timeout, timeout: second) == ["a bast EX"])
        #expect(h.tick(second) == ["b ETIMEDOUT PR"])
        #expect(h.state("b")?.queue == .grant)
        #expect(h.state("b")?.grantedMode == .pr)
        #expect(h.state("b")?.requestedMode == nil)
        // it is an ordinary granted lock again
        #expect(h.convert("b", to: .cr) == ["b granted CR"])
    }

    @Test func timedOutRequestLetsTheNextWaiterThrough() {
        var h = Harness()
        _ = h.lock("a", by: 1, on: "r", .pr)
        #expect(h.lock("b", by: 2, on: "r", .ex, .timeout, timeout: second) == ["a bast EX"])
        #expect(h.lock("c", by: 3, on: "r", .pr) == [])
        #expect(h.tick(second) == ["b ETIMEDOUT", "c granted PR"])
    }

    @Test func grantedRequestDoesNotTimeOutLater() {
        var h = Harness()
        _ = h.lock("a", by: 1, on: "r", .ex)
        _ = h.lock("b", by: 2, on: "r", .ex, .timeout, timeout: second)
        #expect(h.unlock("a") == ["a EUNLOCK", "b granted EX token=2"])
        #expect(h.tick(2 * second) == [])
        #expect(h.state("b")?.grantedMode == .ex)
    }

    @Test func cancelledRequestDoesNotTimeOutLater() {
        var h = Harness()
        _ = h.lock("a", by: 1, on: "r", .ex)
        _ = h.lock("b", by: 2, on: "r", .ex, .timeout, timeout: second)
        let slot = h.id("b")
        #expect(h.cancel("b") == ["b ECANCEL"])
        // the slot is reused by a new waiter without TIMEOUT: the old timer must not touch it
        _ = h.lock("c", by: 3, on: "r", .ex)
        #expect(h.id("c") == slot)
        #expect(h.tick(2 * second) == [])
        #expect(h.state("c")?.queue == .wait)
    }

    @Test func grantedConversionDoesNotTimeOutLater() {
        var h = Harness()
        _ = h.lock("a", by: 1, on: "r", .pr)
        _ = h.lock("b", by: 2, on: "r", .pr)
        _ = h.convert("b", to: .ex, .timeout, timeout: second)
        #expect(h.unlock("a") == ["a EUNLOCK", "b granted EX token=1"])
        // a new conversion without TIMEOUT that waits is not hit by the old deadline
        _ = h.lock("c", by: 3, on: "r", .nl)
        _ = h.convert("b", to: .nl)
        _ = h.convert("c", to: .pr)
        _ = h.convert("b", to: .ex)
        #expect(h.tick(2 * second) == [])
        #expect(h.state("b")?.queue == .convert)
    }

    @Test func requestWithoutTimeoutWaitsForever() {
        var h = Harness(config: EngineConfig(deadlockWait: 0))
        _ = h.lock("a", by: 1, on: "r", .ex)
        _ = h.lock("b", by: 2, on: "r", .ex)
        #expect(h.tick(1_000_000 * second) == [])
        #expect(h.state("b")?.queue == .wait)
    }

    @Test func timeoutsExpireInDeadlineOrder() {
        var h = Harness()
        _ = h.lock("a", by: 1, on: "r", .ex)
        _ = h.lock("b", by: 2, on: "r", .ex, .timeout, timeout: 3 * second)
        _ = h.lock("c", by: 3, on: "r", .ex, .timeout, timeout: second)
        _ = h.lock("d", by: 4, on: "r", .ex, .timeout, timeout: 2 * second)
        #expect(h.tick(5 * second) == ["c ETIMEDOUT", "d ETIMEDOUT", "b ETIMEDOUT"])
    }
}
