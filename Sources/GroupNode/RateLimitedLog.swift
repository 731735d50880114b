import Logging
import NIOCore

/// Logs at most one line per kind and interval, with the count of those it left out.
public final class RateLimitedLog {
    let logger: Logger
    let interval: TimeAmount
    var last: [String: NIODeadline] = [:]
    var suppressed: [String: Int] = [:]

    public init(logger: Logger, interval: TimeAmount = .seconds(10)) {
        self.logger = logger
        self.interval = interval
    }

    public func log(kind: String, _ message: @autoclosure () -> String) {
        let now = NIODeadline.now()
        if let last = last[kind], now < last + interval {
            suppressed[kind, default: 0] += 1
            return
        }
        last[kind] = now
        let skipped = suppressed.removeValue(forKey: kind) ?? 0
        logger.warning("\(message())\(skipped > 0 ? " (and \(skipped) more like it since the last report)" : "")")
    }
}
