/// A Prometheus histogram of durations counted in plain integers by the one thread that observes them (the node's
/// event loop, or the store's thread under its lock): an observation is a few comparisons and two additions in
/// memory of its own, with no lock, atomic or copy-on-write check, which is what lets dlmd time every request
/// (swift-prometheus's `Histogram` takes a lock per observation and scans every bucket). A scrape appends the text
/// of a copy (`emit`) to the registry's.
final class LatencyHistogram: @unchecked Sendable {
    /// Upper bounds of the buckets, in nanoseconds: 50 µs to 10 s, about three per decade (Prometheus's defaults,
    /// with finer ones below 5 ms, where a local grant or a commit falls).
    static let bounds: [UInt64] = [
        50_000, 100_000, 250_000, 500_000, 1_000_000, 2_500_000, 5_000_000, 10_000_000, 25_000_000, 50_000_000,
        100_000_000, 250_000_000, 500_000_000, 1_000_000_000, 2_500_000_000, 5_000_000_000, 10_000_000_000,
    ]
    static let slots = bounds.count + 1

    /// Observations per bucket (not cumulative; the last slot counts those above every bound), then the sum of
    /// the observations in nanoseconds and their count.
    let counts: UnsafeMutablePointer<UInt64>

    init() {
        counts = .allocate(capacity: Self.slots + 2)
        counts.initialize(repeating: 0, count: Self.slots + 2)
    }

    deinit { counts.deallocate() }

    var sumNanoseconds: UInt64 { counts[Self.slots] }
    var count: UInt64 { counts[Self.slots + 1] }

    @inline(__always)
    func observe(_ nanoseconds: UInt64) {
        var slot = 0
        while slot < 17 && nanoseconds > Self.bound(slot) { slot += 1 }
        counts[slot] &+= 1
        counts[Self.slots] &+= nanoseconds
        counts[Self.slots + 1] &+= 1
    }

    /// The bound of a slot without touching the array (no bounds or retain traffic on the hot path).
    @inline(__always)
    static func bound(_ slot: Int) -> UInt64 {
        switch slot {
        case 0: 50_000
        case 1: 100_000
        case 2: 250_000
        case 3: 500_000
        case 4: 1_000_000
        case 5: 2_500_000
        case 6: 5_000_000
        case 7: 10_000_000
        case 8: 25_000_000
        case 9: 50_000_000
        case 10: 100_000_000
        case 11: 250_000_000
        case 12: 500_000_000
        case 13: 1_000_000_000
        case 14: 2_500_000_000
        case 15: 5_000_000_000
        default: 10_000_000_000
        }
    }

    /// A copy, for a scrape from another thread's histogram (taken under that thread's lock).
    func copy() -> LatencyHistogram {
        let copy = LatencyHistogram()
        copy.counts.update(from: counts, count: Self.slots + 2)
        return copy
    }

    /// The series of one histogram in the text format: `NAME_bucket{LABELS,le="…"}` (cumulative), `NAME_sum`
    /// (seconds) and `NAME_count`. `labels` is `key="value"` pairs joined by commas, or empty.
    func emit(_ name: String, labels: String = "", into text: inout String) {
        let prefix = labels.isEmpty ? "" : labels + ","
        var cumulative: UInt64 = 0
        for (slot, bound) in Self.bounds.enumerated() {
            cumulative += counts[slot]
            text += "\(name)_bucket{\(prefix)le=\"\(Self.seconds(bound))\"} \(cumulative)\n"
        }
        text += "\(name)_bucket{\(prefix)le=\"+Inf\"} \(count)\n"
        let braces = labels.isEmpty ? "" : "{\(labels)}"
        text += "\(name)_sum\(braces) \(Double(sumNanoseconds) / 1e9)\n"
        text += "\(name)_count\(braces) \(count)\n"
    }

    /// `HELP` and `TYPE` lines of a histogram family, written once before its series.
    static func header(_ name: String, help: String, into text: inout String) {
        text += "# HELP \(name) \(help)\n# TYPE \(name) histogram\n"
    }

    static func seconds(_ nanoseconds: UInt64) -> String {
        let value = Double(nanoseconds) / 1e9
        return value == value.rounded() ? String(Int(value)) + ".0" : String(value)
    }
}
