import DLMCore
import DLMTestSupport
import DLMWire
import Foundation

/// The seed and size of a randomized run: `DLM_FUZZ_SEED` (decimal or 0x-hex) replays a run, otherwise
/// each run draws a new seed.
enum FuzzSettings {
    static func seed() -> UInt64 {
        if let text = ProcessInfo.processInfo.environment["DLM_FUZZ_SEED"] {
            let value = text.hasPrefix("0x") ? UInt64(text.dropFirst(2), radix: 16) : UInt64(text)
            guard let value else { fatalError("DLM_FUZZ_SEED=\(text) is not a number") }
            return value
        }
        var system = SystemRandomNumberGenerator()
        return system.next()
    }

    static func count(default value: Int) -> Int {
        guard let text = ProcessInfo.processInfo.environment["DLM_FUZZ_FRAMES"] else { return value }
        guard let count = Int(text), count >= 0 else { fatalError("DLM_FUZZ_FRAMES=\(text) is not a count") }
        return count
    }

    static func hex(_ seed: UInt64) -> String { "0x" + String(seed, radix: 16) }
}

/// Random valid messages, every field drawn with a bias towards boundaries.
extension SplitMix64 {
    mutating func mode() -> LockMode { LockMode(rawValue: UInt8(below(6)))! }

    mutating func lockFlags() -> LockFlags {
        if percent(20) { return LockFlags(rawValue: integer()) }
        var flags: LockFlags = []
        for bit in 0..<19 where percent(15) { flags.insert(LockFlags(rawValue: 1 << bit)) }
        return flags
    }

    mutating func name() -> [UInt8] {
        switch below(4) {
        case 0: bytes(WireLimits.maxName)
        case 1: bytes(1)
        default: bytes(1 + below(WireLimits.maxName))
        }
    }

    mutating func valueBlock() -> [UInt8] {
        switch below(5) {
        case 0: []
        case 1: bytes(32)
        case 2: bytes(WireLimits.maxValueBlock)
        default: bytes(below(WireLimits.maxValueBlock + 1))
        }
    }

    /// A string of at most `maxBytes` bytes of UTF-8, with multi-byte scalars, combining marks and NUL.
    mutating func string(maxBytes: Int) -> String {
        let pieces = ["a", "Z", "7", " ", "-", "\u{0}", "\u{F6}", "\u{3BB}", "\u{20AC}", "\u{1F512}", "e\u{301}"]
        let limit = percent(10) ? maxBytes : min(maxBytes, below(40))
        var out = ""
        var count = 0
        while true {
            let piece = pieces[below(pieces.count)]
            guard count + piece.utf8.count <= limit else { break }
            out += piece
            count += piece.utf8.count
        }
        return out
    }

    mutating func clientMessage() -> ClientMessage {
        switch below(11) {
        case 0:
            // A HELLO of at most 1024 bytes: 15 bytes before the name.
            return .hello(
                Hello(
                    minVersion: integer(), maxVersion: integer(), pid: integer(),
                    clientName: string(maxBytes: WireLimits.maxClientFrame - 15)))
        case 1: return .ping(tag: integer())
        case 2: return .bye(tag: integer())
        case 3:
            return .openLockspace(tag: integer(), name: name(), valueBlockLength: integer(), create: bool())
        case 4: return .releaseLockspace(tag: integer(), lockspace: integer(), force: bool())
        case 5:
            return .lock(
                LockMessage(
                    tag: integer(), lockspace: integer(), flags: lockFlags(), mode: mode(),
                    options: LockMessageOptions(rawValue: UInt8(below(4))), priority: integer(), parent: integer(),
                    timeoutNanoseconds: integer(), transaction: integer(), name: name()))
        case 6:
            return .convert(
                ConvertMessage(
                    tag: integer(), lock: integer(), flags: lockFlags(), mode: mode(), priority: integer(),
                    timeoutNanoseconds: integer(), valueBlock: valueBlock()))
        case 7:
            return .unlock(UnlockMessage(tag: integer(), lock: integer(), flags: lockFlags(), valueBlock: valueBlock()))
        case 8: return .deadlockCancel(tag: integer(), lock: integer())
        case 9: return .purge(tag: integer(), lockspace: integer(), nodeID: integer(), pid: integer())
        default:
            let kind = QueryKind.allCases[below(QueryKind.allCases.count)]
            if kind == .lockdebugPage || kind == .lockdumpPage {
                return .query(
                    tag: integer(), kind: kind, argument: QueryKind.pageArgument(cursor: integer(), lockspace: name()))
            }
            return .query(tag: integer(), kind: kind, argument: percent(30) ? [] : name())
        }
    }

    mutating func status() -> DLMStatus {
        let known: [DLMStatus] = [.granted, .tryAgain, .deadlock, .timedOut, .cancelled, .unlocked, .invalid]
        return percent(70) ? known[below(known.count)] : DLMStatus(rawValue: Int32(truncatingIfNeeded: next()))
    }

    /// `large` allows a QUERY_REPLY of up to 100,000 bytes and strings of up to 65,535 bytes.
    mutating func serverMessage(large: Bool = false) -> ServerMessage {
        let maxString = large && percent(20) ? Int(UInt16.max) : 300
        switch below(10) {
        case 0:
            return .helloReply(
                HelloReply(
                    version: integer(), nodeID: integer(), maxName: integer(), maxValueBlock: integer(),
                    server: string(maxBytes: maxString)))
        case 1: return .pong(tag: integer())
        case 2: return .lockspace(tag: integer(), lockspace: integer(), valueBlockLength: integer(), created: bool())
        case 3: return .ok(tag: integer(), lock: integer())
        case 4: return .error(tag: integer(), status: status(), message: string(maxBytes: maxString))
        case 5:
            let mode: LockMode? = percent(20) ? nil : self.mode()
            return .completion(
                CompletionMessage(
                    tag: integer(), lock: integer(), status: status(), flags: CompletionFlags(rawValue: integer()),
                    mode: mode, valueBlockSequence: integer(), fencingToken: integer(), valueBlock: valueBlock()))
        case 6: return .blocking(lock: integer(), mode: mode())
        case 7:
            let count = large && percent(10) ? below(100_000) : below(200)
            return .queryReply(tag: integer(), json: bytes(count))
        case 8: return .purged(tag: integer(), count: integer())
        default: return .goodbye(reason: string(maxBytes: maxString))
        }
    }
}
