/// A process in a corosync CPG group: the node it runs on and its pid there.
public struct ProcessAddress: Hashable, Comparable, Sendable, CustomStringConvertible {
    public var node: NodeID
    public var pid: UInt32
    public init(node: NodeID, pid: UInt32) {
        self.node = node
        self.pid = pid
    }
    public static func < (a: ProcessAddress, b: ProcessAddress) -> Bool { (a.node, a.pid) < (b.node, b.pid) }
    public var description: String { "\(node)/\(pid)" }
}

/// What a membership provider other than group services' own reports (corosync: its CPG group and votequorum),
/// handed to `CorosyncMember` as `GroupInput.provider`.
public enum ProviderEvent: Hashable, Sendable {
    /// The group's processes after a change (CPG's configuration change), delivered in the group's total order, and
    /// the nodes that left it because corosync dropped them (CPG_REASON_NODEDOWN), not only their dlmd.
    case configuration([ProcessAddress], nodesDown: [NodeID])
    /// A message multicast to the group, in its total order, this node's own included.
    case delivered([UInt8], from: ProcessAddress)
    /// votequorum's quorate flag and the nodes it counts as members (at once after connecting, then at every
    /// change).
    case quorum(Bool, members: [NodeID])
    /// The connection to the provider ended (corosync stopped or failed): this life's membership is over.
    case lost(String)
}
