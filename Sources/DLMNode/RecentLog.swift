import DequeModule
import Foundation
import Logging
import NIOConcurrencyHelpers

/// dlmd's most recent log lines, as it wrote them to standard error (its log) and standard output (its
/// announcements), for `dlmtool dump` (QUERY kind 7; dlm_tool's `dump` of dlm_controld's debug buffer): what a node
/// did lately, on a machine where its output went nowhere an operator can read. A bounded ring, oldest lines
/// dropped first; written from any thread.
public final class RecentLog: Sendable {
    /// How many lines it keeps, and the longest line it keeps whole (bytes; longer ones are cut).
    public let capacity: Int
    public static let defaultCapacity = 2_000
    public static let lineLimit = 1_024
    private let ring = NIOLockedValueBox(Deque<String>())

    public init(capacity: Int = RecentLog.defaultCapacity) {
        precondition(capacity > 0)
        self.capacity = capacity
    }

    public func append(_ line: String) {
        var line = line
        if line.utf8.count > Self.lineLimit {
            line = String(decoding: line.utf8.prefix(Self.lineLimit), as: UTF8.self)
        }
        ring.withLockedValue { ring in
            if ring.count == capacity { ring.removeFirst() }
            ring.append(line)
        }
    }

    /// The lines kept, oldest first.
    public var lines: [String] { ring.withLockedValue { Array($0) } }
}

/// A log handler that writes into a `RecentLog` what `StreamLogHandler` writes to its stream, with the same fields
/// (time, in ISO 8601 UTC; level, label, metadata, source, message).
public struct RecentLogHandler: LogHandler {
    public var logLevel: Logger.Level
    public var metadata: Logger.Metadata = [:]
    public var metadataProvider: Logger.MetadataProvider?
    let label: String
    let log: RecentLog

    public init(label: String, log: RecentLog, logLevel: Logger.Level) {
        self.label = label
        self.log = log
        self.logLevel = logLevel
    }

    public subscript(metadataKey key: String) -> Logger.Metadata.Value? {
        get { metadata[key] }
        set { metadata[key] = newValue }
    }

    public func log(event: LogEvent) {
        var all = metadata
        if let provided = metadataProvider?.get() { all.merge(provided) { _, new in new } }
        if let extra = event.metadata { all.merge(extra) { _, new in new } }
        let fields = all.sorted { $0.key < $1.key }.map { "\($0.key)=\($0.value)" }.joined(separator: " ")
        let time = Date().formatted(.iso8601)
        log.append(
            "\(time) \(event.level) \(label):\(fields.isEmpty ? "" : " " + fields) [\(event.source)] \(event.message)")
    }
}
