import ArgumentParser
import DLMWire
import Foundation
import GroupNode

/// What a cluster member's status adds: the view, quorum, and what a stopped node waits for.
enum ClusterText {
    static func statusRows(_ report: StatusReport) -> [[String]] {
        // The store's rows show the incarnation already.
        var rows: [[String]] = report.store == nil ? [["incarnation", "\(report.incarnation)"]] : []
        guard let cluster = report.cluster else {
            return rows + [["cluster", "none (standalone)"]]
        }
        rows.append(["cluster", cluster.name])
        if let view = report.view {
            rows.append([
                "view",
                "\(view.id) coordinator \(view.coordinator) members \(view.members.map(String.init).joined(separator: ","))"
                    + (view.primary ? " (primary)" : " (not primary)"),
            ])
        } else {
            rows.append(["view", "none yet"])
        }
        rows.append(["quorate", report.quorate ? "yes" : "no"])
        rows.append([
            "votes",
            "\(cluster.quorumVotes) of \(cluster.expectedVotes) expected needed"
                + (cluster.tieBreakerNode.map { ", or \(cluster.expectedVotes / 2) with node \($0) (auto_tie_breaker)" }
                    ?? ""),
        ])
        if let membership = cluster.waitingFor, !membership.isEmpty {
            rows.append(["membership", membership.joined(separator: ", ")])
        }
        rows.append([
            "waiting for",
            report.recovery.waitingFor.isEmpty ? "nothing" : report.recovery.waitingFor.joined(separator: ", "),
        ])
        rows.append(["held requests", "\(report.recovery.heldRequests)"])
        rows.append(["lock recovery", recoveryText(report.recovery)])
        return rows
    }

    /// "phase 2 of view 7, waiting for nodes 3" while a run is under way, else "view 7 done".
    static func recoveryText(_ recovery: StatusReport.Recovery) -> String {
        if let view = recovery.view, let phase = recovery.phase {
            let nodes = recovery.waitingForNodes ?? []
            return "phase \(phase) of view \(view)"
                + (nodes.isEmpty
                    ? ""
                    : ", waiting for node\(nodes.count == 1 ? "" : "s") "
                        + nodes.map(String.init).joined(separator: ","))
        }
        return recovery.recoveredView.map { $0 == 0 ? "none yet" : "view \($0) done" } ?? "-"
    }
}

struct Members: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Show each configured cluster node: its state, when it was last heard, its incarnation.",
        discussion: """
            States: self (this node), member (in this node's view), joining (heard, not yet in the view), \
            suspected (in the view, not heard lately), down (not heard), fencing (being fenced), fenced. With \
            --json, prints the "cluster" object of dlmd's status report. A standalone dlmd has no members: \
            exit status 1.
            """)

    @OptionGroup var options: CommonOptions

    func run() async throws {
        try await options.withConnection { connection in
            let report = try decodeReport(StatusReport.self, try await connection.query(.status))
            guard let cluster = report.cluster else {
                throw ToolError("dlmd on node \(report.nodeID) is standalone: it has no cluster members")
            }
            if options.json { return try printJSON(cluster) }
            let view = report.view.map { "view \($0.id)" + ($0.primary ? " (primary)" : " (not primary)") }
            print("cluster \(cluster.name), \(view ?? "no view yet"), quorate: \(report.quorate ? "yes" : "no")")
            var rows = [["node", "address", "votes", "state", "last heard", "incarnation"]]
            for node in cluster.nodes {
                rows.append([
                    "\(node.nodeID)", node.address, "\(node.votes)", node.state,
                    node.lastHeardMilliseconds.map { Text.waited(Double($0)) + " ago" } ?? "-",
                    node.incarnation.map(String.init) ?? "-",
                ])
            }
            print(Text.table(rows))
        }
    }
}

struct FenceAck: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "fence-ack",
        abstract: "Tell dlmd that a node it cannot fence is off (like dlm_tool fence_ack).",
        discussion: """
            While the fence command fails for node NODE, the cluster member forming the next view retries it, and \
            no view comes (dlmtool members shows NODE as fencing; the locks NODE mastered or held wait). Once you \
            have made sure NODE is off (powered down, or cut from the storage and the network), run this against \
            that member, the coordinator of the view being formed: it counts the fence as done and goes on. Acknowledging a node \
            that is still running can let two nodes hold the same lock. Needs root. Fails (ENOENT) if the node \
            dlmtool talks to is not fencing NODE, naming the nodes it fences.
            """)

    @OptionGroup var options: CommonOptions

    @Argument(help: "The node that is off.")
    var node: UInt32

    func run() async throws {
        try await options.withConnection { connection in
            try await connection.acknowledgeFence(of: node)
            if options.json { return try printJSON(["acknowledged": node]) }
            print("fence of node \(node) acknowledged")
        }
    }
}

struct Keygen: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Write a new cluster key (like corosync-keygen).",
        discussion: """
            Writes a random key to PATH, readable by its owner only; every node of the cluster needs a copy, \
            named by key_file in the [cluster] table. An existing file is never overwritten.
            """)

    @Argument(help: ArgumentHelp("Where to write the key, e.g. /etc/dlm/authkey.", valueName: "path"))
    var path: String

    func run() throws {
        do {
            try ClusterKey.generate().write(to: path)
        } catch {
            throw ToolError.exit(for: ToolError("cannot write the key: \(error)"))
        }
        print("wrote a new cluster key to \(path); copy it to every node")
    }
}
