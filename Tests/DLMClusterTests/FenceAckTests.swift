import DLMCluster
import DLMCore
import DLMWire
import Testing

/// FENCE_ACK (`dlmtool fence-ack`): who may acknowledge a fence, and how its answer keeps the connection's order.
struct FenceAckTests {
    /// A user is refused (EPERM); root's acknowledgement goes to the shell even while the node is stopped (it
    /// waits for exactly that fence), and the connection's next request waits for the shell's answer: OK, or
    /// ENOENT when no fence of the node is under way there.
    @Test func onlyRootAcknowledgesAFenceAndItsAnswerKeepsTheConnectionsOrder() {
        var h = ServiceHarness(configuration: ServiceConfiguration(nodeID: 1, isClusterMember: true))
        #expect(h.service.isStopped)
        let user = h.connect("user", credentials: ClientCredentials(pid: 10, uid: 1000, gid: 100))
        let root = h.connect("root", credentials: .root)
        h.send(user, .fenceAck(tag: 1, nodeID: 3))
        #expect(h.out() == ["user: ERROR tag 1 EPERM"])

        h.send(root, .fenceAck(tag: 2, nodeID: 3))
        h.send(root, .ping(tag: 3))
        var output = h.service.takeOutput()
        #expect(output.fenceAcks.map(\.node) == [3] && output.frames.isEmpty)
        h.handle(.fenceAcknowledged(root, tag: 2, refusal: nil))
        #expect(h.out() == ["root: OK tag 2 lock 0", "root: PONG tag 3"])

        h.send(root, .fenceAck(tag: 4, nodeID: 5))
        output = h.service.takeOutput()
        #expect(output.fenceAcks.map(\.tag) == [4])
        h.handle(.fenceAcknowledged(root, tag: 4, refusal: "node 1 is not fencing node 5"))
        #expect(h.out() == ["root: ERROR tag 4 ENOENT"])
    }

    /// A dlmd without a cluster fences no node: EINVAL, and nothing for the shell.
    @Test func aStandaloneNodeHasNoFenceToAcknowledge() {
        var h = ServiceHarness()
        let root = h.connect("root", credentials: .root)
        h.send(root, .fenceAck(tag: 1, nodeID: 2))
        let output = h.service.takeOutput()
        #expect(output.fenceAcks.isEmpty)
        #expect(output.frames.map { ServiceHarness.line($0.message) } == ["ERROR tag 1 EINVAL"])
    }
}
