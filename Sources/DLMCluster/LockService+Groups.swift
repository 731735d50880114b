import DLMCore
import DLMWire

/// Lockspace groups (docs/RECOVERY.md, "Lockspace groups"): a lockspace is shared by the members that use it, and
/// its directory is spread over them alone. Every recovery run begins with phase 0, in which each member sends
/// every other one the lockspaces it belongs to (those in its engine, or that a run agreed it joined) and those it
/// asks to join; from the same lists every member computes the same groups (`agreeGroups`). A member that leaves
/// the view leaves its groups.
///
/// A client's open of a lockspace whose group this node is not in waits (its connection's later frames behind
/// it): the node asks the view's coordinator, its lowest member, for a run (`recoveryRequest`); the coordinator
/// starts one (`recoveryStart`) for every member, and the open runs when it ends. Its value-block length must be
/// the group's: a join that names another one is refused (EEXIST), and an open that names none takes the group's.
/// A run in a view is numbered within it (`RecoveryRun`); a new view starts from run 0.
///
/// A run rebuilds the directories of the groups it changes only (`settleDirectory`); the others answer lookups
/// during the run (`Mastering.directoryServesDuringRecovery`).
///
/// A node leaves a group when it leaves the view, or once a client released the lockspace here and nothing of it
/// is left on the node (`leaveReleasedGroups`): it asks for a run and leaves the lockspace out of its phase-0 report.
/// A release succeeds only when the node's engine holds no lock of the lockspace, so the leaver masters no lock
/// of it: its directory is rebuilt over the others as for any change of the group, the leaver forgets the
/// resources it still counted as its own, and its report carries the fencing-token floor of the released
/// lockspace, above every token it issued there.
enum RecoveryRun {
    /// A run's id is its view's number times 2^`bits` plus its number within the view: ids grow with views and
    /// within a view, and the messages of recovery carry them where they carried the view.
    static let bits = 20
    static let lastNumber: UInt64 = (1 << bits) - 1

    static func first(ofView view: UInt64) -> UInt64 { view << bits }
    static func view(_ run: UInt64) -> UInt64 { run >> bits }
    static func number(_ run: UInt64) -> UInt64 { run & lastNumber }
    static func describe(_ run: UInt64) -> String {
        number(run) == 0 ? "\(view(run))" : "\(view(run)) run \(number(run))"
    }
}

/// A lockspace's group as phase 0 agreed it.
struct LockspaceGroup: Equatable {
    var members: [UInt32]
    /// The value-block length of the group (0: none named yet, each node's default).
    var valueBlockLength: Int
}

extension LockService {
    /// This node's phase-0 list: the lockspaces it belongs to (with their lengths), then those it asks to join;
    /// not those it leaves.
    func lockspaceMemberships() -> [LockspaceMembership] {
        var lengths: [[UInt8]: Int] = mastering.joined.filter { !mastering.leaving.contains($0.key) }
        for info in engine.allLockspaces { lengths[info.name] = info.valueBlockLength }
        var list = lengths.map { LockspaceMembership(name: $0.key, valueBlockLength: $0.value, joining: false) }
        for (name, length) in mastering.joining where lengths[name] == nil {
            list.append(LockspaceMembership(name: name, valueBlockLength: length, joining: true))
        }
        return list.sorted { $0.name.lexicographicallyPrecedes($1.name) }
    }

    /// The lockspaces whose group this node is in, as the last phase 0 agreed them, and those it asks to join.
    public var lockspaceGroupsOfThisNode: Set<[UInt8]> {
        let me = configuration.nodeID
        var names = Set(mastering.joining.keys)
        for (name, group) in mastering.groups where group.members.contains(me) { names.insert(name) }
        return names
    }

    /// The groups every member computes alike from the members' phase-0 lists. A group's length is that of its
    /// lowest member that belonged to it already, else of its lowest joiner that named one. A joiner that named
    /// another length is left out (`refused`); a member that belonged to it already is never left out.
    static func agreeGroups(_ lists: [UInt32: [LockspaceMembership]]) -> (
        groups: [[UInt8]: LockspaceGroup], refused: [UInt32: [[UInt8]: Int]]
    ) {
        var entries: [[UInt8]: [(node: UInt32, membership: LockspaceMembership)]] = [:]
        for node in lists.keys.sorted() {
            for membership in lists[node]! { entries[membership.name, default: []].append((node, membership)) }
        }
        var groups: [[UInt8]: LockspaceGroup] = [:]
        var refused: [UInt32: [[UInt8]: Int]] = [:]
        for (name, list) in entries {
            let length =
                list.first { !$0.membership.joining }?.membership.valueBlockLength
                ?? list.first { $0.membership.valueBlockLength != 0 }?.membership.valueBlockLength ?? 0
            var members: [UInt32] = []
            for (node, membership) in list {
                if !membership.joining || membership.valueBlockLength == 0 || length == 0
                    || membership.valueBlockLength == length
                {
                    members.append(node)
                } else {
                    refused[node, default: [:]][name] = length
                }
            }
            groups[name] = LockspaceGroup(members: members, valueBlockLength: length)
        }
        return (groups, refused)
    }

    /// The end of phase 0: every member keeps the highest fencing-token floor of each lockspace that the members
    /// reported (those they keep as directory nodes, and their engines'). A run within a view raises no engine's
    /// floor above the tokens of that view (its floor is the view's), and may move a lockspace's directory to
    /// other nodes: without this, a resource dropped before the run and mastered anew after it by another node
    /// could start below its last token.
    mutating func takeTokenFloors(_ reports: [UInt32: LockspaceReport]) {
        for report in reports.values {
            for floor in report.tokenFloors {
                mastering.tossFloors[floor.lockspace] = max(mastering.tossFloors[floor.lockspace] ?? 0, floor.floor)
            }
        }
    }

    /// The end of phase 0: the groups of every member's list; this node's joins are agreed or refused.
    mutating func takeGroups(_ lists: [UInt32: [LockspaceMembership]]) {
        let me = configuration.nodeID
        let (groups, refused) = Self.agreeGroups(lists)
        mastering.groups = groups
        mastering.groupsAreTheView = groups.values.allSatisfy { $0.members == mastering.members }
        // (A member stays one, with the group's length, after a release of the lockspace.)
        for (name, group) in groups where group.members.contains(me) && group.valueBlockLength != 0 {
            mastering.joined[name] = group.valueBlockLength
        }
        // The lockspaces this node left: what it still counted as its own resources there is forgotten (its engine
        // holds none of them since the release; the directory is rebuilt without it).
        var left = Set<[UInt8]>()
        for name in mastering.leaving where groups[name]?.members.contains(me) != true {
            left.insert(name)
            mastering.joined[name] = nil
            mastering.released.remove(name)
        }
        mastering.leaving = []
        if !left.isEmpty {
            for key in mastering.masters.keys(masteredBy: me) where left.contains(key.lockspace) {
                mastering.masters[key] = nil
            }
            output.notices.append(
                ("left lockspaces", ["lockspaces": left.map(\.displayName).sorted().joined(separator: ",")]))
        }
        for (name, length) in mastering.joining {
            if let group = groups[name], group.members.contains(me) {
                if mastering.joined[name] == nil { mastering.joined[name] = length }
                mastering.joining[name] = nil
            } else if let groupLength = refused[me]?[name] {
                mastering.joinRefusals[name] = groupLength
                mastering.joining[name] = nil
            }
        }
    }

    /// A new run: the nodes that left the view leave their groups at once (until phase 0 agrees them again, the
    /// directory nodes of this run are of the groups without them).
    mutating func dropDepartedFromGroups() {
        let members = mastering.viewMembers
        for (name, group) in mastering.groups {
            let staying = group.members.filter { members[$0] != nil }
            mastering.groups[name] =
                staying.isEmpty ? nil : LockspaceGroup(members: staying, valueBlockLength: group.valueBlockLength)
        }
        mastering.groupsAreTheView = mastering.groups.values.allSatisfy { $0.members == mastering.members }
    }

    /// This node's part of phase 0: its report, to every other member; the phase ends once every member's came.
    mutating func sendLockspaceReport() {
        guard let run = mastering.recovery?.view else { return }
        // (Decided once per run: a leaver serves none of the lockspace's requests from now on, `runsDuringRecovery`.)
        var leaving = Set<[UInt8]>()
        let me = configuration.nodeID
        for name in mastering.released where mastering.isGroupMember(name, me) && !usesLockspace(name) {
            leaving.insert(name)
        }
        mastering.leaving = leaving
        // The floors it keeps as a directory node, and its engine's, which are above the tokens of every resource
        // it freed: a REMOVE that a directory node dropped as sent before a run (its sender dropped the resource)
        // left the resource's last token with the engine of its old master only. Those of lockspaces it released
        // too: the resource may have been dropped after its lockspace was (LockspaceChurnTests seed 261824: a
        // released lockspace's floor was not reported, and the next master issued a token again).
        var floors = mastering.tossFloors
        for name in engine.namesWithFencingTokenFloors {
            let floor = engine.fencingTokenFloor(named: name)
            if floor > floors[name] ?? 0 { floors[name] = floor }
        }
        let report = LockspaceReport(
            recovered: mastering.recoveredView, departed: mastering.recovery!.departed.sorted(),
            unsettled: mastering.unsettledLockspaces.sorted { $0.lexicographicallyPrecedes($1) },
            lockspaces: lockspaceMemberships(),
            tokenFloors: floors.map { LockspaceTokenFloor(lockspace: $0.key, floor: $0.value) }.sorted {
                $0.lockspace.lexicographicallyPrecedes($1.lockspace)
            })
        mastering.recovery!.lockspaceReports[configuration.nodeID] = report
        for node in mastering.members where node != configuration.nodeID {
            send(.recoverLockspaces(run: run, report), to: node)
        }
        mastering.recovery!.done[0, default: []].insert(configuration.nodeID)
        advanceRecovery()
    }

    /// The end of phase 0, once the groups are agreed: the lockspaces whose directory this run rebuilds, which every
    /// member computes alike from the same reports. All of them when the members' last completed runs differ (a new
    /// life, a member that missed one: their directories are not of the same groups); else those whose group
    /// changed since that run, that lost a departed member (a new life of a node keeps its node id, not its
    /// entries), or whose entries a run since then began to rebuild on some member. Their entries are dropped here
    /// (the directory is made anew when every lockspace's are), and then the registrations that came meanwhile
    /// apply. The other lockspaces' entries stand: their members and masters are the same.
    mutating func settleDirectory(_ reports: [UInt32: LockspaceReport]) {
        let known = Set(mastering.settledGroups.keys).union(mastering.groups.keys).union(mastering.unsettledLockspaces)
        var rebuilt: Set<[UInt8]>?
        let recovered = Set(reports.values.map(\.recovered))
        if recovered.count == 1, recovered.first! != 0 {
            let departed = Set(reports.values.flatMap(\.departed))
            var names = Set(reports.values.flatMap(\.unsettled))
            for name in known {
                let before = mastering.settledGroups[name]?.members
                if before != mastering.groups[name]?.members || before?.contains(where: departed.contains) == true {
                    names.insert(name)
                }
            }
            if !names.isSuperset(of: known) { rebuilt = names }
        }
        mastering.recovery!.rebuiltDirectories = rebuilt
        if let rebuilt {
            mastering.unsettledLockspaces.formUnion(rebuilt)
            if !rebuilt.isEmpty {
                var last: (lockspace: [UInt8], drops: Bool)?
                mastering.directory.removeAll { key, _ in
                    if let last, last.lockspace == key.lockspace { return last.drops }
                    let drops = rebuilt.contains(key.lockspace)
                    last = (key.lockspace, drops)
                    return drops
                }
            }
        } else {
            mastering.unsettledLockspaces.formUnion(known)
            // (Made as large as this node's share of the new directory will be: growing it from empty rehashed
            // every entry at each doubling, the last of them a single step of hundreds of milliseconds with a
            // million locks.)
            let share =
                mastering.directory.count * mastering.recovery!.previousMemberCount / max(mastering.members.count, 1)
            discard(mastering.directory, count: mastering.directory.count)
            mastering.directory = ShardedDictionary(minimumCapacity: share)
        }
        for (node, keys) in mastering.recovery!.earlyRegistrations {
            for key in keys { mastering.directory[key] = node }
        }
        mastering.recovery!.earlyRegistrations = []
    }

    /// Whether this run rebuilds the directory of `lockspace` (phase 1's walks).
    func rebuildsDirectory(of lockspace: [UInt8], _ work: inout RecoveryWork) -> Bool {
        guard let rebuilt = mastering.recovery?.rebuiltDirectories else { return true }
        if let last = work.lastDirectory, last.lockspace == lockspace { return last.rebuilds }
        let rebuilds = rebuilt.contains(lockspace)
        work.lastDirectory = (lockspace, rebuilds)
        return rebuilds
    }

    // MARK: Joins

    /// A client's open of a lockspace across nodes: answered here when its join was refused or it names a length
    /// the group does not have; held until a run when this node is not in the lockspace's group (true for both:
    /// the open is not run now).
    mutating func opensThroughGroup(_ message: ClientMessage, from id: ConnectionID) -> Bool {
        guard mastersAcrossNodes, case .openLockspace(let tag, let name, let length, let create, _) = message else {
            return false
        }
        let local = engine.lockspace(named: name).flatMap { engine.lockspaceInfo($0) }
        if let groupLength = mastering.joinRefusals[name], local == nil {
            deliver(id, .error(tag: tag, status: .exists, message: Self.lengthMismatch(name, groupLength, length)))
            return true
        }
        if mastering.groups[name]?.members.contains(configuration.nodeID) == true || local != nil {
            let groupLength = mastering.groups[name]?.valueBlockLength ?? 0
            if local == nil, length != 0, groupLength != 0, Int(length) != groupLength {
                deliver(id, .error(tag: tag, status: .exists, message: Self.lengthMismatch(name, groupLength, length)))
                return true
            }
            return false
        }
        // (Opening one that does not exist is ENOENT, from the engine, as on one node.)
        guard create else { return false }
        if mastering.joining[name, default: 0] == 0 { mastering.joining[name] = Int(length) }
        clients[Int(id.slot)].awaitingReply = true
        mastering.joinWaiters.append((id, message))
        requestRun()
        return true
    }

    static func lengthMismatch(_ name: [UInt8], _ groupLength: Int, _ asked: UInt8) -> String {
        "lockspace \(name.displayName) has value blocks of \(groupLength) bytes on the nodes that use it; "
            + "this open asked for \(asked)"
    }

    /// The value-block length an open that names none creates a lockspace with: its group's, if it has one.
    func groupLength(of name: [UInt8]) -> Int? {
        guard mastersAcrossNodes, engine.lockspace(named: name) == nil,
            let length = mastering.groups[name]?.valueBlockLength, length != 0
        else { return nil }
        return length
    }

    /// The opens that waited for a run run again (when it ends).
    mutating func retryJoinWaiters() {
        let waiters = mastering.joinWaiters
        mastering.joinWaiters = []
        for waiter in waiters { retry(waiter.message, from: waiter.connection) }
        mastering.joinRefusals = [:]
    }

    /// Asks the view's coordinator for a run (one to itself is taken at once).
    mutating func requestRun() {
        guard mastering.installedView != 0, let coordinator = mastering.members.first else { return }
        if coordinator == configuration.nodeID {
            startRequestedRun(for: coordinator)
        } else {
            send(.recoveryRequest(view: mastering.installedView), to: coordinator)
        }
    }

    /// As the view's coordinator: a member asked for a run. None starts when the run under way is still in phase 0
    /// and the member's list has not come yet (it will name the join); else a new run starts on every member.
    mutating func startRequestedRun(for node: UInt32) {
        guard mastering.installedView != 0, mastering.members.first == configuration.nodeID,
            mastering.viewMembers[node] != nil
        else { return }
        if let recovery = mastering.recovery, !recovery.abandoned, recovery.phase == 0,
            recovery.done[0]?.contains(node) != true
        {
            return
        }
        // (The coordinator starts each run it asks for itself, at once: its own latest run is the view's.)
        let current = max(mastering.recovery?.view ?? 0, mastering.recoveredView)
        guard RecoveryRun.view(current) == mastering.installedView, RecoveryRun.number(current) < RecoveryRun.lastNumber
        else { return }
        let run = current + 1
        for member in mastering.members where member != configuration.nodeID {
            send(.recoveryStart(run: run), to: member)
        }
        startRecovery(run, members: mastering.viewMembers)
    }

    // MARK: Leaves

    /// Whether this node still uses a lockspace a client released here: its engine holds it again (a client opened
    /// it, or another node's request made it), it asks to join it, a client of it holds a lock mastered elsewhere
    /// (a release does not end those), or a request waits for a lookup of one of its resources.
    mutating func usesLockspace(_ name: [UInt8]) -> Bool {
        if engine.lockspace(named: name) != nil || mastering.joining[name] != nil
            || mastering.copies.perLockspace[name] != nil
        {
            return true
        }
        return mastering.awaitingLookup.keys.contains { $0.lockspace == name }
            || mastering.peerRequestsAwaitingLookup.keys.contains { $0.lockspace == name }
    }

    /// Asks for a run when a released lockspace is no longer used here (once per completed run: a run that ends
    /// with the node still in the group, its request lost, is followed by another).
    mutating func leaveReleasedGroups() {
        guard mastersAcrossNodes, !isRecovering, !isStopped, mastering.leaveAskedAfter != mastering.recoveredView
        else { return }
        let me = configuration.nodeID
        let released = mastering.released.filter { mastering.isGroupMember($0, me) }
        mastering.released = released
        guard released.contains(where: { !usesLockspace($0) }) else { return }
        mastering.leaveAskedAfter = mastering.recoveredView
        requestRun()
    }
}
