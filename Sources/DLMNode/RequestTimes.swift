/// When a connection's requests arrived, kept until their answers leave, for the latency histograms of
/// `--metrics` (NodeMetrics.swift). Only LOCK, CONVERT and UNLOCK are timed. A request is known by its tag until
/// its reply; one that waits (its reply was OK) is then known by its lock until the COMPLETION that ends it
/// (Protocol/CLIENT.md §5: a lock has at most one operation pending).
///
/// The requests not answered yet are a ring of `capacity` entries in memory of its own, in arrival order: replies
/// mostly leave in that order, so the one answered is nearly always the oldest (no hashing, no exclusivity check
/// and no copy-on-write per request; timing every request costs a few nanoseconds). A connection with more
/// requests in flight than that has the later ones counted but not timed, until answers make room. Touched on
/// the node's event loop only.
final class RequestTimes {
    enum Kind: UInt8 {
        case lock = 0
        case convert = 1
        case unlock = 2
    }

    static let capacity = 64

    /// The ring's start and length, then per entry its tag, kind and arrival time.
    private let ends: UnsafeMutablePointer<Int>
    private let tags: UnsafeMutablePointer<UInt32>
    private let kinds: UnsafeMutablePointer<UInt8>
    private let times: UnsafeMutablePointer<UInt64>
    /// By lock: requests and conversions that wait (their arrival, and when their OK went out).
    private let waits: WaitingRequests

    final class WaitingRequests {
        var byLock: [UInt32: (received: UInt64, queued: UInt64)] = [:]
    }

    init() {
        ends = .allocate(capacity: 2)
        ends.initialize(repeating: 0, count: 2)
        tags = .allocate(capacity: Self.capacity)
        kinds = .allocate(capacity: Self.capacity)
        times = .allocate(capacity: Self.capacity)
        waits = WaitingRequests()
    }

    deinit {
        ends.deallocate()
        tags.deallocate()
        kinds.deallocate()
        times.deallocate()
    }

    /// A request arrived (not timed if the ring is full).
    @inline(__always)
    func received(_ tag: UInt32, _ kind: Kind, at now: UInt64) {
        let count = ends[1]
        guard count < Self.capacity else { return }
        let slot = (ends[0] + count) % Self.capacity
        tags[slot] = tag
        kinds[slot] = kind.rawValue
        times[slot] = now
        ends[1] = count + 1
    }

    /// The request with this tag is answered: its kind and arrival, no longer in the ring.
    @inline(__always)
    func answer(_ tag: UInt32) -> (kind: Kind, at: UInt64)? {
        let count = ends[1]
        guard count > 0 else { return nil }
        let start = ends[0]
        if tags[start] == tag {
            ends[0] = (start + 1) % Self.capacity
            ends[1] = count - 1
            return (Kind(rawValue: kinds[start])!, times[start])
        }
        // Out of order (an answer held for a commit or another node): found further on, and the ones before it
        // move up by one.
        var offset = 1
        while offset < count, tags[(start + offset) % Self.capacity] != tag { offset += 1 }
        guard offset < count else { return nil }
        let found = (start + offset) % Self.capacity
        let answer = (Kind(rawValue: kinds[found])!, times[found])
        var position = offset
        while position > 0 {
            let to = (start + position) % Self.capacity
            let from = (start + position - 1) % Self.capacity
            tags[to] = tags[from]
            kinds[to] = kinds[from]
            times[to] = times[from]
            position -= 1
        }
        ends[0] = (start + 1) % Self.capacity
        ends[1] = count - 1
        return answer
    }

    var hasWaits: Bool { !waits.byLock.isEmpty }

    func waits(_ lock: UInt32, received: UInt64, queued: UInt64) { waits.byLock[lock] = (received, queued) }

    func endWait(_ lock: UInt32) -> (received: UInt64, queued: UInt64)? { waits.byLock.removeValue(forKey: lock) }
}
