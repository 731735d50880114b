import Testing

@testable import DLMCore

/// REFERENCE.md §1: the six modes, their numbers, and the 36 pairs of the compatibility table.
@Suite struct CompatibilityTests {
    /// The table of REFERENCE.md §1, row by row (NL CR CW PR PW EX), written out independently of the engine.
    static let table: [LockMode: [LockMode: Bool]] = {
        let rows: [(LockMode, [Int])] = [
            (.nl, [1, 1, 1, 1, 1, 1]),
            (.cr, [1, 1, 1, 1, 1, 0]),
            (.cw, [1, 1, 1, 0, 0, 0]),
            (.pr, [1, 1, 0, 1, 0, 0]),
            (.pw, [1, 1, 0, 0, 0, 0]),
            (.ex, [1, 0, 0, 0, 0, 0]),
        ]
        var table: [LockMode: [LockMode: Bool]] = [:]
        for (row, columns) in rows {
            for (column, value) in zip([LockMode.nl, .cr, .cw, .pr, .pw, .ex], columns) {
                table[row, default: [:]][column] = value == 1
            }
        }
        return table
    }()

    @Test func modeNumbersAreLibdlms() {
        #expect(LockMode.allCases.map(\.rawValue) == [0, 1, 2, 3, 4, 5])
        #expect(LockMode.allCases.map(\.description) == ["NL", "CR", "CW", "PR", "PW", "EX"])
        #expect(LockMode.allCases.allSatisfy { LockMode(name: $0.description.lowercased()) == $0 })
        #expect(LockMode(name: "XX") == nil)
    }

    /// Each of the 36 pairs through `LockMode.isCompatible`, both ways round (the table is symmetric).
    @Test(arguments: LockMode.allCases, LockMode.allCases)
    func isCompatibleMatchesTheTable(held: LockMode, asked: LockMode) {
        #expect(held.isCompatible(with: asked) == Self.table[held]![asked]!)
        #expect(asked.isCompatible(with: held) == Self.table[held]![asked]!)
    }

    /// Each of the 36 pairs through the engine: owner 1 holds `held` on r; owner 2 asks `asked` on r -> granted
    /// at once if compatible, otherwise queued with a blocking callback to owner 1; and owner 1's unlock then
    /// grants it.
    @Test(arguments: LockMode.allCases, LockMode.allCases)
    func engineGrantsOrQueuesTheSecondLock(held: LockMode, asked: LockMode) {
        var h = Harness()
        let heldToken = held >= .pw ? " token=1" : ""
        #expect(h.lock("a", by: 1, on: "r", held) == ["a granted \(held)\(heldToken)"])
        let askedToken = asked >= .pw ? " token=\(held >= .pw ? 2 : 1)" : ""
        if Self.table[held]![asked]! {
            #expect(h.lock("b", by: 2, on: "r", asked) == ["b granted \(asked)\(askedToken)"])
            #expect(h.state("b")?.queue == .grant)
        } else {
            #expect(h.lock("b", by: 2, on: "r", asked) == ["a bast \(asked)"])
            #expect(h.state("b")?.queue == .wait)
            #expect(h.unlock("a") == ["a EUNLOCK", "b granted \(asked)\(askedToken)"])
        }
    }

    /// Each of the 36 pairs through the engine with NOQUEUE: granted if compatible, EAGAIN (and no lock left)
    /// otherwise.
    @Test(arguments: LockMode.allCases, LockMode.allCases)
    func noQueueRequestIsGrantedOrRefused(held: LockMode, asked: LockMode) {
        var h = Harness()
        _ = h.lock("a", by: 1, on: "r", held)
        let effects = h.lock("b", by: 2, on: "r", asked, .noQueue)
        if Self.table[held]![asked]! {
            #expect(effects.count == 1 && effects[0].hasPrefix("b granted \(asked)"))
            #expect(h.engine.lockCount == 2)
        } else {
            #expect(effects == ["b EAGAIN"])
            #expect(h.engine.lockCount == 1)
        }
    }

    /// Each of the 36 pairs as a conversion: owner 1 holds `held`, owner 2 holds NL and converts to `asked`
    /// -> granted at once if compatible, otherwise queued on the convert queue.
    @Test(arguments: LockMode.allCases, LockMode.allCases)
    func conversionIsGrantedOrQueued(held: LockMode, asked: LockMode) {
        var h = Harness()
        _ = h.lock("a", by: 1, on: "r", held)
        _ = h.lock("b", by: 2, on: "r", .nl)
        let effects = h.convert("b", to: asked)
        if Self.table[held]![asked]! {
            #expect(effects.count == 1 && effects[0].hasPrefix("b granted \(asked)"))
            #expect(h.state("b")?.queue == .grant)
        } else {
            #expect(effects == ["a bast \(asked)"])
            #expect(h.state("b")?.queue == .convert)
            #expect(h.state("b")?.grantedMode == .nl)
        }
    }
}
