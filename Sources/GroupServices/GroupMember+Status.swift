extension GroupMember {
    /// What this member waits for before its membership is settled, for status reports (dlm_tool's "wait ringid /
    /// quorum / fencing"): `view agreement` while a view change is under way (or due, or no view was ever installed),
    /// `fencing node N` for each fence the coordinator waits on, `quorum` in a view that is not primary, and
    /// `barrier NAME` for each barrier this member entered that has not completed. Empty when settled.
    public var waitingFor: [String] {
        guard isStarted else { return ["start"] }
        guard !wasFenced else { return ["restart (this life was fenced)"] }
        var waits: [String] = []
        if let proposal, proposal.members.first == me {
            if let fencing = proposal.fencing {
                waits += fencing.keys.sorted().map { "fencing node \($0)" }
                if fencing.isEmpty { waits.append("view agreement") }
            } else {
                let silent = proposal.members.filter { proposal.reports[$0] == nil }
                waits.append(
                    silent.isEmpty
                        ? "view agreement"
                        : "view agreement (flush reports from \(silent.map(\.description).joined(separator: ",")))")
            }
        } else if promised != nil || view == nil || view!.members != aliveMembers {
            waits.append("view agreement")
        } else if !isPrimary {
            waits.append("quorum")
        }
        waits += myBarriers.sorted().map { "barrier \($0)" }
        return waits
    }

    /// The nodes whose fence this member, as coordinator, waits on before it installs the view it proposed.
    public var fencing: [NodeID] {
        guard let fencing = proposal?.fencing else { return [] }
        return fencing.keys.sorted()
    }
}
