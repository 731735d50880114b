import Foundation

/// Lines a process prints, read on a thread of their own and stamped with the (monotonic) time they arrived, so
/// that a test or a benchmark can wait for a line (an event) and measure when it came.
public final class LineLog: @unchecked Sendable {
    private let condition = NSCondition()
    private var lines: [(text: String, at: ContinuousClock.Instant)] = []
    private var ended = false
    /// Lines before this index were already matched by `wait`.
    private var cursor = 0

    public init() {}

    /// Reads `handle` to its end on a thread of its own.
    public func read(_ handle: FileHandle) {
        Thread.detachNewThread { [self] in
            var pending = Data()
            while true {
                let chunk = handle.availableData
                let now = ContinuousClock.now
                condition.lock()
                if chunk.isEmpty {
                    ended = true
                    condition.broadcast()
                    condition.unlock()
                    return
                }
                pending.append(chunk)
                while let newline = pending.firstIndex(of: UInt8(ascii: "\n")) {
                    lines.append((String(decoding: pending[pending.startIndex..<newline], as: UTF8.self), now))
                    pending = Data(pending[pending.index(after: newline)...])
                }
                condition.broadcast()
                condition.unlock()
            }
        }
    }

    /// Waits for the first line after the last matched one that satisfies `predicate`; fails, with every line
    /// printed so far, once the process ended or after `timeout` (a bound on a liveness failure, not a pause). With
    /// `keepingPlace`, the next wait starts where this one did: the lines before the match stay to be matched.
    @discardableResult
    public func wait(
        for description: String, timeout: TimeInterval = 60, keepingPlace: Bool = false,
        _ predicate: (String) -> Bool
    ) throws -> (text: String, at: ContinuousClock.Instant) {
        let deadline = Date().addingTimeInterval(timeout)
        condition.lock()
        defer { condition.unlock() }
        let start = cursor
        var index = cursor
        while true {
            while index < lines.count {
                let line = lines[index]
                index += 1
                if predicate(line.text) {
                    cursor = keepingPlace ? start : index
                    return line
                }
            }
            if !keepingPlace { cursor = index }
            // (Not `all`: it would take the lock this holds.)
            if ended {
                throw SupportError("the process ended before \(description); it printed: \(lines.map(\.text))")
            }
            if !condition.wait(until: deadline) {
                throw SupportError("no \(description) within \(Int(timeout)) s; printed: \(lines.map(\.text))")
            }
        }
    }

    /// Skips what was printed so far: the next `wait` looks only at later lines.
    public func skipToEnd() {
        condition.lock()
        cursor = lines.count
        condition.unlock()
    }

    /// Every line so far.
    public var all: [String] {
        condition.lock()
        defer { condition.unlock() }
        return lines.map(\.text)
    }
}
