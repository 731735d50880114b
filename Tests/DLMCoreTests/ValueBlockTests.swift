import Testing

@testable import DLMCore

/// REFERENCE.md §4: when the lock value block is read and written, its sequence number, the invalid mark, and
/// its life with the resource. Values are shown as text (`lvb=<v1>`; `lvb=<>` is all zeros).
@Suite struct ValueBlockTests {
    func valueBlockOf(_ h: Harness, _ name: String = "r") -> (value: [UInt8]?, sequence: UInt64, invalid: Bool)? {
        h.engine.snapshotResource(h.ls, path: [bytes(name)]).map {
            ($0.valueBlock, $0.valueBlockSequence, $0.valueBlockInvalid)
        }
    }

    /// The value's first byte as text and its sequence number, and "invalid" when marked so.
    func written(_ h: Harness) -> String? {
        valueBlockOf(h).map { state in
            let first = state.value?.first.map { String(UnicodeScalar($0)) } ?? "none"
            return "\(first) seq=\(state.sequence)" + (state.invalid ? " invalid" : "")
        }
    }

    // MARK: Reads

    @Test func newGrantWithValueBlockReadsIt() {
        var h = Harness()
        #expect(h.lock("a", by: 1, on: "r", .pr, .valueBlock) == ["a granted PR lvb=<>"])
        // without VALBLK nothing is read
        #expect(h.lock("b", by: 2, on: "r", .pr) == ["b granted PR"])
    }

    @Test func queuedRequestReadsTheValueBlockWhenGranted() {
        var h = Harness()
        _ = h.lock("a", by: 1, on: "r", .ex)
        #expect(h.lock("b", by: 2, on: "r", .pr, .valueBlock) == ["a bast PR"])
        #expect(h.unlock("a", .valueBlock, value: bytes("v1")) == ["a EUNLOCK seq=1", "b granted PR lvb=<v1> seq=1"])
    }

    // MARK: Writes on unlock

    @Test func unlockFromEXWithValueBlockWrites() {
        var h = Harness()
        _ = h.lock("n", by: 9, on: "r", .nl)
        #expect(h.lock("a", by: 1, on: "r", .ex, .valueBlock) == ["a granted EX lvb=<> token=1"])
        #expect(h.unlock("a", .valueBlock, value: bytes("v1")) == ["a EUNLOCK seq=1"])
        #expect(h.lock("b", by: 2, on: "r", .pr, .valueBlock) == ["b granted PR lvb=<v1> seq=1"])
    }

    /// Unlock with VALBLK and a value from each mode: written from PW and EX only.
    @Test(arguments: LockMode.allCases)
    func unlockWritesFromPWAndEXOnly(mode: LockMode) {
        var h = Harness()
        _ = h.lock("n", by: 9, on: "r", .nl)
        _ = h.lock("a", by: 1, on: "r", mode)
        if mode >= .pw {
            #expect(h.unlock("a", .valueBlock, value: bytes("v1")) == ["a EUNLOCK seq=1"])
            #expect(h.lock("b", by: 2, on: "r", .nl, .valueBlock) == ["b granted NL lvb=<v1> seq=1"])
        } else {
            #expect(h.unlock("a", .valueBlock, value: bytes("v1")) == ["a EUNLOCK"])
            #expect(h.lock("b", by: 2, on: "r", .nl, .valueBlock) == ["b granted NL lvb=<>"])
        }
    }

    @Test func unlockFromEXWithoutValueBlockWritesNothing() {
        var h = Harness()
        _ = h.lock("n", by: 9, on: "r", .nl)
        _ = h.lock("a", by: 1, on: "r", .ex)
        #expect(h.unlock("a", value: bytes("v1")) == ["a EUNLOCK"])
        #expect(valueBlockOf(h)?.sequence == 0)
    }

    @Test func writeWithoutAValueIsEINVAL() {
        var h = Harness()
        _ = h.lock("a", by: 1, on: "r", .ex)
        #expect(h.unlock("a", .valueBlock) == ["error EINVAL"])
        #expect(h.convert("a", to: .nl, .valueBlock) == ["error EINVAL"])
        #expect(h.state("a")?.grantedMode == .ex)
    }

    // MARK: Conversions

    /// Converting from PW or EX with VALBLK writes, whatever the target, except PW -> EX, which reads.
    @Test(arguments: [LockMode.pw, .ex], LockMode.allCases)
    func conversionFromPWOrEXWrites(from: LockMode, to: LockMode) {
        var h = Harness()
        #expect(h.lock("a", by: 1, on: "r", from, .valueBlock) == ["a granted \(from) lvb=<> token=1"])
        let token = to >= .pw ? " token=2" : ""
        if from == .pw && to == .ex {
            #expect(h.convert("a", to: to, .valueBlock, value: bytes("w")) == ["a granted EX lvb=<> token=2"])
            #expect(valueBlockOf(h)! == (nil, 0, false))
        } else {
            #expect(h.convert("a", to: to, .valueBlock, value: bytes("w")) == ["a granted \(to) seq=1\(token)"])
            #expect(valueBlockOf(h)! == (valueBlock("w"), 1, false))
        }
    }

    /// Converting from a mode below PW with VALBLK reads when converting to an equal or higher mode, except
    /// PR <-> CW, and otherwise does nothing; a given value is never written.
    @Test(arguments: [LockMode.nl, .cr, .cw, .pr], LockMode.allCases)
    func conversionFromBelowPWReadsUpwardOnly(from: LockMode, to: LockMode) {
        var h = Harness()
        _ = h.lock("a", by: 1, on: "r", .ex)
        #expect(h.convert("a", to: .nl, .valueBlock, value: bytes("v")) == ["a granted NL seq=1"])
        _ = h.convert("a", to: from)
        let reads = to >= from && !(from == .pr && to == .cw) && !(from == .cw && to == .pr)
        let token = to >= .pw ? " token=2" : ""
        let effects = h.convert("a", to: to, .valueBlock, value: bytes("x"))
        if reads {
            #expect(effects == ["a granted \(to) lvb=<v> seq=1\(token)"])
        } else {
            #expect(effects == ["a granted \(to) seq=1\(token)"])
        }
        #expect(valueBlockOf(h)! == (valueBlock("v"), 1, false))
    }

    @Test func prToCWAndBackDoesNothing() {
        var h = Harness()
        _ = h.lock("a", by: 1, on: "r", .ex)
        _ = h.convert("a", to: .pr, .valueBlock, value: bytes("v"))
        #expect(h.convert("a", to: .cw, .valueBlock, value: bytes("x")) == ["a granted CW seq=1"])
        #expect(h.convert("a", to: .pr, .valueBlock, value: bytes("y")) == ["a granted PR seq=1"])
        #expect(valueBlockOf(h)! == (valueBlock("v"), 1, false))
    }

    @Test func pwToEXIsARead() {
        var h = Harness()
        _ = h.lock("a", by: 1, on: "r", .ex)
        _ = h.convert("a", to: .pw, .valueBlock, value: bytes("v"))
        #expect(h.convert("a", to: .ex, .valueBlock, value: bytes("x")) == ["a granted EX lvb=<v> seq=1 token=3"])
        #expect(valueBlockOf(h)! == (valueBlock("v"), 1, false))
    }

    @Test func conversionWithoutValueBlockNeitherReadsNorWrites() {
        var h = Harness()
        _ = h.lock("a", by: 1, on: "r", .ex)
        #expect(h.convert("a", to: .nl, value: bytes("v")) == ["a granted NL"])
        #expect(h.convert("a", to: .pr) == ["a granted PR"])
        #expect(valueBlockOf(h)! == (nil, 0, false))
    }

    // MARK: Sequence numbers

    @Test func eachWriteBumpsTheSequenceNumber() {
        var h = Harness()
        _ = h.lock("n", by: 9, on: "r", .nl)
        #expect(h.lock("a", by: 1, on: "r", .ex, .valueBlock) == ["a granted EX lvb=<> token=1"])
        #expect(h.convert("a", to: .ex, .valueBlock, value: bytes("1")) == ["a granted EX seq=1 token=2"])
        #expect(h.convert("a", to: .ex, .valueBlock, value: bytes("2")) == ["a granted EX seq=2 token=3"])
        #expect(h.convert("a", to: .pw, .valueBlock, value: bytes("3")) == ["a granted PW seq=3 token=4"])
        #expect(h.convert("a", to: .ex, .valueBlock) == ["a granted EX lvb=<3> seq=3 token=5"])
        #expect(h.unlock("a", .valueBlock, value: bytes("4")) == ["a EUNLOCK seq=4"])
        #expect(h.lock("b", by: 2, on: "r", .cr, .valueBlock) == ["b granted CR lvb=<4> seq=4"])
    }

    /// A conversion or unlock that carries the value-block sequence of its lock's last grant (as a holder node sends
    /// it to a remote master) writes, or invalidates, only if the sequence is not above it: one sent again to a new
    /// master after the old one had done it and died writes nothing over the writes made since (random recovery seed
    /// 528210), and does the rest of what it asks.
    @Test func anOperationOlderThanTheLastWriteWritesNothing() {
        var h = Harness()
        _ = h.lock("n", by: 9, on: "r", .nl)
        #expect(h.lock("a", by: 1, on: "r", .ex, .valueBlock) == ["a granted EX lvb=<> token=1"])
        // At the sequence of its grant: written.
        #expect(h.convert("a", to: .pw, .valueBlock, value: bytes("1"), base: 0) == ["a granted PW seq=1 token=2"])
        // Sent again, as of its grant before that write: converted, not written; nor invalidated.
        #expect(h.convert("a", to: .pw, .valueBlock, value: bytes("0"), base: 0) == ["a granted PW seq=1 token=3"])
        #expect(
            h.convert("a", to: .cr, [.valueBlock, .invalidateValueBlock], value: bytes("0"), base: 0)
                == ["a granted CR seq=1"])
        #expect(written(h) == "1 seq=1")
        #expect(h.convert("a", to: .ex, .valueBlock, base: 1) == ["a granted EX lvb=<1> seq=1 token=4"])
        #expect(h.unlock("a", .valueBlock, value: bytes("0"), base: 0) == ["a EUNLOCK seq=1"])
        #expect(written(h) == "1 seq=1")
        // At the sequence of its grant, or above it (a new master that lost the last write): written.
        #expect(h.lock("b", by: 2, on: "r", .pw, .valueBlock) == ["b granted PW lvb=<1> seq=1 token=5"])
        #expect(h.unlock("b", .valueBlock, value: bytes("2"), base: 3) == ["b EUNLOCK seq=2"])
        #expect(written(h) == "2 seq=2")
    }

    // MARK: Invalidation

    /// IVVALBLK where the value block would be written marks it invalid; every grant then reports VALNOTVALID
    /// (with or without VALBLK, new or converted, at once or later) until the next write.
    @Test func invalidateValueBlockMarksItInvalidUntilTheNextWrite() {
        var h = Harness()
        _ = h.lock("n", by: 9, on: "r", .nl)
        _ = h.lock("a", by: 1, on: "r", .ex, .valueBlock)
        #expect(h.convert("a", to: .ex, .valueBlock, value: bytes("v")) == ["a granted EX seq=1 token=2"])
        #expect(h.unlock("a", [.valueBlock, .invalidateValueBlock]) == ["a EUNLOCK seq=1"])
        #expect(valueBlockOf(h)! == (valueBlock("v"), 1, true))
        #expect(h.lock("b", by: 2, on: "r", .pr, .valueBlock) == ["b granted PR VALNOTVALID lvb=<v> seq=1"])
        #expect(h.lock("c", by: 3, on: "r", .cr) == ["c granted CR VALNOTVALID seq=1"])
        #expect(h.convert("c", to: .nl) == ["c granted NL VALNOTVALID seq=1"])
        #expect(h.lock("d", by: 4, on: "r", .ex, .valueBlock) == ["b bast EX"])
        #expect(h.unlock("b") == ["b EUNLOCK seq=1", "d granted EX VALNOTVALID lvb=<v> seq=1 token=3"])
        // a write clears the mark
        #expect(h.convert("d", to: .nl, .valueBlock, value: bytes("w")) == ["d granted NL seq=2"])
        #expect(h.lock("e", by: 5, on: "r", .pr, .valueBlock) == ["e granted PR lvb=<w> seq=2"])
        #expect(valueBlockOf(h)! == (valueBlock("w"), 2, false))
    }

    @Test func invalidateValueBlockOnAConversionFromEX() {
        var h = Harness()
        _ = h.lock("a", by: 1, on: "r", .ex, .valueBlock)
        #expect(h.convert("a", to: .nl, [.valueBlock, .invalidateValueBlock]) == ["a granted NL VALNOTVALID"])
        #expect(valueBlockOf(h)!.invalid)
    }

    /// IVVALBLK invalidates wherever the value block would be written (a conversion or unlock from PW or EX),
    /// with or without VALBLK.
    @Test func invalidateValueBlockWithoutValueBlock() {
        var h = Harness()
        _ = h.lock("n", by: 9, on: "r", .nl)
        _ = h.lock("a", by: 1, on: "r", .ex)
        #expect(h.convert("a", to: .nl, .invalidateValueBlock) == ["a granted NL VALNOTVALID"])
        #expect(valueBlockOf(h)!.invalid)
        var g = Harness()
        _ = g.lock("n", by: 9, on: "r", .nl)
        _ = g.lock("a", by: 1, on: "r", .pw)
        #expect(g.unlock("a", .invalidateValueBlock) == ["a EUNLOCK"])
        #expect(valueBlockOf(g)!.invalid)
    }

    @Test func invalidateValueBlockWhereNothingIsWrittenDoesNothing() {
        var h = Harness()
        _ = h.lock("n", by: 9, on: "r", .nl)
        _ = h.lock("a", by: 1, on: "r", .pr)
        #expect(h.convert("a", to: .cr, [.valueBlock, .invalidateValueBlock]) == ["a granted CR"])
        #expect(h.convert("a", to: .pr, [.valueBlock, .invalidateValueBlock]) == ["a granted PR lvb=<>"])
        #expect(h.unlock("a", [.valueBlock, .invalidateValueBlock]) == ["a EUNLOCK"])
        #expect(valueBlockOf(h)! == (nil, 0, false))
    }

    @Test func ownerExitOfAnEXHolderInvalidates() {
        var h = Harness()
        _ = h.lock("n", by: 9, on: "r", .nl)
        _ = h.lock("a", by: 1, on: "r", .ex)
        #expect(h.exit(1) == [])
        #expect(h.lock("b", by: 2, on: "r", .pr, .valueBlock) == ["b granted PR VALNOTVALID lvb=<>"])
    }

    @Test func ownerExitOfAPWHolderWaitingForEXInvalidates() {
        var h = Harness()
        _ = h.lock("n", by: 9, on: "r", .cr)
        _ = h.lock("a", by: 1, on: "r", .pw)
        #expect(h.convert("a", to: .ex) == ["n bast EX"])
        #expect(h.exit(1) == [])
        #expect(valueBlockOf(h)!.invalid)
    }

    @Test func ownerExitOfALowerModeHolderDoesNotInvalidate() {
        var h = Harness()
        _ = h.lock("n", by: 9, on: "r", .nl)
        _ = h.lock("a", by: 1, on: "r", .pr)
        _ = h.lock("w", by: 1, on: "r", .ex)
        #expect(h.exit(1) == [])
        #expect(h.lock("b", by: 2, on: "r", .pr, .valueBlock) == ["b granted PR lvb=<>"])
    }

    // MARK: Life with the resource

    @Test func freedResourceLosesItsValueBlock() {
        var h = Harness()
        _ = h.lock("a", by: 1, on: "r", .ex)
        #expect(h.unlock("a", .valueBlock, value: bytes("v1")) == ["a EUNLOCK seq=1"])
        #expect(h.engine.resourceCount == 0)
        #expect(h.lock("b", by: 2, on: "r", .pr, .valueBlock) == ["b granted PR lvb=<>"])
        #expect(valueBlockOf(h)! == (nil, 0, false))
    }

    @Test func freedResourceLosesItsInvalidMark() {
        var h = Harness()
        _ = h.lock("a", by: 1, on: "r", .ex)
        #expect(h.unlock("a", .invalidateValueBlock) == ["a EUNLOCK"])
        #expect(h.lock("b", by: 2, on: "r", .pr, .valueBlock) == ["b granted PR lvb=<>"])
    }

    @Test func nlLockKeepsTheValueBlockAlive() {
        var h = Harness()
        _ = h.lock("n", by: 9, on: "r", .nl)
        _ = h.lock("a", by: 1, on: "r", .ex)
        _ = h.unlock("a", .valueBlock, value: bytes("kept"))
        #expect(h.lock("b", by: 2, on: "r", .pr, .valueBlock) == ["b granted PR lvb=<kept> seq=1"])
    }

    // MARK: Length

    @Test(arguments: [8, 16, 32, 64])
    func valueBlockHasTheLockspacesLength(length: Int) {
        var h = Harness(valueBlockLength: length)
        _ = h.lock("n", by: 9, on: "r", .nl)
        _ = h.lock("a", by: 1, on: "r", .ex)
        // a longer value is refused, a shorter one padded with zeros
        #expect(h.unlock("a", .valueBlock, value: [UInt8](repeating: 1, count: length + 1)) == ["error EINVAL"])
        #expect(h.unlock("a", .valueBlock, value: bytes("ab")) == ["a EUNLOCK seq=1"])
        // the harness flags a length other than the lockspace's with " len=N"
        #expect(h.lock("b", by: 2, on: "r", .pr, .valueBlock) == ["b granted PR lvb=<ab> seq=1"])
        #expect(valueBlockOf(h)?.value == valueBlock("ab", length: length))
    }
}
