/// Group services of one node when corosync provides membership, quorum and total order (`[cluster] provider =
/// "corosync"`, docs/GROUPS.md, "The corosync provider"): the same views, fencing, ordered messages, barriers and
/// process groups as `GroupMember`, decided from what corosync delivers instead of from heartbeats.
///
/// - Every dlmd joins one CPG group. CPG delivers the group's configuration changes and messages in one total
///   order (extended virtual synchrony), so members that see the same deliveries decide the same things.
/// - A *round* starts at each configuration change, and at each quorum change a member multicasts
///   (`quorumChanged`): every member then announces its life (incarnation), its highest view number, its quorum
///   and what it knows of earlier primary views. Once every process of the configuration announced in the round,
///   each member decides the same view: number one above the highest announced, coordinator the lowest node,
///   members the announced lives (a life some primary view left out is not taken back), primary when every
///   announcement said quorate (votequorum's answer, as dlm_controld waits for).
/// - Before a primary view, the nodes that may hold an older primary view and are not in it are fenced (and the
///   nodes corosync does not count, unless known fenced since): the coordinator runs the fence command and
///   multicasts `fenced`; once all are, it persists the view's number and multicasts `install`, on which every
///   member installs the view.
/// - Ordered messages, barriers and process group joins are CPG messages, delivered in the same order everywhere.
///
/// Like `GroupMember`, it does no I/O and reads no clock.
public struct CorosyncMember: MembershipCore {
    public let id: NodeID
    /// corosync's nodelist.
    public let nodes: [NodeID]
    /// How long after a failed fence the coordinator tries again.
    public let fenceRetryInterval: UInt64
    public private(set) var incarnation: UInt64 = 0
    public private(set) var isStarted = false
    public private(set) var now: UInt64 = 0
    public private(set) var view: View?
    public private(set) var isPrimary = false
    public private(set) var persistent = PersistentState()
    /// The connection to corosync ended: nothing more is decided (`ProviderEvent.lost`).
    public private(set) var lostReason: String?
    /// A primary view left this life out (a fence that did not stop it): it takes part in nothing more.
    public private(set) var wasFenced = false
    /// votequorum's answer, as last reported.
    public private(set) var quorate = false
    /// Whether votequorum answered yet: this member announces itself only then, so that a node joining does not
    /// make every member install a view without quorum first.
    var quorumKnown = false
    /// Whether this member announced itself in the round.
    var announced = false
    /// The nodes votequorum last counted as members.
    var quorumMembers: Set<NodeID> = []
    /// Nodes fenced while corosync did not count them, since this member's views were last without quorum: no life
    /// there took part in a primary view since (the other side of a partition cannot have been quorate while this one
    /// was), so none is fenced again until corosync counts it. Not persisted, and forgotten at a view without quorum:
    /// a restarted or non-quorate member cannot know what the other side did meanwhile.
    public private(set) var fencedAbsent: Set<NodeID> = []
    /// Nodes that corosync dropped from the group (node down) and that votequorum still counted when last heard: its
    /// quorate flag may be from before their fall, so this member does not announce itself until votequorum
    /// answers without them (dlm_controld's "wait for quorum" does the same). A node on the losing side of a
    /// partition so never takes a stale "quorate" for its own.
    var awaitingQuorum: Set<NodeID> = []

    public var me: Member { Member(node: id, incarnation: incarnation) }

    /// The round: the CPG configuration and the quorum changes delivered since it.
    var configuration: [ProcessAddress]?
    var quorumChanges: UInt32 = 0
    var announcements: [ProcessAddress: CorosyncMessage.Announcement] = [:]
    /// The lives of the configuration's processes, as they announced themselves.
    var lives: [ProcessAddress: UInt64] = [:]

    struct Decision: Sendable {
        var view: View
        var primary: Bool
        var lastPrimary: [Member]
        var toFence: Set<NodeID>
    }
    /// The round's view, decided and waiting for fences, then for its coordinator's `install`.
    var decision: Decision?
    /// As the decided view's coordinator: whether `install` was multicast.
    var installSent = false
    /// Fences this node runs as coordinator (nil: under way), or a time to try again.
    var fenceRetries: [NodeID: UInt64?] = [:]
    /// Nodes fenced since the last view was installed (`fenced` messages delivered).
    var fencedSinceInstall: Set<NodeID> = []
    var lastPrimaryMembers: [Member] = []

    // Ordered messaging in the installed view.
    var nextLocalSeq: UInt64 = 1
    var delivered: UInt64 = 0
    var myGroups: Set<String> = []
    /// Every member's process groups (from announcements, joins and leaves).
    var memberGroups: [ProcessAddress: Set<String>] = [:]
    public private(set) var groups: [String: Set<Member>] = [:]
    var barrierEntries: [String: Set<Member>] = [:]
    var myBarriers: Set<String> = []

    public init(id: NodeID, nodes: [NodeID], fenceRetryInterval: UInt64 = 250 * Settings.millisecond) {
        self.id = id
        self.nodes = nodes
        self.fenceRetryInterval = fenceRetryInterval
    }

    public func fencedIncarnation(of node: NodeID) -> UInt64? { persistent.fencedIncarnations[node.rawValue] }

    /// The lives of the group's processes that announced themselves (this one always).
    public var aliveMembers: [Member] {
        var alive: Set<Member> = [me]
        for address in configuration ?? [] {
            if let incarnation = lives[address],
                !persistent.isFenced(Member(node: address.node, incarnation: incarnation))
            {
                alive.insert(Member(node: address.node, incarnation: incarnation))
            }
        }
        return alive.sorted()
    }

    public var fencing: [NodeID] { fenceRetries.keys.sorted() }

    public var waitingFor: [String] {
        guard isStarted else { return ["start"] }
        if let lostReason { return ["corosync (\(lostReason))"] }
        guard !wasFenced else { return ["restart (this life was fenced)"] }
        guard let configuration, quorumKnown else { return ["corosync membership"] }
        var waits: [String] = []
        if !awaitingQuorum.isEmpty {
            waits.append(
                "quorum update (corosync dropped node \(awaitingQuorum.sorted().map(\.description).joined(separator: ",")))"
            )
        } else if let decision {
            waits += decision.toFence.subtracting(fencedSinceInstall).sorted().map { "fencing node \($0)" }
        } else if view?.members != aliveMembers || announcements.count < configuration.count {
            let silent = configuration.filter { announcements[$0] == nil }
            waits.append(
                silent.isEmpty
                    ? "view agreement"
                    : "view agreement (announcements from \(silent.map(\.description).joined(separator: ",")))")
        } else if !isPrimary {
            waits.append("quorum")
        }
        waits += myBarriers.sorted().map { "barrier \($0)" }
        return waits
    }

    public mutating func handle(_ input: GroupInput, into effects: inout [GroupEffect]) {
        switch input {
        case .start(let incarnation, let persisted, let now):
            precondition(!isStarted, "a node starts once; a restart is a new CorosyncMember")
            precondition(incarnation > 0, "incarnations start at 1")
            self.incarnation = incarnation
            persistent = persisted
            self.now = now
            isStarted = true
        case .tick(let now):
            guard isStarted else { return }
            self.now = max(self.now, now)
            retryFences(into: &effects)
        case .provider(let event):
            // A fenced life still announces itself (the others wait for every process of the group), but decides
            // nothing.
            guard isStarted, lostReason == nil else { return }
            onProvider(event, into: &effects)
        case .fenced(let node, let ok):
            guard isStarted, lostReason == nil, !wasFenced else { return }
            onFenced(node, ok: ok, into: &effects)
        case .multicast(let payload, let group):
            guard isStarted, lostReason == nil, !wasFenced else { return }
            effects.append(
                .multicastToProvider(
                    CorosyncMessage.data(localSeq: nextLocalSeq, group: group, payload: payload).encoded()))
            nextLocalSeq += 1
        case .enterBarrier(let name):
            guard isStarted, let view, lostReason == nil, !wasFenced, !myBarriers.contains(name) else {
                if view == nil { effects.append(.barrierAborted(name, view: nil)) }
                return
            }
            myBarriers.insert(name)
            effects.append(.multicastToProvider(CorosyncMessage.barrier(name, view: view.id.number).encoded()))
        case .joinGroup(let name):
            guard isStarted, lostReason == nil, !wasFenced else { return }
            myGroups.insert(name)
            effects.append(.multicastToProvider(CorosyncMessage.join(name).encoded()))
        case .leaveGroup(let name):
            guard isStarted, lostReason == nil, !wasFenced else { return }
            myGroups.remove(name)
            effects.append(.multicastToProvider(CorosyncMessage.leave(name).encoded()))
        case .received, .heard:
            break
        }
    }

    // MARK: Rounds

    mutating func onProvider(_ event: ProviderEvent, into effects: inout [GroupEffect]) {
        switch event {
        case .configuration(let members, let nodesDown):
            let members = members.sorted()
            awaitingQuorum.formUnion(quorumMembers.intersection(nodesDown))
            awaitingQuorum.subtract(members.map(\.node))
            for address in lives.keys where !members.contains(address) {
                lives[address] = nil
                memberGroups[address] = nil
            }
            configuration = members
            quorumChanges = 0
            startRound(into: &effects)
        case .quorum(let quorate, let members):
            quorumMembers = Set(members)
            awaitingQuorum.formIntersection(quorumMembers)
            // Counted again: a dlmd there now is in this partition, and any life there is told apart as usual.
            fencedAbsent.subtract(quorumMembers)
            guard quorumKnown else {
                quorumKnown = true
                self.quorate = quorate
                announce(into: &effects)
                return
            }
            if quorate != self.quorate {
                self.quorate = quorate
                // A fenced life's quorum does not count: it starts no round.
                if configuration != nil && !wasFenced {
                    effects.append(.multicastToProvider(CorosyncMessage.quorumChanged(quorate: quorate).encoded()))
                    return
                }
            }
            announce(into: &effects)
        case .delivered(let bytes, let sender):
            guard let configuration, configuration.contains(sender),
                let message = try? CorosyncMessage(decoding: bytes)
            else { return }
            onMessage(message, from: sender, into: &effects)
        case .lost(let reason):
            lostReason = reason
            // Requests must be held from now on: this node is out of the cluster's views, and the others fence it.
            let number = max(persistent.highestViewNumber, view?.id.number ?? 0) + 1
            persistent.highestViewNumber = number
            install(View(id: ViewID(number: number, coordinator: id), members: [me]), primary: false, into: &effects)
        }
    }

    mutating func startRound(into effects: inout [GroupEffect]) {
        announcements = [:]
        decision = nil
        installSent = false
        fenceRetries = [:]
        announced = false
        announce(into: &effects)
    }

    mutating func announce(into effects: inout [GroupEffect]) {
        guard let configuration, quorumKnown, awaitingQuorum.isEmpty, !announced else { return }
        announced = true
        let announcement = CorosyncMessage.Announcement(
            configuration: configuration, quorumChanges: quorumChanges, incarnation: incarnation,
            highestViewNumber: max(persistent.highestViewNumber, view?.id.number ?? 0), quorate: quorate,
            fenceCandidates: persistent.fenceCandidates.map(NodeID.init(rawValue:)), lastPrimary: lastPrimaryMembers,
            fenced: persistent.fencedLives, groups: myGroups.sorted(),
            absentUnfenced: nodes.filter {
                !quorumMembers.contains($0) && !fencedAbsent.contains($0)
            }, fencedAbsent: fencedAbsent.sorted())
        effects.append(.multicastToProvider(CorosyncMessage.announce(announcement).encoded()))
    }

    mutating func onMessage(_ message: CorosyncMessage, from sender: ProcessAddress, into effects: inout [GroupEffect])
    {
        if wasFenced {
            switch message {
            case .announce, .quorumChanged: break
            default: return
            }
        }
        switch message {
        case .announce(let announcement):
            guard announcement.configuration == configuration, announcement.quorumChanges == quorumChanges else {
                return  // sent in an earlier round
            }
            announcements[sender] = announcement
            lives[sender] = announcement.incarnation
            memberGroups[sender] = Set(announcement.groups)
            decide(into: &effects)
        case .quorumChanged:
            quorumChanges &+= 1
            startRound(into: &effects)
        case .install(let number):
            guard let decision, decision.view.id.number == number, sender.node == decision.view.id.coordinator
            else { return }
            installDecided(into: &effects)
        case .fenced(let node):
            guard !wasFenced else { return }
            fencedSinceInstall.insert(node)
            if !quorumMembers.contains(node) { fencedAbsent.insert(node) }
            installIfFenced(into: &effects)
        case .data(let localSeq, let group, let payload):
            guard let view, let life = life(of: sender), view.contains(life) else { return }
            if let group, !(groups[group]?.contains(me) ?? false) { return }
            delivered += 1
            effects.append(
                .deliver(
                    Delivery(
                        view: view.id, seq: delivered, sender: life, localSeq: localSeq, group: group,
                        payload: payload)))
        case .barrier(let name, let number):
            guard let view, view.id.number == number, let life = life(of: sender), view.contains(life) else { return }
            barrierEntries[name, default: []].insert(life)
            if Set(view.members).isSubset(of: barrierEntries[name]!) {
                barrierEntries[name] = nil
                if myBarriers.remove(name) != nil { effects.append(.barrierCompleted(name, view: view.id)) }
            }
        case .join(let name), .leave(let name):
            var joined = false
            if case .join = message { joined = true }
            if joined {
                memberGroups[sender, default: []].insert(name)
            } else {
                memberGroups[sender]?.remove(name)
            }
            guard let view, let life = life(of: sender), view.contains(life) else { return }
            let isIn = groups[name]?.contains(life) ?? false
            guard joined != isIn else { return }
            if joined {
                groups[name, default: []].insert(life)
            } else {
                groups[name]?.remove(life)
                if groups[name]?.isEmpty ?? false { groups[name] = nil }
            }
            effects.append(
                .groupEvent(
                    GroupEvent(
                        group: name, member: life, kind: joined ? .joined : .left, view: view.id, byViewChange: false)))
        }
    }

    func life(of address: ProcessAddress) -> Member? {
        lives[address].map { Member(node: address.node, incarnation: $0) }
    }

    /// Every process announced: the round's view, the same at every member.
    mutating func decide(into effects: inout [GroupEffect]) {
        guard !wasFenced, let configuration, decision == nil,
            configuration.allSatisfy({ announcements[$0] != nil })
        else { return }
        let all = configuration.map { announcements[$0]! }
        for life in all.flatMap(\.fenced) { persistent.recordFenced(life) }
        // What one member knows of a node fenced while corosync did not count it, every member takes.
        fencedAbsent.formUnion(Set(all.flatMap(\.fencedAbsent)).subtracting(quorumMembers))
        if persistent.isFenced(me) {
            wasFenced = true
            return
        }
        // A fenced life's word (on quorum, on earlier views) does not count.
        var members: [NodeID: Member] = [:]
        var memberAnnouncements: [NodeID: CorosyncMessage.Announcement] = [:]
        for (address, announcement) in zip(configuration, all) {
            let life = Member(node: address.node, incarnation: announcement.incarnation)
            guard !persistent.isFenced(life) else { continue }
            if let other = members[life.node], other.incarnation >= life.incarnation { continue }
            members[life.node] = life
            memberAnnouncements[life.node] = announcement
        }
        let counted = Array(memberAnnouncements.values)
        let number = (all.map(\.highestViewNumber).max() ?? 0) + 1
        let view = View(id: ViewID(number: number, coordinator: members.keys.min()!), members: Array(members.values))
        let primary = counted.allSatisfy(\.quorate)
        let lastPrimary = Set(counted.flatMap(\.lastPrimary) + lastPrimaryMembers).sorted()
        var toFence: Set<NodeID> = []
        if primary {
            // The nodes that may hold a primary view some member knows of, and the nodes corosync does not count now
            // that no member knows to be fenced since: a dlmd there, cut off before this one started, may hold a
            // primary view that no member ever saw (Pacemaker's startup fencing fences such nodes too).
            // A node some member fenced since corosync last counted it needs no fence again: corosync has not
            // counted it since, so no life there took part in anything.
            toFence = Set(
                counted.flatMap(\.fenceCandidates) + lastPrimary.map(\.node) + counted.flatMap(\.absentUnfenced)
            )
            .subtracting(all.flatMap(\.fencedAbsent)).subtracting(members.keys)
        }
        decision = Decision(view: view, primary: primary, lastPrimary: lastPrimary, toFence: toFence)
        if view.id.coordinator == id {
            for node in toFence.subtracting(fencedSinceInstall).sorted() {
                fenceRetries[node] = .some(nil)
                effects.append(.fence(node))
            }
        }
        installIfFenced(into: &effects)
    }

    /// Every fence of the decided view is done: its coordinator persists the view's number, then multicasts
    /// `install`; every member installs the view when that message comes (`installDecided`). So a coordinator that
    /// dies before its members install a number has persisted it, and its next life never reuses it for another
    /// view (the number comes from the announcements, which all members share, not from the coordinator alone).
    mutating func installIfFenced(into effects: inout [GroupEffect]) {
        guard let decision, decision.toFence.isSubset(of: fencedSinceInstall), decision.view.id.coordinator == id,
            !installSent
        else { return }
        installSent = true
        persistent.highestViewNumber = max(persistent.highestViewNumber, decision.view.id.number)
        effects.append(.persist(persistent))
        effects.append(.multicastToProvider(CorosyncMessage.install(view: decision.view.id.number).encoded()))
    }

    /// The coordinator's `install` came: the decided view is installed (its fences are done: the coordinator
    /// waited for them, and their `fenced` messages came before this one).
    mutating func installDecided(into effects: inout [GroupEffect]) {
        guard let decision else { return }
        self.decision = nil
        installSent = false
        fenceRetries = [:]
        if decision.primary {
            for life in decision.lastPrimary where !decision.view.contains(life) { persistent.recordFenced(life) }
            lastPrimaryMembers = decision.view.members
            persistent.fenceCandidates = decision.view.nodes.map(\.rawValue)
        }
        install(decision.view, primary: decision.primary, into: &effects)
    }

    /// Moves to a new view: aborts this member's barriers, persists, installs, and reports process group changes.
    mutating func install(_ newView: View, primary: Bool, into effects: inout [GroupEffect]) {
        for name in myBarriers.sorted() { effects.append(.barrierAborted(name, view: view?.id)) }
        myBarriers = []
        barrierEntries = [:]
        view = newView
        isPrimary = primary
        if !primary { fencedAbsent = [] }
        // A node with a life in this view takes part again, whether or not votequorum has said it counts the node
        // (its answers may come late): a fence of it before now does not cover that life (corosync seed 3643: node 2
        // kept node 1 as fenced while uncounted across a primary view with node 1's next life, and the next primary
        // view left that life out without fencing it).
        fencedAbsent.subtract(newView.nodes)
        fencedSinceInstall = []
        delivered = 0
        persistent.highestViewNumber = max(persistent.highestViewNumber, newView.id.number)
        effects.append(.persist(persistent))
        effects.append(.viewInstalled(newView, primary: primary))

        var newGroups: [String: Set<Member>] = [:]
        for (address, names) in memberGroups {
            guard let life = life(of: address), newView.contains(life) else { continue }
            for name in names { newGroups[name, default: []].insert(life) }
        }
        if lostReason != nil { newGroups = [:] }
        GroupEvent.viewChange(from: groups, to: newGroups, in: newView.id, into: &effects)
        groups = newGroups
    }

    // MARK: Fencing (as coordinator)

    mutating func onFenced(_ node: NodeID, ok: Bool, into effects: inout [GroupEffect]) {
        guard fenceRetries[node] != nil else {
            // A fence of an earlier round: what it did still counts.
            if ok { effects.append(.multicastToProvider(CorosyncMessage.fenced(node).encoded())) }
            return
        }
        if ok {
            fenceRetries[node] = nil
            effects.append(.multicastToProvider(CorosyncMessage.fenced(node).encoded()))
        } else {
            fenceRetries[node] = .some(now + fenceRetryInterval)
            effects.append(.fenceFailed(node))
        }
    }

    mutating func retryFences(into effects: inout [GroupEffect]) {
        for (node, retryAt) in fenceRetries.sorted(by: { $0.key < $1.key }) {
            if let retryAt, now >= retryAt {
                fenceRetries[node] = .some(nil)
                effects.append(.fence(node))
            }
        }
    }
}
