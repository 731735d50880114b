import Testing

@testable import GroupNode

/// The CPG group of each lockspace (docs/GROUPS.md, "The corosync provider").
struct CorosyncLinkTests {
    /// A lockspace's group is `dlmd:CLUSTER:ls:NAME` while that fits CPG's 128 bytes; past it, the cluster's part
    /// cut and a hash of the lockspace's name: at most 128 bytes, and one group per lockspace.
    @Test func aLockspaceGroupsNameFitsCPG() {
        #expect(
            CorosyncLink.lockspaceGroup(cluster: "test", lockspace: Array("shared".utf8))
                == Array("dlmd:test:ls:shared".utf8))
        let longCluster = String(repeating: "c", count: 120)
        let names = (0..<50).map { Array("lockspace-\($0)-".utf8) + [UInt8](repeating: 0x61, count: 40) }
        let groups = names.map { CorosyncLink.lockspaceGroup(cluster: longCluster, lockspace: $0) }
        #expect(groups.allSatisfy { $0.count == CorosyncLink.maxGroupName })
        #expect(groups.allSatisfy { $0.starts(with: Array("dlmd:ccc".utf8)) })
        #expect(Set(groups).count == names.count)
        // Exactly 128 bytes is kept as it is.
        let fits = [UInt8](repeating: 0x62, count: 128 - "dlmd:test:ls:".utf8.count)
        #expect(CorosyncLink.lockspaceGroup(cluster: "test", lockspace: fits) == Array("dlmd:test:ls:".utf8) + fits)
    }

    /// A node keeps at most `GroupNode.maxLockspaceGroups` lockspace groups: those of the first lockspaces in name
    /// order.
    @Test func aNodeKeepsAtMostMaxLockspaceGroups() {
        let names = Set((0..<200).map { Array(String(format: "ls%03d", $0).utf8) })
        let groups = GroupNode.lockspaceGroupNames(names, cluster: "c")
        #expect(groups.count == GroupNode.maxLockspaceGroups)
        #expect(groups.contains(Array("dlmd:c:ls:ls000".utf8)) && groups.contains(Array("dlmd:c:ls:ls127".utf8)))
        #expect(!groups.contains(Array("dlmd:c:ls:ls128".utf8)))
        #expect(GroupNode.lockspaceGroupNames([Array("a".utf8)], cluster: "c") == [Array("dlmd:c:ls:a".utf8)])
    }
}
