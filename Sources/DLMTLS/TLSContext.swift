import CDLMTLS
import Foundation

/// Why TLS could not be set up, or why a session failed: OpenSSL's reason, and for a refused certificate the
/// verifier's ("unable to get local issuer certificate").
public struct TLSError: Error, CustomStringConvertible, Sendable {
    public var description: String
    /// Whether the session failed in its handshake: a certificate refused by either side, or no common version.
    public var inHandshake: Bool

    public init(_ description: String, inHandshake: Bool = false) {
        self.description = description
        self.inHandshake = inHandshake
    }
}

/// The text of a C string that OpenSSL's side wrote into `buffer`.
func text(_ buffer: [CChar]) -> String {
    String(decoding: buffer.prefix { $0 != 0 }.map { UInt8(bitPattern: $0) }, as: UTF8.self)
}

/// The settings that a side's TLS sessions share: its certificate and key, and the authorities it trusts to name
/// the other side. TLS 1.2 or later, from the system's OpenSSL (Debian's libssl-dev).
public final class TLSContext: @unchecked Sendable {
    // An SSL_CTX may be used by many threads once set up; it is never changed after init.
    let context: OpaquePointer
    /// Whether sessions of this context are a server's (they ask for and check a client certificate).
    public let isServer: Bool

    /// A server: its certificate chain (`certificateFile`, PEM), its private key (`privateKey`, PEM bytes: the
    /// caller reads the file, having checked who may read it), and the authorities whose client certificates it
    /// accepts (`clientCAFile`, PEM). A client without such a certificate is refused in the handshake.
    public init(serverCertificateFile certificateFile: String, privateKey: [UInt8], clientCAFile: String) throws {
        var error = [CChar](repeating: 0, count: 512)
        let made = privateKey.withUnsafeBufferPointer { key in
            dlm_tls_server_context(certificateFile, key.baseAddress, key.count, clientCAFile, &error, error.count)
        }
        guard let made else { throw TLSError(text(error)) }
        context = made
        isServer = true
    }

    /// A client: the authorities it trusts to name dlmd (`caFile`, PEM; nil: the system's), and its own
    /// certificate chain and private key (PEM file and bytes), which dlmd asks for.
    public init(clientCAFile caFile: String?, certificateFile: String?, privateKey: [UInt8]?) throws {
        var error = [CChar](repeating: 0, count: 512)
        let made = (privateKey ?? []).withUnsafeBufferPointer { key in
            dlm_tls_client_context(
                caFile, certificateFile, privateKey == nil ? nil : key.baseAddress, key.count, &error, error.count)
        }
        guard let made else { throw TLSError(text(error)) }
        context = made
        isServer = false
    }

    deinit {
        dlm_tls_context_free(context)
    }

    /// The bytes of a PEM file that only its owner should read (a private key); refused if every user may. (dlmd
    /// reads its own key as a `TrustedFile`, which also checks who owns it.)
    public static func readPrivateKey(_ path: String) throws -> [UInt8] {
        guard let file = FileHandle(forReadingAtPath: path) else {
            throw TLSError("cannot open the private key \(path)")
        }
        defer { try? file.close() }
        var info = stat()
        guard fstat(file.fileDescriptor, &info) == 0, info.st_mode & S_IFMT == S_IFREG else {
            throw TLSError("the private key \(path) is not a regular file")
        }
        guard info.st_mode & 0o007 == 0 else {
            throw TLSError(
                "the private key \(path) is accessible to every user (mode \(String(info.st_mode & 0o777, radix: 8))): "
                    + "chmod 0600 it")
        }
        guard let bytes = try file.read(upToCount: (1 << 20) + 1), bytes.count <= 1 << 20 else {
            throw TLSError("the private key \(path) is empty, or larger than 1 MiB")
        }
        return Array(bytes)
    }
}
