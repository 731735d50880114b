/// Every tunable of group services, checked on construction. Times are in nanoseconds.
///
/// Failure detection: every node sends a heartbeat each `heartbeatInterval`; a node not heard from for
/// `suspectTimeout` is suspected, and the coordinator starts a view change without it. `viewChangeTime` is the
/// time a view change may take in a healthy network (proposal, flush reports, fencing, install), so a crashed node
/// is out of every view within `detectionTime` = `suspectTimeout + viewChangeTime`: 1.5 s by default (corosync's
/// token timeout is 3 s, REFERENCE.md §7).
public struct Settings: Sendable, Hashable {
    /// The static node list (corosync's `nodelist`): each node's votes, at least 1.
    public var votes: [NodeID: Int]
    /// votequorum's `expected_votes`: by default the sum of all votes.
    public var expectedVotes: Int
    /// votequorum's `two_node`: a cluster of two nodes with one vote each where one node alone is quorate. It implies
    /// `waitForAll`; the two nodes race to fence each other.
    public var twoNode: Bool
    /// votequorum's `wait_for_all`: a view is primary for the first time only once every node was seen together in
    /// one view (a node that has been in a primary view since its start brings the quorum along).
    public var waitForAll: Bool
    /// votequorum's `auto_tie_breaker` (with `auto_tie_breaker_node: lowest`): members with exactly half of the
    /// expected votes are quorate too if the lowest configured node is among them, so that a cluster split in two
    /// equal halves goes on in the half with that node. Two quorate sets of members still always share a node: two
    /// halves share the lowest node, and a half and a majority overlap.
    public var autoTieBreaker: Bool
    public var heartbeatInterval: UInt64
    public var suspectTimeout: UInt64
    /// The budget of a view change after a suspicion; see `detectionTime`.
    public var viewChangeTime: UInt64
    /// How long the coordinator waits for the flush reports of a proposal before it drops the silent members and
    /// proposes again. At most `viewChangeTime`.
    public var flushTimeout: UInt64
    /// How often unanswered requests are sent again: submissions to the sequencer, retransmission requests (NAK),
    /// proposals and installs not yet acknowledged.
    public var retransmitInterval: UInt64
    /// How long after a failed fence the coordinator tries again. A fence is never skipped.
    public var fenceRetryInterval: UInt64
    /// How long a node waits after its start before it proposes a view, to hear from the nodes already running.
    public var joinDelay: UInt64

    public static let millisecond: UInt64 = 1_000_000

    public init(
        votes: [NodeID: Int], expectedVotes: Int? = nil, twoNode: Bool = false, waitForAll: Bool = false,
        autoTieBreaker: Bool = false, heartbeatInterval: UInt64 = 200 * millisecond,
        suspectTimeout: UInt64 = 1000 * millisecond,
        viewChangeTime: UInt64 = 500 * millisecond, flushTimeout: UInt64 = 300 * millisecond,
        retransmitInterval: UInt64 = 50 * millisecond, fenceRetryInterval: UInt64 = 250 * millisecond,
        joinDelay: UInt64? = nil
    ) {
        precondition(!votes.isEmpty, "the node list is empty")
        precondition(votes.values.allSatisfy { $0 >= 1 }, "every node has at least one vote")
        let total = votes.values.reduce(0, +)
        let expected = expectedVotes ?? total
        precondition(expected >= total, "expected votes (\(expected)) are fewer than the node list's (\(total))")
        if twoNode {
            precondition(
                votes.count == 2 && votes.values.allSatisfy { $0 == 1 } && expected == 2,
                "two_node needs exactly two nodes with one vote each")
        }
        precondition(!(twoNode && autoTieBreaker), "two_node and auto_tie_breaker exclude each other")
        precondition(heartbeatInterval > 0, "the heartbeat interval must be positive")
        precondition(
            suspectTimeout >= 2 * heartbeatInterval, "the suspect timeout must cover at least two heartbeats")
        precondition(retransmitInterval > 0, "the retransmit interval must be positive")
        precondition(
            flushTimeout >= 2 * retransmitInterval && flushTimeout <= viewChangeTime,
            "the flush timeout must allow a retransmission and fit in the view change time")
        precondition(fenceRetryInterval > 0, "the fence retry interval must be positive")
        self.votes = votes
        self.expectedVotes = expected
        self.twoNode = twoNode
        self.waitForAll = waitForAll || twoNode
        self.autoTieBreaker = autoTieBreaker
        self.heartbeatInterval = heartbeatInterval
        self.suspectTimeout = suspectTimeout
        self.viewChangeTime = viewChangeTime
        self.flushTimeout = flushTimeout
        self.retransmitInterval = retransmitInterval
        self.fenceRetryInterval = fenceRetryInterval
        self.joinDelay = joinDelay ?? heartbeatInterval
    }

    /// Nodes 1...count with one vote each.
    public init(nodes count: Int, twoNode: Bool = false, waitForAll: Bool = false, autoTieBreaker: Bool = false) {
        precondition(count >= 1)
        var votes: [NodeID: Int] = [:]
        for node in 1...count { votes[NodeID(UInt32(node))] = 1 }
        self.init(votes: votes, twoNode: twoNode, waitForAll: waitForAll, autoTieBreaker: autoTieBreaker)
    }

    /// A crashed node is out of every view within this time, in a healthy network.
    public var detectionTime: UInt64 { suspectTimeout + viewChangeTime }

    /// The votes a primary view needs: a majority of the expected votes, or 1 with `two_node`.
    public var quorumVotes: Int { twoNode ? 1 : expectedVotes / 2 + 1 }

    /// Whether `nodes` (each counted once) have quorum: `quorumVotes` of votes, or with `auto_tie_breaker` exactly
    /// half of the expected votes and the lowest configured node.
    public func isQuorate(_ nodes: some Sequence<NodeID>) -> Bool {
        let present = Set(nodes)
        let votes = present.reduce(0) { $0 + (self.votes[$1] ?? 0) }
        if votes >= quorumVotes { return true }
        guard let tieBreakerNode, votes * 2 == expectedVotes else { return false }
        return present.contains(tieBreakerNode)
    }

    /// With `auto_tie_breaker` and an even number of expected votes (a tie needs one): the lowest configured node,
    /// with which exactly half of the expected votes is quorate; nil otherwise.
    public var tieBreakerNode: NodeID? {
        autoTieBreaker && expectedVotes % 2 == 0 ? votes.keys.min() : nil
    }

    /// The configured nodes in order.
    public var nodes: [NodeID] { votes.keys.sorted() }
}
