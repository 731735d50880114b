import DLMTestSupport
import Foundation
import GroupServices
import Testing

// Random runs of `CorosyncMember`s over the simulated CPG (CorosyncMemberTests.swift): dlmd processes start and are
// killed, corosync nodes are cut into partitions and healed, votequorum's answers come late, fences fail. A fence
// that succeeds stops the node's dlmd: with the corosync provider, quorum is corosync's, not a majority of dlmd
// lives, so a fenced life that lived on (a lying fence) could form a primary view in a later partition where no
// dlmd knows of its fence; the guarantee rests on the fence, as dlm_controld's does. After every step, the
// simulation's invariant checker and "no two primary views at once, but where one side knows the other's life is
// over"; at the end, everything healed and every fenced life restarted, one primary view of every process.
//
// DLM_COROSYNC_SEEDS: how many seeds (default 300) from DLM_COROSYNC_FIRST_SEED (default 1); DLM_COROSYNC_SEED
// replays one.
@Suite struct CorosyncMemberRandomTests {
    static var seeds: [UInt64] {
        let environment = ProcessInfo.processInfo.environment
        if let seed = environment["DLM_COROSYNC_SEED"].flatMap(UInt64.init) { return [seed] }
        let first = environment["DLM_COROSYNC_FIRST_SEED"].flatMap(UInt64.init) ?? 1
        let count = UInt64(environment["DLM_COROSYNC_SEEDS"].flatMap(Int.init) ?? 300)
        return Array(first..<(first + count))
    }

    @Test func randomStartsKillsPartitionsAndLateQuorum() {
        for seed in Self.seeds {
            if let failure = Self.run(seed: seed) {
                Issue.record("seed \(seed) (replay: DLM_COROSYNC_SEED=\(seed)): \(failure)")
                return
            }
        }
    }

    /// Seeds beyond `make test`'s range that found a fault, each run on every `make test`. 3643: a member kept a node
    /// as "fenced while corosync did not count it" across a primary view with that node's next life (votequorum's
    /// answer came late), and the next primary view left that life out without fencing it.
    @Test(arguments: [3643 as UInt64])
    func seedThatOnceFailed(_ seed: UInt64) {
        let failure = Self.run(seed: seed)
        #expect(failure == nil, "seed \(seed): \(failure ?? "")")
    }

    static func run(seed: UInt64) -> String? {
        var random = SplitMix64(seed: seed)
        let count = 3 + random.below(3)
        let cpg = SimulatedCorosync(nodes: count)
        cpg.fenceStopsNode = true
        let nodes = (1...count).map { NodeID(UInt32($0)) }
        var pendingQuorum: Set<ProcessAddress> = []
        let trace = ProcessInfo.processInfo.environment["DLM_COROSYNC_TRACE"] == "1"

        func quorate(_ part: Int) -> Bool { cpg.quorumNodes(part).count * 2 > count }
        func process(on node: NodeID) -> ProcessAddress? { cpg.members.keys.first { $0.node == node } }
        func start(_ node: NodeID) {
            let part = cpg.corosync[node]!
            cpg.start(node, quorate: quorate(part), part: part)
        }
        func answerQuorum(_ address: ProcessAddress) {
            guard let part = cpg.partition[address] else { return }
            cpg.quorum(quorate(part), at: [address])
        }
        func check(_ step: String) -> String? {
            if let violation = cpg.checker.violation { return "\(step): \(violation)" }
            // No two primary views at once among live lives, but where one side knows the other's life is over:
            // fenced by a primary view, or its node fenced since corosync last counted it. (View numbers do not order
            // the views of two partitions: a life that started alone counts from its own.)
            func knowsOver(_ knower: CorosyncMember, _ life: Member) -> Bool {
                if let fenced = knower.fencedIncarnation(of: life.node), fenced >= life.incarnation { return true }
                return knower.fencedAbsent.contains(life.node)
            }
            let primaries = cpg.members.values.filter { $0.isPrimary && !$0.wasFenced && $0.lostReason == nil }
            for a in primaries {
                for b in primaries {
                    guard let one = a.view, let other = b.view, one.id < other.id else { continue }
                    if other.contains(a.me) || one.contains(b.me) { continue }  // on its way to the other
                    if knowsOver(b, a.me) || knowsOver(a, b.me) { continue }
                    return "\(step): \(a.me) is in primary \(one) while \(b.me) is in primary \(other)"
                }
            }
            return nil
        }

        for node in nodes where random.percent(80) { start(node) }
        if let failure = check("start") { return failure }
        for step in 0..<150 {
            let what: String
            switch random.below(10) {
            case 0, 1:
                let node = random.element(nodes)
                if let address = process(on: node) {
                    cpg.kill(address)
                    what = "kill \(address)"
                } else {
                    start(node)
                    what = "start \(node)"
                }
            case 2:
                // Some nodes go to a new partition (its number one above the highest).
                let part = (cpg.corosync.values.max() ?? 0) + 1
                let moving = nodes.filter { _ in random.percent(40) }
                cpg.move(Dictionary(uniqueKeysWithValues: moving.map { ($0, part) }))
                pendingQuorum.formUnion(cpg.members.keys)
                what = "partition \(moving) -> \(part)"
            case 3:
                cpg.move(Dictionary(uniqueKeysWithValues: nodes.map { ($0, 0) }))
                pendingQuorum.formUnion(cpg.members.keys)
                what = "heal"
            case 4, 5:
                // votequorum answers, late, at some processes.
                let answering = pendingQuorum.sorted().filter { _ in random.percent(60) }
                for address in answering { answerQuorum(address) }
                pendingQuorum.subtract(answering)
                what = "quorum at \(answering)"
            case 6:
                cpg.fenceSucceeds = random.percent(70)
                what = "fences \(cpg.fenceSucceeds ? "succeed" : "fail")"
            case 7:
                if let address = cpg.members.keys.sorted().first(where: { cpg.members[$0]!.wasFenced }) {
                    cpg.kill(address)
                    what = "kill fenced \(address)"
                } else {
                    what = "nothing"
                }
            default:
                cpg.tick(by: 10)
                what = "tick"
            }
            pendingQuorum = pendingQuorum.filter { cpg.members[$0] != nil }
            if trace {
                print(
                    "step \(step): \(what); partitions \(cpg.corosync.sorted { $0.key < $1.key }.map { "\($0.key):\($0.value)" })"
                )
                for line in cpg.take() { print("    \(line)") }
            }
            if let failure = check("step \(step) (\(what))") { return failure }
        }

        // Everything healed, every answer given, fences working, every fenced life restarted, every node running.
        // (A life learns it was fenced in the rounds the healing starts: an operator restarts it then.)
        cpg.fenceSucceeds = true
        cpg.move(Dictionary(uniqueKeysWithValues: nodes.map { ($0, 0) }))
        for _ in 0..<3 {
            for address in cpg.members.keys.sorted() { answerQuorum(address) }
            for address in cpg.members.keys.sorted() where cpg.members[address]?.wasFenced == true { cpg.kill(address) }
            for node in nodes where process(on: node) == nil { start(node) }
            for _ in 0..<3 { cpg.tick(by: 10) }
        }
        if let failure = check("end") { return failure }
        let views = Set(cpg.members.values.map(\.view))
        let lives = Set(cpg.members.values.map(\.me))
        guard views.count == 1, let view = views.first!, Set(view.members) == lives,
            cpg.members.values.allSatisfy(\.isPrimary)
        else {
            return "at the end: views \(views.map { $0?.description ?? "none" }), lives \(lives.sorted()), "
                + "primary \(cpg.members.values.map(\.isPrimary)), waiting for "
                + "\(cpg.members.values.map(\.waitingFor))"
        }
        return nil
    }
}
