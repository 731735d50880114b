import DLMTestSupport
import Foundation
import GroupNode
import Testing

/// A temporary directory removed at the end of the test (at the latest when the process exits).
final class TemporaryDirectory {
    let url: URL
    init() throws {
        url = URL(fileURLWithPath: TemporaryFolders.path("groupnode"))
        try FileManager.default.createDirectory(at: url, withIntermediateDirectories: true)
    }
    func path(_ name: String) -> String { url.appendingPathComponent(name).path }
    deinit { try? FileManager.default.removeItem(at: url) }
}

@Suite struct KeyTests {
    func message(_ body: () throws -> Void) -> String? {
        do {
            try body()
            return nil
        } catch {
            return "\(error)"
        }
    }

    @Test func generateWriteReadRoundTrip() throws {
        let directory = try TemporaryDirectory()
        let key = ClusterKey.generate()
        #expect(key.bytes.count == ClusterKey.generatedLength)
        #expect(ClusterKey.generate().bytes != key.bytes)
        let path = directory.path("authkey")
        try key.write(to: path)
        let mode = try FileManager.default.attributesOfItem(atPath: path)[.posixPermissions] as? Int
        #expect(mode == 0o400)
        #expect(try ClusterKey.read(from: path).bytes == key.bytes)
    }

    @Test func neverOverwrites() throws {
        let directory = try TemporaryDirectory()
        let path = directory.path("authkey")
        let first = ClusterKey.generate()
        try first.write(to: path)
        let error = message { try ClusterKey.generate().write(to: path) }
        #expect(error?.contains("exists") == true)
        #expect(try ClusterKey.read(from: path).bytes == first.bytes)
    }

    @Test func badKeysAreRejectedClearly() throws {
        let directory = try TemporaryDirectory()
        #expect(message { _ = try ClusterKey.read(from: directory.path("none")) }?.contains("missing") == true)

        let short = directory.path("short")
        #expect(
            FileManager.default.createFile(
                atPath: short, contents: Data(repeating: 7, count: 16), attributes: [.posixPermissions: 0o400]))
        #expect(message { _ = try ClusterKey.read(from: short) }?.contains("16 bytes; at least 32") == true)

        let open = directory.path("open")
        #expect(
            FileManager.default.createFile(
                atPath: open, contents: Data(repeating: 7, count: 64), attributes: [.posixPermissions: 0o644]))
        #expect(message { _ = try ClusterKey.read(from: open) }?.contains("accessible to every user") == true)

        let group = directory.path("group")
        #expect(
            FileManager.default.createFile(
                atPath: group, contents: Data(repeating: 7, count: 64), attributes: [.posixPermissions: 0o440]))
        #expect(try ClusterKey.read(from: group).bytes == [UInt8](repeating: 7, count: 64))

        // Its group may read it, not change it; only root or dlmd's own user may own it.
        let groupWritable = directory.path("group-writable")
        #expect(
            FileManager.default.createFile(
                atPath: groupWritable, contents: Data(repeating: 7, count: 64),
                attributes: [.posixPermissions: 0o460]))
        #expect(
            message { _ = try ClusterKey.read(from: groupWritable) }?.contains("may be changed by its group") == true)
        if geteuid() == 0 {
            let foreign = directory.path("foreign")
            #expect(
                FileManager.default.createFile(
                    atPath: foreign, contents: Data(repeating: 7, count: 64), attributes: [.posixPermissions: 0o400]))
            chown(foreign, 65534, 65534)
            #expect(message { _ = try ClusterKey.read(from: foreign) }?.contains("owned by user 65534") == true)
        }

        let huge = directory.path("huge")
        #expect(
            FileManager.default.createFile(
                atPath: huge, contents: Data(repeating: 7, count: 5000), attributes: [.posixPermissions: 0o400]))
        #expect(message { _ = try ClusterKey.read(from: huge) }?.contains("at most 4096") == true)

        #expect(message { _ = try ClusterKey.read(from: directory.url.path) }?.contains("not a regular file") == true)
        #expect(throws: ClusterKeyError.self) { _ = try ClusterKey(bytes: [1, 2, 3]) }
    }
}
