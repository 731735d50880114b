/// What the shell of group services (`GroupNode`) drives: `GroupMember` (group services' own membership, from
/// heartbeats over the peer transport) or `CorosyncMember` (membership, quorum and order from corosync). Both take
/// the same inputs and ask for the same effects; each ignores the inputs of the other.
public protocol MembershipCore: Sendable {
    mutating func handle(_ input: GroupInput, into effects: inout [GroupEffect])
    var me: Member { get }
    /// The installed view, nil until the first one.
    var view: View? { get }
    var isPrimary: Bool { get }
    /// The lives this node believes alive, itself included.
    var aliveMembers: [Member] { get }
    /// The nodes whose fence this node runs and waits on.
    var fencing: [NodeID] { get }
    /// What membership waits for, for status reports (empty when settled).
    var waitingFor: [String] { get }
    var persistent: PersistentState { get }
    /// A primary view left this life out, and its fence was run: it never joins again; dlmd must restart.
    var wasFenced: Bool { get }
    /// The latest life of `node` that a primary view left out: it never comes back.
    func fencedIncarnation(of node: NodeID) -> UInt64?
}

extension GroupMember: MembershipCore {}
