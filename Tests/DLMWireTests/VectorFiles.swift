import DLMCore
import DLMWire
import Foundation
import Testing

/// Who sends a frame: decides the message set and the frame length limit (Protocol/CLIENT.md §2.1).
enum Direction: String, Sendable {
    case client
    case server
    /// Protocol/PEER.md: between nodes' lock services.
    case peer

    var maxLength: Int {
        switch self {
        case .client: WireLimits.maxClientFrame
        case .server: WireLimits.maxServerFrame
        case .peer: PeerMessage.maxFrame
        }
    }
}

/// One file of Protocol/vectors, in the format of Protocol/vectors/README.md.
struct Vector: Sendable, CustomTestStringConvertible {
    /// The file name without `.hex`.
    var name: String
    var direction: Direction
    /// For a bad vector, the status of its `# expect:` line: name and value.
    var expect: (name: String, value: Int32)?
    var bytes: [UInt8]

    var testDescription: String { name }
    var isBad: Bool { name.hasPrefix("bad-") }

    /// Protocol/vectors: three levels up from this file is the package root.
    static let folder = URL(fileURLWithPath: #filePath)
        .deletingLastPathComponent().deletingLastPathComponent().deletingLastPathComponent()
        .appendingPathComponent("Protocol/vectors")

    /// Protocol/peer-vectors (PEER.md).
    static let peerFolder = folder.deletingLastPathComponent().appendingPathComponent("peer-vectors")

    /// Every vector, sorted by name. A file that does not parse stops the tests: the vectors are the spec.
    static let all: [Vector] = load(folder)

    /// Every vector of the peer protocol.
    static let peer: [Vector] = load(peerFolder)

    static func load(_ folder: URL) -> [Vector] {
        let names: [String]
        do {
            names = try FileManager.default.contentsOfDirectory(atPath: folder.path)
                .filter { $0.hasSuffix(".hex") }.sorted()
        } catch {
            fatalError("cannot list \(folder.path): \(error)")
        }
        return names.map { file in
            let url = folder.appendingPathComponent(file)
            guard let text = try? String(contentsOf: url, encoding: .utf8) else {
                fatalError("cannot read \(url.path)")
            }
            do {
                return try Vector(name: String(file.dropLast(4)), text: text)
            } catch {
                fatalError("\(file): \(error)")
            }
        }
    }

    static var good: [Vector] { all.filter { !$0.isBad } }
    static var bad: [Vector] { all.filter(\.isBad) }

    struct FormatError: Error, CustomStringConvertible {
        var description: String
    }

    init(name: String, text: String) throws {
        self.name = name
        var direction: Direction?
        var expect: (String, Int32)?
        var hex: [UInt8] = []
        var seenHex = false
        for line in text.split(separator: "\n", omittingEmptySubsequences: false) {
            if line.hasPrefix("#") {
                guard !seenHex else { throw FormatError(description: "a comment line after the hex") }
                if line.hasPrefix("# direction: ") {
                    guard let d = Direction(rawValue: String(line.dropFirst(13))) else {
                        throw FormatError(description: "bad direction line: \(line)")
                    }
                    direction = d
                } else if line.hasPrefix("# expect: ") {
                    let words = line.dropFirst(10).split(separator: " ")
                    guard words.count == 2, let value = Int32(words[1]) else {
                        throw FormatError(description: "bad expect line: \(line)")
                    }
                    expect = (String(words[0]), value)
                }
                continue
            }
            for scalar in line.unicodeScalars where !scalar.properties.isWhitespace {
                guard scalar.isASCII, scalar.properties.isASCIIHexDigit else {
                    throw FormatError(description: "not a hex digit: \(scalar)")
                }
                hex.append(UInt8(ascii: scalar))
                seenHex = true
            }
        }
        guard let direction else { throw FormatError(description: "no direction line") }
        guard hex.count % 2 == 0 else { throw FormatError(description: "an odd number of hex digits") }
        func digit(_ c: UInt8) -> UInt8 {
            switch c {
            case UInt8(ascii: "0")...UInt8(ascii: "9"): c - UInt8(ascii: "0")
            case UInt8(ascii: "a")...UInt8(ascii: "f"): c - UInt8(ascii: "a") + 10
            default: c - UInt8(ascii: "A") + 10
            }
        }
        self.direction = direction
        self.expect = expect
        self.bytes = stride(from: 0, to: hex.count, by: 2).map { digit(hex[$0]) << 4 | digit(hex[$0 + 1]) }
        guard (expect == nil) != name.hasPrefix("bad-") else {
            throw FormatError(description: "an expect line belongs in bad vectors, and only there")
        }
    }
}
