import DLMTestSupport
import GroupNode
import GroupServices
import Testing

/// Random group messages, with numbers of every size (varints of 1 to 10 bytes) and odd strings.
struct MessageGenerator {
    var rng: SplitMix64

    mutating func number() -> UInt64 {
        switch Int.random(in: 0..<4, using: &rng) {
        case 0: UInt64.random(in: 0...127, using: &rng)
        case 1: UInt64.random(in: 0...UInt64(UInt32.max), using: &rng)
        case 2: UInt64.max - UInt64.random(in: 0...3, using: &rng)
        default: rng.next()
        }
    }
    mutating func node() -> NodeID {
        Bool.random(using: &rng)
            ? NodeID(UInt32.random(in: 1...9, using: &rng)) : NodeID(UInt32(truncatingIfNeeded: rng.next()))
    }
    mutating func bool() -> Bool { Bool.random(using: &rng) }
    mutating func string() -> String {
        let alphabet = ["a", "lock", "é", "🔒", " ", "\u{0}", "grp-1", "\n"]
        return (0..<Int.random(in: 0...4, using: &rng)).map { _ in alphabet.randomElement(using: &rng)! }.joined()
    }
    mutating func viewID() -> ViewID { ViewID(number: number(), coordinator: node()) }
    mutating func optionalViewID() -> ViewID? { bool() ? viewID() : nil }
    mutating func member() -> Member { Member(node: node(), incarnation: number()) }
    mutating func members() -> [Member] { (0..<Int.random(in: 0...5, using: &rng)).map { _ in member() } }
    mutating func list<T>(_ make: (inout MessageGenerator) -> T) -> [T] {
        (0..<Int.random(in: 0...4, using: &rng)).map { _ in make(&self) }
    }
    mutating func body() -> Body {
        switch Int.random(in: 0..<4, using: &rng) {
        case 0:
            .data(
                group: bool() ? string() : nil,
                payload: (0..<Int.random(in: 0...40, using: &rng)).map { _ in UInt8.random(in: 0...255, using: &rng) })
        case 1: .barrier(string())
        case 2: .join(string())
        default: .leave(string())
        }
    }
    mutating func ordered() -> OrderedMessage {
        OrderedMessage(seq: number(), sender: member(), localSeq: number(), body: body())
    }
    mutating func groups() -> [String: [Member]] {
        var groups: [String: [Member]] = [:]
        for _ in 0..<Int.random(in: 0...3, using: &rng) { groups[string()] = members() }
        return groups
    }
    mutating func message() -> GroupMessage {
        switch Int.random(in: 0..<9, using: &rng) {
        case 0:
            .heartbeat(
                Heartbeat(
                    view: optionalViewID(), promised: optionalViewID(), highestViewNumber: number(), sequenced: number()
                ))
        case 1: .submit(view: viewID(), list { Submission(localSeq: $0.number(), body: $0.body()) })
        case 2: .ordered(view: viewID(), list { $0.ordered() })
        case 3: .nak(view: viewID(), list { $0.number() })
        case 4: .propose(id: viewID(), members: members())
        case 5: .reject(id: viewID(), highestViewNumber: number())
        case 6:
            .report(
                FlushReport(
                    proposal: viewID(), from: optionalViewID(), delivered: number(), groups: groups(),
                    messages: list { $0.ordered() }, fenceCandidates: list { $0.node() }, wasQuorate: bool(),
                    lastPrimary: members(), fenced: members()))
        case 7:
            .install(
                Installation(
                    view: View(id: viewID(), members: members()), primary: bool(),
                    tails: list { Tail(view: $0.viewID(), messages: $0.list { $0.ordered() }) }, groups: groups(),
                    fenced: members()))
        default: .installed(viewID())
        }
    }
}

@Suite struct CodecTests {
    @Test func everyMessageRoundTrips() throws {
        var generator = MessageGenerator(rng: SplitMix64(seed: 42))
        var tags = Set<UInt8>()
        for _ in 0..<20_000 {
            let message = generator.message()
            let bytes = PeerCodec.encode(message)
            tags.insert(bytes[0])
            #expect(try PeerCodec.decode(bytes) == message)
        }
        #expect(tags == Set(1...9))
    }

    @Test func aKnownEncoding() throws {
        // Golden bytes: a heartbeat of view 2@1, no proposal, highest view 2, sequenced 300 (varint ac 02).
        let message = GroupMessage.heartbeat(
            Heartbeat(view: ViewID(number: 2, coordinator: 1), promised: nil, highestViewNumber: 2, sequenced: 300))
        #expect(PeerCodec.encode(message) == [1, 1, 2, 1, 0, 2, 0xac, 0x02])
        #expect(try PeerCodec.decode([1, 1, 2, 1, 0, 2, 0xac, 0x02]) == message)
    }

    @Test func malformedInputsThrow() {
        let cases: [[UInt8]] = [
            [], [0], [10], [1], [1, 2], [1, 0, 0, 0, 0, 0],  // unknown tags, a bad boolean, a trailing byte
            [9, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x7f, 1],  // a varint past 64 bits
            [9, 1, 0xff, 0xff, 0xff, 0xff, 0x1f],  // a coordinator past UInt32
            [4, 1, 1, 0xff, 0xff, 0xff, 0xff, 0x0f],  // a count beyond the bytes left
            [8, 1, 1, 0, 0, 0],  // a truncated install
            [2, 1, 1, 1, 1, 1, 1, 0xff],  // a string that is not UTF-8 (barrier name)
            [2, 1, 1, 1, 1, 9, 1],  // an unknown body tag
        ]
        for bytes in cases {
            #expect(throws: PeerDecodingError.self, "\(bytes)") { try PeerCodec.decode(bytes) }
        }
    }

    /// Random byte flips, insertions and truncations of valid messages: decoding never traps; it throws or yields a
    /// message (a flip may give another valid one), which then encodes back to the same bytes.
    @Test func mutationsNeverTrap() {
        var generator = MessageGenerator(rng: SplitMix64(seed: 7))
        var rng = SplitMix64(seed: 8)
        var thrown = 0
        var decoded = 0
        for _ in 0..<20_000 {
            var bytes = PeerCodec.encode(generator.message())
            switch Int.random(in: 0..<4, using: &rng) {
            case 0:
                bytes.removeLast(Int.random(in: 1...bytes.count, using: &rng))
            case 1:
                bytes.insert(UInt8.random(in: 0...255, using: &rng), at: Int.random(in: 0...bytes.count, using: &rng))
            default:
                for _ in 0..<Int.random(in: 1...3, using: &rng) {
                    bytes[Int.random(in: 0..<bytes.count, using: &rng)] ^= UInt8.random(in: 1...255, using: &rng)
                }
            }
            do {
                let message = try PeerCodec.decode(bytes)
                decoded += 1
                #expect(try PeerCodec.decode(PeerCodec.encode(message)) == message)
            } catch is PeerDecodingError {
                thrown += 1
            } catch {
                Issue.record("unexpected \(error)")
            }
        }
        #expect(thrown > 10_000)
        #expect(decoded > 0)
    }
}

@Suite struct EnvelopeTests {
    let key = ClusterKey.generate()
    func codec(_ node: NodeID, key: ClusterKey? = nil, cluster: String = "demo", known: Set<NodeID> = [1, 2, 3])
        -> PeerFrameCodec
    {
        PeerFrameCodec(key: key ?? self.key, clusterName: cluster, localNode: node, knownNodes: known)
    }
    let message = GroupMessage.installed(ViewID(number: 7, coordinator: 1))
    /// The challenge of the connection the frames travel on.
    let challenge = PeerFrameCodec.makeChallenge()

    @Test func aSealedFrameOpens() throws {
        var generator = MessageGenerator(rng: SplitMix64(seed: 3))
        for _ in 0..<500 {
            let envelope = PeerEnvelope(
                sender: Member(node: 1, incarnation: 5), counter: generator.number(), destination: 2,
                message: generator.message())
            let frame = codec(1).seal(envelope, challenge: challenge)
            #expect(try codec(2).open(frame: frame, challenge: challenge) == envelope)
        }
    }

    func rejection(_ frame: [UInt8], by receiver: PeerFrameCodec, challenge: [UInt8]? = nil) -> PeerFrameError? {
        do throws(PeerFrameError) {
            _ = try receiver.open(frame: frame, challenge: challenge ?? self.challenge)
            return nil
        } catch {
            return error
        }
    }

    @Test func framesAreRejectedForEachReason() {
        let envelope = PeerEnvelope(
            sender: Member(node: 1, incarnation: 1), counter: 1, destination: 2, message: message)
        #expect(rejection(codec(1, key: .generate()).seal(envelope, challenge: challenge), by: codec(2)) == .badMAC)
        #expect(
            rejection(codec(1, cluster: "other").seal(envelope, challenge: challenge), by: codec(2)) == .wrongCluster)
        #expect(rejection(codec(1).seal(envelope, challenge: challenge), by: codec(3)) == .wrongDestination(2))
        let stranger = PeerEnvelope(
            sender: Member(node: 9, incarnation: 1), counter: 1, destination: 2, message: message)
        #expect(
            rejection(codec(9, known: [1, 2, 3, 9]).seal(stranger, challenge: challenge), by: codec(2))
                == .unknownSender(9))
        var frame = codec(1).seal(envelope, challenge: challenge)
        frame[4] ^= 1
        #expect(rejection(frame, by: codec(2)) == .badMagic)
        frame = codec(1).seal(envelope, challenge: challenge)
        frame[8] = 2  // the version before challenges
        #expect(rejection(frame, by: codec(2)) == .badVersion(2))
        frame[8] = 3  // the version before lock traffic (no body kind)
        #expect(rejection(frame, by: codec(2)) == .badVersion(3))
        frame[8] = 4  // the version before opening frames
        #expect(rejection(frame, by: codec(2)) == .badVersion(4))
        frame[8] = 5  // the version before users in lock traffic (Protocol/PEER.md version 1)
        #expect(rejection(frame, by: codec(2)) == .badVersion(5))
        frame[8] = 6  // the version before a whole cluster's restart (Protocol/PEER.md version 2)
        #expect(rejection(frame, by: codec(2)) == .badVersion(6))
        frame[8] = 7  // the version before persistent sub-locks in value replicas (Protocol/PEER.md version 3)
        #expect(rejection(frame, by: codec(2)) == .badVersion(7))
        frame[8] = 8  // the version before lockspace groups (Protocol/PEER.md version 4)
        #expect(rejection(frame, by: codec(2)) == .badVersion(8))
        frame[8] = 9  // the version before token floors in phase 0 (Protocol/PEER.md version 5)
        #expect(rejection(frame, by: codec(2)) == .badVersion(9))
        frame[8] = 10  // the version before outdated value replicas in recovery (Protocol/PEER.md version 6)
        #expect(rejection(frame, by: codec(2)) == .badVersion(10))
        frame[8] = 11  // the version before value replicas' origins (Protocol/PEER.md version 7)
        #expect(rejection(frame, by: codec(2)) == .badVersion(11))
        frame[8] = 12  // the version before the sender's view in value replicas (Protocol/PEER.md version 8)
        #expect(rejection(frame, by: codec(2)) == .badVersion(12))
        frame[8] = 13  // the version before value-block bases in conversions and unlocks (Protocol/PEER.md version 9)
        #expect(rejection(frame, by: codec(2)) == .badVersion(13))
        frame[8] = 14  // the version before grants in recovery's bindings (Protocol/PEER.md version 10)
        #expect(rejection(frame, by: codec(2)) == .badVersion(14))
        frame[8] = 16
        #expect(rejection(frame, by: codec(2)) == .badVersion(16))
        frame = codec(1).seal(envelope, challenge: challenge)
        frame[frame.count - 40] ^= 0x10  // inside the body: the HMAC no longer matches
        #expect(rejection(frame, by: codec(2)) == .badMAC)
        #expect(rejection(Array(codec(1).seal(envelope, challenge: challenge).prefix(20)), by: codec(2)) != nil)
    }

    @Test func aBadBodyWithAGoodMACIsMalformed() {
        // A body that is not a message, sealed with the right key: authenticated, then refused as malformed.
        let receiver = codec(2)
        var frame = codec(1).seal(
            PeerEnvelope(sender: Member(node: 1, incarnation: 1), counter: 1, destination: 2, message: message),
            challenge: challenge)
        frame.removeLast(32)
        frame[42] = 0x63  // the message tag (after the body's kind)
        let length = UInt32(frame.count - 4 + 32)
        frame.replaceSubrange(0..<4, with: withUnsafeBytes(of: length.bigEndian, Array.init))
        frame += receiver.mac(challenge, frame[4...])
        guard case .malformed = rejection(frame, by: receiver) else {
            Issue.record("expected malformed, got \(String(describing: rejection(frame, by: receiver)))")
            return
        }
    }

    @Test func aKnownFrame() throws {
        // Golden bytes of a version-15 frame: node 1 incarnation 2, counter 3, to node 2, `installed(7@1)`, on a
        // connection whose challenge is 00 01 ... 0f.
        let key = try ClusterKey(bytes: Array(repeating: 0x42, count: 32))
        let challenge = Array(0..<16 as Range<UInt8>)
        let sender = PeerFrameCodec(key: key, clusterName: "demo", localNode: 1, knownNodes: [1, 2])
        let envelope = PeerEnvelope(
            sender: Member(node: 1, incarnation: 2), counter: 3, destination: 2, message: message)
        let frame = sender.seal(envelope, challenge: challenge)
        // Computed independently (Python's hashlib and hmac: HMAC over the challenge, then magic ... body).
        let expected = hex(
            "00000049" + "444c4d47" + "0f" + "2a97516c354b6884"  // length, magic, version, cluster
                + "00000001" + "0000000000000002"  // sender: node, incarnation
                + "0000000000000003" + "00000002" + "01" + "090701"  // counter, destination, body: kind, message
                + "bb156d4c3bf246f2f9d0ba6ff287ae2a3d2f25498e57656981d4d683dca5cee4")  // HMAC
        #expect(frame == expected)
        let receiver = PeerFrameCodec(key: key, clusterName: "demo", localNode: 2, knownNodes: [1, 2])
        #expect(try receiver.open(frame: frame, challenge: challenge) == envelope)
        // The challenge frame the receiver sent first.
        #expect(
            receiver.challengeFrame(challenge)
                == hex("0000001d" + "444c4d43" + "0f" + "2a97516c354b6884" + "000102030405060708090a0b0c0d0e0f"))
    }

    @Test func theDigestsAgreeWithRFC4231AndFIPS180() {
        // RFC 4231 test cases 2 (a key shorter than the block) and 6 (a key longer than the block, hashed first;
        // cluster keys may have up to 4096 bytes), the data split anywhere between the MAC's two parts.
        let jefe = HMACSHA256(key: Array("Jefe".utf8))
        let question = Array("what do ya want for nothing?".utf8)
        for split in [0, 5, question.count] {
            #expect(
                jefe.mac(question[..<split], question[split...])
                    == hex("5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"))
        }
        let long = HMACSHA256(key: Array(repeating: 0xaa, count: 131))
        #expect(
            long.mac([], Array("Test Using Larger Than Block-Size Key - Hash Key First".utf8))
                == hex("60e431591ee0b67f0d8a26aacbf5b77f8e0bc6213728c5140546040f0ee37f54"))
        // FIPS 180-2's "abc".
        #expect(
            HMACSHA256.sha256(Array("abc".utf8))
                == hex("ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"))
        #expect(HMACSHA256.equal([1, 2, 3], [1, 2, 3]))
        #expect(!HMACSHA256.equal([1, 2, 3], [1, 2, 4]))
        #expect(!HMACSHA256.equal([1, 2, 3], [1, 2]))
    }

    @Test func aFrameOpensOnlyWithItsConnectionsChallenge() throws {
        let envelope = PeerEnvelope(
            sender: Member(node: 1, incarnation: 1), counter: 1, destination: 2, message: message)
        let frame = codec(1).seal(envelope, challenge: challenge)
        #expect(try codec(2).open(frame: frame, challenge: challenge) == envelope)
        // The same frame on another connection (a recording replayed elsewhere, or after the receiver restarted).
        #expect(rejection(frame, by: codec(2), challenge: PeerFrameCodec.makeChallenge()) == .badMAC)
        // A challenge frame opens to its challenge; another cluster's or a damaged one is refused.
        func openChallenge(_ bytes: [UInt8], by codec: PeerFrameCodec) -> Result<[UInt8], PeerFrameError> {
            bytes.withUnsafeBytes { raw in
                do throws(PeerFrameError) {
                    return .success(try codec.openChallenge(UnsafeRawBufferPointer(rebasing: raw[4...])))
                } catch {
                    return .failure(error)
                }
            }
        }
        #expect(try openChallenge(codec(2).challengeFrame(challenge), by: codec(1)).get() == challenge)
        #expect(
            openChallenge(codec(2, cluster: "other").challengeFrame(challenge), by: codec(1)) == .failure(.wrongCluster)
        )
        var damaged = codec(2).challengeFrame(challenge)
        damaged[5] ^= 1
        #expect(openChallenge(damaged, by: codec(1)) == .failure(.badMagic))
        #expect(PeerFrameCodec.makeChallenge() != PeerFrameCodec.makeChallenge())
    }

    func hex(_ string: String) -> [UInt8] {
        let digits = Array(string.utf8)
        return stride(from: 0, to: digits.count, by: 2).map {
            UInt8(String(decoding: digits[$0..<$0 + 2], as: UTF8.self), radix: 16)!
        }
    }

    func admit(_ frame: [UInt8], _ guard: inout PeerReplayGuard) -> PeerFrameError? {
        do throws(PeerFrameError) {
            try `guard`.admit(try codec(2).open(frame: frame, challenge: challenge))
            return nil
        } catch {
            return error
        }
    }

    func sealed(incarnation: UInt64, counter: UInt64) -> [UInt8] {
        codec(1).seal(
            PeerEnvelope(
                sender: Member(node: 1, incarnation: incarnation), counter: counter, destination: 2, message: message),
            challenge: challenge)
    }

    func isReplay(_ error: PeerFrameError?) -> Bool {
        if case .replayed = error { return true }
        return false
    }

    @Test func aCapturedFrameIsAcceptedOnce() {
        var replays = PeerReplayGuard()
        let captured = sealed(incarnation: 1, counter: 1)
        #expect(admit(captured, &replays) == nil)
        let error = admit(captured, &replays)
        #expect(
            error
                == .replayed(
                    Member(node: 1, incarnation: 1), counter: 1, accepted: Member(node: 1, incarnation: 1),
                    acceptedCounter: 1))
        #expect(error.map { "\($0)" }?.contains("replayed") == true)
        // Still refused after later frames, and the later ones pass.
        #expect(admit(sealed(incarnation: 1, counter: 2), &replays) == nil)
        #expect(isReplay(admit(captured, &replays)))
        #expect(admit(sealed(incarnation: 1, counter: 3), &replays) == nil)
    }

    @Test func aLowerCounterIsRefusedAndGapsAreFine() {
        var replays = PeerReplayGuard()
        let early = sealed(incarnation: 4, counter: 5)
        #expect(admit(sealed(incarnation: 4, counter: 2), &replays) == nil)
        #expect(admit(sealed(incarnation: 4, counter: 9), &replays) == nil)  // 3 to 8 lost or sent elsewhere
        #expect(isReplay(admit(early, &replays)))
        #expect(isReplay(admit(sealed(incarnation: 4, counter: 9), &replays)))
        #expect(admit(sealed(incarnation: 4, counter: 10), &replays) == nil)
        // Senders are kept apart: node 3's counters are its own.
        let other = codec(3).seal(
            PeerEnvelope(sender: Member(node: 3, incarnation: 1), counter: 1, destination: 2, message: message),
            challenge: challenge)
        #expect(admit(other, &replays) == nil)
    }

    @Test func aNewIncarnationStartsOverAndAnEarlierOneIsRefused() {
        var replays = PeerReplayGuard()
        let firstLife = sealed(incarnation: 1, counter: 1000)
        #expect(admit(sealed(incarnation: 1, counter: 999), &replays) == nil)
        #expect(admit(sealed(incarnation: 2, counter: 1), &replays) == nil)
        #expect(isReplay(admit(firstLife, &replays)))  // a higher counter, but of an earlier life
        #expect(isReplay(admit(sealed(incarnation: 1, counter: 5000), &replays)))
        #expect(admit(sealed(incarnation: 2, counter: 2), &replays) == nil)
        #expect(replays.accepted[1]?.incarnation == 2)
        #expect(replays.accepted[1]?.counter == 2)
    }
}
