import GroupServices
import Testing

/// corosync's CPG and votequorum as `CorosyncMember`s see them, simulated: processes in partitions, each partition
/// delivering its members' multicasts in one total order (self-delivery included), and configuration changes
/// after the messages sent before them (extended virtual synchrony). Fences succeed or fail on demand.
final class SimulatedCorosync {
    var members: [ProcessAddress: CorosyncMember] = [:]
    /// The partition each running process is in (0 when whole).
    var partition: [ProcessAddress: Int] = [:]
    /// The partition of each node's corosync, which votequorum counts whether a dlmd runs there or not.
    var corosync: [NodeID: Int]
    var queue: [(bytes: [UInt8], from: ProcessAddress)] = []
    var pendingFences: [(by: ProcessAddress, node: NodeID)] = []
    var fenceSucceeds = true
    /// Whether a fence that succeeds stops the node's dlmd, as a real fence does (else it reports success and leaves
    /// it running: a lying fence).
    var fenceStopsNode = false
    var transcript: [String] = []
    var persisted: [NodeID: PersistentState] = [:]
    var incarnations: [NodeID: UInt64] = [:]
    var now: UInt64 = 0
    var nextPid: UInt32 = 100
    /// docs/GROUPS.md's guarantees, checked on every effect as for group services' own members: views agreed,
    /// numbers increasing, no fenced life taken back, total order, barriers, group changes.
    var checker: InvariantChecker

    init(nodes: Int) {
        corosync = Dictionary(uniqueKeysWithValues: (1...nodes).map { (NodeID(UInt32($0)), 0) })
        checker = InvariantChecker(settings: Settings(nodes: nodes))
    }

    func configuration(of part: Int) -> [ProcessAddress] {
        partition.filter { $0.value == part }.map(\.key).sorted()
    }

    /// A new dlmd on `node` joins the group; votequorum answers `quorate` with the nodes it counts (`counted`, by default
    /// those of the partition), after the join when `quorumLater`.
    @discardableResult
    func start(
        _ node: NodeID, quorate: Bool = true, quorumLater: Bool = false, part: Int = 0, counted: [NodeID]? = nil
    ) -> ProcessAddress {
        flush()
        let address = ProcessAddress(node: node, pid: nextPid)
        nextPid += 1
        let incarnation = (incarnations[node] ?? 0) + 1
        incarnations[node] = incarnation
        var member = CorosyncMember(id: node, nodes: corosync.keys.sorted(), fenceRetryInterval: 10)
        var effects: [GroupEffect] = []
        member.handle(
            .start(incarnation: incarnation, persisted: persisted[node] ?? PersistentState(), now: now), into: &effects)
        members[address] = member
        checker.started(member.me)
        carryOut(effects, at: address)
        partition[address] = part
        if !quorumLater { input(.provider(.quorum(quorate, members: counted ?? quorumNodes(part))), to: address) }
        configurationChanged(part)
        run()
        return address
    }

    /// The nodes votequorum counts in a partition.
    func quorumNodes(_ part: Int) -> [NodeID] { corosync.filter { $0.value == part }.map(\.key).sorted() }

    /// kill -9 of the process: its node stays in corosync's membership (CPG's "process down").
    func kill(_ address: ProcessAddress) {
        flush()
        guard let part = partition[address] else { return }  // gone already (a fence stopped it)
        members[address] = nil
        partition[address] = nil
        configurationChanged(part)
        run()
    }

    /// Moves processes and their nodes' corosync into partitions (each one's number): `move` by process.
    func split(_ parts: [ProcessAddress: Int]) {
        move(Dictionary(uniqueKeysWithValues: parts.map { ($0.key.node, $0.value) }))
    }

    /// Moves corosync nodes (and their processes) into partitions, with the configuration changes this makes for
    /// every process whose group changed: for it, the nodes of the processes no longer with it are down.
    func move(_ parts: [NodeID: Int]) {
        flush()
        let before = partition
        for (node, part) in parts { corosync[node] = part }
        for address in partition.keys { partition[address] = corosync[address.node]! }
        for address in partition.keys.sorted() {
            let group = configuration(of: partition[address]!)
            let formerly = before.filter { $0.value == before[address] }.map(\.key).sorted()
            guard formerly != group else { continue }
            let down = formerly.filter { partition[$0] != partition[address] }.map(\.node)
            input(.provider(.configuration(group, nodesDown: down)), to: address)
        }
        run()
    }

    /// votequorum's answer at these processes: `members`, or the nodes of their partition.
    func quorum(_ quorate: Bool, at addresses: [ProcessAddress], counted: [NodeID]? = nil) {
        for address in addresses {
            input(.provider(.quorum(quorate, members: counted ?? quorumNodes(partition[address]!))), to: address)
        }
        run()
    }

    func configurationChanged(_ part: Int) {
        let group = configuration(of: part)
        for address in group { input(.provider(.configuration(group, nodesDown: [])), to: address) }
    }

    func input(_ input: GroupInput, to address: ProcessAddress) {
        guard let member = members[address] else { return }
        if case .enterBarrier(let name) = input, member.view != nil { checker.entered(name, by: member.me) }
        var effects: [GroupEffect] = []
        members[address]!.handle(input, into: &effects)
        carryOut(effects, at: address)
    }

    func carryOut(_ effects: [GroupEffect], at address: ProcessAddress) {
        let name = "\(address.node)"
        for effect in effects {
            checker.effect(effect, by: members[address]!.me, now: now)
            switch effect {
            case .multicastToProvider(let bytes): queue.append((bytes, address))
            case .persist(let state): persisted[address.node] = state
            case .viewInstalled(let view, let primary):
                transcript.append("\(name): \(view.description.dropFirst(5)) \(primary ? "primary" : "not primary")")
            case .fence(let node):
                transcript.append("\(name): fence \(node)")
                pendingFences.append((address, node))
            case .fenceFailed(let node): transcript.append("\(name): fence of \(node) failed")
            case .deliver(let delivery):
                transcript.append(
                    "\(name): deliver \(String(decoding: delivery.payload, as: UTF8.self)) from \(delivery.sender)"
                        + (delivery.group.map { " to \($0)" } ?? ""))
            case .barrierCompleted(let barrier, _): transcript.append("\(name): barrier \(barrier) completed")
            case .barrierAborted(let barrier, _): transcript.append("\(name): barrier \(barrier) aborted")
            case .groupEvent(let event): transcript.append("\(name): \(event)")
            case .send: Issue.record("a CorosyncMember sends nothing point to point")
            }
        }
    }

    /// Delivers every queued message to the processes of its sender's partition, in order.
    func flush() {
        while !queue.isEmpty {
            let (bytes, from) = queue.removeFirst()
            guard let part = partition[from] else { continue }
            for address in configuration(of: part) { input(.provider(.delivered(bytes, from: from)), to: address) }
        }
    }

    /// Runs until nothing is queued: messages, then the fences coordinators asked for.
    func run() {
        repeat {
            flush()
            let fences = pendingFences
            pendingFences = []
            for (by, node) in fences {
                if fenceSucceeds && fenceStopsNode, let victim = members.keys.first(where: { $0.node == node }) {
                    members[victim] = nil
                    let part = partition.removeValue(forKey: victim)!
                    configurationChanged(part)
                }
                input(.fenced(node, ok: fenceSucceeds), to: by)
            }
        } while !queue.isEmpty || !pendingFences.isEmpty
    }

    func tick(by nanoseconds: UInt64) {
        now += nanoseconds
        for address in members.keys.sorted() { input(.tick(now: now), to: address) }
        run()
    }

    func take() -> [String] {
        defer { transcript = [] }
        #expect(checker.violation == nil)
        return transcript
    }
}

@Suite struct CorosyncMemberTests {
    @Test func nodesJoiningOneAtATimeAgreeOnEachView() {
        let cpg = SimulatedCorosync(nodes: 3)
        cpg.start(1)
        #expect(cpg.take() == ["1: 1@1 {1} primary"])
        cpg.start(2)
        #expect(cpg.take() == ["1: 2@1 {1,2} primary", "2: 2@1 {1,2} primary"])
        cpg.start(3)
        #expect(cpg.take() == ["1: 3@1 {1,2,3} primary", "2: 3@1 {1,2,3} primary", "3: 3@1 {1,2,3} primary"])
    }

    /// A joiner that votequorum has not answered yet is waited for: the others install no view without quorum
    /// meanwhile.
    @Test func aJoinerIsWaitedForUntilItKnowsItsQuorum() {
        let cpg = SimulatedCorosync(nodes: 3)
        cpg.start(1)
        cpg.start(2)
        _ = cpg.take()
        let three = cpg.start(3, quorumLater: true)
        #expect(cpg.take().isEmpty)
        #expect(cpg.members[three]!.waitingFor == ["corosync membership"])
        let one = cpg.members.keys.first { $0.node == 1 }!
        #expect(cpg.members[one]!.waitingFor == ["view agreement (announcements from 3/102)"])
        cpg.quorum(true, at: [three])
        #expect(cpg.take() == ["1: 3@1 {1,2,3} primary", "2: 3@1 {1,2,3} primary", "3: 3@1 {1,2,3} primary"])
    }

    /// A killed dlmd is fenced by the new view's coordinator before any survivor installs a primary view without
    /// it; a failed fence is tried again and nothing is installed meanwhile.
    @Test func aKilledNodeIsFencedBeforeThePrimaryViewWithoutIt() {
        let cpg = SimulatedCorosync(nodes: 3)
        let addresses = (1...3).map { cpg.start(NodeID(UInt32($0))) }
        _ = cpg.take()
        cpg.fenceSucceeds = false
        cpg.kill(addresses[2])
        #expect(cpg.take() == ["1: fence 3", "1: fence of 3 failed"])
        #expect(cpg.members[addresses[0]]!.waitingFor == ["fencing node 3"])
        #expect(cpg.members[addresses[0]]!.fencing == [3])
        cpg.fenceSucceeds = true
        cpg.tick(by: 5)
        #expect(cpg.take().isEmpty)  // before the retry interval
        cpg.tick(by: 5)
        #expect(cpg.take() == ["1: fence 3", "1: 4@1 {1,2} primary", "2: 4@1 {1,2} primary"])
        #expect(cpg.persisted[1]?.fencedIncarnations[3] == 1)

        // Restarted: a new life, a new member; nothing more is fenced.
        cpg.start(3)
        #expect(cpg.take() == ["1: 5@1 {1,2,3#2} primary", "2: 5@1 {1,2,3#2} primary", "3: 5@1 {1,2,3#2} primary"])
    }

    /// The coordinator itself is killed: the next lowest node is the coordinator of the next view and fences it.
    @Test func theCoordinatorsDeathIsFencedByTheNextCoordinator() {
        let cpg = SimulatedCorosync(nodes: 3)
        let addresses = (1...3).map { cpg.start(NodeID(UInt32($0))) }
        _ = cpg.take()
        cpg.kill(addresses[0])
        #expect(cpg.take() == ["2: fence 1", "2: 4@2 {2,3} primary", "3: 4@2 {2,3} primary"])
    }

    @Test func quorumLostAndRegained() {
        let cpg = SimulatedCorosync(nodes: 3)
        let addresses = (1...3).map { cpg.start(NodeID(UInt32($0))) }
        _ = cpg.take()
        cpg.quorum(false, at: addresses)
        let lost = cpg.take()
        #expect(lost == ["1: 4@1 {1,2,3} not primary", "2: 4@1 {1,2,3} not primary", "3: 4@1 {1,2,3} not primary"])
        #expect(cpg.members.values.allSatisfy { !$0.isPrimary && $0.waitingFor == ["quorum"] })
        cpg.quorum(true, at: addresses)
        #expect(cpg.take() == ["1: 5@1 {1,2,3} primary", "2: 5@1 {1,2,3} primary", "3: 5@1 {1,2,3} primary"])
        #expect(cpg.members.values.allSatisfy { $0.isPrimary && $0.waitingFor.isEmpty })
        // Every member went through the same views.
    }

    /// A partitioned node without quorum holds a view that is not primary; the majority fences it and goes on. When
    /// corosync merges the partitions again, that life (the same process) is not taken back: it learns it was
    /// fenced and takes part in nothing more (a real fence would have stopped it). Its next life joins.
    @Test func aFencedLifeNeverComesBackWithItsOldState() {
        let cpg = SimulatedCorosync(nodes: 3)
        let addresses = (1...3).map { cpg.start(NodeID(UInt32($0))) }
        _ = cpg.take()
        // Cut off: each side waits for votequorum to drop the other side's nodes before it believes its quorum.
        cpg.split([addresses[2]: 1])
        #expect(cpg.take().isEmpty)
        #expect(cpg.members[addresses[2]]!.waitingFor == ["quorum update (corosync dropped node 1,2)"])
        cpg.quorum(false, at: [addresses[2]])
        #expect(cpg.take() == ["3: 4@3 {3} not primary"])
        cpg.quorum(true, at: [addresses[0], addresses[1]])
        #expect(cpg.take() == ["1: fence 3", "1: 4@1 {1,2} primary", "2: 4@1 {1,2} primary"])

        // Merged again: the old life of node 3 is left out.
        cpg.split([addresses[2]: 0])
        cpg.quorum(true, at: [addresses[2]], counted: [1, 2, 3])
        #expect(cpg.take() == ["1: 5@1 {1,2} primary", "2: 5@1 {1,2} primary"])
        #expect(cpg.members[addresses[2]]!.wasFenced)
        #expect(cpg.members[addresses[2]]!.waitingFor == ["restart (this life was fenced)"])
        #expect(cpg.members[addresses[2]]!.view?.id.number == 4)

        // Later rounds go on with that process in the group: it still announces itself.
        cpg.quorum(false, at: [addresses[0], addresses[1]])
        cpg.quorum(true, at: [addresses[0], addresses[1]])
        #expect(
            cpg.take() == [
                "1: 6@1 {1,2} not primary", "2: 6@1 {1,2} not primary", "1: 7@1 {1,2} primary",
                "2: 7@1 {1,2} primary",
            ])

        cpg.kill(addresses[2])
        #expect(cpg.take() == ["1: 8@1 {1,2} primary", "2: 8@1 {1,2} primary"])
        cpg.start(3)
        #expect(cpg.take() == ["1: 9@1 {1,2,3#2} primary", "2: 9@1 {1,2,3#2} primary", "3: 9@1 {1,2,3#2} primary"])
    }

    /// A dlmd that starts where no other dlmd runs cannot know who held a primary view before: before its first
    /// primary view it fences every node that corosync does not count now and that no member knows to be fenced since
    /// (Pacemaker's startup fencing does the same). Here node 1 alone holds a primary view and is cut off before
    /// votequorum tells it; nodes 2 and 3 start on the other side and fence node 1, which stops its dlmd. Once
    /// corosync counts node 1 again, it is no longer "fenced while absent", and a dlmd started there joins.
    @Test func nodesCorosyncDoesNotCountAreFencedBeforeAFirstPrimaryView() {
        let cpg = SimulatedCorosync(nodes: 3)
        cpg.fenceStopsNode = true
        let one = cpg.start(1)
        #expect(cpg.take() == ["1: 1@1 {1} primary"])
        cpg.move([1: 1])  // its group does not change: no configuration change, and votequorum has not told it yet
        #expect(cpg.take().isEmpty && cpg.members[one]!.isPrimary)

        cpg.start(2, counted: [2, 3])
        #expect(cpg.take() == ["2: fence 1", "2: 1@2 {2} primary"])
        #expect(cpg.members[one] == nil && cpg.members.values.first!.fencedAbsent == [1])
        // Node 3 did not see that fence, node 2 tells it: no second fence.
        cpg.start(3, counted: [2, 3])
        #expect(cpg.take() == ["2: 2@2 {2,3} primary", "3: 2@2 {2,3} primary"])
        #expect(cpg.members.values.allSatisfy { $0.fencedAbsent == [1] })

        cpg.move([1: 0])
        cpg.quorum(true, at: Array(cpg.members.keys), counted: [1, 2, 3])
        #expect(cpg.members.values.allSatisfy { $0.fencedAbsent.isEmpty })
        cpg.start(1)
        #expect(cpg.take() == ["1: 3@1 {1#2,2,3} primary", "2: 3@1 {1#2,2,3} primary", "3: 3@1 {1#2,2,3} primary"])
    }

    /// Ordered messages reach every member in one order; a barrier completes once every member entered it; process
    /// groups change by joins and leaves, and by view changes.
    @Test func orderedMessagesBarriersAndProcessGroups() {
        let cpg = SimulatedCorosync(nodes: 3)
        let addresses = (1...3).map { cpg.start(NodeID(UInt32($0))) }
        _ = cpg.take()
        cpg.input(.joinGroup("ls"), to: addresses[0])
        cpg.input(.joinGroup("ls"), to: addresses[1])
        cpg.input(.multicast(payload: Array("a".utf8), group: nil), to: addresses[2])
        cpg.input(.multicast(payload: Array("b".utf8), group: "ls"), to: addresses[0])
        cpg.run()
        let lines = cpg.take()
        for node in 1...3 {
            let mine = lines.filter { $0.hasPrefix("\(node):") }
            let expected =
                ["\(node): 1 joined ls", "\(node): 2 joined ls", "\(node): deliver a from 3"]
                + (node < 3 ? ["\(node): deliver b from 1 to ls"] : [])
            #expect(mine == expected)
        }

        cpg.input(.enterBarrier("recovery"), to: addresses[0])
        cpg.input(.enterBarrier("recovery"), to: addresses[1])
        cpg.run()
        #expect(cpg.take().isEmpty)
        cpg.input(.enterBarrier("recovery"), to: addresses[2])
        cpg.run()
        #expect(
            Set(cpg.take())
                == ["1: barrier recovery completed", "2: barrier recovery completed", "3: barrier recovery completed"])

        // A barrier that a view change interrupts is aborted; a member that leaves its groups by the change.
        cpg.input(.enterBarrier("again"), to: addresses[0])
        cpg.kill(addresses[1])
        #expect(
            cpg.take() == [
                "1: fence 2", "1: barrier again aborted", "1: 4@1 {1,3} primary", "1: 2 left ls (view change)",
                "3: 4@1 {1,3} primary", "3: 2 left ls (view change)",
            ])
    }

    /// The connection to corosync ends: the member installs a view of itself that is not primary (its requests are
    /// held) and decides nothing more.
    @Test func lostConnectionHoldsEverything() {
        let cpg = SimulatedCorosync(nodes: 3)
        let one = cpg.start(1)
        _ = cpg.take()
        cpg.input(.provider(.lost("corosync stopped")), to: one)
        #expect(cpg.take() == ["1: 2@1 {1} not primary"])
        #expect(cpg.members[one]!.waitingFor == ["corosync (corosync stopped)"])
        cpg.start(2)
        #expect(cpg.take() == [])
    }

    @Test func messagesRoundTripAndDamageIsRefused() throws {
        let messages: [CorosyncMessage] = [
            .announce(
                .init(
                    configuration: [ProcessAddress(node: 1, pid: 7), ProcessAddress(node: 2, pid: 9)],
                    quorumChanges: 3, incarnation: 4, highestViewNumber: 12, quorate: true, fenceCandidates: [1, 2],
                    lastPrimary: [Member(node: 1, incarnation: 4)], fenced: [Member(node: 3, incarnation: 2)],
                    groups: ["a", "ls"], absentUnfenced: [5], fencedAbsent: [6])),
            .quorumChanged(quorate: false), .fenced(3), .data(localSeq: 9, group: "ls", payload: [1, 2, 3]),
            .data(localSeq: 1, group: nil, payload: []), .barrier("b", view: 5), .join("x"), .leave("x"),
            .install(view: 12),
        ]
        for message in messages {
            let bytes = message.encoded()
            #expect(try CorosyncMessage(decoding: bytes) == message)
            if case .data = message { continue }  // its payload runs to the end: any tail is payload
            #expect(throws: CorosyncMessage.DecodeError.self) { try CorosyncMessage(decoding: bytes + [0]) }
            #expect(throws: CorosyncMessage.DecodeError.self) { try CorosyncMessage(decoding: Array(bytes.dropLast())) }
        }
        #expect(throws: CorosyncMessage.DecodeError.self) { try CorosyncMessage(decoding: []) }
        #expect(throws: CorosyncMessage.DecodeError.self) { try CorosyncMessage(decoding: [99]) }
        // A count that promises more than the message holds.
        #expect(throws: CorosyncMessage.DecodeError.self) {
            try CorosyncMessage(decoding: [1, 0xff, 0xff, 0xff, 0xff])
        }
    }
}
