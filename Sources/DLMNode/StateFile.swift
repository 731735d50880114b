import DLMCore
import Foundation

/// What a clean shutdown saves in the data directory so that no persistent lock is lost: every lockspace
/// with its resources (by then, every lock left is an orphan) and its fencing-token high-water mark. The
/// LMDB store replaces this file with a crash-safe one.
struct SavedState: Codable {
    struct Lockspace: Codable {
        var name: [UInt8]
        var valueBlockLength: Int
        var fencingTokenHighWater: UInt64
        var resources: [ResourceSnapshot]
    }

    var version = 1
    var lockspaces: [Lockspace]
}

extension LockNode {
    var stateFilePath: String { configuration.dataDirectory + "/state.json" }

    /// Writes the engine's state atomically (a temporary file renamed over the old one).
    func saveState() throws {
        var saved = SavedState(lockspaces: [])
        for info in engine.allLockspaces {
            saved.lockspaces.append(
                .init(
                    name: info.name, valueBlockLength: info.valueBlockLength,
                    fencingTokenHighWater: engine.fencingTokenHighWater(info.id) ?? 0,
                    resources: engine.snapshotLockspace(info.id)))
        }
        let data = try JSONEncoder().encode(saved)
        try data.write(to: URL(fileURLWithPath: stateFilePath), options: .atomic)
    }

    /// Restores what the last clean shutdown saved, if anything.
    func loadState() throws {
        guard FileManager.default.fileExists(atPath: stateFilePath) else { return }
        let data = try Data(contentsOf: URL(fileURLWithPath: stateFilePath))
        let saved = try JSONDecoder().decode(SavedState.self, from: data)
        guard saved.version == 1 else {
            throw NodeError("\(stateFilePath) has format version \(saved.version); this dlmd reads version 1")
        }
        var restoredLocks = 0
        for lockspace in saved.lockspaces {
            let id = try engine.createLockspace(name: lockspace.name, valueBlockLength: lockspace.valueBlockLength)
            engine.raiseFencingTokenFloor(id, to: lockspace.fencingTokenHighWater)
            for var resource in lockspace.resources {
                resource.lockspace = id
                try engine.restore(resource)
                restoredLocks += resource.locks.count
            }
        }
        logger.info(
            "restored state", metadata: ["lockspaces": "\(saved.lockspaces.count)", "locks": "\(restoredLocks)"])
    }
}

/// A node failure with a message for the operator.
public struct NodeError: Error, CustomStringConvertible {
    public var description: String
    public init(_ description: String) { self.description = description }
}
