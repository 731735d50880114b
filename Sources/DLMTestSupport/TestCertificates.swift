import Foundation

/// Certificate authorities and certificates for TLS tests and benchmarks, made by the `openssl` command (ECDSA
/// P-256, valid for two days) in a new folder: `name.crt` and `name.key` (mode 0600) for each.
public struct TestCertificates: Sendable {
    public let directory: String

    public init() throws {
        directory = Daemon.temporaryDirectory("dlm-tls")
        try FileManager.default.createDirectory(atPath: directory, withIntermediateDirectories: true)
    }

    public func path(_ name: String) -> String { directory + "/" + name }

    /// A self-signed authority `name`.
    public func authority(_ name: String) throws {
        try make(name, extra: [])
    }

    /// A certificate `name` signed by `authority`, with the subject alternative names `names`
    /// ("IP:127.0.0.1,DNS:localhost"; nil for none).
    public func leaf(_ name: String, signedBy authority: String, names: String? = nil) throws {
        try make(
            name,
            extra: ["-CA", path("\(authority).crt"), "-CAkey", path("\(authority).key")]
                + (names.map { ["-addext", "subjectAltName=\($0)"] } ?? []))
    }

    func make(_ name: String, extra: [String]) throws {
        let process = Process()
        process.executableURL = URL(fileURLWithPath: "/usr/bin/openssl")
        process.arguments =
            [
                "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes", "-days", "2",
                "-subj", "/CN=\(name)", "-keyout", path("\(name).key"), "-out", path("\(name).crt"),
            ] + extra
        process.standardOutput = FileHandle.nullDevice
        process.standardError = FileHandle.nullDevice
        try process.run()
        process.waitUntilExit()
        guard process.terminationStatus == 0 else { throw SupportError("openssl could not make certificate \(name)") }
        chmod(path("\(name).key"), 0o600)
    }
}
