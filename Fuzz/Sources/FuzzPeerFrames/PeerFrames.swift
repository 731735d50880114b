import DLMWire
import FuzzSupport
import GroupNode
import GroupServices

/// What a node reads on its peer port. The input's first byte picks the path:
/// - 0: a frame from a stranger, before authentication: opened with the cluster key (length, magic, version,
///   cluster, HMAC; a fuzzer does not forge the HMAC, so this is the gate);
/// - 1: the challenge frame a connecting node reads first;
/// - 2: a frame after authentication: the rest is sealed with the key, as a member would, so that the opening
///   goes on to the sender, destination and group-services body;
/// - 3: a lock-traffic message (Protocol/PEER.md) as the lock service decodes it; one that decodes must encode to
///   the same bytes' message again.
/// A frame that does not decode must fail with an error, never a trap.
let key = try! ClusterKey(bytes: Array(repeating: 0x5A, count: 32))
let codec = PeerFrameCodec(key: key, clusterName: "fuzz", localNode: NodeID(1), knownNodes: [NodeID(1), NodeID(2)])
let challenge = Array(repeating: UInt8(7), count: PeerEnvelope.challengeLength)

func fuzzOne(_ data: UnsafePointer<UInt8>, _ size: Int) -> CInt {
    let input = UnsafeBufferPointer(start: data, count: size)
    guard let path = input.first else { return 0 }
    let rest = Array(input.dropFirst())
    switch path % 4 {
    case 0:
        _ = try? codec.open(frame: rest, challenge: challenge)
    case 1:
        _ = rest.withUnsafeBytes { try? codec.openChallenge($0) }
    case 2:
        // A member's frame: header, then the fuzzer's body, sealed.
        var frame: [UInt8] = [0, 0, 0, 0]
        frame += PeerEnvelope.magic
        frame.append(PeerEnvelope.version)
        frame += codec.clusterHash
        let sender: [UInt8] = [0, 0, 0, 2]
        let incarnation: [UInt8] = [0, 0, 0, 0, 0, 0, 0, 1]
        let counter: [UInt8] = [0, 0, 0, 0, 0, 0, 0, 9]
        let destination: [UInt8] = [0, 0, 0, 1]
        frame += sender
        frame += incarnation
        frame += counter
        frame += destination
        frame += rest
        let sealed = codec.sign(frame, challenge: challenge)
        _ = try? codec.open(frame: sealed, challenge: challenge)
    default:
        guard let message = try? PeerMessage.decode(frame: rest) else { return 0 }
        let again = try? PeerMessage.decode(frame: message.frameBytes)
        precondition(again == message, "\(message) came back as \(String(describing: again))")
    }
    return 0
}

@_cdecl("LLVMFuzzerTestOneInput")
public func testOneInput(_ data: UnsafePointer<UInt8>, _ size: Int) -> CInt { fuzzOne(data, size) }

@_cdecl("FuzzPeerFrames_main")
public func fuzzerMain(_ argc: CInt, _ argv: UnsafeMutablePointer<UnsafeMutablePointer<CChar>?>?) -> CInt {
    runLibFuzzer(argc, argv) { data, size in fuzzOne(data, size) }
}
