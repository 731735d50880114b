import DLMCore
import DLMTestSupport
import Glibc

// What the scenarios share: the clock, memory readings, names, a PRNG and a JSON writer. The clock is read
// here only, never inside DLMCore.

/// Seconds elapsed while `body` runs, on the monotonic clock.
func timed(_ body: () -> Void) -> Double {
    let clock = ContinuousClock()
    let start = clock.now
    body()
    let elapsed = start.duration(to: clock.now).components
    return Double(elapsed.seconds) + Double(elapsed.attoseconds) / 1e18
}

/// The resident set size of this process in bytes (`/proc/self/statm`, second field, times the page size).
func residentBytes() -> Int {
    guard let file = fopen("/proc/self/statm", "r") else { return 0 }
    defer { fclose(file) }
    var size = 0
    var resident = 0
    guard readStatm(file, &size, &resident) else { return 0 }
    return resident * Int(sysconf(Int32(_SC_PAGESIZE)))
}

private func readStatm(_ file: UnsafeMutablePointer<FILE>, _ size: inout Int, _ resident: inout Int) -> Bool {
    var line = [CChar](repeating: 0, count: 256)
    guard fgets(&line, Int32(line.count), file) != nil else { return false }
    let fields = cString(line).split(separator: " ")
    guard fields.count >= 2, let s = Int(fields[0]), let r = Int(fields[1]) else { return false }
    size = s
    resident = r
    return true
}

/// The text of a NUL-terminated C string in `buffer`.
func cString(_ buffer: [CChar]) -> String {
    let end = buffer.firstIndex(of: 0) ?? buffer.count
    return String(decoding: buffer[..<end].map { UInt8(bitPattern: $0) }, as: UTF8.self)
}

/// The path of this executable.
func executablePath() -> String {
    var buffer = [CChar](repeating: 0, count: Int(PATH_MAX) + 1)
    let length = readlink("/proc/self/exe", &buffer, buffer.count - 1)
    guard length > 0 else { return CommandLine.arguments[0] }
    return cString(buffer)
}

/// Runs this executable with `arguments` and returns what it printed.
func runSelf(_ arguments: [String]) -> String? {
    let command = ([executablePath()] + arguments).map { "'" + $0 + "'" }.joined(separator: " ")
    guard let pipe = popen(command, "r") else { return nil }
    var output = ""
    var buffer = [CChar](repeating: 0, count: 4096)
    while fgets(&buffer, Int32(buffer.count), pipe) != nil { output += cString(buffer) }
    guard pclose(pipe) == 0 else { return nil }
    return output
}

/// A resource name of exactly `length` bytes (at least 8) that differs for each `index`: a prefix, then the
/// index in decimal, zero-padded, as GFS2 names its 24-byte resources.
func resourceName(_ index: Int, length: Int) -> [UInt8] {
    var name = [UInt8]()
    name.reserveCapacity(length)
    let digits = Array(String(index).utf8)
    let prefix = Array("bench/".utf8)
    name.append(contentsOf: prefix.prefix(max(0, length - digits.count)))
    while name.count + digits.count < length { name.append(UInt8(ascii: "0")) }
    name.append(contentsOf: digits.suffix(length - name.count))
    return name
}

/// A JSON value whose object keys keep the order they are given in.
indirect enum JSON {
    case int(Int)
    case double(Double)
    case string(String)
    case bool(Bool)
    case array([JSON])
    case object([(String, JSON)])

    /// A rate or a size, rounded to one decimal.
    static func number(_ value: Double) -> JSON { .double((value * 10).rounded() / 10) }

    /// The number of an object's field `name`.
    func field(_ name: String) -> Double? {
        guard case .object(let fields) = self, let value = fields.first(where: { $0.0 == name })?.1 else { return nil }
        switch value {
        case .int(let number): return Double(number)
        case .double(let number): return number
        default: return nil
        }
    }

    var text: String {
        switch self {
        case .int(let value): return String(value)
        case .double(let value): return value.isFinite ? String(value) : "null"
        case .bool(let value): return value ? "true" : "false"
        case .string(let value): return JSON.quote(value)
        case .array(let values): return "[" + values.map(\.text).joined(separator: ", ") + "]"
        case .object(let fields):
            return "{" + fields.map { JSON.quote($0.0) + ": " + $0.1.text }.joined(separator: ", ") + "}"
        }
    }

    static func quote(_ string: String) -> String {
        var result = "\""
        for scalar in string.unicodeScalars {
            switch scalar {
            case "\"": result += "\\\""
            case "\\": result += "\\\\"
            case "\n": result += "\\n"
            default:
                if scalar.value < 0x20 {
                    result +=
                        "\\u" + String(repeating: "0", count: 4 - String(scalar.value, radix: 16).count)
                        + String(scalar.value, radix: 16)
                } else {
                    result.unicodeScalars.append(scalar)
                }
            }
        }
        return result + "\""
    }

    subscript(key: String) -> JSON? {
        guard case .object(let fields) = self else { return nil }
        return fields.first { $0.0 == key }?.1
    }
}

/// Parses the flat JSON objects `dlmbench memory` prints: string keys, number or string values.
func parseFlatJSON(_ text: String) -> [(String, JSON)]? {
    var body = Substring(text.trimmingCharacters())
    guard body.hasPrefix("{"), body.hasSuffix("}") else { return nil }
    body = body.dropFirst().dropLast()
    var fields: [(String, JSON)] = []
    for pair in body.split(separator: ",", omittingEmptySubsequences: true) {
        let parts = pair.split(separator: ":", maxSplits: 1)
        guard parts.count == 2 else { return nil }
        let key = parts[0].trimmingCharacters().trimmingQuotes()
        let raw = parts[1].trimmingCharacters()
        if raw.hasPrefix("\"") {
            fields.append((key, .string(raw.trimmingQuotes())))
        } else if let value = Int(raw) {
            fields.append((key, .int(value)))
        } else if let value = Double(raw) {
            fields.append((key, .double(value)))
        } else {
            return nil
        }
    }
    return fields
}

extension StringProtocol {
    func trimmingCharacters() -> String {
        String(self.drop { $0.isWhitespace }.reversed().drop { $0.isWhitespace }.reversed())
    }

    func trimmingQuotes() -> String {
        var s = Substring(self)
        if s.hasPrefix("\"") { s = s.dropFirst() }
        if s.hasSuffix("\"") { s = s.dropLast() }
        return String(s)
    }
}

/// Ends the process with a message on standard error.
func fail(_ message: String) -> Never {
    var stderr = StandardError()
    print("dlmbench: \(message)", to: &stderr)
    exit(1)
}

struct StandardError: TextOutputStream {
    mutating func write(_ string: String) {
        var bytes = Array(string.utf8)
        _ = Glibc.write(2, &bytes, bytes.count)
    }
}

/// `--name value` options of a subcommand.
struct Options {
    var values: [String: String] = [:]

    init(_ arguments: ArraySlice<String>, allowed: [String]) {
        var rest = arguments
        while let flag = rest.popFirst() {
            guard flag.hasPrefix("--"), allowed.contains(String(flag.dropFirst(2))) else {
                fail("unknown option \(flag); options: \(allowed.map { "--" + $0 }.joined(separator: " "))")
            }
            guard let value = rest.popFirst() else { fail("\(flag) needs a value") }
            values[String(flag.dropFirst(2))] = value
        }
    }

    func int(_ name: String, _ defaultValue: Int, minimum: Int = 1) -> Int {
        guard let text = values[name] else { return defaultValue }
        guard let value = Int(text.replacingUnderscores()), value >= minimum else {
            fail("--\(name) needs an integer of at least \(minimum)")
        }
        return value
    }

    func string(_ name: String, _ defaultValue: String) -> String { values[name] ?? defaultValue }
}

extension String {
    func replacingUnderscores() -> String { String(filter { $0 != "_" }) }
}

/// A lock or unlock that the benchmark expects to succeed.
@inline(__always)
func must<T>(_ body: () throws(DLMError) -> T) -> T {
    do throws(DLMError) {
        return try body()
    } catch {
        fail("the engine refused a request: \(error)")
    }
}
