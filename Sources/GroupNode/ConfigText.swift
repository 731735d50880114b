import TOMLKit

/// The one way dlmd parses its config file's TOML. The parser TOMLKit wraps (toml++ 3) asserts, and so aborts the
/// process, on a table header whose key starts with a character no key can start with (`[/`, found by
/// `make fuzz`); `checkTableHeaders` refuses those first, with an error like the parser's own.
public enum ConfigText {
    /// An error at a line and column of the text (1-based), as TOMLKit's parse errors give them.
    public struct Malformed: Error, Hashable, Sendable, CustomStringConvertible {
        public var line: Int
        public var column: Int
        public var message: String
        public var description: String { message }
    }

    /// The text as a TOML table. Throws `Malformed` or TOMLKit's `TOMLParseError`.
    public static func parse(_ text: String) throws -> TOMLTable {
        try checkTableHeaders(text)
        return try TOMLTable(string: text)
    }

    /// Throws for a table header (`[` or `[[` at the start of a statement) whose first character after the
    /// brackets and blanks can start no key: not a bare-key character (A-Z a-z 0-9 _ -), a quote, or the `]` the
    /// parser reports itself. Knows strings, comments and the arrays and inline tables of values, so that a `[`
    /// inside a value is not taken for a header.
    public static func checkTableHeaders(_ text: String) throws(Malformed) {
        let bytes = Array(text.utf8)
        var index = 0
        var line = 1
        var lineStart = 0
        var depth = 0  // open arrays and inline tables of the value being read
        var atStatement = true  // only blanks since the last newline, outside any value
        func isBlank(_ byte: UInt8) -> Bool { byte == 0x20 || byte == 0x09 }
        func startsKey(_ byte: UInt8) -> Bool {
            switch byte {
            case UInt8(ascii: "A")...UInt8(ascii: "Z"), UInt8(ascii: "a")...UInt8(ascii: "z"),
                UInt8(ascii: "0")...UInt8(ascii: "9"), UInt8(ascii: "_"), UInt8(ascii: "-"), UInt8(ascii: "\""),
                UInt8(ascii: "'"), UInt8(ascii: "]"):
                true
            default: false
            }
        }
        /// Skips a string starting at `index` (its opening quote); a multi-line one may span lines.
        func skipString() {
            let quote = bytes[index]
            let multiLine = index + 2 < bytes.count && bytes[index + 1] == quote && bytes[index + 2] == quote
            index += multiLine ? 3 : 1
            while index < bytes.count {
                let byte = bytes[index]
                if byte == UInt8(ascii: "\\") && quote == UInt8(ascii: "\"") {
                    index += 2
                    continue
                }
                if byte == 0x0A {
                    if !multiLine { return }  // an unterminated string: the parser says so
                    line += 1
                    lineStart = index + 1
                }
                if byte == quote {
                    if !multiLine {
                        index += 1
                        return
                    }
                    if index + 2 < bytes.count && bytes[index + 1] == quote && bytes[index + 2] == quote {
                        index += 3
                        return
                    }
                }
                index += 1
            }
        }
        while index < bytes.count {
            let byte = bytes[index]
            switch byte {
            case 0x0A:
                line += 1
                lineStart = index + 1
                if depth == 0 { atStatement = true }
                index += 1
            case UInt8(ascii: "#"):
                while index < bytes.count && bytes[index] != 0x0A { index += 1 }
            case UInt8(ascii: "\""), UInt8(ascii: "'"):
                atStatement = false
                skipString()
            case UInt8(ascii: "[") where atStatement:
                index += 1
                if index < bytes.count && bytes[index] == UInt8(ascii: "[") { index += 1 }
                while index < bytes.count && isBlank(bytes[index]) { index += 1 }
                if index < bytes.count && !startsKey(bytes[index]) {
                    throw Malformed(
                        line: line, column: index - lineStart + 1,
                        message:
                            "a table header must start with a key, not '\(String(decoding: [bytes[index]], as: UTF8.self))'"
                    )
                }
                atStatement = false
            case UInt8(ascii: "["), UInt8(ascii: "{"):
                if !atStatement { depth += 1 }
                atStatement = false
                index += 1
            case UInt8(ascii: "]"), UInt8(ascii: "}"):
                if depth > 0 { depth -= 1 }
                index += 1
            default:
                if !isBlank(byte) { atStatement = false }
                index += 1
            }
        }
    }
}
