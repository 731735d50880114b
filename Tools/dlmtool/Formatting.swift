import DLMWire
import Foundation

/// Text output for people: aligned columns, durations, names.
enum Text {
    /// Aligns `rows` in columns two spaces apart, without trailing spaces.
    static func table(_ rows: [[String]], indent: String = "") -> String {
        let widths = rows.reduce(into: [Int]()) { widths, row in
            for (column, cell) in row.enumerated() {
                if column == widths.count { widths.append(0) }
                widths[column] = max(widths[column], cell.count)
            }
        }
        return rows.map { row in
            var line = indent
            for (column, cell) in row.enumerated() {
                line += cell
                if column < row.count - 1 { line += String(repeating: " ", count: widths[column] - cell.count + 2) }
            }
            while line.hasSuffix(" ") { line.removeLast() }
            return line
        }.joined(separator: "\n")
    }

    /// "2d 3h 4m 5s", "4m 5s", "12.3s".
    static func uptime(_ seconds: Double) -> String {
        guard seconds >= 60 else { return String(format: "%.1fs", seconds) }
        var rest = Int(seconds)
        let days = rest / 86_400
        rest %= 86_400
        let parts = [(days, "d"), (rest / 3_600, "h"), (rest % 3_600 / 60, "m"), (rest % 60, "s")]
        return parts.drop { $0.0 == 0 }.map { "\($0.0)\($0.1)" }.joined(separator: " ")
    }

    /// A waiting time given in milliseconds: "250 ms", "3.2 s", "5m 2s".
    static func waited(_ milliseconds: Double) -> String {
        if milliseconds < 1_000 { return String(format: "%.0f ms", milliseconds) }
        if milliseconds < 60_000 { return String(format: "%.1f s", milliseconds / 1_000) }
        return uptime(milliseconds / 1_000)
    }

    /// A lock id as dlm_tool prints it: eight hex digits.
    static func lockID(_ id: String) -> String {
        id.count >= 8 ? id : String(repeating: "0", count: 8 - id.count) + id
    }

    /// A resource or lockspace name for a column: quoted when it holds spaces or quotes.
    static func name(_ name: String) -> String {
        guard name.isEmpty || name.contains(where: { $0 == " " || $0 == "\"" || $0 == "\\" }) else { return name }
        return "\"" + name.replacingOccurrences(of: "\\", with: "\\\\").replacingOccurrences(of: "\"", with: "\\\"")
            + "\""
    }

    /// A resource's name with its parents (sub-locks), outermost first: `a/b`.
    static func resourceName(_ resource: LockDebugReport.Resource) -> String {
        resource.path.count > 1 ? resource.path.map(name).joined(separator: "/") : name(resource.name)
    }

    /// Hex in groups of four bytes: `01020304 00000000 ...`.
    static func groupedHex(_ hex: String) -> String {
        var groups: [Substring] = []
        var rest = Substring(hex)
        while !rest.isEmpty {
            groups.append(rest.prefix(8))
            rest = rest.dropFirst(8)
        }
        return groups.isEmpty ? "-" : groups.joined(separator: " ")
    }
}
