import GroupServices

/// The guarantees of docs/GROUPS.md, checked on every effect and after every step of a simulated cluster.
/// The first violation is kept in `violation`.
struct InvariantChecker {
    let settings: Settings
    var violation: String?

    /// What one life (node and incarnation) has seen.
    struct Life {
        var view: View?
        /// This view's in-order events: deliveries, barrier completions, group joins and leaves.
        var events: [String] = []
        var lastSeq: UInt64 = 0
        var delivered: Set<String> = []
        /// What it delivered before its current view.
        var deliveredBefore: Set<String> = []
        /// Barriers it entered and that have not completed or aborted yet.
        var pendingBarriers: Set<String> = []
        /// The install under way (old view, new view) and its group events.
        var installing: (ViewID, ViewID)?
        var installEvents: [String] = []
    }

    var lives: [Member: Life] = [:]
    var current: [NodeID: Member] = [:]
    var lastViewNumber: [NodeID: UInt64] = [:]
    var views: [ViewID: (View, Bool)] = [:]
    /// Lives a primary view left out of the primary view before it (so fenced), with that view's number: none of
    /// them is in a later primary view, even if its fence left it running. A view counts here once members with a
    /// quorum of votes installed it: a later primary view then has one of them, which knows (with a lying fence
    /// and a view that only its coordinator installed, no member of the next view may know: that case rests on
    /// the fence).
    var leftOut: [Member: UInt64] = [:]
    /// The members that installed each primary view, until they have a quorum of votes.
    var installers: [ViewID: Set<Member>] = [:]
    var settled: Set<ViewID> = []
    /// Lives a primary view left out of the primary view before it, from its first install on (they were fenced).
    var fenced: Set<Member> = []
    /// (view, seq) -> the message delivered there.
    var order: [ViewID: [UInt64: String]] = [:]
    /// (old view, new view) -> the events in the old view of the first member that moved, and its install events.
    var transitions: [ViewID: [ViewID: ([String], Set<String>)]] = [:]
    var installEvents: [ViewID: [ViewID: [String]]] = [:]
    /// Barrier entries: (member, view, name) -> count; completions likewise.
    var entries: [Member: [ViewID: [String: Int]]] = [:]
    var completions: [Member: [ViewID: [String: Int]]] = [:]
    var installs = 0
    var deliveries = 0
    var barriersCompleted = 0
    var barriersAborted = 0
    var fenceFailures = 0

    /// Whether a primary view's members must hold quorum by `settings` (the built-in provider's votes; with corosync,
    /// votequorum counts corosync's nodes, not dlmd's, and its word decides).
    let checksPrimaryQuorum: Bool

    init(settings: Settings, checksPrimaryQuorum: Bool = false) {
        self.settings = settings
        self.checksPrimaryQuorum = checksPrimaryQuorum
    }

    mutating func fail(_ message: String) {
        if violation == nil { violation = message }
    }

    mutating func started(_ member: Member) {
        current[member.node] = member
        lives[member] = Life()
    }

    mutating func crashed(_ node: NodeID, at now: UInt64) {}

    mutating func entered(_ name: String, by member: Member) {
        guard var life = lives[member] else { return }
        if life.pendingBarriers.contains(name) { return }  // a second entry is ignored by the machine
        life.pendingBarriers.insert(name)
        lives[member] = life
        if let view = life.view { entries[member, default: [:]][view.id, default: [:]][name, default: 0] += 1 }
    }

    /// Whether `nodes` hold quorum, worked out here from the configuration as votequorum defines it, not with
    /// `Settings.isQuorate` (the code under test): with `two_node`, either node; else more than half of the expected
    /// votes, or with `auto_tie_breaker` exactly half if the lowest configured node is among them.
    static func hasQuorum(_ nodes: some Sequence<NodeID>, _ settings: Settings) -> Bool {
        let present = Set(nodes)
        let votes = present.reduce(0) { $0 + (settings.votes[$1] ?? 0) }
        if settings.twoNode { return votes >= 1 }
        if 2 * votes > settings.expectedVotes { return true }
        return settings.autoTieBreaker && 2 * votes == settings.expectedVotes
            && present.contains(settings.votes.keys.min()!)
    }

    /// A new primary view: it takes back no life that an earlier primary view left out.
    mutating func checkTakesNoneBack(_ view: View) {
        for member in view.members {
            if let number = leftOut[member], number < view.id.number {
                fail("\(member), left out of primary view number \(number), is back in primary \(view)")
            }
        }
        if let previous = primaryBefore(view) { fenced.formUnion(previous.members.filter { !view.contains($0) }) }
    }

    /// The primary view with the highest number below `view`'s.
    func primaryBefore(_ view: View) -> View? {
        views.values.filter { $0.1 && $0.0.id.number < view.id.number }.max { $0.0.id < $1.0.id }?.0
    }

    /// `member` installed primary `view`: once members with a quorum of votes did, the lives it leaves out of the
    /// primary view before it are out for good.
    mutating func installedPrimary(_ view: View, by member: Member) {
        guard !settled.contains(view.id) else { return }
        installers[view.id, default: []].insert(member)
        guard Self.hasQuorum(installers[view.id]!.map(\.node), settings) else { return }
        installers[view.id] = nil
        settled.insert(view.id)
        if let previous = primaryBefore(view) {
            for member in previous.members where !view.contains(member) && leftOut[member] == nil {
                leftOut[member] = view.id.number
            }
        }
    }

    mutating func effect(_ effect: GroupEffect, by member: Member, now: UInt64) {
        guard var life = lives[member] else { return }
        defer { lives[member] = life }
        switch effect {
        case .send, .persist, .fence, .multicastToProvider:
            break
        case .fenceFailed:
            fenceFailures += 1
        case .viewInstalled(let view, let primary):
            installs += 1
            if !view.contains(member) { fail("\(member) installed \(view) without itself") }
            if view.id.number <= lastViewNumber[member.node] ?? 0 {
                fail("\(member) installed \(view) after view number \(lastViewNumber[member.node]!)")
            }
            lastViewNumber[member.node] = view.id.number
            if let (known, knownPrimary) = views[view.id] {
                if known != view || knownPrimary != primary {
                    fail("\(member) installed \(view) primary \(primary), another \(known) primary \(knownPrimary)")
                }
            } else {
                if primary { checkTakesNoneBack(view) }
                if primary && checksPrimaryQuorum && !Self.hasQuorum(view.nodes, settings) {
                    fail("\(member) installed \(view) as primary without quorum")
                }
                views[view.id] = (view, primary)
            }
            if primary { installedPrimary(view, by: member) }
            if !life.pendingBarriers.isEmpty {
                fail(
                    "\(member) installed \(view) with barriers \(life.pendingBarriers.sorted()) neither done nor aborted"
                )
            }
            life.installing = (life.view?.id ?? ViewID(number: 0, coordinator: 0), view.id)
            if let old = life.view {
                // Virtual synchrony: members moving together from one view to the next delivered the same there.
                if let (first, firstBefore) = transitions[old.id]?[view.id] {
                    // A message one of them delivered in an earlier view (in another partition) it skips.
                    let events = first.filter { !life.deliveredBefore.contains($0) }
                    let mine = life.events.filter { !firstBefore.contains($0) }
                    if events != mine {
                        fail(
                            "virtual synchrony: \(member) moved \(old.id) -> \(view.id) after \(mine.count) events, another after \(events.count): \(diff(events, mine))"
                        )
                    }
                } else {
                    transitions[old.id, default: [:]][view.id] = (life.events, life.deliveredBefore)
                }
            }
            life.view = view
            life.deliveredBefore = life.delivered
            life.events = []
            life.lastSeq = 0
            life.installEvents = []
        case .deliver(let delivery):
            deliveries += 1
            let id = "\(delivery.sender)/\(delivery.localSeq)/\(String(decoding: delivery.payload, as: UTF8.self))"
            guard let view = life.view, view.id == delivery.view else {
                fail("\(member) delivered \(id) of \(delivery.view) in \(life.view.map(\.description) ?? "no view")")
                return
            }
            if delivery.seq <= life.lastSeq { fail("\(member) delivered seq \(delivery.seq) after \(life.lastSeq)") }
            life.lastSeq = delivery.seq
            if !life.delivered.insert(id).inserted { fail("\(member) delivered \(id) twice") }
            if let known = order[view.id]?[delivery.seq] {
                if known != id { fail("total order: \(view.id) seq \(delivery.seq) is \(known) and \(id)") }
            } else {
                order[view.id, default: [:]][delivery.seq] = id
            }
            if !view.contains(delivery.sender) { fail("\(member) delivered \(id) from a non-member") }
            // A message to a process group reaches only its members: it is in the total order, not in the comparison.
            if delivery.group == nil { life.events.append(id) }
        case .barrierCompleted(let name, let viewID):
            barriersCompleted += 1
            guard let view = life.view, view.id == viewID else {
                fail("\(member) completed barrier \(name) of \(viewID) outside it")
                return
            }
            if life.pendingBarriers.remove(name) == nil { fail("\(member) completed barrier \(name) it did not enter") }
            let count = (completions[member]?[viewID]?[name] ?? 0) + 1
            completions[member, default: [:]][viewID, default: [:]][name] = count
            for other in view.members where (entries[other]?[viewID]?[name] ?? 0) < count {
                fail("\(member) completed barrier \(name) (\(count)) in \(view) before \(other) entered it")
            }
            life.events.append("barrier \(name)")
        case .barrierAborted(let name, let viewID):
            barriersAborted += 1
            if viewID != life.view?.id { fail("\(member) aborted barrier \(name) of \(String(describing: viewID))") }
            if life.pendingBarriers.remove(name) == nil { fail("\(member) aborted barrier \(name) it did not enter") }
        case .groupEvent(let event):
            guard let view = life.view else {
                fail("\(member) saw \(event) without a view")
                return
            }
            if event.view != view.id { fail("\(member) saw \(event) in \(view)") }
            if event.byViewChange {
                if life.installing?.1 != view.id { fail("\(member) saw \(event) outside a view change") }
                life.installEvents.append("\(event)")
            } else {
                life.events.append("group \(event)")
            }
        }
    }

    func diff(_ a: [String], _ b: [String]) -> String {
        let common = zip(a, b).prefix { $0 == $1 }.count
        return "first difference at \(common): \(a.dropFirst(common).prefix(3)) vs \(b.dropFirst(common).prefix(3))"
    }

    /// After every step: at most one primary view. A live node in an older primary view than another live node's
    /// is a member of the newer one (it is on its way there); every other node is fenced or knows it is outside.
    mutating func afterStep(_ nodes: [NodeID: SimulatedCluster.Node], stepped member: Member, now: UInt64) {
        // The group changes of a view change are the same for the members that moved together.
        if var life = lives[member], let (old, new) = life.installing {
            if let events = installEvents[old]?[new] {
                if events != life.installEvents {
                    fail("\(member) moved \(old) -> \(new) with group changes \(life.installEvents), another \(events)")
                }
            } else {
                installEvents[old, default: [:]][new] = life.installEvents
            }
            life.installing = nil
            life.installEvents = []
            lives[member] = life
        }
        var primaries: [(Member, View)] = []
        // A life that a primary view left out was fenced: if the fence left it running (a lying fence), what it
        // still believes is outside the guarantees, which rest on fencing.
        for (_, node) in nodes where node.alive && node.machine.isStarted && !fenced.contains(node.machine.me) {
            if let view = node.machine.view, node.machine.isPrimary { primaries.append((node.machine.me, view)) }
        }
        for (a, va) in primaries {
            for (_, vb) in primaries where va.id < vb.id && !vb.contains(a) {
                fail("two primary views: \(a) in \(va), and \(vb)")
            }
        }
    }
}
