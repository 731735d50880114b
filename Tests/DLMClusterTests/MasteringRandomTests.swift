import DLMTestSupport
import DLMWire
import Foundation
import GroupServices
import Testing

@testable import DLMCluster
@testable import DLMCore

/// Random lock traffic from clients on 2 to 5 nodes over a few shared names, with the peer messages carried in a
/// random interleaving (in order per pair of nodes). After every step: no two clients believe they hold
/// incompatible modes of one resource (a client stops relying on a lock when it sends its unlock, and, when it
/// sends a conversion, relies only on what both modes promise until the conversion's completion). At the end, with every message carried, every request has
/// been answered, and once every client went, no lock is left on any node but the orphans of persistent locks.
///
/// DLM_MASTERING_SEEDS sets how many seeds (default 300; `make test` runs 800, `make sim` SEEDS); DLM_MASTERING_SEED
/// replays one (DLM_MASTERING_FIRST_SEED starts the run elsewhere), and DLM_MASTERING_TRACE=1 prints every message, frame and, at a failure, each node's locks.
@Suite struct MasteringRandomTests {
    static var seeds: [UInt64] { randomSeeds(count: "DLM_MASTERING_SEEDS", default: 300) }

    @Test func randomTrafficKeepsExclusionAndCompletes() {
        MasteringRun.runAll(Self.seeds, faults: false, suite: "MasteringRandomTests")
    }
}

/// The same traffic while nodes crash and restart (from what their stores committed, `ModelStore`) and views change
/// (delivered to each node at a random moment), and, in seeds with stores, the whole cluster dies at once and
/// restarts from its stores once or twice (sub-locks may be persistent, and orphans count as holders):
/// recovery keeps exclusion, and no survivor loses a lock it was granted (an unlock or conversion of a lock its
/// client believes it holds never meets ENOENT); every value block read is the last acknowledged PW or EX write
/// (or a later one), or is flagged VALNOTVALID, and only when a PW or EX holder died since the last acknowledged
/// write (or two nodes left at once); at the end every request was answered. On 3 to 5 nodes; DLM_RECOVERY_SEEDS
/// sets how many seeds (default 300; `make test` runs 800, `make sim` SEEDS); the replay variables are those above.
@Suite
struct RecoveryRandomTests {
    static var seeds: [UInt64] { randomSeeds(count: "DLM_RECOVERY_SEEDS", default: 300) }

    @Test func crashesAndRestartsKeepExclusionAndLoseNoLock() {
        MasteringRun.runAll(Self.seeds, faults: true, suite: "RecoveryRandomTests")
    }

    /// The same on six or seven nodes (DLM_LARGE_SEEDS seeds, default 50; `make test` runs 400): more masters,
    /// directory nodes and backup nodes per resource to move, with up to three nodes down at once.
    @Test func crashesAndRestartsOnSixOrSevenNodes() {
        MasteringRun.runAll(
            randomSeeds(count: "DLM_LARGE_SEEDS", default: 50), faults: true, nodes: 6...7,
            suite: "RecoveryRandomTests/crashesAndRestartsOnSixOrSevenNodes")
    }

    /// Seeds that once failed, run every time. 42730: a REMOVE that a directory node held through two recoveries
    /// made it forget the master that had asked for the resource again meanwhile, and a second node mastered it
    /// (two holders of incompatible modes). 1167: a master held an owner's exit through a recovery and, in the next
    /// run, sent the holder the ids of the owner's rebuilt locks again; the holder bound them to another owner's
    /// copies that had taken the same copy ids since (its lock was then "lost"; a binding names its owner now). 2202: a new life rebuilt a resource
    /// from its own store's offer at a restart of the whole cluster, and its store kept the old lock records beside
    /// the new ones: the next restart of the whole cluster gave the orphan back twice.
    /// (Their traffic is the one they failed with: its sub-locks were never persistent.) 13403, with today's
    /// traffic: after a chain of aborted recoveries, a node kept a replica of a value block from an earlier view,
    /// and once the master and the later backup node had both left, the new master trusted it: a reader read an
    /// older value than the last acknowledged write, as valid (outdated replicas, LockService+Replicas.swift).
    /// 62729: an owner's exit whose grants took another slice gave its slot back a second time, after a new owner
    /// had taken it and exited too; a third owner got the slot and the second exit released its lock
    /// (BulkWorkTests.anExitFinishingItsGrantsDoesNotGiveBackASlotTakenSince). 183530: two backup nodes both kept
    /// a resource's replica, both marked outdated, with the same value-block sequence; the new master took the
    /// older, whose persistent PW had been released since, beside the later EX (each replica now says which life
    /// and generation of its master sent it: ValueReplicaTests.ofTwoOutdatedReplicasOfOneMasterTheLaterOneIsRebuilt).
    /// 249815: a new master forgot the ids of the locks it had rebuilt once it completed a later recovery, while their
    /// holder had completed none and resent them once more
    /// (MasteringTests.aHolderThatCompletesNoRecoveryKeepsItsLocksThroughThree). 264599: the harness's, not the
    /// service's: in the last phase's one long `run`, requests going back and forth between nodes 1, 3 and 5 (node 1
    /// asking for a resource the directory had just named node 3 master of) kept the lower links busy, and the
    /// directory's answer to node 3, on a higher link, was never carried (`ClusterHarness.fairAfter`). 344356: an
    /// UNLOCK whose master released the lock and dropped the idle resource, then died before its answer came; the
    /// resource had another master by then, nothing rebuilt the lock, and the UNLOCK sent again was refused with
    /// ENOENT (`releasedByDepartedMaster`). 18097: a client whose lock's master had moved to its own node (recovery
    /// rebuilt it there) wrote the value block by a down-conversion; the answer went through the node's loopback at
    /// once, ahead of the backup node's acknowledgement, the node died, and the acknowledged value was lost (read
    /// later as not valid; `send(_:to:)` holds messages to this node as it holds those to others). 501201 (found by
    /// the idle check at the end): a replica that a cut-off master had sent before the view left it out reached its
    /// backup node after the recovery, and stayed there; 530482, the same at a restarted node that had never known
    /// the sender as a member (a replica of a life outside the view sent in an earlier view is dropped). 528210: an
    /// unlock writing the value block, done by a master that died before its answer came, was sent again to the new
    /// master and wrote its value over the acknowledged write of a PW holder granted after it (an operation carries
    /// the value-block sequence of its lock's last grant: `LockEngine.writeWasDone`).
    @Test func seedsThatOnceFailed() {
        MasteringRun.runAll(
            [42730, 1167, 2202], faults: true, persistentSubLocks: false,
            suite: "RecoveryRandomTests/seedsThatOnceFailed")
        MasteringRun.runAll(
            [13403, 18097, 62729, 183530, 249815, 264599, 344356, 501201, 528210, 530482], faults: true,
            suite: "RecoveryRandomTests/seedsThatOnceFailed")
        // With FORCEUNLOCK: 8107, a node that walked its copies after registering a resource as its own forgot that
        // it masters it (it answered "not master" for ever while the directory named it). 501115: the FORCEUNLOCK
        // of a parent granted a sub-lock waiting behind its siblings as they went, then released it; the grant
        // reached the holder's node after the parent's EUNLOCK, and another node's client took EX of the sub-resource
        // while this model took the first for held (`decideGrant` grants no sub-lock of a parent being released; and
        // since 517413, where a sub-lock's own request ran before its parent's FORCEUNLOCK, the model relies on no
        // sub-lock granted after the client sent the FORCEUNLOCK of its parent: `joinForcedRelease`).
        MasteringRun.runAll(
            [8107, 501115, 517413], faults: true, forcedUnlocks: true, suite: "RecoveryRandomTests/seedsThatOnceFailed")
        // With timeouts: 536299, the harness's: a lookup asked again at the end of a node's recovery, while the first
        // was still on its way, found the resource dropped since and made the node its master at the directory,
        // whose answer waited for the directory node's store commit; meanwhile another node's requests went back and forth between the directory and it
        // ("not master") in one long `run`, which committed no store (ClusterHarness.run now does, as a real store
        // commits while the traffic goes on).
        MasteringRun.runAll(
            [536299], faults: true, timeouts: true, suite: "RecoveryRandomTests/seedsThatOnceFailed")
    }

    /// The same, with parents released by FORCEUNLOCK with their sub-locks (DLM_FORCED_SEEDS seeds, default 100;
    /// `make test` runs 400).
    @Test func forcedUnlocksTakeTheirSubLocksAcrossRecoveries() {
        MasteringRun.runAll(
            randomSeeds(count: "DLM_FORCED_SEEDS", default: 100), faults: true, forcedUnlocks: true,
            suite: "RecoveryRandomTests/forcedUnlocksTakeTheirSubLocksAcrossRecoveries")
    }

    /// The same, with a timeout (TIMEOUT) on some waiting requests, which their masters end with ETIMEDOUT before,
    /// during and after recoveries, and whose resources they then drop (DLM_TIMEOUT_SEEDS seeds, default 100; `make
    /// test` runs 400).
    @Test func timeoutsEndWaitingRequestsAcrossRecoveries() {
        MasteringRun.runAll(
            randomSeeds(count: "DLM_TIMEOUT_SEEDS", default: 100), faults: true, timeouts: true,
            suite: "RecoveryRandomTests/timeoutsEndWaitingRequestsAcrossRecoveries")
    }
}

/// The seeds of a random test: PREFIX_SEED (DLM_MASTERING_SEED) replays one; else `count` (an environment
/// variable, or `default`) seeds from PREFIX_FIRST_SEED (1).
func randomSeeds(count variable: String, default fallback: Int, prefix: String = "DLM_MASTERING") -> [UInt64] {
    let environment = ProcessInfo.processInfo.environment
    if let one = environment["\(prefix)_SEED"].flatMap(UInt64.init) { return [one] }
    let first = environment["\(prefix)_FIRST_SEED"].flatMap(UInt64.init) ?? 1
    let count = UInt64(environment[variable].flatMap(Int.init) ?? fallback)
    return Array(first..<(first + count))
}

struct MasteringRun {
    /// Runs each seed; the first failure is recorded with its replay command.
    static func runAll(
        _ seeds: [UInt64], faults: Bool, persistentSubLocks: Bool = true, forcedUnlocks: Bool = false,
        timeouts: Bool = false, nodes: ClosedRange<UInt32>? = nil, suite: String
    ) {
        var reads = 0
        var readsAfterRecovery = 0
        var restarts = 0
        var orphansAfterRestarts = 0
        var orphanSubLocksAfterRestarts = 0
        var subLocksForced = 0
        var timedOut = 0
        for seed in seeds {
            var run = MasteringRun(
                seed: seed, faults: faults, persistentSubLocks: persistentSubLocks, forcedUnlocks: forcedUnlocks,
                timeouts: timeouts, nodes: nodes)
            defer {
                reads += run.readsOfWrittenValues
                readsAfterRecovery += run.readsAfterMasterLeft
                restarts += run.wholeRestarts
                orphansAfterRestarts += run.orphansAfterRestarts
                orphanSubLocksAfterRestarts += run.orphanSubLocksAfterRestarts
                subLocksForced += run.subLocksForced
                timedOut += run.requestsTimedOut
            }
            do {
                try run.go()
            } catch {
                let replay =
                    "replay: DLM_MASTERING_SEED=\(seed) DLM_MASTERING_TRACE=1 swift test --filter DLMClusterTests.\(suite)"
                Issue.record("\(error)\n\(replay)")
                return
            }
        }
        // The value-block checks saw something: reads of acknowledged writes, and, with faults, some after the
        // master of the value left.
        if timeouts && seeds.count >= 50 {
            #expect(timedOut > 0, "no waiting request ended by its timeout")
        }
        if forcedUnlocks && seeds.count >= 50 {
            #expect(subLocksForced > 0, "no sub-lock released by its parent's FORCEUNLOCK")
        }
        if seeds.count >= 200 {
            #expect(reads > 0, "no value block read checked")
            if faults {
                #expect(readsAfterRecovery > 0, "no value block read checked after its master left")
                // Restarts of the whole cluster happened, and gave persistent locks back.
                #expect(
                    restarts > 0 && orphansAfterRestarts > 0, "\(restarts) restarts, \(orphansAfterRestarts) orphans")
                #expect(
                    !persistentSubLocks || orphanSubLocksAfterRestarts > 0,
                    "no persistent sub-lock came back after a restart of the whole cluster")
            }
        }
    }

    var random: SplitMix64
    let seed: UInt64
    /// Nodes crash and restart, and views change.
    let faults: Bool
    /// Sub-locks are persistent: three in four under a persistent parent, one in three under another (chosen by
    /// the step, so that the random draws stay those of the traffic before persistent sub-locks were replicated).
    let persistentSubLocks: Bool
    /// A parent lock with sub-locks is released with FORCEUNLOCK, which takes its sub-locks with it (otherwise a
    /// parent goes after its sub-locks).
    let forcedUnlocks: Bool
    /// Some waiting requests have a timeout (TIMEOUT, a few ticks of the simulated clock).
    let timeouts: Bool
    /// Lock requests that ended with ETIMEDOUT.
    var requestsTimedOut = 0
    /// Each node's newest view that it has not been given yet.
    var undelivered: [UInt32: View] = [:]
    var crashes = 0
    /// Restarts of the whole cluster from the stores (seeds with stores only); whether one's recovery has not ended
    /// everywhere yet; and the orphans found once it had.
    var wholeRestarts = 0
    var restartUnrecovered = false
    var orphansAfterRestarts = 0
    /// Of those, the sub-locks (they come back with their parents).
    var orphanSubLocksAfterRestarts = 0
    /// Sub-locks released by their parent's FORCEUNLOCK (`forcedUnlocks`), as their untagged EUNLOCK said.
    var subLocksForced = 0
    /// The sub-locks a FORCEUNLOCK sent and not answered yet is releasing, by client and lock.
    var forcedSubLocks: Set<String> = []
    /// Locks whose FORCEUNLOCK the client sent, until they end.
    var forcedParents: Set<String> = []
    /// A node cut off from the others: it installed a view of itself alone, without quorum, while the others went on
    /// without it (and fenced it, with a fence that left it running: what was in flight to it still arrives). It
    /// must serve nothing until the fence catches up with it (it crashes at the next fault step).
    var isolated: UInt32?
    var cluster: ClusterHarness
    var clients: [ClientModel] = []
    let names: [String]
    var step = 0

    struct Failure: Error, CustomStringConvertible {
        var description: String
    }

    /// What a client believes of its locks, from what it sent and what it got.
    struct ClientModel {
        var node: UInt32
        var id: ConnectionID
        var name: String
        var gone = false
        var nextTag: UInt32 = 10
        var outstanding: [UInt32: Operation] = [:]
        var locks: [UInt32: Lock] = [:]

        enum Operation {
            case lock(String, LockMode)
            case convert(UInt32, LockMode)
            case unlock(UInt32)
            /// A conversion or unlock that writes this value (its number) to the value block.
            case write(UInt32, String, UInt64)
        }

        struct Lock {
            var resource: String
            /// The mode held as the master last said (nil: not granted yet).
            var granted: LockMode?
            /// The mode this client relies on: none once it sent an unlock, the weaker mode once it asked for one.
            var relied: LockMode?
            var converting = false
            var releasing = false
            /// Taken with VALBLK: reads and writes the value block.
            var valueBlock = false
            /// The mode it may hold at the master (the strongest of its granted mode and one asked for).
            var mayHold: LockMode?
            /// Taken with PERSISTENT.
            var persistent = false
            /// A sub-lock's parent lock, and how deep it is (0: a lock on a top-level resource).
            var parent: UInt32?
            var depth = 0
        }
    }

    init(
        seed: UInt64, faults: Bool, persistentSubLocks: Bool = true, forcedUnlocks: Bool = false,
        timeouts: Bool = false, nodes: ClosedRange<UInt32>? = nil
    ) {
        self.timeouts = timeouts
        self.seed = seed
        self.faults = faults
        self.persistentSubLocks = persistentSubLocks
        self.forcedUnlocks = forcedUnlocks
        random = SplitMix64(seed: seed)
        // (3 to 5 nodes with faults, 2 to 5 without, unless `nodes` says: each seed keeps its scenario.)
        let nodeCount: UInt32
        if let nodes {
            nodeCount = nodes.lowerBound + UInt32(random.below(nodes.count))
        } else {
            nodeCount = UInt32((faults ? 3 : 2) + random.below(faults ? 3 : 4))
        }
        // Half the seeds with stores: replies and messages that follow a persistent change wait for its commit.
        // Idle resources are dropped after 1 µs of simulated time (`tickStep`), so that dropping and mastering
        // anew meet the traffic.
        // Recovery in slices of 1 to 4 entries, an owner's exit and a purge in slices of 1 to 4 locks, so that
        // their slices meet every other step.
        cluster = ClusterHarness(
            nodes: nodeCount, stores: random.bool(), tossDelay: 1_000,
            engine: EngineConfig(bulkSlice: 1 + random.below(4)), recoverySlice: 1 + random.below(4),
            everyNodeUsesLockspace: false)
        names = (0..<(1 + random.below(4))).map { "n\($0)" }
        for node in 1...nodeCount {
            for letter in ["a", "b"] { connect(node, letter) }
        }
    }

    /// The user of a client's process: three users among the clients.
    static func user(ofProcess pid: UInt32) -> UInt32 { 2000 + pid % 3 }

    mutating func connect(_ node: UInt32, _ letter: String) {
        // A pid of its own, and one of three users (`user(ofProcess:)`): an orphan must keep its owner's, on every
        // node that rebuilds it.
        let pid = 1000 + UInt32(clients.count)
        let credentials = ClientCredentials(pid: pid, uid: Self.user(ofProcess: pid))
        let client = cluster.client(node, letter + "\(clients.count)", credentials: credentials, mode: 0o666)
        clients.append(ClientModel(node: node, id: client.id, name: "\(node)\(letter)\(clients.count)"))
        absorb()
    }

    mutating func go() throws {
        for _ in 0..<400 {
            step += 1
            if faults && random.percent(2) {
                faultStep()
            } else if !undelivered.isEmpty && random.percent(10) {
                deliverView(random.element(undelivered.keys.sorted()))
            } else if !cluster.wantsSlice.isEmpty && random.percent(20) {
                // A slice of a node's work in slices (recovery, an exit, a purge), between other steps.
                let node = random.element(cluster.wantsSlice.sorted())
                cluster.wantsSlice.remove(node)
                if trace { print("step \(step): slice of node \(node)") }
                cluster.withNode(node) { $0.handle(.bulkSlice) }
            } else if random.percent(5) {
                commitStep()
            } else if random.percent(3) {
                cluster.tick(by: 1_500)
            } else if random.percent(45) || !carryOne() {
                clientStep()
            }
            absorb()
            try check()
        }
        // The end: every store committed and every message carried, every waiting request cancelled, every lock
        // unlocked. (A node still cut off is checked with what was in flight to it, then its fence stops it.)
        commitAll()
        try check()
        if let node = isolated {
            isolated = nil
            cluster.crash(node)
        }
        for index in clients.indices where !clients[index].gone {
            // Sub-locks before their parents.
            let locks = clients[index].locks.sorted { ($0.value.depth, $1.key) > ($1.value.depth, $0.key) }
            for (lock, state) in locks where !state.releasing {
                send(index, .unlock(UnlockMessage(tag: tag(index, .unlock(lock)), lock: lock, flags: [])))
                clients[index].locks[lock]?.releasing = true
                clients[index].locks[lock]?.relied = nil
                if state.granted == nil || state.converting {
                    // A waiting request or conversion is cancelled first (an unlock of it is EBUSY).
                    send(index, .unlock(UnlockMessage(tag: tag(index, .unlock(lock)), lock: lock, flags: .cancel)))
                }
            }
            commitAll()
        }
        commitAll()
        for client in clients where !client.gone && !client.outstanding.isEmpty {
            if trace {
                for (node, h) in cluster.nodes.sorted(by: { $0.key < $1.key }) {
                    print(
                        "node \(node): unreleased \(h.service.unreleased) released \(h.service.releasedGeneration) open \(h.service.openGeneration) acked \(h.service.mastering.replicaAcknowledged) recovery \(String(describing: h.service.mastering.recovery?.view)) stopped \(h.service.isStopped)"
                    )
                }
            }
            throw Failure(description: "seed \(seed): \(client.name) has unanswered requests \(client.outstanding)")
        }
        for index in clients.indices where !clients[index].gone { close(index) }
        commitAll()
        // Persistent locks of clients that went stay as orphans; nothing else may.
        for (node, harness) in cluster.nodes {
            let engine = harness.service.engine
            let owned = engine.locks.indices.filter {
                !engine.locks[$0].isFree && engine.locks[$0].owner != orphanOwner
            }
            guard !owned.isEmpty else { continue }
            let left = owned.map {
                "\(engine.owners[Int(engine.locks[$0].owner)].id) mode \(engine.locks[$0].grantedMode)"
            }
            throw Failure(description: "seed \(seed): node \(node) keeps \(owned.count) owned locks: \(left)")
        }
        // Idle past the toss delay, every node keeps of a resource only what its orphans need: a daemon that runs
        // for months holds as much as the resources in use, not every name ever used.
        for _ in 0..<4 {
            cluster.tick(by: cluster.tossDelay + cluster.tossDelay / 2)
            commitAll()
        }
        try checkNothingLeftOfIdleResources()
    }

    /// What each node still holds of resources no lock uses, after the toss delay and with every message carried.
    func checkNothingLeftOfIdleResources() throws {
        let left = cluster.leftoversOfIdleResources()
        if !left.isEmpty { throw Failure(description: "seed \(seed): idle, \(left.joined(separator: "; "))") }
    }

    /// A random node crashes (while at least two others live), or a crashed one restarts; either way group
    /// services agree on a new view, which each node gets at its own moment.
    mutating func faultStep() {
        if let node = isolated {
            isolated = nil
            if trace { print("step \(step): node \(node) is stopped by its fence") }
            cluster.crash(node)
            return
        }
        let live = cluster.nodes.keys.sorted()
        let all = Array(cluster.incarnations.keys).sorted()
        let down = all.filter { cluster.nodes[$0] == nil }
        if cluster.stores && wholeRestarts < 2 && random.percent(15) {
            // Every node dies at once (what its store had not committed is lost) and starts again from its store:
            // the persistent locks of the latest stores come back as orphans (LockService+PreviousLife.swift).
            wholeRestarts += 1
            if trace { print("step \(step): every node dies at once and restarts from its store") }
            for index in clients.indices where !clients[index].gone {
                clientDied(index)
                clients[index].gone = true
                clients[index].locks = [:]
                clients[index].outstanding = [:]
            }
            for node in live { masterDeparts(node) }
            for node in all {
                cluster.crash(node)
                cluster.restartFromStore(node)
            }
            undelivered = [:]
            // A value block comes back only with a persistent lock, and may be marked not valid.
            for resource in names {
                acknowledged[resource] = nil
                writerDeaths[resource, default: 0] += 1
                mayBeInvalid.insert(resource)
            }
            departureUnrecovered = true
            restartUnrecovered = true
        } else if live.count > 2 && (down.isEmpty || random.bool()) && crashes < 3 {
            let node = random.element(live)
            crashes += 1
            masterDeparts(node)
            let cutOff = random.percent(30)
            if trace { print("step \(step): node \(node) \(cutOff ? "is cut off" : "crashes")") }
            if cutOff {
                // Its clients' locks are void for the others once it is fenced; it keeps running for now.
                isolated = node
                undelivered[node] = nil
                let alone = View(
                    id: ViewID(number: cluster.viewNumber + 1, coordinator: NodeID(node)),
                    members: [Member(node: NodeID(node), incarnation: cluster.incarnations[node]!)])
                cluster.nodes[node]!.handle(.viewInstalled(alone, primary: false))
            } else {
                cluster.crash(node)
                undelivered[node] = nil
            }
            if departureUnrecovered {
                // Two nodes gone before the recovery of the first ended: a value block's master and its backup
                // node may both be gone.
                for resource in names {
                    writerDeaths[resource, default: 0] += 1
                    mayBeInvalid.insert(resource)
                }
            }
            departureUnrecovered = true
            for resource in names where acknowledged[resource] != nil {
                let master = cluster.nodes.values.first {
                    guard let ls = $0.service.engine.lockspace(named: Array("ls".utf8)) else { return false }
                    return $0.service.engine.resourceSlot(ls, path: [Array(resource.utf8)]) != nil
                }
                if master == nil { masterLeftSinceWrite.insert(resource) }
            }
            for index in clients.indices where clients[index].node == node && !clients[index].gone {
                clientDied(index)
                clients[index].gone = true
                clients[index].locks = [:]
                clients[index].outstanding = [:]
            }
        } else if let node = down.first {
            if trace { print("step \(step): node \(node) restarts") }
            cluster.restartFromStore(node)
        } else {
            return
        }
        cluster.viewNumber += 1
        if isolated != nil { cluster.viewNumber += 1 }  // the cut-off node's own view took a number
        let members = cluster.nodes.keys.sorted().filter { $0 != isolated }.map {
            Member(node: NodeID($0), incarnation: cluster.incarnations[$0]!)
        }
        let view = View(
            id: ViewID(number: cluster.viewNumber, coordinator: members[0].node), members: members)
        for node in cluster.nodes.keys where node != isolated { undelivered[node] = view }
    }

    mutating func deliverView(_ node: UInt32) {
        guard let view = undelivered.removeValue(forKey: node), cluster.nodes[node] != nil else { return }
        if trace { print("step \(step): node \(node) installs view \(view.id.number)") }
        cluster.withNode(node) { $0.handle(.viewInstalled(view, primary: true)) }
        if cluster.nodes[node]!.service.connectionCount == 0 {
            // A restarted node gets clients again.
            for letter in ["a", "b"] { connect(node, letter) }
        }
    }

    /// Carries one message of a random link; false if none is in flight.
    mutating func carryOne() -> Bool {
        for node in cluster.nodes.keys.sorted() {
            let output = cluster.withNode(node) { $0.service.takeOutput() }
            collect(node, output)
        }
        let links = cluster.links.keys.filter { !(cluster.links[$0]?.isEmpty ?? true) }.sorted()
        guard !links.isEmpty else { return false }
        let link = random.element(links)
        let message = cluster.links[link]!.removeFirst()
        if trace { print("step \(step): \(link.from) -> \(link.to): \(message)") }
        cluster.withNode(link.to) { $0.handle(.peer(from: link.from, message)) }
        return true
    }

    var pendingFrames: [(client: String, message: ServerMessage)] = []

    // The value blocks: every value written is a new number (its first 8 bytes).
    var nextValue: UInt64 = 1
    /// Per resource: the newest value whose write was acknowledged (0: none, or the resource may have been freed
    /// since, its value block with it).
    var acknowledged: [String: UInt64] = [:]
    /// Per resource: PW or EX holders that died, counted, and whether one died since the last acknowledged write.
    var writerDeaths: [String: Int] = [:]
    var mayBeInvalid: Set<String> = []
    /// Per resource: owners that went while they held, or asked for, PW or EX, for as long as any node may still
    /// grant them (a master grants a departed owner's waiting request until it learns of the departure): a write
    /// meanwhile does not make the value block trustworthy again.
    var lingering: [String: Set<OwnerID>] = [:]
    /// Resources whose master left, until every node recovered (`masterDeparts`), with the departed masters.
    var masterless: [String: Set<UInt32>] = [:]
    /// The count of writer deaths when each write was sent, by client and tag.
    var deathsAtWrite: [String: Int] = [:]
    /// Per resource: how many times it may have been freed (no engine had it and no client held it); and that count
    /// when each write was sent (a write whose resource was freed meanwhile went with it).
    var frees: [String: Int] = [:]
    var freesAtWrite: [String: Int] = [:]
    /// A node left while the recovery of an earlier departure had not ended everywhere: two at once.
    var departureUnrecovered = false
    var valueFailures: [String] = []
    /// The fencing tokens of PW and EX grants, by resource.
    var tokensGranted: [String: Set<UInt64>] = [:]
    /// Reads checked against an acknowledged write; of those, after the resource's master left.
    var readsOfWrittenValues = 0
    var readsAfterMasterLeft = 0
    /// Resources whose value was acknowledged and whose master then left.
    var masterLeftSinceWrite: Set<String> = []
    /// Lock requests sent with VALBLK, by client and tag.
    var valueBlockRequests: Set<String> = []
    /// The requests with PERSISTENT not answered yet, by client and tag.
    var persistentRequests: Set<String> = []
    /// The parent lock of each sub-lock request not answered yet, by client and tag.
    var subLockParents: [String: UInt32] = [:]
    /// The unlocks (not cancels) not answered yet, by client and tag: an unlock of a parent refused with EBUSY
    /// leaves it held.
    var releases: [String: UInt32] = [:]
    /// Locks a client believed it held that its node's lock service no longer knew.
    var lostLocks: [String] = []
    let trace = ProcessInfo.processInfo.environment["DLM_MASTERING_TRACE"] != nil

    /// A random node's store commits what it was given.
    mutating func commitStep() {
        for node in cluster.nodes.keys.sorted() { collect(node, cluster.withNode(node) { $0.service.takeOutput() }) }
        let node = random.element(cluster.nodes.keys.sorted())
        cluster.commitStore(node)
    }

    /// Carries every message and commits every store until nothing is left to do.
    mutating func commitAll() {
        for node in undelivered.keys.sorted() { deliverView(node) }
        for _ in 0..<100 {
            absorb(cluster.run())
            let before = cluster.written
            for node in cluster.nodes.keys.sorted() {
                cluster.commitStore(node)
            }
            absorb(cluster.run())
            if cluster.written == before && cluster.links.values.allSatisfy(\.isEmpty) && cluster.wantsSlice.isEmpty {
                return
            }
        }
    }

    mutating func collect(_ node: UInt32, _ output: ServiceOutput) {
        cluster.noteWritten(node, output)
        if output.wantsBulkSlice { cluster.wantsSlice.insert(node) }
        for (to, message) in cluster.withNode(node, { $0.takePeerMessages() }) where cluster.nodes.keys.contains(to) {
            cluster.links[ClusterHarness.Link(from: node, to: to), default: []].append(message)
        }
        pendingFrames.append(contentsOf: ClusterHarness.removals(output.peerMessages))
        let names = output.frames.isEmpty ? [:] : cluster.withNode(node) { $0.clientNames() }
        for (connection, message) in output.frames {
            pendingFrames.append((names[connection] ?? "?", message))
        }
        for (to, message) in output.peerMessages where cluster.nodes.keys.contains(to) {
            if trace { print("step \(step): queued \(node) -> \(to): \(message)") }
            cluster.links[ClusterHarness.Link(from: node, to: to), default: []].append(message)
        }
    }

    /// Takes every node's output and applies the frames to the clients' beliefs.
    mutating func absorb(_ lines: [String] = []) {
        for node in cluster.nodes.keys.sorted() { collect(node, cluster.withNode(node) { $0.service.takeOutput() }) }
        let frames = pendingFrames + cluster.framesSeen
        pendingFrames = []
        cluster.framesSeen = []
        for (name, message) in frames {
            if name.hasPrefix(ClusterHarness.freedMark) {
                let resource = String(name.dropFirst(ClusterHarness.freedMark.count))
                acknowledged[resource] = nil
                frees[resource, default: 0] += 1
                continue
            }
            guard let index = clients.firstIndex(where: { $0.name == name }) else { continue }
            if trace { print("step \(step): \(name) gets \(ServiceHarness.line(message))") }
            apply(message, to: index)
        }
    }

    mutating func apply(_ message: ServerMessage, to index: Int) {
        switch message {
        case .ok(let tag, let lock):
            if case .lock(let resource, let mode) = clients[index].outstanding.removeValue(forKey: tag) {
                clients[index].locks[lock] = newLock(resource, mode, index, tag)
                joinForcedRelease(lock, index)
            }
        case .completion(let c):
            if c.tag != 0 { releases[key(index, c.tag)] = nil }
            if c.tag != 0, let operation = clients[index].outstanding.removeValue(forKey: c.tag) {
                switch operation {
                case .lock(let resource, let mode):
                    clients[index].locks[c.lock] = newLock(resource, mode, index, c.tag)
                    joinForcedRelease(c.lock, index)
                case .write(_, let resource, let value):
                    writeAcknowledged(resource, value: value, key: key(index, c.tag))
                case .convert, .unlock:
                    break
                }
            }
            guard var lock = clients[index].locks[c.lock] else { return }
            // A fencing token of a PW or EX grant is never issued twice for a resource, whichever node masters it
            // (each is above every earlier one; completions of different clients may arrive in another order).
            if c.status == .granted, let mode = c.mode, mode >= .pw, c.fencingToken != 0,
                !tokensGranted[lock.resource, default: []].insert(c.fencingToken).inserted
            {
                valueFailures.append("fencing token \(c.fencingToken) of \(lock.resource) granted twice")
            }
            // A read in NL or CR may be older than a write a PW holder made meanwhile (they are compatible); a read
            // in any other mode excludes every writer from its grant on.
            if lock.valueBlock, !c.valueBlock.isEmpty, let mode = c.mode, mode != .nl, mode != .cr {
                checkRead(c.valueBlock, flags: c.flags, resource: lock.resource, by: index)
            }
            if c.status == .timedOut, c.mode == nil { requestsTimedOut += 1 }
            if c.tag == 0, c.status == .unlocked, forcedSubLocks.remove(key(index, c.lock)) != nil {
                subLocksForced += 1
            }
            if let mode = c.mode {
                lock.granted = mode
                lock.mayHold = mode
                lock.converting = false
                if !lock.releasing { lock.relied = mode }
                clients[index].locks[c.lock] = lock
            } else {
                clients[index].locks[c.lock] = nil
                forcedParents.remove(key(index, c.lock))
            }
        case .error(let tag, let status, let message):
            let operation = clients[index].outstanding.removeValue(forKey: tag)
            subLockParents[key(index, tag)] = nil
            if status == .busy, let lock = releases.removeValue(forKey: key(index, tag)),
                let granted = clients[index].locks[lock]?.granted
            {
                // The unlock of a parent whose sub-lock was granted before its cancel came: still held.
                clients[index].locks[lock]?.releasing = false
                clients[index].locks[lock]?.relied = granted
            }
            if status == .noEntry {
                switch operation {
                case .convert(let lock, _), .unlock(let lock), .write(let lock, _, _):
                    if clients[index].locks[lock] != nil {
                        lostLocks.append("\(clients[index].name) lock \(lock): \(message)")
                    }
                default:
                    break
                }
            }
        default:
            break
        }
    }

    func key(_ index: Int, _ tag: UInt32) -> String { "\(clients[index].name)/\(tag)" }

    /// A lock the master answered (a sub-lock with its parent).
    /// A sub-lock that a client's request got under a parent whose FORCEUNLOCK it had sent before the answer came
    /// (its request ran first, then the FORCEUNLOCK took it): the client relies on it no more, as on the others.
    mutating func joinForcedRelease(_ lock: UInt32, _ index: Int) {
        guard let parent = clients[index].locks[lock]?.parent,
            forcedParents.contains(key(index, parent)) || forcedSubLocks.contains(key(index, parent))
        else { return }
        clients[index].locks[lock]?.releasing = true
        clients[index].locks[lock]?.relied = nil
        forcedSubLocks.insert(key(index, lock))
    }

    mutating func newLock(_ resource: String, _ mode: LockMode, _ index: Int, _ tag: UInt32) -> ClientModel.Lock {
        var lock = ClientModel.Lock(
            resource: resource, valueBlock: valueBlockRequests.remove(key(index, tag)) != nil, mayHold: mode,
            persistent: persistentRequests.remove(key(index, tag)) != nil)
        if let parent = subLockParents.removeValue(forKey: key(index, tag)) {
            lock.parent = parent
            lock.depth = (clients[index].locks[parent]?.depth ?? 0) + 1
        }
        return lock
    }

    /// A value block read: not older than the last acknowledged write, and flagged not valid only when allowed.
    mutating func checkRead(_ value: [UInt8], flags: CompletionFlags, resource: String, by index: Int) {
        let number = value.prefix(8).enumerated().reduce(UInt64(0)) { $0 | UInt64($1.element) << (8 * $1.offset) }
        let last = acknowledged[resource, default: 0]
        if last > 0 { readsOfWrittenValues += 1 }
        if last > 0 && masterLeftSinceWrite.contains(resource) { readsAfterMasterLeft += 1 }
        if flags.contains(.valueNotValid) {
            if !mayBeInvalid.contains(resource) && !departureUnrecovered {
                valueFailures.append(
                    "\(clients[index].name) read value \(number) of \(resource) flagged not valid, but no PW or EX "
                        + "holder died since the last acknowledged write (\(last))")
            }
        } else if number < last || number >= nextValue {
            valueFailures.append(
                "\(clients[index].name) read value \(number) of \(resource), but \(last) was acknowledged")
        }
    }

    /// A write is sent. An owner that went while it had or waited for PW or EX may still be granted after this
    /// write reaches the master (the master learns of the departure later), and the departure then rightly marks the
    /// value not valid: a write sent, or acknowledged, while such an owner lingers does not make the value block
    /// trustworthy again (the owner may be gone from every node by the time the write is acknowledged).
    mutating func writeSent(_ resource: String, key: String) {
        if lingering[resource]?.isEmpty ?? true { deathsAtWrite[key] = writerDeaths[resource, default: 0] }
        freesAtWrite[key] = frees[resource, default: 0]
    }

    mutating func writeAcknowledged(_ resource: String, value: UInt64, key: String) {
        if !(lingering[resource]?.isEmpty ?? true) { deathsAtWrite[key] = nil }
        if freesAtWrite.removeValue(forKey: key) == frees[resource, default: 0] {
            acknowledged[resource] = max(acknowledged[resource, default: 0], value)
        }
        if deathsAtWrite.removeValue(forKey: key) == writerDeaths[resource, default: 0] {
            mayBeInvalid.remove(resource)
        }
    }

    /// A client's locks are gone with it (its node died, or it closed): a PW or EX it may have held may have
    /// written without telling.
    mutating func clientDied(_ index: Int) {
        let client = clients[index]
        let owner = OwnerID(node: client.node, incarnation: cluster.incarnations[client.node]!, local: client.id.owner)
        var resources: [String] = []
        for lock in client.locks.values {
            let modes = [lock.granted, lock.mayHold].compactMap { $0 }
            if modes.contains(where: { $0 >= .pw }) { resources.append(lock.resource) }
        }
        for case .lock(let resource, let mode) in client.outstanding.values where mode >= .pw {
            resources.append(resource)
        }
        for resource in resources {
            writerDeaths[resource, default: 0] += 1
            mayBeInvalid.insert(resource)
            lingering[resource, default: []].insert(owner)
        }
    }

    /// A node leaves: the resources it masters are rebuilt only if another node's client still has a lock on them
    /// when its recovery comes (it sends the lock to the new master); else their value blocks go.
    mutating func masterDeparts(_ node: UInt32) {
        guard let engine = cluster.nodes[node]?.service.engine,
            let lockspace = engine.lockspace(named: Array("ls".utf8))
        else { return }
        for resource in names where engine.resourceSlot(lockspace, path: [Array(resource.utf8)]) != nil {
            masterless[resource, default: []].insert(node)
        }
    }

    /// Whether a node may still grant something to `owner`: a node's engine knows it, or an operation of it is in
    /// flight, held by a recovery or waits for a lookup.
    func mayStillBeGranted(_ owner: OwnerID) -> Bool {
        if cluster.links.values.contains(where: { $0.contains { $0.operationOwner == owner } }) { return true }
        return cluster.nodes.values.contains { harness in
            let service = harness.service
            if !service.engine.owners(matching: { $0 == owner }).isEmpty { return true }
            if let held = service.mastering.recovery?.heldTraffic,
                held.contains(where: { $0.message.operationOwner == owner })
            {
                return true
            }
            return service.mastering.peerRequestsAwaitingLookup.values.contains {
                $0.contains { $0.message.operationOwner == owner }
            }
        }
    }

    /// A resource whose master freed it (its replica's removal went out), or that no live node's engine has and on
    /// which no client holds a lock it does not release, may have been freed with its value block: what was
    /// acknowledged no longer binds.
    mutating func forgetFreedValues() {
        for (resource, masters) in masterless {
            let held = clients.contains { client in
                !client.gone && !masters.contains(client.node)
                    && client.locks.values.contains { $0.resource == resource }
            }
            if !held {
                acknowledged[resource] = nil
                frees[resource, default: 0] += 1
            }
        }
        for resource in lingering.keys.sorted() {
            lingering[resource] = lingering[resource]!.filter(mayStillBeGranted)
            if lingering[resource]!.isEmpty { lingering[resource] = nil }
        }
        for resource in names {
            let held = clients.contains { client in
                !client.gone && client.locks.values.contains { $0.resource == resource && !$0.releasing }
            }
            let exists = cluster.nodes.values.contains { harness in
                let engine = harness.service.engine
                guard let lockspace = engine.lockspace(named: Array("ls".utf8)) else { return false }
                return engine.resourceSlot(lockspace, path: [Array(resource.utf8)]) != nil
            }
            if !held && !exists {
                acknowledged[resource] = nil
                frees[resource, default: 0] += 1
            }
        }
    }

    mutating func tag(_ index: Int, _ operation: ClientModel.Operation) -> UInt32 {
        let tag = clients[index].nextTag
        clients[index].nextTag += 1
        clients[index].outstanding[tag] = operation
        return tag
    }

    mutating func send(_ index: Int, _ message: ClientMessage) {
        if trace { print("step \(step): \(clients[index].name) sends \(message)") }
        cluster.send((clients[index].node, clients[index].id), message)
    }

    /// FORCEUNLOCK of a granted parent: the client relies on it and on every sub-lock below it no more, since the
    /// master releases them all at once (each sub-lock with its untagged EUNLOCK, the parent's last).
    mutating func forceUnlock(_ lock: UInt32, _ index: Int) {
        let tag = tag(index, .unlock(lock))
        send(index, .unlock(UnlockMessage(tag: tag, lock: lock, flags: .forceUnlock)))
        releases[key(index, tag)] = lock
        forcedParents.insert(key(index, lock))
        var level: Set<UInt32> = [lock]
        while !level.isEmpty {
            for id in level {
                clients[index].locks[id]?.releasing = true
                clients[index].locks[id]?.relied = nil
            }
            level = Set(clients[index].locks.filter { $0.value.parent.map(level.contains) ?? false }.keys)
            for id in level { forcedSubLocks.insert(key(index, id)) }
        }
    }

    mutating func close(_ index: Int) {
        if trace { print("step \(step): \(clients[index].name) closes") }
        cluster.close((clients[index].node, clients[index].id))
        clientDied(index)
        clients[index].gone = true
        clients[index].locks = [:]
        clients[index].outstanding = [:]
    }

    mutating func clientStep() {
        let live = clients.indices.filter { !clients[$0].gone && cluster.nodes[clients[$0].node] != nil }
        guard !live.isEmpty else { return }
        let index = random.element(live)
        let held = clients[index].locks.filter { !$0.value.releasing }.sorted { $0.key < $1.key }
        let mode = random.element(LockMode.allCases)
        switch random.below(100) {
        case 0..<40:
            let resource = random.element(names)
            var flags: LockFlags = random.percent(20) ? .noQueue : []
            if random.percent(20) { flags.insert(.persistent) }
            if random.percent(50) { flags.insert(.valueBlock) }
            let tag = tag(index, .lock(resource, mode))
            if flags.contains(.valueBlock) { valueBlockRequests.insert(key(index, tag)) }
            if flags.contains(.persistent) { persistentRequests.insert(key(index, tag)) }
            // (Drawn only in runs with timeouts: the other runs' draws stay what they were.)
            var timeout: UInt64 = 0
            if timeouts, !flags.contains(.noQueue), random.percent(40) {
                flags.insert(.timeout)
                timeout = 1_000 + UInt64(random.below(6_000))
            }
            send(
                index,
                .lock(
                    LockMessage(
                        tag: tag, lockspace: 0, flags: flags, mode: mode, timeoutNanoseconds: timeout,
                        name: Array(resource.utf8))))
        case 40..<60:
            guard let (lock, state) = held.filter({ $0.value.granted != nil && !$0.value.converting }).first else {
                return
            }
            if state.valueBlock, let granted = state.granted, granted >= .pw, !(granted == .pw && mode == .ex) {
                let value = newValue(for: state.resource, index)
                let tag = tag(index, .write(lock, state.resource, value.number))
                writeSent(state.resource, key: key(index, tag))
                send(
                    index,
                    .convert(
                        ConvertMessage(
                            tag: tag, lock: lock, flags: [.convert, .valueBlock], mode: mode, valueBlock: value.bytes)))
            } else {
                let flags: LockFlags = state.valueBlock ? [.convert, .valueBlock] : .convert
                send(
                    index,
                    .convert(
                        ConvertMessage(tag: tag(index, .convert(lock, mode)), lock: lock, flags: flags, mode: mode)))
            }
            clients[index].locks[lock]?.converting = true
            if let granted = state.granted, mode > granted { clients[index].locks[lock]?.mayHold = mode }
            // The conversion may be granted at any moment: until its completion, only what both modes promise holds.
            if let granted = state.granted { clients[index].locks[lock]?.relied = Self.meet(granted, mode) }
        case 60..<85:
            // (A parent goes after its sub-locks, or with them.)
            let parents = Set(clients[index].locks.values.filter { !$0.releasing }.compactMap(\.parent))
            if forcedUnlocks,
                let (lock, _) = held.first(where: {
                    parents.contains($0.key) && $0.value.granted != nil && !$0.value.converting
                })
            {
                forceUnlock(lock, index)
                return
            }
            guard let (lock, state) = held.first(where: { !parents.contains($0.key) }) else { return }
            if state.granted == nil || state.converting {
                // One in four of these is a DEADLOCK_CANCEL (EDEADLK to the owner, OK or EBUSY to the asker),
                // chosen by the lock's id so that each seed's random draws stay what they were.
                if lock % 4 == 1 {
                    send(index, .deadlockCancel(tag: tag(index, .unlock(lock)), lock: lock))
                } else {
                    send(index, .unlock(UnlockMessage(tag: tag(index, .unlock(lock)), lock: lock, flags: .cancel)))
                }
            } else if state.valueBlock, let granted = state.granted, granted >= .pw {
                let value = newValue(for: state.resource, index)
                let tag = tag(index, .write(lock, state.resource, value.number))
                writeSent(state.resource, key: key(index, tag))
                send(index, .unlock(UnlockMessage(tag: tag, lock: lock, flags: .valueBlock, valueBlock: value.bytes)))
                releases[key(index, tag)] = lock
                clients[index].locks[lock]?.releasing = true
                clients[index].locks[lock]?.relied = nil
            } else {
                let tag = tag(index, .unlock(lock))
                send(index, .unlock(UnlockMessage(tag: tag, lock: lock, flags: [])))
                releases[key(index, tag)] = lock
                clients[index].locks[lock]?.releasing = true
                clients[index].locks[lock]?.relied = nil
            }
        case 85..<90:
            close(index)
            connect(clients[index].node, "r")
        case 90..<96:
            // A sub-lock, up to two levels below a top-level resource, under a lock granted and kept.
            let parents = held.filter { $0.value.granted != nil && $0.value.depth < 2 }
            guard !parents.isEmpty else { return }
            let (parent, state) = random.element(parents)
            let resource = state.resource + "/c\(random.below(2))"
            var flags: LockFlags = random.percent(20) ? .noQueue : []
            // (A persistent sub-lock outlives its owner only under a persistent parent: most of those are.)
            if persistentSubLocks && (state.persistent ? step % 4 != 0 : step % 3 == 0) { flags.insert(.persistent) }
            let tag = tag(index, .lock(resource, mode))
            subLockParents[key(index, tag)] = parent
            if flags.contains(.persistent) { persistentRequests.insert(key(index, tag)) }
            send(
                index,
                .lock(
                    LockMessage(
                        tag: tag, lockspace: 0, flags: flags, mode: mode, parent: parent,
                        name: Array(resource.split(separator: "/").last!.utf8))))
        default:
            break
        }
    }

    /// A value never written before: its number in the first 8 bytes.
    mutating func newValue(for resource: String, _ index: Int) -> (number: UInt64, bytes: [UInt8]) {
        let number = nextValue
        nextValue += 1
        var bytes = [UInt8](repeating: 0, count: 32)
        for i in 0..<8 { bytes[i] = UInt8(truncatingIfNeeded: number >> (8 * UInt64(i))) }
        return (number, bytes)
    }

    /// The strongest mode weaker than both (CR for PR and CW).
    static func meet(_ a: LockMode, _ b: LockMode) -> LockMode {
        let both = LockMode.allCases.filter { weaker($0, than: a) && weaker($0, than: b) }
        return both.first { m in both.allSatisfy { weaker($0, than: m) } }!
    }

    /// Whether `a` allows everything `b` allows (every mode compatible with `b` is compatible with `a`).
    static func weaker(_ a: LockMode, than b: LockMode) -> Bool {
        LockMode.allCases.allSatisfy { !$0.isCompatible(with: b) || $0.isCompatible(with: a) }
    }

    mutating func check() throws {
        forgetFreedValues()
        if departureUnrecovered, undelivered.isEmpty, isolated == nil,
            cluster.nodes.values.allSatisfy({
                !$0.service.isRecovering && RecoveryRun.view($0.service.mastering.recoveredView) == cluster.viewNumber
            })
        {
            departureUnrecovered = false
            masterless = [:]
            if restartUnrecovered {
                restartUnrecovered = false
                for harness in cluster.nodes.values {
                    let engine = harness.service.engine
                    for slot in engine.locks.indices
                    where !engine.locks[slot].isFree && engine.locks[slot].owner == orphanOwner {
                        orphansAfterRestarts += 1
                        if engine.locks[slot].parent != none { orphanSubLocksAfterRestarts += 1 }
                    }
                }
            }
        }
        if !valueFailures.isEmpty {
            throw Failure(description: "seed \(seed) step \(step): \(valueFailures.joined(separator: "; "))")
        }
        if let node = isolated, let service = cluster.nodes[node]?.service, !service.isStopped {
            throw Failure(description: "seed \(seed) step \(step): node \(node), alone without quorum, serves requests")
        }
        if !lostLocks.isEmpty { throw Failure(description: "seed \(seed) step \(step): lost \(lostLocks)") }
        if cluster.endless { throw Failure(description: "seed \(seed) step \(step): the messages never stop") }
        var holders: [String: [(String, LockMode)]] = [:]
        for client in clients where !client.gone {
            for lock in client.locks.values {
                if let mode = lock.relied { holders[lock.resource, default: []].append((client.name, mode)) }
            }
        }
        // Orphans hold their mode as a client would (a node cut off serves nothing: its engine is stale).
        for (node, harness) in cluster.nodes where node != isolated {
            let engine = harness.service.engine
            for slot in engine.locks.indices where !engine.locks[slot].isFree && engine.locks[slot].owner == orphanOwner
            {
                guard let mode = LockMode(rawValue: engine.locks[slot].grantedMode) else { continue }
                let path = engine.path(of: engine.locks[slot].resource)
                let resource = path.map { String(decoding: $0, as: UTF8.self) }.joined(separator: "/")
                let (pid, uid) = (engine.orphanProcessIDs[slot], engine.orphanUserIDs[slot])
                guard uid == Self.user(ofProcess: pid) else {
                    throw Failure(
                        description: "seed \(seed) step \(step): an orphan of \(resource) on node \(node) left by pid "
                            + "\(pid) has uid \(uid), not \(Self.user(ofProcess: pid))")
                }
                holders[resource, default: []].append(("an orphan on node \(node)", mode))
            }
        }
        for (resource, held) in holders {
            for i in held.indices {
                for j in held.indices where j > i && !held[i].1.isCompatible(with: held[j].1) {
                    if trace {
                        for (node, h) in cluster.nodes.sorted(by: { $0.key < $1.key }) {
                            let json = try? h.service.report(
                                .lockdebug, argument: Array("ls".utf8), for: .root, environment: ReportEnvironment())
                            print("node \(node): \(String(decoding: json ?? [], as: UTF8.self))")
                        }
                    }
                    throw Failure(
                        description:
                            "seed \(seed) step \(step): \(held[i].0) holds \(held[i].1) and \(held[j].0) holds "
                            + "\(held[j].1) of \(resource)")
                }
            }
        }
    }
}
