import CDLMCrypto

/// HMAC-SHA256 with one key, set up once (the key schedule is not repeated per MAC), and SHA-256: the digests of
/// the peer transport, from the system's libcrypto (OpenSSL 3) through `CDLMCrypto`.
///
/// (`@unchecked Sendable`: after `init` the keyed context is only read, each MAC working on its own copy.)
public final class HMACSHA256: @unchecked Sendable {
    public static let length = 32
    private let key: OpaquePointer

    public init(key bytes: [UInt8]) {
        guard let key = bytes.withUnsafeBufferPointer({ dlm_hmac_key_new($0.baseAddress, $0.count) }) else {
            fatalError("libcrypto could not set up an HMAC-SHA256 key (out of memory, or no SHA-256 provider)")
        }
        self.key = key
    }

    deinit { dlm_hmac_key_free(key) }

    /// The MAC of `first` followed by `second`.
    public func mac<First: Collection<UInt8>, Second: Collection<UInt8>>(_ first: First, _ second: Second) -> [UInt8] {
        contiguous(first) { first in
            contiguous(second) { second in
                [UInt8](unsafeUninitializedCapacity: Self.length) { out, count in
                    guard
                        dlm_hmac_sha256(
                            key, first.baseAddress, first.count, second.baseAddress, second.count, out.baseAddress)
                            == 1
                    else { fatalError("libcrypto failed to compute an HMAC-SHA256 (out of memory)") }
                    count = Self.length
                }
            }
        }
    }

    /// SHA-256 of `data`.
    public static func sha256(_ data: [UInt8]) -> [UInt8] {
        data.withUnsafeBufferPointer { data in
            [UInt8](unsafeUninitializedCapacity: length) { out, count in
                guard dlm_sha256(data.baseAddress, data.count, out.baseAddress) == 1 else {
                    fatalError("libcrypto failed to compute a SHA-256 digest")
                }
                count = length
            }
        }
    }

    /// Whether two MACs are equal, compared in a time that does not depend on where they differ.
    public static func equal<A: Collection<UInt8>, B: Collection<UInt8>>(_ a: A, _ b: B) -> Bool {
        guard a.count == b.count else { return false }
        return contiguous(a) { a in
            contiguous(b) { b in dlm_equal_in_constant_time(a.baseAddress, b.baseAddress, a.count) == 1 }
        }
    }
}

/// `body` with the bytes of `data` in one buffer (copied when they are not contiguous already).
private func contiguous<C: Collection<UInt8>, R>(_ data: C, _ body: (UnsafeBufferPointer<UInt8>) -> R) -> R {
    if let result = data.withContiguousStorageIfAvailable(body) { return result }
    return Array(data).withUnsafeBufferPointer(body)
}

/// `count` bytes from the system's secure generator (getrandom(2)): cluster keys and connection challenges.
func secureRandomBytes(_ count: Int) -> [UInt8] {
    var generator = SystemRandomNumberGenerator()
    return (0..<count).map { _ in UInt8.random(in: .min ... .max, using: &generator) }
}
