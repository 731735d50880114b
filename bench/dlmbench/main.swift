import Foundation
import Glibc

// dlmbench: benchmarks of swift-dlm. Each scenario prints one JSON object on standard output.
//
//   dlmbench core       the lock engine alone: uncontended lock+unlock throughput, bytes per held lock
//   dlmbench contended  the lock engine alone under contention (for information)
//   dlmbench memory     one memory case of `core`, in this process (core runs it in a child process)
//
// Run the core scenario on one CPU: `taskset -c 0 .build/release/dlmbench core` (see bench/RESULTS.md).

let usage = """
    usage: dlmbench core [--pairs N] [--runs N] [--working-set N] [--held N] [--name-length N] [--owners N]
                         [--locks N] [--shared-resources N]
           dlmbench contended [--ops N] [--owners N] [--mix-owners N] [--resources N] [--ex-percent N] [--seed N]
           dlmbench memory [--case distinct|shared] [--locks N] [--name-length N] [--owners N]
                           [--shared-resources N]
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
    let options = Options(arguments.dropFirst(), allowed: ["socket", "clients", "seconds", "warmup"])
    for clients in options.string("clients", "50,64").split(separator: ",").compactMap({ Int($0) }) {
        print(
            DurabilityScenarios.durable(
                socket: options.string("socket", ProcessInfo.processInfo.environment["DLM_SOCKET"] ?? ""),
                clients: clients, seconds: Double(options.string("seconds", "3")) ?? 3,
                warmup: Double(options.string("warmup", "0.5")) ?? 0.5))
    }
case "-h", "--help", "help":
    print(usage)
default:
    fail("unknown or missing scenario\n" + usage)
}
