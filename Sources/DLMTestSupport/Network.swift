import Foundation

/// Test hosts: namespaces dlmN-<tag>, each with a veth into a bridge of its own in the root namespace (two networks of one
/// process may use the same /24: their bridges keep them apart).
public final class Network: @unchecked Sendable {
    public let tag: String
    public let subnet: Int
    public let count: Int

    /// Networks made by this process so far: suites run side by side, each network needs names of its own.
    nonisolated(unsafe) private static var made = 0
    private static let lock = NSLock()

    public init(nodes count: Int) throws {
        self.count = count
        let number = Network.lock.withLock {
            Network.made += 1
            return Network.made
        }
        // Interface names have at most 15 bytes: "dlmo3" + 4 + 2.
        tag = String(getpid() % 10_000, radix: 16) + String(number % 1296, radix: 36)
        subnet = 100 + Int(getpid() % 100)
        try Network.ip("link", "add", bridge, "type", "bridge")
        try Network.ip("link", "set", bridge, "up")
        for node in 1...count {
            let ns = namespace(node)
            try Network.ip("netns", "add", ns)
            try Network.ip("link", "add", outside(node), "type", "veth", "peer", "name", inside(node))
            try Network.ip("link", "set", inside(node), "netns", ns)
            try Network.ip("link", "set", outside(node), "master", bridge)
            try Network.ip("link", "set", outside(node), "up")
            try Network.ip("-n", ns, "addr", "add", "\(addresses[node - 1])/24", "dev", inside(node))
            try Network.ip("-n", ns, "link", "set", inside(node), "up")
            try Network.ip("-n", ns, "link", "set", "lo", "up")
        }
    }

    public var bridge: String { "dlmbr\(tag)" }
    public func namespace(_ node: Int) -> String { "dlm\(node)-\(tag)" }
    public func outside(_ node: Int) -> String { "dlmo\(node)\(tag)" }
    public func inside(_ node: Int) -> String { "dlmi\(node)\(tag)" }
    public var addresses: [String] { (1...count).map { "10.77.\(subnet).\($0)" } }

    public func cut(_ node: Int) throws { try Network.ip("link", "set", outside(node), "down") }
    public func heal(_ node: Int) throws { try Network.ip("link", "set", outside(node), "up") }

    public func remove() {
        for node in 1...count {
            _ = try? Network.ip("netns", "del", namespace(node))
            _ = try? Network.ip("link", "del", outside(node))
        }
        _ = try? Network.ip("link", "del", bridge)
    }

    @discardableResult
    public static func ip(_ arguments: String...) throws -> String {
        let process = Process()
        process.executableURL = URL(fileURLWithPath: "/usr/sbin/ip")
        process.arguments = arguments
        let output = Pipe()
        process.standardOutput = output
        process.standardError = output
        try process.run()
        let data = output.fileHandleForReading.readDataToEndOfFile()
        process.waitUntilExit()
        let text = String(decoding: data, as: UTF8.self)
        guard process.terminationStatus == 0 else {
            throw SupportError("ip \(arguments.joined(separator: " ")): \(text)")
        }
        return text
    }
}

extension Network {
    /// Whether network namespaces can be made here (root, and iproute2's `ip netns`).
    public static let canBeMade: Bool = {
        guard getuid() == 0 else { return false }
        let name = "dlmprobe\(getpid() % 100_000)"
        guard (try? Network.ip("netns", "add", name)) != nil else { return false }
        _ = try? Network.ip("netns", "del", name)
        return true
    }()

    /// The command prefix that runs a program in node `node`'s namespace.
    public func launcher(_ node: Int) -> [String] { ["/usr/sbin/ip", "netns", "exec", namespace(node)] }

    /// Runs `arguments` in node `node`'s namespace to its end: its exit status, standard output and standard error.
    public func runToEnd(in node: Int, _ arguments: [String]) throws -> (status: Int32, output: String, error: String) {
        try runProgram(launcher(node)[0], Array(launcher(node).dropFirst()) + arguments)
    }
}
