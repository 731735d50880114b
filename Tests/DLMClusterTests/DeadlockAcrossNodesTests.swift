import DLMTestSupport
import DLMWire
import Foundation
import Testing

@testable import DLMCluster
@testable import DLMCore

/// Deadlock detection across nodes (LockService+Deadlocks.swift): a cycle whose requests wait on resources of
/// several masters, which no single engine sees, gets exactly one victim; a cycle broken before it is decided gets
/// none.
@Suite struct DeadlockAcrossNodesTests {
    typealias H = ServiceHarness
    static let remote: UInt32 = 0x8000_0001
    static let deadlockWait: UInt64 = 1_000_000_000

    /// a (node 1) holds x, b (node 2) holds y; a waits for y on node 2, b for x on node 1. After `deadlockWait` b,
    /// the younger request, gets EDEADLK and keeps y; once it lets y go, a gets it.
    @Test func aCycleThroughTwoMastersGetsOneVictim() {
        var c = ClusterHarness(nodes: 3)
        let x = ClusterHarness.name(directedTo: 3, of: 3, prefix: "x")
        let y = ClusterHarness.name(directedTo: 3, of: 3, prefix: "y")
        let a = c.client(1, "a")
        let b = c.client(2, "b")
        c.send(a, H.lock(2, x, .ex))
        c.send(b, H.lock(2, y, .ex))
        #expect(Set(c.run()) == ["1a: COMPLETION tag 2 lock 1 granted EX", "2b: COMPLETION tag 2 lock 1 granted EX"])
        c.send(a, H.lock(3, y, .ex))
        _ = c.run()
        c.tick(by: 10_000_000)
        c.send(b, H.lock(3, x, .ex))
        _ = c.run()
        c.tick(by: Self.deadlockWait / 2)
        #expect(c.run().filter { $0.contains("EDEADLK") }.isEmpty)
        c.tick(by: Self.deadlockWait)
        #expect(c.run().filter { $0.contains("EDEADLK") } == ["2b: COMPLETION tag 0 lock \(Self.remote) EDEADLK"])
        // Searches go on while requests wait: no second victim.
        for _ in 0..<8 { c.tick(by: Self.deadlockWait / 2) }
        #expect(c.run().filter { $0.contains("EDEADLK") }.isEmpty)
        c.send(b, H.unlock(4, 1))
        #expect(
            Set(c.run()) == [
                "2b: COMPLETION tag 4 lock 1 EUNLOCK", "1a: COMPLETION tag 0 lock \(Self.remote) granted EX",
            ])
    }

    /// No false victim: a's unlock of x, which breaks the cycle, comes after the decider (node 1, x's master)
    /// checked the steps and before the victim (a's younger request, on node 2) is refused. Node 1 holds x for the
    /// decision, so the unlock runs after the refusal: the victim was refused while the cycle was whole, and b gets
    /// x only then. (Without the hold, the unlock would let b have x, and the victim would still be refused.) a
    /// half-closes right after its unlock, and still gets its answer.
    @Test func anUnlockDuringTheDecisionWaitsForTheVictim() {
        var c = ClusterHarness(nodes: 3)
        let x = ClusterHarness.name(directedTo: 3, of: 3, prefix: "x")
        let y = ClusterHarness.name(directedTo: 3, of: 3, prefix: "y")
        let a = c.client(1, "a")
        let b = c.client(2, "b")
        c.send(a, H.lock(2, x, .ex))
        c.send(b, H.lock(2, y, .ex))
        _ = c.run()
        c.send(b, H.lock(3, x, .ex))
        _ = c.run()
        c.tick(by: 10_000_000)
        c.send(a, H.lock(3, y, .ex))
        _ = c.run()
        c.tick(by: Self.deadlockWait + 10_000_000)
        // Up to the victim's message: every step was checked, and both masters hold their resources.
        var lines = c.run { link, message in
            if case .deadlockVictim = message { return link.from == 1 && link.to == 2 }
            return false
        }
        #expect(lines.filter { $0.contains("EDEADLK") }.isEmpty)
        #expect(c.nodes[1]!.service.isHoldingForDeadlock && c.nodes[2]!.service.isHoldingForDeadlock)
        c.send(a, H.unlock(4, 1))
        // a half-closes at once: it still gets the answer to what it sent.
        c.nodes[1]!.handle(.inputEnded(a.id))
        lines = c.run()
        #expect(
            lines.filter { $0.hasPrefix("1a:") || $0.hasPrefix("2b:") } == [
                "1a: COMPLETION tag 0 lock \(Self.remote) EDEADLK", "1a: COMPLETION tag 4 lock 1 EUNLOCK",
                "2b: COMPLETION tag 0 lock \(Self.remote) granted EX",
            ])
        #expect(!c.nodes[1]!.service.isHoldingForDeadlock && !c.nodes[2]!.service.isHoldingForDeadlock)
    }

    /// A part of the graph too large for one slice is built and handed out over several ticks (a node with a
    /// million waiting requests must not stop its loop for seconds), and the cycle is still found, once: node 2
    /// has 300 requests waiting behind a holder besides the cycle, and a slice is 40 steps.
    @Test func aLargePartIsBuiltInSlicesAndTheCycleFound() {
        var c = ClusterHarness(nodes: 3, engine: EngineConfig(deadlockSlice: 40))
        let x = ClusterHarness.name(directedTo: 3, of: 3, prefix: "x")
        let y = ClusterHarness.name(directedTo: 3, of: 3, prefix: "y")
        let a = c.client(1, "a")
        let b = c.client(2, "b")
        let holder = c.client(2, "h")
        let crowd = c.client(2, "w")
        c.send(a, H.lock(2, x, .ex))
        c.send(b, H.lock(2, y, .ex))
        c.send(holder, H.lock(2, "q", .ex))
        _ = c.run()
        for tag in UInt32(10)..<310 { c.send(crowd, H.lock(tag, "q", .ex)) }
        _ = c.run()
        c.send(a, H.lock(3, y, .ex))
        _ = c.run()
        c.tick(by: 10_000_000)
        c.send(b, H.lock(3, x, .ex))
        _ = c.run()
        c.tick(by: Self.deadlockWait)
        var victims = c.run().filter { $0.contains("EDEADLK") }
        #expect(victims.isEmpty, "the whole part came in one slice")
        #expect(c.nodes[2]!.service.mastering.deadlocks.part != nil)
        var ticks = 1
        while victims.isEmpty && ticks < 400 {
            c.tick(by: 10_000_000)
            victims += c.run().filter { $0.contains("EDEADLK") }
            ticks += 1
        }
        #expect(victims == ["2b: COMPLETION tag 0 lock \(Self.remote) EDEADLK"])
        #expect(ticks > 5, "found after \(ticks) ticks")
        for _ in 0..<100 { c.tick(by: 10_000_000) }
        #expect(c.run().filter { $0.contains("EDEADLK") }.isEmpty)
    }

    /// A cycle that an unlock broke before `deadlockWait` chooses no one.
    @Test func aBrokenCycleChoosesNoOne() {
        var c = ClusterHarness(nodes: 2)
        let a = c.client(1, "a")
        let b = c.client(2, "b")
        c.send(a, H.lock(2, "x", .ex))
        c.send(b, H.lock(2, "y", .ex))
        _ = c.run()
        c.send(a, H.lock(3, "y", .ex))
        c.send(b, H.lock(3, "x", .ex))
        _ = c.run()
        c.send(a, H.unlock(4, 1))
        #expect(c.run().contains("2b: COMPLETION tag 0 lock \(Self.remote) granted EX"))
        for _ in 0..<6 { c.tick(by: Self.deadlockWait / 2) }
        #expect(c.run().filter { $0.contains("EDEADLK") }.isEmpty)
    }

    /// The same cycle across two nodes, each in a transaction (`dlm_ls_lockx`'s xid): found through the
    /// transactions, whichever owner took each lock.
    @Test func aCycleOfTransactionsAcrossNodesGetsOneVictim() {
        var c = ClusterHarness(nodes: 2)
        let a1 = c.client(1, "a1")
        let a2 = c.client(1, "a2")
        let b = c.client(2, "b")
        func lock(_ tag: UInt32, _ name: String, transaction: UInt64) -> ClientMessage {
            .lock(LockMessage(tag: tag, lockspace: 0, mode: .ex, transaction: transaction, name: Array(name.utf8)))
        }
        c.send(a1, lock(2, "x", transaction: 7))
        c.send(b, lock(2, "y", transaction: 9))
        _ = c.run()
        // Another owner of node 1, same transaction, waits for y.
        c.send(a2, lock(2, "y", transaction: 7))
        _ = c.run()
        c.tick(by: 10_000_000)
        c.send(b, lock(3, "x", transaction: 9))
        _ = c.run()
        for _ in 0..<4 { c.tick(by: Self.deadlockWait / 2) }
        #expect(c.run().filter { $0.contains("EDEADLK") } == ["2b: COMPLETION tag 0 lock \(Self.remote) EDEADLK"])
    }

    /// Random cycles of 2 to 8 requests over 3 to 5 nodes, with unrelated traffic around them: some left alone,
    /// some broken before `deadlockWait` (an unlock of a held lock), some with a NODLCKWT request or a NODLCKBLK
    /// holder (no cycle for detection). Sometimes a node without cycle requests fails while the searches run (a view change abandons
    /// them; they start again after recovery). Each real cycle gets exactly one victim, the others none.
    /// `DLM_DEADLOCK_SEEDS=N` runs N seeds (`DLM_DEADLOCK_FIRST_SEED` the first), `DLM_DEADLOCK_SEED` one.
    @Test func randomCyclesGetOneVictimEach() {
        let environment = ProcessInfo.processInfo.environment
        if let one = environment["DLM_DEADLOCK_SEED"].flatMap(UInt64.init) {
            Self.checkRandomCycles(seed: one)
            return
        }
        let count = environment["DLM_DEADLOCK_SEEDS"].flatMap(UInt64.init) ?? 150
        let first = environment["DLM_DEADLOCK_FIRST_SEED"].flatMap(UInt64.init) ?? 1
        for seed in first..<(first + count) {
            if !Self.checkRandomCycles(seed: seed) { break }
        }
    }

    enum CycleKind: CaseIterable {
        case real
        case broken
        /// Broken while it is searched and decided: at most one victim, and only one refused while the cycle was
        /// whole (no false victim).
        case brokenLate
        case noDeadlockWait
        case noDeadlockBlock
    }

    /// Whether `client` holds a granted lock on `name` in any engine (its master's).
    static func grants(_ c: ClusterHarness, _ client: (node: UInt32, id: ConnectionID), _ name: String) -> Bool {
        let owner = OwnerID(node: client.node, incarnation: c.incarnations[client.node]!, local: client.id.owner)
        for harness in c.nodes.values {
            let engine = harness.service.engine
            guard let lockspace = engine.lockspace(named: Array("ls".utf8)),
                let slot = engine.resourceSlot(lockspace, path: [Array(name.utf8)])
            else { continue }
            let held = engine.locks.contains {
                !$0.isFree && $0.resource == slot && $0.queue == QueueKind.grant.rawValue
                    && engine.owners[Int($0.owner)].id == owner
            }
            if held { return true }
        }
        return false
    }

    /// Whether a refusal with EDEADLK of one of `owners` left its master: a frame, or a message to the holder's node.
    static func refusalSent(_ c: ClusterHarness, _ lines: [String], of clients: Set<String>, owners: Set<OwnerID>)
        -> Bool
    {
        if lines.contains(where: { $0.contains("EDEADLK") && clients.contains(String($0.split(separator: ":")[0])) }) {
            return true
        }
        return c.links.values.contains { messages in
            messages.contains { message in
                switch message {
                case .completion(let completion):
                    return completion.status == .deadlock && owners.contains(completion.owner)
                case .reply(_, .taken(_, let completion?)):
                    return completion.status == .deadlock && owners.contains(completion.owner)
                default:
                    return false
                }
            }
        }
    }

    /// One seed; false (after recording the failure) if it failed.
    @discardableResult
    static func checkRandomCycles(seed: UInt64) -> Bool {
        var random = SplitMix64(seed: seed)
        let nodeCount = UInt32(3 + random.below(3))
        var c = ClusterHarness(nodes: nodeCount)
        let cycleCount = 1 + random.below(4)
        var kinds: [CycleKind] = []
        var members: [[(node: UInt32, id: ConnectionID)]] = []
        var cycleOf: [String: Int] = [:]
        var usedNodes = Set<UInt32>()
        for cycle in 0..<cycleCount {
            kinds.append(CycleKind.allCases[random.below(CycleKind.allCases.count)])
            let length = 2 + random.below(7)
            var clients: [(node: UInt32, id: ConnectionID)] = []
            for i in 0..<length {
                let node = UInt32(1 + random.below(Int(nodeCount)))
                usedNodes.insert(node)
                let client = c.client(node, "c\(cycle)p\(i)")
                cycleOf["\(node)c\(cycle)p\(i)"] = cycle
                clients.append(client)
            }
            members.append(clients)
        }
        // Bystanders: clients that take one lock at a time (NOQUEUE) on names of their own, never in a cycle.
        var bystanders: [(node: UInt32, id: ConnectionID)] = []
        for i in 0..<(2 + random.below(4)) {
            bystanders.append(c.client(UInt32(1 + random.below(Int(nodeCount))), "u\(i)"))
        }
        var bystanderTag: UInt32 = 10
        var bystanderHeld: [Int: UInt32] = [:]
        func bystanderTraffic(_ c: inout ClusterHarness, _ random: inout SplitMix64) {
            let i = random.below(bystanders.count)
            bystanderTag += 1
            if let held = bystanderHeld.removeValue(forKey: i) {
                c.send(bystanders[i], H.unlock(bystanderTag, held))
            } else {
                c.send(bystanders[i], H.lock(bystanderTag, "u\(random.below(3))", .ex, .noQueue))
            }
            let name = "\(bystanders[i].node)u\(i)"
            for line in c.run() where line.hasPrefix("\(name): COMPLETION tag \(bystanderTag) ") {
                let words = line.split(separator: " ")
                if line.contains("granted"), let id = UInt32(words[5]) { bystanderHeld[i] = id }
            }
        }
        // Hangers-on: a PR request on a cycle's resource, which waits (for the holder, and as the queue's order
        // has it, ahead of or behind the cycle's own request): part of that cycle when a member waits behind it.
        var hangersOn: [(cycle: Int, client: (node: UInt32, id: ConnectionID), resource: Int)] = []
        for (cycle, clients) in members.enumerated() where random.below(2) == 0 {
            let node = UInt32(1 + random.below(Int(nodeCount)))
            usedNodes.insert(node)
            cycleOf["\(node)c\(cycle)h"] = cycle
            hangersOn.append((cycle, c.client(node, "c\(cycle)h"), random.below(clients.count)))
        }
        // Each member holds its own resource...
        for (cycle, clients) in members.enumerated() {
            for (i, client) in clients.enumerated() {
                let flags: LockFlags = kinds[cycle] == .noDeadlockBlock && i == 0 ? .noDeadlockBlock : []
                c.send(client, H.lock(2, "c\(cycle)r\(i)", .ex, flags))
            }
        }
        _ = c.run()
        // ...then asks for the next member's, the requests of all cycles interleaved, time passing between them.
        var order: [(cycle: Int, member: Int)] = []
        for (cycle, clients) in members.enumerated() { for i in clients.indices { order.append((cycle, i)) } }
        for i in hangersOn.indices { order.append((-1, i)) }
        order.shuffle(using: &random)
        for (cycle, i) in order {
            if cycle < 0 {
                c.send(hangersOn[i].client, H.lock(2, "c\(hangersOn[i].cycle)r\(hangersOn[i].resource)", .pr))
                _ = c.run()
                continue
            }
            let clients = members[cycle]
            var flags: LockFlags = []
            if kinds[cycle] == .noDeadlockWait && i == 0 { flags.insert(.noDeadlockWait) }
            c.send(clients[i], H.lock(3, "c\(cycle)r\((i + 1) % clients.count)", .ex, flags))
            _ = c.run()
            if random.below(3) == 0 { bystanderTraffic(&c, &random) }
            c.tick(by: UInt64(random.below(50)) * 1_000_000)
        }
        // Broken cycles: a member lets its own resource go (the one before it is granted it).
        func breakCycle(_ cycle: Int, member i: Int, _ c: inout ClusterHarness) {
            let client = members[cycle][i]
            let granted = c.completions[c.nodes[client.node]!.names[client.id]!]!.first { $0.tag == 2 }!
            c.send(client, H.unlock(4, granted.lock))
        }
        for (cycle, clients) in members.enumerated() where kinds[cycle] == .broken {
            breakCycle(cycle, member: random.below(clients.count), &c)
        }
        _ = c.run()
        // Time passes; a node without cycle members may fail while the searches run.
        var victims: [String] = []
        func collect(_ lines: [String]) {
            for line in lines where line.contains("EDEADLK") { victims.append(String(line.split(separator: ":")[0])) }
        }
        c.tick(by: deadlockWait + 1)
        // Cycles broken late: while the searches and decisions run, one message at a time, a member lets its own
        // resource go at a random moment. The step at which the unlock took effect at its master, and the step at
        // which a refusal of the cycle's left its master, say whether the victim (if any) was refused while the
        // cycle was whole.
        var lateFailures: [String] = []
        let late = members.indices.filter { kinds[$0] == .brokenLate }
        if !late.isEmpty {
            var plan: [Int: (member: Int, at: Int)] = [:]
            for cycle in late { plan[cycle] = (random.below(members[cycle].count), random.below(40)) }
            var broken: [Int: Int] = [:]
            var refused: [Int: Int] = [:]
            for step in 0..<400 {
                for cycle in late where plan[cycle]!.at == step { breakCycle(cycle, member: plan[cycle]!.member, &c) }
                let lines = c.run(limit: 1)
                collect(lines)
                for cycle in late {
                    let (member, at) = plan[cycle]!
                    let i = member
                    let owned = "c\(cycle)r\(i)"
                    if step >= at, broken[cycle] == nil, !Self.grants(c, members[cycle][i], owned) {
                        broken[cycle] = step
                    }
                    let names = Set(members[cycle].enumerated().map { "\($0.element.node)c\(cycle)p\($0.offset)" })
                    let owners = Set(
                        members[cycle].map {
                            OwnerID(node: $0.node, incarnation: c.incarnations[$0.node]!, local: $0.id.owner)
                        })
                    if refused[cycle] == nil, Self.refusalSent(c, lines, of: names, owners: owners) {
                        refused[cycle] = step
                    }
                }
                if c.links.values.allSatisfy(\.isEmpty) && step > 40 { break }
                if c.links.values.allSatisfy(\.isEmpty) { c.tick(by: deadlockWait / 4 + 1) }
            }
            for cycle in late {
                if let refusedAt = refused[cycle], let brokenAt = broken[cycle], brokenAt < refusedAt {
                    lateFailures.append(
                        "cycle \(cycle) was broken at step \(brokenAt), and a victim was refused at step \(refusedAt)")
                }
            }
        }
        let idle = (1...nodeCount).filter { !usedNodes.contains($0) }
        if let failing = idle.first, random.below(2) == 0 {
            // Before the searches' messages are carried.
            c.crash(failing)
            c.installView()
            bystanders.removeAll { $0.node == failing }
        }
        for _ in 0..<12 {
            collect(c.run())
            if !bystanders.isEmpty, random.below(2) == 0 { bystanderTraffic(&c, &random) }
            c.tick(by: deadlockWait / 4 + 1)
        }
        collect(c.run())
        var failed = false
        let replay = " (replay: DLM_DEADLOCK_SEED=\(seed) swift test --filter randomCyclesGetOneVictimEach)"
        for failure in lateFailures {
            Issue.record("seed \(seed): a false victim: \(failure)\(replay)")
            failed = true
        }
        for cycle in 0..<cycleCount {
            let count = victims.filter { cycleOf[$0] == cycle }.count
            let expected = kinds[cycle] == .real ? 1 : 0
            if count != expected && !(kinds[cycle] == .brokenLate && count <= 1) {
                Issue.record(
                    "seed \(seed): cycle \(cycle) (\(kinds[cycle]), \(members[cycle].count) requests on nodes \(members[cycle].map(\.node))) had \(count) victims, expected \(expected); victims \(victims)\(replay)"
                )
                failed = true
            }
        }
        let strays = victims.filter { cycleOf[$0] == nil }
        if !strays.isEmpty {
            Issue.record("seed \(seed): victims outside any cycle: \(strays)\(replay)")
            failed = true
        }
        if c.endless {
            Issue.record("seed \(seed): the traffic did not end\(replay)")
            failed = true
        }
        // Every client goes; idle past the toss delay, no node keeps anything of a resource or a client.
        let left = c.leftoversOnceEveryClientWent()
        if !left.isEmpty {
            Issue.record("seed \(seed): idle, \(left.joined(separator: "; "))\(replay)")
            failed = true
        }
        return !failed
    }
}
