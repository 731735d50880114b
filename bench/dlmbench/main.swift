import Foundation
import Glibc

// dlmbench: benchmarks of swift-dlm. Each scenario prints one JSON object on standard output.
//
//   dlmbench core       the lock engine alone: uncontended lock+unlock throughput, bytes per held lock
//   dlmbench contended  the lock engine alone under contention (for information)
//   dlmbench memory     one memory case of `core`, in this process (core runs it in a child process)
//   dlmbench engine-bulk  exits, purges and forced releases of up to 1M locks in slices, and deadlock passes
//                         over up to 100k waiters: their times and longest slices
//
// Against a running dlmd over its Unix socket (`--socket PATH`, default $DLM_SOCKET), one JSON object per
// measurement, one a line (bench/RESULTS.md, `make bench-daemon`):
//
//   dlmbench rtt          the reference: a raw Unix-socket round trip to an echo thread (no dlmd)
//   dlmbench uncontended  N clients (default 1, then 50), lock+unlock pairs on distinct resources
//   dlmbench pipelined    one connection with many requests in flight (default 256)
//   dlmbench handoff      N clients passing EX on one resource
//   dlmbench mixed        N clients, Zipf over resources, 90 % PR / 10 % EX
//   dlmbench stall-exit   a client with N locks exits (or its orphans are purged, or its lockspace released
//                         with force): how long until they are gone, and the longest pause another client saw
//   dlmbench stall-abuse  a client flooding without reading, 10,000 idle connections, lockspaces created in a
//                         loop: the latency p50 / p99 / max another client sees meanwhile
//   dlmbench stall-deadlock  N waiters with deadlock passes due: dlmd's CPU spent searching, the longest pause
//                         another client saw, and the time to the victim of a cycle among them
//
// The store (`bench/durability-bench.sh`):
//
//   dlmbench lmdb         the raw LMDB commit rate in a directory (synced, synced batches, unsynced)
//   dlmbench durable      N clients taking and releasing PERSISTENT EX locks against a running dlmd
//   dlmbench durable-shared  PERSISTENT CR lock+unlock pairs on a resource held by N other PERSISTENT locks
//
// Group services over loopback TCP, nodes in this process (GroupNode):
//
//   dlmbench membership   view formation and failover times for 3, 5, 9 nodes; ordered messages per second
//   dlmbench membership-kill  kill -9 of a real dlmd member to the survivors' new view (median of rounds)
//   dlmbench provider-failover  a node failing to the survivors' view and recovery: built-in against corosync
//
// The lock space across real dlmd nodes on loopback (`make bench-cluster`):
//
//   dlmbench cluster      remote vs local pairs beside the raw TCP round trip, a 3-node cluster's throughput
//                         against one node's, and recovery after kill -9 of a master of N locks
//
// Run the core scenario on one CPU: `taskset -c 0 .build/release/dlmbench core` (see bench/RESULTS.md).

let usage = """
    usage: dlmbench core [--pairs N] [--runs N] [--working-set N] [--held N] [--name-length N] [--owners N]
                         [--locks N] [--shared-resources N]
           dlmbench contended [--ops N] [--owners N] [--mix-owners N] [--resources N] [--ex-percent N] [--seed N]
           dlmbench memory [--case distinct|shared] [--locks N] [--name-length N] [--owners N]
                           [--shared-resources N]
           dlmbench engine-bulk [--locks N[,N...]] [--waiters N[,N...]]
           dlmbench rtt [--duration S] [--warmup S] [--size BYTES] [--echo-cpu N] [--echo thread|process]
                        [--transport unix|tcp]
           dlmbench uncontended [COMMON] [--clients N[,N...]] [--connections N] [--working-set N]
           dlmbench pipelined [COMMON] [--depth N] [--working-set N]
           dlmbench handoff [COMMON] [--clients N[,N...]]
           dlmbench mixed [COMMON] [--clients N[,N...]] [--connections N] [--resources N] [--zipf S]
                          [--ex-percent N] [--seed N]
           dlmbench stall-exit [--socket PATH] [--locks N[,N...]] [--cases exit,purge,release]
           dlmbench stall-deadlock [--socket PATH] [--waiters N[,N...]] [--resources N[,N...]] [--duration S]
           dlmbench stall-abuse [--socket PATH] [--cases baseline,flood,idle,lockspaces] [--duration S] [--idle N]
           dlmbench membership [--scenario views|ordered|all] [--nodes N[,N...]] [--rounds N] ... (--help)
           dlmbench membership-kill --dlmd PATH [--nodes N] [--rounds N]
           dlmbench provider-failover --dlmd PATH [--rounds N]   (root, ip netns, corosync)
           dlmbench tls --dlmd PATH [--duration S] [--warmup S] [--rounds N] [--working-set N]
           dlmbench cluster --dlmd PATH [--scenarios remote,throughput,recovery,deadlock] [--duration S] [--warmup S]
                            [--working-set N] [--clients N] [--locks N[,N...]] [--connections N]
                            [--dlmd-busy-poll US] (every dlmd of remote and throughput runs with --busy-poll US)
    COMMON: [--socket PATH] [--duration S] [--warmup S] [--api callback|async|pool|raw] [--client-threads N]
            [--busy-poll US] (the client's event loop polls that long after each read; DLMConnection's busyPoll)
    """

let arguments = CommandLine.arguments.dropFirst()
switch arguments.first {
case "core":
    print(CoreScenario.run(Options(arguments.dropFirst(), allowed: CoreScenario.optionNames)).text)
case "contended":
    print(ContendedScenario.run(Options(arguments.dropFirst(), allowed: ContendedScenario.optionNames)).text)
case "memory":
    print(MemoryScenario.run(Options(arguments.dropFirst(), allowed: MemoryScenario.optionNames)).text)
case "lmdb":
    let options = Options(arguments.dropFirst(), allowed: ["dir", "seconds"])
    print(
        DurabilityScenarios.lmdb(
            directory: options.string("dir", "/tmp/dlmbench-lmdb"),
            seconds: Double(options.string("seconds", "2")) ?? 2))
case "durable":
    let options = Options(arguments.dropFirst(), allowed: ["socket", "clients", "seconds", "warmup", "release"])
    for clients in options.string("clients", "50,64").split(separator: ",").compactMap({ Int($0) }) {
        print(
            DurabilityScenarios.durable(
                socket: options.string("socket", ProcessInfo.processInfo.environment["DLM_SOCKET"] ?? ""),
                clients: clients, seconds: Double(options.string("seconds", "3")) ?? 3,
                warmup: Double(options.string("warmup", "0.5")) ?? 0.5,
                release: options.string("release", "yes") != "no"))
    }
case "durable-shared":
    let options = Options(arguments.dropFirst(), allowed: ["socket", "holders", "seconds"])
    for holders in options.string("holders", "0,1000,10000,100000").split(separator: ",").compactMap({ Int($0) }) {
        print(
            DurabilityScenarios.shared(
                socket: options.string("socket", ProcessInfo.processInfo.environment["DLM_SOCKET"] ?? ""),
                holders: holders, seconds: Double(options.string("seconds", "3")) ?? 3))
    }
case "rtt":
    print(RTTScenario.run(Options(arguments.dropFirst(), allowed: RTTScenario.optionNames)).text)
case "echo":
    EchoProcess.run(Options(arguments.dropFirst(), allowed: EchoProcess.optionNames))
case "uncontended":
    for result in DaemonScenarios.uncontended(
        Options(arguments.dropFirst(), allowed: DaemonScenarios.uncontendedOptions))
    {
        print(result.text)
    }
case "pipelined":
    for result in DaemonScenarios.pipelined(Options(arguments.dropFirst(), allowed: DaemonScenarios.pipelinedOptions)) {
        print(result.text)
    }
case "handoff":
    for result in DaemonScenarios.handoff(Options(arguments.dropFirst(), allowed: DaemonScenarios.handoffOptions)) {
        print(result.text)
    }
case "mixed":
    for result in DaemonScenarios.mixed(Options(arguments.dropFirst(), allowed: DaemonScenarios.mixedOptions)) {
        print(result.text)
    }
case "stall-exit":
    for result in StallScenarios.exit(Options(arguments.dropFirst(), allowed: StallScenarios.exitOptions)) {
        print(result.text)
    }
case "stall-abuse":
    for result in AbuseScenarios.run(Options(arguments.dropFirst(), allowed: AbuseScenarios.options)) {
        print(result.text)
    }
case "stall-deadlock":
    for result in StallScenarios.deadlock(Options(arguments.dropFirst(), allowed: StallScenarios.deadlockOptions)) {
        print(result.text)
    }
case "engine-bulk":
    for result in BulkScenarios.run(Options(arguments.dropFirst(), allowed: BulkScenarios.optionNames)) {
        print(result.text)
    }
case "membership":
    MembershipScenarios.run(arguments.dropFirst())
case "cluster":
    ClusterScenarios.run(Options(arguments.dropFirst(), allowed: ClusterScenarios.optionNames))
case "tls":
    TLSScenario.run(Options(arguments.dropFirst(), allowed: TLSScenario.optionNames))
case "membership-kill":
    print(MembershipDaemons.run(Options(arguments.dropFirst(), allowed: MembershipDaemons.optionNames)))
case "provider-failover":
    print(ProviderFailover.run(Options(arguments.dropFirst(), allowed: ProviderFailover.optionNames)))
case "-h", "--help", "help":
    print(usage)
default:
    fail("unknown or missing scenario\n" + usage)
}
