/// What a member asks the sequencer to order: application data (to the whole view, or to one process group),
/// the entry into a barrier, or a process group join or leave.
public enum Body: Hashable, Sendable {
    case data(group: String?, payload: [UInt8])
    case barrier(String)
    case join(String)
    case leave(String)
}

/// A member's own message before it is ordered, numbered by the member (`localSeq` increases over its life).
public struct Submission: Hashable, Sendable {
    public var localSeq: UInt64
    public var body: Body
    public init(localSeq: UInt64, body: Body) {
        self.localSeq = localSeq
        self.body = body
    }
}

/// A message as the sequencer ordered it: its place `seq` (1, 2, ...) in the view's total order.
public struct OrderedMessage: Hashable, Sendable {
    public var seq: UInt64
    public var sender: Member
    public var localSeq: UInt64
    public var body: Body
    public init(seq: UInt64, sender: Member, localSeq: UInt64, body: Body) {
        self.seq = seq
        self.sender = sender
        self.localSeq = localSeq
        self.body = body
    }
}

/// Sent every heartbeat interval to every configured node.
public struct Heartbeat: Hashable, Sendable {
    /// The sender's installed view.
    public var view: ViewID?
    /// The proposal the sender reported to and waits on (it is blocked: it sends and delivers nothing meanwhile).
    public var promised: ViewID?
    public var highestViewNumber: UInt64
    /// The sequencer's last sequence number in its view (other members: their last delivered one), so that a
    /// member learns of messages it lost at the tail.
    public var sequenced: UInt64
    public init(view: ViewID?, promised: ViewID?, highestViewNumber: UInt64, sequenced: UInt64) {
        self.view = view
        self.promised = promised
        self.highestViewNumber = highestViewNumber
        self.sequenced = sequenced
    }
}

/// A member's answer to a proposal: what it has of its current view, so that the coordinator can make every
/// member that moves from that view to the new one deliver the same messages (virtual synchrony).
public struct FlushReport: Hashable, Sendable {
    public var proposal: ViewID
    public var from: ViewID?
    /// The sequence number up to which the member delivered, and its process groups at that point.
    public var delivered: UInt64
    public var groups: [String: [Member]]
    /// Every message of `from` the member holds (delivered or not).
    public var messages: [OrderedMessage]
    public var fenceCandidates: [NodeID]
    /// Whether the member has been in a primary view since it started (`wait_for_all`).
    public var wasQuorate: Bool
    /// The lives of the member's last primary view, and the lives it knows a primary view left out (so fenced): a
    /// coordinator that never saw those views (a node just restarted) learns from them which lives are over.
    public var lastPrimary: [Member]
    public var fenced: [Member]
    public init(
        proposal: ViewID, from: ViewID?, delivered: UInt64, groups: [String: [Member]], messages: [OrderedMessage],
        fenceCandidates: [NodeID], wasQuorate: Bool, lastPrimary: [Member] = [], fenced: [Member] = []
    ) {
        self.proposal = proposal
        self.from = from
        self.delivered = delivered
        self.groups = groups
        self.messages = messages
        self.fenceCandidates = fenceCandidates
        self.wasQuorate = wasQuorate
        self.lastPrimary = lastPrimary
        self.fenced = fenced
    }
}

/// The messages that members coming from `view` deliver in it before they install the new view.
public struct Tail: Hashable, Sendable {
    public var view: ViewID
    public var messages: [OrderedMessage]
    public init(view: ViewID, messages: [OrderedMessage]) {
        self.view = view
        self.messages = messages
    }
}

/// The coordinator's decision: the new view, whether it is primary, the tails of the old views, the process
/// groups in the new view, and (for a primary view) every life known to be over because a primary view left it out:
/// each member records them, so that none of them is taken back by any member, whatever views it saw.
public struct Installation: Hashable, Sendable {
    public var view: View
    public var primary: Bool
    public var tails: [Tail]
    public var groups: [String: [Member]]
    public var fenced: [Member]
    public init(view: View, primary: Bool, tails: [Tail], groups: [String: [Member]], fenced: [Member] = []) {
        self.view = view
        self.primary = primary
        self.tails = tails
        self.groups = groups
        self.fenced = fenced
    }
}

/// The peer protocol. The shell sends each message to a node and hands it in with the sender's member
/// (node and incarnation) from the authenticated envelope.
public enum GroupMessage: Hashable, Sendable {
    case heartbeat(Heartbeat)
    /// Member -> sequencer: every submission of the member not yet delivered to it, oldest first.
    case submit(view: ViewID, [Submission])
    /// Sequencer -> members (also retransmissions).
    case ordered(view: ViewID, [OrderedMessage])
    /// Member -> sequencer: send these sequence numbers again.
    case nak(view: ViewID, [UInt64])
    /// Coordinator -> proposed members: stop, and report what you have.
    case propose(id: ViewID, members: [Member])
    /// Member -> coordinator: that proposal's number is not above what I promised.
    case reject(id: ViewID, highestViewNumber: UInt64)
    case report(FlushReport)
    case install(Installation)
    case installed(ViewID)
}

/// A message delivered to the application.
public struct Delivery: Hashable, Sendable {
    public var view: ViewID
    public var seq: UInt64
    public var sender: Member
    public var localSeq: UInt64
    /// nil for a message to every member of the view.
    public var group: String?
    public var payload: [UInt8]
    public init(view: ViewID, seq: UInt64, sender: Member, localSeq: UInt64, group: String?, payload: [UInt8]) {
        self.view = view
        self.seq = seq
        self.sender = sender
        self.localSeq = localSeq
        self.group = group
        self.payload = payload
    }
}

/// A process group's membership changed: the same events, in the same order, at every member that moves through
/// the same views.
public struct GroupEvent: Hashable, Sendable, CustomStringConvertible {
    public enum Kind: Hashable, Sendable { case joined, left }
    public var group: String
    public var member: Member
    public var kind: Kind
    public var view: ViewID
    /// False for a join or leave message delivered in the view; true for the changes a view change makes: members
    /// that left the view leave their groups, and the groups of partitions that merge are merged.
    public var byViewChange: Bool
    public var description: String {
        "\(member) \(kind == .joined ? "joined" : "left") \(group)\(byViewChange ? " (view change)" : "")"
    }
    public init(group: String, member: Member, kind: Kind, view: ViewID, byViewChange: Bool) {
        self.group = group
        self.member = member
        self.kind = kind
        self.view = view
        self.byViewChange = byViewChange
    }

    /// The events of a view change that takes the process groups from `old` to `new`: per group (by name), the
    /// members that left, then those that joined, each in member order.
    static func viewChange(
        from old: [String: Set<Member>], to new: [String: Set<Member>], in view: ViewID,
        into effects: inout [GroupEffect]
    ) {
        for name in Set(old.keys).union(new.keys).sorted() {
            let before = old[name] ?? []
            let after = new[name] ?? []
            for member in before.subtracting(after).sorted() {
                effects.append(
                    .groupEvent(GroupEvent(group: name, member: member, kind: .left, view: view, byViewChange: true)))
            }
            for member in after.subtracting(before).sorted() {
                effects.append(
                    .groupEvent(GroupEvent(group: name, member: member, kind: .joined, view: view, byViewChange: true)))
            }
        }
    }
}
