import ArgumentParser
import DLMClient
import DLMCore

struct Join: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Create a lockspace (nothing changes if it exists).",
        discussion: """
            Prints whether the lockspace was created or existed already. An existing lockspace with another \
            value block length is an error (EEXIST). A lockspace created here belongs to this user and group, \
            with --mode's permission bits: opening it and locking in it need read and write permission, as \
            for a file (EACCES otherwise); only its creator and root may release it. With --json, prints \
            {"created", "id", "lockspace", "lvb_length"}.
            """)

    @OptionGroup var options: CommonOptions

    @Argument(help: "The lockspace's name (1 to 64 bytes).")
    var lockspace: String

    @Option(name: .long, help: "The value block length in bytes: 8 to 64, a multiple of 8 (default: 32).")
    var lvbLength: Int?

    @Option(
        name: .shortAndLong,
        help: "The permission bits, octal, if this creates the lockspace (default: 0600, this user only).")
    var mode: String = "0600"

    /// `--mode` as permission bits.
    var permissionBits: UInt16? {
        guard !mode.isEmpty, mode.count <= 4, let bits = UInt16(mode, radix: 8), bits <= 0o777 else { return nil }
        return bits
    }

    func validate() throws {
        guard permissionBits != nil else {
            throw ValidationError("--mode takes octal permission bits from 0 to 0777, e.g. 0660, not \(mode)")
        }
        try checkLockspaceName(lockspace)
        if let lvbLength, !(8...64).contains(lvbLength) || lvbLength % 8 != 0 {
            throw ValidationError("--lvb-length must be a multiple of 8 from 8 to 64")
        }
    }

    struct Result: Encodable {
        var lockspace: String
        var id: UInt32
        var lvbLength: Int
        var created: Bool

        enum CodingKeys: String, CodingKey {
            case lockspace, id
            case lvbLength = "lvb_length"
            case created
        }
    }

    func run() async throws {
        try await options.withConnection { connection in
            let ls = try await connection.openLockspace(
                lockspace, create: true, valueBlockLength: lvbLength,
                mode: permissionBits ?? LockspaceAccess.defaultMode)
            if let lvbLength, ls.valueBlockLength != lvbLength {
                throw ToolError(
                    "lockspace \(Text.name(lockspace)) exists with value block length \(ls.valueBlockLength), "
                        + "not \(lvbLength)")
            }
            if options.json {
                return try printJSON(
                    Result(lockspace: lockspace, id: ls.id, lvbLength: ls.valueBlockLength, created: ls.wasCreated))
            }
            let what = ls.wasCreated ? "created lockspace" : "lockspace"
            let state = ls.wasCreated ? "" : " exists already"
            print("\(what) \(Text.name(lockspace))\(state) (id \(ls.id), value block length \(ls.valueBlockLength))")
        }
    }
}

struct Leave: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Release a lockspace.",
        discussion: """
            Refused (EBUSY) while the lockspace holds locks, unless --force, which drops them: their owners' \
            requests and locks are gone. With --json, prints {"lockspace", "released"}.
            """)

    @OptionGroup var options: CommonOptions

    @Argument(help: "The lockspace's name.")
    var lockspace: String

    @Flag(name: .long, help: "Release it even if it holds locks, dropping them.")
    var force = false

    func validate() throws {
        try checkLockspaceName(lockspace)
    }

    struct Result: Encodable {
        var lockspace: String
        var released: Bool
    }

    func run() async throws {
        try await options.withConnection { connection in
            let ls = try await connection.openAnyLockspace(lockspace, create: false)
            do {
                try await connection.releaseLockspace(ls, force: force)
            } catch let error as DLMError where error.status == .busy {
                throw ToolError(
                    "lockspace \(Text.name(lockspace)) holds locks; --force drops them (\(error.message))")
            }
            if options.json { return try printJSON(Result(lockspace: lockspace, released: true)) }
            print("released lockspace \(Text.name(lockspace))")
        }
    }
}

struct Purge: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Remove the orphans a process left in a lockspace.",
        discussion: """
            Removes the orphans of lockspace LS (persistent locks whose owner went) that process PID of node NODE \
            left, with their sub-locks, on the masters of every node of the cluster, as dlm_ls_purge does; NODE 0 \
            is the node dlmtool talks to, and PID 0 names the orphans whose pid is not known. Prints how many \
            locks went. Needs read and write permission on the lockspace. With --json, prints {"lockspace", \
            "node", "pid", "purged"}.
            """)

    @OptionGroup var options: CommonOptions

    @Argument(help: "The lockspace's name.")
    var lockspace: String

    @Argument(help: "The node whose process left the orphans (0: the node dlmtool talks to).")
    var node: UInt32

    @Argument(help: "The process id the orphans keep.")
    var pid: UInt32

    func validate() throws {
        try checkLockspaceName(lockspace)
    }

    struct Result: Encodable {
        var lockspace: String
        var node: UInt32
        var pid: UInt32
        var purged: Int
    }

    func run() async throws {
        try await options.withConnection { connection in
            let ls = try await connection.openAnyLockspace(lockspace, create: false)
            let count = try await ls.purge(nodeID: node, pid: pid)
            if options.json {
                return try printJSON(Result(lockspace: lockspace, node: node, pid: pid, purged: count))
            }
            print(
                "purged \(count) lock\(count == 1 ? "" : "s") of process \(pid) of node \(node) in \(Text.name(lockspace))"
            )
        }
    }
}
