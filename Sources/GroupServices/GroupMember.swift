/// What happens to a node's group services: time passes, a message arrives, the application asks for something,
/// or the shell reports how a fence went.
public enum GroupInput: Hashable, Sendable {
    /// The node starts (or restarts) as `incarnation`, with what it persisted before (`PersistentState`).
    case start(incarnation: UInt64, persisted: PersistentState, now: UInt64)
    case tick(now: UInt64)
    case received(GroupMessage, from: Member)
    /// Something other than group services' messages came from that life of a node (a frame of lock traffic, on
    /// the same connection as its heartbeats): it is alive as a heartbeat would show, so a node busy with a
    /// backlog of its lock traffic is not suspected because its heartbeats queue behind it. Only a life already
    /// known and not dropped from a proposal counts; nothing else of the member changes.
    case heard(from: Member)
    /// Multicast to every member of the view (`group` nil) or to the members of a process group.
    case multicast(payload: [UInt8], group: String?)
    case enterBarrier(String)
    case joinGroup(String)
    case leaveGroup(String)
    /// The result of a `.fence(node)` effect.
    case fenced(NodeID, ok: Bool)
    /// An event of corosync (`CorosyncMember` only; `GroupMember` ignores it).
    case provider(ProviderEvent)
}

/// What group services ask their shell to do, in the order it must be done.
public enum GroupEffect: Hashable, Sendable {
    case send(GroupMessage, to: NodeID)
    /// Write this to disk before carrying out the effects after it.
    case persist(PersistentState)
    /// A new view. A primary view is installed only after every node that may still hold an older primary view
    /// and is not in this one was fenced: it is ready for recovery.
    case viewInstalled(View, primary: Bool)
    case deliver(Delivery)
    case barrierCompleted(String, view: ViewID)
    /// The view changed (or there was none) before every member entered the barrier.
    case barrierAborted(String, view: ViewID?)
    case groupEvent(GroupEvent)
    /// Run the configured fence command against this node, then hand in `.fenced(node, ok:)`.
    case fence(NodeID)
    /// A fence failed; it is tried again after `fenceRetryInterval`.
    case fenceFailed(NodeID)
    /// Multicast this to the provider's group (`CorosyncMember` only): CPG delivers it to every member, this one
    /// included, in one total order.
    case multicastToProvider([UInt8])
}

/// Group services of one node as a deterministic state machine (REFERENCE.md §6-7, docs/GROUPS.md).
///
/// - Liveness: heartbeats; a node not heard from for `suspectTimeout` is suspected.
/// - Membership: the coordinator, the lowest node among those it believes alive, proposes a view of them. Each
///   proposed member stops (sends and delivers nothing more in its view), and reports what it holds of its view.
///   With every report in, the coordinator decides whether the view is primary (votequorum), fences the nodes that
///   may hold an older primary view and are not in the new one, then installs the view, with the union of the
///   reported messages of each old view (its *tail*): members moving together from one view to the next deliver
///   the same messages in it (virtual synchrony, as in Isis).
/// - Ordered messaging: the coordinator of a view is its sequencer; members deliver in sequence order, ask for
///   gaps again (NAK), and send their undelivered submissions again until delivered, in the next view if need be.
/// - Barriers and process groups are ordered messages, so every member sees them in the same order.
///
/// Like `SWIM.Instance`, it does no I/O and reads no clock; `handle` appends effects for the shell.
public struct GroupMember: Sendable {
    public let id: NodeID
    public let settings: Settings
    public private(set) var incarnation: UInt64 = 0
    public private(set) var isStarted = false
    public private(set) var now: UInt64 = 0
    /// The installed view, nil until the first one.
    public private(set) var view: View?
    public private(set) var isPrimary = false
    public private(set) var persistent = PersistentState()
    /// The process groups as this member knows them, in the current view.
    public private(set) var groups: [String: Set<Member>] = [:]
    /// The proposal this member reported to: until it installs that view (or reports to a newer proposal) it is
    /// blocked.
    public private(set) var promised: ViewID?
    /// This life learned that a primary view left it out (its fence did not stop it): it takes part in nothing more
    /// and must be restarted, as a new incarnation, to come back.
    public private(set) var wasFenced = false

    public var me: Member { Member(node: id, incarnation: incarnation) }
    public var isBlocked: Bool { promised != nil }
    /// How many of this member's own messages (multicasts, joins, leaves, barrier entries) wait to be delivered.
    public var pendingSubmissions: Int { unsequenced.count }

    struct Peer: Sendable {
        var incarnation: UInt64
        var lastHeard: UInt64
        /// Dropped from a proposal for not reporting: not alive again until heard from after this.
        var excluded = false
        var heartbeat: Heartbeat?
        /// Since when its heartbeats show a view other than ours, or a wait on a newer proposal.
        var disagreeingSince: UInt64?
    }

    var startedAt: UInt64 = 0
    var peers: [NodeID: Peer] = [:]
    /// Per node, the latest incarnation that a primary view left out (and so was fenced): it never comes back,
    /// even if its fence did not stop it; only a later incarnation (a restart) may join again. Kept in the
    /// persistent state, so that it holds after this member restarts.
    public func fencedIncarnation(of node: NodeID) -> UInt64? { persistent.fencedIncarnations[node.rawValue] }

    /// Whether `member` is a life that a primary view left out.
    func isFenced(_ member: Member) -> Bool { persistent.isFenced(member) }

    /// Records a life that a primary view left out: it is forgotten as a peer and refused from now on.
    mutating func recordFenced(_ member: Member) {
        guard persistent.recordFenced(member) else { return }
        if let peer = peers[member.node], peer.incarnation <= member.incarnation { peers[member.node] = nil }
    }

    /// The members of the last primary view this member installed.
    var lastPrimaryMembers: [Member] = []
    var wasQuorate = false
    var lastHeartbeat: UInt64 = 0
    var promisedAt: UInt64 = 0

    // The current view's ordered messages.
    var log: [UInt64: OrderedMessage] = [:]
    var delivered: UInt64 = 0
    var highestKnown: UInt64 = 0
    var lastNak: UInt64 = 0

    // This member's own messages not yet delivered to it.
    var nextLocalSeq: UInt64 = 1
    var unsequenced: [Submission] = []
    var lastSubmit: UInt64 = 0

    // As sequencer of the current view.
    var nextSeq: UInt64 = 1
    var sequencedUpTo: [Member: UInt64] = [:]
    var installation: Installation?
    var unacknowledged: Set<Member> = []
    var lastInstallSend: UInt64 = 0

    // As coordinator of a view change.
    struct Proposal: Sendable {
        var id: ViewID
        var members: [Member]
        var reports: [Member: FlushReport] = [:]
        var startedAt: UInt64
        var lastSent: UInt64
        var primary = false
        /// Fences under way (nil) or to try again at a time, while deciding.
        var fencing: [NodeID: UInt64?]? = nil
    }
    var proposal: Proposal?
    var fencedSinceInstall: Set<NodeID> = []
    /// The life of each node fenced since the last install, as known when its fence was decided: over once a
    /// primary view is installed.
    var fencedLivesSinceInstall: [NodeID: Member] = [:]

    /// The data messages this member delivered, by sender: a message that its sender did not get back in its view is
    /// submitted again in the next one, and a member that delivered it in another partition meanwhile skips it.
    /// (It grows with the traffic; trimming it by stability is left for later.)
    var deliveredFrom: [Member: Set<UInt64>] = [:]

    // Barriers of the current view: who entered each, and those this member entered.
    var barrierEntries: [String: Set<Member>] = [:]
    var myBarriers: Set<String> = []

    public init(id: NodeID, settings: Settings) {
        precondition(settings.votes[id] != nil, "node \(id) is not in the node list")
        self.id = id
        self.settings = settings
    }

    public mutating func handle(_ input: GroupInput, into effects: inout [GroupEffect]) {
        switch input {
        case .start(let incarnation, let persisted, let now):
            start(incarnation: incarnation, persisted: persisted, now: now, into: &effects)
        case .tick(let now):
            guard isStarted else { return }
            self.now = max(self.now, now)
            onTick(into: &effects)
        case .received(let message, let from):
            guard isStarted else { return }
            onReceive(message, from: from, into: &effects)
        case .heard(let from):
            guard isStarted, var peer = peers[from.node], peer.incarnation == from.incarnation, !peer.excluded else {
                return
            }
            peer.lastHeard = max(peer.lastHeard, now)
            peers[from.node] = peer
        case .multicast(let payload, let group):
            submit(.data(group: group, payload: payload), into: &effects)
        case .enterBarrier(let name):
            guard isStarted, view != nil, !myBarriers.contains(name) else {
                if view == nil { effects.append(.barrierAborted(name, view: nil)) }
                return
            }
            myBarriers.insert(name)
            submit(.barrier(name), into: &effects)
        case .joinGroup(let name):
            submit(.join(name), into: &effects)
        case .leaveGroup(let name):
            submit(.leave(name), into: &effects)
        case .fenced(let node, let ok):
            onFenced(node, ok: ok, into: &effects)
        case .provider:
            break
        }
    }

    // MARK: Liveness

    mutating func start(incarnation: UInt64, persisted: PersistentState, now: UInt64, into effects: inout [GroupEffect])
    {
        precondition(!isStarted, "a node starts once; a restart is a new GroupMember")
        precondition(incarnation > 0, "incarnations start at 1")
        self.incarnation = incarnation
        self.persistent = persisted
        self.now = now
        startedAt = now
        isStarted = true
        sendHeartbeats(into: &effects)
    }

    /// The members this node believes alive: itself, and every node heard from within the suspect timeout.
    public var aliveMembers: [Member] {
        var alive = [me]
        for (node, peer) in peers where !peer.excluded && now < peer.lastHeard + settings.suspectTimeout {
            alive.append(Member(node: node, incarnation: peer.incarnation))
        }
        return alive.sorted()
    }

    mutating func sendHeartbeats(into effects: inout [GroupEffect]) {
        lastHeartbeat = now
        let isSequencer = view?.id.coordinator == id && promised == nil
        let heartbeat = Heartbeat(
            view: view?.id, promised: promised, highestViewNumber: persistent.highestViewNumber,
            sequenced: isSequencer ? nextSeq - 1 : delivered)
        for node in settings.nodes where node != id {
            effects.append(.send(.heartbeat(heartbeat), to: node))
        }
    }

    mutating func onTick(into effects: inout [GroupEffect]) {
        if now >= lastHeartbeat + settings.heartbeatInterval { sendHeartbeats(into: &effects) }
        if let view, promised == nil {
            let coordinator = view.id.coordinator
            if coordinator != id {
                if !unsequenced.isEmpty && now >= lastSubmit + settings.retransmitInterval {
                    lastSubmit = now
                    effects.append(.send(.submit(view: view.id, unsequenced), to: coordinator))
                }
                if highestKnown > delivered && now >= lastNak + settings.retransmitInterval {
                    lastNak = now
                    let missing = (delivered + 1...highestKnown).filter { log[$0] == nil }.prefix(64)
                    effects.append(.send(.nak(view: view.id, Array(missing)), to: coordinator))
                }
            } else if let installation, installation.view.id == view.id, !unacknowledged.isEmpty,
                now >= lastInstallSend + settings.retransmitInterval
            {
                lastInstallSend = now
                for member in unacknowledged.sorted() {
                    effects.append(.send(.install(installation), to: member.node))
                }
            }
        }
        coordinate(into: &effects)
    }

    // MARK: Messages

    mutating func onReceive(_ message: GroupMessage, from: Member, into effects: inout [GroupEffect]) {
        guard from.node != id, settings.votes[from.node] != nil else { return }
        // A life of a node that a primary view left out: its state is stale, it must restart to come back.
        if let fenced = fencedIncarnation(of: from.node), from.incarnation <= fenced { return }
        if var peer = peers[from.node] {
            if from.incarnation < peer.incarnation { return }  // an earlier life of that node
            if from.incarnation > peer.incarnation { peer = Peer(incarnation: from.incarnation, lastHeard: now) }
            peer.lastHeard = now
            peer.excluded = false
            peers[from.node] = peer
        } else {
            peers[from.node] = Peer(incarnation: from.incarnation, lastHeard: now)
        }
        switch message {
        case .heartbeat(let heartbeat):
            onHeartbeat(heartbeat, from: from)
        case .submit(let viewID, let submissions):
            guard let view, view.id == viewID, viewID.coordinator == id, promised == nil, view.contains(from) else {
                return
            }
            sequence(submissions, from: from, into: &effects)
        case .ordered(let viewID, let messages):
            guard let view, view.id == viewID, from.node == viewID.coordinator, view.contains(from),
                promised == nil
            else { return }
            for message in messages where message.seq > delivered {
                log[message.seq] = message
                highestKnown = max(highestKnown, message.seq)
            }
            deliverInOrder(into: &effects)
        case .nak(let viewID, let missing):
            guard let view, view.id == viewID, viewID.coordinator == id, view.contains(from) else { return }
            let messages = missing.compactMap { log[$0] }
            if !messages.isEmpty { effects.append(.send(.ordered(view: viewID, messages), to: from.node)) }
        case .propose(let proposalID, let members):
            onPropose(proposalID, members: members, from: from, into: &effects)
        case .reject(let proposalID, let highest):
            guard let proposal, proposal.id == proposalID, proposal.fencing == nil else { return }
            persistent.highestViewNumber = max(persistent.highestViewNumber, highest)
            propose(into: &effects)
        case .report(let report):
            guard var proposal, proposal.id == report.proposal, proposal.fencing == nil,
                proposal.members.contains(from)
            else { return }
            proposal.reports[from] = report
            self.proposal = proposal
            if proposal.reports.count == proposal.members.count { decide(into: &effects) }
        case .install(let installation):
            if promised == installation.view.id {
                install(installation, into: &effects)
            } else if view?.id == installation.view.id {
                effects.append(.send(.installed(installation.view.id), to: from.node))
            }
        case .installed(let viewID):
            if view?.id == viewID { unacknowledged.remove(from) }
        }
    }

    mutating func onHeartbeat(_ heartbeat: Heartbeat, from: Member) {
        guard var peer = peers[from.node] else { return }
        peer.heartbeat = heartbeat
        let agrees: Bool
        if let promised = heartbeat.promised, promised > (view?.id ?? ViewID(number: 0, coordinator: 0)) {
            agrees = false
        } else {
            agrees = heartbeat.view == view?.id || !(view?.contains(from) ?? false)
        }
        peer.disagreeingSince = agrees ? nil : (peer.disagreeingSince ?? now)
        peers[from.node] = peer
        if let view, heartbeat.view == view.id {
            if from.node == view.id.coordinator { highestKnown = max(highestKnown, heartbeat.sequenced) }
            if view.id.coordinator == id { unacknowledged.remove(from) }
        }
    }

    // MARK: Ordered messaging

    mutating func submit(_ body: Body, into effects: inout [GroupEffect]) {
        guard isStarted else { return }
        unsequenced.append(Submission(localSeq: nextLocalSeq, body: body))
        nextLocalSeq += 1
        sendSubmissions(into: &effects)
    }

    /// Hands every undelivered submission to the sequencer (itself, if this member is the sequencer).
    mutating func sendSubmissions(into effects: inout [GroupEffect]) {
        guard let view, promised == nil, !unsequenced.isEmpty else { return }
        if view.id.coordinator == id {
            sequence(unsequenced, from: me, into: &effects)
        } else {
            lastSubmit = now
            effects.append(.send(.submit(view: view.id, unsequenced), to: view.id.coordinator))
        }
    }

    /// The sequencer orders a member's submissions it has not ordered yet, oldest first, and sends them to every
    /// member; it delivers them itself at once.
    mutating func sequence(_ submissions: [Submission], from sender: Member, into effects: inout [GroupEffect]) {
        guard let view else { return }
        var upTo = sequencedUpTo[sender] ?? 0
        var batch: [OrderedMessage] = []
        for submission in submissions.sorted(by: { $0.localSeq < $1.localSeq }) where submission.localSeq > upTo {
            let message = OrderedMessage(
                seq: nextSeq, sender: sender, localSeq: submission.localSeq, body: submission.body)
            nextSeq += 1
            log[message.seq] = message
            upTo = submission.localSeq
            batch.append(message)
        }
        sequencedUpTo[sender] = upTo
        guard !batch.isEmpty else { return }
        highestKnown = nextSeq - 1
        for member in view.members where member != me {
            effects.append(.send(.ordered(view: view.id, batch), to: member.node))
        }
        deliverInOrder(into: &effects)
    }

    mutating func deliverInOrder(into effects: inout [GroupEffect]) {
        while let message = log[delivered + 1] {
            delivered += 1
            deliver(message, into: &effects)
        }
    }

    /// Delivers one message of the current view, in its place in the total order.
    mutating func deliver(_ message: OrderedMessage, into effects: inout [GroupEffect]) {
        guard let view else { return }
        if message.sender == me { unsequenced.removeAll { $0.localSeq == message.localSeq } }
        switch message.body {
        case .data(let group, let payload):
            // Joins and leaves need no such check: applied twice they change nothing.
            guard deliveredFrom[message.sender, default: []].insert(message.localSeq).inserted else { return }
            if group.map({ groups[$0]?.contains(me) ?? false }) ?? true {
                effects.append(
                    .deliver(
                        Delivery(
                            view: view.id, seq: message.seq, sender: message.sender, localSeq: message.localSeq,
                            group: group, payload: payload)))
            }
        case .barrier(let name):
            var entered = barrierEntries[name, default: []]
            entered.insert(message.sender)
            if entered.count == view.members.count {
                barrierEntries[name] = nil
                myBarriers.remove(name)
                effects.append(.barrierCompleted(name, view: view.id))
            } else {
                barrierEntries[name] = entered
            }
        case .join(let name):
            if groups[name, default: []].insert(message.sender).inserted {
                effects.append(
                    .groupEvent(
                        GroupEvent(
                            group: name, member: message.sender, kind: .joined, view: view.id, byViewChange: false)))
            }
        case .leave(let name):
            if groups[name]?.remove(message.sender) != nil {
                if groups[name]!.isEmpty { groups[name] = nil }
                effects.append(
                    .groupEvent(
                        GroupEvent(group: name, member: message.sender, kind: .left, view: view.id, byViewChange: false)
                    ))
            }
        }
    }

    /// The process groups after `messages`, applied to `groups` (as `deliver` does).
    static func applyGroupChanges(_ messages: [OrderedMessage], to groups: inout [String: Set<Member>]) {
        for message in messages {
            switch message.body {
            case .join(let name): groups[name, default: []].insert(message.sender)
            case .leave(let name):
                groups[name]?.remove(message.sender)
                if groups[name]?.isEmpty == true { groups[name] = nil }
            case .data, .barrier: break
            }
        }
    }

    // MARK: Membership

    /// The coordinator's duties, on every tick: start a view change when the view is not what it should be, and
    /// drive the one under way.
    mutating func coordinate(into effects: inout [GroupEffect]) {
        guard !wasFenced else { return }
        let alive = aliveMembers
        guard alive.first == me else {
            if proposal != nil { proposal = nil }
            return
        }
        if var proposal {
            if proposal.members.contains(where: { !alive.contains($0) }) {
                propose(into: &effects)
            } else if let fencing = proposal.fencing {
                for (node, retryAt) in fencing.sorted(by: { $0.key < $1.key }) {
                    if let retryAt, now >= retryAt {
                        proposal.fencing![node] = .some(nil)
                        effects.append(.fence(node))
                    }
                }
                self.proposal = proposal
            } else if now >= proposal.startedAt + settings.flushTimeout {
                for member in proposal.members where proposal.reports[member] == nil {
                    peers[member.node]?.excluded = true
                }
                propose(into: &effects)
            } else if now >= proposal.lastSent + settings.retransmitInterval {
                self.proposal!.lastSent = now
                for member in proposal.members where proposal.reports[member] == nil {
                    effects.append(.send(.propose(id: proposal.id, members: proposal.members), to: member.node))
                }
            }
            return
        }
        guard now >= startedAt + settings.joinDelay else { return }
        // A life without a view yet has not had the time to hear from every node that is up: it leaves none out
        // before the suspect timeout (which would fence a live node for nothing) unless it hears from all of them.
        if view == nil && alive.count < settings.nodes.count && now < startedAt + settings.suspectTimeout { return }
        var change = view == nil || view!.members != alive
        if promised != nil, now >= promisedAt + 2 * settings.flushTimeout {
            change = true  // the proposal we wait on went nowhere
        } else if let promised, !alive.contains(where: { $0.node == promised.coordinator }) {
            change = true
        }
        for member in alive where member != me {
            if let since = peers[member.node]?.disagreeingSince, now >= since + 2 * settings.flushTimeout {
                change = true
            }
        }
        if change { propose(into: &effects) }
    }

    /// Proposes a view of the members believed alive, with a number above every number they are known to have
    /// used, and reports to it at once.
    mutating func propose(into effects: inout [GroupEffect]) {
        let members = aliveMembers
        var number = persistent.highestViewNumber
        for member in members where member != me {
            number = max(number, peers[member.node]?.heartbeat?.highestViewNumber ?? 0)
        }
        let id = ViewID(number: number + 1, coordinator: self.id)
        proposal = Proposal(id: id, members: members, startedAt: now, lastSent: now)
        promise(id, members: members, into: &effects)
        proposal!.reports[me] = report(for: id)
        for member in members where member != me {
            effects.append(.send(.propose(id: id, members: members), to: member.node))
        }
        if members.count == 1 { decide(into: &effects) }
    }

    mutating func promise(_ id: ViewID, members: [Member], into effects: inout [GroupEffect]) {
        promised = id
        promisedAt = now
        persistent.highestViewNumber = max(persistent.highestViewNumber, id.number)
        persistent.fenceCandidates = Set(persistent.fenceCandidates).union(members.map(\.node.rawValue)).sorted()
        effects.append(.persist(persistent))
    }

    func report(for proposal: ViewID) -> FlushReport {
        FlushReport(
            proposal: proposal, from: view?.id, delivered: delivered,
            groups: groups.mapValues { $0.sorted() },
            messages: log.values.sorted { $0.seq < $1.seq },
            fenceCandidates: persistent.fenceCandidates.map(NodeID.init(rawValue:)), wasQuorate: wasQuorate,
            lastPrimary: lastPrimaryMembers, fenced: fencedLives)
    }

    /// The latest fenced life of each node, as this member recorded them.
    var fencedLives: [Member] { persistent.fencedLives }

    mutating func onPropose(_ id: ViewID, members: [Member], from: Member, into effects: inout [GroupEffect]) {
        guard !wasFenced, members.contains(me), from.node == id.coordinator else { return }
        if promised == id {
            effects.append(.send(.report(report(for: id)), to: from.node))
        } else if id.number > persistent.highestViewNumber {
            if proposal != nil {
                proposal = nil
                fencedSinceInstall = []
                fencedLivesSinceInstall = [:]
            }
            promise(id, members: members, into: &effects)
            effects.append(.send(.report(report(for: id)), to: from.node))
        } else {
            effects.append(.send(.reject(id: id, highestViewNumber: persistent.highestViewNumber), to: from.node))
        }
    }

    /// Every member reported: decide whether the view is primary, and fence before a primary view is installed.
    mutating func decide(into effects: inout [GroupEffect]) {
        guard var proposal else { return }
        // A member may know of lives that a primary view left out which this coordinator never saw (it restarted
        // since, or was not in that view): none of them may be taken back.
        let known = proposal.reports.values.flatMap(\.fenced).filter { !isFenced($0) }
        if !known.isEmpty {
            for life in known { recordFenced(life) }
            if isFenced(me) {
                wasFenced = true
                self.proposal = nil
                return
            }
            if proposal.members.contains(where: isFenced) {
                propose(into: &effects)
                return
            }
        }
        let everyNode = Set(proposal.members.map(\.node)) == Set(settings.nodes)
        proposal.primary =
            settings.isQuorate(proposal.members.map(\.node))
            && (!settings.waitForAll || everyNode || proposal.reports.values.contains { $0.wasQuorate })
        var toFence: Set<NodeID> = []
        if proposal.primary {
            for report in proposal.reports.values { toFence.formUnion(report.fenceCandidates) }
            toFence.subtract(proposal.members.map(\.node))
            toFence.subtract(fencedSinceInstall)
            // The life of each node fenced now, as known now (the members' last primary views, its heartbeats), is
            // over once the view is installed, even if the fence lies: a candidate may have installed a primary view
            // that the members never did (it promised a competing proposal that only some of its members
            // installed), and must not be taken back into a later view (simulation seed 9605). (Not a life heard of
            // after an earlier fence of its node: that fence did not stop it.)
            for node in toFence {
                let known =
                    proposal.reports.values.flatMap(\.lastPrimary).filter { $0.node == node }.map(\.incarnation)
                    + [peers[node]?.incarnation].compactMap { $0 }
                if let incarnation = known.max() {
                    fencedLivesSinceInstall[node] = Member(node: node, incarnation: incarnation)
                }
            }
        }
        proposal.fencing = [:]
        for node in toFence.sorted() {
            proposal.fencing![node] = .some(nil)
            effects.append(.fence(node))
        }
        self.proposal = proposal
        if toFence.isEmpty { installProposal(into: &effects) }
    }

    mutating func onFenced(_ node: NodeID, ok: Bool, into effects: inout [GroupEffect]) {
        if ok { fencedSinceInstall.insert(node) }
        guard var proposal, let fencing = proposal.fencing, fencing[node] != nil else { return }
        if ok {
            proposal.fencing![node] = nil
            self.proposal = proposal
            if proposal.fencing!.isEmpty { installProposal(into: &effects) }
        } else {
            proposal.fencing![node] = .some(now + settings.fenceRetryInterval)
            self.proposal = proposal
            effects.append(.fenceFailed(node))
        }
    }

    /// Installs the decided proposal: the tail of each old view is the union of what its members reported, and the
    /// process groups are each old view's groups after its tail, restricted to the new members.
    mutating func installProposal(into effects: inout [GroupEffect]) {
        guard let proposal else { return }
        var tails: [ViewID: [UInt64: OrderedMessage]] = [:]
        var bestReport: [ViewID: FlushReport] = [:]
        for report in proposal.reports.values {
            guard let from = report.from else { continue }
            for message in report.messages { tails[from, default: [:]][message.seq] = message }
            if (bestReport[from]?.delivered ?? 0) <= report.delivered { bestReport[from] = report }
        }
        let members = Set(proposal.members)
        var groups: [String: Set<Member>] = [:]
        for (from, report) in bestReport {
            var state = report.groups.mapValues(Set.init)
            let rest = tails[from, default: [:]].values.filter { $0.seq > report.delivered }.sorted { $0.seq < $1.seq }
            GroupMember.applyGroupChanges(rest, to: &state)
            for (name, groupMembers) in state {
                let staying = groupMembers.intersection(members)
                if !staying.isEmpty { groups[name, default: []].formUnion(staying) }
            }
        }
        // The lives this view ends: those of its members' last primary views that it leaves out (they were fenced
        // before it is installed), with every life already known to be over.
        var fenced = fencedLives
        if proposal.primary {
            let lastPrimary = proposal.reports.values.flatMap(\.lastPrimary) + lastPrimaryMembers
            fenced += lastPrimary.filter { !members.contains($0) }
            fenced += fencedLivesSinceInstall.values.filter { !members.contains($0) }
        }
        let installation = Installation(
            view: View(id: proposal.id, members: proposal.members), primary: proposal.primary,
            tails: tails.keys.sorted().map { Tail(view: $0, messages: tails[$0]!.values.sorted { $0.seq < $1.seq }) },
            groups: groups.mapValues { $0.sorted() }, fenced: Array(Set(fenced)).sorted())
        for member in proposal.members where member != me {
            effects.append(.send(.install(installation), to: member.node))
        }
        install(installation, into: &effects)
        self.installation = installation
        unacknowledged = Set(proposal.members).subtracting([me])
        lastInstallSend = now
    }

    /// Moves to a new view: delivers the tail of the old one, aborts the barriers this member entered there, installs
    /// the view, reports the process group changes, and hands its undelivered submissions to the new sequencer.
    mutating func install(_ installation: Installation, into effects: inout [GroupEffect]) {
        if let old = view, let tail = installation.tails.first(where: { $0.view == old.id }) {
            for message in tail.messages where message.seq > delivered {
                delivered = message.seq
                deliver(message, into: &effects)
            }
        }
        for name in myBarriers.sorted() { effects.append(.barrierAborted(name, view: view?.id)) }
        myBarriers = []
        barrierEntries = [:]
        unsequenced.removeAll {
            if case .barrier = $0.body { return true }
            return false
        }

        let newView = installation.view
        view = newView
        isPrimary = installation.primary
        wasQuorate = wasQuorate || installation.primary
        promised = nil
        proposal = nil
        self.installation = nil
        fencedSinceInstall = []
        fencedLivesSinceInstall = [:]
        // Heartbeats that disagreed with the old view say nothing about the new one.
        for node in peers.keys { peers[node]!.disagreeingSince = nil }
        persistent.highestViewNumber = max(persistent.highestViewNumber, newView.id.number)
        // The lives the coordinator knows to be over (a primary view left them out); none is a member of this view.
        for life in installation.fenced where !newView.contains(life) { recordFenced(life) }
        if installation.primary {
            // The members of this member's last primary view that this one leaves out were fenced before it was
            // installed: those lives are over.
            let staying = Set(newView.nodes)
            for member in lastPrimaryMembers where !staying.contains(member.node) { recordFenced(member) }
            lastPrimaryMembers = newView.members
            persistent.fenceCandidates = newView.nodes.map(\.rawValue)
        }
        effects.append(.persist(persistent))
        effects.append(.viewInstalled(newView, primary: installation.primary))

        let newGroups = installation.groups.mapValues(Set.init)
        GroupEvent.viewChange(from: groups, to: newGroups, in: newView.id, into: &effects)
        groups = newGroups

        log = [:]
        delivered = 0
        highestKnown = 0
        nextSeq = 1
        sequencedUpTo = [:]
        if newView.id.coordinator != id {
            effects.append(.send(.installed(newView.id), to: newView.id.coordinator))
        }
        sendSubmissions(into: &effects)
    }
}
